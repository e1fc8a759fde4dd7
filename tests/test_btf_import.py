"""Types from the data plane's own BTF: a clang-compiled BPF object's named types and `.maps`
declarations used by a config, with unions, enums, nested, packed, bitfield and 2-D array
members. The bytes applied are compared with what a C program built from the same header
lays out, and the same types written by hand in the type language give the same bytes."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from cbytes import c_bytes
from conftest import bpftool_json, require_tool, run_cli
from kmesh_apply import api
from kmesh_apply.config import dump_yaml, load_config
from kmesh_apply.errors import ConfigError
from kmesh_apply.pinroot.reader import read_live

HEADER = r"""
#include <linux/types.h>
#include <stdbool.h>

enum lb_policy { LB_POLICY_RANDOM = 0, LB_POLICY_STRICT = 1, LB_POLICY_FAILOVER = 2 };
struct ip_addr { union { __u32 ip4; __u32 ip6[4]; }; };
struct bits { __u8 a:3; __u8 b:5; __u16 c:9; __u32 d; };
#pragma pack(1)
typedef struct { struct ip_addr addr; __u16 port; enum lb_policy policy; } svc_value;
#pragma pack()
struct one_packed { __u8 a; __u32 b; } __attribute__((packed));
struct nested {
    __u8 tag;
    struct { __u16 x; __u64 y; } in;
    __u32 grid[2][3];
    bool ok;
    struct bits f;
    struct one_packed p[2];
    char name[6];
};
"""

BPF = r"""
#include "types.h"
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

struct {
    __uint(type, BPF_MAP_TYPE_HASH);
    __type(key, __u32);
    __type(value, svc_value);
    __uint(max_entries, 16);
    __uint(map_flags, BPF_F_NO_PREALLOC);
} svc_map SEC(".maps");

struct {
    __uint(type, BPF_MAP_TYPE_ARRAY);
    __type(key, __u32);
    __type(value, struct nested);
    __uint(max_entries, 4);
} nested_map SEC(".maps");

char LICENSE[] SEC("license") = "GPL";
"""

HOST = r"""
#include <string.h>
#include "types.h"

int main(void)
{
    svc_value v4, v6;
    struct nested n;
    memset(&v4, 0, sizeof(v4)); memset(&v6, 0, sizeof(v6)); memset(&n, 0, sizeof(n));
    v4.addr.ip4 = 0x0a000001; v4.port = 8080; v4.policy = LB_POLICY_FAILOVER;
    v6.addr.ip6[0] = 1; v6.addr.ip6[3] = 4; v6.port = 443; v6.policy = LB_POLICY_STRICT;
    n.tag = 7; n.in.x = 0xbeef; n.in.y = 0x0102030405060708ULL;
    for (int i = 0; i < 2; i++)
        for (int j = 0; j < 3; j++)
            n.grid[i][j] = 10 * i + j;
    n.ok = true; n.f.a = 5; n.f.b = 17; n.f.c = 300; n.f.d = 0xdeadbeef;
    n.p[0].a = 1; n.p[0].b = 2; n.p[1].a = 3; n.p[1].b = 0x01020304;
    strcpy(n.name, "kmesh");
    show("v4", &v4, sizeof(v4));
    show("v6", &v6, sizeof(v6));
    show("nested", &n, sizeof(n));
    return 0;
}
"""

SVC_V4 = {"addr": {"ip4": 0x0A000001}, "port": 8080, "policy": "LB_POLICY_FAILOVER"}
SVC_V6 = {"addr": {"ip6": [1, 0, 0, 4]}, "port": 443, "policy": 1}
NESTED = {"tag": 7, "in": {"x": 0xBEEF, "y": 0x0102030405060708}, "grid": [[0, 1, 2], [10, 11, 12]], "ok": True,
          "f": {"a": 5, "b": 17, "c": 300, "d": 0xDEADBEEF}, "p": [{"a": 1, "b": 2}, {"a": 3, "b": 0x01020304}],
          "name": "kmesh"}
# The same types, written by hand in the type language.
SVC_SPEC = {"struct": [{"addr": {"union": [{"ip4": "u32"}, {"ip6": "u32[4]"}]}}, {"port": "u16"},
                       {"policy": {"enum": "u32", "values": {"LB_POLICY_RANDOM": 0, "LB_POLICY_STRICT": 1,
                                                             "LB_POLICY_FAILOVER": 2}}}], "packed": True}
NESTED_SPEC = {"struct": [{"tag": "u8"}, {"in": {"struct": [{"x": "u16"}, {"y": "u64"}]}}, {"grid": "u32[2][3]"},
                          {"ok": "bool"}, {"f": {"struct": [{"a": "u8:3"}, {"b": "u8:5"}, {"c": "u16:9"}, {"d": "u32"}]}},
                          {"p": {"array": {"struct": [{"a": "u8"}, {"b": "u32"}], "packed": True}, "length": 2}},
                          {"name": "char[6]"}]}


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    """(work dir with prog.o and nobtf.o, {name: hex bytes as C lays the values out})."""
    require_tool("clang-14")
    work = tmp_path_factory.mktemp("btf_import")
    (work / "types.h").write_text(HEADER)
    (work / "prog.bpf.c").write_text(BPF)
    bpf = ["clang-14", "-O2", "-target", "bpf", "-I/usr/include/x86_64-linux-gnu", "-c", str(work / "prog.bpf.c")]
    subprocess.run([*bpf, "-g", "-o", str(work / "prog.o")], check=True, capture_output=True)
    subprocess.run([*bpf, "-o", str(work / "nobtf.o")], check=True, capture_output=True)
    return work, c_bytes(work, HOST)


def _config(work: Path) -> str:
    return f"""
btf: [prog.o]
inner_maps:
  svc:
    object_map: svc_map            # type, key, value, max_entries, flags from the object
    entries:
      1: {{addr: {{ip4: 0x0a000001}}, port: 8080, policy: LB_POLICY_FAILOVER}}
      2: {{addr: {{ip6: [1, 0, 0, 4]}}, port: 443, policy: 1}}
  svc_keyed:
    object_map: svc_map
    key: {{struct: [{{id: u32}}]}}       # written here: replaces the object's key type
    max_entries: 8
  svc_by_hand:
    type: hash
    key: u32
    value: svc_value               # a typedef's name
    max_entries: 16
    flags: [no_prealloc]
    entries:
      1: {{addr: {{ip4: 0x0a000001}}, port: 8080, policy: LB_POLICY_FAILOVER}}
  nested:
    type: array
    key: u32
    value: struct nested
    max_entries: 4
    entries:
      0: {NESTED!r}
""".replace("True", "true").replace("'", '"')


def test_named_types_and_object_maps_apply_the_bytes_c_lays_out(built, pin_root: Path, tmp_path: Path) -> None:
    work, c_bytes = built
    (work / "kmesh.yaml").write_text(_config(work))
    cfg = load_config([work / "kmesh.yaml"])
    assert cfg.inner_maps["svc"].type == "hash" and cfg.inner_maps["svc"].flags == ("no_prealloc",)
    keyed = cfg.inner_maps["svc_keyed"]
    assert keyed.key.spec() == {"struct": [{"id": "u32"}]} and keyed.max_entries == 8
    assert keyed.value == cfg.inner_maps["svc"].value
    assert cfg.inner_maps["svc"].value == cfg.inner_maps["svc_by_hand"].value == load_config(
        inline={"inner_maps": {"x": {"type": "hash", "key": "u32", "value": SVC_SPEC, "max_entries": 1}}}
    ).inner_maps["x"].value
    assert cfg.inner_maps["nested"].value == load_config(
        inline={"inner_maps": {"x": {"type": "hash", "key": "u32", "value": NESTED_SPEC, "max_entries": 1}}}
    ).inner_maps["x"].value
    api.converge(cfg, str(pin_root))
    live = read_live(str(pin_root))
    key = (1).to_bytes(4, "little")
    assert live.maps["svc"].entries[key].hex() == c_bytes["v4"]
    assert live.maps["svc"].entries[(2).to_bytes(4, "little")].hex() == c_bytes["v6"]
    assert live.maps["svc_by_hand"].entries[key].hex() == c_bytes["v4"]
    assert live.maps["nested"].entries[bytes(4)].hex() == c_bytes["nested"]
    assert not api.plan(cfg, str(pin_root)).has_changes

    shown = dump_yaml(api.show(str(pin_root)))
    assert "LB_POLICY_FAILOVER" in shown  # enums are shown by name
    assert not api.plan(load_config(inline=shown), str(pin_root)).has_changes

    dump = bpftool_json("map", "dump", "pinned", str(pin_root / "nested"))
    formatted = dump[0]["formatted"]["value"]
    assert formatted["grid"] == [[0, 1, 2], [10, 11, 12]] and int(formatted["f"]["c"], 0) == 300  # bpftool prints bitfields in hex


BAD = {
    "an unknown type in a nested field": (
        "    value:\n      struct:\n        - a: u32\n        - b: struct nope\n", 10, "value field 'b': unknown type 'struct nope'"),
    "a union value naming two members": (
        "    value: struct ip_addr\n    entries:\n      1: {ip4: 1, ip6: [1, 2, 3, 4]}\n", 9,
        "names exactly one member of the union (ip4, ip6), got 2 members"),
    "an enum name that does not exist": (
        "    value: enum lb_policy\n    entries:\n      1: LB_POLICY_NONE\n", 9, "unknown enum name 'LB_POLICY_NONE'"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_type_input_is_one_error_with_its_line(built, pin_root: Path, case: str) -> None:
    work, _ = built
    body, line, message = BAD[case]
    path = work / "bad.yaml"
    path.write_text(f"btf: [prog.o]\ninner_maps:\n  m:\n    type: hash\n    key: u32\n    max_entries: 4\n{body}")
    res = run_cli("kmesh-apply", "apply", str(path), "--auto-approve", "--pin-root", str(pin_root))
    assert res.returncode == 1 and "Traceback" not in res.stderr
    errors = [ln for ln in res.stderr.splitlines() if "bad.yaml:" in ln]
    assert len(errors) == 1 and f"bad.yaml:{line}:" in errors[0] and message in errors[0], res.stderr
    assert not pin_root.exists()


def test_an_object_without_btf_is_one_error_naming_the_btf_line(built) -> None:
    work, _ = built
    path = work / "nobtf.yaml"
    path.write_text("inner_maps:\n  m:\n    type: hash\n    key: u32\n    value: u32\n    max_entries: 4\nbtf:\n  - nobtf.o\n")
    with pytest.raises(ConfigError) as err:
        load_config([path])
    (d,) = err.value.diagnostics
    assert d.line == 8 and "no BTF in it" in d.message and "clang -g" in d.message


def test_a_raw_btf_file_names_types_too() -> None:
    cfg = load_config(inline={"btf": ["/sys/kernel/btf/vmlinux"], "inner_maps": {
        "m": {"type": "hash", "key": "struct in6_addr", "value": "struct ethhdr", "max_entries": 4}}})
    assert cfg.inner_maps["m"].key.size == 16 and cfg.inner_maps["m"].value.size == 14


def _narrow_and_wide(built: tuple[Path, dict[str, str]], tmp_path: Path) -> None:
    """prog.o in tmp_path as built (a 2-byte port), and wide.o, the same with a 4-byte port."""
    work, _ = built
    (tmp_path / "types.h").write_text(HEADER.replace("__u16 port;", "__u32 port;"))
    (tmp_path / "prog.bpf.c").write_text(BPF)
    subprocess.run(["clang-14", "-O2", "-g", "-target", "bpf", "-I/usr/include/x86_64-linux-gnu", "-c",
                    str(tmp_path / "prog.bpf.c"), "-o", str(tmp_path / "wide.o")], check=True, capture_output=True)
    shutil.copy(work / "prog.o", tmp_path / "prog.o")


def test_a_large_config_naming_btf_files_is_not_taken_from_the_cache(built, tmp_path: Path) -> None:
    """Its layout depends on the BTF files as well as its text: rebuilt with a wider field, the
    same text gives wider values (a cached encoding would keep the old ones)."""
    _narrow_and_wide(built, tmp_path)
    lines = ["btf:", "  - prog.o", "inner_maps:"]
    for m in range(8):
        lines += [f"  svc{m}:", "    object_map: svc_map", "    max_entries: 2000", "    entries:"]
        lines += [f"      {i}: {{addr: {{ip4: {i}}}, port: {i}, policy: LB_POLICY_STRICT}}" for i in range(1, 2000)]
    path = tmp_path / "big.yaml"
    path.write_text("\n".join(lines) + "\n")
    assert path.stat().st_size >= 256 * 1024  # large enough for the config cache
    assert {len(v) for v in load_config([path]).inner_maps["svc7"].entries.values()} == {22}
    shutil.copy(tmp_path / "wide.o", tmp_path / "prog.o")
    assert {len(v) for v in load_config([path]).inner_maps["svc7"].entries.values()} == {24}


def test_maps_using_types_of_btf_named_in_another_file_are_not_taken_from_the_cache(built, tmp_path: Path) -> None:
    """The BTF files are shared by the whole configuration: a large file that names none may still
    use their types, so with BTF anywhere no file's maps come from the cache (or its blocks)."""
    _narrow_and_wide(built, tmp_path)
    (tmp_path / "a.yaml").write_text("btf: [prog.o]\n")
    lines = ["inner_maps:"]
    for m in range(2):
        lines += [f"  svc{m}:", "    object_map: svc_map", "    max_entries: 9000", "    entries:"]
        lines += [f"      {i}: {{addr: {{ip4: {i}}}, port: {i}, policy: LB_POLICY_STRICT}}" for i in range(1, 9000)]
    big = tmp_path / "big.yaml"
    big.write_text("\n".join(lines) + "\n")
    files = [tmp_path / "a.yaml", big]
    assert {len(v) for v in load_config(files).inner_maps["svc1"].entries.values()} == {22}
    shutil.copy(tmp_path / "wide.o", tmp_path / "prog.o")
    assert {len(v) for v in load_config(files).inner_maps["svc1"].entries.values()} == {24}
    big.write_text(big.read_text().replace("      7: {addr: {ip4: 7}, port: 7,", "      7: {addr: {ip4: 7}, port: 70,"))
    wide = load_config(files).inner_maps["svc1"]  # a changed block: no block kept from the narrow encoding
    assert {len(v) for v in wide.entries.values()} == {24} and wide.entries == load_config(files, use_cache=False).inner_maps["svc1"].entries


@pytest.mark.parametrize("written, line, message", [
    ("    value: u64\n", 6, "value u64 (8 bytes) contradicts map 'svc_map' in {obj}, whose values are 22 bytes"),
    ("    key_size: 8\n", 6, "key_size 8 contradicts map 'svc_map' in {obj}, whose keys are 4 bytes"),
])
def test_object_map_with_a_key_or_value_of_another_size_is_refused(built, pin_root: Path, written: str, line: int,
                                                                   message: str) -> None:
    """What the object's loader would refuse to reuse is refused here, naming both sizes and the line."""
    work, _ = built
    path = work / "contradicts.yaml"
    path.write_text(f"btf: [prog.o]\ninner_maps:\n  svc:\n    object_map: svc_map\n    max_entries: 4\n{written}")
    res = run_cli("kmesh-apply", "apply", str(path), "--auto-approve", "--pin-root", str(pin_root))
    assert res.returncode == 1 and "Traceback" not in res.stderr
    errors = [ln for ln in res.stderr.splitlines() if "contradicts.yaml:" in ln]
    assert len(errors) == 1 and f"contradicts.yaml:{line}:" in errors[0], res.stderr
    assert message.format(obj=work / "prog.o") in errors[0], errors[0]
    assert not pin_root.exists()
