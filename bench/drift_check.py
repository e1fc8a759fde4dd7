"""What `watch`'s drift check costs: the CPU time of one `Synchroniser.verify()` on an applied pin root.

    .venv/bin/python bench/drift_check.py CONFIG PIN_ROOT [--checks 5]

Opens a synchroniser on PIN_ROOT (taking its lock), applies CONFIG (nothing should change:
the pin root already holds it), then runs `verify()` --checks times and prints one JSON line:
the median CPU seconds (user + system: the kernel's walk of a digest is system time of this
process) and wall seconds of a check, and the share of one core that costs at `watch`'s
default --drift-interval of 60 s. bench/run.py runs it for its "watch drift check" row.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from kmesh_apply.config import load_config  # noqa: E402
from kmesh_apply.sync.synchroniser import Synchroniser  # noqa: E402

DEFAULT_DRIFT_INTERVAL = 60.0  # kmesh-apply watch --drift-interval


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("config")
    ap.add_argument("pin_root")
    ap.add_argument("--checks", type=int, default=5)
    args = ap.parse_args(argv)
    with Synchroniser(args.pin_root) as sync:
        sync.apply(load_config([args.config]))
        cpu, wall, drift = [], [], 0
        for _ in range(args.checks):
            c, w = time.process_time(), time.perf_counter()
            drift += len(sync.verify())
            cpu.append(time.process_time() - c)
            wall.append(time.perf_counter() - w)
    per_check = statistics.median(cpu)
    print(json.dumps({"cpu_seconds": per_check, "wall_seconds": statistics.median(wall), "drift": drift,
                      "core_share_at_60s": per_check / DEFAULT_DRIFT_INTERVAL}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
