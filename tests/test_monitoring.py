"""Monitoring (issue 13): the metrics endpoint and the textfile checked value by value against
bpftool, `promtool` on the output and on examples/monitoring, a real Prometheus scraping the
endpoint, `show --usage`, and the planner's capacity warnings."""

from __future__ import annotations

import json
import re
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from conftest import REPO, bpftool_json, pinned_maps, run_cli
from kmesh_apply import api
from kmesh_apply.errors import KmeshError
from kmesh_apply.metrics import PrometheusRecorder, parse_address, start_server
from kmesh_apply.monitor import Health, Snapshot

MONITORING = REPO / "examples" / "monitoring"

# Fills chosen to cover every rule: a hash at 90% (warned), a no_prealloc hash (memlock grows
# with entries), an array (named zero indexes do not count), an LPM trie, an outer map half used.
CONFIG = """
inner_maps:
  full:
    type: hash
    key: u32
    value: u64
    max_entries: 10
    entries: {0: 1, 1: 1, 2: 1, 3: 1, 4: 1, 5: 1, 6: 1, 7: 1, 8: 1}
  sparse:
    type: hash
    key: u32
    value: u64
    max_entries: 64
    flags: [no_prealloc]
    entries: {1: 10, 2: 20, 3: 30}
  counters:
    type: array
    key: u32
    value: u64
    max_entries: 8
    entries: {0: 5, 1: 0, 2: 7}
  routes:
    type: lpm_trie
    key: {lpm: ipv4}
    value: u32
    max_entries: 16
    flags: [no_prealloc]
    entries:
      - {key: 10.0.0.0/8, value: 1}
outer_maps:
  services:
    type: hash_of_maps
    key: u32
    max_entries: 4
    inner_map: full
    entries: {1: full, 2: full}
"""
EXPECTED_ENTRIES = {"full": 9, "sparse": 3, "counters": 2, "routes": 1, "services": 2}


@pytest.fixture
def applied(pin_root: Path, tmp_path: Path) -> Path:
    config = tmp_path / "maps.yaml"
    config.write_text(CONFIG)
    api.converge(api.load_config([config]), str(pin_root))
    return config


def scrape(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of a scrape, keyed by (name, sorted labels)."""
    text = urllib.request.urlopen(url, timeout=30).read().decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def sample(samples: dict, name: str, **labels: str) -> float:
    return samples[(name, tuple(sorted(labels.items())))]


def bpftool_usage(pin_root: Path) -> dict[str, tuple[int, int, int]]:
    """(entries, max_entries, bytes_memlock) of every pinned map, as bpftool sees them."""
    out = {}
    for pin in pinned_maps(pin_root):
        show = bpftool_json("map", "show", "pinned", str(pin))
        dump = bpftool_json("map", "dump", "pinned", str(pin)) or []
        if show["type"] == "array":
            entries = sum(1 for e in dump if any(int(b, 16) for b in e["value"]))
        else:
            entries = len(dump)
        out[pin.name] = (entries, show["max_entries"], show["bytes_memlock"])
    return out


def promtool(*args: str, input: str | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess:
    if shutil.which("promtool") is None:
        pytest.fail("promtool is not installed: run scripts/setup")
    return subprocess.run(["promtool", *args], capture_output=True, text=True, input=input, cwd=cwd)


def test_endpoint_values_match_bpftool(applied: Path, pin_root: Path, bpftool) -> None:
    root = str(pin_root)
    source = Snapshot(root, api.usage(root), Health(last_success=1700000000.5))
    recorder = PrometheusRecorder(root)
    recorder.reconcile("success", 0.003)
    recorder.reconcile("error", 20.0)
    recorder.drift(4)
    recorder.config_error()
    with start_server("127.0.0.1:0", source, recorder) as server:
        assert server.address[0] == "127.0.0.1" and server.address[1] > 0
        samples = scrape(server.url + "/metrics")
        text = urllib.request.urlopen(server.url + "/metrics", timeout=30).read().decode()
    seen = bpftool_usage(pin_root)
    assert {name: entries for name, (entries, _, _) in seen.items()} == EXPECTED_ENTRIES
    for name, (entries, max_entries, memlock) in seen.items():
        assert sample(samples, "kmesh_apply_map_entries", map=name, pin_root=root) == entries
        assert sample(samples, "kmesh_apply_map_max_entries", map=name, pin_root=root) == max_entries
        assert sample(samples, "kmesh_apply_map_memlock_bytes", map=name, pin_root=root) == memlock
        if name == "counters":  # an array cannot fill up: no ratio to alert on
            assert ("kmesh_apply_map_fill_ratio", (("map", name), ("pin_root", root))) not in samples
        else:
            assert sample(samples, "kmesh_apply_map_fill_ratio", map=name, pin_root=root) == pytest.approx(entries / max_entries)
    assert sample(samples, "kmesh_apply_maps", kind="inner", pin_root=root) == 4
    assert sample(samples, "kmesh_apply_maps", kind="outer", pin_root=root) == 1
    assert sample(samples, "kmesh_apply_entries", pin_root=root) == 9 + 3 + 2 + 1
    assert sample(samples, "kmesh_apply_outer_slots_used", pin_root=root) == 2
    assert sample(samples, "kmesh_apply_outer_slots_max", pin_root=root) == 4
    assert sample(samples, "kmesh_apply_memlock_bytes", pin_root=root) == sum(m for _, _, m in seen.values())
    assert sample(samples, "kmesh_apply_healthy", pin_root=root) == 1
    assert sample(samples, "kmesh_apply_last_success_timestamp_seconds", pin_root=root) == 1700000000.5
    assert sample(samples, "kmesh_apply_reconciles_total", outcome="success", pin_root=root) == 1
    assert sample(samples, "kmesh_apply_reconciles_total", outcome="error", pin_root=root) == 1
    assert sample(samples, "kmesh_apply_reconciles_total", outcome="noop", pin_root=root) == 0
    duration = "kmesh_apply_reconcile_duration_seconds_bucket"
    assert sample(samples, duration, le="0.0005", pin_root=root) == 0
    assert sample(samples, duration, le="0.0025", pin_root=root) == 0
    assert sample(samples, duration, le="0.005", pin_root=root) == 1
    assert sample(samples, duration, le="10.0", pin_root=root) == 1
    assert sample(samples, duration, le="+Inf", pin_root=root) == 2
    assert sample(samples, "kmesh_apply_reconcile_duration_seconds_sum", pin_root=root) == pytest.approx(20.003)
    assert sample(samples, "kmesh_apply_drift_events_total", pin_root=root) == 1
    assert sample(samples, "kmesh_apply_drift_differences_total", pin_root=root) == 4
    assert sample(samples, "kmesh_apply_config_errors_total", pin_root=root) == 1
    assert sample(samples, "kmesh_apply_last_drift_timestamp_seconds", pin_root=root) == pytest.approx(time.time(), abs=60)
    lint = promtool("check", "metrics", input=text)
    assert lint.returncode == 0 and not (lint.stdout + lint.stderr).strip(), lint.stdout + lint.stderr


def test_healthz_says_why(pin_root: Path) -> None:
    health = Health()
    source = Snapshot(str(pin_root), [], health)
    with start_server("127.0.0.1:0", source, PrometheusRecorder(str(pin_root))) as server:
        with urllib.request.urlopen(server.url + "/healthz", timeout=30) as r:
            assert (r.status, r.read()) == (200, b"ok\n")
        health.ok = False
        health.reasons = ["the last apply failed: map 'full': update: E2BIG", "the configuration is broken: maps.yaml:3"]
        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(server.url + "/healthz", timeout=30)
        assert e.value.code == 503
        assert e.value.read().decode().splitlines() == health.reasons
        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(server.url + "/nothing", timeout=30)
        assert e.value.code == 404


def test_addresses() -> None:
    assert parse_address("127.0.0.1:9464") == ("127.0.0.1", 9464)
    assert parse_address("[::1]:0") == ("::1", 0)
    assert parse_address(":9464") == ("0.0.0.0", 9464)
    for bad in ("9464", "localhost:http", "127.0.0.1:70000", ""):
        with pytest.raises(KmeshError, match="expected HOST:PORT"):
            parse_address(bad)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        with pytest.raises(KmeshError, match="cannot serve metrics on 127.0.0.1:"):
            start_server(f"127.0.0.1:{taken.getsockname()[1]}", Snapshot("/sys/fs/bpf/x"), PrometheusRecorder("/sys/fs/bpf/x"))
    with pytest.raises(ValueError, match="outcome 'done'"):
        PrometheusRecorder("/sys/fs/bpf/x").reconcile("done", 1.0)


def read_metrics(path: Path, root: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    samples = {}
    for family in text_string_to_metric_families(path.read_text()):
        for s in family.samples:
            assert s.labels["pin_root"] == root
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return samples


def test_metrics_file_across_runs(pin_root: Path, tmp_path: Path) -> None:
    root = str(pin_root)
    config = tmp_path / "maps.yaml"
    config.write_text(CONFIG)
    prom = tmp_path / "textfile" / "kmesh.prom"
    prom.parent.mkdir()

    def kmesh_apply(*args: str, rc: int = 0) -> dict:
        res = run_cli("kmesh-apply", *args, "--pin-root", root, "--metrics-file", str(prom))
        assert res.returncode == rc, res.stdout + res.stderr
        assert "Traceback" not in res.stderr
        assert [p.name for p in prom.parent.iterdir()] == ["kmesh.prom"]  # nothing left aside
        return read_metrics(prom, root)

    first = kmesh_apply("apply", str(config), "--auto-approve")
    assert sample(first, "kmesh_apply_reconciles_total", outcome="success", pin_root=root) == 1
    assert sample(first, "kmesh_apply_reconcile_duration_seconds_count", pin_root=root) == 1
    assert sample(first, "kmesh_apply_healthy", pin_root=root) == 1
    succeeded = sample(first, "kmesh_apply_last_success_timestamp_seconds", pin_root=root)
    assert succeeded == pytest.approx(time.time(), abs=60)
    for name, (entries, max_entries, memlock) in bpftool_usage(pin_root).items():
        assert sample(first, "kmesh_apply_map_entries", map=name, pin_root=root) == entries
        assert sample(first, "kmesh_apply_map_max_entries", map=name, pin_root=root) == max_entries
        assert sample(first, "kmesh_apply_map_memlock_bytes", map=name, pin_root=root) == memlock
    lint = promtool("check", "metrics", input=prom.read_text())
    assert lint.returncode == 0 and not (lint.stdout + lint.stderr).strip(), lint.stdout + lint.stderr

    again = kmesh_apply("apply", str(config), "--auto-approve")  # nothing to do: a noop, counters continue
    assert sample(again, "kmesh_apply_reconciles_total", outcome="success", pin_root=root) == 1
    assert sample(again, "kmesh_apply_reconciles_total", outcome="noop", pin_root=root) == 1
    assert sample(again, "kmesh_apply_reconcile_duration_seconds_count", pin_root=root) == 2

    # Someone else deletes an entry: plan finds drift (and exits 2), apply corrects it.
    subprocess.run(["bpftool", "map", "delete", "pinned", f"{root}/sparse", "key", "1", "0", "0", "0"], check=True)
    drift = kmesh_apply("plan", str(config), "--detailed-exitcode", rc=2)
    assert sample(drift, "kmesh_apply_drift_events_total", pin_root=root) == 1
    assert sample(drift, "kmesh_apply_drift_differences_total", pin_root=root) == 1
    assert sample(drift, "kmesh_apply_map_entries", map="sparse", pin_root=root) == 2
    assert sample(drift, "kmesh_apply_last_drift_timestamp_seconds", pin_root=root) > succeeded
    assert sample(drift, "kmesh_apply_reconcile_duration_seconds_count", pin_root=root) == 2  # a plan is no reconcile
    fixed = kmesh_apply("apply", str(config), "--auto-approve")
    assert sample(fixed, "kmesh_apply_reconciles_total", outcome="success", pin_root=root) == 2
    assert (sample(fixed, "kmesh_apply_last_success_timestamp_seconds", pin_root=root)
            > sample(fixed, "kmesh_apply_last_drift_timestamp_seconds", pin_root=root))

    # A broken configuration: an error and a config error; the last success is kept; unhealthy.
    config.write_text(CONFIG.replace("max_entries: 10", "max_entries: ten"))
    broken = kmesh_apply("apply", str(config), "--auto-approve", rc=1)
    assert sample(broken, "kmesh_apply_config_errors_total", pin_root=root) == 1
    assert sample(broken, "kmesh_apply_reconciles_total", outcome="error", pin_root=root) == 1
    assert sample(broken, "kmesh_apply_healthy", pin_root=root) == 0
    assert (sample(broken, "kmesh_apply_last_success_timestamp_seconds", pin_root=root)
            == sample(fixed, "kmesh_apply_last_success_timestamp_seconds", pin_root=root))
    assert sample(broken, "kmesh_apply_map_entries", map="sparse", pin_root=root) == 3


def test_show_usage(applied: Path, pin_root: Path) -> None:
    res = run_cli("kmesh-apply", "show", "--usage", "--json", "--pin-root", str(pin_root))
    assert res.returncode == 0, res.stderr
    doc = json.loads(res.stdout)
    assert doc["pin_root"] == str(pin_root)
    seen = bpftool_usage(pin_root)
    assert [(m["name"], m["entries"], m["max_entries"], m["memlock_bytes"]) for m in doc["maps"]] == sorted(
        ((n, *u) for n, u in seen.items()), key=lambda r: (-r[1] / r[2], r[0]))
    assert [m["name"] for m in doc["maps"]] == ["full", "services", "counters", "routes", "sparse"]
    assert doc["maps"][0]["fill"] == 0.9 and doc["maps"][0]["kind"] == "inner" and doc["maps"][1]["kind"] == "outer"

    res = run_cli("kmesh-apply", "show", "--usage", "--pin-root", str(pin_root))
    assert res.returncode == 0, res.stderr
    lines = res.stdout.splitlines()
    assert lines[0].split() == ["map", "kind", "type", "entries", "max_entries", "fill", "memlock", "programs"]
    assert lines[1].split()[:6] == ["full", "inner", "hash", "9", "10", "90.0%"] and lines[1].split()[6] == "!"
    assert lines[-1].startswith("5 maps, 15 entries in inner maps, ")


def test_plan_warns_of_nearly_full_maps(pin_root: Path, tmp_path: Path) -> None:
    config = tmp_path / "maps.yaml"
    config.write_text(CONFIG.replace("entries: {1: full, 2: full}", "entries: {1: full, 2: full, 3: full, 4: full}"))
    res = run_cli("kmesh-apply", "plan", str(config), "--pin-root", str(pin_root))
    assert res.returncode == 0, res.stderr
    warnings = [line for line in res.stdout.splitlines() if line.startswith("Warning:")]
    assert warnings == [
        "Warning: inner map 'full' would be 90% full (9 of 10 entries); raise its max_entries before it fills up",
        "Warning: outer map 'services' would be 100% full (4 of 4 slots); raise its max_entries before it fills up",
    ]
    api.converge(api.load_config([config]), str(pin_root))
    res = run_cli("kmesh-apply", "plan", str(config), "--pin-root", str(pin_root), "--json")
    assert json.loads(res.stdout)["warnings"] == [w.removeprefix("Warning: ") for w in warnings]
    res = run_cli("kmesh-apply", "plan", str(config), "--pin-root", str(pin_root))  # no changes: still warned
    assert res.stdout.splitlines() == [*warnings, "No changes. The pin root matches the configuration."]


FULL_ARRAYS = """
inner_maps:
  maglev:
    type: array
    key: u32
    value: u32[4]
    max_entries: 1
    entries: {0: [1, 2, 3, 4]}
  per-cpu:
    type: percpu_array
    key: u32
    value: u64
    max_entries: 2
    entries: {0: 1, 1: 2}
outer_maps:
  by-index:
    type: array_of_maps
    key: u32
    max_entries: 1
    inner_map: maglev
    entries: {0: maglev}
"""


def test_arrays_are_never_full(pin_root: Path, tmp_path: Path) -> None:
    """Every index of an array exists, so a one-entry array holding its one entry (Kmesh's maglev inner
    map) is not "full": no plan warning, no `!` in show --usage, no fill ratio for the alerts."""
    config = tmp_path / "arrays.yaml"
    config.write_text(FULL_ARRAYS)
    res = run_cli("kmesh-apply", "plan", str(config), "--pin-root", str(pin_root), "--json")
    assert res.returncode == 0 and json.loads(res.stdout)["warnings"] == [], res.stdout + res.stderr
    api.converge(api.load_config([config]), str(pin_root))
    res = run_cli("kmesh-apply", "plan", str(config), "--pin-root", str(pin_root))
    assert res.stdout.splitlines() == ["No changes. The pin root matches the configuration."], res.stdout
    res = run_cli("kmesh-apply", "show", "--usage", "--pin-root", str(pin_root))
    rows = {line.split()[0]: line.split() for line in res.stdout.splitlines()[1:-1]}
    assert [rows[n][5] for n in ("maglev", "per-cpu", "by-index")] == ["100.0%"] * 3 and "!" not in res.stdout
    doc = json.loads(run_cli("kmesh-apply", "show", "--usage", "--json", "--pin-root", str(pin_root)).stdout)
    assert {m["name"]: (m["fill"], m["can_fill"]) for m in doc["maps"]} == {
        "maglev": (1.0, False), "per-cpu": (1.0, False), "by-index": (1.0, False)}
    root = str(pin_root)
    with start_server("127.0.0.1:0", Snapshot(root, api.usage(root)), PrometheusRecorder(root)) as server:
        samples = scrape(server.url + "/metrics")
    assert not [key for key in samples if key[0] == "kmesh_apply_map_fill_ratio"]
    assert sample(samples, "kmesh_apply_map_entries", map="maglev", pin_root=root) == 1


def test_example_rules_pass_promtool() -> None:
    for args in (("check", "rules", "alerts.yml"), ("test", "rules", "alerts.test.yml"),
                 ("check", "config", "prometheus.yml")):
        res = promtool(*args, cwd=MONITORING)
        assert res.returncode == 0, res.stdout + res.stderr
        assert "SUCCESS" in res.stdout


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _query(base: str, expr: str) -> list[dict]:
    url = f"{base}/api/v1/query?{urllib.parse.urlencode({'query': expr})}"
    body = json.loads(urllib.request.urlopen(url, timeout=10).read())
    assert body["status"] == "success", body
    return body["data"]["result"]


def test_real_prometheus_scrapes_the_endpoint(applied: Path, pin_root: Path, tmp_path: Path) -> None:
    if shutil.which("prometheus") is None:
        pytest.fail("prometheus is not installed: run scripts/setup")
    root = str(pin_root)
    usage = api.usage(root)
    recorder = PrometheusRecorder(root)
    recorder.reconcile("success", 0.02)
    with start_server("127.0.0.1:0", Snapshot(root, usage, Health(last_success=1700000000.0)), recorder) as server:
        host, port = server.address
        (tmp_path / "prometheus.yml").write_text(
            "global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
            f"scrape_configs:\n  - job_name: kmesh-apply\n    static_configs: [{{targets: ['{host}:{port}']}}]\n")
        web = f"127.0.0.1:{_free_port()}"
        log = (tmp_path / "prometheus.log").open("w")
        prom = subprocess.Popen(["prometheus", f"--config.file={tmp_path / 'prometheus.yml'}",
                                 f"--storage.tsdb.path={tmp_path / 'data'}", f"--web.listen-address={web}"],
                                stdout=log, stderr=subprocess.STDOUT)
        try:
            base = f"http://{web}"
            deadline = time.monotonic() + 120  # a wait for start-up and the first scrape, not a timing check
            result: list[dict] = []
            while time.monotonic() < deadline and prom.poll() is None:
                try:
                    result = _query(base, "kmesh_apply_map_entries")
                except (urllib.error.URLError, ConnectionError):
                    result = []
                if len(result) == len(usage):
                    break
                time.sleep(0.5)
            assert len(result) == len(usage), (tmp_path / "prometheus.log").read_text()[-3000:]
            got = {r["metric"]["map"]: float(r["value"][1]) for r in result}
            assert got == {u.name: u.entries for u in usage} and got["full"] == 9
            assert {r["metric"]["pin_root"] for r in result} == {root}
            memlock = {r["metric"]["map"]: float(r["value"][1]) for r in _query(base, "kmesh_apply_map_memlock_bytes")}
            assert memlock == {u.name: u.memlock_bytes for u in usage}
            fill = _query(base, "kmesh_apply_map_fill_ratio >= 0.9")
            assert [r["metric"]["map"] for r in fill] == ["full"]
            [success] = _query(base, 'kmesh_apply_reconciles_total{outcome="success"}')
            assert success["value"][1] == "1"
            [up] = _query(base, 'up{job="kmesh-apply"}')
            assert up["value"][1] == "1"
        finally:
            prom.terminate()
            try:
                prom.wait(timeout=30)
            except subprocess.TimeoutExpired:
                prom.kill()
                prom.wait()
            log.close()


def test_capacity_warnings_count_like_the_metrics() -> None:
    """Pure planner check: arrays cannot fill up (all indexes used is not full); below 90% is quiet."""
    from kmesh_apply.plan.planner import make_plan
    from kmesh_apply.state import LiveState

    cfg = api.load_config(inline="""
inner_maps:
  zeros: {type: array, key: u32, value: u32, max_entries: 4, entries: {0: 0, 1: 0, 2: 0, 3: 1}}
  every_index: {type: array, key: u32, value: u32, max_entries: 4, entries: {0: 1, 1: 1, 2: 1, 3: 1}}
  busy: {type: hash, key: u32, value: u32, max_entries: 4, entries: {0: 1, 1: 1, 2: 1, 3: 1}}
  quiet: {type: hash, key: u32, value: u32, max_entries: 10, entries: {0: 1, 1: 1, 2: 1, 3: 1, 4: 1, 5: 1, 6: 1, 7: 1}}
""")
    assert make_plan(cfg, LiveState("/sys/fs/bpf/kmesh-x")).warnings == [
        "inner map 'busy' would be 100% full (4 of 4 entries); raise its max_entries before it fills up"]


def test_a_scrape_follows_the_source(monkeypatch: pytest.MonkeyPatch) -> None:
    """The per-map families are reused between scrapes only while the usage is unchanged."""
    from dataclasses import replace

    from kmesh_apply import metrics
    from kmesh_apply.metrics import Scrape
    from kmesh_apply.monitor import MapUsage

    formatted = []
    format_maps = metrics.map_families
    monkeypatch.setattr(metrics, "map_families", lambda root, usage: formatted.append(len(usage)) or format_maps(root, usage))

    root = "/sys/fs/bpf/kmesh-x"
    source = Snapshot(root, [MapUsage("a", "inner", "hash", 1, 1, 4, 100)])
    scrape = Scrape(source, PrometheusRecorder(root))

    def entries() -> float:
        samples = {s.name: s.value for f in text_string_to_metric_families(scrape().decode()) for s in f.samples
                   if s.labels.get("map") == "a"}
        return samples["kmesh_apply_map_entries"]

    assert entries() == 1 and entries() == 1 and formatted == [1], "unchanged usage: formatted once"
    source.maps[0] = replace(source.maps[0], entries=3)  # the same list, changed in place
    assert entries() == 3 and formatted == [1, 1]
    source.maps = [MapUsage("a", "inner", "hash", 1, 3, 4, 100)]  # an equal list: reused
    assert entries() == 3 and formatted == [1, 1]


def test_metrics_file_in_a_missing_directory(pin_root: Path, tmp_path: Path) -> None:
    res = run_cli("kmesh-apply", "apply", str(REPO / "examples" / "mesh"), "--auto-approve", "--pin-root", str(pin_root),
                  "--metrics-file", str(tmp_path / "nowhere" / "kmesh.prom"))
    assert res.returncode == 1 and "Traceback" not in res.stderr
    assert f"--metrics-file {tmp_path}/nowhere/kmesh.prom: {tmp_path}/nowhere is not a directory" in res.stderr
    assert not pin_root.exists()  # refused before anything was applied


def _on_a_terminal(argv: list[str], columns: int) -> str:
    """What a command prints on a terminal `columns` wide (a pseudo-terminal, as a user's shell has)."""
    import fcntl
    import os
    import pty
    import struct
    import sys
    import termios

    leader, follower = pty.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 24, columns, 0, 0))
    env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES")}
    proc = subprocess.Popen([str(Path(sys.executable).parent / argv[0]), *argv[1:]], stdin=follower, stdout=follower, stderr=follower,
                            env=env, close_fds=True)
    os.close(follower)
    out = b""
    while True:
        try:
            chunk = os.read(leader, 65536)
        except OSError:  # EIO: the command closed the terminal
            break
        if not chunk:
            break
        out += chunk
    proc.wait(timeout=60)
    os.close(leader)
    return re.sub(r"\x1b\[[0-9;]*m", "", out.decode(errors="replace")).replace("\r\n", "\n")


def test_show_usage_never_cuts_a_name_on_a_narrow_terminal(pin_root: Path, tmp_path: Path) -> None:
    long = "backends-" + "x" * 60 + "-end"
    config = tmp_path / "long.yaml"
    config.write_text(f"inner_maps:\n  {long}: {{type: hash, key: u32, value: u32, max_entries: 4, entries: {{1: 1}}}}\n"
                      "  short: {type: hash, key: u32, value: u32, max_entries: 4}\n")
    api.converge(api.load_config([config]), str(pin_root))
    wide = _on_a_terminal(["kmesh-apply", "show", "--usage", "--pin-root", str(pin_root)], 200)
    assert long in wide and "┃ map" in wide  # the table, when it fits
    narrow = _on_a_terminal(["kmesh-apply", "show", "--usage", "--pin-root", str(pin_root)], 80)
    assert long in narrow and "┃ map" not in narrow, narrow  # too wide for the table: plain text, names whole
