"""What a plan needs from the system beyond the pin root's maps, read just before planning.

- A prog_array, devmap or cpumap entry names a pinned program or a network interface
  (`config.references.Target`); the kernel stores their IDs and indexes. Each plan resolves the
  names again, so a program reloaded and pinned again at the same path is drift: its new ID
  differs from the one in the map, and the plan puts the new program in its place.
- A bloom filter cannot be listed, only asked whether it may hold a value: each value the config
  gives is asked for, and those it may hold are recorded in `LiveState.probed` (the planner adds
  the others; a false positive means the filter already answers yes for that value, as it would
  once the value were added).

The planner stays pure: it reads the resolved configuration and the probes, never the kernel.
"""

from __future__ import annotations

import socket
from dataclasses import replace
from kmesh_apply.config import codecs, maptypes
from kmesh_apply.config.model import Config, InnerMapSpec
from kmesh_apply.config.references import Target, encode
from kmesh_apply.entries import Entries
from kmesh_apply.errors import KernelError, KmeshError, PlanError
from kmesh_apply.kernel.progs import pinned_program, program_loaded
from kmesh_apply.pinroot.guard import PinRoot
from kmesh_apply.state import LiveState


class ResolveError(PlanError):
    """A program or interface an entry names is not there now; `map` is the map of that entry."""

    def __init__(self, map_name: str, message: str):
        super().__init__([message])
        self.map = map_name


def prepare(config: Config, live: LiveState) -> Config:
    """`config` with its references resolved to bytes, and `live.probed` filled for its bloom filters."""
    resolved = {name: _resolved(spec) for name, spec in config.inner_maps.items() if _has_targets(spec)}
    for name, spec in config.inner_maps.items():
        have = live.maps.get(name)
        if spec.type == "bloom_filter" and have is not None and (have.type, have.value_size) == (spec.type, spec.value_size):
            live.probed[name] = _probe(live.pin_root, name, spec)
    if not resolved:
        return config
    return replace(config, inner_maps={**config.inner_maps, **resolved})


def _has_targets(spec: InnerMapSpec) -> bool:
    return maptypes.kind(spec.type).entries in maptypes.REFERENCES and not isinstance(spec.entries, Entries)


class _Resolver:
    """Programs and interfaces looked up once per plan, whatever number of entries name them."""

    def __init__(self) -> None:
        self.programs: dict[str | int, int] = {}
        self.interfaces: dict[str | int, int] = {}

    def program(self, ref: str | int) -> int:
        if ref not in self.programs:
            if isinstance(ref, str):
                self.programs[ref] = pinned_program(ref)
            elif program_loaded(ref):
                self.programs[ref] = ref
            else:
                raise KmeshError(f"no program has ID {ref} (bpftool prog show lists them); name it by the path it "
                                 "is pinned at, which stays the same when it is reloaded")
        return self.programs[ref]

    def interface(self, ref: str | int) -> int:
        if ref not in self.interfaces:
            try:
                if isinstance(ref, str):
                    self.interfaces[ref] = socket.if_nametoindex(ref)
                else:
                    socket.if_indextoname(ref)  # raises when there is no such interface
                    self.interfaces[ref] = ref
            except OSError:
                what = f"named '{ref}'" if isinstance(ref, str) else f"with index {ref}"
                raise KmeshError(f"no network interface {what} on this host (ip link lists them)") from None
        return self.interfaces[ref]


def _resolved(spec: InnerMapSpec) -> InnerMapSpec:
    r = _Resolver()
    out = Entries(spec.key_size, spec.value_size)
    for key, target in spec.entries.items():
        assert isinstance(target, Target)
        try:
            out[key] = encode(target, spec.value_size, r.program, r.interface)
        except (KmeshError, KernelError) as e:
            shown = codecs.decode(spec.key, key)
            raise ResolveError(spec.name, f"{spec.location.file}: map '{spec.name}' entry {shown}: {e}") from None
    return replace(spec, entries=out)


def _probe(pin_root: str, name: str, spec: InnerMapSpec) -> set[bytes]:
    """The values of the config a bloom filter answers it may hold (the filter reached as every pin is)."""
    root = PinRoot.open(pin_root)
    if root is None:
        return set()
    with root, root.open_map(name) as m:
        return {v for v in spec.entries if m.may_hold(v)}
