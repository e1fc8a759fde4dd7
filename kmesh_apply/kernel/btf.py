"""BTF for map keys and values: a map carries its C types, so they can be read back.

`show` prints the types the user wrote by decoding the map's BTF, and
`bpftool map dump` prints formatted values. The encoding is chosen so decoding
gives back an equal `CType`:

- u8..i64: INT of that name (signed encoding for i*);
- be16/be32/be64, ipv4/ipv6/mac, bytes[N], raw N bytes: a TYPEDEF of that name
  (be* -> the unsigned INT, the rest -> u8[N]);
- char[N]: ARRAY of the INT `char`; T[N]: ARRAY of T;
- {lpm: F}: STRUCT `lpm_F` {u32 prefixlen; F addr}; structs: anonymous STRUCT,
  packed recovered by comparing member offsets with the natural layout.

Kernel rules this honours (checked in tests/test_kernel_btf.py): an array map's key
must resolve to a 32-bit INT, so other 4-byte key types are recorded there as
`raw` -> u32; an lpm_trie key must resolve to a STRUCT, so a non-struct key is
wrapped in STRUCT `kmesh_key` {v}; outer maps take no BTF at all.
"""

from __future__ import annotations

import ctypes
import threading

from kmesh_apply.ctype import Addr, Array, Bytes, Chars, CType, Int, Lpm, Raw, Struct
from kmesh_apply.errors import KernelError
from kmesh_apply.kernel.failure import fail
from kmesh_apply.kernel import libbpf as L

BTF_KIND_INT, BTF_KIND_ARRAY, BTF_KIND_STRUCT = 1, 3, 4
BTF_KIND_TYPEDEF, BTF_KIND_VOLATILE, BTF_KIND_CONST = 8, 9, 10
BTF_INT_SIGNED, BTF_INT_CHAR = 1, 2
_TYPEDEF_BYTES = ("ipv4", "ipv6", "mac", "bytes", "raw")
_LPM_PREFIX = "lpm_"
_WRAPPER = "kmesh_key"

# How a key must be shaped for a map type's BTF check.
KEY_PLAIN, KEY_INT32, KEY_STRUCT = "plain", "int32", "struct"
_KEY_MODES = {"array": KEY_INT32, "percpu_array": KEY_INT32, "lpm_trie": KEY_STRUCT}
NO_BTF_TYPES = frozenset({"array_of_maps", "hash_of_maps"})


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

    def struct(self, name: str, size: int, members: list[tuple[str, int, int]]) -> int:
        """A STRUCT; member types must already be added (libbpf adds fields to the last type)."""

        def make() -> int:
            sid = self._check("btf__add_struct", L.btf__add_struct(self.btf, name.encode() if name else None, size))
            for fname, ftype, offset in members:
                self._check("btf__add_field", L.btf__add_field(self.btf, fname.encode(), ftype, offset * 8, 0))
            return sid

        return self._memo(("struct", name, size, tuple(members)), make)

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
        if isinstance(t, Lpm):
            members = [("prefixlen", self.add(Int("u32")), 0), ("addr", self.add(Addr(t.family)), 4)]
            return self.struct(_LPM_PREFIX + t.family, t.size, members)
        if isinstance(t, Struct):
            members = [(f.name, self.add(f.type), f.offset) for f in t.fields]
            return self.struct("", t.size, members)
        raise TypeError(f"not a CType: {t!r}")

    def add_key(self, t: CType, mode: str) -> int:
        """The key's id, shaped as the map type's BTF check requires."""
        if mode == KEY_INT32 and not (isinstance(t, Int) and t.size == 4):
            return self.typedef("raw", self.int_("u32", 4, 0))
        if mode == KEY_STRUCT and not isinstance(t, (Struct, Lpm)):
            inner = self.add(t)
            return self.struct(_WRAPPER, t.size, [("v", inner, 0)])
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
    if map_type in NO_BTF_TYPES:
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
    """The BTF describes something our type language has no word for."""


class _Reader:
    """Decodes types of one kernel BTF object back into CTypes."""

    def __init__(self, btf_id: int):
        self.btf = L.btf__load_from_kernel_by_id(btf_id)
        if not self.btf:
            raise KernelError("BTF load by id", f"BTF id {btf_id}", L.last_errno())

    def close(self) -> None:
        L.btf__free(self.btf)

    def _type(self, tid: int) -> tuple[int, str, L.BtfType, int]:
        p = L.btf__type_by_id(self.btf, tid)
        if not p:
            raise _Unrepresentable(tid)
        t = p.contents
        name = (L.btf__name_by_offset(self.btf, t.name_off) or b"").decode()
        return (t.info >> 24) & 0x1F, name, t, ctypes.addressof(t) + ctypes.sizeof(L.BtfType)

    def _size(self, tid: int) -> int:
        kind, _, t, extra = self._type(tid)
        if kind in (BTF_KIND_TYPEDEF, BTF_KIND_CONST, BTF_KIND_VOLATILE):
            return self._size(t.size_or_type)
        if kind == BTF_KIND_ARRAY:
            a = L.BtfArray.from_address(extra)
            return self._size(a.type) * a.nelems
        return t.size_or_type

    def decode(self, tid: int) -> CType:
        kind, name, t, extra = self._type(tid)
        if kind == BTF_KIND_INT:
            enc = ctypes.c_uint32.from_address(extra).value >> 24
            if enc & BTF_INT_CHAR or t.size_or_type not in (1, 2, 4, 8):
                raise _Unrepresentable(name)
            return Int(f"{'i' if enc & BTF_INT_SIGNED else 'u'}{t.size_or_type * 8}")
        if kind == BTF_KIND_TYPEDEF:
            if name in ("be16", "be32", "be64"):
                return Int(name)
            if name in ("ipv4", "ipv6", "mac"):
                return Addr(name)
            if name == "bytes":
                return Bytes(self._size(tid))
            if name == "raw":
                return Raw(self._size(tid))
            return self.decode(t.size_or_type)
        if kind in (BTF_KIND_CONST, BTF_KIND_VOLATILE):
            return self.decode(t.size_or_type)
        if kind == BTF_KIND_ARRAY:
            a = L.BtfArray.from_address(extra)
            ekind, _, et, eextra = self._type(a.type)
            if ekind == BTF_KIND_INT and ctypes.c_uint32.from_address(eextra).value >> 24 & BTF_INT_CHAR:
                return Chars(a.nelems)
            elem = self.decode(a.type)
            if not isinstance(elem, (Int, Addr)):
                raise _Unrepresentable(name)
            return Array(elem, a.nelems)
        if kind == BTF_KIND_STRUCT:
            return self._struct(name, t, extra)
        raise _Unrepresentable(name)

    def _struct(self, name: str, t: L.BtfType, extra: int) -> CType:
        if t.info >> 31:  # kind_flag: bitfield members
            raise _Unrepresentable(name)
        members = (L.BtfMember * (t.info & 0xFFFF)).from_address(extra)
        if name == _WRAPPER and len(members) == 1:
            return self.decode(members[0].type)
        if name.startswith(_LPM_PREFIX) and name[len(_LPM_PREFIX):] in ("ipv4", "ipv6"):
            return Lpm(name[len(_LPM_PREFIX):])
        if any(m.offset % 8 for m in members):
            raise _Unrepresentable(name)
        named = [((L.btf__name_by_offset(self.btf, m.name_off) or b"").decode(), self.decode(m.type)) for m in members]
        offsets = [m.offset // 8 for m in members]
        for packed in (False, True):
            s = Struct.layout(named, packed)
            if [f.offset for f in s.fields] == offsets and s.size == t.size_or_type:
                return s
        raise _Unrepresentable(name)


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
                reader = reader or _Reader(btf_id)
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
