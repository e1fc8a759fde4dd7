"""Deterministic benchmark workloads (issue 6), written once per parameter set into bench/out/.

Each workload is a set of inner hash maps, optionally held by one hash_of_maps outer
map, and is emitted in every competitor's input format from the same data:

- ``config.yaml``: the kmesh-apply configuration (mapping-form entries);
- ``change.yaml``: the same with a small change (one entry, or one whole service for K);
- ``bpftool.batch`` / ``dump.batch``: the ``bpftool batch file`` a user scripts today
  (create + one update per entry and per slot) and the matching read-back, with the
  pin root left as the placeholder ``@PIN@``;
- ``input.bin``: the compact binary read by bench/c/batch_apply.c and bench/naive_apply.py
  (format described in ``write_binary``);
- ``meta.json``: counts, so that the runner can print them without reading the data.

Usage: python bench/workloads.py [--out DIR] [NAME ...]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import socket
import struct
import sys
from array import array
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

SEED = 6  # issue 6; changing it changes every workload
BENCH_DIR = Path(__file__).resolve().parent
DEFAULT_OUT = BENCH_DIR / "out"
PIN_PLACEHOLDER = "@PIN@"
BINARY_MAGIC = b"KMB1"
BPF_MAP_TYPE_HASH = 1
BPF_MAP_TYPE_HASH_OF_MAPS = 13

ENDPOINT_TYPE = "{struct: [{ip: ipv4}, {port: be16}, {weight: u16}]}"


@dataclass(frozen=True)
class Shape:
    """What a workload looks like; the data itself is drawn from random.Random(SEED + name)."""

    name: str
    description: str
    maps: int
    entries_per_map: int
    max_entries: int
    outer: bool
    endpoint_values: bool  # K: values are {ip, port, weight} structs; else u64
    change_whole_map: bool  # K: the change rewrites all entries of one inner map (one service)
    per_entry_competitors: bool = True  # False: no bpftool batch files (too large), so no bpftool or naive rows

    @property
    def entries(self) -> int:
        return self.maps * self.entries_per_map


def _s_like(name: str, per_map: int, what: str) -> Shape:
    return Shape(name, what, 200, per_map, per_map, True, False, False)


SHAPES: dict[str, Shape] = {
    "S": _s_like("S", 1000, "200 inner hash maps (u32 -> u64) x 1,000 entries + 200-slot hash_of_maps"),
    "K": Shape("K", "5,000 inner hash maps x 20 endpoints {ipv4, be16, u16} + 5,000-slot hash_of_maps",
               5000, 20, 32, True, True, True),
    "B": Shape("B", "one hash map of 1,000,000 entries (u32 -> u64)", 1, 1_000_000, 1_000_000, False, False, False),
    # Opt-in (bench/run.py --only B10M): 380 MB of YAML, minutes per run.
    "B10M": Shape("B10M", "one hash map of 10,000,000 entries (u32 -> u64)", 1, 10_000_000, 10_000_000, False, False,
                  False, per_entry_competitors=False),
    "S10k": _s_like("S10k", 50, "S-like: 200 inner maps x 50 entries (10k)"),
    "S100k": _s_like("S100k", 500, "S-like: 200 inner maps x 500 entries (100k)"),
    "S1M": _s_like("S1M", 5000, "S-like: 200 inner maps x 5,000 entries (1M)"),
}


@dataclass
class InnerData:
    name: str
    keys: array  # u32
    values: list[bytes]


@dataclass
class Data:
    shape: Shape
    inners: list[InnerData]
    value_size: int
    outer_name: str | None
    slots: list[int]  # slot key of inners[i]
    change_map: int  # index of the inner map the change touches
    changed_values: dict[int, bytes]  # key -> new value in that map


def _endpoint(ip: int, port: int, weight: int) -> bytes:
    """struct {ipv4 ip; be16 port; u16 weight}: 8 bytes, no padding."""
    return struct.pack("!IH", ip, port) + struct.pack("<H", weight)


def _u64(v: int) -> bytes:
    return struct.pack("<Q", v)


def build(shape: Shape) -> Data:
    """Draw the workload's data; the same shape always yields the same bytes."""
    rng = random.Random(f"{SEED}:{shape.name}")
    prefix = shape.name.lower()
    inners: list[InnerData] = []
    for i in range(shape.maps):
        name = f"{prefix}_in_{i:04d}" if shape.maps > 1 else f"{prefix}_map"
        if shape.endpoint_values:
            keys = array("I", range(shape.entries_per_map))
            values = [_endpoint(0x0A000000 | rng.getrandbits(24), rng.randrange(1024, 65536), rng.randrange(1, 100))
                      for _ in keys]
        else:
            keys = array("I", rng.sample(range(1 << 32), shape.entries_per_map))
            values = [_u64(rng.getrandbits(64)) for _ in keys]
        inners.append(InnerData(name, keys, values))
    change_map = shape.maps // 2
    target = inners[change_map]
    if shape.change_whole_map:
        changed = {k: _endpoint(0x0B000000 | rng.getrandbits(24), 9000 + k, 1) for k in target.keys}
    else:
        k = target.keys[len(target.keys) // 2]
        changed = {k: _u64(rng.getrandbits(64))}
    return Data(shape, inners, 8, f"{prefix}_outer" if shape.outer else None,
                list(range(1, shape.maps + 1)) if shape.outer else [], change_map, changed)


# --- kmesh-apply YAML --------------------------------------------------------------------


def _yaml_value(shape: Shape, value: bytes) -> str:
    if shape.endpoint_values:
        ip, port = struct.unpack("!IH", value[:6])
        weight = struct.unpack("<H", value[6:])[0]
        return f"{{ip: {socket.inet_ntoa(struct.pack('!I', ip))}, port: {port}, weight: {weight}}}"
    return str(struct.unpack("<Q", value)[0])


def write_yaml(data: Data, path: Path, changed: bool) -> None:
    """The kmesh-apply config; with changed=True the change is applied to data.change_map."""
    shape = data.shape
    value_type = ENDPOINT_TYPE if shape.endpoint_values else "u64"
    with path.open("w") as f:
        f.write(f"# bench workload {shape.name}: {shape.description}{' (changed)' if changed else ''}\n")
        f.write("inner_maps:\n")
        for i, inner in enumerate(data.inners):
            f.write(f"  {inner.name}:\n    type: hash\n    key: u32\n    value: {value_type}\n"
                    f"    max_entries: {shape.max_entries}\n    entries:\n")
            overrides = data.changed_values if changed and i == data.change_map else {}
            f.write("".join(f"      {k}: {_yaml_value(shape, overrides.get(k, v))}\n"
                            for k, v in zip(inner.keys, inner.values)))
        if data.outer_name:
            f.write(f"outer_maps:\n  {data.outer_name}:\n    type: hash_of_maps\n    key: u32\n"
                    f"    max_entries: {shape.maps}\n    inner_map: {data.inners[0].name}\n    entries:\n")
            f.write("".join(f"      {s}: {inner.name}\n" for s, inner in zip(data.slots, data.inners)))


# --- bpftool batch files -----------------------------------------------------------------


def _hex(b: bytes) -> str:
    return b.hex(" ")


def write_bpftool(data: Data, apply_path: Path, dump_path: Path) -> None:
    """What users script today: one `map update` line per entry and per slot."""
    shape = data.shape
    pin = PIN_PLACEHOLDER
    with apply_path.open("w") as f:
        for inner in data.inners:
            path = f"{pin}/{inner.name}"
            f.write(f"map create {path} type hash key 4 value {data.value_size} entries {shape.max_entries} "
                    f"name {inner.name} flags 0\n")
            f.write("".join(f"map update pinned {path} key hex {_hex(struct.pack('<I', k))} value hex {_hex(v)}\n"
                            for k, v in zip(inner.keys, inner.values)))
        if data.outer_name:
            outer = f"{pin}/{data.outer_name}"
            f.write(f"map create {outer} type hash_of_maps key 4 value 4 entries {shape.maps} "
                    f"name {data.outer_name} flags 0 inner_map pinned {pin}/{data.inners[0].name}\n")
            f.write("".join(f"map update pinned {outer} key hex {_hex(struct.pack('<I', s))} "
                            f"value pinned {pin}/{inner.name}\n" for s, inner in zip(data.slots, data.inners)))
    with dump_path.open("w") as f:
        names = [inner.name for inner in data.inners] + ([data.outer_name] if data.outer_name else [])
        f.write("".join(f"map dump pinned {pin}/{n}\n" for n in names))


# --- binary input of the C program and the naive applier -------------------------------


def write_binary(data: Data, path: Path) -> None:
    """Little-endian binary; all integers u32.

    "KMB1", n_inner, then per inner map: name[16] (NUL-padded), type, key_size,
    value_size, max_entries, count, keys[count*key_size], values[count*value_size];
    then has_outer, and if 1: name[16], type, key_size, max_entries, count,
    keys[count*4], inner_index[count] (index into the inner maps above).
    """
    shape = data.shape
    with path.open("wb") as f:
        f.write(BINARY_MAGIC + struct.pack("<I", len(data.inners)))
        for inner in data.inners:
            f.write(struct.pack("<16s5I", inner.name.encode(), BPF_MAP_TYPE_HASH, 4, data.value_size,
                                shape.max_entries, len(inner.keys)))
            f.write(inner.keys.tobytes())
            f.write(b"".join(inner.values))
        f.write(struct.pack("<I", 1 if data.outer_name else 0))
        if data.outer_name:
            f.write(struct.pack("<16s4I", data.outer_name.encode(), BPF_MAP_TYPE_HASH_OF_MAPS, 4, shape.maps,
                                len(data.slots)))
            f.write(array("I", data.slots).tobytes())
            f.write(array("I", range(len(data.inners))).tobytes())


# --- driver --------------------------------------------------------------------------------


def _sample(data: Data, per_map: int = 5) -> dict[str, dict[str, str]]:
    """A few entries (key hex -> value hex, before the change) by which the runner checks a competitor's work."""
    picks = sorted({0, data.change_map, len(data.inners) - 1})
    return {data.inners[i].name: {struct.pack("<I", k).hex(): v.hex()
                                  for k, v in list(zip(data.inners[i].keys, data.inners[i].values))[:per_map]}
            for i in picks}


OUTPUTS: tuple[str, ...] = ("config.yaml", "change.yaml", "bpftool.batch", "dump.batch", "input.bin", "meta.json")
BPFTOOL_OUTPUTS = ("bpftool.batch", "dump.batch")


def outputs(shape: Shape) -> tuple[str, ...]:
    return OUTPUTS if shape.per_entry_competitors else tuple(o for o in OUTPUTS if o not in BPFTOOL_OUTPUTS)


def _fingerprint(shape: Shape) -> str:
    """Changes when the shape or this generator changes, so stale outputs are rebuilt."""
    h = hashlib.sha256(repr((SEED, shape)).encode())
    h.update(Path(__file__).read_bytes())
    return h.hexdigest()[:16]


def generate(name: str, out_dir: Path = DEFAULT_OUT, log: Callable[[str], None] = lambda _: None) -> Path:
    """Write workload `name` into out_dir/name (skipped when already up to date); returns that dir."""
    shape = SHAPES[name]
    wdir = out_dir / name
    meta_path = wdir / "meta.json"
    fp = _fingerprint(shape)
    if all((wdir / o).exists() for o in outputs(shape)) and json.loads(meta_path.read_text()).get("fingerprint") == fp:
        return wdir
    log(f"generating workload {name} ({shape.entries:,} entries) in {wdir}")
    wdir.mkdir(parents=True, exist_ok=True)
    meta_path.unlink(missing_ok=True)  # written last: its presence marks a complete workload
    data = build(shape)
    write_yaml(data, wdir / "config.yaml", changed=False)
    write_yaml(data, wdir / "change.yaml", changed=True)
    if shape.per_entry_competitors:
        write_bpftool(data, wdir / "bpftool.batch", wdir / "dump.batch")
    write_binary(data, wdir / "input.bin")
    meta = {
        "name": name, "description": shape.description, "maps": shape.maps, "entries": shape.entries,
        "slots": len(data.slots), "changed_entries": len(data.changed_values),
        "map_names": [i.name for i in data.inners] + ([data.outer_name] if data.outer_name else []),
        "sample": _sample(data),
        "per_entry_competitors": shape.per_entry_competitors,
        "fingerprint": fp,
    }
    meta_path.write_text(json.dumps(meta, indent=1))
    return wdir


def main(argv: Iterable[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    ap.add_argument("names", nargs="*", metavar="NAME", help=f"workloads to generate (default: all of {', '.join(SHAPES)})")
    args = ap.parse_args(list(argv) if argv is not None else None)
    unknown = [n for n in args.names if n not in SHAPES]
    if unknown:
        ap.error(f"unknown workload(s) {', '.join(unknown)}; known: {', '.join(SHAPES)}")
    for name in args.names or SHAPES:
        print(generate(name, args.out, log=lambda m: print(m, file=sys.stderr)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
