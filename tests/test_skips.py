"""No test skips: a skip fails the run. Tests of Kmesh's real objects (marked kmesh_objects("VAR")) are left
out of the run, never skipped, while VAR is unset, and the summary names each (see conftest)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
VARS = ("KMESH_OBJECTS", "KMESH_UPGRADE_OBJECTS")


def _pytest(tmp_path: Path, files: dict[str, str], env: dict[str, str] | None = None,
            paths: list[str] | None = None) -> subprocess.CompletedProcess:
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    if files:
        shutil.copy(HERE / "conftest.py", tmp_path / "conftest.py")
    full = {k: v for k, v in os.environ.items() if k not in VARS}
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--no-cov",
                           "--continue-on-collection-errors", *(paths or [str(tmp_path)])],
                          capture_output=True, text=True, cwd=tmp_path if files else HERE.parent, env=full | (env or {}))


def test_a_skip_for_a_missing_tool_fails(tmp_path: Path) -> None:
    res = _pytest(tmp_path, {"test_tool.py": 'import pytest\n\ndef test_t():\n    pytest.skip("no clang-14")\n',
                             "test_mod.py": 'import pytest\npytest.importorskip("no_such_module_here")\n'})
    assert res.returncode == 1, res.stdout
    assert "test_tool.py skipped (Skipped: no clang-14), and no test may skip" in res.stdout
    assert "test_mod.py skipped (Skipped: could not import 'no_such_module_here'" in res.stdout


def test_a_kmesh_objects_test_is_left_out_while_its_variable_is_unset_and_runs_when_set(tmp_path: Path) -> None:
    files = {"test_k.py": 'import pytest\n\n@pytest.mark.kmesh_objects("KMESH_OBJECTS")\ndef test_k():\n    pass\n\n'
                          'def test_other():\n    pass\n'}
    res = _pytest(tmp_path, files)
    assert res.returncode == 0 and "1 passed, 1 deselected" in res.stdout and "skipped" not in res.stdout, res.stdout
    assert "LEFT OUT test_k.py::test_k: needs Kmesh's real objects, and KMESH_OBJECTS is unset" in res.stdout
    res = _pytest(tmp_path, files, env={"KMESH_OBJECTS": str(tmp_path)})
    assert res.returncode == 0 and "2 passed" in res.stdout and "LEFT OUT" not in res.stdout, res.stdout
    # the mark lets nothing else through: a skip inside such a test still fails
    files["test_k.py"] = files["test_k.py"].replace("def test_k():\n    pass", 'def test_k():\n    pytest.skip("unreadable")')
    res = _pytest(tmp_path, files, env={"KMESH_OBJECTS": str(tmp_path)})
    assert res.returncode == 1 and "no test may skip" in res.stdout, res.stdout


def test_the_suites_kmesh_objects_tests_are_left_out_not_skipped(tmp_path: Path) -> None:
    """The real files, run with their variables unset: nothing skips, each Kmesh test is named as left out,
    and the upgrade test's own-program cases still run."""
    res = _pytest(tmp_path, {}, paths=[str(HERE / "test_kmesh_objects.py"),
                                       str(HERE / "test_upgrade.py") + "::test_an_upgrade_keeps_the_data_plane_serving_without_a_write"])
    assert res.returncode == 0 and "skipped" not in res.stdout and "failed" not in res.stdout, res.stdout
    assert "2 passed, 2 deselected" in res.stdout, res.stdout
    assert "LEFT OUT tests/test_kmesh_objects.py::test_" in res.stdout and "KMESH_OBJECTS is unset" in res.stdout
    assert "[kmesh-9eab2f91-to-today]: needs Kmesh's real objects, and KMESH_UPGRADE_OBJECTS is unset" in res.stdout
