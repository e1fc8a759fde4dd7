"""Every map type the kernel has, in a pin root: every command reads it without failing, names
its type as bpftool does, reads entries only where the kernel allows it (never popping a
queue), and reports the others by type and size. Pinned by someone else, they are unmanaged:
never changed (test_ownership.py), shown with `show --all`."""

from __future__ import annotations

import json
import urllib.request
from dataclasses import replace
from pathlib import Path

import pytest
from conftest import run_cli
from foreign_maps import FOREIGN, QUEUE_VALUES, STACK_VALUES, drain, pin_foreign_maps, snapshot
from test_watch import Watch

from kmesh_apply import api
from kmesh_apply.kernel.maps import UNREADABLE, Map
from kmesh_apply.kernel.names import MAP_TYPES, type_name
from kmesh_apply.metrics import map_families
from kmesh_apply.pinroot.reader import read_live

CONFIG = "inner_maps:\n  mine: {type: hash, key: u32, value: u32, max_entries: 4, entries: {1: 2}}\n"
# Types whose entries user space cannot read (with the test's value sizes), and the ones it can.
UNREAD = {n for n, f in FOREIGN.items() if f.type in UNREADABLE or (f.type == "sockmap" and f.value_size != 8)}


@pytest.fixture
def foreign(pin_root: Path) -> Path:
    pin_foreign_maps(pin_root)
    return pin_root


def test_every_kernel_map_type_has_bpftools_name():
    assert type_name(27) == "ringbuf" and type_name(26) == "struct_ops" and type_name(33) == "arena"
    assert sorted(MAP_TYPES.values()) == list(range(1, len(MAP_TYPES) + 1))
    assert type_name(99) == "type 99"


def test_the_reader_reads_every_type_and_only_what_the_kernel_gives(foreign: Path, bpftool):
    live = read_live(str(foreign))
    assert set(live.unmanaged) == set(FOREIGN) and not live.maps
    for name, f in FOREIGN.items():
        m = live.unmanaged[name]
        assert m.type == f.type and (m.key_size, m.value_size) == (f.key_size, f.value_size or m.value_size), name
        assert bool(m.unreadable) == (name in UNREAD), (name, m.unreadable)
        if m.unreadable:
            assert not m.entries
    assert live.unmanaged["f_hash"].entries == {(1).to_bytes(4, "little"): (10).to_bytes(4, "little"),
                                                (2).to_bytes(4, "little"): (20).to_bytes(4, "little")}
    assert list(live.unmanaged["f_devmap"].entries) == [bytes(4)]
    assert list(live.unmanaged["f_cpumap"].entries) == [bytes(4)]
    assert "popping" in live.unmanaged["f_queue"].unreadable
    assert "sockets" in live.unmanaged["f_sk_storage"].unreadable
    assert drain(foreign, "f_queue") == list(QUEUE_VALUES), "reading a queue must not consume it"
    assert drain(foreign, "f_stack") == list(reversed(STACK_VALUES))


def test_kernel_ids_and_types_match_bpftool(foreign: Path, bpftool):
    live = read_live(str(foreign))
    assert set(live.unmanaged) == set(FOREIGN)
    for name, m in live.unmanaged.items():
        shown = bpftool("map", "show", "pinned", str(foreign / name))
        assert shown["id"] == m.id
        # bpftool 7.1 (libbpf 1.1) names types up to user_ringbuf and prints newer ones as numbers
        assert shown["type"] in (m.type, MAP_TYPES[m.type]), (name, shown["type"])


def test_an_unreadable_map_says_why_when_asked_for_entries(foreign: Path):
    with Map.open_pinned(str(foreign / "f_ringbuf")) as m:
        with pytest.raises(Exception, match="ring buffer"):
            m.items()
    with Map.open_pinned(str(foreign / "f_sockmap")) as m:
        assert "8-byte values" in m.unreadable()


def test_show_plan_usage_and_metrics_on_every_type(foreign: Path, tmp_path: Path):
    before = snapshot(foreign, FOREIGN)
    shown = run_cli("kmesh-apply", "show", "--all", "--pin-root", str(foreign))
    assert shown.returncode == 0, shown.stderr
    assert "type: ringbuf" in shown.stdout and "type: arena" in shown.stdout
    doc = json.loads(run_cli("kmesh-apply", "show", "--all", "--json", "--pin-root", str(foreign)).stdout)
    maps = doc["maps"]
    assert maps["f_ringbuf"] == {"type": "ringbuf", "max_entries": 4096, "adopt": True}, "no key, no value, no entries"
    assert maps["f_queue"] == {"type": "queue", "value_size": 4, "max_entries": 8, "adopt": True}
    assert maps["f_hash"]["entries"] == {"1": 10, "2": 20}
    assert "f_struct_ops" not in maps and "a struct_ops map, which a config cannot declare" in shown.stderr
    (tmp_path / "shown.yaml").write_text(shown.stdout)
    valid = run_cli("kmesh-apply", "validate", str(tmp_path / "shown.yaml"))
    assert valid.returncode == 0, valid.stderr  # every other type can be declared as shown
    usage = run_cli("kmesh-apply", "show", "--usage", "--all", "--pin-root", str(foreign))
    assert usage.returncode == 0, usage.stderr
    ringbuf_row = next(line for line in usage.stdout.splitlines() if line.startswith("f_ringbuf "))
    assert ringbuf_row.split()[3] == "-", "entries that cannot be read are not counted as 0"
    # Metrics give per-map gauges for managed maps only: as if these were managed.
    metrics = map_families("r", [replace(u, kind="inner") for u in api.usage(str(foreign))]).decode()
    assert 'kmesh_apply_map_max_entries{map="f_ringbuf",pin_root="r"} 4096' in metrics
    assert 'kmesh_apply_map_entries{map="f_ringbuf"' not in metrics
    assert 'kmesh_apply_map_entries{map="f_hash",pin_root="r"} 2' in metrics

    config = tmp_path / "c.yaml"
    config.write_text(CONFIG)
    for argv in (["plan"], ["plan", "--json"], ["plan", "--detailed-exitcode"]):
        res = run_cli("kmesh-apply", *argv, str(config), "--pin-root", str(foreign))
        assert res.returncode in (0, 2), res.stderr
        assert "Traceback" not in res.stderr
    assert snapshot(foreign, FOREIGN) == before, "reading changed nothing"
    assert drain(foreign, "f_queue") == list(QUEUE_VALUES)


def test_apply_and_destroy_with_every_type(foreign: Path, tmp_path: Path):
    before = snapshot(foreign, FOREIGN)
    config = tmp_path / "c.yaml"
    config.write_text(CONFIG)
    res = run_cli("kmesh-apply", "apply", "--auto-approve", str(config), "--pin-root", str(foreign))
    assert res.returncode == 0, res.stderr
    assert (foreign / "mine").exists()
    res = run_cli("kmesh-apply", "destroy", "--auto-approve", "--pin-root", str(foreign))
    assert res.returncode == 0, res.stderr
    assert not (foreign / "mine").exists()
    assert snapshot(foreign, FOREIGN) == before, "someone else's maps are never changed or destroyed"
    assert drain(foreign, "f_queue") == list(QUEUE_VALUES)


def test_watch_and_its_metrics_with_maps_of_every_type_appearing(pin_root: Path, tmp_path: Path):
    conf = tmp_path / "conf"
    conf.mkdir()
    (conf / "c.yaml").write_text(CONFIG)
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    w = Watch([conf], pin_root, "--drift-interval", "0.2", "--metrics-addr", f"127.0.0.1:{port}")
    try:
        w.wait_for(lambda: (pin_root / "mine").exists(), "the first apply")
        pin_foreign_maps(pin_root)
        counted = f'kmesh_apply_maps{{kind="unmanaged",pin_root="{pin_root}"}} {len(FOREIGN)}'.encode()
        w.wait_for(lambda: counted in scrape(port), "a drift check that reads the new maps")
        assert b'kmesh_apply_map_entries{map="mine"' in scrape(port)
        assert not w.events("drift"), "someone else's maps appearing are no drift"
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=10) as r:
            assert r.status == 200
    finally:
        code = w.stop()
    assert code == 0, "".join(w.raw)
    assert not [e for e in w.lines if e["event"] in ("error", "crash")], w.raw


def scrape(port: int) -> bytes:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
        return r.read()


def test_kmesh_map_list_and_info_on_every_type(foreign: Path):
    listed = run_cli("kmesh", "map", "list", "--pin-root", str(foreign))
    assert listed.returncode == 0, listed.stderr
    assert {line.split()[0] for line in listed.stdout.splitlines()[1:]} == set(FOREIGN)
    for name in ("f_ringbuf", "f_queue", "f_sk_storage", "f_hash"):
        with Map.open_pinned(str(foreign / name)) as m:
            map_id = m.id
        res = run_cli("kmesh", "map", "info", str(map_id), "--json", "--pin-root", str(foreign))
        assert res.returncode == 0, res.stderr
        info = json.loads(res.stdout)
        assert info["type"] == FOREIGN[name].type
        assert info["entries"] == (2 if name == "f_hash" else None)
    assert drain(foreign, "f_queue") == list(QUEUE_VALUES)
