"""bench/run.py's own options (the benchmark itself is run by hand: its figures are in bench/RESULTS.md)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from conftest import REPO

RUN = REPO / "bench" / "run.py"


def test_the_benchmark_makes_its_pin_roots_where_it_is_told(bpf_scratch: Path, tmp_path: Path) -> None:
    """--pin-root: another bpffs directory for the fresh pin roots of every run; anything else is refused
    before any work."""
    sys.path.insert(0, str(RUN.parent))
    try:
        import run  # type: ignore[import-not-found]
    finally:
        sys.path.remove(str(RUN.parent))
    run._pin_parent = bpf_scratch
    with run.fresh_pin_root() as root:
        assert Path(root).parent == bpf_scratch and Path(root).is_dir()
    assert list(bpf_scratch.iterdir()) == []
    res = subprocess.run([sys.executable, str(RUN), "--pin-root", str(tmp_path), "--only", "S"], capture_output=True, text=True)
    assert res.returncode == 1 and f"--pin-root: pin root '{tmp_path}/kmesh-bench-" in res.stderr, res.stderr
    assert "is not on a bpf filesystem" in res.stderr, res.stderr
