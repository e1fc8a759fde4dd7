"""Values as users write them <-> the exact bytes a C compiler lays out (contract section 2).

Entries are compared, planned and written as bytes, so this is the one place that
knows how a YAML value becomes key or value bytes and back. Maps can hold a million
entries, so each type is compiled once into a closure (`encoder`, `_decoder`) and
whole columns of values (all the values of one map) are encoded at once
(`encode_column`: a struct column is split into one column per field, each packed
by one call, then interleaved); the careful checks that build a helpful message run
only on the per-value path, which a column falls back to for anything unusual.
"""

from __future__ import annotations

import difflib
import re
import socket
import struct
from array import array
from functools import lru_cache
from itertools import chain, repeat
from operator import itemgetter
from typing import Any, Callable, Sequence, TypeGuard

from kmesh_apply.ctype import (COPY_UNITS, Addr, Array, Bool, Bytes, Chars, CType, CUnion, Enum, Field, Formatted, Int, Lpm,
                               Raw, Struct, records, spec_text)
from kmesh_apply.terminal import shown
from kmesh_apply.wording import count

Encoder = Callable[[Any], bytes]
Decoder = Callable[[bytes], Any]
ColumnEncoder = Callable[[Sequence[Any]], bytes]

_HEX_INT_RE = re.compile(r"0[xX][0-9a-fA-F]+")
_HEX_RE = re.compile(r"(?:0[xX])?([0-9a-fA-F]*)")
_MAC_RE = re.compile(r"[0-9a-fA-F]{2}(?::[0-9a-fA-F]{2}){5}")
_INT_CODES = {1: "B", 2: "H", 4: "I", 8: "Q"}
_FAMILY = {"ipv4": (socket.AF_INET, "an IPv4 address like 10.0.0.1", "an IPv4 CIDR like 10.0.0.0/8"),
           "ipv6": (socket.AF_INET6, "an IPv6 address like fd00::1", "an IPv6 CIDR like fd00::/64")}
PER_CPU = "per_cpu"


class CodecError(ValueError):
    """A value that does not fit its type. `path` locates it inside a struct or array
    (field names and element indexes) so the message can name the field."""

    def __init__(self, reason: str, path: tuple[str | int, ...] = ()):
        self.reason, self.path = reason, path
        super().__init__(f"{_path_text(path)}: {reason}" if path else reason)

    def inside(self, part: str | int) -> "CodecError":
        """The same problem seen from the enclosing struct field or array element."""
        return CodecError(self.reason, (part, *self.path))


def _path_text(path: tuple[str | int, ...]) -> str:
    text = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in path).lstrip(".")
    return f"element {text}" if isinstance(path[0], int) else f"field '{text}'"


def _fail(expected: str, value: Any) -> CodecError:
    return CodecError(f"expected {expected}, got {shown(value)}")


# ---------------------------------------------------------------- integers


def _int_format(typ: Int | Raw) -> str:
    """struct format code with byte order: Raw is little-endian unsigned."""
    code = _INT_CODES[typ.size]
    if isinstance(typ, Int) and typ.signed:
        code = code.lower()
    return (">" if isinstance(typ, Int) and typ.big_endian else "<") + code


def _int_range(typ: Int | Raw) -> tuple[int, int]:
    bits = 8 * typ.size
    if isinstance(typ, Int) and typ.signed:
        return -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    return 0, (1 << bits) - 1


def _int_expected(typ: Int) -> str:
    lo, hi = _int_range(typ)
    return f"an integer {lo}..{hi} for {typ.name}"


def _as_int(value: Any) -> int | None:
    """An int or a "0x..." string as int; None for anything else (bools included)."""
    if type(value) is int:
        return value
    if isinstance(value, str) and _HEX_INT_RE.fullmatch(value):
        return int(value, 16)
    return None


def _checked_int(typ: Int | Raw, value: Any, expected: str) -> bytes:
    n = _as_int(value)
    lo, hi = _int_range(typ)
    if n is None or not lo <= n <= hi:
        raise _fail(expected, value)
    return struct.pack(_int_format(typ), n)


def _with_int_fast_path(typ: Int | Raw, slow: Encoder) -> Encoder:
    """A plain int in range packs straight away; anything else takes `slow` (which explains errors)."""
    pack = struct.Struct(_int_format(typ)).pack

    def enc(value: Any) -> bytes:
        if value.__class__ is int:
            try:
                return pack(value)
            except struct.error:
                pass
        return slow(value)
    return enc


def _int_encoder(typ: Int) -> Encoder:
    expected = _int_expected(typ)
    return _with_int_fast_path(typ, lambda value: _checked_int(typ, value, expected))


def _hex_bytes(value: Any, size: int, expected: str) -> bytes:
    m = _HEX_RE.fullmatch(value) if isinstance(value, str) else None
    if m is None or len(m.group(1)) != 2 * size:
        raise _fail(expected, value)
    return bytes.fromhex(m.group(1))


def _raw_encoder(typ: Raw) -> Encoder:
    if typ.size not in _INT_CODES:
        expected = f"a hex string of {2 * typ.size} digits"
        return lambda value: _hex_bytes(value, typ.size, expected)
    lo, hi = _int_range(typ)
    expected = f"an integer {lo}..{hi} or a hex string of {2 * typ.size} digits"

    def slow(value: Any) -> bytes:
        if isinstance(value, str):
            return _hex_bytes(value, typ.size, expected)
        raise _fail(expected, value)
    return _with_int_fast_path(typ, slow)


# ---------------------------------------------------------------- addresses and byte runs


def _ip_encoder(family: str) -> Encoder:
    af, expected, _ = _FAMILY[family]

    def enc(value: Any) -> bytes:
        try:
            return socket.inet_pton(af, value)
        except (OSError, TypeError, ValueError):
            raise _fail(expected, value) from None
    return enc


def _encode_mac(value: Any) -> bytes:
    if not isinstance(value, str) or not _MAC_RE.fullmatch(value):
        raise _fail("a MAC address like 02:00:00:00:00:01", value)
    return bytes.fromhex(value.replace(":", ""))


def _chars_encoder(typ: Chars) -> Encoder:
    def enc(value: Any) -> bytes:
        if not isinstance(value, str):
            raise _fail(f"a string of at most {count(typ.size, 'byte')} for char[{typ.size}]", value)
        data = value.encode()
        if len(data) > typ.size:
            raise CodecError(f"expected a string of at most {count(typ.size, 'byte')} for char[{typ.size}], "
                             f"got {shown(value)} ({count(len(data), 'byte')} in UTF-8)")
        return data.ljust(typ.size, b"\0")
    return enc


def _lpm_encoder(typ: Lpm) -> Encoder:
    af, _, expected = _FAMILY[typ.family]
    bits = 8 * (typ.size - 4)
    prefix_pack = struct.Struct("<I").pack

    def enc(value: Any) -> bytes:
        if not isinstance(value, str) or value.count("/") != 1:
            raise _fail(expected, value)
        addr, plen = value.split("/")
        try:
            packed = socket.inet_pton(af, addr)
        except (OSError, ValueError):
            raise _fail(expected, value) from None
        if not (plen.isascii() and plen.isdigit()) or not 0 <= int(plen) <= bits:
            raise CodecError(f"expected a prefix length 0..{bits}, got {shown(value)}")
        prefix = int(plen)
        if int.from_bytes(packed, "big") & ((1 << (bits - prefix)) - 1):
            raise CodecError(f"host bits set in {shown(value)}: the address must end in {bits - prefix} zero bits")
        return prefix_pack(prefix) + packed
    return enc


# ---------------------------------------------------------------- arrays and structs


def _array_encoder(typ: Array) -> Encoder:
    elem, n = encoder(typ.elem), typ.length

    def enc(value: Any) -> bytes:
        if not isinstance(value, list) or len(value) != n:
            raise _fail(f"a list of {count(n, 'value')} for {spec_text(typ.spec())}", value)
        i = 0
        try:
            out = []
            for i, item in enumerate(value):
                out.append(elem(item))
        except CodecError as e:
            raise e.inside(i) from None
        return b"".join(out)
    return enc


def _struct_encoder(typ: Struct) -> Encoder:
    """Fields are joined with the padding bytes between them precomputed, zeros throughout."""
    if any(f.bits for f in typ.fields):
        return _bitfield_struct_encoder(typ)
    plan, end = [], 0
    for f in typ.fields:
        plan.append((f.name, b"\0" * (f.offset - end), encoder(f.type)))
        end = f.offset + f.type.size
    tail = b"\0" * (typ.size - end)
    names = [f.name for f in typ.fields]

    def enc(value: Any) -> bytes:
        if not isinstance(value, dict):
            raise _fail(f"a mapping of field to value ({', '.join(names)})", value)
        if len(value) != len(names):
            _check_fields(names, value)
        name = ""
        try:
            out = []
            for name, pad, fenc in plan:
                out.append(pad)
                out.append(fenc(value[name]))
        except KeyError:
            _check_fields(names, value)
            raise
        except CodecError as e:
            raise e.inside(name) from None
        out.append(tail)
        return b"".join(out)
    return enc


def _bitfield_range(f: Field) -> tuple[int, int]:
    signed = isinstance(f.type, Int) and f.type.signed or isinstance(f.type, Enum) and f.type.base.signed
    return (-(1 << (f.bits - 1)), (1 << (f.bits - 1)) - 1) if signed else (0, (1 << f.bits) - 1)


def _bitfield_struct_encoder(typ: Struct) -> Encoder:
    """A struct with bitfields: the struct's bytes as one little-endian integer, each field's
    bits or'ed in at its bit offset (x86-64 and arm64 are little-endian; so is their BTF)."""
    names = [f.name for f in typ.fields]
    plan: list[tuple[Field, int, int, Callable[[Any], Any]]] = []
    for f in typ.fields:
        if f.bits:
            lo, hi = _bitfield_range(f)
            plan.append((f, lo, hi, _bitfield_int(f.type)))
        else:
            plan.append((f, 0, 0, encoder(f.type)))

    def enc(value: Any) -> bytes:
        if not isinstance(value, dict):
            raise _fail(f"a mapping of field to value ({', '.join(names)})", value)
        if set(value) != set(names):
            _check_fields(names, value)
        acc = 0
        for f, lo, hi, fenc in plan:
            try:
                if f.bits:
                    n = fenc(value[f.name])
                    if not lo <= n <= hi:
                        raise _fail(f"an integer {lo}..{hi} for a {f.bits}-bit field", value[f.name])
                    acc |= (n & ((1 << f.bits) - 1)) << f.bit_offset
                else:
                    acc |= int.from_bytes(fenc(value[f.name]), "little") << (8 * f.offset)
            except CodecError as e:
                raise e.inside(f.name) from None
        return acc.to_bytes(typ.size, "little")
    return enc


def _bitfield_int(typ: CType) -> Callable[[Any], int]:
    """A bitfield's value as an integer: enums take names, bools true/false."""
    if isinstance(typ, Enum):
        by_name = dict(typ.values)
        return lambda v: by_name[v] if isinstance(v, str) and v in by_name else _bitfield_plain(v)
    return _bitfield_plain


def _bitfield_plain(value: Any) -> int:
    if type(value) is bool:
        return int(value)
    n = _as_int(value)
    if n is None:
        raise _fail("an integer", value)
    return n


def _union_encoder(typ: CUnion) -> Encoder:
    """A union's value names one member: its bytes, then zeros to the union's size."""
    members = {f.name: encoder(f.type) for f in typ.fields}
    every = ", ".join(members)

    def enc(value: Any) -> bytes:
        if not isinstance(value, dict) or len(value) != 1:
            got = f"{len(value)} members ({shown(list(value))})" if isinstance(value, dict) else shown(value)
            raise CodecError(f"expected a mapping that names exactly one member of the union ({every}), got {got}")
        (name, v), = value.items()
        if name not in members:
            raise CodecError(f"unknown member {shown(name)} (the members are: {every})")
        try:
            return members[name](v).ljust(typ.size, b"\0")
        except CodecError as e:
            raise e.inside(name) from None
    return enc


def _enum_encoder(typ: Enum) -> Encoder:
    by_name = dict(typ.values)
    ints = _int_encoder(typ.base)
    names = ", ".join(by_name) or "none"

    def enc(value: Any) -> bytes:
        if isinstance(value, str) and not _HEX_INT_RE.fullmatch(value):
            if value not in by_name:
                raise CodecError(f"unknown enum name {shown(value)} (the names are: {names})")
            return ints(by_name[value])
        return ints(value)
    return enc


def _formatted_encoder(typ: Formatted) -> Encoder:
    """The format's encoding, then zeros to the field's size (a be16 in a u32: its low bytes)."""
    shown, pad = encoder(typ.shown), b"\0" * (typ.size - typ.shown.size)
    return (lambda value: shown(value) + pad) if pad else shown


def _formatted_decoder(typ: Formatted) -> Decoder:
    """The format's reading; bytes past a narrower format that are not zero (written by someone else)
    read as the field's own type, which the format then refuses to write back."""
    shown, n = _decoder(typ.shown), typ.shown.size
    if n == typ.size:
        return shown
    base = _decoder(typ.base)
    return lambda data: shown(data[:n]) if not any(data[n:]) else base(data)


def _encode_bool(value: Any) -> bytes:
    if type(value) is bool:
        return b"\1" if value else b"\0"
    if type(value) is int and 0 <= value <= 255:
        return bytes((value,))
    raise _fail("true or false", value)


def _check_fields(names: list[str], value: dict[Any, Any]) -> None:
    """Name the first missing or unknown field (only reached when the fields do not match); an unknown
    field that is a missing one misspelt is named first, with the field meant."""
    every = ", ".join(names)
    missing = [name for name in names if name not in value]
    unknown = [key for key in value if key not in names]
    for key in unknown:
        close = difflib.get_close_matches(key, missing, n=1, cutoff=0.6) if isinstance(key, str) else []
        if close:
            raise CodecError(f"unknown field {shown(key)}: did you mean '{close[0]}'? (the fields are: {every})")
    if missing:
        raise CodecError(f"missing (a struct value needs every field: {every})", (missing[0],))
    if unknown:
        raise CodecError(f"unknown field {shown(unknown[0])} (the fields are: {every})")


# ---------------------------------------------------------------- entry points


@lru_cache(maxsize=1024)
def encoder(typ: CType) -> Encoder:
    """A function encoding one value of `typ`, compiled once per type for use in loops."""
    if isinstance(typ, Int):
        return _int_encoder(typ)
    if isinstance(typ, Addr):
        return _encode_mac if typ.family == "mac" else _ip_encoder(typ.family)
    if isinstance(typ, Bytes):
        expected = f"a hex string of {2 * typ.size} digits for bytes[{typ.size}]"
        return lambda value: _hex_bytes(value, typ.size, expected)
    if isinstance(typ, Chars):
        return _chars_encoder(typ)
    if isinstance(typ, Array):
        return _array_encoder(typ)
    if isinstance(typ, Lpm):
        return _lpm_encoder(typ)
    if isinstance(typ, Struct):
        return _struct_encoder(typ)
    if isinstance(typ, CUnion):
        return _union_encoder(typ)
    if isinstance(typ, Enum):
        return _enum_encoder(typ)
    if isinstance(typ, Bool):
        return _encode_bool
    if isinstance(typ, Formatted):
        return _formatted_encoder(typ)
    return _raw_encoder(typ)


def encode(typ: CType, value: Any) -> bytes:
    """`value` (as a user writes it) as the exact bytes of `typ`; raises CodecError."""
    return encoder(typ)(value)


@lru_cache(maxsize=1024)
def _decoder(typ: CType) -> Decoder:
    """The inverse of `encoder`, compiled once per type; input length is checked by `decode`."""
    if isinstance(typ, (Int, Raw)) and typ.size in _INT_CODES:
        unpack = struct.Struct(_int_format(typ)).unpack
        return lambda data: unpack(data)[0]
    if isinstance(typ, Addr):
        if typ.family == "mac":
            return lambda data: data.hex(":")
        af = _FAMILY[typ.family][0]
        return lambda data: socket.inet_ntop(af, data)
    if isinstance(typ, Chars):
        # backslashreplace keeps non-UTF-8 bytes from a live map readable instead of failing.
        return lambda data: data.rstrip(b"\0").decode(errors="backslashreplace")
    if isinstance(typ, Array):
        elem, step = _decoder(typ.elem), typ.elem.size
        return lambda data: [elem(data[i:i + step]) for i in range(0, len(data), step)]
    if isinstance(typ, Lpm):
        af = _FAMILY[typ.family][0]
        return lambda data: f"{socket.inet_ntop(af, data[4:])}/{int.from_bytes(data[:4], 'little')}"
    if isinstance(typ, Struct):
        if any(f.bits for f in typ.fields):
            return _bitfield_struct_decoder(typ)
        plan = [(f.name, f.offset, f.offset + f.type.size, _decoder(f.type)) for f in typ.fields]
        return lambda data: {name: dec(data[start:end]) for name, start, end, dec in plan}
    if isinstance(typ, CUnion):
        return _union_decoder(typ)
    if isinstance(typ, Enum):
        ints, names = _decoder(typ.base), {}
        for name, n in reversed(typ.values):
            names[n] = name  # the first name given for a number
        return lambda data: names.get(ints(data), ints(data))
    if isinstance(typ, Bool):
        return lambda data: {0: False, 1: True}.get(data[0], data[0])
    if isinstance(typ, Formatted):
        return _formatted_decoder(typ)
    return lambda data: data.hex()


def _bitfield_struct_decoder(typ: Struct) -> Decoder:
    plan: list[tuple[Field, bool, dict[int, str], Decoder | None]] = []
    for f in typ.fields:
        if f.bits:
            lo, _ = _bitfield_range(f)
            names = {n: name for name, n in reversed(f.type.values)} if isinstance(f.type, Enum) else {}
            plan.append((f, lo < 0, names, None))
        else:
            plan.append((f, False, {}, _decoder(f.type)))

    def dec(data: bytes) -> dict[str, Any]:
        whole = int.from_bytes(data, "little")
        out: dict[str, Any] = {}
        for f, signed, names, fdec in plan:
            if fdec is not None:
                out[f.name] = fdec(data[f.offset:f.offset + f.type.size])
                continue
            n = whole >> f.bit_offset & ((1 << f.bits) - 1)
            if signed and n >> (f.bits - 1):
                n -= 1 << f.bits
            out[f.name] = names.get(n, n) if names else (bool(n) if isinstance(f.type, Bool) and n in (0, 1) else n)
        return out
    return dec


def _union_decoder(typ: CUnion) -> Decoder:
    """The first member (in declaration order) whose value gives back exactly these bytes;
    bytes no member accounts for (set by someone else) show as the largest member."""
    members = [(f.name, f.type.size, _decoder(f.type), encoder(f.type)) for f in typ.fields]
    largest = max(members, key=lambda m: m[1])

    def dec(data: bytes) -> dict[str, Any]:
        for name, size, mdec, menc in members:
            if not any(data[size:]):
                value = mdec(data[:size])
                try:
                    if menc(value) == data[:size]:
                        return {name: value}
                except CodecError:
                    pass  # e.g. bytes that are no UTF-8 text, shown escaped: too long for the char[N]
        name, size, mdec, _ = largest
        return {name: mdec(data[:size])}
    return dec


def decode(typ: CType, data: bytes) -> Any:
    """Bytes of `typ` as the value a user would write: decode(t, encode(t, v)) is v in canonical form."""
    if len(data) != typ.size:
        raise CodecError(f"expected {count(typ.size, 'byte')}, got {len(data)}")
    return _decoder(typ)(data)


# ---------------------------------------------------------------- whole columns


def decode_column(typ: CType, data: bytes | bytearray) -> list[Any]:
    """Every value of a packed column (keys or values as batch lookups return them), each as
    `decode` gives it: integers in one struct call (a million in 0.05 s, not 2 s one by one)."""
    if len(data) % typ.size:
        raise CodecError(f"{len(data)} bytes are not whole values of {count(typ.size, 'byte')}")
    if isinstance(typ, (Int, Raw)) and typ.size in _INT_CODES:
        fmt = _int_format(typ)  # byte order, then the code: "<I"
        return list(struct.unpack(f"{fmt[0]}{len(data) // typ.size}{fmt[1]}", data))
    return list(map(_decoder(typ), records(data, typ.size)))


def is_int(typ: CType) -> TypeGuard[Int | Raw]:
    """Whether values of `typ` decode to plain integers (of 1, 2, 4 or 8 bytes, either byte order)."""
    return isinstance(typ, (Int, Raw)) and typ.size in _INT_CODES


def int_array(typ: Int | Raw, data: bytes | bytearray) -> array:
    """An integer column as an `array`: 8 bytes or fewer a value where a list holds an int object
    of 28-36 bytes (a million-entry map's column: 8 MB, not 44); ints are made as they are read."""
    fmt = _int_format(typ)  # byte order, then the code: "<I"
    column = array(fmt[1], data)
    if fmt[0] == ">":
        column.byteswap()
    return column


class _Unusual(Exception):
    """A column the column encoders do not take as it is; its values go one by one instead."""


# What a column encoder raises for a value it does not take: per-value encoders raise
# CodecError (a ValueError), inet_pton OSError, TypeError or ValueError, struct.pack
# struct.error, a missing struct field KeyError.
_COLUMN_MISSES = (_Unusual, ValueError, LookupError, TypeError, OSError, struct.error)


def encode_column(typ: CType, values: Sequence[Any]) -> bytes | None:
    """The values' encodings concatenated, byte for byte what `encoder(typ)` gives each; None
    when any value is not in its plain form (then encode value by value, for the messages)."""
    try:
        return _column_encoder(typ)(values)
    except _COLUMN_MISSES:
        return None


@lru_cache(maxsize=1024)
def _column_encoder(typ: CType) -> ColumnEncoder:
    """Integers pack in one struct.pack, addresses with inet_pton, arrays as their flattened
    elements and structs field by field; other types join their per-value encodings."""
    if isinstance(typ, (Int, Raw)) and typ.size in _INT_CODES:
        return _int_column(typ)
    if isinstance(typ, Addr) and typ.family != "mac":
        af = _FAMILY[typ.family][0]
        return lambda values: b"".join(map(socket.inet_pton, repeat(af, len(values)), values))
    if isinstance(typ, Array):
        return _array_column(typ)
    if isinstance(typ, Struct) and not any(f.bits for f in typ.fields):
        return _struct_column(typ)
    if isinstance(typ, Formatted) and typ.shown.size == typ.size:
        return _column_encoder(typ.shown)  # the same bytes the format's own type encodes
    enc = encoder(typ)
    return lambda values: b"".join(map(enc, values))


def _int_column(typ: Int | Raw) -> ColumnEncoder:
    fmt = _int_format(typ)  # byte order, then the code: "<I"

    def col(values: Sequence[Any]) -> bytes:
        if not set(map(type, values)) <= {int}:  # bools and hex strings take the per-value path
            raise _Unusual
        return struct.pack(f"{fmt[0]}{len(values)}{fmt[1]}", *values)
    return col


def _array_column(typ: Array) -> ColumnEncoder:
    """An array's elements lie one after another, so n arrays are one column of n*length elements."""
    elem, length = _column_encoder(typ.elem), typ.length

    def col(values: Sequence[Any]) -> bytes:
        if not (set(map(type, values)) <= {list} and set(map(len, values)) <= {length}):
            raise _Unusual
        return elem(list(chain.from_iterable(values)))
    return col


def _struct_column(typ: Struct) -> ColumnEncoder:
    """Each field's column is encoded whole, then copied into every record at its offset by
    strided slice assignment (one per copy unit of the field, or one per record when fewer),
    through memoryviews cast to the widest copy unit; the bytes between fields stay zero."""
    size, count = typ.size, len(typ.fields)
    plan = []
    for f in typ.fields:
        width = f.type.size
        unit, code = next((u, c) for u, c in COPY_UNITS if f.offset % u == width % u == size % u == 0)
        plan.append((itemgetter(f.name), code, f.offset // unit, width // unit, size // unit, _column_encoder(f.type)))

    def col(values: Sequence[Any]) -> bytes:
        if not (set(map(type, values)) <= {dict} and set(map(len, values)) <= {count}):
            raise _Unusual
        n = len(values)
        out = bytearray(size * n)
        whole = memoryview(out)
        for get, code, off, width, stride, fcol in plan:  # in copy units
            data = memoryview(fcol(list(map(get, values)))).cast(code)  # type: ignore[call-overload]
            view = whole.cast(code)  # type: ignore[call-overload]
            if width <= n:
                for j in range(width):
                    view[off + j::stride] = data[j::width]
            else:
                for i in range(n):
                    view[i * stride + off:i * stride + off + width] = data[i * width:(i + 1) * width]
        return bytes(out)
    return col


# ---------------------------------------------------------------- per-CPU values


def per_cpu_stride(typ: CType) -> int:
    """Bytes per CPU in a per-CPU map's value buffer: the kernel rounds each value up to 8."""
    return (typ.size + 7) // 8 * 8


def _is_per_cpu_form(typ: CType, value: Any) -> bool:
    """`{per_cpu: [...]}`, unless it is a plain value of a struct whose one field is named per_cpu."""
    if not (isinstance(value, dict) and len(value) == 1 and PER_CPU in value):
        return False
    return not (isinstance(typ, Struct) and [f.name for f in typ.fields] == [PER_CPU])


def encode_per_cpu(typ: CType, value: Any, ncpus: int) -> bytes:
    """A per-CPU map's value buffer: one value for every CPU, or `{per_cpu: [v0, ...]}` with one
    per possible CPU; each padded with zeros to the stride."""
    enc, stride = encoder(typ), per_cpu_stride(typ)
    if not _is_per_cpu_form(typ, value):
        return enc(value).ljust(stride, b"\0") * ncpus
    values = value[PER_CPU]
    if not isinstance(values, list) or len(values) != ncpus:
        got = len(values) if isinstance(values, list) else shown(values)
        raise CodecError(f"expected {count(ncpus, 'per-CPU value')} (this node has {count(ncpus, 'possible CPU')}), got {got}")
    out = []
    for cpu, v in enumerate(values):
        try:
            out.append(enc(v).ljust(stride, b"\0"))
        except CodecError as e:
            raise CodecError(f"CPU {cpu}: {e}") from None
    return b"".join(out)


def decode_per_cpu(typ: CType, data: bytes, ncpus: int) -> Any:
    """One value when every CPU holds the same bytes, else `{per_cpu: [...]}`."""
    stride = per_cpu_stride(typ)
    if len(data) != stride * ncpus:
        raise CodecError(f"expected {count(stride * ncpus, 'byte')} for {count(ncpus, 'CPU')}, got {len(data)}")
    dec, size = _decoder(typ), typ.size
    chunks = [data[i:i + size] for i in range(0, len(data), stride)]
    if all(c == chunks[0] for c in chunks):
        return dec(chunks[0])
    return {PER_CPU: [dec(c) for c in chunks]}


def value_decoder(typ: CType, per_cpu: bool) -> Callable[[bytes], Any]:
    """Decode values as the kernel hands them back: a per-CPU buffer holds one padded value per CPU."""
    if not per_cpu:
        return lambda data: decode(typ, data)
    stride = per_cpu_stride(typ)
    return lambda data: decode_per_cpu(typ, data, len(data) // stride)
