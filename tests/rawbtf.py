"""Raw BTF files written byte by byte (the kernel's include/uapi/linux/btf.h layout), so tests can
hand the BTF reader what no compiler emits: cycles, names that are no UTF-8, absurd sizes. Type ids
are given out in the order types are added, from 1; a type may name an id not added yet (a cycle)."""

from __future__ import annotations

import struct

MAGIC = 0xEB9F
INT, PTR, ARRAY, STRUCT, UNION, ENUM, TYPEDEF, VAR, DATASEC, ENUM64 = 1, 2, 3, 4, 5, 6, 8, 14, 15, 19


class RawBtf:
    def __init__(self) -> None:
        self.types: list[bytes] = []
        self.strings = bytearray(b"\0")

    def name(self, name: str | bytes) -> int:
        """The string section offset of `name` (bytes are taken as they are: any encoding)."""
        if not name:
            return 0
        raw = name.encode() if isinstance(name, str) else name
        off = len(self.strings)
        self.strings += raw + b"\0"
        return off

    def _add(self, name: str | bytes, kind: int, vlen: int, size_or_type: int, extra: bytes = b"",
             kind_flag: bool = False) -> int:
        info = (int(kind_flag) << 31) | (kind << 24) | vlen
        self.types.append(struct.pack("<III", self.name(name), info, size_or_type) + extra)
        return len(self.types)

    def int_(self, name: str | bytes, size: int, encoding: int = 0) -> int:
        return self._add(name, INT, 0, size, struct.pack("<I", (encoding << 24) | (8 * size)))

    def typedef(self, name: str | bytes, target: int) -> int:
        return self._add(name, TYPEDEF, 0, target)

    def ptr(self, target: int) -> int:
        return self._add("", PTR, 0, target)

    def array(self, elem: int, index: int, n: int) -> int:
        return self._add("", ARRAY, 0, 0, struct.pack("<III", elem, index, n))

    def struct(self, name: str | bytes, size: int, members: list[tuple[str | bytes, int, int]], union: bool = False) -> int:
        """members: (name, type id, bit offset)."""
        extra = b"".join(struct.pack("<III", self.name(n), t, off) for n, t, off in members)
        return self._add(name, UNION if union else STRUCT, len(members), size, extra)

    def enum(self, name: str | bytes, size: int, values: list[tuple[str | bytes, int]]) -> int:
        extra = b"".join(struct.pack("<Ii", self.name(n), v) for n, v in values)
        return self._add(name, ENUM, len(values), size, extra)

    def var(self, name: str | bytes, target: int) -> int:
        return self._add(name, VAR, 0, target, struct.pack("<I", 1))

    def datasec(self, name: str | bytes, members: list[tuple[int, int, int]]) -> int:
        """members: (var type id, offset, size)."""
        extra = b"".join(struct.pack("<III", *m) for m in members)
        return self._add(name, DATASEC, len(members), sum(s for _, _, s in members), extra)

    def bytes(self) -> bytes:
        types = b"".join(self.types)
        header = struct.pack("<HBBIIIII", MAGIC, 1, 0, 24, 0, len(types), len(types), len(self.strings))
        return header + types + bytes(self.strings)


def map_definition(btf: RawBtf, map_name: str, key: int, value: int, map_type: int = 1, max_entries: int = 8) -> None:
    """A libbpf BTF-defined map in a `.maps` section: struct { int (*type)[T]; K *key; V *value; int
    (*max_entries)[N]; } map_name."""
    u32 = btf.int_("unsigned int", 4)
    index = btf.int_("__ARRAY_SIZE_TYPE__", 4)

    def uint(n: int) -> int:
        return btf.ptr(btf.array(u32, index, n))

    members = [("type", uint(map_type), 0), ("key", btf.ptr(key), 64), ("value", btf.ptr(value), 128),
               ("max_entries", uint(max_entries), 192)]
    definition = btf.struct("", 32, members)
    btf.datasec(".maps", [(btf.var(map_name, definition), 0, 32)])
