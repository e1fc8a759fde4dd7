"""Fixtures shared by the tests that talk to the real kernel.

Each test gets its own pin root under /sys/fs/bpf/ and it is removed afterwards,
even when the test fails; no test touches pins outside its own root.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

BPFFS = Path("/sys/fs/bpf")
REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True, scope="session")
def _own_config_cache(tmp_path_factory: pytest.TempPathFactory) -> None:
    """The config cache of every test (and of the CLIs they run) lives in the session's tmp dir, not ~/.cache."""
    os.environ["KMESH_APPLY_CACHE_DIR"] = str(tmp_path_factory.mktemp("kmesh-cache"))


def _remove_tree(root: Path) -> None:
    """Unpin everything under root; bpffs has no recursive rmdir, so walk bottom-up."""
    if not root.exists():
        return
    for dirpath, dirnames, filenames in os.walk(root, topdown=False):
        for f in filenames:
            os.unlink(os.path.join(dirpath, f))
        for d in dirnames:
            path = os.path.join(dirpath, d)
            os.unlink(path) if os.path.islink(path) else os.rmdir(path)
    os.rmdir(root)


@contextlib.contextmanager
def _unique_root(kind: str, create: bool = False):
    root = BPFFS / f"kmesh-{kind}-{uuid.uuid4().hex[:12]}"
    if create:
        root.mkdir()
    try:
        yield root
    finally:
        _remove_tree(root)


@pytest.fixture
def pin_root() -> Path:
    """A fresh, unique pin root (not created: tools must create it themselves)."""
    with _unique_root("test") as root:
        yield root


@pytest.fixture
def bpf_scratch() -> Path:
    """A unique bpffs directory, outside any pin root, for test programs and foreign pins."""
    with _unique_root("scratch", create=True) as root:
        yield root


def private_block_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, block_bytes: int) -> None:
    """A config cache of the test's own that takes files of any size and cuts large maps into blocks of
    about `block_bytes`, so that a map of a few thousand entries has many blocks."""
    from kmesh_apply.config import blocks, cache

    monkeypatch.setenv("KMESH_APPLY_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(cache, "MIN_FILE_BYTES", 0)
    monkeypatch.setattr(blocks, "BLOCK_BYTES", block_bytes)
    monkeypatch.setattr(blocks, "MAX_BLOCK_BYTES", 4 * block_bytes)


def pinned_maps(root: Path) -> list[Path]:
    """The maps pinned in a pin root, sorted, without kmesh-apply's own records (none when it is gone)."""
    from kmesh_apply.state import RESERVED_NAMES

    return sorted(p for p in root.iterdir() if p.name not in RESERVED_NAMES) if root.exists() else []


def bpftool_json(*args: str):
    """Run `bpftool -j ARGS` (the independent client) and return its parsed output."""
    out = subprocess.run(["bpftool", "-j", *args], check=True, capture_output=True, text=True).stdout
    return json.loads(out) if out.strip() else None


@pytest.fixture
def bpftool():
    if shutil.which("bpftool") is None:
        pytest.fail("bpftool is not installed: run scripts/setup")
    return bpftool_json


def run_cli(*argv: str, env: dict[str, str] | None = None, input: str | None = None) -> subprocess.CompletedProcess:
    """Run one of our console scripts (`kmesh-apply` or `kmesh`) from the venv as a user would."""
    exe = Path(sys.executable).parent / argv[0]
    full_env = dict(os.environ)
    full_env.update(env or {})
    return subprocess.run([str(exe), *argv[1:]], capture_output=True, text=True, env=full_env, input=input)
