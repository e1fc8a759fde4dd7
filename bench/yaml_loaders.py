"""Which YAML parser can load a big config fast? Times the candidates on the same generated
file (one inner map of N u32 -> u64 entries) in the same run and prints ratios.

    .venv/bin/python bench/yaml_loaders.py [N]      # default 200000

Candidates not installed in the venv are skipped (pip install ruamel.yaml rapidyaml to add them).
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable


def make_file(n: int) -> str:
    lines = ["inner_maps:", "  m:", "    type: hash", "    key: u32", "    value: u64", f"    max_entries: {n}", "    entries:"]
    lines += [f"      {i}: {i * 7 + 3}" for i in range(n)]
    return "\n".join(lines) + "\n"


def candidates() -> dict[str, Callable[[str], Any]]:
    out: dict[str, Callable[[str], Any]] = {}
    try:
        import yaml_rs

        out["yaml-rs (chosen)"] = lambda s: yaml_rs.loads(s, parse_datetime=False)
    except ImportError:
        pass
    import yaml

    out["PyYAML CSafeLoader (libyaml)"] = lambda s: yaml.load(s, Loader=yaml.CSafeLoader)
    out["PyYAML CSafeLoader compose (line numbers)"] = lambda s: yaml.compose(s, Loader=yaml.CSafeLoader)
    out["PyYAML SafeLoader (pure Python)"] = lambda s: yaml.load(s, Loader=yaml.SafeLoader)
    try:
        from ruamel.yaml import YAML

        out["ruamel.yaml (safe, C)"] = lambda s: YAML(typ="safe").load(s)
    except ImportError:
        pass
    try:
        import ryml

        out["rapidyaml (tree only, no Python objects)"] = lambda s: ryml.parse_in_arena(s.encode())
    except ImportError:
        pass
    return out


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 200_000
    text = make_file(n)
    print(f"{n} entries, {len(text) / 1e6:.1f} MB of YAML")
    times = {}
    for name, load in candidates().items():
        best = float("inf")
        for _ in range(2 if "pure" not in name else 1):
            t = time.perf_counter()
            load(text)
            best = min(best, time.perf_counter() - t)
        times[name] = best
    base = times.get("yaml-rs (chosen)", min(times.values()))
    for name, t in sorted(times.items(), key=lambda kv: kv[1]):
        print(f"  {name:45s} {t:8.3f} s   {t / base:6.1f}x")
    from kmesh_apply.config import load_config

    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "big.yaml"
        path.write_text(text)
        t = time.perf_counter()
        load_config([path], use_cache=False)
        print(f"  {'kmesh-apply load_config (parse+validate+encode)':45s} {time.perf_counter() - t:8.3f} s")


if __name__ == "__main__":
    main()
