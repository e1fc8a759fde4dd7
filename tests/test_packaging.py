"""The package as users get it: `python -m build` makes an sdist and a wheel, and the wheel,
installed in a clean virtualenv, runs validate, plan and schema on its own (no source tree)."""

from __future__ import annotations

import os
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

from conftest import REPO

SCHEMA = "kmesh_apply/config/config-v1.schema.json"


def run(*argv: str | Path, cwd: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV"))}
    res = subprocess.run([str(a) for a in argv], capture_output=True, text=True, cwd=cwd, env=env)
    assert "Traceback" not in res.stderr, res.stderr
    return res


@pytest.fixture(scope="module")
def dist(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("dist")
    res = run(sys.executable, "-m", "build", "--outdir", out, REPO, cwd=out)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    return out


@pytest.fixture(scope="module")
def venv(dist: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A clean virtualenv (no site packages) with the wheel and its dependencies from the package index,
    installed by this interpreter's pip (--python: half the time of bootstrapping pip into the venv)."""
    where = tmp_path_factory.mktemp("venv") / "venv"
    assert run(sys.executable, "-m", "venv", "--without-pip", where, cwd=dist).returncode == 0
    (wheel,) = dist.glob("kmesh_apply-*.whl")
    res = run(sys.executable, "-m", "pip", "--python", where / "bin/python", "install", "-q",
              "--disable-pip-version-check", wheel, cwd=dist)
    assert res.returncode == 0, res.stdout + res.stderr
    return where / "bin"


def test_sdist_and_wheel_carry_the_schema_and_type_marker(dist: Path):
    (wheel,) = dist.glob("kmesh_apply-*.whl")
    (sdist,) = dist.glob("kmesh_apply-*.tar.gz")
    names = set(zipfile.ZipFile(wheel).namelist())
    assert {SCHEMA, "kmesh_apply/py.typed", "kmesh_apply/cli/apply_cli.py"} <= names
    assert not any(n.startswith(("tests/", "bench/")) for n in names)
    with tarfile.open(sdist) as tar:
        member = tar.getmember(f"{sdist.name.removesuffix('.tar.gz')}/{SCHEMA}")
        assert member.isfile()  # the repository's symlink into schemas/ is stored as the file itself


def test_the_installed_wheel_validates_plans_and_prints_the_schema(venv: Path, tmp_path: Path, pin_root: Path):
    where = run(venv / "python", "-c", "import kmesh_apply; print(kmesh_apply.__file__)", cwd=tmp_path)
    assert where.stdout.startswith(str(venv.parent)), where.stdout  # not the checkout
    version = run(venv / "kmesh-apply", "--version", cwd=tmp_path)
    assert version.returncode == 0 and version.stdout.startswith("kmesh-apply ")
    mesh = REPO / "examples/mesh"
    valid = run(venv / "kmesh-apply", "validate", mesh, cwd=tmp_path)
    assert valid.returncode == 0 and valid.stdout.startswith("Configuration valid: 4 inner maps"), valid.stderr
    plan = run(venv / "kmesh-apply", "plan", mesh, "--pin-root", pin_root, "--detailed-exitcode", cwd=tmp_path)
    assert plan.returncode == 2 and "Plan: 5 to create, 0 to update, 0 to destroy." in plan.stdout, plan.stderr
    schema = run(venv / "kmesh-apply", "schema", cwd=tmp_path)
    assert schema.returncode == 0 and schema.stdout == (REPO / "schemas/config-v1.schema.json").read_text()
    assert run(venv / "kmesh", "--version", cwd=tmp_path).returncode == 0


def test_the_container_image_s_wheel_carries_the_schema(tmp_path: Path):
    """examples/kubernetes/Containerfile builds the package from what it copies: that alone (links kept
    as links, as podman and docker copy them) must make a wheel with the JSON Schema in it."""
    import re
    import shutil

    context = tmp_path / "image"
    copies = re.findall(r"^COPY\s+(.+)$", (REPO / "examples/kubernetes/Containerfile").read_text(), re.M)
    for line in copies:
        *sources, dest = line.split()
        for source in sources:
            target = context / dest.lstrip("/") / (Path(source).name if dest.endswith("/") else "")
            target.parent.mkdir(parents=True, exist_ok=True)
            if (REPO / source).is_dir():
                shutil.copytree(REPO / source, target, symlinks=True, ignore=shutil.ignore_patterns("__pycache__"))
            else:
                shutil.copy2(REPO / source, target, follow_symlinks=False)
    res = run(sys.executable, "-m", "build", "--wheel", "--outdir", tmp_path / "dist", context / "src", cwd=tmp_path)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    (wheel,) = (tmp_path / "dist").glob("kmesh_apply-*.whl")
    with zipfile.ZipFile(wheel) as z:
        assert z.read(SCHEMA) == (REPO / "schemas/config-v1.schema.json").read_bytes()
