"""Per-slot and per-entry cost of updates through the Python layer, next to the same in C.

    .venv/bin/python bench/slot_updates.py [--slots 200] [--entries 100000] [--repeats 5]

Compiles bench/c/slot_updates.c against the system libbpf into bench/bin/ and
runs it in the same run, so the ratios compare like with like on this machine.
One outer-slot update per syscall pays an RCU grace period (milliseconds); a
batch pays it once, which is why the manager and the executor batch slots.
Run as root.
"""

from __future__ import annotations

import argparse
import json
import struct
import subprocess
import time
from pathlib import Path
from typing import Callable

from kmesh_apply.kernel import Map
from kmesh_apply.manager import InnerMapConfig, MapInMapManager, OuterMapConfig

HERE = Path(__file__).resolve().parent


def c_baseline(slots: int, entries: int, repeats: int) -> dict[str, float]:
    """Build (if needed) and run the C program; its figures are µs per slot / entry."""
    src, exe = HERE / "c" / "slot_updates.c", HERE / "bin" / "slot_updates"
    if not exe.exists() or exe.stat().st_mtime < src.stat().st_mtime:
        exe.parent.mkdir(exist_ok=True)
        subprocess.run(["cc", "-O2", "-Wall", "-o", str(exe), str(src), "-lbpf"], check=True)
    out = subprocess.run([str(exe), str(slots), str(entries), str(repeats)], check=True, capture_output=True, text=True)
    return json.loads(out.stdout)


def per_item(n: int, fn: Callable[[], None], repeats: int = 1) -> float:
    """Best time of fn over repeats, in µs per item."""
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best / n * 1e6


def python_figures(slots: int, entries: int, repeats: int) -> dict[str, float]:
    out: dict[str, float] = {}
    with MapInMapManager() as mgr:
        tmpl = mgr.create_inner_map(InnerMapConfig("hash", 4, 8, 16))
        outer = mgr.create_outer_map(OuterMapConfig("array_of_maps", 4, None, slots, inner_map_id=tmpl))
        inners = [mgr.create_inner_map(InnerMapConfig("hash", 4, 8, 16)) for _ in range(slots)]

        def single_slots() -> None:
            for i, inner in enumerate(inners):
                mgr.update_outer_element(outer, i, inner)

        out["slot_single"] = per_item(slots, single_slots)
        out["slot_batch"] = per_item(slots, lambda: mgr.update_outer_elements(outer, dict(enumerate(inners))), repeats)

    keys = struct.pack(f"={entries}I", *range(entries))
    values = struct.pack(f"={entries}Q", *(i * 3 for i in range(entries)))
    key_list = [keys[i * 4:(i + 1) * 4] for i in range(entries)]
    value_list = [values[i * 8:(i + 1) * 8] for i in range(entries)]
    with Map.create("hash", 4, 8, entries) as m:

        def single_entries() -> None:
            for k, v in zip(key_list, value_list):
                m.update(k, v)

        out["entry_single"] = per_item(entries, single_entries)
        out["entry_batch"] = per_item(entries, lambda: m.update_batch(keys, values, entries), repeats)
    with MapInMapManager() as mgr:
        inner = mgr.create_inner_map(InnerMapConfig("hash", 4, 8, entries))

        def manager_entries() -> None:
            for i in range(entries):
                mgr.update_inner_element(inner, i, i * 3)

        out["entry_single_manager"] = per_item(entries, manager_entries)
    return out


def fmt(us: float) -> str:
    return f"{us / 1000:.2f} ms" if us >= 1000 else f"{us:.3f} µs"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--slots", type=int, default=200)
    ap.add_argument("--entries", type=int, default=100_000)
    ap.add_argument("--repeats", type=int, default=5)
    a = ap.parse_args()
    c = c_baseline(a.slots, a.entries, a.repeats)
    py = python_figures(a.slots, a.entries, a.repeats)
    rows = [
        ("outer slot, one update per syscall", "slot_single", "slot_single"),
        (f"outer slot, one batch of {a.slots}", "slot_batch", "slot_batch"),
        ("inner entry, one update per syscall (Map.update)", "entry_single", "entry_single"),
        ("inner entry, one update per syscall (manager, int key/value)", "entry_single_manager", "entry_single"),
        (f"inner entry, one batch of {a.entries} (Map.update_batch)", "entry_batch", "entry_batch"),
    ]
    width = max(len(r[0]) for r in rows)
    print(f"{'cost per slot / entry':<{width}}  {'Python':>10}  {'C libbpf':>10}  {'ratio':>6}")
    for label, pkey, ckey in rows:
        print(f"{label:<{width}}  {fmt(py[pkey]):>10}  {fmt(c[ckey]):>10}  {py[pkey] / c[ckey]:>6.2f}")
    print(f"batching slots saves {py['slot_single'] / py['slot_batch']:.0f}x; entries {py['entry_single'] / py['entry_batch']:.1f}x")


if __name__ == "__main__":
    main()
