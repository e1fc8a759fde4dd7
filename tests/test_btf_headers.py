"""C headers under `btf:` (issue 24 item 1): every typedef, struct, union and enum a header declares
is usable by name, with no companion object, compiled with clang (include paths and defines from the
config), cached safely, and refused clearly when clang is missing. Our own small headers, shaped
like Kmesh's (typedefs of anonymous packed structs, a struct wrapping an anonymous union, a typedef'd
enum, sizes from macros); values are checked against the bytes a C compiler lays out."""

from __future__ import annotations

import stat
import subprocess
from pathlib import Path

import pytest

from cbytes import c_bytes
from conftest import REPO, run_cli
from kmesh_apply import api
from kmesh_apply.config import headers, load_config
from kmesh_apply.errors import ConfigError
from kmesh_apply.pinroot.reader import read_live

COMMON = r"""
#ifndef COMMON_H
#define COMMON_H
#include <linux/types.h>
struct ip_addr { union { __u32 ip4; __u32 ip6[4]; }; };
#endif
"""

TYPES = r"""
#include "common.h"
#ifndef MAX_PORT_COUNT
#define MAX_PORT_COUNT 2
#endif
typedef enum { LB_POLICY_RANDOM = 0, LB_POLICY_STRICT = 1, LB_POLICY_FAILOVER = 2 } lb_policy_t;
#pragma pack(1)
typedef struct { struct ip_addr addr; } frontend_key;
typedef struct {
    struct ip_addr addr;
    __u32 service_count;
    __u32 service_port[MAX_PORT_COUNT];
    __be16 port;
} backend_value;
#pragma pack()
typedef struct { __be32 a; __be64 b; __sum16 c; __wsum d; __u16 e; } net_t;
"""

HOST = r"""
#include <string.h>
#include "types.h"

int main(void)
{
    frontend_key k; backend_value v;
    memset(&k, 0, sizeof(k)); memset(&v, 0, sizeof(v));
    k.addr.ip4 = 0x0100000a;
    v.addr.ip6[0] = 1; v.addr.ip6[3] = 4; v.service_count = 3;
    for (int i = 0; i < MAX_PORT_COUNT; i++)
        v.service_port[i] = 100 + i;
    v.port = 0x901f;
    show("key", &k, sizeof(k));
    show("value", &v, sizeof(v));
    return 0;
}
"""


@pytest.fixture
def work(tmp_path: Path) -> Path:
    (tmp_path / "inc").mkdir()
    (tmp_path / "inc" / "common.h").write_text(COMMON)
    (tmp_path / "types.h").write_text(TYPES)
    return tmp_path


def config(ports: int) -> str:
    return f"""
btf:
  - header: types.h
    include: [inc]
    defines: {{MAX_PORT_COUNT: {ports}}}
inner_maps:
  frontend:
    type: hash
    key: frontend_key
    value: backend_value
    max_entries: 8
    flags: [no_prealloc]
    entries:
      - key: {{addr: {{ip4: 0x0100000a}}}}
        value: {{addr: {{ip6: [1, 0, 0, 4]}}, service_count: 3, service_port: {list(range(100, 100 + ports))},
                port: 8080}}
  policies:
    type: array
    key: u32
    value: lb_policy_t
    max_entries: 2
    entries: {{0: LB_POLICY_FAILOVER}}
"""


def test_a_header_s_types_apply_the_bytes_c_lays_out(work: Path, pin_root: Path) -> None:
    """Typedefs, a struct wrapping an anonymous union, a typedef'd enum, `__be16` read as network order,
    an array sized by a define given in the config, a header found through `include:`."""
    (work / "maps.yaml").write_text(config(3))
    cfg = load_config([work / "maps.yaml"])
    value = cfg.inner_maps["frontend"].value
    assert {f.name: f.type.spec() for f in value.fields}["port"] == "be16"
    assert value.size == 4 * 4 + 4 + 3 * 4 + 2
    net = load_config(inline={"btf": [{"header": str(work / "types.h"), "include": [str(work / "inc")]}], "inner_maps": {
        "n": {"type": "hash", "key": "u32", "value": "net_t", "max_entries": 1}}}).inner_maps["n"].value
    assert net.spec() == {"struct": [{"a": "be32"}, {"b": "be64"}, {"c": "be16"}, {"d": "be32"}, {"e": "u16"}]}
    api.converge(cfg, str(pin_root))
    host = work / "host"
    host.mkdir()
    (host / "common.h").write_text(COMMON)
    (host / "types.h").write_text(TYPES)
    expected = c_bytes(host, "#define MAX_PORT_COUNT 3\n" + HOST)
    live = read_live(str(pin_root))
    ((key, got),) = live.maps["frontend"].entries.items()
    assert key.hex() == expected["key"] and got.hex() == expected["value"]
    assert live.maps["policies"].entries[bytes(4)] == (2).to_bytes(4, "little")
    assert not api.plan(load_config([work / "maps.yaml"]), str(pin_root)).has_changes


def test_an_unknown_name_says_which_files_were_searched(work: Path) -> None:
    (work / "maps.yaml").write_text(config(2).replace("value: backend_value", "value: backend_valeu"))
    with pytest.raises(ConfigError) as err:
        load_config([work / "maps.yaml"])
    (d,) = err.value.diagnostics
    assert d.line == 10 and d.map == "frontend"
    assert f"unknown type 'backend_valeu': not declared in {work / 'types.h'} (compiled with clang" in d.message


def test_a_header_that_does_not_compile_names_what_is_missing(work: Path) -> None:
    (work / "maps.yaml").write_text(config(2).replace("    include: [inc]\n", ""))
    with pytest.raises(ConfigError) as err:
        load_config([work / "maps.yaml"])
    (d,) = err.value.diagnostics
    assert d.line == 3 and "'common.h' file not found" in d.message and "give its directory under include:" in d.message
    assert "\n" not in d.message


def test_without_clang_the_error_says_so(work: Path, tmp_path: Path) -> None:
    (work / "maps.yaml").write_text(config(2))
    empty = tmp_path / "no-clang"
    empty.mkdir()
    res = run_cli("kmesh-apply", "validate", str(work / "maps.yaml"), env={"PATH": str(empty)})
    assert res.returncode == 1 and "Traceback" not in res.stderr
    assert f"maps.yaml:3: btf: {work / 'types.h'} is C: turning it into BTF needs clang" in res.stderr, res.stderr
    assert "apt-get install clang" in res.stderr


def test_compiled_btf_is_cached_until_a_header_it_reads_changes(work: Path, tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """The second load runs no compiler; editing a header that the named one includes compiles again.
    The cache is the config cache's: a directory of the user's, its files 0600."""
    cache = tmp_path / "cache"
    monkeypatch.setenv("KMESH_APPLY_CACHE_DIR", str(cache))
    runs = []
    real_run = subprocess.run

    def counting(argv, *args, **kwargs):
        runs.append(argv[0])
        return real_run(argv, *args, **kwargs)

    monkeypatch.setattr(headers.subprocess, "run", counting)
    (work / "maps.yaml").write_text(config(2))
    first = load_config([work / "maps.yaml"]).inner_maps["frontend"].value
    assert len(runs) == 2
    assert load_config([work / "maps.yaml"]).inner_maps["frontend"].value == first
    assert len(runs) == 2
    assert stat.S_IMODE(cache.stat().st_mode) == 0o700
    blobs = [p for p in cache.iterdir() if p.name.startswith("btf-")]
    assert blobs and all(stat.S_IMODE(p.stat().st_mode) == 0o600 for p in blobs)
    common = work / "inc" / "common.h"
    common.write_text(COMMON.replace("__u32 ip6[4];", "__u32 ip6[4]; __u32 more[5];"))
    wider = load_config([work / "maps.yaml"]).inner_maps["frontend"].value
    assert len(runs) == 4 and wider.size == first.size + 4  # the union grew from 16 to 20 bytes


def test_a_c_source_gives_its_maps_too(tmp_path: Path) -> None:
    """A .c file under btf: is compiled the same way: its `.maps` serve object_map, with its
    key_size-only declarations typed from the typedefs it includes (Kmesh's style): examples/btf's."""
    (tmp_path / "maps.yaml").write_text(f"""
btf: [{{header: {REPO / "examples/btf/maps.bpf.c"}}}]
inner_maps:
  backend:
    object_map: km_backend
    key: backend_key
    value: backend_value
""")
    spec = load_config([tmp_path / "maps.yaml"]).inner_maps["backend"]
    assert (spec.type, spec.max_entries, spec.flags, spec.key.size, spec.value.size) == ("hash", 1024, ("no_prealloc",), 4, 24)
