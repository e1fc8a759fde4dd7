"""The Synchroniser on the real kernel: edits reach a BPF reader, the cache stays equal to the
kernel without re-reading it, drift is found and corrected, and the pin root stays locked."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml
from conftest import run_cli
from test_safety import SUM_PROG, sum_config
from test_watch import poke_counter

from kmesh_apply import ConfigError, Synchroniser, load_config
from kmesh_apply.pinroot.reader import read_live
from kmesh_apply.state import LiveState

MESH = Path(__file__).resolve().parent.parent / "examples" / "mesh"

def same(cache: LiveState, kernel: LiveState) -> None:
    """The cache holds exactly what a full read finds (IDs, types, entries, slots)."""
    assert cache.maps.keys() == kernel.maps.keys()
    for name, live in kernel.maps.items():
        mine = cache.maps[name]
        assert (mine.id, mine.type, mine.flags, mine.max_entries, mine.key_type, mine.value_type) == \
               (live.id, live.type, live.flags, live.max_entries, live.key_type, live.value_type), name
        assert dict(mine.entries) == dict(live.entries) and mine.slots == live.slots, name
    assert not kernel.staged and not cache.staged


def test_a_bpf_reader_sees_each_edit(pin_root: Path, tmp_path: Path, bpf_scratch: Path):
    from bpfprog import BpfProgram

    config = load_config(inline=sum_config(1))
    extra = load_config(inline=sum_config(1).replace("outer_maps:", """  other:
    type: hash
    key: u32
    value: u32
    max_entries: 64
    entries: {0: 1000}
outer_maps:"""))
    with Synchroniser(str(pin_root)) as sync:
        sync.apply(config)
        prog = BpfProgram(SUM_PROG, tmp_path, bpf_scratch / "sum", {"outer": pin_root / "outer"})
        try:
            assert prog.run() == 64
            sync.put("values", {5: 11})  # one entry: written in place
            sync.flush()
            assert prog.run() == 64 - 1 + 11
            sync.put("values", {i: 2 for i in range(64)})  # many entries: built aside, slot switched
            sync.flush()
            assert prog.run() == 128
            sync.delete("values", [0, 1])
            sync.flush()
            assert prog.run() == 124
            sync.apply(extra)  # a new inner map, then the slot pointed at it
            sync.put("outer", {0: "other"})
            sync.flush()
            assert prog.run() == 1000
            same(sync.cache, read_live(str(pin_root)))
        finally:
            prog.close()


def test_cache_follows_every_kind_of_step_without_reading(pin_root: Path, monkeypatch: pytest.MonkeyPatch):
    with Synchroniser(str(pin_root)) as sync:
        sync.apply(load_config([MESH]))
        reads = []
        monkeypatch.setattr(sync._kernel, "read", lambda: reads.append(1) or read_live(str(pin_root)))  # type: ignore[attr-defined]
        sync.put("backends-web", {3: {"ip": "10.0.1.13", "port": 8080, "weight": 10}})
        sync.flush()
        sync.put("backends-api", {5: {"ip": "10.0.2.25", "port": 9090, "weight": 2},
                                  6: {"ip": "10.0.2.26", "port": 9090, "weight": 2}})  # a swap
        sync.put("services", {9: "backends-api"})
        sync.delete("services", [1])
        sync.put("counters", {3: 7})
        sync.delete("counters", [3])  # an array index is zeroed
        sync.put("routes", {"10.97.0.0/16": 3})
        sync.flush()
        doc = yaml.safe_load((MESH / "mesh.yaml").read_text())
        doc["inner_maps"]["backends-api"]["max_entries"] = 128
        sync.apply(load_config(inline=doc))  # backends-api replaced, every map back to the file's entries
        del doc["inner_maps"]["routes"], doc["inner_maps"]["counters"]
        sync.apply(load_config(inline=doc))  # two maps removed
        assert reads == [], "the cache was re-read instead of replayed"
        same(sync.cache, read_live(str(pin_root)))
        assert set(sync.status()) == {"backends-web", "backends-api", "services"}
        assert {s.state for s in sync.status().values()} == {"applied"}
        assert not (pin_root / "_kmesh_staging").exists()


def test_verify_finds_and_corrects_an_out_of_band_update(pin_root: Path, bpftool):
    with Synchroniser(str(pin_root)) as sync:
        sync.apply(load_config([MESH]))
        assert sync.verify() == []
        poke_counter(pin_root, 1, 9)
        drift = sync.verify()
        assert [(c.name, c.action) for c in drift] == [("counters", "update")]
        assert sync.verify() == []
        dump = bpftool("map", "dump", "pinned", str(pin_root / "counters"))
        assert all(e["formatted"]["value"] == 0 for e in dump if e["formatted"]["key"] == 1)


def test_usage_comes_from_the_cache_with_the_kernels_memlock(pin_root: Path, bpftool):
    with Synchroniser(str(pin_root)) as sync:
        sync.apply(load_config([MESH]))
        sync.put("routes", {f"10.{i}.0.0/16": i for i in range(100, 160)})  # no_prealloc: memlock grows
        sync.flush()
        usage = {u.name: u for u in sync.usage()}
        shown = {m["id"]: m for m in bpftool("map", "show")}  # by ID: other pin roots have maps of the same names
        assert usage["routes"].entries == 62 and usage["routes"].memlock_bytes == shown[usage["routes"].id]["bytes_memlock"]
        assert usage["services"].entries == 2 and usage["services"].kind == "outer"
        health = sync.health()
        assert health.ok and health.last_success is not None


def test_bad_input_names_the_map_and_entry_and_changes_nothing(pin_root: Path):
    with Synchroniser(str(pin_root)) as sync:
        sync.apply(load_config([MESH]))
        before = sync.status()
        with pytest.raises(ConfigError, match=r"map 'backends-web' entry 4: value: .*port"):
            sync.put("backends-web", {4: {"ip": "10.0.1.14", "port": "http", "weight": 1}})
        with pytest.raises(ConfigError, match="map 'services' entry 3: .*'nope'"):
            sync.put("services", {3: "nope"})
        with pytest.raises(ConfigError, match="map 'services' entry 1: inner map 'routes' is incompatible"):
            sync.put("services", {1: "routes"})
        with pytest.raises(ConfigError, match="map 'missing'"):
            sync.delete("missing", [1])
        assert sync.flush().steps == [] and sync.status() == before


def test_put_before_apply_starts_from_the_live_maps(pin_root: Path):
    assert run_cli("kmesh-apply", "apply", str(MESH), "--auto-approve", "--pin-root", str(pin_root)).returncode == 0
    with Synchroniser(str(pin_root)) as sync:
        sync.put("counters", {2: 5})
        report = sync.flush()
        assert report.entries_written == 1 and len(read_live(str(pin_root)).maps) == 5


def test_a_cli_apply_is_refused_while_the_synchroniser_runs(pin_root: Path):
    with Synchroniser(str(pin_root)):
        res = run_cli("kmesh-apply", "apply", str(MESH), "--auto-approve", "--pin-root", str(pin_root),
                      "--lock-timeout", "0.2")
        assert res.returncode == 1 and f"locked by process {os.getpid()}" in res.stderr
        assert "watch" in res.stderr
    assert run_cli("kmesh-apply", "apply", str(MESH), "--auto-approve", "--pin-root", str(pin_root)).returncode == 0
