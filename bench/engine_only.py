"""kmesh-apply's engine without YAML: read live state, plan, execute, on a benchmark workload.

    .venv/bin/python bench/engine_only.py [S K B ...] [--profile cold|noop|change]

Builds the Config straight from the workload's data (bench/workloads.build), so the
figures separate the config loader's cost from the reader's, the planner's and the
executor's. Runs in a fresh pin root: a cold apply, a no-op plan, then the change.
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import struct
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import run  # noqa: E402
import workloads  # noqa: E402
from kmesh_apply.config.model import Config, InnerMapSpec, Location, OuterMapSpec  # noqa: E402
from kmesh_apply.ctype import parse_type  # noqa: E402
from kmesh_apply.executor import Executor  # noqa: E402
from kmesh_apply.plan.planner import make_plan  # noqa: E402
from kmesh_apply.pinroot.guard import PinRoot  # noqa: E402
from kmesh_apply.pinroot.reader import read_live  # noqa: E402

ENDPOINT = {"struct": [{"ip": "ipv4"}, {"port": "be16"}, {"weight": "u16"}]}


def _key(k: int) -> bytes:
    return struct.pack("<I", k)


def config_of(data: workloads.Data, changed: bool) -> Config:
    """The Config the loader would produce for config.yaml (or change.yaml)."""
    shape, here = data.shape, Location("bench", 0)
    key_type, value_type = parse_type("u32"), parse_type(ENDPOINT if shape.endpoint_values else "u64")
    cfg = Config()
    for i, inner in enumerate(data.inners):
        entries = {_key(k): v for k, v in zip(inner.keys, inner.values)}
        if changed and i == data.change_map:
            entries.update({_key(k): v for k, v in data.changed_values.items()})
        cfg.inner_maps[inner.name] = InnerMapSpec(
            name=inner.name, type="hash", key=key_type, value=value_type, max_entries=shape.max_entries, flags=(),
            entries=entries, location=here)
    if data.outer_name:
        cfg.outer_maps[data.outer_name] = OuterMapSpec(
            name=data.outer_name, type="hash_of_maps", key=key_type, max_entries=shape.maps, flags=(),
            inner_map=data.inners[0].name, slots={_key(s): i.name for s, i in zip(data.slots, data.inners)},
            location=here)
    return cfg


def step(cfg: Config, pin_root: str) -> tuple[float, float, float]:
    """Seconds to read the live state, to plan, to execute."""
    t0 = time.perf_counter()
    live = read_live(pin_root)
    t1 = time.perf_counter()
    plan = make_plan(cfg, live)
    t2 = time.perf_counter()
    if plan.has_changes:
        with PinRoot.make(pin_root) as root:
            Executor(root, live).run(plan)
    return t1 - t0, t2 - t1, time.perf_counter() - t2


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description="Time kmesh-apply's engine without the YAML loader.")
    ap.add_argument("names", nargs="*", default=["S", "K", "B"])
    ap.add_argument("--profile", choices=["cold", "noop", "change"], help="print a cProfile of that phase")
    args = ap.parse_args(argv)
    print(f"{'workload':9} {'phase':7} {'read s':>7} {'plan s':>7} {'exec s':>7}")
    for name in args.names:
        data = workloads.build(workloads.SHAPES[name])
        phases = {"cold": config_of(data, False), "noop": config_of(data, False), "change": config_of(data, True)}
        with run.fresh_pin_root() as pin_root:
            for phase, cfg in phases.items():
                prof = cProfile.Profile() if phase == args.profile else None
                if prof:
                    prof.enable()
                read, plan, execute = step(cfg, pin_root)
                if prof:
                    prof.disable()
                    pstats.Stats(prof).strip_dirs().sort_stats("tottime").print_stats(12)
                print(f"{name:9} {phase:7} {read:7.3f} {plan:7.3f} {execute:7.3f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
