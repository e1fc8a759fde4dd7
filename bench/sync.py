"""The synchroniser and `kmesh-apply watch` at Kmesh scale (workload K: 5,000 inner maps x 20
endpoints in a 5,000-slot hash_of_maps), next to a CLI `kmesh-apply apply` of the same change
in the same run.

    .venv/bin/python bench/sync.py [--puts 2000] [--edits 30] [--burst 1000] [--markdown]

Measures: API one-entry put+flush (p50/p99), a one-service change with swap (and how many
slot-update syscalls it makes), one verify(), file save -> visible in the kernel (a poller
reading the map; a directory of per-service files, and the one 6 MB file), a burst of edits
(all applied, how many slot batches, edits/s), and the watcher's RSS. Run as root.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Callable

sys.path.insert(0, str(Path(__file__).resolve().parent))

import workloads  # noqa: E402
from run import fresh_pin_root, kmesh_apply_bin, log  # noqa: E402

from kmesh_apply import Synchroniser, load_config  # noqa: E402
from kmesh_apply.kernel.maps import Map  # noqa: E402
from kmesh_apply.pinroot.reader import read_live  # noqa: E402

WAIT = 120.0
ENDPOINT = re.compile(r"^(      (\d+): \{ip: [\d.]+, port: \d+, weight: )(\d+)\}$", re.M)


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(p / 100 * (len(ordered) - 1))))]


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.3f} ms" if seconds < 0.01 else f"{seconds * 1000:.1f} ms"


def cli_apply(config: Path, root: str, runs: int = 3) -> float:
    """Median wall time of `kmesh-apply apply` (config cache on, as a user's second run finds it)."""
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        subprocess.run([kmesh_apply_bin(), "apply", str(config), "--pin-root", root, "--auto-approve"],
                       check=True, capture_output=True)
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def count_slot_batches(fn: Callable[[], object]) -> tuple[int, int]:
    """(outer-slot update syscalls, slots written) while fn runs, by wrapping the kernel layer's call."""
    calls, slots = [0], [0]
    original = Map.update_slots

    def counted(self: Map, keys: bytes, inners: list) -> None:
        calls[0] += 1
        slots[0] += len(inners)
        original(self, keys, inners)

    Map.update_slots = counted  # type: ignore[method-assign]
    try:
        fn()
    finally:
        Map.update_slots = original  # type: ignore[method-assign]
    return calls[0], slots[0]


# ---- the API ------------------------------------------------------------------------------------


def api_figures(wdir: Path, data: workloads.Data, puts: int, tmp: Path) -> dict[str, str]:
    out: dict[str, str] = {}
    svc = data.inners[data.change_map]
    with fresh_pin_root() as root:
        t = time.perf_counter()
        config = load_config([wdir / "config.yaml"])
        with Synchroniser(root) as sync:
            sync.apply(config)
            out["cold apply through the API (load + apply)"] = ms(time.perf_counter() - t)
            times = []
            for i in range(puts):
                t = time.perf_counter()
                sync.put(svc.name, {0: {"ip": "10.0.0.1", "port": 80, "weight": i % 60000}})
                sync.flush()
                times.append(time.perf_counter() - t)
            out["API one-entry put+flush p50"] = ms(statistics.median(times))
            out["API one-entry put+flush p99"] = ms(pct(times, 99))
            api_one = statistics.median(times)
            service = {k: {"ip": f"10.1.{k}.{i}", "port": 9000 + k, "weight": 1} for k, i in enumerate(range(20))}
            swaps = []
            batches = []
            for i in range(5):
                service = {k: dict(v, weight=i + 2) for k, v in service.items()}
                t = time.perf_counter()
                batches.append(count_slot_batches(lambda: (sync.put(svc.name, service), sync.flush())))
                swaps.append(time.perf_counter() - t)
            out["API one-service change (20 endpoints, swap) p50"] = ms(statistics.median(swaps))
            calls, slots = batches[-1]
            out["slot-update syscalls per one-service change"] = f"{calls} ({slots} slot) = one RCU grace period"
            api_swap = statistics.median(swaps)
            verifies = []
            for _ in range(3):
                t = time.perf_counter()
                assert sync.verify() == []
                verifies.append(time.perf_counter() - t)
            out["verify() (read 5,001 maps, plan, nothing to correct)"] = ms(statistics.median(verifies))
        # The same changes through the CLI, on the same pin root (the synchroniser released its lock).
        one = tmp / "one-entry.yaml"
        text = (wdir / "config.yaml").read_text()
        cli_apply(wdir / "config.yaml", root, runs=1)
        one.write_text(_edit_first_weight(text, svc.name, 7))
        cli_one = cli_apply(one, root, runs=1)
        cli_apply(wdir / "config.yaml", root, runs=1)
        cli_svc = cli_apply(wdir / "change.yaml", root, runs=1)
        out["CLI apply of the one-entry change"] = f"{ms(cli_one)} (API is {cli_one / api_one:.0f}x faster)"
        out["CLI apply of the one-service change"] = f"{ms(cli_svc)} (API is {cli_svc / api_swap:.0f}x faster)"
    return out


def _edit_first_weight(text: str, name: str, weight: int) -> str:
    """`text` with the weight of entry 0 of inner map `name` set to `weight`."""
    start = text.index(f"  {name}:\n")
    m = ENDPOINT.search(text, start)
    assert m is not None and m.group(2) == "0"
    return text[:m.start()] + f"{m.group(1)}{weight}}}" + text[m.end():]


# ---- the watcher -----------------------------------------------------------------------------------


class Watcher:
    def __init__(self, path: Path, root: str):
        self.proc = subprocess.Popen([kmesh_apply_bin(), "watch", str(path), "--pin-root", root, "--log-format",
                                      "json"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        self.events: list[dict] = []
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        for line in self.proc.stderr:  # type: ignore[union-attr]
            if line.startswith("{"):
                self.events.append(json.loads(line))

    def wait(self, cond: Callable[[], bool]) -> None:
        deadline = time.monotonic() + WAIT
        while not cond():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"watch stopped or timed out: {self.events[-3:]}")
            time.sleep(0.002)

    def rss_mb(self) -> float:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        return 0.0

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(timeout=WAIT)


def save(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def weight_of(m: Map) -> int:
    raw = m.lookup((0).to_bytes(4, "little"))
    return int.from_bytes(raw[6:8], "little") if raw else -1


def latencies(path_of: Callable[[int], Path], text_of: Callable[[int], str], root: str, name_of: Callable[[int], str],
              edits: int) -> list[float]:
    """Save edit i (weight of entry 0 = 1000 + i), then poll the inner map until it shows; seconds each."""
    out = []
    for i in range(edits):
        with Map.open_pinned(f"{root}/{name_of(i)}") as m:
            t = time.perf_counter()
            save(path_of(i), _edit_first_weight(text_of(i), name_of(i), 1000 + i))
            deadline = t + WAIT
            while weight_of(m) != 1000 + i:
                if time.perf_counter() > deadline:
                    raise RuntimeError(f"edit {i} never became visible")
            out.append(time.perf_counter() - t)
        time.sleep(0.05)
    return out


def split_per_service(wdir: Path, into: Path) -> dict[str, str]:
    """The K config as one file per inner map plus one for the outer map; returns each service file's text."""
    text = (wdir / "config.yaml").read_text()
    head, outer = text.split("\nouter_maps:\n")
    blocks = re.split(r"(?m)^(?=  \S)", head.split("inner_maps:\n", 1)[1])
    files = {}
    for block in filter(None, blocks):
        name = block.split(":", 1)[0].strip()
        files[name] = "inner_maps:\n" + block
        (into / f"{name}.yaml").write_text(files[name])
    (into / "outer.yaml").write_text("outer_maps:\n" + outer)
    return files


def watch_figures(wdir: Path, data: workloads.Data, edits: int, burst: int, tmp: Path) -> dict[str, str]:
    out: dict[str, str] = {}
    names = [d.name for d in data.inners]
    per_service = tmp / "services"
    per_service.mkdir()
    texts = split_per_service(wdir, per_service)
    with fresh_pin_root() as root:
        t = time.perf_counter()
        w = Watcher(per_service, root)
        try:
            w.wait(lambda: any(e["event"] == "reconcile" for e in w.events))
            out["watch start on 5,001 files (load + cold apply)"] = ms(time.perf_counter() - t)
            lat = latencies(lambda i: per_service / f"{names[i]}.yaml", lambda i: texts[names[i]], root,
                            lambda i: names[i], edits)
            out["save -> visible, directory of per-service files, p50"] = ms(statistics.median(lat))
            out["save -> visible, directory of per-service files, p95"] = ms(pct(lat, 95))
            out["watcher RSS, directory of 5,001 files"] = f"{w.rss_mb():.0f} MB"
            before = len(w.events)
            t = time.perf_counter()
            for i in range(burst):  # two endpoints of each of `burst` services: every edit is a swap
                save(per_service / f"{names[i]}.yaml", _two_endpoint_edit(texts[names[i]], names[i], i))
            last = names[burst - 1]
            w.wait(lambda: _applied_two(root, last, burst - 1))
            elapsed = time.perf_counter() - t
            w.wait(lambda: any(str(per_service / f"{last}.yaml") in e.get("files", []) for e in w.events[before:]))
            passes = [e for e in w.events[before:] if e["event"] == "reconcile"]
            live = read_live(root)
            missing = [n for i, n in enumerate(names[:burst])
                       if int.from_bytes(live.maps[n].entries[(1).to_bytes(4, "little")][6:8], "little") != 2000 + i]
            out[f"burst of {burst} service edits (swaps): applied"] = (
                f"{burst - len(missing)} of {burst} in {elapsed:.2f} s = {burst / elapsed:.0f} edits/s, "
                f"{len(passes)} reconciles, {sum(e['slots_set'] for e in passes)} slots set in {len(passes)} batches")
        finally:
            w.stop()
    one_file = wdir / "config.yaml"
    big = tmp / "big"
    big.mkdir()
    text = one_file.read_text()
    (big / "config.yaml").write_text(text)
    with fresh_pin_root() as root:
        w = Watcher(big / "config.yaml", root)
        try:
            w.wait(lambda: any(e["event"] == "reconcile" for e in w.events))
            lat = []
            for i in range(max(3, edits // 3)):
                name = names[i * 7 % len(names)]
                lat += latencies(lambda _: big / "config.yaml", lambda _: text, root, lambda _: name, 1)
                text = _edit_first_weight(text, name, 1000)
            out[f"save -> visible, one {one_file.stat().st_size / 1e6:.1f} MB file, p50"] = ms(statistics.median(lat))
            out["watcher RSS, one file"] = f"{w.rss_mb():.0f} MB"
        finally:
            w.stop()
    return out


def _two_endpoint_edit(text: str, name: str, i: int) -> str:
    """Entries 0 and 1 of `name` get new weights (a multi-entry change: a swap)."""
    start = text.index(f"  {name}:\n")
    out, pos = [], 0
    for n, m in enumerate(ENDPOINT.finditer(text, start)):
        if n == 2:
            break
        out.append(text[pos:m.start()] + f"{m.group(1)}{(5000 if n == 0 else 2000) + i}}}")
        pos = m.end()
    return "".join(out) + text[pos:]


def _applied_two(root: str, name: str, i: int) -> bool:
    try:
        with Map.open_pinned(f"{root}/{name}") as m:
            raw = m.lookup((1).to_bytes(4, "little"))
    except Exception:  # noqa: BLE001  (the pin is being moved: look again)
        return False
    return raw is not None and int.from_bytes(raw[6:8], "little") == 2000 + i


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--puts", type=int, default=2000)
    ap.add_argument("--edits", type=int, default=30)
    ap.add_argument("--burst", type=int, default=1000)
    ap.add_argument("--markdown", action="store_true")
    args = ap.parse_args()
    wdir = workloads.generate("K", log=log)
    data = workloads.build(workloads.SHAPES["K"])
    figures: dict[str, str] = {}
    with tempfile.TemporaryDirectory(prefix="kmesh-sync-bench-") as tmp:
        os.environ.setdefault("KMESH_APPLY_CACHE_DIR", str(Path(tmp) / "cache"))
        log("API figures")
        figures.update(api_figures(wdir, data, args.puts, Path(tmp)))
        log("watch figures")
        figures.update(watch_figures(wdir, data, args.edits, args.burst, Path(tmp)))
    width = max(map(len, figures))
    if args.markdown:
        print("| figure | value |\n| --- | --- |")
        for k, v in figures.items():
            print(f"| {k} | {v} |")
    else:
        for k, v in figures.items():
            print(f"{k:<{width}}  {v}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
