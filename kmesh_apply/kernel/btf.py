"""BTF for map keys and values: a map carries its C types, so they can be read back.

`show` prints the types the user wrote by decoding the map's BTF, and
`bpftool map dump` prints formatted values. The encoding is chosen so decoding
gives back an equal `CType`:

- u8..i64: INT of that name (signed encoding for i*);
- be16/be32/be64, ipv4/ipv6/mac, bytes[N], raw N bytes: a TYPEDEF of that name
  (be* -> the unsigned INT, the rest -> u8[N]);
- bool: INT `bool` (BOOL encoding); enums: ENUM (ENUM64 for 8 bytes), signed in kind_flag;
- char[N]: ARRAY of the INT `char`; T[N]: ARRAY of T;
- a format (`{type: T, format: F}`): a TYPEDEF `kmesh_fmt_F` of T (of the enum, for enum formats);
- {lpm: F}: STRUCT `lpm_F` {u32 prefixlen; F addr}; structs and unions: anonymous
  STRUCT/UNION with member offsets (bitfields with their widths); a type is its layout,
  so `packed` need not be recorded (see ctype's docstring).

Decoding also reads what clang writes for C sources (typedefs, `char` arrays,
anonymous members: a struct or union whose one member is an anonymous union or
struct is that member; the kernel's network-order typedefs `__be16`, `__be32`,
`__be64`, `__sum16` and `__wsum` as be16/be32), so a BPF object's or raw BTF file's
named types can be used in a config (`NamedTypes`).

Kernel rules this honours (checked in tests/test_kernel_btf.py): an array map's key
must resolve to a 32-bit INT, so other 4-byte key types are recorded there as
`raw` -> u32; an lpm_trie key must resolve to a STRUCT, so a non-struct key is
wrapped in STRUCT `kmesh_key` {v}; storage maps keyed by a file descriptor and prog_array want a 32-bit INT,
a cgroup storage a u64 or `struct bpf_cgroup_storage_key`; a keyless map (queue, stack, bloom
filter) takes a zero-size key type, but a bloom filter takes void (type id 0); outer maps, maps of sockets, devices or CPUs, and the
other types whose kernel code refuses BTF (NO_BTF_TYPES) take none at all.
"""

from __future__ import annotations

import ctypes
import threading

import os
from typing import Any, Iterator, Mapping, Sequence

from kmesh_apply.ctype import (IDENT_RE, MAX_TYPE_NODES, Addr, Array, Bool, Bytes, Chars, CType, CUnion, Enum, Field,
                               Formatted, Int, Lpm, Raw, Struct, TypeSpecError, apply_format, canonical_align, expressible,
                               formatted, parse_type, type_nodes)
from kmesh_apply.errors import KernelError
from kmesh_apply.kernel.failure import fail
from kmesh_apply.kernel.names import flag_names, type_name
from kmesh_apply.kernel import libbpf as L
from kmesh_apply.terminal import printable, shown

BTF_KIND_INT, BTF_KIND_ARRAY, BTF_KIND_STRUCT, BTF_KIND_UNION, BTF_KIND_ENUM = 1, 3, 4, 5, 6
BTF_KIND_TYPEDEF, BTF_KIND_VOLATILE, BTF_KIND_CONST, BTF_KIND_RESTRICT = 8, 9, 10, 11
BTF_KIND_TYPE_TAG, BTF_KIND_ENUM64 = 18, 19
_QUALIFIERS = (BTF_KIND_VOLATILE, BTF_KIND_CONST, BTF_KIND_RESTRICT, BTF_KIND_TYPE_TAG)
BTF_INT_SIGNED, BTF_INT_CHAR, BTF_INT_BOOL = 1, 2, 4
# A format (ctype.Formatted) is a typedef of the field's C type named for the format, so bpftool and
# the data plane see the C type and `show` gets the format back: kmesh_fmt_ipv4, kmesh_fmt_char_8;
# an enum format is a typedef of the enum itself (kmesh_fmt_enum), whose integer is the field's type.
_FORMAT_PREFIX = "kmesh_fmt_"


def _format_token(spec: str) -> str:
    return spec.replace("[", "_").rstrip("]")


def _format_spec(token: str) -> str:
    word, _, n = token.rpartition("_")
    return f"{word}[{n}]" if word in ("char", "bytes") and n.isdigit() else token


# Typedefs whose integers are in network order: ours, and the kernel's (linux/types.h), which C
# headers use for addresses, ports and checksums (__wsum is a 32-bit checksum in network order).
_NETWORK_ORDER = {"be16": "be16", "be32": "be32", "be64": "be64", "__be16": "be16", "__be32": "be32",
                  "__be64": "be64", "__sum16": "be16", "__wsum": "be32"}
_LPM_PREFIX = "lpm_"
_WRAPPER = "kmesh_key"

# How a key must be shaped for a map type's BTF check.
KEY_PLAIN, KEY_INT32, KEY_STRUCT, KEY_CGROUP, KEY_VOID = "plain", "int32", "struct", "cgroup", "void"
_KEY_MODES = {"array": KEY_INT32, "percpu_array": KEY_INT32, "lpm_trie": KEY_STRUCT, "prog_array": KEY_INT32,
              "bloom_filter": KEY_VOID,
              "sk_storage": KEY_INT32, "inode_storage": KEY_INT32, "task_storage": KEY_INT32,
              "cgrp_storage": KEY_INT32, "cgroup_storage": KEY_CGROUP, "percpu_cgroup_storage": KEY_CGROUP}
# Types whose kernel code refuses BTF for key and value (map_check_no_btf: ENOTSUPP), and the
# struct_ops map, whose value type is the kernel's own.
NO_BTF_TYPES = frozenset({"array_of_maps", "hash_of_maps", "perf_event_array", "stack_trace", "cgroup_array",
                          "devmap", "devmap_hash", "sockmap", "sockhash", "cpumap", "xskmap", "struct_ops"})


class _Builder:
    """Adds CTypes to one libbpf `struct btf`, reusing the id of a type already added."""

    def __init__(self) -> None:
        self.btf = L.btf__new_empty()
        if not self.btf:
            raise KernelError("btf__new_empty", "BTF", L.last_errno())
        self._ids: dict[object, int] = {}

    def _check(self, op: str, ret: int) -> int:
        if ret < 0:
            raise KernelError(op, "BTF", -ret, "a type could not be expressed as BTF")
        return ret

    def _memo(self, key: object, make) -> int:
        if key not in self._ids:
            self._ids[key] = make()
        return self._ids[key]

    def int_(self, name: str, size: int, encoding: int) -> int:
        return self._memo(("int", name), lambda: self._check("btf__add_int", L.btf__add_int(self.btf, name.encode(), size, encoding)))

    def typedef(self, name: str, target: int) -> int:
        return self._memo(("typedef", name, target), lambda: self._check("btf__add_typedef", L.btf__add_typedef(self.btf, name.encode(), target)))

    def array(self, elem: int, n: int) -> int:
        index = self.int_("u32", 4, 0)
        return self._memo(("array", elem, n), lambda: self._check("btf__add_array", L.btf__add_array(self.btf, index, elem, n)))

    def struct(self, name: str, size: int, members: list[tuple[str, int, int, int]], union: bool = False) -> int:
        """A STRUCT (or UNION) of (name, type id, bit offset, bitfield width); member types must
        already be added (libbpf adds fields to the last type)."""

        def make() -> int:
            add = L.btf__add_union if union else L.btf__add_struct
            sid = self._check("btf__add_struct", add(self.btf, name.encode() if name else None, size))
            for fname, ftype, bit_offset, bits in members:
                self._check("btf__add_field", L.btf__add_field(self.btf, fname.encode(), ftype, bit_offset, bits))
            return sid

        return self._memo(("union" if union else "struct", name, size, tuple(members)), make)

    def enum(self, t: Enum) -> int:
        def make() -> int:
            if t.size == 8:
                eid = self._check("btf__add_enum64", L.btf__add_enum64(self.btf, None, 8, t.base.signed))
                for name, n in t.values:
                    self._check("btf__add_enum64_value", L.btf__add_enum64_value(self.btf, name.encode(), n % (1 << 64)))
                return eid
            eid = self._check("btf__add_enum", L.btf__add_enum(self.btf, None, t.size))
            for name, n in t.values:
                self._check("btf__add_enum_value", L.btf__add_enum_value(self.btf, name.encode(), n))
            if t.base.signed:  # kind_flag marks a signed enum; libbpf sets it only for negative values
                L.btf__type_by_id(self.btf, eid).contents.info |= 1 << 31
            return eid

        return self._memo(("enum", t), make)

    def u8_array(self, name: str, n: int) -> int:
        return self.typedef(name, self.array(self.int_("u8", 1, 0), n))

    def add(self, t: CType) -> int:
        """The BTF id of t, adding it (and what it is made of) if needed."""
        if isinstance(t, Int):
            if t.big_endian:
                return self.typedef(t.name, self.int_(f"u{t.size * 8}", t.size, 0))
            return self.int_(t.name, t.size, BTF_INT_SIGNED if t.signed else 0)
        if isinstance(t, Addr):
            return self.u8_array(t.family, t.size)
        if isinstance(t, Bytes):
            return self.u8_array("bytes", t.length)
        if isinstance(t, Raw):
            return self.u8_array("raw", t.length)
        if isinstance(t, Chars):
            return self.array(self.int_("char", 1, BTF_INT_CHAR), t.length)
        if isinstance(t, Array):
            return self.array(self.add(t.elem), t.length)
        if isinstance(t, Bool):
            return self.int_("bool", 1, BTF_INT_BOOL)
        if isinstance(t, Enum):
            return self.enum(t)
        if isinstance(t, Lpm):
            members = [("prefixlen", self.add(Int("u32")), 0, 0), ("addr", self.add(Addr(t.family)), 32, 0)]
            return self.struct(_LPM_PREFIX + t.family, t.size, members)
        if isinstance(t, (Struct, CUnion)):
            return self.struct("", t.size, [self._member(t, f) for f in t.fields], isinstance(t, CUnion))
        if isinstance(t, Formatted):
            if isinstance(t.shown, Enum):  # the enum is its own integer (formatted() checks the base is)
                return self.typedef(_FORMAT_PREFIX + "enum", self.add(t.shown))
            return self.typedef(_FORMAT_PREFIX + _format_token(t.shown.spec()), self.add(t.base))
        raise TypeError(f"not a CType: {t!r}")

    def _member(self, t: Struct | CUnion, f: Field) -> tuple[str, int, int, int]:
        """(name, type id, bit offset, bitfield width). In a struct with bitfields the kernel checks a
        plain enum member as if it were 32 bits wide (and refuses wider bitfields), so enums of 1 or 2
        bytes there get their full width as bits."""
        bits = f.bits
        if not bits and isinstance(f.type, Enum) and f.type.size < 4 and any(g.bits for g in t.fields):
            bits = 8 * f.type.size
        return f.name, self.add(f.type), f.bit_offset if f.bits else 8 * f.offset, bits

    def add_key(self, t: CType, mode: str) -> int:
        """The key's id, shaped as the map type's BTF check requires (0: void, for a bloom filter;
        a cgroup storage's raw key is the kernel's `struct bpf_cgroup_storage_key` or a u64)."""
        if mode == KEY_VOID:
            return 0
        if mode == KEY_INT32 and not (isinstance(t, Int) and t.size == 4):
            return self.typedef("raw", self.int_("u32", 4, 0))
        if mode == KEY_CGROUP and isinstance(t, Raw):
            u64 = self.int_("u64", 8, 0)
            if t.size == 8:
                return u64
            members = [("cgroup_inode_id", u64, 0, 0), ("attach_type", self.int_("u32", 4, 0), 64, 0)]
            return self.struct("bpf_cgroup_storage_key", t.size, members)
        if mode == KEY_STRUCT and not isinstance(t, (Struct, Lpm)):
            inner = self.add(t)
            return self.struct(_WRAPPER, t.size, [("v", inner, 0, 0)])
        return self.add(t)


class LoadedBtf:
    """A BTF object loaded into the kernel with the ids of a key and a value type in it."""

    def __init__(self, builder: _Builder, key_id: int, value_id: int):
        self._btf = builder.btf
        self.key_id = key_id
        self.value_id = value_id
        ret = L.btf__load_into_kernel(self._btf)
        if ret < 0:
            L.btf__free(self._btf)
            raise fail("BTF load", "map key/value types", -ret)
        self.fd = L.btf__fd(self._btf)


_lock = threading.Lock()
_loaded: dict[tuple[str, CType, CType], LoadedBtf] = {}
_decoded: dict[tuple[int, int, int], CType] = {}


def btf_for(map_type: str, key: CType, value: CType) -> LoadedBtf | None:
    """The loaded BTF describing key and value for a map of map_type (None: the type takes no BTF).

    Cached per (key shape, key, value): creating thousands of maps of the same
    types loads BTF once; the cached objects live as long as the process.
    """
    if map_type in NO_BTF_TYPES or not value.size:  # no value (ringbuf, arena): nothing to describe
        return None
    mode = _KEY_MODES.get(map_type, KEY_PLAIN)
    cache_key = (mode, key, value)
    with _lock:
        loaded = _loaded.get(cache_key)
        if loaded is None:
            b = _Builder()
            key_id = b.add_key(key, mode)
            loaded = LoadedBtf(b, key_id, b.add(value))
            _loaded[cache_key] = loaded
        return loaded


class _Unrepresentable(Exception):
    """The BTF describes something our type language has no word for; the message says what (none:
    a layout, see LAYOUT)."""


LAYOUT = ("a layout the type language cannot write (a bitfield or member placement neither natural nor packed, "
          "or a zero-length or flexible array)")
# Steps from a type to what it is made of (typedefs, qualifiers, members, elements) that decoding one
# type may take. clang's types take a few dozen; libbpf accepts a file whose types contain themselves,
# or chain thousands deep, and a walk of those would never end or would exhaust the stack.
MAX_STEPS = 128
_TOO_LARGE = f"types holding more than {MAX_TYPE_NODES} fields and elements as a tree: not BTF a compiler writes"
_TOO_DEEP = (f"types that contain themselves or nest more than {MAX_STEPS} steps deep (typedefs, qualifiers, "
             "members): not BTF a compiler writes")


class _Reader:
    """Decodes the types of one BTF object (a map's, loaded from the kernel, or a file's) into CTypes."""

    def __init__(self, btf: int, what: str):
        self.btf = btf
        self.what = what
        self._done: dict[int, CType] = {}
        self.formats: Mapping[str, list[TypeFormat]] = {}  # by C name: see NamedTypes.set_formats
        self._weights: dict[int, int] = {}  # type_nodes' memo, for types kept alive by _done

    @staticmethod
    def from_kernel(btf_id: int) -> "_Reader":
        btf = L.btf__load_from_kernel_by_id(btf_id)
        if not btf:
            raise KernelError("BTF load by id", f"BTF id {btf_id}", L.last_errno())
        return _Reader(btf, f"BTF id {btf_id}")

    def close(self) -> None:
        L.btf__free(self.btf)

    def name(self, offset: int) -> str:
        """The string at `offset`; a name that is no UTF-8 text is no C name."""
        try:
            return (L.btf__name_by_offset(self.btf, offset) or b"").decode()
        except UnicodeDecodeError:
            raise _Unrepresentable("a name that is not UTF-8 text") from None

    def _identifier(self, offset: int, what: str) -> str:
        """A member's or enum value's name: empty (anonymous) or a C identifier, which a config can write."""
        name = self.name(offset)
        if name and not IDENT_RE.fullmatch(name):
            raise _Unrepresentable(f"{what} name {shown(name)} that is not a C identifier")
        return name

    def _type(self, tid: int, depth: int = 0) -> tuple[int, str, L.BtfType, int]:
        if depth > MAX_STEPS:
            raise _Unrepresentable(_TOO_DEEP)
        p = L.btf__type_by_id(self.btf, tid)
        if not p:
            raise _Unrepresentable(f"a reference to type {tid}, which the BTF does not hold")
        t = p.contents
        return (t.info >> 24) & 0x1F, self.name(t.name_off), t, ctypes.addressof(t) + ctypes.sizeof(L.BtfType)

    def _size(self, tid: int, depth: int = 0) -> int:
        kind, _, t, extra = self._type(tid, depth)
        if kind == BTF_KIND_TYPEDEF or kind in _QUALIFIERS:
            return self._size(t.size_or_type, depth + 1)
        if kind == BTF_KIND_ARRAY:
            a = L.BtfArray.from_address(extra)
            return self._size(a.type, depth + 1) * a.nelems
        return t.size_or_type

    def _is_char(self, tid: int, depth: int) -> bool:
        kind, name, t, extra = self._type(tid, depth)
        if kind == BTF_KIND_TYPEDEF or kind in _QUALIFIERS:
            return self._is_char(t.size_or_type, depth + 1)
        return kind == BTF_KIND_INT and (name == "char" or bool(ctypes.c_uint32.from_address(extra).value >> 24 & BTF_INT_CHAR))

    def decode(self, tid: int, depth: int = 0) -> CType:
        """The CType of type `tid`; `depth`: the steps taken to reach it (bounded by MAX_STEPS)."""
        typ = self._done.get(tid)
        if typ is None:
            typ = self._decode(tid, depth)
            if self.formats:
                typ = self._formatted_as_named(tid, typ)
            self._done[tid] = typ
        return typ

    def _formatted_as_named(self, tid: int, typ: CType) -> CType:
        """A named struct, union or typedef with the formats given for its name."""
        kind, name, _, _ = self._type(tid)
        word = {BTF_KIND_STRUCT: "struct ", BTF_KIND_UNION: "union ", BTF_KIND_TYPEDEF: ""}.get(kind)
        for steps, shown in self.formats.get(f"{word}{name}", ()) if word is not None and name else ():
            typ = apply_format(typ, steps, shown)  # NamedTypes.set_formats kept only paths that apply
        return typ

    def _decode(self, tid: int, depth: int) -> CType:
        kind, name, t, extra = self._type(tid, depth)
        if kind == BTF_KIND_INT:
            enc = ctypes.c_uint32.from_address(extra).value >> 24
            if enc & BTF_INT_BOOL and t.size_or_type == 1:
                return Bool()
            if t.size_or_type not in (1, 2, 4, 8):
                raise _Unrepresentable()
            return Int(f"{'i' if enc & BTF_INT_SIGNED else 'u'}{t.size_or_type * 8}")
        if kind == BTF_KIND_TYPEDEF:
            if name in _NETWORK_ORDER and self._size(tid) == Int(_NETWORK_ORDER[name]).size:
                return Int(_NETWORK_ORDER[name])
            if name.startswith(_FORMAT_PREFIX):
                return self._formatted(name[len(_FORMAT_PREFIX):], self.decode(t.size_or_type))
            if name in ("ipv4", "ipv6", "mac"):
                return Addr(name)
            if name == "bytes":
                return Bytes(self._size(tid, depth))
            if name == "raw":
                return Raw(self._size(tid, depth))
            return self.decode(t.size_or_type, depth + 1)
        if kind in _QUALIFIERS:
            return self.decode(t.size_or_type, depth + 1)
        if kind == BTF_KIND_ARRAY:
            a = L.BtfArray.from_address(extra)
            if self._is_char(a.type, depth + 1):
                return Chars(a.nelems)
            if not a.nelems:
                raise _Unrepresentable()
            return Array(self.decode(a.type, depth + 1), a.nelems)
        if kind in (BTF_KIND_STRUCT, BTF_KIND_UNION):
            return self._members(kind, name, t, extra, depth)
        if kind in (BTF_KIND_ENUM, BTF_KIND_ENUM64):
            return self._enum(kind, t, extra)
        raise _Unrepresentable()

    @staticmethod
    def _formatted(token: str, base: CType) -> CType:
        """A format's typedef read back; the plain type when it does not fit (not one of ours)."""
        try:
            if token == "enum":
                return formatted(base.base, base) if isinstance(base, Enum) else base
            return formatted(base, parse_type(_format_spec(token)))
        except TypeSpecError:
            return base

    def _enum(self, kind: int, t: L.BtfType, extra: int) -> Enum:
        signed, size, n = bool(t.info >> 31), t.size_or_type, t.info & 0xFFFF
        if size not in (1, 2, 4, 8):
            raise _Unrepresentable()
        base = Int(f"{'i' if signed else 'u'}{size * 8}")
        values = []
        if kind == BTF_KIND_ENUM:
            for e in (L.BtfEnum * n).from_address(extra):
                values.append((e.name_off, e.val if signed else e.val % (1 << 32)))
        else:
            for e64 in (L.BtfEnum64 * n).from_address(extra):
                v = e64.val_hi32 << 32 | e64.val_lo32
                values.append((e64.name_off, v - (1 << 64) if signed and v >> 63 else v))
        lo, hi = (-(1 << (8 * size - 1)), 1 << (8 * size - 1)) if signed else (0, 1 << (8 * size))
        named = tuple((self._identifier(off, "an enum value"), v) for off, v in values)
        if any(not lo <= v < hi for _, v in named):
            raise _Unrepresentable()  # a value wider than the enum's size: not something we can write
        return Enum(base, named)

    def _members(self, kind: int, name: str, t: L.BtfType, extra: int, depth: int) -> CType:
        bitfields = bool(t.info >> 31)
        members = (L.BtfMember * (t.info & 0xFFFF)).from_address(extra)
        if kind == BTF_KIND_STRUCT and name == _WRAPPER and len(members) == 1:
            return self.decode(members[0].type, depth + 1)
        if kind == BTF_KIND_STRUCT and name.startswith(_LPM_PREFIX) and name[len(_LPM_PREFIX):] in ("ipv4", "ipv6"):
            return Lpm(name[len(_LPM_PREFIX):])
        if not members:
            raise _Unrepresentable()
        fields = []
        weight = 1
        for i, m in enumerate(members):
            mname = self._identifier(m.name_off, "a member")
            mtype = self.decode(m.type, depth + 1)
            weight += type_nodes(mtype, self._weights)
            if weight > MAX_TYPE_NODES:
                raise _Unrepresentable(_TOO_LARGE)
            bit_offset, bits = (m.offset & 0xFFFFFF, m.offset >> 24) if bitfields else (m.offset, 0)
            if not mname:
                if len(members) == 1 and isinstance(mtype, (Struct, CUnion)) and mtype.size == t.size_or_type:
                    return mtype  # struct ip_addr { union { ... }; } is the union
                mname = f"_anon{i}"
            if bits and not (bits == 8 * mtype.size and bit_offset % 8 == 0):
                fields.append(Field(mname, mtype, bit_offset // 8, bits, bit_offset))
            elif bit_offset % 8:
                raise _Unrepresentable()
            else:
                fields.append(Field(mname, mtype, bit_offset // 8))
        if kind == BTF_KIND_UNION:
            u = CUnion(tuple(fields), t.size_or_type)
            members = [(f.name, f.type) for f in fields]
            natural = CUnion.layout(members, False, [canonical_align(f.type) for f in fields])
            if any(f.offset or f.bits for f in fields) or u not in (natural, CUnion.layout(members, True)):
                raise _Unrepresentable()
            return CUnion(u.fields, u.size, canonical_align(u))
        s = Struct(tuple(fields), t.size_or_type)
        if not expressible(s):
            raise _Unrepresentable()
        return Struct(s.fields, s.size, canonical_align(s))


def decode_types(btf_id: int, *types: tuple[int, int]) -> list[CType]:
    """The CTypes of (type_id, size) pairs of one BTF object, loaded once for all of them (a map's
    key and value: half the loads of decoding them one by one); Raw(size) where BTF cannot say more."""
    out: list[CType] = []
    reader: _Reader | None = None
    try:
        for type_id, size in types:
            if not btf_id or not type_id:
                out.append(Raw(size))
                continue
            with _lock:
                typ = _decoded.get((btf_id, type_id, size))
            if typ is None:
                reader = reader or _Reader.from_kernel(btf_id)
                try:
                    typ = reader.decode(type_id)
                except _Unrepresentable:
                    typ = Raw(size)
                if typ.size != size:
                    typ = Raw(size)
                with _lock:
                    _decoded[(btf_id, type_id, size)] = typ
            out.append(typ)
    finally:
        if reader is not None:
            reader.close()
    return out


_NAMED_KINDS = {"struct": BTF_KIND_STRUCT, "union": BTF_KIND_UNION, "enum": BTF_KIND_ENUM}


class BtfFileError(Exception):
    """A BTF file that cannot be used; the message says why."""


# A format of a named type: the path to a field (ctype.format_path) and how it is shown.
TypeFormat = tuple[Sequence[str], CType]


class NamedTypes(Mapping[str, CType]):
    """The named C types of BPF object files (their .BTF section) or raw BTF files, by the name a
    C programmer writes: `struct backend_value`, `union ip_addr`, `enum lb_policy`, or a typedef's
    name (`backend_value`, which Kmesh's headers give anonymous structs). Each is decoded on first use."""

    def __init__(self) -> None:
        self._readers: list[_Reader] = []
        self._found: dict[str, CType] = {}

    def add(self, path: str) -> None:
        """Look names up in this file too (after those added before); raises BtfFileError."""
        self._readers.append(_open_file(path))

    def add_raw(self, data: bytes, what: str) -> None:
        """Look names up in this raw BTF too (`what`: where it came from, for messages)."""
        btf = L.btf__new(data, len(data))
        if not btf:
            raise BtfFileError(f"{what}: not valid BTF ({os.strerror(L.last_errno())})")
        self._readers.append(_Reader(btf, what))

    def set_formats(self, formats: Mapping[str, list[TypeFormat]]) -> None:
        """Show fields of these named types (`struct ip_addr`, a typedef's name) in these formats,
        wherever the types are used: in a map's key or value, or inside another type. Each path
        must apply to the type as decoded before (the config checks that first)."""
        self._found.clear()
        for r in self._readers:
            r._done.clear()
            r.formats = formats

    @property
    def searched(self) -> list[str]:
        """Where names are looked up, in order (for messages that say a name was not found)."""
        return [r.what for r in self._readers]

    def close(self) -> None:
        for r in self._readers:
            r.close()
        self._readers = []

    def __enter__(self) -> "NamedTypes":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _lookup(self, name: str) -> CType | None:
        word, _, rest = name.partition(" ")
        kinds = [_NAMED_KINDS[word]] if rest and word in _NAMED_KINDS else [BTF_KIND_TYPEDEF] if not rest else []
        if kinds == [BTF_KIND_ENUM]:
            kinds.append(BTF_KIND_ENUM64)
        for reader in self._readers:
            for kind in kinds:
                tid = L.btf__find_by_name_kind(reader.btf, (rest or name).encode(), kind)
                if tid > 0:
                    try:
                        return reader.decode(tid)
                    except _Unrepresentable as e:
                        raise TypeSpecError(f"'{name}' in {printable(reader.what)} has {str(e) or LAYOUT}") from None
        return None

    def map_definition(self, name: str) -> tuple[dict[str, Any], str] | None:
        """What the first file declaring map `name` in its `.maps` section says of it, as config keys
        (type, key or key_size, value or value_size, max_entries, flags), and that file."""
        for reader in self._readers:
            try:
                found = _map_definition(reader, name)
            except _Unrepresentable as e:
                raise TypeSpecError(f"map '{name}' in {printable(reader.what)}: its declaration has {str(e) or LAYOUT}") from None
            if found is not None:
                return found, reader.what
        return None

    def __getitem__(self, name: str) -> CType:
        if name not in self._found:
            typ = self._lookup(name)
            if typ is None:
                raise KeyError(name)
            self._found[name] = typ
        return self._found[name]

    def __contains__(self, name: object) -> bool:
        if not isinstance(name, str):
            return False
        try:
            self[name]
        except KeyError:
            return False
        return True

    def __iter__(self) -> Iterator[str]:
        return iter(self._found)

    def __len__(self) -> int:
        return len(self._found)

    def __bool__(self) -> bool:
        return bool(self._readers)


def _open_file(path: str) -> _Reader:
    if not os.path.isfile(path):
        raise BtfFileError(f"{path}: no such file")
    btf = L.btf__parse(path.encode(), None)
    if not btf:
        err = L.last_errno()
        if err in (2, 61):  # ENOENT, ENODATA: libbpf's words for an ELF file without a .BTF section
            raise BtfFileError(f"{path}: no BTF in it (compile the BPF object with clang -g so it has a .BTF section)")
        raise BtfFileError(f"{path}: not a BPF object file or raw BTF file ({os.strerror(err)})")
    return _Reader(btf, path)


def object_btf(path: str) -> bytes:
    """The raw `.BTF` of a BPF object or BTF file (what `add_raw` takes); raises BtfFileError."""
    reader = _open_file(path)
    try:
        size = ctypes.c_uint32()
        data = L.btf__raw_data(reader.btf, ctypes.byref(size))
        if not data:
            raise BtfFileError(f"{path}: its BTF cannot be read back ({os.strerror(L.last_errno())})")
        return ctypes.string_at(data, size.value)
    finally:
        reader.close()


BTF_KIND_PTR, BTF_KIND_VAR, BTF_KIND_DATASEC = 2, 14, 15


def _map_definition(reader: _Reader, name: str) -> dict[str, Any] | None:
    """The map `name` declared in the object's `.maps` section (libbpf's BTF-defined maps:
    `__uint(type, ...)`, `__type(key, ...)`, `__uint(max_entries, ...)`, ...) as config keys, or
    None when the object declares no such map."""
    sec = L.btf__find_by_name_kind(reader.btf, b".maps", BTF_KIND_DATASEC)
    if sec <= 0:
        return None
    _, _, t, extra = reader._type(sec)
    for info in (L.BtfVarSecinfo * (t.info & 0xFFFF)).from_address(extra):
        kind, var_name, var, _ = reader._type(info.type)
        if kind == BTF_KIND_VAR and var_name == name:
            return _declared(reader, var.size_or_type)
    return None


def _declared(reader: _Reader, tid: int) -> dict[str, Any]:
    kind, _, t, extra = reader._type(tid)
    depth = 0
    while kind == BTF_KIND_TYPEDEF or kind in _QUALIFIERS:
        depth += 1
        kind, _, t, extra = reader._type(t.size_or_type, depth)
    if kind != BTF_KIND_STRUCT:
        raise TypeSpecError("not a BTF-defined map (a struct of __uint/__type members)")
    out: dict[str, Any] = {}
    for m in (L.BtfMember * (t.info & 0xFFFF)).from_address(extra):
        field = reader.name(m.name_off)
        pkind, _, ptr, _ = reader._type(m.type)
        if pkind != BTF_KIND_PTR:
            continue
        target = ptr.size_or_type
        if field in ("key", "value"):
            try:
                out[field] = reader.decode(target).spec()
            except _Unrepresentable:
                out[f"{field}_size"] = reader._size(target)
            continue
        akind, _, _, aextra = reader._type(target)
        if akind != BTF_KIND_ARRAY:
            continue  # __array(values, ...): the inner map's template, which a config names itself
        n = L.BtfArray.from_address(aextra).nelems
        if field == "type":
            out["type"] = type_name(n)
        elif field in ("key_size", "value_size", "max_entries"):
            out[field] = n
        elif field == "map_flags" and n:
            out["flags"] = list(flag_names(n))
    for which in ("key", "value"):
        if which in out:
            out.pop(f"{which}_size", None)
    return out
