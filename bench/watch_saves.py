"""`kmesh-apply watch`: how long a save takes to reach the kernel, for each way editors and tools
save a file (issue 21: a file is applied only once its writer is done).

    .venv/bin/python bench/watch_saves.py [--services 50] [--saves 30] [--markdown] [--kmesh-apply PATH]

A directory of `--services` per-service files (one inner map of 4 endpoints each) is watched;
each save changes one endpoint's weight, and a poller reading the inner map with
`bpf_map_lookup_elem` times it from just before the save until the new value is seen:

- atomic: written aside, then renamed over the file (what Kubernetes, Ansible, controllers and
  most editors do): complete at once, applied at once;
- in place: truncated and written through one open file, then closed (`echo >`, scripts);
- vim: the file renamed to `file~`, then a new file written (vim's default with a backup).
Run as root.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

sys.path.insert(0, str(Path(__file__).resolve().parent))

import run  # noqa: E402
from run import fresh_pin_root, log  # noqa: E402
from sync import Watcher, ms, pct  # noqa: E402

from kmesh_apply.kernel.maps import Map  # noqa: E402

WAIT = 60.0


def service(i: int, weight: int) -> str:
    lines = "".join(f"      {n}: {{ip: 10.{i // 250}.{i % 250}.{n}, port: 8080, weight: {weight if n == 0 else 1}}}\n"
                    for n in range(4))
    return (f"inner_maps:\n  svc-{i}:\n    type: hash\n    key: u32\n"
            f"    value: {{struct: [{{ip: ipv4}}, {{port: be16}}, {{weight: u16}}]}}\n"
            f"    max_entries: 16\n    entries:\n{lines}")


def atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def in_place(path: Path, text: str) -> None:
    with open(path, "w") as f:
        f.write(text)


def vim(path: Path, text: str) -> None:
    backup = path.with_name(path.name + "~")
    os.replace(path, backup)
    path.write_text(text)
    backup.unlink()


SAVES: dict[str, Callable[[Path, str], None]] = {"atomic": atomic, "in place": in_place, "vim": vim}


def weight(m: Map) -> int:
    raw = m.lookup((0).to_bytes(4, "little"))
    return int.from_bytes(raw[6:8], "little") if raw else -1


def latencies(conf: Path, root: str, save: Callable[[Path, str], None], services: int, saves: int,
              base: int) -> list[float]:
    out = []
    for n in range(saves):
        i, want = n % services, base + n
        with Map.open_pinned(f"{root}/svc-{i}") as m:
            t = time.perf_counter()
            save(conf / f"svc-{i}.yaml", service(i, want))
            while weight(m) != want:
                if time.perf_counter() > t + WAIT:
                    raise RuntimeError(f"save {n} never became visible")
            out.append(time.perf_counter() - t)
        time.sleep(0.1)  # saves apart, as people and controllers make them
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--services", type=int, default=50)
    ap.add_argument("--saves", type=int, default=30)
    ap.add_argument("--markdown", action="store_true")
    ap.add_argument("--kmesh-apply", help="the kmesh-apply to run watch with (another build, for a before/after)")
    args = ap.parse_args()
    run._kmesh_apply_override = args.kmesh_apply
    rows = []
    with tempfile.TemporaryDirectory(prefix="kmesh-watch-saves-") as tmp, fresh_pin_root() as root:
        os.environ.setdefault("KMESH_APPLY_CACHE_DIR", str(Path(tmp) / "cache"))
        conf = Path(tmp) / "conf"
        conf.mkdir()
        for i in range(args.services):
            (conf / f"svc-{i}.yaml").write_text(service(i, 1))
        w = Watcher(conf, root)
        try:
            w.wait(lambda: any(e["event"] == "reconcile" for e in w.events))
            for k, (name, save) in enumerate(SAVES.items()):
                log(f"{args.saves} saves, {name}")
                lat = latencies(conf, root, save, args.services, args.saves, 1000 * (k + 1))
                rows.append((name, ms(statistics.median(lat)), ms(pct(lat, 95))))
        finally:
            w.stop()
    if args.markdown:
        print("| save | p50 | p95 |\n| --- | --- | --- |")
        for row in rows:
            print(f"| {' | '.join(row)} |")
    else:
        for name, p50, p95 in rows:
            print(f"{name:<10} p50 {p50:>10}  p95 {p95:>10}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
