"""The synchroniser joined to the rest: `watch --metrics-addr` serves the watcher's own metrics (checked
against bpftool and promtool), and the synchroniser keeps issue 11's rules for maps loaded programs hold."""

from __future__ import annotations

import re
import socket
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from conftest import bpftool_json
from test_holders import DIRECT_PROG, bigger_outer, load  # noqa: F401 (load: a fixture)
from test_monitoring import bpftool_usage, promtool
from test_safety import SUM_PROG, cli, sum_config, write
from test_watch import MESH, Watch, conf_dir, poke_counter, save

from kmesh_apply import Synchroniser, load_config
from kmesh_apply.errors import ReplaceInUseError


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def sample(text: str, name: str, **labels: str) -> float | None:
    """The value of one sample in Prometheus text format."""
    for line in text.splitlines():
        m = re.match(rf"{name}\{{(.*)\}} (\S+)$", line)
        if m and all(f'{k}="{v}"' in m.group(1) for k, v in labels.items()):
            return float(m.group(2))
    return None


def test_watch_serves_its_metrics_and_health(pin_root: Path, tmp_path: Path, bpftool) -> None:
    conf = conf_dir(tmp_path, "mesh.yaml", MESH.read_text())
    url = f"http://127.0.0.1:{free_port()}"
    w = Watch([conf], pin_root, "--drift-interval", "0.3", "--metrics-addr", url.removeprefix("http://"))
    try:
        w.wait_for(lambda: w.events("reconcile"), "the first apply")
        assert w.events("start")[0]["metrics"] == url
        assert get(f"{url}/healthz") == (200, "ok\n")

        poke_counter(pin_root, 1, 7)  # drift, corrected by the next check
        w.wait_for(lambda: w.events("drift"), "drift to be corrected")
        w.wait_for(lambda: (sample(get(f"{url}/metrics")[1], "kmesh_apply_drift_events_total") or 0) >= 1,
                   "the drift to be counted")
        status, text = get(f"{url}/metrics")
        assert status == 200
        assert promtool("check", "metrics", input=text).returncode == 0, promtool("check", "metrics", input=text).stdout
        root = str(pin_root)
        for name, (entries, max_entries, memlock) in bpftool_usage(pin_root).items():
            assert sample(text, "kmesh_apply_map_entries", pin_root=root, map=name) == entries, name
            assert sample(text, "kmesh_apply_map_max_entries", pin_root=root, map=name) == max_entries, name
            assert sample(text, "kmesh_apply_map_memlock_bytes", pin_root=root, map=name) == memlock, name
        assert sample(text, "kmesh_apply_reconciles_total", pin_root=root, outcome="success") >= 2  # start, drift fix
        assert sample(text, "kmesh_apply_last_success_timestamp_seconds", pin_root=root) > 0

        save(conf / "mesh.yaml", MESH.read_text() + "  oops: [\n")  # broken: health says so, the state holds
        w.wait_for(lambda: get(f"{url}/healthz")[0] == 503, "health to report the broken file")
        assert "configuration rejected" in get(f"{url}/healthz")[1]
        assert sample(get(f"{url}/metrics")[1], "kmesh_apply_config_errors_total", pin_root=root) >= 1
    finally:
        assert w.stop() == 0


def test_watch_refuses_a_bad_metrics_address(pin_root: Path, tmp_path: Path) -> None:
    conf = conf_dir(tmp_path, "mesh.yaml", MESH.read_text())
    res = cli("watch", str(conf), "--metrics-addr", "localhost", root=pin_root, check=1)
    assert res.returncode == 1 and "expected HOST:PORT" in res.stderr and not pin_root.exists()


def test_the_synchroniser_refuses_to_replace_a_held_map(pin_root: Path, tmp_path: Path, load) -> None:
    cli("apply", str(write(tmp_path, "a.yaml", sum_config(1))), "--auto-approve", root=pin_root)
    prog = load(SUM_PROG, "sum", {"outer": pin_root / "outer"})
    bigger = load_config(inline=bigger_outer(1))
    outer_id = bpftool_id(pin_root / "outer")
    with Synchroniser(str(pin_root)) as sync:
        with pytest.raises(ReplaceInUseError, match=f'program {prog.id} "sum"'):
            sync.apply(bigger)
        assert bpftool_id(pin_root / "outer") == outer_id  # nothing changed
        assert not sync.health().ok and "sum" in sync.health().reasons[0]
    with Synchroniser(str(pin_root), allow_replace_in_use=True) as sync:
        sync.apply(bigger)
        assert bpftool_id(pin_root / "outer") != outer_id
        health = sync.health()  # the program still reads the old outer map: drift no apply corrects
        assert not health.ok and any(f"ID {outer_id}" in r and "sum" in r for r in health.reasons)
    prog.unload()
    with Synchroniser(str(pin_root)) as sync:
        sync.verify()
        assert sync.health().ok


def test_a_swap_of_an_inner_map_a_program_holds_is_written_in_place(pin_root: Path, tmp_path: Path, load) -> None:
    cli("apply", str(write(tmp_path, "a.yaml", sum_config(1))), "--auto-approve", root=pin_root)
    with Synchroniser(str(pin_root)) as sync:
        prog = load(DIRECT_PROG, "direct", {"values": pin_root / "values"})  # loaded after the synchroniser's read
        values_id = bpftool_id(pin_root / "values")
        sync.apply(load_config(inline=sum_config(2)))  # 64 entries change: a swap, unless a program holds the map
        assert bpftool_id(pin_root / "values") == values_id
        assert prog.prog.run() == 2 * 64
        (change,) = sync.last_changes
        assert not change.swap and "written in place" in change.reasons[0]


def bpftool_id(pin: Path) -> int:
    return bpftool_json("map", "show", "pinned", str(pin))["id"]


def test_the_synchroniser_refuses_to_destroy_a_held_map(pin_root: Path, tmp_path: Path, load) -> None:
    cli("apply", str(write(tmp_path, "a.yaml", sum_config(1))), "--auto-approve", root=pin_root)
    prog = load(DIRECT_PROG, "direct", {"values": pin_root / "values"})
    values_id = bpftool_id(pin_root / "values")
    without = load_config(inline=sum_config(1).replace("  values:", "  others:").replace(": values", ": others"))
    with Synchroniser(str(pin_root)) as sync:
        with pytest.raises(ReplaceInUseError, match=f"'values' .* program {prog.id} \"direct\" .*: the plan would destroy it"):
            sync.apply(without)
        assert bpftool_id(pin_root / "values") == values_id and not sync.health().ok
    with Synchroniser(str(pin_root), allow_replace_in_use=True) as sync:
        sync.apply(without)
        assert not (pin_root / "values").exists()
        assert any(f"the destroyed map 'values' (ID {values_id}) is still held" in r for r in sync.health().reasons)
