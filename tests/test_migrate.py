"""Migrations against the real kernel (contract section 10): maps whose layout, name or fixed
properties change keep their live entries. Maps are pinned by someone else with bpftool (no BTF,
as Kmesh declares its maps) and read back with `bpftool -j`, the independent client."""

from __future__ import annotations

import json
import struct
import subprocess
from pathlib import Path

import pytest

from conftest import run_cli
from dataplane import bpftool_update
from test_holders import Loaded
from kmesh_apply import api
from kmesh_apply.config import load_config
from kmesh_apply.plan.model import MigrateEntries, Step

SVC_OLD = "{struct: [{a: u32}, {b: u32}]}"
SVC_NEW = "{struct: [{a: u32}, {b: u16}, {c: u8}]}"


def pin_foreign(root: Path, name: str, key: int, value: int, entries: dict[bytes, bytes], max_entries: int = 64,
                type: str = "hash") -> None:
    """A map someone else pinned (bpftool): sizes only, no BTF."""
    root.mkdir(exist_ok=True)
    flags = ["flags", "1"] if type == "hash" else []
    subprocess.run(["bpftool", "map", "create", str(root / name), "type", type, "key", str(key), "value", str(value),
                    "entries", str(max_entries), "name", name[:15], *flags], check=True, capture_output=True)
    for k, v in entries.items():
        bpftool_update(root / name, k, v)


def dump(bpftool, pin: Path) -> dict[bytes, bytes]:
    """The entries of a pinned map as bpftool reads them, as raw bytes."""
    return {bytes(int(b, 16) for b in e["key"]): bytes(int(b, 16) for b in e["value"])
            for e in bpftool("map", "dump", "pinned", str(pin)) or []}


def dump_formatted(bpftool, pin: Path) -> dict:
    """The entries of a map that carries BTF, as bpftool formats them by it: key (as JSON text) -> value."""
    return {json.dumps(e["formatted"]["key"], sort_keys=True): e["formatted"]["value"]
            for e in bpftool("map", "dump", "pinned", str(pin)) or []}


def map_id(bpftool, pin: Path) -> int:
    return bpftool("map", "show", "pinned", str(pin))["id"]


def svc(a: int, b: int) -> bytes:
    return struct.pack("<II", a, b)


def write_config(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "mesh.yaml"
    path.write_text(text)
    return path


def svc_config(tmp_path: Path, extra: str = "", value: str = SVC_NEW, max_entries: int = 64,
               manage: str = "none") -> Path:
    return write_config(tmp_path, f"""
maps:
  svc:
    type: hash
    key: u32
    value: {value}
    max_entries: {max_entries}
    flags: [no_prealloc]
    manage_entries: {manage}
    adopt: true
    migrate:
      from: old_svc
      key: u32
      value: {SVC_OLD}
      defaults: {{c: 7}}
{extra}""")


def test_a_foreign_map_without_btf_is_adopted_renamed_and_converted(pin_root, tmp_path, bpftool):
    entries = {struct.pack("<I", i): svc(i * 10, i) for i in range(1, 4)}
    pin_foreign(pin_root, "old_svc", 4, 8, entries)
    old_id = map_id(bpftool, pin_root / "old_svc")
    cfg = svc_config(tmp_path)
    planned = run_cli("kmesh-apply", "plan", str(cfg), "--pin-root", str(pin_root), "--detailed-exitcode")
    assert planned.returncode == 2, planned.stderr
    assert ('~ map "svc" will be migrated: 3 entries from "old_svc" (value: field b retyped (u32 -> u16), '
            'field c added (= 7))') in planned.stdout
    assert "'old_svc' was pinned by someone else: adopted (adopt: true), then moved" in planned.stdout
    assert "Per map:\n  migrated   svc (3 entries, from old_svc)\n" in planned.stdout
    assert "Plan: 1 to migrate, 0 to create, 0 to update, 0 to destroy." in planned.stdout
    as_json = json.loads(run_cli("kmesh-apply", "plan", str(cfg), "--pin-root", str(pin_root), "--json").stdout)
    (m,) = as_json["migrations"]
    assert (m["map"], m["source"], m["entries"], m["renamed_only"]) == ("svc", "old_svc", 3, False)
    assert [c["kind"] for c in m["diffs"][0]["changes"]] == ["retyped", "added"]

    applied = run_cli("kmesh-apply", "apply", str(cfg), "--pin-root", str(pin_root), "--auto-approve")
    assert applied.returncode == 0, applied.stderr
    assert "Maps: 1 migrated, 0 created" in applied.stdout and "Migrated 'svc': 3 entries" in applied.stdout
    assert not (pin_root / "old_svc").exists()
    assert map_id(bpftool, pin_root / "svc") != old_id
    got = dump_formatted(bpftool, pin_root / "svc")
    assert got == {str(i): {"a": i * 10, "b": i, "c": 7} for i in range(1, 4)}
    again = run_cli("kmesh-apply", "plan", str(cfg), "--pin-root", str(pin_root), "--detailed-exitcode")
    assert again.returncode == 0 and "No changes" in again.stdout, again.stdout + again.stderr


def test_entries_that_would_lose_data_are_refused_by_name_and_nothing_changes(pin_root, tmp_path, bpftool):
    entries = {struct.pack("<I", 1): svc(10, 1), struct.pack("<I", 2): svc(20, 70000)}
    pin_foreign(pin_root, "old_svc", 4, 8, entries)
    cfg = svc_config(tmp_path)
    out = run_cli("kmesh-apply", "apply", str(cfg), "--pin-root", str(pin_root), "--auto-approve")
    assert out.returncode == 1
    assert ("map 'svc': cannot migrate its entries: value field b: values that do not fit u16 (0..65535) in 1 entry: "
            "key 2 (70000)") in out.stderr
    assert "Traceback" not in out.stderr
    assert dump(bpftool, pin_root / "old_svc") == entries and not (pin_root / "svc").exists()


def test_a_rename_alone_keeps_the_map_itself(pin_root, tmp_path, bpftool):
    entries = {struct.pack("<I", 1): svc(10, 1)}
    pin_foreign(pin_root, "old_svc", 4, 8, entries)
    old_id = map_id(bpftool, pin_root / "old_svc")
    cfg = write_config(tmp_path, """
maps:
  svc: {type: hash, key_size: 4, value_size: 8, max_entries: 64, flags: [no_prealloc], manage_entries: none,
        adopt: true, migrate: {from: old_svc}}
""")
    planned = run_cli("kmesh-apply", "plan", str(cfg), "--pin-root", str(pin_root))
    assert '~ map "svc" will be renamed from "old_svc" (the same map, its 1 entry kept)' in planned.stdout, planned.stdout
    assert "Plan: 1 to rename, 0 to create, 0 to update, 0 to destroy." in planned.stdout
    assert run_cli("kmesh-apply", "apply", str(cfg), "--pin-root", str(pin_root), "--auto-approve").returncode == 0
    assert map_id(bpftool, pin_root / "svc") == old_id and dump(bpftool, pin_root / "svc") == entries
    assert run_cli("kmesh-apply", "plan", str(cfg), "--pin-root", str(pin_root), "--detailed-exitcode").returncode == 0


def test_the_second_pass_carries_what_was_written_during_the_copy(pin_root, tmp_path, bpftool):
    """Entries added, changed and deleted in the old map after the first pass reach the new map."""
    entries = {struct.pack("<I", i): svc(i, i) for i in range(1, 6)}
    pin_foreign(pin_root, "old_svc", 4, 8, entries)
    config = load_config([svc_config(tmp_path)])

    def meanwhile(step: Step) -> None:
        if isinstance(step, MigrateEntries):  # a data plane writing after the first pass
            old = pin_root / "svc"  # moved here before the copy
            bpftool_update(old, struct.pack("<I", 9), svc(90, 9))
            bpftool_update(old, struct.pack("<I", 2), svc(22, 22))
            subprocess.run(["bpftool", "map", "delete", "pinned", str(old), "key", "3", "0", "0", "0"], check=True)

    _, report = api.converge(config, str(pin_root), on_step=meanwhile)
    (m,) = report.migrations
    assert (m.map, m.entries, m.caught_up) == ("svc", 5, 3) and 0 <= m.window_seconds < 60
    got = dump_formatted(bpftool, pin_root / "svc")
    assert got == {"1": {"a": 1, "b": 1, "c": 7}, "2": {"a": 22, "b": 22, "c": 7}, "4": {"a": 4, "b": 4, "c": 7},
                   "5": {"a": 5, "b": 5, "c": 7}, "9": {"a": 90, "b": 9, "c": 7}}


def test_listed_entries_are_written_over_the_converted_ones(pin_root, tmp_path, bpftool):
    pin_foreign(pin_root, "old_svc", 4, 8, {struct.pack("<I", i): svc(i, i) for i in (1, 2)})
    cfg = svc_config(tmp_path, manage="listed", extra="    entries: {2: {a: 200, b: 2, c: 0}, 5: {a: 5, b: 5, c: 5}}\n")
    assert run_cli("kmesh-apply", "apply", str(cfg), "--pin-root", str(pin_root), "--auto-approve").returncode == 0
    assert dump_formatted(bpftool, pin_root / "svc") == {
        "1": {"a": 1, "b": 1, "c": 7}, "2": {"a": 200, "b": 2, "c": 0}, "5": {"a": 5, "b": 5, "c": 5}}
    assert run_cli("kmesh-apply", "plan", str(cfg), "--pin-root", str(pin_root), "--detailed-exitcode").returncode == 0


def test_a_map_that_grows_in_place_of_its_own_name_keeps_its_entries(pin_root, tmp_path, bpftool):
    """No rename, no layout change: max_entries alone is a migration of a map whose entries are not all given."""
    cfg_small = write_config(tmp_path, """
maps:
  counters: {type: hash, key: u32, value: u64, max_entries: 4, flags: [no_prealloc], manage_entries: none}
""")
    assert run_cli("kmesh-apply", "apply", str(cfg_small), "--pin-root", str(pin_root), "--auto-approve").returncode == 0
    for i in range(4):
        bpftool_update(pin_root / "counters", struct.pack("<I", i), struct.pack("<Q", i * 100))
    cfg_big = write_config(tmp_path, cfg_small.read_text().replace("max_entries: 4", "max_entries: 4096"))
    planned = run_cli("kmesh-apply", "plan", str(cfg_big), "--pin-root", str(pin_root))
    assert '~ map "counters" will be migrated: 4 entries\n      # max_entries 4 -> 4096' in planned.stdout, planned.stdout
    saved = tmp_path / "plan.json"
    assert run_cli("kmesh-apply", "plan", str(cfg_big), "--pin-root", str(pin_root), "--out", str(saved)).returncode in (0, 2)
    applied = run_cli("kmesh-apply", "apply", str(saved), "--auto-approve")
    assert applied.returncode == 0, applied.stderr
    assert bpftool("map", "show", "pinned", str(pin_root / "counters"))["max_entries"] == 4096
    assert dump_formatted(bpftool, pin_root / "counters") == {str(i): i * 100 for i in range(4)}


def test_an_inner_map_is_migrated_and_its_slots_switched_in_one_batch(pin_root, tmp_path, bpftool):
    layout = """
inner_maps:
  backends:
    type: hash
    key: u32
    value: {struct: [{ip: ipv4}, {port: be16}%s]}
    max_entries: 64
    flags: [no_prealloc]
    manage_entries: none
%s
outer_maps:
  services: {type: hash_of_maps, key: u32, max_entries: 4, inner_map: backends, manage_entries: none}
"""
    cfg = write_config(tmp_path, layout % ("", ""))
    assert run_cli("kmesh-apply", "apply", str(cfg), "--pin-root", str(pin_root), "--auto-approve").returncode == 0
    bpftool_update(pin_root / "backends", struct.pack("<I", 1), bytes([10, 0, 0, 1, 0x1f, 0x90, 0, 0]))
    for slot in (0, 2):  # slots someone else set (the outer map's entries are not the config's either)
        subprocess.run(["bpftool", "map", "update", "pinned", str(pin_root / "services"), "key", str(slot), "0", "0",
                        "0", "value", "pinned", str(pin_root / "backends")], check=True)
    old_id = map_id(bpftool, pin_root / "backends")
    wider = write_config(tmp_path, layout % (", {weight: u16}", "    migrate: {defaults: {weight: 1}}"))
    planned = run_cli("kmesh-apply", "plan", str(wider), "--pin-root", str(pin_root))
    # the new field takes the old padding: the value stays 8 bytes, so the outer map's template still fits
    assert '~ inner map "backends" will be migrated: 1 entry (value: field weight added (= 1))\n\n' in planned.stdout, \
        planned.stdout + planned.stderr
    applied = run_cli("kmesh-apply", "apply", str(wider), "--pin-root", str(pin_root), "--auto-approve")
    assert applied.returncode == 0, applied.stderr + applied.stdout
    new_id = map_id(bpftool, pin_root / "backends")
    assert new_id != old_id
    slots = bpftool("map", "dump", "pinned", str(pin_root / "services"))
    assert sorted(e["key"][0] for e in slots) == ["0x00", "0x02"]
    assert all(int.from_bytes(bytes(int(b, 16) for b in e["value"]), "little") == new_id for e in slots), slots
    assert dump_formatted(bpftool, pin_root / "backends") == {"1": {"ip": [10, 0, 0, 1], "port": 0x901f, "weight": 1}}


def test_a_program_holding_the_old_map_is_named_and_needs_allow_replace_in_use(pin_root, tmp_path, bpftool,
                                                                               bpf_scratch):
    pin_foreign(pin_root, "old_svc", 4, 8, {struct.pack("<I", 1): svc(1, 1)})
    (tmp_path / "prog").mkdir()
    prog = Loaded("""
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
struct { __uint(type, BPF_MAP_TYPE_HASH); __uint(key_size, 4); __uint(value_size, 8); __uint(max_entries, 64);
         __uint(map_flags, BPF_F_NO_PREALLOC); } old_svc SEC(".maps");
SEC("xdp") int reader(struct xdp_md *ctx) { __u32 k = 1; return bpf_map_lookup_elem(&old_svc, &k) ? XDP_PASS : XDP_DROP; }
char _license[] SEC("license") = "GPL";
""", tmp_path / "prog", bpf_scratch / "reader", {"old_svc": pin_root / "old_svc"})
    try:
        cfg = svc_config(tmp_path)
        planned = run_cli("kmesh-apply", "plan", str(cfg), "--pin-root", str(pin_root))
        assert '# held by program' in planned.stdout and '"reader" (xdp)' in planned.stdout, planned.stdout
        refused = run_cli("kmesh-apply", "apply", str(cfg), "--pin-root", str(pin_root), "--auto-approve")
        assert refused.returncode == 1 and "'svc' (map ID" in refused.stderr and "--allow-replace-in-use" in refused.stderr
        assert (pin_root / "old_svc").exists() and not (pin_root / "svc").exists()
        allowed = run_cli("kmesh-apply", "apply", str(cfg), "--pin-root", str(pin_root), "--auto-approve",
                          "--allow-replace-in-use")
        assert allowed.returncode == 0, allowed.stderr
        drift = run_cli("kmesh-apply", "plan", str(cfg), "--pin-root", str(pin_root), "--detailed-exitcode")
        assert drift.returncode == 2 and "the replaced map 'svc'" in drift.stdout, drift.stdout
        assert prog.prog.run() == 2  # XDP_PASS: the program still reads the old map, until it is reloaded
    finally:
        prog.unload()
    assert run_cli("kmesh-apply", "plan", str(cfg), "--pin-root", str(pin_root), "--detailed-exitcode").returncode == 0


def test_a_per_cpu_map_converts_every_cpus_value(pin_root, tmp_path, bpftool):
    cfg = write_config(tmp_path, """
maps:
  stats: {type: percpu_hash, key: u32, value: u32, max_entries: 16, manage_entries: none}
""")
    assert run_cli("kmesh-apply", "apply", str(cfg), "--pin-root", str(pin_root), "--auto-approve").returncode == 0
    from kmesh_apply.kernel.maps import Map, possible_cpus

    n = possible_cpus()
    with Map.open_pinned(str(pin_root / "stats")) as m:
        m.update(struct.pack("<I", 1), b"".join(struct.pack("<II", 100 + c, 0) for c in range(n)))
    wide = write_config(tmp_path, cfg.read_text().replace("value: u32", "value: u64"))
    assert run_cli("kmesh-apply", "apply", str(wide), "--pin-root", str(pin_root), "--auto-approve").returncode == 0
    (entry,) = bpftool("map", "dump", "pinned", str(pin_root / "stats"))
    assert [v["value"] for v in entry["formatted"]["values"]] == [100 + c for c in range(n)]


@pytest.mark.parametrize("bad, message", [
    ("      renamed: {zz: b}\n", "migrate.renamed: neither the new key nor the new value has a field zz"),
    ("      btf: [missing.o]\n", "migrate.btf: "),
])
def test_a_bad_migrate_block_is_one_clear_error(tmp_path, bad, message):
    cfg = svc_config(tmp_path, extra=bad)
    out = run_cli("kmesh-apply", "validate", str(cfg))
    assert out.returncode == 1 and message in out.stderr and "mesh.yaml:" in out.stderr, out.stderr


def test_the_synchroniser_migrates_and_its_cache_stays_true(pin_root, tmp_path):
    """watch and the Synchroniser apply through a cache of the live state: a migration's maps are read
    back into it, so a drift check right after finds nothing to correct."""
    from kmesh_apply import Synchroniser

    pin_foreign(pin_root, "old_svc", 4, 8, {struct.pack("<I", 1): svc(5, 6)})
    with Synchroniser(str(pin_root)) as sync:
        report = sync.apply(load_config([svc_config(tmp_path)]))
        assert [(m.map, m.entries) for m in report.migrations] == [("svc", 1)]
        assert sync.verify() == []
        assert sync.apply(load_config([svc_config(tmp_path)])).steps == []
