"""No silent skip: a test that skips fails the run unless its file is listed in conftest.BY_DESIGN_SKIPS
(and then only while the environment variable named there is unset)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from conftest import BY_DESIGN_SKIPS

HERE = Path(__file__).resolve().parent


def _pytest(tmp_path: Path, files: dict[str, str], env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    shutil.copy(HERE / "conftest.py", tmp_path / "conftest.py")
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    full = {k: v for k, v in os.environ.items() if k not in BY_DESIGN_SKIPS.values()}
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--continue-on-collection-errors",
                           str(tmp_path)],
                          capture_output=True, text=True, cwd=tmp_path, env=full | (env or {}))


def test_a_skip_for_a_missing_tool_fails(tmp_path: Path) -> None:
    res = _pytest(tmp_path, {"test_tool.py": 'import pytest\n\ndef test_t():\n    pytest.skip("no clang-14")\n',
                             "test_mod.py": 'import pytest\npytest.importorskip("no_such_module_here")\n'})
    assert res.returncode == 1, res.stdout
    assert "test_tool.py skipped (Skipped: no clang-14), and only the skips in conftest.BY_DESIGN_SKIPS" in res.stdout
    assert "test_mod.py skipped (Skipped: could not import 'no_such_module_here'" in res.stdout


def test_a_listed_skip_is_allowed_only_while_its_variable_is_unset(tmp_path: Path) -> None:
    name, var = next(iter(BY_DESIGN_SKIPS.items()))
    skipping = {name: f'import os, pytest\npytestmark = pytest.mark.skipif(not os.environ.get("{var}"), reason="by design")\n'
                      'def test_k():\n    pass\n'}
    res = _pytest(tmp_path, skipping)
    assert res.returncode == 0 and "1 skipped" in res.stdout, res.stdout
    res = _pytest(tmp_path, {name: 'import pytest\n\ndef test_k():\n    pytest.skip("objects unreadable")\n'},
                  env={var: str(tmp_path)})
    assert res.returncode == 1 and "only the skips in conftest.BY_DESIGN_SKIPS" in res.stdout, res.stdout


def test_the_suites_by_design_skips_are_accepted() -> None:
    """The real files listed, run with their variables unset, skip and pass: the hook accepts them as written."""
    upgrade = "test_upgrade.py::test_an_upgrade_keeps_the_data_plane_serving_without_a_write[kmesh-9eab2f91-to-today]"
    assert set(BY_DESIGN_SKIPS) == {"test_kmesh_objects.py", "test_upgrade.py"}
    full = {k: v for k, v in os.environ.items() if k not in BY_DESIGN_SKIPS.values()}
    res = subprocess.run([sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", "--no-cov",
                          str(HERE / "test_kmesh_objects.py"), str(HERE / upgrade)],
                         capture_output=True, text=True, cwd=HERE.parent, env=full)
    assert res.returncode == 0 and " passed" not in res.stdout and "failed" not in res.stdout, res.stdout
    assert "KMESH_OBJECTS is unset" in res.stdout and "KMESH_UPGRADE_OBJECTS is not set" in res.stdout, res.stdout
