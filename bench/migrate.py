"""Migration of a large map (issue 23): `kmesh-apply apply` of an upgrade that changes a map's layout,
against the C floor for moving the same entries (bench/c/migrate_floor.c: one batch read of the old
map, one batch write of the new one), with kmesh-apply's peak RSS.

    .venv/bin/python bench/migrate.py [--entries N] [--runs R] [--only E,S]

Workloads (N entries each, default 1,000,000):
  E  Kmesh's endpoint map at 63920e72: the key {service_id, backend_index} gains `prio` (default 6),
     8 -> 12 bytes; value u32. Every key is converted (a field inserted: two byte runs per key).
  S  Kmesh's service map at 9eab2f91 -> today: service_value loses lb_strict_prio, 136 -> 132 bytes
     (two byte runs per value); key u32.
Per run: a fresh pin root holding the old map (created by kmesh-apply with manage_entries: none,
filled through the kernel layer, untimed), then the timed apply of the new configuration as a
process (start to exit: plan, which converts once to count and check, then the apply's read,
conversion, write and second pass). Also reported: the conversion alone in-process, and the
window the apply measured (second pass's read to the new map in place).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import struct
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from kmesh_apply.ctype import parse_type  # noqa: E402
from kmesh_apply.convert import conversion  # noqa: E402
from kmesh_apply.entries import Entries  # noqa: E402
from kmesh_apply.kernel.maps import Map  # noqa: E402

FLOOR_SOURCE = REPO / "bench" / "c" / "migrate_floor.c"
FLOOR = REPO / "bench" / "bin" / "migrate_floor"
IP = {"union": [{"ip4": "u32"}, {"ip6": "u32[4]"}]}
SERVICE_OLD = {"struct": [{"prio_endpoint_count": "u32[7]"}, {"lb_policy": "u32"}, {"lb_strict_prio": "u32"},
                          {"service_port": "u32[10]"}, {"target_port": "u32[10]"}, {"wp_addr": IP},
                          {"waypoint_port": "u32"}], "packed": True}
SERVICE_NEW = {"struct": [s for s in SERVICE_OLD["struct"] if "lb_strict_prio" not in s], "packed": True}
WORKLOADS = {
    "E": ({"struct": [{"service_id": "u32"}, {"backend_index": "u32"}]}, "u32",
          {"struct": [{"service_id": "u32"}, {"prio": "u32"}, {"backend_index": "u32"}]}, "u32", "defaults: {prio: 6}"),
    "S": ("u32", SERVICE_OLD, "u32", SERVICE_NEW, ""),
}


def config(key: object, value: object, n: int, migrate: str) -> str:
    block = f"    migrate: {{{migrate}}}\n" if migrate else ""
    return (f"maps:\n  big:\n    type: hash\n    key: {json.dumps(key)}\n    value: {json.dumps(value)}\n"
            f"    max_entries: {n}\n    flags: [no_prealloc]\n    manage_entries: none\n{block}")


def entries(key: object, value: object, n: int) -> Entries:
    """n distinct keys (i in the first 4 bytes, spread over the fields) and values holding i."""
    ks, vs = parse_type(key).size, parse_type(value).size
    keys = bytearray(ks * n)
    values = bytearray(vs * n)
    column = struct.pack(f"<{n}I", *range(n))
    for buf, size in ((keys, ks), (values, vs)):
        view, src = memoryview(buf).cast("I"), memoryview(column).cast("I")
        view[0::size // 4] = src
    return Entries(ks, vs, bytes(keys), bytes(values))


def run(argv: list[str], env: dict[str, str]) -> tuple[float, int, str]:
    """Wall time, peak RSS (KB, GNU time) and stdout of one command."""
    out = tempfile.NamedTemporaryFile("r", suffix=".time")
    start = time.monotonic()
    done = subprocess.run(["/usr/bin/time", "-f", "%M", "-o", out.name, *argv], capture_output=True, text=True, env=env)
    elapsed = time.monotonic() - start
    if done.returncode:
        raise RuntimeError(f"{' '.join(argv)} failed: {done.stderr.strip()}")
    return elapsed, int(out.read().split()[-1]), done.stdout


def bench(name: str, n: int, runs: int, tmp: Path) -> dict[str, object]:
    old_key, old_value, new_key, new_value, migrate = WORKLOADS[name]
    exe = str(Path(sys.executable).parent / "kmesh-apply")
    env = dict(os.environ, KMESH_APPLY_CACHE_DIR="off")
    old_cfg, new_cfg = tmp / f"{name}-old.yaml", tmp / f"{name}-new.yaml"
    old_cfg.write_text(config(old_key, old_value, n, ""))
    new_cfg.write_text(config(new_key, new_value, n, migrate))
    data = entries(old_key, old_value, n)
    times, rss, windows = [], [], []
    for _ in range(runs):
        root = Path(f"/sys/fs/bpf/kmesh-bench-migrate-{uuid.uuid4().hex[:8]}")
        try:
            subprocess.run([exe, "apply", str(old_cfg), "--pin-root", str(root), "--auto-approve"], check=True,
                           capture_output=True, env=env)
            with Map.open_pinned(str(root / "big")) as m:
                m.update_batch(data.keys_buffer, data.values_buffer, n)
            elapsed, peak, out = run([exe, "apply", str(new_cfg), "--pin-root", str(root), "--auto-approve"], env)
            window = re.search(r"last ([0-9.]+) ms before the switch", out)
            with Map.open_pinned(str(root / "big")) as m:
                assert len(m.items()) == n, "the migrated map does not hold every entry"
            times.append(elapsed)
            rss.append(peak / 1024)
            windows.append(float(window.group(1)) if window else float("nan"))
        finally:
            shutil.rmtree(root, ignore_errors=True)
    conv = conversion(parse_type(old_key), parse_type(new_key), parse_type(old_value), parse_type(new_value),
                      {"prio": 6} if name == "E" else None)
    start = time.monotonic()
    conv.convert(data, n)
    alone = time.monotonic() - start
    sizes = [str(parse_type(t).size) for t in (old_key, old_value, new_key, new_value)]
    floors = [tuple(map(float, subprocess.run([str(FLOOR), str(n), *sizes], check=True, capture_output=True,
                                                text=True).stdout.split())) for _ in range(runs)]
    read, write = statistics.median(f[0] for f in floors), statistics.median(f[1] for f in floors)
    apply_s = statistics.median(times)
    return {"workload": name, "entries": n, "apply": apply_s, "rss": max(rss), "read": read, "write": write,
            "to_write": apply_s / write, "to_floor": apply_s / (read + write), "convert": alone,
            "window_ms": statistics.median(windows), "layout": conv.text()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--entries", type=int, default=1_000_000)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--only", default="E,S")
    args = p.parse_args()
    FLOOR.parent.mkdir(exist_ok=True)
    subprocess.run(["cc", "-O2", "-o", str(FLOOR), str(FLOOR_SOURCE), "-lbpf"], check=True)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.only.split(","):
            print(f"migrating {name} ({args.entries:,} entries, {args.runs} runs)...", file=sys.stderr)
            rows.append(bench(name, args.entries, args.runs, Path(tmp)))
    print("| workload | layout change | entries | kmesh-apply apply (s) | peak RSS (MB) | C read (s) | C write (s) "
          "| apply / C write | apply / C read+write | conversion alone (s) | window (ms) |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['workload']} | {r['layout']} | {r['entries']:,} | {r['apply']:.2f} | {r['rss']:.0f} | "
              f"{r['read']:.2f} | {r['write']:.2f} | {r['to_write']:.2f}x | {r['to_floor']:.2f}x | "
              f"{r['convert']:.2f} | {r['window_ms']:.0f} |")


if __name__ == "__main__":
    main()
