"""`kmesh map`: the seed's command lines verbatim, cross-checked with bpftool, and its errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import pinned_maps, run_cli
from kmesh_apply.kernel import possible_cpus


def hex_le(hex_bytes: list[str]) -> int:
    return int.from_bytes(bytes(int(b, 16) for b in hex_bytes), "little")


def kmesh(pin_root: Path, line: str) -> str:
    """Run one `kmesh ...` line (as a user types it) with the test's pin root; must succeed."""
    r = run_cli(*line.split(), "--pin-root", str(pin_root))
    assert r.returncode == 0, r.stderr
    assert r.stderr == ""
    return r.stdout.strip()


def kmesh_fails(pin_root: Path, *argv: str) -> str:
    """Run a `kmesh` command that must fail: exit 1, one line on stderr, no traceback."""
    r = run_cli("kmesh", *argv, "--pin-root", str(pin_root))
    assert r.returncode == 1, (r.stdout, r.stderr)
    assert r.stderr.startswith("error: ") and r.stderr.count("\n") == 1, r.stderr
    assert "Traceback" not in r.stderr and r.stdout == ""
    return r.stderr


@pytest.fixture
def seeded(pin_root):
    """The seed's five lines, verbatim, in sequence; returns (inner ID, outer ID)."""
    inner = kmesh(pin_root, "kmesh map create-inner --type=hash --key-size=4 --value-size=8 --max-entries=1000")
    outer = kmesh(pin_root, f"kmesh map create-outer --type=array --inner-map={inner} --max-entries=100")
    assert kmesh(pin_root, f"kmesh map update-outer {outer} --key=1 --inner-map={inner}") == ""
    assert kmesh(pin_root, f"kmesh map update-inner {inner} --key=100 --value=200") == ""
    assert kmesh(pin_root, f"kmesh map lookup {outer} --outer-key=1 --inner-key=100") == "200"
    return int(inner), int(outer)


def test_seed_lines_agree_with_bpftool(seeded, pin_root, bpftool):
    inner, outer = seeded
    shown = {m["id"]: m for m in bpftool("map", "show")}
    assert (shown[inner]["type"], shown[inner]["bytes_key"], shown[inner]["bytes_value"], shown[inner]["max_entries"]) == ("hash", 4, 8, 1000)
    assert (shown[outer]["type"], shown[outer]["max_entries"]) == ("array_of_maps", 100)
    assert bpftool("map", "show", "pinned", str(pin_root / f"inner-{inner}"))["id"] == inner
    assert bpftool("map", "show", "pinned", str(pin_root / f"outer-{outer}"))["id"] == outer
    slots = {hex_le(e["key"]): hex_le(e["value"]) for e in bpftool("map", "dump", "id", str(outer))}
    assert slots == {1: inner}
    entries = {hex_le(e["key"]): hex_le(e["value"]) for e in bpftool("map", "dump", "id", str(inner))}
    assert entries == {100: 200}


def test_info_list_and_json(seeded, pin_root):
    inner, outer = seeded
    text = kmesh(pin_root, f"kmesh map info {outer}")
    assert "type: array_of_maps" in text and f"1: inner map {inner}" in text and "entries: 1" in text
    assert "memlock:" in text and f"pinned: {pin_root}/outer-{outer}" in text
    info = json.loads(kmesh(pin_root, f"kmesh map info {inner} --json"))
    assert (info["type"], info["key_size"], info["value_size"], info["max_entries"], info["entries"]) == ("hash", 4, 8, 1000, 1)
    assert json.loads(kmesh(pin_root, f"kmesh map info {outer} --json"))["slots"] == {"1": inner}
    rows = json.loads(kmesh(pin_root, "kmesh map list --json"))
    assert {(r["pin"], r["id"]) for r in rows} == {(f"inner-{inner}", inner), (f"outer-{outer}", outer)}
    table = kmesh(pin_root, "kmesh map list").splitlines()
    assert table[0].split() == ["PIN", "ID", "TYPE", "KEY", "VALUE", "MAX", "ENTRIES", "PROGRAMS"] and len(table) == 3
    looked = json.loads(kmesh(pin_root, f"kmesh map lookup {outer} --outer-key=1 --inner-key=100 --json"))
    assert looked == {"outer_map": outer, "inner_map": inner, "value": 200, "value_hex": "c800000000000000"}


def test_hex_keys_values_and_deletes(seeded, pin_root, bpftool):
    inner, outer = seeded
    kmesh(pin_root, f"kmesh map update-inner {inner} --key-hex 0a000001 --value-hex 0102030405060708")
    assert kmesh(pin_root, f"kmesh map lookup {outer} --outer-key=0x1 --inner-key-hex=0a000001") == str(0x0807060504030201)
    kmesh(pin_root, f"kmesh map delete-inner {inner} --key=100")
    kmesh_fails(pin_root, "map", "delete-inner", str(inner), "--key=100")
    kmesh(pin_root, f"kmesh map delete-outer {outer} --key=1")
    assert bpftool("map", "dump", "id", str(outer)) == []
    assert "is empty" in kmesh_fails(pin_root, "map", "lookup", str(outer), "--outer-key=1", "--inner-key=100")


def test_hash_outer_and_percpu_inner(pin_root):
    inner = kmesh(pin_root, "kmesh map create-inner --type=percpu_array --key-size=4 --value-size=4 --max-entries=4")
    outer = kmesh(pin_root, f"kmesh map create-outer --type=hash --inner-map={inner} --max-entries=8 --key-size=8")
    kmesh(pin_root, f"kmesh map update-outer {outer} --key=0x1234567890 --inner-map={inner}")
    kmesh(pin_root, f"kmesh map update-inner {inner} --key=2 --value=7")
    out = json.loads(kmesh(pin_root, f"kmesh map lookup {outer} --outer-key=0x1234567890 --inner-key=2 --json"))
    assert out["value"] == [7] * possible_cpus()


def test_pin_root_from_environment(pin_root):
    r = run_cli("kmesh", "map", "create-inner", "--type=hash", "--key-size=4", "--value-size=4", "--max-entries=4",
                env={"KMESH_PIN_ROOT": str(pin_root)})
    assert r.returncode == 0, r.stderr
    assert [p.name for p in pinned_maps(pin_root)] == [f"inner-{r.stdout.strip()}"]


BAD_INPUT = [
    (["map", "update-inner", "{inner}", "--key=abc", "--value=1"], "--key: 'abc' is not an integer"),
    (["map", "update-inner", "{inner}", "--key=1", "--value=18446744073709551616"], "value 18446744073709551616 does not fit in 8 bytes"),
    (["map", "update-inner", "{inner}", "--key-hex=0102", "--value=1"], "key is 2 bytes, expected 4"),
    (["map", "update-inner", "{inner}", "--key=1", "--key-hex=01000000", "--value=1"], "give exactly one of --key, --key-hex"),
    (["map", "update-inner", "{inner}", "--key=1", "--value-hex=zz"], "--value-hex: 'zz' is not hex bytes"),
    (["map", "create-inner", "--type=hashmap", "--key-size=4", "--value-size=4", "--max-entries=4"], "unknown inner map type 'hashmap'"),
    (["map", "create-inner", "--type=hash", "--key-size=4", "--value-size=4", "--max-entries=4", "--flags=fast"], "unknown map flag 'fast'"),
    (["map", "create-inner", "--type=lpm_trie", "--key-size=8", "--value-size=4", "--max-entries=4"], "lpm_trie needs flag no_prealloc"),
    (["map", "create-inner", "--type=percpu_array", "--key-size=4", "--value-size=4", "--max-entries=4", "--flags=inner_map"],
     "flag inner_map is for array maps only"),
    (["map", "create-outer", "--type=lru_hash", "--inner-map={inner}", "--max-entries=4"], "unknown outer map type 'lru_hash'"),
    (["map", "update-outer", "{inner}", "--key=1", "--inner-map={inner}"], "it is a hash map, not an array_of_maps"),
    (["map", "update-inner", "{outer}", "--key=1", "--value=1"], "it is an outer map"),
    (["map", "update-outer", "{outer}", "--key=1", "--inner-map={other}"], "value_size 4 (template: 8)"),
    (["map", "update-outer", "{outer}", "--key=100", "--inner-map={inner}"], "indexes below max_entries (100)"),
    (["map", "info", "4294967295"], "no map has kernel ID 4294967295"),
    (["map", "info", "x1"], "map ID: 'x1' is not an integer"),
    (["map", "lookup", "{outer}", "--outer-key=1", "--inner-key=5"], "has no key 5"),
    (["map", "update-inner", "{inner}", "--value=1"], "give exactly one of --key, --key-hex"),
    (["map", "create-inner", "--type=hash"], "Missing option"),
]


def test_bad_input_is_one_line_and_exit_1(seeded, pin_root):
    """Every case shares one set of maps (each CLI run costs a process start)."""
    inner, outer = seeded
    other = kmesh(pin_root, "kmesh map create-inner --type=hash --key-size=4 --value-size=4 --max-entries=1000")
    wrong = []
    for argv, message in BAD_INPUT:
        stderr = kmesh_fails(pin_root, *[a.format(inner=inner, outer=outer, other=other) for a in argv])
        if message not in stderr:
            wrong.append((argv, message, stderr))
    assert wrong == []


def test_list_names_a_pinned_program_without_failing(seeded, pin_root):
    from test_kernel_maps import _pin_a_program

    _pin_a_program(str(pin_root / "prog"))
    rows = {r["pin"]: r for r in json.loads(kmesh(pin_root, "kmesh map list --json"))}
    assert len(rows) == 3 and "not a map" in rows["prog"]["type"] and rows["prog"]["id"] is None
    assert any(line.startswith("prog ") for line in kmesh(pin_root, "kmesh map list").splitlines())


def test_list_of_missing_pin_root_fails(pin_root):
    assert "does not exist" in kmesh_fails(pin_root, "map", "list")


def test_not_root(pin_root):
    exe = str(Path(sys.executable).parent / "kmesh")
    r = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", exe, "map", "create-inner",
                        "--type=hash", "--key-size=4", "--value-size=8", "--max-entries=10", "--pin-root", str(pin_root)],
                       capture_output=True, text=True)
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert r.stderr.startswith("error: create map") and "Operation not permitted" in r.stderr and "run as root" in r.stderr


def test_help_is_quick_to_import():
    """--help must not load libbpf or yaml (speed itself is measured in bench/, not asserted)."""
    code = "import sys; from kmesh_apply.cli import map_cli; print(sorted(m for m in ('ctypes', 'yaml', 'jsonschema') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
