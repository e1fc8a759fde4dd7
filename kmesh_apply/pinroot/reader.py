"""Reads a pin root's maps into a `LiveState`: every map, its properties, BTF types and entries."""

from __future__ import annotations

from typing import Any, Callable

from kmesh_apply.entries import Entries
from kmesh_apply.errors import KmeshError
from kmesh_apply.kernel.maps import EntriesUnreadable, LookupBuffers, Map
from kmesh_apply.kernel.progs import map_holders
from kmesh_apply.pinroot.guard import PinRoot
from kmesh_apply.pinroot.records import has_legacy_records, read_layouts, read_owned
from kmesh_apply.pinroot.replaced import read_replaced
from kmesh_apply.state import (
    LAYOUTS_DIR,
    KEY_TYPES_DIR,
    OWNED_PIN,
    REPLACED_PIN,
    STAGING_DIR,
    Layout,
    LiveMap,
    LiveState,
    StagedMap,
)


class _Reader:
    """Reads the maps of one pin root, sharing what they have in common: the lookup buffers, and
    the type specs of their BTF (thousands of maps carry the same few types)."""

    def __init__(self, root: PinRoot, memlock: bool = False, observe: Observer | None = None,
                 known: Known | None = None) -> None:
        self.root = root
        self.buffers = LookupBuffers()
        self.memlock = memlock
        self.observe = observe
        self.known = known
        self._specs: dict[tuple[int, ...], tuple[Any, Any]] = {}

    def read_map(self, pin: str, name: str, observed: bool = False, entries: bool = True) -> LiveMap:
        """One pinned map as data; outer slots become kernel IDs of the inner maps they hold.
        `observed`: a map of the pin root itself (not a staged one), shown to `observe`;
        `entries=False`: an inner map's entries are not read (left empty, packed)."""
        with self.root.open_map(pin) as m:
            info = m.info
            types = (info.btf_id, info.btf_key_type_id, info.btf_value_type_id, info.key_size, info.value_size)
            specs = self._specs.get(types)
            if specs is None:
                key_type, value_type = m.types()
                specs = self._specs[types] = (key_type.spec() if key_type is not None else None,
                                              value_type.spec() if value_type is not None else None)
            live = LiveMap(name, info.id, info.type, info.key_size, info.value_size, info.max_entries,
                           info.declared_flags, *specs)
            if live.is_outer:
                live.slots = m.slots(self.buffers)
            elif not entries:
                live.entries, live.unreadable = Entries(info.key_size or 1, m.syscall_value_size or 1), m.unreadable()
            else:
                known = self.known(name, m) if observed and self.known is not None else None
                if known is not None:
                    live.entries = known
                else:
                    on_part = self.observe(name) if observed and self.observe is not None else None
                    try:
                        live.entries = m.items(self.buffers, on_part)
                    except EntriesUnreadable as e:
                        live.unreadable = e.reason
            if self.memlock:
                live.memlock = m.memlock()
        return live


# Given a map's name, what sees each batch of its entries as it is read, or None.
Observer = Callable[[str], Callable[[Entries], None] | None]
# Given a map's name and its open handle, entries known to be exactly the map's without reading
# them (found equal by a digest computed in the kernel), or None: read them.
Known = Callable[[str, Map], Entries | None]


def read_live(pin_root: str, memlock: bool = False, holders: bool = True, observe: Observer | None = None,
              known: Known | None = None) -> LiveState:
    """The live state of `pin_root` (empty if it does not exist yet); `memlock` also reads what
    each map costs the kernel (one fdinfo read per map, which plans do not need); `holders`
    finds the loaded programs holding its maps and the maps it replaced (one walk over every
    loaded program; plans and applies need it, `show` does not); `observe` sees the entries of
    the inner maps it asks for batch by batch, as they are read; `known` may spare reading them.

    Maps the tool does not manage (see pinroot.records) go to `unmanaged`, read the same way."""
    state = LiveState(pin_root)
    root = PinRoot.open(pin_root)
    if root is None:
        return state
    with root:
        reader = _Reader(root, memlock, observe, known)
        pinned: dict[str, LiveMap] = {}
        for name, is_dir in root.entries():
            if is_dir and name in (KEY_TYPES_DIR, LAYOUTS_DIR):
                continue  # read below, for the maps they describe
            if is_dir and name == STAGING_DIR:
                for staged, _ in root.entries(STAGING_DIR):
                    pin = f"{STAGING_DIR}/{staged}"
                    state.staged.append(StagedMap(pin, staged, reader.read_map(pin, staged)))
            elif is_dir:
                raise KmeshError(f"{root.shown(name)} is a directory; a pin root holds only the maps kmesh-apply "
                                 "manages. Use a separate pin root for nested trees.")
            elif name == OWNED_PIN:
                state.owned = read_owned(root, reader.buffers)
            elif name == REPLACED_PIN:
                state.replaced = read_replaced(root, reader.buffers)
            else:
                pinned[name] = reader.read_map(name, name, observed=True)
        _sort_by_owner(root, state, pinned)
    if holders:
        ids = [m.id for m in state.maps.values()] + [m.id for m in state.unmanaged.values()] + \
            [s.live.id for s in state.staged] + list(state.replaced)
        state.holders = map_holders(ids)
    return state


def _sort_by_owner(root: PinRoot, state: LiveState, pinned: dict[str, LiveMap]) -> None:
    """Managed maps to `maps`, others to `unmanaged`, by the ownership record (none: by whether an
    earlier version's records are there); then the recorded layouts of the managed ones, whose
    types stand in for the BTF a map does not carry."""
    if state.owned is None:
        state.legacy = has_legacy_records(root)
        state.maps = pinned if state.legacy else {}
        state.unmanaged = {} if state.legacy else pinned
    else:
        owned = state.owned
        for name, m in pinned.items():
            record = owned.get(name)
            (state.maps if record is not None and m.id in record.ids else state.unmanaged)[name] = m
        state.stale = owned.keys() - state.maps.keys()
    if state.maps:
        state.layouts = _with_layouts(root, list(state.maps.values()))


def _with_layouts(root: PinRoot, maps: list[LiveMap]) -> dict[str, Layout]:
    """The layouts recorded for these managed maps, by name; their types stand in for the BTF a map lacks."""
    layouts = read_layouts(root, {m.id: m for m in maps})
    for m in maps:
        layout = layouts.get(m.name)
        if layout is not None:
            m.key_type = m.key_type if m.key_type is not None else layout.key_type
            if not m.is_outer:
                m.value_type = m.value_type if m.value_type is not None else layout.value_type
    return layouts


def read_map(root: PinRoot, pin: str, memlock: bool = False, entries: bool = True) -> LiveMap:
    """One map of a pin root, as `read_live` reads it: for a map just created (an outer map with the
    layout recorded for it). `entries=False`: an inner map's entries are not read (the synchroniser
    replays the steps that filled it, sharing their packed entries)."""
    live = _Reader(root, memlock).read_map(pin, pin.rpartition("/")[2], entries=entries)
    if live.is_outer:
        _with_layouts(root, [live])
    return live
