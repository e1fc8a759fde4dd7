"""A cold apply of the same workload from JSON and from YAML, in the same run (issue 14).

    .venv/bin/python bench/json_vs_yaml.py [--runs N] [WORKLOAD]      # default: S, 5 runs

The JSON is the workload's config.yaml as a control plane would emit it (json.dumps with
indent 2: every key a string), written beside it as config.json. Each run applies both
files, alternately, into a fresh pin root with an empty config cache (a new node), and
validates both with the cache off (parsing and checking only, no kernel); the medians and
the JSON/YAML ratios are printed as a markdown table. Needs root (bench/run.py's helpers).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

import orjson
import yaml_rs

sys.path.insert(0, str(Path(__file__).resolve().parent))

import run  # noqa: E402  (bench/ is not a package)
import workloads  # noqa: E402


def json_config(wdir: Path) -> Path:
    """config.json from config.yaml, rewritten when the YAML is newer."""
    src, out = wdir / "config.yaml", wdir / "config.json"
    if not out.exists() or out.stat().st_mtime < src.stat().st_mtime:
        doc = yaml_rs.loads(src.read_text(), parse_datetime=False)
        out.write_bytes(orjson.dumps(doc, option=orjson.OPT_NON_STR_KEYS | orjson.OPT_INDENT_2))
    return out


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("workload", nargs="?", default="S", choices=sorted(workloads.SHAPES))
    ap.add_argument("--runs", type=int, default=5)
    args = ap.parse_args(argv)
    wdir = workloads.generate(args.workload, log=run.log)
    configs = {"YAML": wdir / "config.yaml", "JSON": json_config(wdir)}
    times: dict[tuple[str, str], list[float]] = {(what, fmt): [] for what in ("apply (cold)", "validate") for fmt in configs}
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(args.runs):
            for fmt, config in (configs.items() if i % 2 == 0 else reversed(configs.items())):
                with run.fresh_pin_root() as root:
                    cold = run.run_child(run.kmesh_cmd("apply", config, root, Path(tmp) / f"cache-{fmt}-{i}"))
                    if cold.rc != 0:
                        sys.exit(f"{fmt} cold apply failed: {cold.first_error_line}")
                    times["apply (cold)", fmt].append(cold.seconds)
                check = run.run_child(["env", f"KMESH_APPLY_CACHE_DIR={run.NO_CACHE}", run.kmesh_apply_bin(),
                                       "validate", str(config)])
                if check.rc != 0:
                    sys.exit(f"{fmt} validate failed: {check.first_error_line}")
                times["validate", fmt].append(check.seconds)
    sizes = {fmt: f"{config.stat().st_size / 2**20:.1f} MiB" for fmt, config in configs.items()}
    print(f"{args.workload}: {workloads.SHAPES[args.workload].description}; medians of {args.runs} runs; "
          f"config.yaml {sizes['YAML']}, config.json {sizes['JSON']}\n")
    print("| command | YAML | JSON | JSON / YAML |\n|---|---|---|---|")
    for what in ("apply (cold)", "validate"):
        yaml_s, json_s = (statistics.median(times[what, fmt]) for fmt in ("YAML", "JSON"))
        print(f"| kmesh-apply {what} | {yaml_s:.3f} s | {json_s:.3f} s | {json_s / yaml_s:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
