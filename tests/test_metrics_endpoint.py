"""The metrics endpoint against its network peers (issue 20, item 5): an unprivileged local user floods
`watch --metrics-addr` with half-sent requests, huge headers, idle and trickling connections. The
watcher's threads and memory stay bounded, the peer's connections are cut, and a normal scrape is
still answered; `/healthz` names where a configuration is broken, never what it says."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from conftest import LocalUser
from kmesh_apply import metrics
from kmesh_apply.metrics import PrometheusRecorder, start_server
from kmesh_apply.monitor import Snapshot
from test_watch import MESH, Watch, conf_dir
from test_watch_integration import free_port, get

# The attacker's program: stdlib only, run by the system python as the unprivileged user.
FLOOD = r"""
import json, resource, select, socket, sys, time

host, port, count, mode, hold = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], float(sys.argv[5])
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
socks = {}
poll = select.poll()
for _ in range(count):
    s = socket.socket()
    s.setblocking(False)
    s.connect_ex((host, port))
    socks[s.fileno()] = s
    poll.register(s, select.POLLOUT)
deadline = time.monotonic() + 3
connected = {}
while len(connected) < len(socks) and time.monotonic() < deadline:
    for fd, _ in poll.poll(200):
        s = socks[fd]
        poll.unregister(fd)
        if s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == 0:
            connected[fd] = s
first = {"half": b"GET /metrics HTTP/1.1\r\nHost: x\r\n", "headers": b"GET /metrics HTTP/1.1\r\n",
         "idle": b"", "slow": b"G"}[mode]
writing = mode in ("headers", "slow")
for fd, s in connected.items():
    try:
        s.send(first)
    except OSError:
        pass
    poll.register(fd, select.POLLIN | (select.POLLOUT if writing else 0))
print(json.dumps({"connected": len(connected)}), flush=True)
open_ = dict(connected)
closed_at = []
start = time.monotonic()
filler = b"X-Filler: " + b"a" * 65000 + b"\r\n"


def cut(fd):
    poll.unregister(fd)
    del open_[fd]
    closed_at.append(time.monotonic() - start)


while open_ and time.monotonic() - start < hold:
    for fd, event in poll.poll(500):
        if fd not in open_:
            continue
        s = open_[fd]
        if event & (select.POLLIN | select.POLLHUP | select.POLLERR):
            try:
                data = s.recv(65536)
            except OSError:
                data = b""
            if not data or b"HTTP/1.1 4" in data:
                cut(fd)
                continue
        if event & select.POLLOUT:
            try:
                s.send(filler if mode == "headers" else b"E")
            except BlockingIOError:
                pass
            except OSError:
                cut(fd)
    if mode == "slow":
        time.sleep(0.5)
print(json.dumps({"closed": len(closed_at), "last_closed": max(closed_at, default=None), "open": len(open_)}),
      flush=True)
"""


def _status(pid: int) -> tuple[int, int]:
    """(threads, RSS in kB) of a process."""
    fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines())
    return int(fields["Threads"]), int(fields["VmRSS"].split()[0])


def _flood(user: LocalUser, port: int, count: int, mode: str, hold: float):
    script = user.write(user.home / "flood.py", FLOOD.encode())
    proc = user.start("/usr/bin/python3", str(script), "127.0.0.1", str(port), str(count), mode, str(hold))
    assert proc.stdout is not None
    started = json.loads(proc.stdout.readline() or "{}")
    assert started.get("connected", 0) > 0, proc.stderr.read() if proc.stderr else ""
    return proc, started


def _finished(proc) -> dict:
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    return json.loads(out.decode().splitlines()[-1])


@pytest.fixture
def watched(pin_root: Path, tmp_path: Path):
    """`kmesh-apply watch` serving metrics on a free port: (process, url)."""
    port = free_port()
    w = Watch([conf_dir(tmp_path, "mesh.yaml", MESH.read_text())], pin_root, "--metrics-addr", f"127.0.0.1:{port}")
    try:
        w.wait_for(lambda: w.events("reconcile"), "the first apply")
        yield w, f"http://127.0.0.1:{port}", port
    finally:
        w.stop()


def _scrape(url: str) -> float:
    """Seconds a normal scrape took, answered in full."""
    start = time.monotonic()
    with urllib.request.urlopen(url + "/metrics", timeout=60) as r:
        assert r.status == 200 and b"kmesh_apply_map_entries{" in r.read()
    return time.monotonic() - start


@pytest.mark.parametrize("mode, count", [("half", 1500), ("headers", 50), ("idle", 60)])
def test_a_flood_leaves_the_watcher_bounded(watched, local_user: LocalUser, mode: str, count: int) -> None:
    """http.server held 1,503 threads for 1,500 half-sent requests, and 50 clients sending large headers
    took its RSS from 82 MB to 548 MB. Now: the threads waitress started with, RSS within 40 MB, every
    connection cut by the server, and a scrape answered meanwhile."""
    w, url, port = watched
    _scrape(url)
    threads, rss = _status(w.proc.pid)
    proc, started = _flood(local_user, port, count, mode, hold=metrics.READ_TIMEOUT + metrics.IDLE_TIMEOUT + 15)
    peak_threads, peak_rss = threads, rss
    took = None
    deadline = time.monotonic() + metrics.READ_TIMEOUT + metrics.IDLE_TIMEOUT + 10
    while proc.poll() is None and time.monotonic() < deadline:
        t, r = _status(w.proc.pid)
        peak_threads, peak_rss = max(peak_threads, t), max(peak_rss, r)
        if took is None:
            took = _scrape(url)
        time.sleep(0.2)
    done = _finished(proc)
    assert peak_threads <= threads, f"{peak_threads} threads during the flood, {threads} before"
    assert peak_rss - rss < 40_000, f"RSS grew from {rss} kB to {peak_rss} kB"
    assert took is not None and took < metrics.READ_TIMEOUT + metrics.IDLE_TIMEOUT + 10, took
    assert done["open"] == 0, f"connections the server never cut: {done} (of {started['connected']})"
    assert _scrape(url) < 5


def test_a_trickling_request_is_cut(monkeypatch: pytest.MonkeyPatch, local_user: LocalUser) -> None:
    """A client sending a byte every half second is never idle: it is cut once its request has taken
    READ_TIMEOUT to arrive (slowloris)."""
    monkeypatch.setattr(metrics, "READ_TIMEOUT", 2)
    with start_server("127.0.0.1:0", Snapshot("/sys/fs/bpf/x"), PrometheusRecorder("/sys/fs/bpf/x")) as server:
        proc, _ = _flood(local_user, server.address[1], 5, "slow", hold=30)
        done = _finished(proc)
    assert done["open"] == 0 and done["closed"] == 5, done
    assert done["last_closed"] < 2 + 5, done


def test_healthz_names_the_place_not_the_value(watched, tmp_path: Path) -> None:
    """A broken file: /healthz gives file:line and the kind of problem; the value (a secret, say) only
    goes to the watcher's own log."""
    w, url, _ = watched
    conf = tmp_path / "conf" / "mesh.yaml"
    conf.write_text(MESH.read_text().replace("max_entries: 64", "max_entries: 'db-password=hunter2'", 1))
    assert "db-password=hunter2" in conf.read_text()
    w.wait_for(lambda: get(f"{url}/healthz")[0] == 503, "health to report the broken file")
    body = get(f"{url}/healthz")[1]
    assert "hunter2" not in body, body
    line = next(i for i, text in enumerate(conf.read_text().splitlines(), 1) if "hunter2" in text)
    assert f"{conf}:{line}: map '" in body and "max_entries: wrong type" in body, body
    w.wait_for(lambda: w.events("config-error"), "the log line")
    assert "hunter2" in w.events("config-error")[-1]["message"]  # the operator's own log says what it was
