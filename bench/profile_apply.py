"""Where kmesh-apply's time goes on a benchmark workload: one CLI run under cProfile.

    .venv/bin/python bench/profile_apply.py S [cold|noop|change] [--top 30] [--sort cumulative|tottime] [--no-cache]

Runs in a fresh pin root (removed afterwards); for noop and change the cold apply is
done first, unprofiled. Prints the top functions and keeps the raw profile in
bench/out/<workload>-<phase>.prof (for snakeviz or pstats).
"""

from __future__ import annotations

import argparse
import pstats
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import run  # noqa: E402
import workloads  # noqa: E402

PHASES = {"cold": ("apply", "config.yaml"), "noop": ("plan", "config.yaml"), "change": ("apply", "change.yaml")}


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description="Profile one kmesh-apply run on a benchmark workload.")
    ap.add_argument("workload", choices=list(workloads.SHAPES))
    ap.add_argument("phase", nargs="?", default="cold", choices=list(PHASES))
    ap.add_argument("--top", type=int, default=30)
    ap.add_argument("--sort", default="cumulative", choices=["cumulative", "tottime"])
    ap.add_argument("--no-cache", action="store_true", help="run with KMESH_APPLY_CACHE_DIR=off")
    args = ap.parse_args(argv)
    wdir = workloads.generate(args.workload, log=run.log)
    verb, config = PHASES[args.phase]
    out = workloads.DEFAULT_OUT / f"{args.workload}-{args.phase}.prof"
    with run.fresh_pin_root() as pin_root, tempfile.TemporaryDirectory() as tmp:
        # As in bench/run.py: the cold run starts with an empty config cache, the others find
        # what the cold apply left (--no-cache: none at all).
        env = dict(run._env(), KMESH_APPLY_CACHE_DIR=run.NO_CACHE if args.no_cache else str(Path(tmp) / "cache"))
        if args.phase != "cold":
            subprocess.run(run.kmesh_argv("apply", wdir / "config.yaml", pin_root), check=True,
                           stdout=subprocess.DEVNULL, env=env)
        cmd = run.kmesh_argv(verb, wdir / config, pin_root)
        proc = subprocess.run([sys.executable, "-m", "cProfile", "-o", str(out), *cmd], stdout=subprocess.DEVNULL,
                              env=env)
    if proc.returncode not in (0, 2) or not out.exists():
        print(f"kmesh-apply {verb} exited {proc.returncode}", file=sys.stderr)
        return 1
    pstats.Stats(str(out)).strip_dirs().sort_stats(args.sort).print_stats(args.top)
    print(f"raw profile: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
