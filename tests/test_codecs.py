"""Codecs: round trips for every type kind and the messages users see for bad values (no kernel)."""

from __future__ import annotations

from typing import Any

import pytest

from hypothesis import HealthCheck, given, reject, settings
from hypothesis import strategies as st

from test_type_roundtrip import values_of as plain_values  # values of every type, as YAML gives them
from kmesh_apply.config.codecs import (CodecError, decode, decode_per_cpu, encode, encode_column, encode_per_cpu,
                                       encoder, per_cpu_stride)
from kmesh_apply.ctype import INT_NAMES, CType, Raw, Struct, TypeSpecError, parse_type

BACKEND = {"struct": [{"ip": "ipv4"}, {"port": "be16"}, {"weight": "u16"}]}
PADDED = {"struct": [{"a": "u8"}, {"b": "u64"}, {"c": "u16"}]}
NESTED = {"struct": [{"tag": "u8"}, {"inner": BACKEND}, {"ips": "ipv4[2]"}, {"name": "char[5]"}]}

ROUND_TRIPS: list[tuple[Any, Any, str]] = [
    ("u8", 255, "ff"),
    ("u16", 0x1234, "3412"),
    ("u32", 1, "01000000"),
    ("u64", 2**64 - 1, "ff" * 8),
    ("i8", -1, "ff"),
    ("i16", -2, "feff"),
    ("i32", -2**31, "00000080"),
    ("i64", 2**63 - 1, "ff" * 7 + "7f"),
    ("be16", 8080, "1f90"),
    ("be32", 0x0A000001, "0a000001"),
    ("be64", 1, "00" * 7 + "01"),
    ("ipv4", "10.0.0.1", "0a000001"),
    ("ipv6", "fd00::1", "fd00" + "00" * 13 + "01"),
    ("mac", "02:00:00:00:00:01", "020000000001"),
    ("bytes[3]", "0a0b0c", "0a0b0c"),
    ("char[6]", "abc", "616263000000"),
    ("char[3]", "abc", "616263"),
    ("u16[3]", [1, 2, 3], "010002000300"),
    ("ipv4[2]", ["10.0.0.1", "10.0.0.2"], "0a0000010a000002"),
    ({"lpm": "ipv4"}, "10.96.0.0/16", "10000000" + "0a600000"),
    ({"lpm": "ipv4"}, "0.0.0.0/0", "00" * 8),
    ({"lpm": "ipv6"}, "fd00::/8", "08000000" + "fd" + "00" * 15),
    (BACKEND, {"ip": "10.0.1.10", "port": 8080, "weight": 100}, "0a00010a" "1f90" "6400"),
    (PADDED, {"a": 1, "b": 2, "c": 3}, "01" + "00" * 7 + "0200000000000000" + "0300" + "00" * 6),
    ({**PADDED, "packed": True}, {"a": 1, "b": 2, "c": 3}, "01" "0200000000000000" "0300"),
    (NESTED, {"tag": 7, "inner": {"ip": "1.2.3.4", "port": 1, "weight": 2}, "ips": ["5.6.7.8", "9.9.9.9"],
              "name": "ab"},
     "07000000" "01020304" "0001" "0200" "05060708" "09090909" "6162000000" "000000"),
]


@pytest.mark.parametrize("spec,value,hexbytes", ROUND_TRIPS, ids=lambda x: str(x)[:30])
def test_round_trip(spec: Any, value: Any, hexbytes: str) -> None:
    typ = parse_type(spec)
    data = encode(typ, value)
    assert data.hex() == hexbytes
    assert len(data) == typ.size
    assert encoder(typ)(value) == data
    assert decode(typ, data) == value


@pytest.mark.parametrize("spec,written,canonical", [
    ("u32", "0x10", 16),
    ("be16", "0X1F90", 8080),
    ("bytes[2]", "0xABCD", "abcd"),
    ("ipv6", "FD00:0:0::1", "fd00::1"),
    ("mac", "02:AB:00:00:00:01", "02:ab:00:00:00:01"),
])
def test_written_forms_decode_to_canonical(spec: str, written: str, canonical: Any) -> None:
    typ = parse_type(spec)
    assert decode(typ, encode(typ, written)) == canonical


def test_raw_sizes() -> None:
    assert encode(Raw(4), 258) == b"\x02\x01\0\0"
    assert encode(Raw(4), "0a000001") == bytes.fromhex("0a000001")
    assert decode(Raw(4), b"\x02\x01\0\0") == 258
    assert encode(Raw(3), "0x0a0b0c") == b"\x0a\x0b\x0c"
    assert decode(Raw(3), b"\x0a\x0b\x0c") == "0a0b0c"


def test_struct_padding_is_zero_and_field_order_free() -> None:
    typ = parse_type(PADDED)
    assert encode(typ, {"c": 3, "b": 2, "a": 1}) == encode(typ, {"a": 1, "b": 2, "c": 3})
    assert list(decode(typ, encode(typ, {"c": 3, "b": 2, "a": 1}))) == ["a", "b", "c"]


def per_value(typ: CType, values: list[Any]) -> bytes:
    return b"".join(encode(typ, v) for v in values)


@pytest.mark.parametrize("spec,value,hexbytes", ROUND_TRIPS, ids=lambda x: str(x)[:30])
def test_encode_column_matches_per_value_encoding(spec: Any, value: Any, hexbytes: str) -> None:
    typ = parse_type(spec)
    assert encode_column(typ, [value, value]) == bytes.fromhex(hexbytes) * 2
    assert encode_column(typ, []) == b""


def test_encode_column_raw_and_wide_fields() -> None:
    assert encode_column(Raw(2), [1, 2]) == bytes.fromhex("01000200")
    assert encode_column(Raw(3), ["0a0b0c", "0x010203"]) == bytes.fromhex("0a0b0c010203")
    # fields wider than the column is long are copied record by record
    typ = parse_type({"struct": [{"a": "u8"}, {"name": "char[20]"}, {"ip": "ipv6"}]})
    values = [{"a": 1, "name": "x", "ip": "fd00::1"}, {"name": "yz", "ip": "::", "a": 2}]
    assert encode_column(typ, values) == per_value(typ, values)


def test_per_cpu_both_forms() -> None:
    typ = parse_type("u32")
    assert per_cpu_stride(typ) == 8
    assert per_cpu_stride(parse_type("bytes[9]")) == 16
    same = encode_per_cpu(typ, 5, 3)
    assert same == (b"\x05\0\0\0" + b"\0" * 4) * 3
    assert decode_per_cpu(typ, same, 3) == 5
    differ = encode_per_cpu(typ, {"per_cpu": [1, 2, 3]}, 3)
    assert len(differ) == 24 and differ[8:12] == b"\x02\0\0\0"
    assert decode_per_cpu(typ, differ, 3) == {"per_cpu": [1, 2, 3]}
    assert decode_per_cpu(typ, encode_per_cpu(typ, {"per_cpu": [4, 4, 4]}, 3), 3) == 4
    backend = parse_type(BACKEND)
    value = {"ip": "10.0.0.1", "port": 80, "weight": 1}
    assert decode_per_cpu(backend, encode_per_cpu(backend, {"per_cpu": [value, value]}, 2), 2) == value


def test_struct_with_a_field_named_per_cpu_is_a_plain_value() -> None:
    typ = parse_type({"struct": [{"per_cpu": "u32"}]})
    assert decode_per_cpu(typ, encode_per_cpu(typ, {"per_cpu": 9}, 2), 2) == {"per_cpu": 9}


def test_decode_checks_length() -> None:
    with pytest.raises(CodecError, match="expected 4 bytes, got 3"):
        decode(parse_type("u32"), b"\0\0\0")


def test_chars_decode_tolerates_bytes_that_are_not_utf8() -> None:
    assert decode(parse_type("char[3]"), b"a\xff\0") == "a\\xff"


ERRORS: list[tuple[Any, Any, str]] = [
    ("be16", 70000, "expected an integer 0..65535 for be16, got 70000"),
    ("i8", 128, "expected an integer -128..127 for i8, got 128"),
    ("u8", -1, "expected an integer 0..255 for u8, got -1"),
    ("u32", "10", "expected an integer 0..4294967295 for u32, got '10'"),
    ("u32", True, "expected an integer 0..4294967295 for u32, got True"),
    ("u32", 1.5, "expected an integer 0..4294967295 for u32, got 1.5"),
    ("u16", "0x10000", "expected an integer 0..65535 for u16, got '0x10000'"),
    ("ipv4", "x", "expected an IPv4 address like 10.0.0.1, got 'x'"),
    ("ipv4", "10.0.0.256", "expected an IPv4 address like 10.0.0.1, got '10.0.0.256'"),
    ("ipv4", 167772161, "expected an IPv4 address like 10.0.0.1, got 167772161"),
    ("ipv6", "fd00::g", "expected an IPv6 address like fd00::1, got 'fd00::g'"),
    ("mac", "02:00:00:00:00", "expected a MAC address like 02:00:00:00:00:01, got '02:00:00:00:00'"),
    ("mac", "02-00-00-00-00-01", "expected a MAC address like 02:00:00:00:00:01, got '02-00-00-00-00-01'"),
    ("bytes[2]", "abc", "expected a hex string of 4 digits for bytes[2], got 'abc'"),
    ("bytes[2]", "zzzz", "expected a hex string of 4 digits for bytes[2], got 'zzzz'"),
    ("char[2]", "abc", "expected a string of at most 2 bytes for char[2], got 'abc' (3 bytes in UTF-8)"),
    ("char[2]", "é1", "expected a string of at most 2 bytes for char[2], got 'é1' (3 bytes in UTF-8)"),
    ("u16[2]", [1], "expected a list of 2 values for u16[2], got [1]"),
    ("u16[2]", [1, -1], "element [1]: expected an integer 0..65535 for u16, got -1"),
    (BACKEND, {"ip": "10.0.0.1", "port": 80}, "field 'weight': missing (a struct value needs every field: ip, port, weight)"),
    (BACKEND, {"ip": "10.0.0.1", "port": 80, "weight": 1, "extra": 1},
     "unknown field 'extra' (the fields are: ip, port, weight)"),
    (BACKEND, {"ip": "10.0.0.1", "port": 80, "wieght": 1},
     "unknown field 'wieght': did you mean 'weight'? (the fields are: ip, port, weight)"),
    (BACKEND, {"ip": "10.0.0.1", "port": 70000, "weight": 1}, "field 'port': expected an integer 0..65535 for be16, got 70000"),
    (BACKEND, [1, 2, 3], "expected a mapping of field to value (ip, port, weight), got [1, 2, 3]"),
    (NESTED, {"tag": 1, "inner": {"ip": "1.2.3.4", "port": 1, "weight": 2}, "ips": ["1.1.1.1", "nope"], "name": ""},
     "field 'ips[1]': expected an IPv4 address like 10.0.0.1, got 'nope'"),
    (NESTED, {"tag": 1, "inner": {"ip": "1.2.3.4", "port": 1}, "ips": ["1.1.1.1", "2.2.2.2"], "name": ""},
     "field 'inner.weight': missing (a struct value needs every field: ip, port, weight)"),
    ({"lpm": "ipv4"}, "10.0.0.1/8", "host bits set in '10.0.0.1/8': the address must end in 24 zero bits"),
    ({"lpm": "ipv4"}, "10.0.0.0/33", "expected a prefix length 0..32, got '10.0.0.0/33'"),
    ({"lpm": "ipv4"}, "10.0.0.0", "expected an IPv4 CIDR like 10.0.0.0/8, got '10.0.0.0'"),
    ({"lpm": "ipv6"}, "fd00::1/64", "host bits set in 'fd00::1/64': the address must end in 64 zero bits"),
]


@pytest.mark.parametrize("spec,value,message", ERRORS, ids=lambda x: str(x)[:30])
def test_error_messages(spec: Any, value: Any, message: str) -> None:
    with pytest.raises(CodecError) as e:
        encode(parse_type(spec), value)
    assert str(e.value) == message


def test_raw_errors() -> None:
    with pytest.raises(CodecError, match=r"expected an integer 0\.\.65535 or a hex string of 4 digits, got 65536"):
        encode(Raw(2), 65536)
    with pytest.raises(CodecError, match="expected a hex string of 6 digits, got 1"):
        encode(Raw(3), 1)


def test_per_cpu_errors() -> None:
    typ = parse_type("u32")
    with pytest.raises(CodecError) as e:
        encode_per_cpu(typ, {"per_cpu": [1, 2]}, 4)
    assert str(e.value) == "expected 4 per-CPU values (this node has 4 possible CPUs), got 2"
    with pytest.raises(CodecError, match="^CPU 1: expected an integer"):
        encode_per_cpu(typ, {"per_cpu": [1, -1]}, 2)


# Not the plain form of the type: a hex or bool integer, a value the per-value encoder refuses.
UNUSUAL: list[tuple[Any, Any]] = [(spec, value) for spec, value, _ in ERRORS] + [
    ("u32", "0x10"),
    (Raw(4), "0a000001"),
    (BACKEND, {"ip": "10.0.0.1", "port": "0x50", "weight": 1}),
    (BACKEND, {"ip": "10.0.0.1", "port": True, "weight": 1}),
    (BACKEND, {"ip": b"\n\0\0\1", "port": 1, "weight": 1}),
    (BACKEND, {"ip": "10.0.0.1\0", "port": 1, "weight": 1}),
    (BACKEND, {"ip": "10.0.0.1", "port": 1, 7: 1}),
    (BACKEND, "10.0.0.1"),
    (BACKEND, None),
    (NESTED, {"tag": 1, "inner": [1, 2, 3], "ips": ["1.1.1.1", "2.2.2.2"], "name": ""}),
    (NESTED, {"tag": 1, "inner": {"ip": "1.2.3.4", "port": 1, "weight": 2}, "ips": ("1.1.1.1", "2.2.2.2"), "name": ""}),
]


@pytest.mark.parametrize("spec,value", UNUSUAL, ids=lambda x: str(x)[:30])
def test_encode_column_leaves_unusual_values_to_the_per_value_path(spec: Any, value: Any) -> None:
    typ = spec if isinstance(spec, Raw) else parse_type(spec)
    assert encode_column(typ, [value]) is None


# ---- column vs per-value encoding of random structs -------------------------------------

SCALARS = [*INT_NAMES, "ipv4", "ipv6", "mac", "bytes[3]", "char[5]", "u8[3]", "be16[2]", "i32[2]", "ipv4[2]", "mac[2]"]


@st.composite
def struct_specs(draw: st.DrawFn, depth: int = 0) -> dict[str, Any]:
    names = draw(st.lists(st.sampled_from("abcdefgh"), min_size=1, max_size=6, unique=True))
    kinds = st.sampled_from(SCALARS) if depth >= 2 else st.one_of(st.sampled_from(SCALARS), struct_specs(depth + 1))
    spec: dict[str, Any] = {"struct": [{n: draw(kinds)} for n in names]}
    if draw(st.booleans()):
        spec["packed"] = True
    return spec


@st.composite
def typed_columns(draw: st.DrawFn) -> tuple[CType, list[Any]]:
    try:
        typ = parse_type(draw(st.one_of(st.sampled_from(SCALARS), struct_specs())))
    except TypeSpecError:  # a rare nesting of packed and natural structs with no canonical spelling
        reject()
    return typ, draw(st.lists(plain_values(typ), max_size=24))


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(typed_columns())
def test_column_encoding_equals_per_value_encoding(column: tuple[CType, list[Any]]) -> None:
    typ, values = column
    assert encode_column(typ, values) == per_value(typ, values)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(typed_columns(), st.data())
def test_an_unusual_value_sends_the_column_to_the_per_value_path(column: tuple[CType, list[Any]],
                                                                 data: st.DataObject) -> None:
    typ, values = column
    if not values or not isinstance(typ, Struct):
        return
    i = data.draw(st.integers(0, len(values) - 1))
    field = data.draw(st.sampled_from([f.name for f in typ.fields]))
    bad = dict(values[i])
    change = data.draw(st.sampled_from(["drop", "extra", "bool", "hex", "huge", "float", "list", "none"]))
    if change == "drop":
        del bad[field]
    elif change == "extra":
        bad["zz"] = 1
    else:
        bad[field] = {"bool": True, "hex": "0x1", "huge": 1 << 64, "float": 1.0, "list": [], "none": None}[change]
    values[i] = bad if change != "list" else list(bad.values())
    got = encode_column(typ, values)
    if change == "hex":  # a plain value of a char[N] field; the per-value form of an integer
        assert got is None or got == per_value(typ, values)
    else:
        assert got is None


def test_bool_takes_true_false_and_byte_values_only() -> None:
    """Killed survivors of a mutation run (_encode_bool): each branch and bound, and the message."""
    b = parse_type("bool")
    assert [encode(b, v) for v in (True, False, 0, 1, 255)] == [b"\1", b"\0", b"\0", b"\1", b"\xff"]
    for bad in (256, -1, "true", 1.0, None):
        with pytest.raises(CodecError, match="expected true or false"):
            encode(b, bad)


def test_per_cpu_values_decode_per_cpu_only_when_they_differ() -> None:
    """decode_per_cpu: each CPU's value sits at an 8-byte stride; equal values fold into one, differing
    ones come back as {per_cpu: [...]} in CPU order; a buffer of the wrong length is refused, named."""
    t = parse_type({"struct": [{"a": "u8"}, {"b": "be16"}]})  # 4 bytes, padded to 8 per CPU
    one, two = encode(t, {"a": 1, "b": 2}), encode(t, {"a": 3, "b": 4})
    pad = bytes(4)
    assert decode_per_cpu(t, one + pad + one + pad, 2) == {"a": 1, "b": 2}
    assert decode_per_cpu(t, one + pad + two + pad + one + pad, 3) == {
        "per_cpu": [{"a": 1, "b": 2}, {"a": 3, "b": 4}, {"a": 1, "b": 2}]}
    with pytest.raises(CodecError, match="expected 16 bytes for 2 CPUs, got 12"):
        decode_per_cpu(t, one + pad + one, 2)
    assert encode_per_cpu(t, {"per_cpu": [{"a": 1, "b": 2}, {"a": 3, "b": 4}]}, 2) == one + pad + two + pad
