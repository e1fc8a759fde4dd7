"""The floor for the benchmark (issue 6): a naive Python applier, one bpf() syscall per entry and per slot.

It reads the same binary input as bench/c/batch_apply.c (see workloads.write_binary)
and does what a straightforward script on top of a map library would do: create
each map, update it entry by entry, pin it, then fill the outer map slot by slot
(one RCU grace period per slot). It uses the project's kernel layer for the calls.

Usage: python bench/naive_apply.py INPUT.bin PIN_ROOT
"""

from __future__ import annotations

import os
import struct
import sys

from kmesh_apply.kernel.maps import Map

MAP_TYPES = {1: "hash", 13: "hash_of_maps"}


class _Reader:
    """Sequential reads of the little-endian input."""

    def __init__(self, data: bytes):
        self.data, self.pos = data, 0

    def take(self, n: int) -> bytes:
        chunk = self.data[self.pos:self.pos + n]
        if len(chunk) != n:
            raise SystemExit("naive_apply: truncated input")
        self.pos += n
        return chunk

    def u32s(self, n: int) -> tuple[int, ...]:
        return struct.unpack(f"<{n}I", self.take(4 * n))

    def name(self) -> str:
        return self.take(16).rstrip(b"\0").decode()


def apply(path: str, pin_root: str) -> None:
    r = _Reader(open(path, "rb").read())
    if r.take(4) != b"KMB1":
        raise SystemExit(f"naive_apply: {path} is not a workload file")
    (n_inner,) = r.u32s(1)
    inners: list[Map] = []
    for _ in range(n_inner):
        name = r.name()
        mtype, ks, vs, max_entries, count = r.u32s(5)
        keys, values = r.take(count * ks), r.take(count * vs)
        m = Map.create(MAP_TYPES[mtype], ks, vs, max_entries, name=name)
        for i in range(count):
            m.update(keys[i * ks:(i + 1) * ks], values[i * vs:(i + 1) * vs])
        m.pin(os.path.join(pin_root, name))
        inners.append(m)
    (has_outer,) = r.u32s(1)
    if has_outer:
        name = r.name()
        mtype, ks, max_entries, count = r.u32s(4)
        slots, index = r.u32s(count), r.u32s(count)
        outer = Map.create(MAP_TYPES[mtype], ks, 4, max_entries, name=name, inner_map=inners[0])
        for slot, i in zip(slots, index):
            outer.update(struct.pack("<I", slot), struct.pack("<I", inners[i].fd))
        outer.pin(os.path.join(pin_root, name))


if __name__ == "__main__":
    if len(sys.argv) != 3:
        raise SystemExit(__doc__.strip().splitlines()[-1])
    apply(sys.argv[1], sys.argv[2])
