"""Test helper: what `bpftool -j map dump` prints as `formatted` for a value written from its config
form, worked out from the config value itself, with the rules bpftool applies to the BTF kmesh-apply
writes (kernel/btf.py's docstring): integers as numbers (be16/be32/be64 are typedefs of unsigned
integers, so bpftool shows the bytes read in host order), bool as true/false, ipv4/ipv6/mac/bytes[N]
as lists of byte values, char arrays as a string when they hold printable ASCII ended by a NUL and
else as one character per byte, bitfields as hex strings of their bits, enums by name when a name has
the value (read as bpftool 7.1 reads them), unions with every member (only the member the value set is compared).

It shares no code with kmesh-apply's codecs, so a mistake made the same way by the tool's encoder and
its BTF writer (a member offset, a byte order, a bitfield's position) shows up as a difference.
"""

from __future__ import annotations

import ipaddress
from typing import Any

from kmesh_apply.ctype import Addr, Array, Bool, Bytes, Chars, CType, CUnion, Enum, Int, Lpm, Raw, Struct

ANY = object()  # a union member the value did not set: bpftool prints it, its bytes are the set member's


def view(t: CType, value: Any) -> Any:
    """bpftool's formatted form of `value` (a config value of type `t`)."""
    if isinstance(t, Int) and t.name.startswith("be"):
        return int.from_bytes(int(value).to_bytes(t.size, "big"), "little")
    if isinstance(t, Bool):
        return bool(value)
    if isinstance(t, Int):
        return int(value)
    if isinstance(t, Enum):  # bpftool 7.1 reads an enum's bytes as a signed integer of its size, and an
        # enumerator's value as signed 32 bits (64 for 8-byte enums): an unsigned u8 enum's 128 prints as -128
        number = _signed(dict(t.values)[value] if isinstance(value, str) else int(value), 8 * t.size)
        width = 64 if t.size == 8 else 32
        names = [n for n, v in t.values if _signed(v, width) == number]
        return names[0] if names else number
    if isinstance(t, Addr):
        if t.family == "mac":
            return list(bytes.fromhex(value.replace(":", "")))
        return list(ipaddress.ip_address(value).packed)
    if isinstance(t, (Bytes, Raw)):
        return list(bytes.fromhex(value))
    if isinstance(t, Chars):
        raw = value.encode().ljust(t.size, b"\0")
        text = raw.split(b"\0", 1)[0]
        if len(text) < t.size and all(0x20 <= b < 0x7F for b in text):
            return text.decode()
        return [chr(b) for b in raw]
    if isinstance(t, Array):
        return [view(t.elem, v) for v in value]
    if isinstance(t, Lpm):
        addr, _, prefix = value.partition("/")
        return {"prefixlen": int(prefix), "addr": list(ipaddress.ip_address(addr).packed)}
    if isinstance(t, Struct):  # the kernel checks an enum of 1 or 2 bytes in a struct with bitfields as 32 bits
        # wide unless it is written as a bitfield of its own width (kernel/btf.py), so bpftool shows it in hex
        has_bits = any(f.bits for f in t.fields)
        out = {}
        for f in t.fields:
            v = value[f.name]
            width = f.bits or (8 * f.type.size if has_bits and isinstance(f.type, Enum) and f.type.size < 4 else 0)
            if isinstance(v, str) and isinstance(f.type, Enum):
                v = dict(f.type.values)[v]
            out[f.name] = hex(v & ((1 << width) - 1)) if width else view(f.type, value[f.name])
        return out
    if isinstance(t, CUnion):
        (name, member), = value.items()
        return {f.name: view(f.type, member) if f.name == name else ANY for f in t.fields}
    raise AssertionError(f"no bpftool view for {t!r}")


def _signed(n: int, bits: int) -> int:
    half = 1 << (bits - 1)
    return (n + half) % (1 << bits) - half


def same(printed: Any, expected: Any) -> bool:
    """Whether bpftool printed `expected` (ANY matches whatever it printed there)."""
    if expected is ANY:
        return True
    if isinstance(expected, dict):
        return isinstance(printed, dict) and printed.keys() == expected.keys() and all(
            same(printed[k], v) for k, v in expected.items())
    if isinstance(expected, list):
        return isinstance(printed, list) and len(printed) == len(expected) and all(
            same(p, e) for p, e in zip(printed, expected))
    return printed == expected and type(printed) is type(expected)


def raw(hexes: list[str]) -> bytes:
    """bpftool's raw bytes ("0x0a", ...) as bytes."""
    return bytes(int(h, 16) for h in hexes)
