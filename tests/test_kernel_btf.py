"""Key and value types survive the round trip through the kernel's BTF, for every map type."""

from __future__ import annotations

import ctypes
import errno
import os
import subprocess

import pytest

from conftest import bpftool_json, require_tool
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


# ---- the BTF the tool writes, read by others: bpftool's BTF dump and libbpf's btf__parse, against C ----

C_CASES = {  # name: (type spec, the same type in C)
    "signed": ({"struct": [{"a": "i8"}, {"b": "i16"}, {"c": "i32"}, {"d": "i64"}]},
               "struct signed_t { __s8 a; __s16 b; __s32 c; __s64 d; };"),
    "be": ({"struct": [{"p": "be16"}, {"q": "be32"}, {"r": "be64"}]},
           "struct be_t { __be16 p; __be32 q; __be64 r; };"),
    "addrs": ({"struct": [{"m": "mac"}, {"v6": "ipv6"}, {"v4": "ipv4"}, {"t": "u8"}]},
              "struct addrs_t { __u8 m[6]; struct in6_addr v6; __be32 v4; __u8 t; };"),
    "union": ({"struct": [{"tag": "u8"}, {"u": {"union": [{"s": "u16"}, {"l": "u64"}]}}]},
              "struct union_t { __u8 tag; union { __u16 s; __u64 l; } u; };"),
    "enum": ({"struct": [{"t": "u8"}, {"c": {"enum": "u32", "values": {"RED": 1, "BLUE": 7}}},
                         {"w": {"enum": "i64", "values": {"NEG": -1}}}]},
             "struct enum_t { __u8 t; __u32 c; __s64 w; };"),
    "packed": ({"struct": [{"a": "u8"}, {"b": "u32"}, {"c": "u16"}], "packed": True},
               "struct packed_t { __u8 a; __u32 b; __u16 c; } __attribute__((packed));"),
    "bitfields": ({"struct": [{"a": "u8:3"}, {"b": "i16:9"}, {"c": "u32:20"}, {"d": "u8"}]},
                  "struct bitfields_t { __u8 a:3; __s16 b:9; __u32 c:20; __u8 d; };"),
}


@pytest.fixture(scope="module")
def c_members(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[int, dict[str, tuple[int, int]]]]:
    """{case: (sizeof, {member: (bit offset, bit width)})} as clang lays the C out: each member is set to
    all ones in a zeroed struct and found in its bytes (bit 0 is the least significant bit of byte 0)."""
    work = tmp_path_factory.mktemp("btf_c")
    body = ["#include <stdio.h>", "#include <string.h>", "#include <linux/types.h>", "#include <linux/in6.h>"]
    body += [c for _, c in C_CASES.values()]
    body += ["static void show(const char *c, const char *m, const void *p, size_t n) {",
             "    const unsigned char *b = p; printf(\"%s %s %zu \", c, m, n);",
             "    for (size_t i = 0; i < n; i++) printf(\"%02x\", b[i]); printf(\"\\n\"); }", "int main(void) {"]
    for name, (spec, c) in C_CASES.items():
        tag = c.split()[1]
        for f in parse_type(spec).fields:
            body.append(f"    {{ struct {tag} v; memset(&v, 0, sizeof v); memset(&v.{f.name}, 0xff, sizeof v.{f.name}); "
                        f"show(\"{name}\", \"{f.name}\", &v, sizeof v); }}" if not f.bits else
                        f"    {{ struct {tag} v; memset(&v, 0, sizeof v); v.{f.name} = -1; "
                        f"show(\"{name}\", \"{f.name}\", &v, sizeof v); }}")
    body += ["    return 0;", "}"]
    (work / "members.c").write_text("\n".join(body) + "\n")
    subprocess.run([require_tool("clang-14"), "-Wall", "-Werror", "-Wno-constant-conversion", "-o", str(work / "members"),
                    str(work / "members.c")], check=True, capture_output=True, text=True)
    out: dict[str, tuple[int, dict[str, tuple[int, int]]]] = {}
    for line in subprocess.run([str(work / "members")], check=True, capture_output=True, text=True).stdout.splitlines():
        case, member, size, hexbytes = line.split()
        bits = int.from_bytes(bytes.fromhex(hexbytes), "little")
        first = (bits & -bits).bit_length() - 1
        out.setdefault(case, (int(size), {}))[1][member] = (first, bin(bits).count("1"))
    return out


def _btf_types(btf_id: int) -> dict[int, dict]:
    return {t["id"]: t for t in bpftool_json("btf", "dump", "id", str(btf_id))["types"]}


@pytest.mark.parametrize("case", list(C_CASES))
def test_bpftool_reads_the_tool_s_btf_as_c_lays_the_type_out(case: str, c_members, tmp_path) -> None:
    """bpftool's dump of the map's BTF (not the tool's reader) gives each member the bit offset and width,
    and the struct the size, that clang gives the same type written in C; integers are signed where C's
    are; be16/be32/be64 are typedefs named for their byte order, of unsigned integers; unions, enums
    (with their values) and packed structs keep their kinds. libbpf's btf__parse takes the same BTF
    from a file and resolves the same size."""
    spec, _ = C_CASES[case]
    t = parse_type(spec)
    c_size, c_fields = c_members[case]
    with Map.create("hash", 4, t.size, 4, key_type=parse_type("u32"), value_type=t) as m:
        info = L.BpfMapInfo()
        assert L.bpf_obj_get_info_by_fd(m.fd, ctypes.byref(info), ctypes.byref(ctypes.c_uint32(ctypes.sizeof(info)))) == 0
        types = _btf_types(m.info.btf_id)
        value = types[info.btf_value_type_id]
        assert (value["kind"], value["size"]) == ("STRUCT", c_size) and t.size == c_size
        members = {mm["name"]: mm for mm in value["members"]}
        assert {n: (mm["bits_offset"], mm.get("bitfield_size") or 8 * _resolved_size(types, mm["type_id"]))
                for n, mm in members.items()} == c_fields
        for f in t.fields:
            member = types[members[f.name]["type_id"]]
            spec_of = f.type.spec() if not f.bits else f.type.name
            if spec_of in ("i8", "i16", "i32", "i64"):
                assert (member["kind"], member["encoding"]) == ("INT", "SIGNED"), (f.name, member)
            elif spec_of in ("be16", "be32", "be64"):
                target = types[member["type_id"]]
                assert (member["kind"], member["name"], target["kind"], target["encoding"]) == (
                    "TYPEDEF", spec_of, "INT", "(none)"), (f.name, member)
            elif isinstance(spec_of, dict) and "union" in spec_of:
                assert member["kind"] == "UNION" and [x["name"] for x in member["members"]] == ["s", "l"]
            elif isinstance(spec_of, dict) and "enum" in spec_of:
                assert member["kind"] in ("ENUM", "ENUM64")
                assert {v["name"]: int(v["val"]) for v in member["values"]} == spec_of["values"], member
        raw = tmp_path / "value.btf"
        raw.write_bytes(_kernel_btf_raw(m.info.btf_id))
        parsed = L.btf__parse(str(raw).encode(), None)
        assert parsed, f"libbpf's btf__parse refused the BTF of {case}"
        try:
            assert _libbpf.btf__resolve_size(parsed, info.btf_value_type_id) == c_size
        finally:
            L.btf__free(parsed)


def _resolved_size(types: dict[int, dict], type_id: int) -> int:
    t = types[type_id]
    while t["kind"] in ("TYPEDEF", "CONST", "VOLATILE"):
        t = types[t["type_id"]]
    if t["kind"] == "ARRAY":
        return t["nr_elems"] * _resolved_size(types, t["type_id"])
    return t["size"]


_libbpf = ctypes.CDLL("libbpf.so.1", use_errno=True)
_libbpf.btf__resolve_size.argtypes = [ctypes.c_void_p, ctypes.c_uint32]
_libbpf.btf__resolve_size.restype = ctypes.c_long
_libbpf.btf__raw_data.argtypes = [ctypes.c_void_p, ctypes.POINTER(ctypes.c_uint32)]
_libbpf.btf__raw_data.restype = ctypes.c_void_p


def _kernel_btf_raw(btf_id: int) -> bytes:
    """The BTF object the kernel holds for a map, as the raw bytes a .btf file holds."""
    btf = L.btf__load_from_kernel_by_id(btf_id)
    assert btf
    try:
        size = ctypes.c_uint32()
        data = _libbpf.btf__raw_data(btf, ctypes.byref(size))
        return ctypes.string_at(data, size.value)
    finally:
        L.btf__free(btf)
