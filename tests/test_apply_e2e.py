"""The declarative applier end to end against the real kernel, cross-checked with bpftool
and with a BPF program that reads through the outer map (issue 4's round trip)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO, bpf_syscalls, pinned_maps, run_cli

MESH = REPO / "examples" / "mesh"

LOOKUP_PROG = r"""
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

struct endpoint { __u32 ip; __u16 port; __u16 weight; };

struct backends {
    __uint(type, BPF_MAP_TYPE_HASH);
    __uint(max_entries, 64);
    __uint(key_size, sizeof(__u32));
    __uint(value_size, sizeof(struct endpoint));
};

struct {
    __uint(type, BPF_MAP_TYPE_HASH_OF_MAPS);
    __uint(max_entries, 128);
    __type(key, __u32);
    __array(values, struct backends);
} services SEC(".maps");

/* Two-level lookup: service 1's backend 0; returns its weight (or a marker when absent). */
SEC("xdp")
int lookup(struct xdp_md *ctx)
{
    __u32 svc = 1, idx = 0;
    void *inner = bpf_map_lookup_elem(&services, &svc);
    if (!inner)
        return 100001;
    struct endpoint *ep = bpf_map_lookup_elem(inner, &idx);
    if (!ep)
        return 100002;
    return ep->weight;
}

char LICENSE[] SEC("license") = "GPL";
"""


def kmesh_apply(*args: str, root: Path, check: int | None = 0) -> subprocess.CompletedProcess:
    res = run_cli("kmesh-apply", *args, "--pin-root", str(root)) if args[0] != "schema" else run_cli("kmesh-apply", *args)
    assert "Traceback" not in res.stderr, res.stderr
    if check is not None:
        assert res.returncode == check, f"exit {res.returncode}\nstdout:\n{res.stdout}\nstderr:\n{res.stderr}"
    return res


def raw(hex_bytes: list[str]) -> bytes:
    return bytes(int(b, 16) for b in hex_bytes)


def dump(bpftool, path: Path) -> list:
    return bpftool("map", "dump", "pinned", str(path))


def edited_mesh(tmp_path: Path, **replacements: str) -> Path:
    text = (MESH / "mesh.yaml").read_text()
    for old, new in replacements.items():
        assert old in text
        text = text.replace(old, new)
    out = tmp_path / "mesh.yaml"
    out.write_text(text)
    return out


def test_mesh_round_trip(pin_root: Path, bpftool, tmp_path: Path):
    out = kmesh_apply("apply", str(MESH), "--auto-approve", root=pin_root).stdout
    assert "Plan: 5 to create, 0 to update, 0 to destroy." in out
    assert [p.name for p in pinned_maps(pin_root)] == ["backends-api", "backends-web", "counters", "routes", "services"]

    # bpftool, an independent client, reads the bytes a C compiler lays out (tests/test_layout_c.py checks
    # the encoder against clang): struct { __be32 ip; __be16 port; __u16 weight; } {10.0.1.10, htons(8080), 100}
    web = {raw(e["key"]): e for e in dump(bpftool, pin_root / "backends-web")}
    assert raw(web[bytes(4)]["value"]) == bytes([10, 0, 1, 10, 0x1F, 0x90, 100, 0])
    assert web[bytes(4)]["formatted"]["value"]["weight"] == 100  # the map carries its types as BTF

    # Each outer slot holds the inner map that bpftool lists under the same kernel ID.
    ids = {name: bpftool("map", "show", "pinned", str(pin_root / name))["id"] for name in ("backends-web", "backends-api")}
    slots = {int.from_bytes(raw(e["key"]), "little"): int.from_bytes(raw(e["value"]), "little")
             for e in dump(bpftool, pin_root / "services")}
    assert slots == {1: ids["backends-web"], 2: ids["backends-api"]}

    assert kmesh_apply("plan", str(MESH), "--detailed-exitcode", root=pin_root).returncode == 0

    # show prints a config that apply accepts and that plans clean.
    shown = kmesh_apply("show", root=pin_root).stdout
    (tmp_path / "shown.yaml").write_text(shown)
    assert "10.0.1.10" in shown and "10.96.0.0/16" in shown
    kmesh_apply("plan", str(tmp_path / "shown.yaml"), "--detailed-exitcode", root=pin_root)

    kmesh_apply("destroy", "--auto-approve", root=pin_root)
    assert not pin_root.exists()


def test_edit_changes_only_what_changed(pin_root: Path, tmp_path: Path):
    kmesh_apply("apply", str(MESH), "--auto-approve", root=pin_root)
    edited = edited_mesh(tmp_path, **{"0: {ip: 10.0.2.20, port: 9090, weight: 1}": "0: {ip: 10.0.2.20, port: 9090, weight: 5}"})
    res = kmesh_apply("plan", str(edited), "--detailed-exitcode", "--json", root=pin_root, check=2)
    data = json.loads(res.stdout)
    assert data["counts"] == {"adopt": 0, "migrate": 0, "rename": 0, "create": 0, "update": 1, "destroy": 0}
    (change,) = data["changes"]
    assert change["name"] == "backends-api"
    assert change["changed"] == [{"key": 0, "old": {"ip": "10.0.2.20", "port": 9090, "weight": 1},
                                  "new": {"ip": "10.0.2.20", "port": 9090, "weight": 5}}]
    assert [s["op"] for s in data["steps"]] == ["write"]

    calls = bpf_syscalls(pin_root, "apply", str(edited), "--auto-approve")
    writes = [c for c in calls if c.startswith(("BPF_MAP_UPDATE", "BPF_MAP_DELETE", "BPF_MAP_CREATE"))]
    assert writes == ["BPF_MAP_UPDATE_BATCH"]
    kmesh_apply("plan", str(edited), "--detailed-exitcode", root=pin_root)


def test_data_path_sees_the_applied_state(pin_root: Path, tmp_path: Path, bpf_scratch: Path):
    from bpfprog import BpfProgram

    kmesh_apply("apply", str(MESH), "--auto-approve", root=pin_root)
    prog = BpfProgram(LOOKUP_PROG, tmp_path, bpf_scratch / "lookup", {"services": pin_root / "services"})
    try:
        assert prog.run() == 100
        edited = edited_mesh(tmp_path, **{"0: {ip: 10.0.1.10, port: 8080, weight: 100}": "0: {ip: 10.0.1.10, port: 8080, weight: 7}"})
        kmesh_apply("apply", str(edited), "--auto-approve", root=pin_root)
        assert prog.run() == 7
        swapped = edited_mesh(tmp_path, **{"1: backends-web\n      2: backends-api": "1: backends-api\n      2: backends-web"})
        kmesh_apply("apply", str(swapped), "--auto-approve", root=pin_root)
        assert prog.run() == 1
    finally:
        prog.close()


BAD_EDITS = {
    "unknown key": ("    max_entries: 8\n", "    max_entries: 8\n    colour: red\n", 58),
    "duplicate key": ("      1: 0\n", "      1: 0\n      1: 5\n", 61),
    "value too large": ("weight: 50}", "weight: 70000}", 26),
    "bad address": ("{ip: 10.0.2.21,", "{ip: 10.0.2.256,", 39),
    "unknown type": ("    value: u32                      # service ID", "    value: u33", 44),
    "undefined inner map": ("      2: backends-api", "      2: backends-nope", 70),
    "incompatible inner map": ("    max_entries: 64                 # hash-like inner maps may differ in size from the template",
                               "    flags: [no_prealloc]\n    max_entries: 64", 71),
    "lpm without no_prealloc": ("    flags: [no_prealloc]            # the kernel", "    # no flags", 42),
    "array index out of range": ("      1: 0\n", "      9: 0\n", 60),
    "too many entries": ("    max_entries: 64                 # hash-like inner maps may differ in size from the template",
                         "    max_entries: 1", 37),
}


def live_dump(bpftool, root: Path) -> dict:
    return {p.name: bpftool("map", "dump", "pinned", str(p)) for p in pinned_maps(root)}


@pytest.mark.parametrize("rule", sorted(BAD_EDITS))
def test_bad_input_changes_nothing(pin_root: Path, tmp_path: Path, bpftool, rule: str):
    kmesh_apply("apply", str(MESH), "--auto-approve", root=pin_root)
    before = live_dump(bpftool, pin_root)
    old, new, line = BAD_EDITS[rule]
    bad = edited_mesh(tmp_path, **{old: new})
    res = kmesh_apply("apply", str(bad), "--auto-approve", root=pin_root, check=1)
    assert f"{bad}:{line}:" in res.stderr, res.stderr
    assert res.stderr.startswith("error:")
    assert live_dump(bpftool, pin_root) == before


@pytest.mark.parametrize("text", ["", "# all commented out\n#inner_maps:\n"])
def test_an_empty_file_is_refused_by_every_command(pin_root: Path, tmp_path: Path, bpftool, text: str):
    kmesh_apply("apply", str(MESH), "--auto-approve", root=pin_root)
    before = live_dump(bpftool, pin_root)
    empty = tmp_path / "mesh.yaml"
    empty.write_text(text)
    for command in (["validate"], ["plan"], ["plan", "--detailed-exitcode"], ["apply", "--auto-approve"]):
        res = kmesh_apply(command[0], str(empty), *command[1:], root=pin_root, check=1)
        assert res.stderr.startswith(f"error: {empty}: the file holds no configuration"), res.stderr
    assert live_dump(bpftool, pin_root) == before
    (tmp_path / "none.yaml").write_text("inner_maps: {}\n")  # spelled out: every map goes
    kmesh_apply("apply", str(tmp_path / "none.yaml"), "--auto-approve", root=pin_root)
    assert not pin_root.exists() or not [p for p in pin_root.iterdir() if not p.name.startswith("_kmesh")]


@pytest.mark.parametrize("example", ["percpu", "multi"])
def test_other_examples_round_trip(pin_root: Path, tmp_path: Path, bpftool, example: str):
    kmesh_apply("apply", str(REPO / "examples" / example), "--auto-approve", root=pin_root)
    kmesh_apply("plan", str(REPO / "examples" / example), "--detailed-exitcode", root=pin_root)
    shown = tmp_path / "shown.yaml"
    shown.write_text(kmesh_apply("show", root=pin_root).stdout)
    kmesh_apply("plan", str(shown), "--detailed-exitcode", root=pin_root)
    if example == "percpu":
        # One value written for every CPU: bpftool sees it on each of them.
        (entry,) = [e for e in dump(bpftool, pin_root / "drop-reasons") if raw(e["key"]) == (3).to_bytes(4, "little")]
        assert {raw(v["value"]) for v in entry["values"]} == {(7).to_bytes(8, "little")}
    kmesh_apply("destroy", "--auto-approve", root=pin_root)
    assert not pin_root.exists()


def test_help_lists_the_commands():
    """Every command, in the Commands section (how fast --help answers is bench/run.py's to measure)."""
    res = run_cli("kmesh-apply", "--help")
    assert res.returncode == 0, res.stderr
    listed = re.findall(r"^  (\w+)  ", res.stdout.split("\nCommands:\n", 1)[1], re.M)
    assert listed == ["validate", "plan", "apply", "destroy", "show", "watch", "schema"]
    schema = json.loads(run_cli("kmesh-apply", "schema").stdout)
    assert schema["$schema"].endswith("2020-12/schema")


def test_apply_without_a_terminal_refuses_to_prompt(pin_root: Path):
    res = kmesh_apply("apply", str(MESH), root=pin_root, check=1)
    assert "refusing to apply without confirmation" in res.stderr and "--auto-approve" in res.stderr
    assert not pin_root.exists() or list(pin_root.iterdir()) == []


def test_saved_plan_for_another_pin_root_is_refused(pin_root: Path, tmp_path: Path):
    saved = tmp_path / "mesh.plan"
    kmesh_apply("plan", str(MESH), "--out", str(saved), root=pin_root)
    res = run_cli("kmesh-apply", "apply", str(saved), "--pin-root", str(pin_root) + "-other")
    assert res.returncode == 1 and "the saved plan is for pin root" in res.stderr
    kmesh_apply("apply", str(saved), root=pin_root)
    kmesh_apply("plan", str(MESH), "--detailed-exitcode", root=pin_root)


def test_more_maps_than_the_soft_fd_limit(pin_root: Path, tmp_path: Path):
    """An apply holds one fd per map it touches; a soft limit below the map count (systemd's 1,024 against
    Kmesh's 5,000 maps) must not make it fail: the CLI takes the hard limit."""
    from test_safety import big_config

    cfg = tmp_path / "big.yaml"
    cfg.write_text(big_config(300, 2, 1))
    exe = Path(sys.executable).parent / "kmesh-apply"
    res = subprocess.run(["bash", "-c", f"ulimit -Sn 128 && exec {exe} apply {cfg} --pin-root {pin_root} --auto-approve"],
                         capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert "301 created" in res.stdout
