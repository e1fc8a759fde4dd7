"""Formats (issue 24 item 2): a field of a C type shown as what it holds. Kmesh's `__u32 ip4` holds
an IPv4 address in network order and its ports are `__u32` holding htons() values, so with
`formats: {addr.ip4: ipv4, service_port[]: be16}` a config writes `10.96.0.10` and `8080`. The bytes
are what C's htonl()/htons() give; the map keeps its C types (bpftool prints the integers); `show`
writes the formats back, so show -> plan stays clean; formats never replace a map."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cbytes import c_bytes
from conftest import bpftool_json, run_cli
from kmesh_apply import api
from kmesh_apply.config import codecs, dump_yaml, load_config
from kmesh_apply.ctype import Formatted, Int, TypeSpecError, apply_format, format_path, parse_type, unformatted
from kmesh_apply.errors import ConfigError
from kmesh_apply.pinroot.reader import read_live

IP_ADDR = {"union": [{"ip4": "u32"}, {"ip6": "u32[4]"}]}
VALUE = {"struct": [{"addr": IP_ADDR}, {"service_port": "u32[3]"}, {"lb_policy": "u32"}]}
POLICY = {"enum": "u32", "values": {"LB_POLICY_RANDOM": 0, "LB_POLICY_STRICT": 1, "LB_POLICY_FAILOVER": 2}}

FORMATS = {"addr.ip4": "ipv4", "service_port[]": "be16", "lb_policy": POLICY}
CONFIG = f"""
inner_maps:
  service:
    type: hash
    key: u32
    value: {json.dumps(VALUE)}
    formats: {json.dumps(FORMATS)}
    max_entries: 8
    entries:
      1: {{addr: {{ip4: 10.96.0.10}}, service_port: [80, 8080, 0], lb_policy: LB_POLICY_FAILOVER}}
      2: {{addr: {{ip6: [1, 0, 0, 4]}}, service_port: [443, 0, 0], lb_policy: 0}}
"""

HOST = r"""
#include <arpa/inet.h>
#include <string.h>
#include <linux/types.h>
#pragma pack(1)
typedef struct {
    union { __u32 ip4; __u32 ip6[4]; } addr;
    __u32 service_port[3];
    __u32 lb_policy;
} service_value;
#pragma pack()

int main(void)
{
    service_value a, b;
    memset(&a, 0, sizeof(a)); memset(&b, 0, sizeof(b));
    a.addr.ip4 = htonl(0x0a60000a); a.service_port[0] = htons(80); a.service_port[1] = htons(8080); a.lb_policy = 2;
    b.addr.ip6[0] = 1; b.addr.ip6[3] = 4; b.service_port[0] = htons(443);
    show("a", &a, sizeof(a));
    show("b", &b, sizeof(b));
    return 0;
}
"""


def test_formats_write_what_c_writes_and_show_gives_them_back(pin_root: Path, tmp_path: Path) -> None:
    (tmp_path / "service.yaml").write_text(CONFIG)
    cfg = load_config([tmp_path / "service.yaml"])
    value = cfg.inner_maps["service"].value
    assert unformatted(value) == parse_type(VALUE) and value != parse_type(VALUE)
    api.converge(cfg, str(pin_root))
    expected = c_bytes(tmp_path, HOST)
    live = read_live(str(pin_root)).maps["service"]
    assert live.entries[(1).to_bytes(4, "little")].hex() == expected["a"]
    assert live.entries[(2).to_bytes(4, "little")].hex() == expected["b"]
    assert not api.plan(cfg, str(pin_root)).has_changes

    # The map keeps its C types: bpftool prints the integers the data plane reads.
    dump = {e["formatted"]["key"]: e["formatted"]["value"] for e in bpftool_json("map", "dump", "pinned", str(pin_root / "service"))}
    assert dump[1]["addr"]["ip4"] == int.from_bytes(bytes([10, 96, 0, 10]), "little")
    assert dump[1]["service_port"] == [int.from_bytes((80).to_bytes(2, "big"), "little"), 0x901F, 0]

    shown = api.show(str(pin_root))["maps"]["service"]
    assert shown["value"] == VALUE  # spelled as C declares it ...
    assert shown["formats"] == {"addr.ip4": "ipv4", "service_port[]": "be16", "lb_policy": POLICY}  # ... shown as written
    assert shown["entries"][1] == {"addr": {"ip4": "10.96.0.10"}, "service_port": [80, 8080, 0], "lb_policy": "LB_POLICY_FAILOVER"}
    text = dump_yaml(api.show(str(pin_root)))
    assert "service_port[]: be16" in text
    (tmp_path / "shown.yaml").write_text(text)
    res = run_cli("kmesh-apply", "plan", str(tmp_path / "shown.yaml"), "--pin-root", str(pin_root), "--detailed-exitcode")
    assert res.returncode == 0, res.stdout + res.stderr


def test_formats_are_how_bytes_read_not_what_they_are(pin_root: Path, tmp_path: Path) -> None:
    """Adding formats to a live map (or taking them away) changes no byte: nothing to replace, nothing to write."""
    plain = CONFIG.replace(f"    formats: {json.dumps(FORMATS)}\n", "")
    plain = plain.replace("ip4: 10.96.0.10", f"ip4: {int.from_bytes(bytes([10, 96, 0, 10]), 'little')}")
    plain = plain.replace("[80, 8080, 0]", "[0x5000, 0x901f, 0]").replace("[443, 0, 0]", "[0xbb01, 0, 0]")
    plain = plain.replace("LB_POLICY_FAILOVER", "2")
    assert "formats" not in plain
    (tmp_path / "plain.yaml").write_text(plain)
    (tmp_path / "formatted.yaml").write_text(CONFIG)
    api.converge(load_config([tmp_path / "plain.yaml"]), str(pin_root))
    before = read_live(str(pin_root)).maps["service"]
    plan = api.plan(load_config([tmp_path / "formatted.yaml"]), str(pin_root))
    assert not plan.has_changes, [c.__dict__ for c in plan.changes]
    api.converge(load_config([tmp_path / "formatted.yaml"]), str(pin_root))
    assert read_live(str(pin_root)).maps["service"].id == before.id


def test_a_narrow_format_refuses_what_it_cannot_hold_and_shows_foreign_bytes_as_the_integer() -> None:
    port = apply_format(parse_type("u32[2]"), ["[]"], parse_type("be16"))
    assert codecs.encode(port, [8080, 1]) == bytes([0x1F, 0x90, 0, 0, 0, 1, 0, 0])
    with pytest.raises(codecs.CodecError, match=r"element \[0\]: expected an integer 0..65535 for be16, got 70000"):
        codecs.encode(port, [70000, 1])
    assert codecs.decode(port, bytes([0x1F, 0x90, 0, 0, 0x1F, 0x90, 1, 0])) == [8080, 0x1901F]


@pytest.mark.parametrize("formats, line, message", [
    ("{addr.ip5: ipv4}", 6, "formats: addr.ip5 in the value: no field 'ip5' in 'addr' (its fields: ip4, ip6)"),
    ("{port: ipv4}", 6, "formats: no field 'port' in the key, a u32; no field 'port' in the value (its fields: addr, "
                        "service_port, lb_policy)"),
    ("{service_port: be16}", 6, "formats: service_port in the value: format be16 is 2 bytes but the field's u32[3] is 12"),
    ("{addr: ipv4}", 6, "formats: addr in the value: a format applies to an integer, an array of integers or bytes"),
    ("{addr.ip4: {struct: [{a: u32}]}}", 6, "formats: addr.ip4 in the value: a format is a scalar type (an integer, "
                                            "be16..be64, bool, an enum, ipv4, ipv6, mac, char[N] or bytes[N]), got "
                                            "{struct: [{a: u32}]}"),
    ("{service_port.x: be16}", 6, "formats: service_port.x in the value: no field 'x' in 'service_port'"),
    ("{lb_policy: {enum: u16, values: {A: 1}}}", 6, "an enum of u16 formats a u16 field, not u32"),
])
def test_a_format_that_cannot_apply_is_one_error_with_its_line(tmp_path: Path, formats: str, line: int, message: str) -> None:
    config = tmp_path / "bad.yaml"
    config.write_text(f"inner_maps:\n  service:\n    type: hash\n    key: u32\n    value: {json.dumps(VALUE)}\n"
                      f"    formats: {formats}\n    max_entries: 8\n")
    with pytest.raises(ConfigError) as err:
        load_config([config])
    (d,) = err.value.diagnostics
    assert (d.line, d.map) == (line, "service") and message in d.message, d.message


def test_a_format_spelled_inline_is_the_same_type() -> None:
    inline = parse_type({"struct": [{"ip": {"type": "u32", "format": "ipv4"}}]})
    assert inline.fields[0].type == Formatted(Int("u32"), parse_type("ipv4"))
    assert parse_type(inline.spec()) == inline
    with pytest.raises(TypeSpecError, match="a narrower format needs an unsigned integer field"):
        parse_type({"type": "i32", "format": "be16"})
    assert format_path("a[][].b") == ["a", "[]", "[]", "b"]


def test_formats_of_a_named_type_apply_wherever_it_is_used(tmp_path: Path, pin_root: Path) -> None:
    """Top-level `formats:` by C type name: `struct ip_addr` is shown as addresses in a key and, nested,
    in a value; a map's own formats add to them."""
    (tmp_path / "types.h").write_text(r"""
#include <linux/types.h>
struct ip_addr { union { __u32 ip4; __u32 ip6[4]; }; };
typedef enum { LB_POLICY_RANDOM = 0, LB_POLICY_STRICT = 1, LB_POLICY_FAILOVER = 2 } lb_policy_t;
#pragma pack(1)
typedef struct { struct ip_addr addr; } frontend_key;
typedef struct { struct ip_addr addr; __u32 port; __u32 lb_policy; } backend_value;
#pragma pack()
""")
    (tmp_path / "maps.yaml").write_text("""
btf: [types.h]
formats:
  struct ip_addr: {ip4: ipv4, ip6: ipv6}
  backend_value: {port: be16}
inner_maps:
  frontend:
    type: hash
    key: frontend_key
    value: backend_value
    formats: {lb_policy: lb_policy_t}
    max_entries: 8
    entries:
      - key: {addr: {ip4: 10.96.0.10}}
        value: {addr: {ip6: "fd00::1"}, port: 8080, lb_policy: LB_POLICY_STRICT}
""")
    cfg = load_config([tmp_path / "maps.yaml"])
    spec = cfg.inner_maps["frontend"]
    ((key, value),) = spec.entries.items()
    assert key == bytes([10, 96, 0, 10]) + bytes(12)
    assert value == bytes.fromhex("fd000000000000000000000000000001") + bytes([0x1F, 0x90, 0, 0]) + (1).to_bytes(4, "little")
    api.converge(cfg, str(pin_root))
    shown = api.show(str(pin_root))["maps"]["frontend"]
    assert shown["formats"]["addr.ip4"] == "ipv4" and shown["formats"]["port"] == "be16"
    assert shown["entries"] == [{"key": {"addr": {"ip4": "10.96.0.10"}},
                                 "value": {"addr": {"ip6": "fd00::1"}, "port": 8080, "lb_policy": "LB_POLICY_STRICT"}}]
    assert not api.plan(load_config(inline=dump_yaml(api.show(str(pin_root)))), str(pin_root)).has_changes

    (tmp_path / "maps.yaml").write_text((tmp_path / "maps.yaml").read_text().replace("{ip4: ipv4, ip6: ipv6}", "{ip5: ipv4}"))
    with pytest.raises(ConfigError) as err:
        load_config([tmp_path / "maps.yaml"])
    (d,) = err.value.diagnostics
    assert d.line == 4 and "formats: no field 'ip5' in struct ip_addr (its fields: ip4, ip6)" in d.message, d.message


def test_every_kind_of_format_survives_the_map_s_btf(pin_root: Path) -> None:
    """Each format is recorded in the map's BTF (a typedef of the C type named for the format) and read back."""
    value = {"struct": [{"name": "u8[8]"}, {"id": "bytes[4]"}, {"big": "u64"}, {"mac": "u8[6]"}, {"ok": "u8"},
                        {"v6": "u32[4]"}, {"small": "i16"}]}
    formats = {"name": "char[8]", "id": "u32", "big": "be64", "mac": "mac", "ok": "bool", "v6": "ipv6", "small": "u16"}
    entry = {"name": "kmesh", "id": 7, "big": 1, "mac": "02:00:00:00:00:01", "ok": True, "v6": "fd00::1", "small": 65535}
    cfg = load_config(inline={"inner_maps": {"m": {"type": "hash", "key": "u32", "value": value, "formats": formats,
                                                   "max_entries": 1, "entries": {1: entry}}}})
    api.converge(cfg, str(pin_root))
    shown = api.show(str(pin_root))["maps"]["m"]
    assert (shown["value"], shown["formats"], shown["entries"]) == (value, formats, {1: entry})
