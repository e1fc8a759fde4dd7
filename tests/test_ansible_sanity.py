"""`ansible-test sanity` on the kmesh.maps collection, on this interpreter's Python version, through the
collection's own runner (which works where only the package index is reachable)."""

from __future__ import annotations

import subprocess
import sys

from conftest import REPO

RUNNER = REPO / "ansible_collections" / "kmesh" / "maps" / "tests" / "sanity" / "run.py"


def test_ansible_test_sanity_is_clean() -> None:
    python = f"{sys.version_info.major}.{sys.version_info.minor}"
    res = subprocess.run([sys.executable, str(RUNNER), "--python", python], capture_output=True, text=True, timeout=900)
    assert res.returncode == 0, res.stdout[-4000:] + res.stderr[-4000:]
    assert 'Running sanity test "validate-modules"' in res.stdout + res.stderr
