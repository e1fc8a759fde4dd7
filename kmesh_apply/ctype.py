"""The C types keys and values are made of (contract section 2), with their C layout.

This is the shared vocabulary of every layer: the config layer parses a type
spec into a `CType` and encodes values with it, the kernel layer turns a `CType`
into BTF so the map carries its own type, and the live reader turns BTF back
into a `CType`. It knows nothing of YAML files or of the kernel.

A type spec is the plain data a user writes: `"u32"`, `"bool"`, `"be16"`, `"ipv4"`,
`"bytes[16]"`, `"char[8]"`, `"u16[4]"`, `"u32[2][4]"` (C order: 2 rows of 4),
`{"lpm": "ipv4"}`, `{"struct": [{"ip": "ipv4"}, {"port": "be16"}], "packed": False}`,
`{"union": [{"ip4": "u32"}, {"ip6": "u32[4]"}]}`, `{"array": {"struct": [...]}, "length": 4}`,
`{"enum": "u32", "values": {"LB_POLICY_RANDOM": 0}}`.

Two CTypes are equal when they lay out and read the same bytes the same way: a
struct's declared `packed` and its alignment are how its offsets were found, not
part of what it is, so a packed struct whose layout is the natural one equals the
natural struct, and the BTF read back from a map (which records offsets, not
`packed`) gives an equal type. `spec()` writes each type in one canonical form.
"""

from __future__ import annotations

import difflib
import json
import re
import struct
from dataclasses import dataclass, field
from functools import cache
from itertools import chain
from typing import Any, Iterable, Mapping, Sequence, Union

from kmesh_apply.terminal import shown
from kmesh_apply.wording import count

INT_NAMES = {
    "u8": (1, False, False), "u16": (2, False, False), "u32": (4, False, False), "u64": (8, False, False),
    "i8": (1, True, False), "i16": (2, True, False), "i32": (4, True, False), "i64": (8, True, False),
    "be16": (2, False, True), "be32": (4, False, True), "be64": (8, False, True),
}
ADDR_SIZES = {"ipv4": 4, "ipv6": 16, "mac": 6}
# ipv4/ipv6 align as the C types that hold them (__be32, struct in6_addr); mac is __u8[6].
ADDR_ALIGN = {"ipv4": 4, "ipv6": 4, "mac": 1}
IDENT_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")  # whole strings only: fullmatch


class TypeSpecError(ValueError):
    """A type spec that is not part of the type language; the message says what was expected.
    `path` leads from the spec to the offending part (e.g. `("struct", 2, "port")`), so the
    config layer can name that part's own line."""

    def __init__(self, reason: str, path: tuple[Any, ...] = ()):
        self.reason, self.path = reason, path
        super().__init__(reason)

    def inside(self, *parts: Any) -> "TypeSpecError":
        return TypeSpecError(self.reason, (*parts, *self.path))


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
class Bool:
    """C `bool`: one byte, false or true."""

    size = 1
    align = 1

    def spec(self) -> Any:
        return "bool"


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


_DIMS_RE = re.compile(r"([A-Za-z0-9_]+?)((?:\[\d+\])*)")


@dataclass(frozen=True)
class Array:
    """`T[N]`: N values of T, written as a list (`{array: T, length: N}` for any T)."""

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
        m = _DIMS_RE.fullmatch(inner) if isinstance(inner, str) else None
        if m is None:
            return {"array": inner, "length": self.length}
        return f"{m.group(1)}[{self.length}]{m.group(2)}"  # C order: the outer dimension first


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


class _SizedByBase:
    """A type laid out as its `base` is: the same size and alignment."""

    base: Any

    @property
    def size(self) -> int:
        return int(self.base.size)

    @property
    def align(self) -> int:
        return int(self.base.align)


@dataclass(frozen=True)
class Enum(_SizedByBase):
    """A C enum: an integer of `base`'s size whose values may be written (and are shown) by name."""

    base: Int
    values: tuple[tuple[str, int], ...]

    def spec(self) -> Any:
        return {"enum": self.base.name, "values": dict(self.values)}


@dataclass(frozen=True)
class Field:
    name: str
    type: "CType"
    offset: int  # bytes; for a bitfield, of the byte holding its first bit
    bits: int = 0  # a bitfield's width (0: not a bitfield)
    bit_offset: int = 0  # a bitfield's first bit, counted from the struct's start

    def field_spec(self) -> Any:
        spec = self.type.spec()
        return f"{spec}:{self.bits}" if self.bits else spec


def _shared_hash(t: "Struct | CUnion") -> int:
    """The hash of what equality compares (fields, size), computed once per object: types share their
    parts, and hashing a struct of structs afresh each time walks them all (see type_nodes)."""
    h = t.__dict__.get("_hash")
    if h is None:
        h = hash((t.fields, t.size))
        object.__setattr__(t, "_hash", h)
    return h


def _round(n: int, a: int) -> int:
    return (n + a - 1) // a * a


@dataclass(frozen=True)
class Struct:
    """A C struct, laid out as a C compiler does (natural alignment, tail padding) unless packed.

    Equality is by layout (fields, offsets, size): `align` and `packed` only say how the
    offsets were found."""

    fields: tuple[Field, ...]
    size: int
    align: int = field(default=1, compare=False)
    packed: bool = field(default=False, compare=False)

    def __hash__(self) -> int:
        return _shared_hash(self)

    @staticmethod
    def layout(members: list[tuple[str, "CType", int]], packed: bool = False,
               aligns: Sequence[int] | None = None) -> "Struct":
        """Lay members (name, type, bitfield width or 0) out as clang and gcc do on x86-64 and
        arm64: a bitfield takes the next bits unless it would cross a boundary of its type's
        alignment (packed structs let it cross); other fields start at a byte of their alignment.
        `aligns`: each member's alignment, when not its type's own."""
        bit, align = 0, 1
        fields: list[Field] = []
        for i, (name, typ, bits) in enumerate(members):
            a = 1 if packed else aligns[i] if aligns is not None else typ.align
            if bits:
                unit = 8 * a
                if not packed and bit // unit != (bit + bits - 1) // unit:
                    bit = _round(bit, unit)
                if bits == 8 * typ.size and bit % 8 == 0:  # as a plain field: one layout, one way to write it
                    fields.append(Field(name, typ, bit // 8))
                else:
                    fields.append(Field(name, typ, bit // 8, bits, bit))
                bit += bits
            else:
                bit = _round(_round(bit, 8) // 8, a) * 8
                fields.append(Field(name, typ, bit // 8))
                bit += 8 * typ.size
            align = max(align, a)
        size = _round(_round(bit, 8) // 8, align)
        return Struct(tuple(fields), size, align, packed)

    def spec(self) -> Any:
        mode = _mode(self)
        packed = mode if isinstance(mode, tuple) else [False] * len(self.fields)
        out: dict[str, Any] = {"struct": [{f.name: _packed_spec(f.type) if p else f.field_spec()}
                                          for f, p in zip(self.fields, packed)]}
        if not isinstance(mode, tuple):
            out["packed"] = True
        return out


@dataclass(frozen=True)
class CUnion:
    """A C union: every member at offset 0, the size of the largest (rounded to the alignment);
    a value names exactly one member and the bytes past it are zero."""

    fields: tuple[Field, ...]
    size: int
    align: int = field(default=1, compare=False)

    def __hash__(self) -> int:
        return _shared_hash(self)

    @staticmethod
    def layout(members: list[tuple[str, "CType"]], packed: bool = False,
               aligns: Sequence[int] | None = None) -> "CUnion":
        align = 1 if packed else max(aligns if aligns is not None else [t.align for _, t in members])
        size = _round(max(t.size for _, t in members), align)
        return CUnion(tuple(Field(n, t, 0) for n, t in members), size, align)

    def spec(self) -> Any:
        out: dict[str, Any] = {"union": [{f.name: f.type.spec()} for f in self.fields]}
        if _union_packed(self):
            out["packed"] = True
        return out


@dataclass(frozen=True)
class Formatted(_SizedByBase):
    """A field of C type `base` written and shown as `shown` (`formats:`): Kmesh's `__u32 ip4` holds an
    IPv4 address in network order, its ports are `__u32` holding htons() values. A format is how
    bytes read, never what they are: the size and alignment are the base's. `shown` may be narrower
    than an unsigned integer base (a be16 in a u32): its bytes come first and the rest are zero, as
    an htons() value widened to 32 bits lies in memory on the little-endian machines this runs on."""

    base: "CType"
    shown: "CType"

    def spec(self) -> Any:
        return {"type": self.base.spec(), "format": self.shown.spec()}


@dataclass(frozen=True)
class Raw(_ByteRun):
    """Only a size is known (`key_size: N`): an integer for N in 1, 2, 4, 8, else hex."""

    def spec(self) -> Any:
        return None


CType = Union[Int, Bool, Addr, Bytes, Chars, Array, Lpm, Enum, Struct, CUnion, Formatted, Raw]


# How a struct's canonical spec reproduces its offsets (_mode): _PACKED, or natural with the
# members flagged True in a tuple written packed (a packed struct nested in a natural one; all
# False: the natural layout), or None when no spelling does.
_PACKED = "packed"


@cache
def canonical_align(t: CType) -> int:
    """The alignment a type has when written in its canonical spec (cached: types share their parts)."""
    if isinstance(t, Struct):
        mode = _mode(t)
        if isinstance(mode, tuple):
            return max(1 if p else canonical_align(f.type) for f, p in zip(t.fields, mode))
        return 1
    if isinstance(t, CUnion):
        return 1 if _union_packed(t) else max(canonical_align(f.type) for f in t.fields)
    if isinstance(t, Array):
        return canonical_align(t.elem)
    return t.align


def _members_of(s: Struct) -> list[tuple[str, CType, int]]:
    return [(f.name, f.type, f.bits) for f in s.fields]


@cache
def _mode(s: Struct) -> tuple[bool, ...] | str | None:
    """How the canonical spec writes `s` (see above); None when no spelling lays it out so."""
    members = _members_of(s)
    if Struct.layout(members, False, [canonical_align(f.type) for f in s.fields]) == s:
        return (False,) * len(members)
    if Struct.layout(members, True) == s:
        return _PACKED
    choosable = [f.bits == 0 and _packable(f.type) and canonical_align(f.type) > 1 for f in s.fields]
    for most in (1, 2, 4, 8, 16):  # the struct's own alignment: members aligned more must be packed
        packed = [False] * len(members)
        for i, f in enumerate(s.fields):  # each member's choice decided by its recorded offset, in order
            if choosable[i]:
                packed[i] = canonical_align(f.type) > most
                if Struct.layout(members[:i + 1], False, _chosen(s, packed)).fields[i].offset != f.offset:
                    packed[i] = not packed[i]
        if Struct.layout(members, False, _chosen(s, packed)) == s:
            return tuple(packed)
    return None


def _chosen(s: Struct, packed: list[bool]) -> list[int]:
    return [1 if p else canonical_align(f.type) for f, p in zip(s.fields, packed)]


@cache
def _union_packed(u: CUnion) -> bool:
    return CUnion.layout([(f.name, f.type) for f in u.fields], False, [canonical_align(f.type) for f in u.fields]) != u


def _packable(t: CType) -> bool:
    """A struct or union that can be written packed and keep its layout."""
    if isinstance(t, Struct):
        return Struct.layout(_members_of(t), True) == t
    return isinstance(t, CUnion) and max(f.type.size for f in t.fields) == t.size


def _packed_spec(t: CType) -> Any:
    spec = t.spec()
    spec["packed"] = True
    return spec


def expressible(s: Struct) -> bool:
    """Whether the type language can write this layout (BTF from other compilers' headers may
    place members where no spelling puts them, e.g. under `#pragma pack(2)`)."""
    return _mode(s) is not None


_ARRAY_RE = re.compile(r"([A-Za-z0-9_]+)((?:\[\d+\])+)")
_BITFIELD_RE = re.compile(r"([a-z0-9]+):(\d{1,4})")
MAX_TYPE_SIZE = 1 << 16
# Structs, unions and arrays nested in each other: far beyond any C header, and a bound on every
# walk over a type (parsing, layout, BTF, codecs), whatever a hostile file nests.
MAX_TYPE_DEPTH = 32
SCALAR_NAMES = (*INT_NAMES, "bool", *ADDR_SIZES)

_parsed: dict[str, CType] = {}


# Types one type holds, counted as a tree (a struct's fields, their fields...; an array counts once):
# a C struct holds a few hundred. Types share their parts, so a struct holding two of a struct holding
# two of ... is small as a spec or as BTF and astronomically large as a tree, which hashing it or laying
# it out walks whole.
MAX_TYPE_NODES = 10_000


def type_nodes(typ: CType, memo: dict[int, int]) -> int:
    """How many types `typ` holds as a tree, counted no further than past MAX_TYPE_NODES, in time linear
    in its distinct parts. `memo` maps id() of a type counted before to its count: only for types that
    stay alive while it is used."""
    known = memo.get(id(typ))
    if known is not None:
        return known
    n = 1
    if isinstance(typ, (Struct, CUnion)):
        for f in typ.fields:
            n += type_nodes(f.type, memo)
            if n > MAX_TYPE_NODES:
                break
    elif isinstance(typ, Array):
        n += type_nodes(typ.elem, memo)
    memo[id(typ)] = n
    return n


def _spec_key(spec: Any) -> str | None:
    """A mapping spec as a key of the parse cache; None (not cached) for one repr cannot write
    (an integer beyond Python's 4,300 digits, nesting beyond the recursion limit)."""
    try:
        return repr(spec)
    except (ValueError, RecursionError):
        return None


def parse_type(spec: Any, named: Mapping[str, CType] | None = None) -> CType:
    """Parse a type spec into a `CType`; raises TypeSpecError saying what was expected (and where).

    `named`: types a config imported from BTF (`struct backend_value`, `enum lb_policy`, ...).
    CTypes are immutable, so thousands of maps with the same spec share one parse."""
    cache_key = (spec if isinstance(spec, str) else _spec_key(spec)) if not named else None
    cached = _parsed.get(cache_key) if cache_key is not None else None
    if cached is not None:
        return cached
    typ = _parse(spec, named or {})
    if type_nodes(typ, {}) > MAX_TYPE_NODES:  # before anything walks it whole (hashing, the canonical spelling)
        raise TypeSpecError(f"a type holds at most {MAX_TYPE_NODES} fields and elements, counted as a tree")
    if typ.size == 0 or typ.size > MAX_TYPE_SIZE:
        raise TypeSpecError(f"type size must be 1..{MAX_TYPE_SIZE} bytes, got {shown(typ.size)}")
    if not _spelled_canonically(typ):  # what a map's BTF gives back must be this type again
        raise TypeSpecError("this mix of packed and natural nested structs or unions has no canonical spelling "
                            "(a packed member next to a natural one that needs its alignment): declare the "
                            "nested types with the same packing")
    if cache_key is not None:
        _parsed[cache_key] = typ
    return typ


@cache
def _spelled_canonically(typ: CType) -> bool:
    """Whether the canonical spec parses back to this very type (cached: named types skip the
    spec cache, and thousands of maps share a few of them)."""
    return _parse(typ.spec(), {}) == typ


def _parse_name(spec: str, named: Mapping[str, CType]) -> CType:
    if spec in INT_NAMES:
        return Int(spec)
    if spec == "bool":
        return Bool()
    if spec in ADDR_SIZES:
        return Addr(spec)
    if spec in named:
        return named[spec]
    m = _ARRAY_RE.fullmatch(spec)
    if m:
        lengths = re.findall(r"\d+", m.group(2))
        if len(lengths) > MAX_TYPE_DEPTH or any(len(d) > 6 for d in lengths):
            raise TypeSpecError(f"{shown(spec)}: an array has at most {MAX_TYPE_DEPTH} dimensions, and a type at "
                                f"most {MAX_TYPE_SIZE} bytes")
        base, dims = m.group(1), [int(d) for d in lengths]
        if 0 in dims:
            raise TypeSpecError(f"'{spec}': an array needs at least one element")
        innermost = dims.pop()
        typ: CType
        if base == "bytes":
            typ = Bytes(innermost)
        elif base == "char":
            typ = Chars(innermost)
        elif base in SCALAR_NAMES:
            typ = Array(_parse_name(base, named), innermost)
        else:
            raise _unknown(spec, named)
        for n in reversed(dims):
            typ = Array(typ, n)
        return typ
    raise _unknown(spec, named)


_C_NAME_RE = re.compile(r"^(?:(?:struct|union|enum) )?[A-Za-z_][A-Za-z0-9_]*$")


def _unknown(spec: str, named: Mapping[str, CType]) -> TypeSpecError:
    """Say where a name was looked for: `named` may tell (`searched`: the files under `btf:`)."""
    builtin = (f"{', '.join(INT_NAMES)}, bool, ipv4, ipv6, mac, bytes[N], char[N], T[N], {{lpm: ...}}, {{struct: [...]}}, "
               "{union: [...]}, {enum: ...} or {array: T, length: N}")
    close = difflib.get_close_matches(spec, SCALAR_NAMES, n=1, cutoff=0.6)
    if close or not _C_NAME_RE.match(spec):
        hint = f": did you mean '{close[0]}'? The built-in types are" if close else ": expected one of"
        return TypeSpecError(f"unknown type {shown(spec)}{hint} {builtin}")
    searched = getattr(named, "searched", None) or []
    if searched:
        where = f"not declared in {', '.join(searched)} (the files under btf:, searched in that order)"
    elif named:
        where = "not among the named types given"
    else:
        where = "a C type's name needs a top-level `btf:` list of BPF objects, BTF files or C headers that declare it"
    return TypeSpecError(f"unknown type {shown(spec)}: {where}; the built-in types are {builtin}")


def _members(spec: Any, word: str, named: Mapping[str, CType], bitfields: bool,
             depth: int) -> list[tuple[str, CType, int]]:
    members = spec[word]
    if not isinstance(members, list) or not members:
        raise TypeSpecError(f"a {word} is a non-empty list of {{field: type}} mappings", (word,))
    seen: set[str] = set()
    out: list[tuple[str, CType, int]] = []
    for i, m in enumerate(members):
        if not isinstance(m, dict) or len(m) != 1:
            raise TypeSpecError(f"each {word} field is a mapping of one field name to its type", (word, i))
        (name, ftype), = m.items()
        if not isinstance(name, str) or not IDENT_RE.fullmatch(name):
            raise TypeSpecError(f"{word} field name {shown(name)} is not a C identifier", (word, i))
        if name in seen:
            raise TypeSpecError(f"{word} field '{name}' is defined twice", (word, i, name))
        seen.add(name)
        bits = 0
        bf = _BITFIELD_RE.fullmatch(ftype) if isinstance(ftype, str) else None
        if bf is not None:
            if not bitfields:
                raise TypeSpecError(f"field '{name}': bitfields belong in structs", (word, i, name))
            ftype, bits = bf.group(1), int(bf.group(2))
        try:
            typ = _parse(ftype, named, depth + 1)
        except TypeSpecError as e:
            raise e.inside(word, i, name) from None
        if bf is not None and not (isinstance(typ, (Int, Enum, Bool)) and not getattr(typ, "big_endian", False)
                                   and 0 < bits <= 8 * typ.size):
            raise TypeSpecError(f"field '{name}': a bitfield is a host-order integer type with a width of 1.."
                                f"{8 * typ.size if isinstance(typ, (Int, Enum, Bool)) else 64} bits, like u8:3",
                                (word, i, name))
        out.append((name, typ, bits))
    return out


def _parse(spec: Any, named: Mapping[str, CType], depth: int = 0) -> CType:
    if depth > MAX_TYPE_DEPTH:
        raise TypeSpecError(f"types nest at most {MAX_TYPE_DEPTH} levels deep (structs, unions and arrays in each other)")
    if isinstance(spec, str):
        return _parse_name(spec, named)
    if isinstance(spec, dict):
        if set(spec) == {"lpm"}:
            fam = spec["lpm"]
            if fam not in ("ipv4", "ipv6"):
                raise TypeSpecError(f"lpm family must be ipv4 or ipv6, got {shown(fam)}", ("lpm",))
            return Lpm(fam)
        if "struct" in spec and set(spec) <= {"struct", "packed"}:
            packed = spec.get("packed", False)
            if not isinstance(packed, bool):
                raise TypeSpecError("'packed' must be true or false", ("packed",))
            return Struct.layout(_members(spec, "struct", named, True, depth), packed)
        if "union" in spec and set(spec) <= {"union", "packed"}:
            packed = spec.get("packed", False)
            if not isinstance(packed, bool):
                raise TypeSpecError("'packed' must be true or false", ("packed",))
            return CUnion.layout([(n, t) for n, t, _ in _members(spec, "union", named, False, depth)], packed)
        if set(spec) == {"array", "length"}:
            n = spec["length"]
            if type(n) is not int or not 0 < n <= MAX_TYPE_SIZE:
                raise TypeSpecError(f"an array's length is a positive integer up to {MAX_TYPE_SIZE}, got {shown(n)}",
                                    ("length",))
            try:
                return Array(_parse(spec["array"], named, depth + 1), n)
            except TypeSpecError as e:
                raise e.inside("array") from None
        if "enum" in spec and set(spec) <= {"enum", "values"}:
            return _parse_enum(spec)
        if set(spec) == {"type", "format"}:
            try:
                base = _parse(spec["type"], named)
            except TypeSpecError as e:
                raise e.inside("type") from None
            try:
                presented = _parse(spec["format"], named)
            except TypeSpecError as e:
                raise e.inside("format") from None
            return formatted(base, presented)
        raise TypeSpecError(f"unknown type {shown(spec)}: a mapping type is {{lpm: ...}}, {{struct: [...], packed: bool}}, "
                            "{union: [...]}, {enum: u32, values: {NAME: number}}, {array: T, length: N} or "
                            "{type: T, format: F}")
    raise TypeSpecError(f"a type is a name or a mapping, got {shown(spec)}")


def _parse_enum(spec: dict[str, Any]) -> Enum:
    base = spec["enum"]
    if base not in INT_NAMES or INT_NAMES[base][2]:
        raise TypeSpecError(f"an enum's base is a host-order integer type (u8..u64, i8..i64), got {shown(base)}",
                            ("enum",))
    typ = Int(base)
    lo, hi = (-(1 << (8 * typ.size - 1)), (1 << (8 * typ.size - 1)) - 1) if typ.signed else (0, (1 << 8 * typ.size) - 1)
    values = spec.get("values") or {}
    if not isinstance(values, dict):
        raise TypeSpecError("an enum's values are a mapping of NAME: number", ("values",))
    for name, n in values.items():
        if not isinstance(name, str) or not IDENT_RE.fullmatch(name):
            raise TypeSpecError(f"enum value name {shown(name)} is not a C identifier", ("values", name))
        if type(n) is not int or not lo <= n <= hi:
            raise TypeSpecError(f"enum value {name}: expected an integer {lo}..{hi} for {base}, got {shown(n)}",
                                ("values", name))
    return Enum(typ, tuple(values.items()))


# ---- formats: how a field's bytes are written and shown (`formats:`) ----------------------------

FORMAT_KINDS = (Int, Addr, Bool, Chars, Bytes, Enum)
_FORMAT_PATH_RE = re.compile(r"^(?:[A-Za-z_][A-Za-z0-9_]*)?(?:\[\])*(?:\.[A-Za-z_][A-Za-z0-9_]*(?:\[\])*)*$")


def formatted(base: CType, shown: CType) -> Formatted:
    """`base` shown as `shown`; raises TypeSpecError unless the format can read the base's bytes."""
    if isinstance(base, Formatted):
        base = base.base  # a map's format overrides its type's
    if not isinstance(shown, FORMAT_KINDS):
        raise TypeSpecError(f"a format is a scalar type (an integer, be16..be64, bool, an enum, ipv4, ipv6, mac, char[N] "
                            f"or bytes[N]), got {spec_text(shown.spec())}")
    if not _scalar_bytes(base):
        raise TypeSpecError(f"a format applies to an integer, an array of integers or bytes, not to {spec_text(base.spec())}")
    narrow = shown.size < base.size and isinstance(base, Int) and not base.signed and not base.big_endian
    if shown.size != base.size and not narrow:
        raise TypeSpecError(f"format {spec_text(shown.spec())} is {count(shown.size, 'byte')} but the field's "
                            f"{spec_text(base.spec())} is {base.size} (a narrower format needs an unsigned integer field)")
    if isinstance(shown, Enum) and base != shown.base:
        raise TypeSpecError(f"an enum of {shown.base.name} formats a {shown.base.name} field, not {spec_text(base.spec())}")
    return Formatted(base, shown)


def _scalar_bytes(t: CType) -> bool:
    """Integers, bytes and arrays of them: what a format may read differently."""
    if isinstance(t, Array):
        return _scalar_bytes(t.elem)
    return isinstance(t, (Int, Addr, Bool, Chars, Bytes, Enum, Raw))


def spec_text(spec: Any) -> str:
    """A type spec as messages quote it: a name as it is, a mapping in YAML's flow style."""
    return spec if isinstance(spec, str) else json.dumps(spec).replace('"', "")


def format_path(path: str) -> list[str]:
    """`addr.ip4` -> [addr, ip4]; `service_port[]` -> [service_port, []] (every element); raises TypeSpecError."""
    if not isinstance(path, str) or not path or not _FORMAT_PATH_RE.match(path):
        raise TypeSpecError(f"{path!r} is not a field path: field names joined by '.', '[]' for every element "
                            "of an array (addr.ip4, service_port[])")
    return [step for part in re.split(r"\.|(?=\[\])", path) for step in ([part] if part else [])]


def apply_format(t: CType, steps: Sequence[str], shown: CType) -> CType:
    """`t` with the field at `steps` (see format_path) shown as `shown`; raises TypeSpecError
    (KeyError when the first step names no field of `t`, so a map can try its key and its value)."""
    if not steps:
        return formatted(t, shown)
    step, rest = steps[0], steps[1:]
    if step == "[]":
        if not isinstance(t, Array):
            raise KeyError(step)
        try:
            return Array(apply_format(t.elem, rest, shown), t.length)
        except KeyError as e:
            raise TypeSpecError(missing_step(e.args[0], "an element", t.elem)) from None
    if not isinstance(t, (Struct, CUnion)):
        raise KeyError(step)
    for i, f in enumerate(t.fields):
        if f.name == step:
            if f.bits:
                raise TypeSpecError(f"field '{step}' is a bitfield: a format reads whole bytes")
            try:
                new = apply_format(f.type, rest, shown)
            except KeyError as e:
                raise TypeSpecError(missing_step(e.args[0], f"'{step}'", f.type)) from None
            fields = (*t.fields[:i], Field(f.name, new, f.offset), *t.fields[i + 1:])
            return Struct(fields, t.size, t.align, t.packed) if isinstance(t, Struct) else CUnion(fields, t.size, t.align)
    raise KeyError(step)


def missing_step(step: str, where: str, t: CType) -> str:
    """Why a format's path step leads nowhere in `t` (found at `where`)."""
    if step == "[]":
        return f"{where} is not an array ({spec_text(t.spec())})"
    if isinstance(t, (Struct, CUnion)):
        return f"no field '{step}' in {where} (its fields: {', '.join(f.name for f in t.fields)})"
    return f"no field '{step}' in {where}, a {spec_text(t.spec())}"


def unformatted(t: CType) -> CType:
    """`t` without its formats: the C type whose bytes a format only reads differently."""
    if isinstance(t, Formatted):
        return t.base
    if isinstance(t, Array):
        return Array(unformatted(t.elem), t.length)
    if isinstance(t, (Struct, CUnion)):
        fields = tuple(Field(f.name, unformatted(f.type), f.offset, f.bits, f.bit_offset) for f in t.fields)
        return Struct(fields, t.size, t.align, t.packed) if isinstance(t, Struct) else CUnion(fields, t.size, t.align)
    return t


def formats_of(t: CType, prefix: str = "") -> dict[str, Any]:
    """The formats inside `t` as `formats:` writes them: {path: format spec} (`show` writes them back)."""
    if isinstance(t, Formatted):
        return {prefix: t.shown.spec()}
    if isinstance(t, Array):
        return formats_of(t.elem, prefix + "[]")
    if isinstance(t, (Struct, CUnion)):
        out: dict[str, Any] = {}
        for f in t.fields:
            out.update(formats_of(f.type, f"{prefix}.{f.name}" if prefix else f.name))
        return out
    return {}


def type_or_raw(spec: Any, size: int) -> CType:
    """The type a spec names, or raw bytes of `size` when there is no spec (a map without BTF, `key_size: N`)
    or none that fits: a live map's BTF, read back, may name a type beyond the type language's bounds
    or of another size, and its bytes must still be shown."""
    if spec is None:
        return Raw(size)
    try:
        typ = parse_type(spec)
    except TypeSpecError:
        return Raw(size)
    return typ if typ.size == size else Raw(size)


def same_type(a: Any, b: Any) -> bool:
    """Whether two type specs describe the same bytes read the same way (see the module docstring);
    formats are how bytes are shown, not what they are, so they are left out."""
    if a == b:
        return True
    try:
        return unformatted(parse_type(a)) == unformatted(parse_type(b))
    except TypeSpecError:
        return False
# Copy units for strided copies into packed records (struct columns, interleaved keys and
# values): the widest that divides the offsets and widths involved, with its memoryview code.
COPY_UNITS = ((8, "Q"), (4, "I"), (2, "H"), (1, "B"))


def copy_runs(dst: Any, dst_stride: int, src: Any, src_stride: int, runs: Sequence[tuple[int, int, int]],
              count: int) -> None:
    """For each run (source offset, destination offset, width), copy those bytes of each of `count`
    records of `src_stride` bytes into as many records of `dst_stride` bytes in `dst`: a column
    gathered or scattered, fields moved.

    One strided slice assignment per copy unit of a run's width, so no Python code runs per record;
    a wide record's runs are copied a chunk of records at a time, so its bytes are read from memory
    once, not once per unit (136-byte records, 33 units: 0.3 s a million instead of 1.4 s). A run of
    more units than there are records is copied record by record."""
    chunk = max(1, _CHUNK_BYTES // max(dst_stride, src_stride, 1))
    whole_out, whole_in = memoryview(dst).cast("B")[:dst_stride * count], memoryview(src).cast("B")[:src_stride * count]
    plans = []
    for src_offset, dst_offset, width in runs:
        unit, code = next((u, c) for u, c in COPY_UNITS
                          if dst_offset % u == dst_stride % u == src_offset % u == src_stride % u == width % u == 0)
        plans.append((whole_out.cast(code), whole_in.cast(code),  # type: ignore[call-overload]
                      dst_offset // unit, dst_stride // unit,
                      src_offset // unit, src_stride // unit, width // unit))
    for start in range(0, count, chunk):
        n = min(chunk, count - start)
        for out, data, do, ds, so, ss, w in plans:
            out, data = out[start * ds:(start + n) * ds], data[start * ss:(start + n) * ss]
            if w <= n:
                for j in range(w):
                    out[do + j::ds] = data[so + j::ss]
            else:
                for i in range(n):
                    out[i * ds + do:i * ds + do + w] = data[i * ss + so:i * ss + so + w]


_CHUNK_BYTES = 1 << 18  # records copied together: they stay in the cache across the passes


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
