"""Key and value types survive the round trip through the kernel's BTF, for every map type."""

from __future__ import annotations

import ctypes
import errno
import os

import pytest

from kmesh_apply.ctype import Raw, parse_type
from kmesh_apply.errors import KernelError
from kmesh_apply.kernel import MAP_TYPES, Map
from kmesh_apply.kernel import btf as B
from kmesh_apply.kernel import libbpf as L

SPECS = [
    "u8", "u16", "u32", "u64", "i8", "i16", "i32", "i64", "be16", "be32", "be64",
    "ipv4", "ipv6", "mac", "bytes[3]", "char[5]", "u16[3]", "ipv4[2]", "be16[2]",
    {"lpm": "ipv4"}, {"lpm": "ipv6"},
    {"struct": [{"ip": "ipv4"}, {"port": "be16"}, {"proto": "u8"}]},
    {"struct": [{"a": "u8"}, {"b": "u32"}], "packed": True},
    {"struct": [{"inner": {"struct": [{"x": "u16"}, {"y": "u64"}]}}, {"name": "char[3]"}]},
]
TYPES = [parse_type(s) for s in SPECS] + [Raw(7), Raw(4)]
HASH_LIKE = ["hash", "lru_hash", "percpu_hash", "lru_percpu_hash"]
ARRAYS = ["array", "percpu_array"]


def _create(map_type: str, key, value) -> Map:
    flags = ["no_prealloc"] if map_type == "lpm_trie" else []
    return Map.create(map_type, key.size, value.size, 4, flags=flags, key_type=key, value_type=value)


@pytest.mark.parametrize("map_type", HASH_LIKE + ARRAYS + ["lpm_trie"])
@pytest.mark.parametrize("value", TYPES, ids=lambda t: str(t.spec()))
def test_value_type_round_trips(map_type, value):
    key = parse_type({"lpm": "ipv4"}) if map_type == "lpm_trie" else parse_type("u32")
    with _create(map_type, key, value) as m:
        assert m.info.btf_id
        assert m.value_type() == value
        assert m.key_type() == key


@pytest.mark.parametrize("map_type", HASH_LIKE)
@pytest.mark.parametrize("key", TYPES, ids=lambda t: str(t.spec()))
def test_any_key_type_round_trips_on_hash_maps(map_type, key):
    with _create(map_type, key, parse_type("u64")) as m:
        assert m.key_type() == key


@pytest.mark.parametrize("map_type", ARRAYS)
@pytest.mark.parametrize("key", [t for t in TYPES if t.size == 4], ids=lambda t: str(t.spec()))
def test_array_keys_are_32_bit_ints_or_raw(map_type, key):
    with _create(map_type, key, parse_type("u32")) as m:
        expected = key if key in (parse_type("u32"), parse_type("i32"), parse_type("be32")) else Raw(4)
        assert m.key_type() == expected


@pytest.mark.parametrize("key", [t for t in TYPES if t.size >= 5], ids=lambda t: str(t.spec()))
def test_lpm_trie_keys_round_trip(key):
    with _create("lpm_trie", key, parse_type("u32")) as m:
        assert m.key_type() == key


def _load(build) -> B.LoadedBtf:
    b = B._Builder()
    key_id, value_id = build(b)
    return B.LoadedBtf(b, key_id, value_id)


def _create_raw_btf(map_type: str, loaded: B.LoadedBtf, key_size: int, flags: int = 0) -> int:
    """Create a map with hand-built BTF, bypassing the shaping Map.create does; returns fd or -errno."""
    opts = L.MapCreateOpts(sz=ctypes.sizeof(L.MapCreateOpts), btf_fd=loaded.fd, btf_key_type_id=loaded.key_id,
                           btf_value_type_id=loaded.value_id, map_flags=flags)
    fd = L.bpf_map_create(MAP_TYPES[map_type], None, key_size, 4, 4, ctypes.byref(opts))
    if fd >= 0:
        os.close(fd)
    return fd


def test_kernel_rule_array_key_must_be_a_32_bit_int():
    """Why array keys other than u32/i32/be32 are recorded as raw -> u32."""
    u8_array = _load(lambda b: (b.add(parse_type("ipv4")), b.add(parse_type("u32"))))
    assert _create_raw_btf("array", u8_array, 4) == -errno.EINVAL
    as_int = _load(lambda b: (b.add_key(parse_type("ipv4"), B.KEY_INT32), b.add(parse_type("u32"))))
    assert _create_raw_btf("array", as_int, 4) >= 0


def test_kernel_rule_lpm_trie_key_must_be_a_struct():
    """Why a non-struct lpm_trie key is wrapped in a struct."""
    plain = _load(lambda b: (b.add(parse_type("u64")), b.add(parse_type("u32"))))
    assert _create_raw_btf("lpm_trie", plain, 8, flags=1) == -errno.EINVAL
    wrapped = _load(lambda b: (b.add_key(parse_type("u64"), B.KEY_STRUCT), b.add(parse_type("u32"))))
    assert _create_raw_btf("lpm_trie", wrapped, 8, flags=1) >= 0


def test_kernel_rule_outer_maps_take_no_btf():
    loaded = B.btf_for("hash", parse_type("u32"), parse_type("u32"))
    with Map.create("hash", 4, 4, 4) as inner:
        opts = L.MapCreateOpts(sz=ctypes.sizeof(L.MapCreateOpts), btf_fd=loaded.fd, btf_key_type_id=loaded.key_id,
                               btf_value_type_id=loaded.value_id, inner_map_fd=inner.fd)
        fd = L.bpf_map_create(MAP_TYPES["array_of_maps"], None, 4, 4, 4, ctypes.byref(opts))
        assert fd < 0
        # and so Map.create leaves BTF out for them:
        with Map.create("array_of_maps", 4, 4, 4, inner_map=inner, key_type=parse_type("u32")) as outer:
            assert outer.info.btf_id == 0 and outer.key_type() is None


def test_btf_is_loaded_once_per_type_pair():
    key, value = parse_type("u32"), parse_type({"struct": [{"a": "u64"}, {"b": "mac"}]})
    maps = [Map.create("hash", 4, value.size, 8, key_type=key, value_type=value) for _ in range(20)]
    try:
        assert len({m.info.btf_id for m in maps}) == 1
    finally:
        for m in maps:
            m.close()


def test_a_map_s_key_and_value_are_decoded_from_one_load(monkeypatch):
    monkeypatch.setattr(B, "_decoded", {})
    loads = []
    load = L.btf__load_from_kernel_by_id
    monkeypatch.setattr(L, "btf__load_from_kernel_by_id", lambda btf_id: loads.append(btf_id) or load(btf_id))
    key, value = parse_type("be32"), parse_type({"struct": [{"a": "u64"}, {"b": "mac"}]})
    with _create("hash", key, value) as m:
        assert m.types() == (key, value) and loads == [m.info.btf_id]
        assert m.key_type() == key and m.value_type() == value and len(loads) == 1  # cached
    assert B.decode_types(0, (1, 4), (0, 8)) == [Raw(4), Raw(8)] and len(loads) == 1  # no BTF: nothing to load


def test_size_mismatch_between_type_and_map_is_refused():
    with pytest.raises(Exception, match="key type is 8 bytes but key_size is 4"):
        Map.create("hash", 4, 4, 4, key_type=parse_type("u64"))


def test_bpftool_prints_formatted_entries(bpftool):
    value = parse_type({"struct": [{"ip": "ipv4"}, {"port": "be16"}, {"name": "char[4]"}]})
    with Map.create("hash", 4, value.size, 8, key_type=parse_type("u32"), value_type=value) as m:
        m.update((7).to_bytes(4, "little"), bytes([10, 0, 0, 1, 0, 80]) + b"ab\0\0" + bytes(2))
        dump = bpftool("map", "dump", "id", str(m.id))
        assert dump[0]["formatted"]["key"] == 7
        assert dump[0]["formatted"]["value"]["name"] == "ab"
    lpm = parse_type({"lpm": "ipv4"})
    with Map.create("lpm_trie", lpm.size, 4, 8, flags=["no_prealloc"], key_type=lpm, value_type=parse_type("u32")) as m:
        m.update((8).to_bytes(4, "little") + bytes([10, 0, 0, 0]), (1).to_bytes(4, "little"))
        dump = bpftool("map", "dump", "id", str(m.id))
        assert dump[0]["formatted"]["key"]["prefixlen"] == 8


def test_map_without_btf_has_no_types():
    with Map.create("hash", 4, 4, 4) as m:
        assert m.key_type() is None and m.value_type() is None


def test_btf_errors_are_kernel_errors():
    with pytest.raises(KernelError):
        B.decode_types(0xFFFFFF0, (1, 4))
