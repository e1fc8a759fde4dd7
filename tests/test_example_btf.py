"""examples/btf, the BPF object the docs build to try types straight from C: built from its source
here (never committed), applied, read back byte for byte through the example's own header compiled
by a C compiler, planned clean, and shown back with its formats."""

from __future__ import annotations

import shutil
import subprocess
import sysconfig
from pathlib import Path

import pytest

from cbytes import c_bytes
from conftest import REPO, require_tool
from kmesh_apply import api
from kmesh_apply.config import dump_yaml, load_config
from kmesh_apply.pinroot.reader import read_live

EXAMPLE = REPO / "examples" / "btf"

HOST = r"""
#include <arpa/inet.h>
#include <string.h>
#include "types.h"

int main(void)
{
    frontend_key fk; backend_key bk; backend_value bv;
    memset(&fk, 0, sizeof(fk)); memset(&bk, 0, sizeof(bk)); memset(&bv, 0, sizeof(bv));
    inet_pton(AF_INET, "10.96.0.10", &fk.addr.ip4);
    bk.backend_uid = 1002;
    inet_pton(AF_INET6, "fd00:10:244::7", bv.addr.ip6);
    bv.port = htons(8443);
    bv.lb_policy = LB_POLICY_FAILOVER;
    show("frontend_key", &fk, sizeof(fk));
    show("backend_key", &bk, sizeof(bk));
    show("backend_value", &bv, sizeof(bv));
    return 0;
}
"""


@pytest.fixture
def built(tmp_path: Path) -> Path:
    """The example in a directory of its own, with maps.bpf.o built as maps.bpf.c says."""
    clang = require_tool("clang-14")
    work = tmp_path / "btf"
    shutil.copytree(EXAMPLE, work, ignore=shutil.ignore_patterns("*.o"))  # built here, whatever a checkout holds
    multiarch = f"/usr/include/{sysconfig.get_config_var('MULTIARCH')}"
    subprocess.run([clang, "-O2", "-g", "-target", "bpf", f"-I{multiarch}", "-c", str(work / "maps.bpf.c"),
                    "-o", str(work / "maps.bpf.o")], check=True, capture_output=True)
    return work


def test_the_btf_example_writes_what_its_c_types_lay_out(built: Path, pin_root: Path) -> None:
    cfg = load_config([built])
    assert {n: (m.type, m.max_entries, m.flags) for n, m in cfg.inner_maps.items()} == {
        "km_frontend": ("hash", 1024, ("no_prealloc",)), "km_backend": ("hash", 1024, ("no_prealloc",))}
    api.converge(cfg, str(pin_root))
    expected = c_bytes(built, HOST)
    live = read_live(str(pin_root)).maps
    assert bytes.fromhex(expected["frontend_key"]) in live["km_frontend"].entries
    assert live["km_backend"].entries[bytes.fromhex(expected["backend_key"])].hex() == expected["backend_value"]
    assert not api.plan(cfg, str(pin_root)).has_changes
    shown = api.show(str(pin_root))
    assert shown["maps"]["km_backend"]["formats"]["port"] == "be16"
    assert not api.plan(load_config(inline=dump_yaml(shown)), str(pin_root)).has_changes


def test_the_example_commits_no_object() -> None:
    tracked = subprocess.run(["git", "ls-files", "examples/btf"], cwd=REPO, capture_output=True, text=True).stdout.split()
    assert sorted(tracked) == ["examples/btf/maps.bpf.c", "examples/btf/maps.yaml", "examples/btf/types.h"] or not tracked
