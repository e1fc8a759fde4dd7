"""The C types keys and values are made of (contract section 2), with their C layout.

This is the shared vocabulary of every layer: the config layer parses a type
spec into a `CType` and encodes values with it, the kernel layer turns a `CType`
into BTF so the map carries its own type, and the live reader turns BTF back
into a `CType`. It knows nothing of YAML files or of the kernel.

A type spec is the plain data a user writes: `"u32"`, `"be16"`, `"ipv4"`,
`"bytes[16]"`, `"char[8]"`, `"u16[4]"`, `{"lpm": "ipv4"}`,
`{"struct": [{"ip": "ipv4"}, {"port": "be16"}], "packed": False}`.
"""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass
from functools import cache
from itertools import chain
from typing import Any, Iterable, Union

INT_NAMES = {
    "u8": (1, False, False), "u16": (2, False, False), "u32": (4, False, False), "u64": (8, False, False),
    "i8": (1, True, False), "i16": (2, True, False), "i32": (4, True, False), "i64": (8, True, False),
    "be16": (2, False, True), "be32": (4, False, True), "be64": (8, False, True),
}
ADDR_SIZES = {"ipv4": 4, "ipv6": 16, "mac": 6}
# ipv4/ipv6 align as the C types that hold them (__be32, struct in6_addr); mac is __u8[6].
ADDR_ALIGN = {"ipv4": 4, "ipv6": 4, "mac": 1}


class TypeSpecError(ValueError):
    """A type spec that is not part of the type language; the message says what was expected."""


@dataclass(frozen=True)
class Int:
    """A fixed-width integer; `big_endian` for the network-order be16/be32/be64."""

    name: str

    @property
    def size(self) -> int:
        return INT_NAMES[self.name][0]

    @property
    def signed(self) -> bool:
        return INT_NAMES[self.name][1]

    @property
    def big_endian(self) -> bool:
        return INT_NAMES[self.name][2]

    @property
    def align(self) -> int:
        return self.size

    def spec(self) -> Any:
        return self.name


@dataclass(frozen=True)
class Addr:
    """An address in network order: ipv4, ipv6 or mac."""

    family: str

    @property
    def size(self) -> int:
        return ADDR_SIZES[self.family]

    @property
    def align(self) -> int:
        return ADDR_ALIGN[self.family]

    def spec(self) -> Any:
        return self.family


@dataclass(frozen=True)
class _ByteRun:
    """N bytes with no alignment of their own; subclasses differ in how values are written."""

    length: int
    word = ""

    @property
    def size(self) -> int:
        return self.length

    align = 1

    def spec(self) -> Any:
        return f"{self.word}[{self.length}]"


@dataclass(frozen=True)
class Bytes(_ByteRun):
    """`bytes[N]`: N raw bytes, written as a hex string."""

    word = "bytes"


@dataclass(frozen=True)
class Chars(_ByteRun):
    """`char[N]`: a NUL-padded string."""

    word = "char"


@dataclass(frozen=True)
class Array:
    """`T[N]`: N values of T, written as a list."""

    elem: "CType"
    length: int

    @property
    def size(self) -> int:
        return self.elem.size * self.length

    @property
    def align(self) -> int:
        return self.elem.align

    def spec(self) -> Any:
        inner = self.elem.spec()
        if not isinstance(inner, str):
            raise TypeSpecError("arrays are of scalar types only")
        return f"{inner}[{self.length}]"


@dataclass(frozen=True)
class Lpm:
    """An LPM trie key: `struct bpf_lpm_trie_key` = u32 prefixlen (host order) + address."""

    family: str

    @property
    def size(self) -> int:
        return 4 + ADDR_SIZES[self.family]

    align = 4

    def spec(self) -> Any:
        return {"lpm": self.family}


@dataclass(frozen=True)
class Field:
    name: str
    type: "CType"
    offset: int


@dataclass(frozen=True)
class Struct:
    """A C struct, laid out as a C compiler does (natural alignment, tail padding) unless packed."""

    fields: tuple[Field, ...]
    size: int
    align: int
    packed: bool = False

    @staticmethod
    def layout(members: list[tuple[str, "CType"]], packed: bool = False) -> "Struct":
        offset, align, fields = 0, 1, []
        for name, typ in members:
            a = 1 if packed else typ.align
            offset = (offset + a - 1) // a * a
            fields.append(Field(name, typ, offset))
            offset += typ.size
            align = max(align, a)
        size = (offset + align - 1) // align * align
        return Struct(tuple(fields), size, align, packed)

    def spec(self) -> Any:
        out: dict[str, Any] = {"struct": [{f.name: f.type.spec()} for f in self.fields]}
        if self.packed:
            out["packed"] = True
        return out


@dataclass(frozen=True)
class Raw(_ByteRun):
    """Only a size is known (`key_size: N`): an integer for N in 1, 2, 4, 8, else hex."""

    def spec(self) -> Any:
        return None


CType = Union[Int, Addr, Bytes, Chars, Array, Lpm, Struct, Raw]

_ARRAY_RE = re.compile(r"^([A-Za-z0-9_]+)\[(\d+)\]$")
MAX_TYPE_SIZE = 1 << 16


_parsed: dict[str, CType] = {}


def parse_type(spec: Any) -> CType:
    """Parse a type spec into a `CType`; raises TypeSpecError saying what was expected.

    CTypes are immutable, so thousands of maps with the same spec share one parse."""
    cache_key = spec if isinstance(spec, str) else repr(spec)
    cached = _parsed.get(cache_key)
    if cached is not None:
        return cached
    typ = _parse(spec)
    if typ.size == 0 or typ.size > MAX_TYPE_SIZE:
        raise TypeSpecError(f"type size must be 1..{MAX_TYPE_SIZE} bytes, got {typ.size}")
    _parsed[cache_key] = typ
    return typ


def _parse(spec: Any) -> CType:
    if isinstance(spec, str):
        if spec in INT_NAMES:
            return Int(spec)
        if spec in ADDR_SIZES:
            return Addr(spec)
        m = _ARRAY_RE.match(spec)
        if m:
            base, n = m.group(1), int(m.group(2))
            if n == 0:
                raise TypeSpecError(f"'{spec}': an array needs at least one element")
            if base == "bytes":
                return Bytes(n)
            if base == "char":
                return Chars(n)
            if base in INT_NAMES:
                return Array(Int(base), n)
            if base in ADDR_SIZES:
                return Array(Addr(base), n)
        raise TypeSpecError(
            f"unknown type '{spec}': expected one of {', '.join(INT_NAMES)}, ipv4, ipv6, mac, "
            "bytes[N], char[N], T[N], {lpm: ipv4|ipv6} or {struct: [...]}"
        )
    if isinstance(spec, dict):
        if set(spec) == {"lpm"}:
            fam = spec["lpm"]
            if fam not in ("ipv4", "ipv6"):
                raise TypeSpecError(f"lpm family must be ipv4 or ipv6, got {fam!r}")
            return Lpm(fam)
        if "struct" in spec and set(spec) <= {"struct", "packed"}:
            packed = spec.get("packed", False)
            if not isinstance(packed, bool):
                raise TypeSpecError("'packed' must be true or false")
            members = spec["struct"]
            if not isinstance(members, list) or not members:
                raise TypeSpecError("a struct is a non-empty list of {field: type} mappings")
            seen: set[str] = set()
            parsed: list[tuple[str, CType]] = []
            for m in members:
                if not isinstance(m, dict) or len(m) != 1:
                    raise TypeSpecError("each struct field is a mapping of one field name to its type")
                (name, ftype), = m.items()
                if not isinstance(name, str) or not re.match(r"^[A-Za-z_][A-Za-z0-9_]*$", name):
                    raise TypeSpecError(f"struct field name {name!r} is not a C identifier")
                if name in seen:
                    raise TypeSpecError(f"struct field '{name}' is defined twice")
                seen.add(name)
                parsed.append((name, _parse(ftype)))
            return Struct.layout(parsed, packed)
        raise TypeSpecError(f"unknown type {spec!r}: a mapping type is {{lpm: ...}} or {{struct: [...], packed: bool}}")
    raise TypeSpecError(f"a type is a name or a mapping, got {spec!r}")



def type_or_raw(spec: Any, size: int) -> CType:
    """The type a spec names, or raw bytes of `size` when there is no spec (a map without BTF, `key_size: N`)."""
    return parse_type(spec) if spec is not None else Raw(size)


# Records per struct call: larger groups gain nothing; up to _SMALL, one struct of the exact count.
_GROUP = 1024
_SMALL = 64


def records(buf: Any, size: int, count: int | None = None) -> Iterable[bytes]:
    """The first `count` (default: all) fixed-size records of a buffer (concatenated keys or values,
    as batch syscalls take and return them) as bytes objects.

    Structs of 2^i records (i <= 10) split them in a few C calls: on a million records twice
    as fast as a one-record struct's iter_unpack, three times as fast as slicing.
    """
    if count is None:
        count = len(buf) // size
    if count <= _SMALL:
        return _group_struct(size, count).unpack_from(buf)
    view = memoryview(buf).cast("B")
    groups = []
    start = 0
    while start < count:
        n = min(_GROUP, 1 << (count - start).bit_length() - 1)
        end = count - (count - start) % n
        groups.append(_group_struct(size, n).iter_unpack(view[start * size:end * size]))
        start = end
    return chain.from_iterable(chain.from_iterable(groups))


@cache
def _group_struct(size: int, n: int) -> struct.Struct:
    return struct.Struct(f"{size}s" * n)
