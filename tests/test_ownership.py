"""A shared pin root against the real kernel (contract section 9, issue 22): maps pinned by someone
else (of every type the kernel has) are never changed or destroyed, an adopted map and maps in each `manage_entries` mode go through
plan, apply, show, destroy, watch and drift checks with nothing foreign touched (kernel IDs and
entries compared with bpftool, the independent client) and no false drift from others' entries."""

from __future__ import annotations

import json
import os
import struct
import subprocess
from pathlib import Path

import pytest
import yaml
from conftest import bpftool_json, pinned_maps, run_cli
from foreign_maps import FOREIGN, QUEUE_VALUES, drain, pin_foreign_maps, snapshot
from test_safety import cli
from test_watch import Watch

from kmesh_apply import api
from kmesh_apply.config import load_config
from kmesh_apply.ctype import Raw, parse_type
from kmesh_apply.errors import ConfigError
from kmesh_apply.kernel.maps import Map
from kmesh_apply.pinroot import records
from kmesh_apply.state import KEY_TYPES_DIR, LAYOUTS_DIR, OWNED_PIN
from kmesh_apply.sync.synchroniser import Synchroniser

# Maps a loader and a daemon pinned in the directory before kmesh-apply came, made by bpftool (no BTF,
# as cilium/ebpf makes them): name -> `map create` arguments. Beside them, one map of every type the
# kernel has (foreign_maps.FOREIGN).
LOADER = {
    "l_hash": "type hash key 4 value 8 entries 16",
    "l_percpu": "type percpu_hash key 4 value 8 entries 16",
    "l_lru": "type lru_hash key 4 value 8 entries 16",
    "l_array": "type array key 4 value 4 entries 4",
    "l_progs": "type prog_array key 4 value 4 entries 4",
    "l_inner": "type hash key 4 value 8 entries 8",
}
OTHERS = sorted([*LOADER, *FOREIGN])
CONFIG = """
maps:
  km_backend:                  # the daemon's map: adopted, only entry 7 is the config's
    type: hash
    key: u32
    value: u64
    max_entries: 16
    adopt: true
    manage_entries: listed
    entries: {7: 700}
  km_conntrack:                # created here, its entries written by programs
    type: lru_hash
    key: u32
    value: u64
    max_entries: 64
    manage_entries: none
  settings:                    # the config's entries are the whole truth
    type: array
    key: u32
    value: u32
    max_entries: 4
    entries: {0: 1, 1: 2}
inner_maps:
  backends:
    type: hash
    key: u32
    value: u64
    max_entries: 8
    entries: {1: 10}
outer_maps:
  services:                    # slot 1 is the config's; the daemon adds others
    type: hash_of_maps
    key: u32
    max_entries: 8
    inner_map: backends
    manage_entries: listed
    entries: {1: backends}
"""


def bpftool(*args: str) -> None:
    subprocess.run(["bpftool", *args], check=True, capture_output=True)


def u32(i: int) -> list[str]:
    return [str(b) for b in struct.pack("<I", i)]


def u64(i: int) -> list[str]:
    return [str(b) for b in struct.pack("<Q", i)]


def pin_foreign(root: Path, name: str, spec: str, *extra: str) -> None:
    bpftool("map", "create", str(root / name), *spec.split(), "name", name, *extra)


def as_bpftool_sees(root: Path, names) -> dict[str, tuple[int, str, object]]:
    """Pin name -> (kernel ID, type, entries), read by bpftool."""
    out = {}
    for name in names:
        show = bpftool_json("map", "show", "pinned", str(root / name))
        dump = bpftool_json("map", "dump", "pinned", str(root / name)) if show["type"] != "prog_array" else None
        out[name] = (show["id"], show["type"], dump)
    return out


def entries_of(root: Path, name: str) -> dict[int, int]:
    """A u32 -> u64 map's entries, read by bpftool."""
    return {int.from_bytes(bytes(int(b, 16) for b in e["key"]), "little"): int.from_bytes(bytes(int(b, 16) for b in e["value"]), "little")
            for e in bpftool_json("map", "dump", "pinned", str(root / name)) or []}


def untouched(root: Path) -> tuple[object, object]:
    """What bpftool says of the maps someone else pinned: IDs, types and the entries it can dump."""
    return as_bpftool_sees(root, LOADER), snapshot(root, FOREIGN)


@pytest.fixture
def shared(pin_root: Path) -> Path:
    """A pin root where a loader and a daemon were first: foreign maps with entries, and the daemon's km_backend."""
    pin_foreign_maps(pin_root)
    for name, spec in LOADER.items():
        pin_foreign(pin_root, name, spec)
    bpftool("map", "update", "pinned", str(pin_root / "l_hash"), "key", *u32(1), "value", *u64(11))
    bpftool("map", "update", "pinned", str(pin_root / "l_array"), "key", *u32(2), "value", *u32(22))
    pin_foreign(pin_root, "km_backend", "type hash key 4 value 8 entries 16")
    for key, value in ((1, 100), (2, 200)):
        bpftool("map", "update", "pinned", str(pin_root / "km_backend"), "key", *u32(key), "value", *u64(value))
    return pin_root


def test_a_shared_pin_root_end_to_end(shared: Path, tmp_path: Path):
    root = shared
    conf = tmp_path / "conf"
    conf.mkdir()
    (conf / "mesh.yaml").write_text(CONFIG)
    foreign_before = untouched(root)
    backend_id = bpftool_json("map", "show", "pinned", str(root / "km_backend"))["id"]

    # plan: the foreign maps are listed, the daemon's map is adopted, nothing else is touched.
    planned = json.loads(cli("plan", str(conf), "--json", root=root).stdout)
    assert [u["name"] for u in planned["unmanaged"]] == OTHERS
    adopted = next(c for c in planned["changes"] if c["name"] == "km_backend")
    assert (adopted["action"], adopted["adopted"], adopted["added"]) == ("adopt", True, [{"key": 7, "value": 700}])
    assert planned["counts"] == {"adopt": 1, "migrate": 0, "rename": 0, "create": 4, "update": 0, "destroy": 0}
    text = cli("plan", str(conf), root=root).stdout
    assert '<= map "km_backend" will be adopted' in text
    assert f"Unmanaged ({len(OTHERS)} maps pinned here by others, left alone): f_arena (arena, ID" in text

    cli("apply", str(conf), "--auto-approve", root=root)
    assert untouched(root) == foreign_before
    assert bpftool_json("map", "show", "pinned", str(root / "km_backend"))["id"] == backend_id  # the same map, taken over
    assert entries_of(root, "km_backend") == {1: 100, 2: 200, 7: 700}
    # The ownership record names every managed map by its kernel ID, the daemon's one as adopted.
    record = {e["formatted"]["key"]: e["formatted"]["value"] for e in bpftool_json("map", "dump", "pinned", str(root / OWNED_PIN))}
    assert set(record) == {"km_backend", "km_conntrack", "settings", "backends", "services"}
    assert record["km_backend"] == {"format": 1, "origin": "adopted", "id": backend_id, "next_id": 0}
    # It carried no BTF: the layout the config gives it is recorded (so show can print its types).
    assert (root / LAYOUTS_DIR / str(backend_id)).exists()

    # The daemon and the programs write their entries; none of that is drift.
    bpftool("map", "update", "pinned", str(root / "km_backend"), "key", *u32(3), "value", *u64(300))
    bpftool("map", "update", "pinned", str(root / "km_conntrack"), "key", *u32(5), "value", *u64(55))
    bpftool("map", "update", "pinned", str(root / "services"), "key", *u32(2), "value", "pinned", str(root / "l_inner"))
    clean = cli("plan", str(conf), "--detailed-exitcode", root=root)
    assert "No changes." in clean.stdout and "(arena, ID" in clean.stdout and f"and {len(OTHERS) - 20} more" in clean.stdout

    # show: the managed maps only (plain maps under maps:), with the adopted map's recorded types.
    shown = yaml.safe_load(cli("show", root=root).stdout)
    assert set(shown["maps"]) == {"km_backend", "km_conntrack", "settings"} and set(shown["inner_maps"]) == {"backends"}
    assert shown["maps"]["km_backend"]["key"] == "u32" and shown["maps"]["km_backend"]["value"] == "u64"
    assert shown["outer_maps"]["services"]["inner_map"] == "backends"
    everything = yaml.safe_load(cli("show", "--all", root=root).stdout)
    assert everything["maps"]["l_hash"]["adopt"] is True and everything["maps"]["l_hash"]["entries"] == {1: 11}
    assert everything["maps"]["f_ringbuf"] == {"type": "ringbuf", "max_entries": 4096, "adopt": True}
    usage = json.loads(cli("show", "--usage", "--json", "--all", root=root).stdout)["maps"]
    assert sorted(u["name"] for u in usage if u["kind"] == "unmanaged") == OTHERS
    metrics = tmp_path / "kmesh.prom"
    cli("plan", str(conf), "--metrics-file", str(metrics), root=root)
    assert f'kmesh_apply_maps{{kind="unmanaged",pin_root="{root}"}} {len(OTHERS)}' in metrics.read_text()
    assert 'map="l_hash"' not in metrics.read_text()

    # The synchroniser: drift checks see no drift; put/delete honour each map's mode.
    with Synchroniser(str(root)) as sync:
        sync.apply(load_config([conf]))
        assert sync.verify() == []
        with pytest.raises(ConfigError, match="map 'km_conntrack'.*manage_entries: none"):
            sync.put("km_conntrack", {1: 1})
        sync.put("km_backend", {8: 800})
        sync.delete("km_backend", [7])
        sync.flush()
        assert entries_of(root, "km_backend") == {1: 100, 2: 200, 3: 300, 8: 800}
        bpftool("map", "update", "pinned", str(root / "km_backend"), "key", *u32(7), "value", *u64(7))
        assert sync.verify() == []  # deleted once as asked; the daemon may write it again
    assert untouched(root) == foreign_before

    # watch: keeps the pin root equal to the files, corrects drift of what it owns, and nothing else.
    w = Watch([conf], root, "--drift-interval", "0.2")
    try:
        w.wait_for(lambda: w.events("reconcile"), "the first apply")
        bpftool("map", "update", "pinned", str(root / "settings"), "key", *u32(0), "value", *u32(9))
        w.wait_for(lambda: w.events("drift"), "the drift check")
    finally:
        assert w.stop() == 0
    assert [d["maps"] for d in w.events("drift")] == [["settings"]]
    assert untouched(root) == foreign_before
    assert entries_of(root, "km_conntrack") == {5: 55}

    # destroy: the managed maps (the adopted one too) and the records go; the foreign maps stay, so does the pin root.
    cli("destroy", "--auto-approve", root=root)
    assert untouched(root) == foreign_before
    assert sorted(os.listdir(root)) == OTHERS
    assert drain(root, "f_queue") == list(QUEUE_VALUES), "nothing popped the daemon's queue"
    for name in OTHERS:
        os.unlink(root / name)
    cli("destroy", "--auto-approve", root=root)
    assert not root.exists()


def test_a_pin_root_of_an_earlier_version_is_wholly_managed(pin_root: Path, tmp_path: Path):
    """Maps and a `_kmesh_keys` record, as kmesh-apply wrote them before the ownership record."""
    pin_root.mkdir()
    with Map.create("hash", 4, 8, 8, name="old", key_type=parse_type("u32"), value_type=parse_type("u64")) as m:
        m.update(struct.pack("<I", 1), struct.pack("<Q", 10))
        m.pin(str(pin_root / "old"))
    with Map.create("hash", 4, 8, 8, name="gone") as m:
        m.pin(str(pin_root / "gone"))
    (pin_root / KEY_TYPES_DIR).mkdir()
    with Map.create("hash", 4, 1, 1, name="kmesh_key_type", flags=("no_prealloc",), key_type=parse_type("be32"),
                    value_type=Raw(1)) as m:
        m.pin(str(pin_root / KEY_TYPES_DIR / "somewhere"))
    cfg = tmp_path / "c.yaml"
    cfg.write_text("maps:\n  old: {type: hash, key: u32, value: u64, max_entries: 8, entries: {1: 10}}\n")
    planned = json.loads(cli("plan", str(cfg), "--json", root=pin_root).stdout)
    assert planned["unmanaged"] == [] and [(c["name"], c["action"]) for c in planned["changes"]] == [("gone", "destroy")]
    cli("apply", str(cfg), "--auto-approve", root=pin_root)
    assert [p.name for p in pinned_maps(pin_root)] == ["old"] and (pin_root / OWNED_PIN).exists()
    cli("plan", str(cfg), "--detailed-exitcode", root=pin_root)


def test_maps_in_a_directory_without_records_are_someone_elses(pin_root: Path, tmp_path: Path):
    pin_root.mkdir()
    pin_foreign(pin_root, "x", "type hash key 4 value 8 entries 8")
    cfg = tmp_path / "c.yaml"
    cfg.write_text("maps:\n  x: {type: hash, key: u32, value: u64, max_entries: 8}\n")
    res = cli("plan", str(cfg), root=pin_root, check=1)
    assert "map 'x' is pinned in the pin root but kmesh-apply does not manage it" in res.stderr
    assert "add adopt: true to take it over, or pick another name" in res.stderr
    assert cli("destroy", "--auto-approve", root=pin_root).stdout.startswith("Unmanaged (1 map")
    assert [p.name for p in pinned_maps(pin_root)] == ["x"]
    cfg.write_text("maps:\n  x: {type: array, key: u32, value: u64, max_entries: 8, adopt: true}\n")
    res = cli("plan", str(cfg), root=pin_root, check=1)
    assert "adopt: the pinned map" in res.stderr and "is a hash map, the configuration declares an array map" in res.stderr


def test_a_pin_someone_replaced_is_no_longer_managed(pin_root: Path, tmp_path: Path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("maps:\n  a: {type: hash, key: u32, value: u64, max_entries: 8}\n")
    cli("apply", str(cfg), "--auto-approve", root=pin_root)
    ours = bpftool_json("map", "show", "pinned", str(pin_root / "a"))["id"]
    os.unlink(pin_root / "a")
    pin_foreign(pin_root, "a", "type hash key 4 value 8 entries 8")
    res = cli("plan", str(cfg), root=pin_root, check=1)
    assert f"not the map ID {ours} kmesh-apply made" in res.stderr
    cli("destroy", "--auto-approve", root=pin_root)
    assert [p.name for p in pinned_maps(pin_root)] == ["a"]  # theirs, left alone
    assert not (pin_root / OWNED_PIN).exists(), "the record of a map that is gone is pruned"


def test_the_template_is_recorded_and_given_back(pin_root: Path, tmp_path: Path):
    """Issue 24 item 11: not the inner map in the first slot in hash order."""
    cfg = tmp_path / "c.yaml"
    cfg.write_text("""
inner_maps:
  template: {type: hash, key: u32, value: u64, max_entries: 8}
  web: {type: hash, key: u32, value: u64, max_entries: 8}
  api: {type: hash, key: u32, value: u64, max_entries: 8}
outer_maps:
  services: {type: hash_of_maps, key: be32, max_entries: 8, inner_map: template, entries: {1: web, 2: api}}
""")
    cli("apply", str(cfg), "--auto-approve", root=pin_root)
    shown = cli("show", root=pin_root).stdout
    doc = yaml.safe_load(shown)
    assert doc["outer_maps"]["services"]["inner_map"] == "template" and doc["outer_maps"]["services"]["key"] == "be32"
    assert set(doc["inner_maps"]) == {"template", "web", "api"} and "maps" not in doc
    (tmp_path / "shown.yaml").write_text(shown)
    cli("plan", str(tmp_path / "shown.yaml"), "--detailed-exitcode", root=pin_root)
    # A new template name of the same shape: the record follows, the map stays.
    cfg.write_text(cfg.read_text().replace("inner_map: template", "inner_map: api"))
    text = cli("plan", str(cfg), root=pin_root, check=0).stdout
    assert "its template is recorded as 'api' (was 'template')" in text
    cli("apply", str(cfg), "--auto-approve", root=pin_root)
    assert yaml.safe_load(cli("show", root=pin_root).stdout)["outer_maps"]["services"]["inner_map"] == "api"
    cli("plan", str(cfg), "--detailed-exitcode", root=pin_root)


def test_maps_made_by_kmesh_map_are_managed(pin_root: Path):
    r = run_cli("kmesh", "map", "create-inner", "--type=hash", "--key-size=4", "--value-size=8", "--max-entries=4",
                "--pin-root", str(pin_root))
    assert r.returncode == 0, r.stderr
    cli("destroy", "--auto-approve", root=pin_root)
    assert not pin_root.exists()


def test_the_ownership_record_grows_as_maps_are_added(pin_root: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(records, "MIN_CAPACITY", 4)
    maps = {f"m{i}": {"type": "hash", "key": "u32", "value": "u64", "max_entries": 4} for i in range(3)}
    api.converge(load_config(inline={"maps": maps}), str(pin_root))
    maps.update({f"n{i}": {"type": "hash", "key": "u32", "value": "u64", "max_entries": 4} for i in range(7)})
    api.converge(load_config(inline={"maps": maps}), str(pin_root))
    with Map.open_pinned(str(pin_root / OWNED_PIN)) as m:
        assert m.info.max_entries >= 10 and len(m.items()) == 10
    assert not (pin_root / "_kmesh_staging").exists()
    assert not api.plan(load_config(inline={"maps": maps}), str(pin_root)).has_changes


def test_a_saved_plan_adopts_and_is_not_stale_for_entries_it_does_not_own(pin_root: Path, tmp_path: Path):
    pin_root.mkdir()
    pin_foreign(pin_root, "x", "type hash key 4 value 8 entries 8")
    theirs = bpftool_json("map", "show", "pinned", str(pin_root / "x"))["id"]
    cfg = tmp_path / "c.yaml"
    cfg.write_text("maps:\n  x: {type: hash, key: u32, value: u64, max_entries: 8, adopt: true, manage_entries: listed, "
                   "entries: {1: 10}}\n")
    saved = tmp_path / "x.plan"
    cli("plan", str(cfg), "--out", str(saved), root=pin_root)
    bpftool("map", "update", "pinned", str(pin_root / "x"), "key", *u32(2), "value", *u64(20))  # the daemon, meanwhile
    cli("apply", str(saved), root=pin_root)
    assert entries_of(pin_root, "x") == {1: 10, 2: 20}
    record = {e["formatted"]["key"]: e["formatted"]["value"] for e in bpftool_json("map", "dump", "pinned", str(pin_root / OWNED_PIN))}
    assert record == {"x": {"format": 1, "origin": "adopted", "id": theirs, "next_id": 0}}
    assert yaml.safe_load(cli("show", root=pin_root).stdout)["maps"]["x"]["value"] == "u64"  # its layout, recorded
    cli("plan", str(cfg), "--detailed-exitcode", root=pin_root)
    bpftool("map", "update", "pinned", str(pin_root / "x"), "key", *u32(1), "value", *u64(11))  # a listed entry: drift
    cli("plan", str(cfg), "--detailed-exitcode", root=pin_root, check=2)
