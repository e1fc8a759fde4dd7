"""What a Prometheus scrape costs at Kmesh scale (issue 13): workload K (5,001 maps) applied to
a fresh pin root, served by `metrics.start_server` in a child process from a snapshot of its
usage (as the synchroniser's cache would hold it), scraped over HTTP.

Measured in the same run:
- a scrape of /metrics (target: <= 50 ms), and the bpf() calls the serving process makes
  while it is scraped (strace attached to it; target: none); once with the maps unchanged
  between scrapes (the per-map families are reused), once with a map changed before every
  scrape (everything formatted again: the worst case);
- walking the maps instead, as a scrape that reads the kernel would (Kmesh's
  `kmesh_map_entry_count` iterates each map): `api.usage`, every map's entries and memlock;
- prometheus_client's generic text writer on the same per-map samples (what metrics.py's
  direct writer replaces).

Usage (root, after ./scripts/setup): .venv/bin/python bench/scrape.py [--runs N] [--markdown]
"""

from __future__ import annotations

import argparse
import http.client
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))

import run as bench_run  # noqa: E402  (bench/ is not a package)
import workloads  # noqa: E402

TARGET_SECONDS = 0.050


def serve(pin_root: str, changing: bool) -> None:
    """The child: snapshot the pin root's usage once, serve it, print the port, run until stdin
    closes. `changing`: one map gains an entry before every scrape, as if the cache had moved."""
    from dataclasses import replace

    from kmesh_apply import api
    from kmesh_apply.metrics import PrometheusRecorder, start_server
    from kmesh_apply.monitor import Health, MapUsage, Snapshot

    class Changing(Snapshot):
        def usage(self) -> list[MapUsage]:
            self.maps[-1] = replace(self.maps[-1], entries=self.maps[-1].entries + 1)
            return self.maps

    source = (Changing if changing else Snapshot)(pin_root, api.usage(pin_root), Health(last_success=time.time()))
    recorder = PrometheusRecorder(pin_root)
    recorder.reconcile("success", 1.2)
    with start_server("127.0.0.1:0", source, recorder) as server:
        print(server.address[1], flush=True)
        sys.stdin.read()


def scrape(port: int) -> tuple[float, int]:
    """One scrape on a new connection, as Prometheus makes it: (seconds, bytes)."""
    start = time.perf_counter()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    conn.request("GET", "/metrics", headers={"Accept": "text/plain"})
    body = conn.getresponse().read()
    conn.close()
    return time.perf_counter() - start, len(body)


def bpf_calls_while_scraped(pid: int, port: int, scrapes: int) -> int:
    """bpf() calls of process `pid` (all threads) during `scrapes` scrapes, counted by strace -p."""
    with tempfile.NamedTemporaryFile("r", suffix=".strace") as out:
        tracer = subprocess.Popen(["strace", "-f", "-c", "-e", "trace=bpf", "-o", out.name, "-p", str(pid)],
                                  stderr=subprocess.PIPE, text=True)
        assert tracer.stderr is not None
        while "attached" not in tracer.stderr.readline():  # one line per thread attached
            pass
        time.sleep(0.5)  # the remaining threads' attach lines
        for _ in range(scrapes):
            scrape(port)
        tracer.send_signal(signal.SIGINT)
        tracer.wait()
        for line in out.read().splitlines():
            parts = line.split()
            if parts and parts[-1] == "total":
                return int(parts[3])
    return 0


def generic_writer_seconds(pin_root: str, usage: list) -> float:
    """prometheus_client's generate_latest over the same four per-map families."""
    from prometheus_client import generate_latest
    from prometheus_client.core import GaugeMetricFamily

    class Collector:
        def collect(self):
            for name, value in (("entries", lambda u: u.entries), ("max_entries", lambda u: u.max_entries),
                                ("fill_ratio", lambda u: u.fill), ("memlock_bytes", lambda u: u.memlock_bytes)):
                family = GaugeMetricFamily(f"kmesh_apply_map_{name}", name, labels=["pin_root", "map"])
                for u in usage:
                    family.add_metric([pin_root, u.name], value(u))
                yield family

    start = time.perf_counter()
    generate_latest(Collector())  # type: ignore[arg-type]
    return time.perf_counter() - start


def median_of(runs: int, fn) -> float:
    return statistics.median(fn() for _ in range(runs))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=20, help="timed scrapes (the slower competitors run 3 times)")
    parser.add_argument("--markdown", action="store_true", help="print the table as markdown, for bench/RESULTS.md")
    parser.add_argument("--serve", metavar="PIN_ROOT", help=argparse.SUPPRESS)
    parser.add_argument("--changing", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(args.serve, args.changing)
        return 0

    from kmesh_apply import api

    wdir = workloads.generate("K", log=bench_run.log)
    with bench_run.fresh_pin_root() as root:
        bench_run.log("applying K (5,000 inner maps + one outer map)")
        api.converge(api.load_config([wdir / "config.yaml"]), root)
        steady, size, steady_calls = scrapes(root, args.runs, changing=False)
        changed, _, changed_calls = scrapes(root, args.runs, changing=True)
        bench_run.log("walking the maps and the generic writer")
        walk = median_of(3, lambda: _timed(lambda: api.usage(root)))
        usage = api.usage(root)
        generic = median_of(3, lambda: generic_writer_seconds(root, usage))
        walk_calls, _ = bench_run.count_bpf_syscalls(
            [sys.executable, "-c", f"from kmesh_apply import api; api.usage({root!r})"])

    def verdict(seconds: float, calls: int) -> str:
        return (f"{'met' if seconds <= TARGET_SECONDS else 'NOT MET'}: <= 50 ms; "
                f"{'met' if calls == 0 else 'NOT MET'}: no bpf() call")

    rows = [
        ("scrape of /metrics, maps unchanged since the last scrape", steady, f"{steady_calls} in {args.runs} scrapes",
         verdict(steady, steady_calls)),
        ("scrape of /metrics, a map changed before every scrape", changed, f"{changed_calls} in {args.runs} scrapes",
         verdict(changed, changed_calls)),
        ("walking the maps (api.usage: entries + memlock of each)", walk, f"{walk_calls} per walk",
         f"{walk / changed:.1f}x the changed scrape"),
        ("prometheus_client's generate_latest, per-map families only", generic, "0",
         f"{generic / changed:.1f}x the changed scrape"),
    ]
    entries = sum(u.entries for u in usage if u.kind == "inner")
    print(f"Workload K: {len(usage)} maps, {entries:,} entries in inner maps; /metrics is {size:,} bytes "
          f"({args.runs} scrapes, median).")
    if args.markdown:
        print("\n| what | median | bpf() calls | target / ratio |\n|---|---|---|---|")
        for what, t, calls, note in rows:
            print(f"| {what} | {t * 1000:.1f} ms | {calls} | {note} |")
    else:
        for what, t, calls, note in rows:
            print(f"{what:62} {t * 1000:8.1f} ms  bpf(): {calls:24} {note}")
    met = max(steady, changed) <= TARGET_SECONDS and steady_calls == changed_calls == 0
    return 0 if met else 1


def scrapes(pin_root: str, runs: int, changing: bool) -> tuple[float, int, int]:
    """Serve the pin root from a child; (median seconds of `runs` scrapes, bytes, bpf() calls while scraped)."""
    argv = [sys.executable, __file__, "--serve", pin_root, *(["--changing"] if changing else [])]
    child = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                             env=dict(os.environ, PYTHONDONTWRITEBYTECODE="1"))
    try:
        assert child.stdout is not None and child.stdin is not None
        port = int(child.stdout.readline())
        scrape(port)  # warm up
        timings = [scrape(port) for _ in range(runs)]
        calls = bpf_calls_while_scraped(child.pid, port, runs)
    finally:
        if child.stdin:
            child.stdin.close()
        child.wait()
    return statistics.median(t for t, _ in timings), timings[0][1], calls


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


if __name__ == "__main__":
    sys.exit(main())
