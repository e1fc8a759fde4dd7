"""scripts/demo, the Quick start's first command, on a pin root of the test's own ($KMESH_PIN_ROOT):
every step it takes (apply, show, plan) is about that pin root, and it ends converged."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from conftest import REPO


def test_the_demo_applies_shows_and_plans_the_same_pin_root(pin_root: Path) -> None:
    env = dict(os.environ, KMESH_PIN_ROOT=str(pin_root))
    res = subprocess.run([str(REPO / "scripts" / "demo")], capture_output=True, text=True, env=env, timeout=600)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    assert f"pin_root: {pin_root}\n" in res.stdout  # show printed this pin root, not /sys/fs/bpf/kmesh
    assert res.stdout.rstrip().endswith("No changes. The pin root matches the configuration.")
    assert {p.name for p in pin_root.iterdir()} >= {"services", "backends-web", "backends-api", "routes"}
