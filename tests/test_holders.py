"""Maps that loaded programs hold (issue 11, contract section 8), with real programs: clang-compiled,
loaded by bpftool against the pinned maps, pinned in the test's scratch dir so they stay loaded."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import time
import uuid
from pathlib import Path

import pytest
from bpfprog import BpfProgram
from conftest import bpftool_json, pinned_maps, run_cli
from test_safety import SUM_PROG, cli, sum_config, write

from kmesh_apply.kernel.progs import map_holders
from kmesh_apply.state import REPLACED_PIN

# Sums the inner map `values` directly: the program holds the inner map itself, not a slot.
DIRECT_PROG = r"""
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

struct {
    __uint(type, BPF_MAP_TYPE_HASH);
    __uint(max_entries, 64);
    __type(key, __u32);
    __type(value, __u32);
} values SEC(".maps");

SEC("xdp")
int direct(struct xdp_md *ctx)
{
    __u32 total = 0;
    for (__u32 i = 0; i < 64; i++) {
        __u32 k = i;
        __u32 *v = bpf_map_lookup_elem(&values, &k);
        if (v)
            total += *v;
    }
    return total;
}

char LICENSE[] SEC("license") = "GPL";
"""


class Loaded:
    """A test program loaded against pinned maps and pinned itself; `unload` waits until the kernel has let it go."""

    def __init__(self, source: str, tmp_path: Path, pin: Path, maps: dict[str, Path]):
        self.pin = pin
        self.prog = BpfProgram(source, tmp_path, pin, maps)
        self.id = bpftool_json("prog", "show", "pinned", str(pin))["id"]
        self.loaded = True

    def unload(self) -> None:
        if not self.loaded:
            return
        self.loaded = False
        self.prog.close()
        os.unlink(self.pin)
        for _ in range(500):  # the last reference goes after an RCU grace period
            if not any(p["id"] == self.id for p in bpftool_json("prog", "show") or []):
                return
            time.sleep(0.02)
        raise AssertionError(f"program {self.id} is still loaded after its pin and fd were closed")


@pytest.fixture
def load(tmp_path: Path, bpf_scratch: Path):
    """Loads programs into the test's scratch dir; unloads them all at teardown."""
    loaded: list[Loaded] = []

    def _load(source: str, name: str, maps: dict[str, Path]) -> Loaded:
        workdir = tmp_path / name
        workdir.mkdir()
        prog = Loaded(source, workdir, bpf_scratch / name, maps)
        loaded.append(prog)
        return prog

    yield _load
    for prog in loaded:
        prog.unload()


def bigger_outer(value: int) -> str:
    """sum_config with an outer map of 8 slots instead of 4: a fixed property, so the outer map is replaced."""
    return sum_config(value).replace("max_entries: 4", "max_entries: 8")


def maps_as_bpftool_sees_them(root: Path) -> dict[str, tuple[int, object]]:
    """Pin name -> (map ID, entries), read by bpftool."""
    out = {}
    for pin in pinned_maps(root):
        info = bpftool_json("map", "show", "pinned", str(pin))
        out[pin.name] = (info["id"], bpftool_json("map", "dump", "pinned", str(pin)))
    return out


def plan_json(cfg: Path, root: Path, check: int | None = None) -> dict:
    return json.loads(cli("plan", str(cfg), "--json", root=root, check=check).stdout)


@pytest.fixture
def veth():
    """A veth device of the test's own (XDP on it touches no one else's traffic); deleted at teardown."""
    name = f"km{uuid.uuid4().hex[:10]}"
    subprocess.run(["ip", "link", "add", name, "type", "veth", "peer", "name", name + "p"], check=True)
    try:
        yield name
    finally:
        subprocess.run(["ip", "link", "del", name], check=True)


def test_holders_are_found_with_their_links_and_listed(pin_root: Path, tmp_path: Path, load, veth: str):
    cli("apply", str(write(tmp_path, "a.yaml", sum_config(1))), "--auto-approve", root=pin_root)
    prog = load(SUM_PROG, "sum", {"outer": pin_root / "outer"})
    link = prog.prog.attach_xdp(socket.if_nametoindex(veth))
    try:
        (link_id,) = [ln["id"] for ln in bpftool_json("link", "show") or [] if ln["prog_id"] == prog.id]
        outer = bpftool_json("map", "show", "pinned", str(pin_root / "outer"))["id"]
        inner = bpftool_json("map", "show", "pinned", str(pin_root / "values"))["id"]
        assert outer in bpftool_json("prog", "show", "id", str(prog.id))["map_ids"]
        found = map_holders([outer, inner])
        assert inner not in found  # the program reaches it through the outer map's slot: it does not hold it
        (p,) = found[outer]
        assert (p.id, p.name, p.type, p.attached) == (prog.id, "sum", "xdp", (f"xdp link {link_id} on {veth}",))

        env = {"KMESH_PIN_ROOT": str(pin_root)}
        rows = {r["pin"]: r for r in json.loads(run_cli("kmesh", "map", "list", "--json", env=env).stdout)}
        assert [h["id"] for h in rows["outer"]["programs"]] == [prog.id] and rows["values"]["programs"] == []
        table = run_cli("kmesh", "map", "list", env=env).stdout.splitlines()
        assert table[0].split()[-1] == "PROGRAMS" and f"{prog.id}:sum" in next(r for r in table if r.startswith("outer"))
        info = run_cli("kmesh", "map", "info", str(outer), env=env).stdout
        assert f'held by programs:\n  program {prog.id} "sum" (xdp, xdp link {link_id} on {veth})' in info
        assert "held by programs: none" in run_cli("kmesh", "map", "info", str(inner), env=env).stdout
        usage = {m["name"]: m for m in json.loads(run_cli("kmesh-apply", "show", "--usage", "--json", env=env).stdout)["maps"]}
        assert usage["outer"]["programs"] == [f"{prog.id}:sum"] and usage["values"]["programs"] == []
        text = run_cli("kmesh-apply", "show", "--usage", env=env).stdout.splitlines()
        assert text[0].split()[-1] == "programs" and next(r for r in text if r.startswith("outer")).endswith(f"{prog.id}:sum")
    finally:
        os.close(link)



def test_replacing_a_held_map_is_named_refused_then_drift_until_unloaded(pin_root: Path, tmp_path: Path, load):
    one, bigger = write(tmp_path, "one.yaml", sum_config(1)), write(tmp_path, "bigger.yaml", bigger_outer(1))
    cli("apply", str(one), "--auto-approve", root=pin_root)
    saved = tmp_path / "bigger.plan"  # made before the program is loaded: apply checks again under the lock
    cli("plan", str(bigger), "--out", str(saved), root=pin_root)
    assert all(not c["holders"] for c in json.loads(saved.read_text())["changes"])
    prog = load(SUM_PROG, "sum", {"outer": pin_root / "outer"})

    # The plan names the holder, in text and JSON.
    text = cli("plan", str(bigger), root=pin_root).stdout
    assert f'held by program {prog.id} "sum" (xdp)' in text and "--allow-replace-in-use" in text
    change = next(c for c in plan_json(bigger, pin_root)["changes"] if c["name"] == "outer")
    assert change["action"] == "replace" and [h["id"] for h in change["holders"]] == [prog.id]

    # apply refuses (from the config and from a saved plan) and changes nothing.
    before = maps_as_bpftool_sees_them(pin_root)
    for args in ([str(bigger), "--auto-approve"], [str(saved)]):
        res = cli("apply", *args, root=pin_root, check=1)
        assert f"'outer' (map ID {before['outer'][0]}) is held by program {prog.id} \"sum\"" in res.stderr
        assert "--allow-replace-in-use" in res.stderr and "Nothing was changed" in res.stderr
        assert maps_as_bpftool_sees_them(pin_root) == before

    # Forced: the program keeps the old map, and plan reports drift naming it.
    cli("apply", str(saved), "--allow-replace-in-use", root=pin_root)
    assert bpftool_json("map", "show", "pinned", str(pin_root / "outer"))["id"] != before["outer"][0]
    res = cli("plan", str(bigger), "--detailed-exitcode", root=pin_root, check=2)
    assert f"the replaced map 'outer' (ID {before['outer'][0]}) is still held by program {prog.id} \"sum\"" in res.stdout
    assert "No changes to apply" in res.stdout
    held = plan_json(bigger, pin_root)["held_replaced"]
    assert [(h["name"], h["id"], [p["id"] for p in h["programs"]]) for h in held] == [("outer", before["outer"][0], [prog.id])]
    cli("apply", str(bigger), "--auto-approve", root=pin_root)  # nothing to apply: drift stays
    cli("plan", str(bigger), "--detailed-exitcode", root=pin_root, check=2)

    # Released: clean again, and the next apply drops the record.
    prog.unload()
    cli("plan", str(bigger), "--detailed-exitcode", root=pin_root, check=0)
    assert (pin_root / REPLACED_PIN).exists()
    cli("apply", str(bigger), "--auto-approve", root=pin_root)
    assert not (pin_root / REPLACED_PIN).exists()
    cli("plan", str(bigger), "--detailed-exitcode", root=pin_root, check=0)


def test_destroying_a_held_map_is_refused_then_drift_until_unloaded(pin_root: Path, tmp_path: Path, load):
    """Issue 21: removing a map a program holds from the config (or `destroy`) is refused like replacing it, and
    once forced it stays drift naming the program, also after the map is declared again, until it lets go."""
    one = write(tmp_path, "one.yaml", sum_config(1))
    without = write(tmp_path, "without.yaml", sum_config(1).replace("  values:", "  others:").replace(": values", ": others"))
    cli("apply", str(one), "--auto-approve", root=pin_root)
    prog = load(DIRECT_PROG, "direct", {"values": pin_root / "values"})
    values_id = bpftool_json("map", "show", "pinned", str(pin_root / "values"))["id"]

    text = cli("plan", str(without), root=pin_root).stdout
    assert f'held by program {prog.id} "direct"' in text and "apply refuses to destroy it" in text
    change = next(c for c in plan_json(without, pin_root)["changes"] if c["name"] == "values")
    assert change["action"] == "destroy" and [h["id"] for h in change["holders"]] == [prog.id]

    before = maps_as_bpftool_sees_them(pin_root)
    for args in (["apply", str(without), "--auto-approve"], ["destroy", "--auto-approve"]):
        res = cli(*args, root=pin_root, check=1)
        assert f"'values' (map ID {values_id}) is held by program {prog.id} \"direct\"" in res.stderr, res.stderr
        assert "the plan would destroy it" in res.stderr and "Nothing was changed" in res.stderr
        assert maps_as_bpftool_sees_them(pin_root) == before

    cli("apply", str(without), "--auto-approve", "--allow-replace-in-use", root=pin_root)
    assert not (pin_root / "values").exists()
    res = cli("plan", str(without), "--detailed-exitcode", root=pin_root, check=2)
    assert f"the destroyed map 'values' (ID {values_id}) is still held by program {prog.id} \"direct\"" in res.stdout
    held = plan_json(without, pin_root)["held_replaced"]
    assert [(h["name"], h["id"], h["destroyed"]) for h in held] == [("values", values_id, True)]
    cli("apply", str(one), "--auto-approve", root=pin_root)  # declared again: a new map, the program is still on the old
    assert bpftool_json("map", "show", "pinned", str(pin_root / "values"))["id"] != values_id
    res = cli("plan", str(one), "--detailed-exitcode", root=pin_root, check=2)
    assert f"map 'values' (ID {values_id}) is still held by program {prog.id}" in res.stdout

    cli("destroy", "--auto-approve", "--allow-replace-in-use", root=pin_root)
    held = plan_json(one, pin_root)["held_replaced"]
    assert [(h["name"], h["id"], h["destroyed"]) for h in held] == [("values", values_id, True)]
    prog.unload()
    cli("plan", str(one), "--detailed-exitcode", root=pin_root, check=2)  # only the maps to create now
    cli("apply", str(one), "--auto-approve", root=pin_root)
    cli("plan", str(one), "--detailed-exitcode", root=pin_root, check=0)
    assert not (pin_root / REPLACED_PIN).exists()


def test_a_same_named_map_of_another_pin_root_is_not_drift(pin_root: Path, bpf_scratch: Path, tmp_path: Path, load):
    other = bpf_scratch / "other-root"
    one, bigger = write(tmp_path, "one.yaml", sum_config(1)), write(tmp_path, "bigger.yaml", bigger_outer(1))
    for root in (pin_root, other):
        cli("apply", str(one), "--auto-approve", root=root)
    prog = load(SUM_PROG, "sum", {"outer": other / "outer"})  # holds the other root's 'outer'
    assert "held by" not in cli("plan", str(bigger), root=pin_root).stdout
    cli("apply", str(bigger), "--auto-approve", root=pin_root)  # not refused: nothing holds this root's 'outer'
    cli("plan", str(bigger), "--detailed-exitcode", root=pin_root, check=0)
    # Replacing the other root's map by force is drift there, and only there.
    cli("apply", str(bigger), "--auto-approve", "--allow-replace-in-use", root=other)
    assert str(prog.id) in cli("plan", str(bigger), "--detailed-exitcode", root=other, check=2).stdout
    cli("plan", str(bigger), "--detailed-exitcode", root=pin_root, check=0)


def test_an_inner_map_a_program_holds_directly_is_written_in_place(pin_root: Path, tmp_path: Path, load):
    one, three = write(tmp_path, "one.yaml", sum_config(1)), write(tmp_path, "three.yaml", sum_config(3))
    cli("apply", str(one), "--auto-approve", root=pin_root)
    prog = load(DIRECT_PROG, "direct", {"values": pin_root / "values"})
    assert prog.prog.run() == 64
    values_id = bpftool_json("map", "show", "pinned", str(pin_root / "values"))["id"]

    text = cli("plan", str(three), root=pin_root).stdout
    assert "written in place, not swapped" in text and f'program {prog.id} "direct"' in text
    assert "updated by swap" not in text
    change = next(c for c in plan_json(three, pin_root)["changes"] if c["name"] == "values")
    assert change["swap"] is False and [h["id"] for h in change["holders"]] == [prog.id]

    cli("apply", str(three), "--auto-approve", root=pin_root)  # no refusal: nothing is replaced
    assert bpftool_json("map", "show", "pinned", str(pin_root / "values"))["id"] == values_id
    assert prog.prog.run() == 3 * 64  # the program sees the new entries: it was not left on an old map
    cli("plan", str(three), "--detailed-exitcode", root=pin_root, check=0)

    # A fixed-property change cannot be written in place: replacing the held inner map is refused.
    bigger = write(tmp_path, "bigger.yaml", sum_config(3).replace("max_entries: 64", "max_entries: 128"))
    res = cli("apply", str(bigger), "--auto-approve", root=pin_root, check=1)
    assert f"'values' (map ID {values_id}) is held by program {prog.id}" in res.stderr
    assert bpftool_json("map", "show", "pinned", str(pin_root / "values"))["id"] == values_id


def test_the_record_of_replaced_maps_has_a_reserved_name(tmp_path: Path):
    cfg = write(tmp_path, "c.yaml", sum_config(1).replace("  values:", f"  {REPLACED_PIN}:").replace(": values", f": {REPLACED_PIN}"))
    res = run_cli("kmesh-apply", "validate", str(cfg))
    assert res.returncode == 1 and f"the name '{REPLACED_PIN}' is reserved" in res.stderr, res.stderr
