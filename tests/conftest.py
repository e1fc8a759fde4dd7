"""Fixtures shared by the tests that talk to the real kernel.

Each test gets its own pin root under /sys/fs/bpf/ and it is removed afterwards,
even when the test fails; no test touches pins outside its own root.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path

import pytest

BPFFS = Path("/sys/fs/bpf")
REPO = Path(__file__).resolve().parent.parent

# No test skips: a skip fails the run (a tool missing is scripts/setup not doing its job, and a skipped test
# proves nothing while looking green). Tests of Kmesh's real objects are the one exception to running
# everything: this repository may hold neither the objects nor a recipe that builds them, so a test marked
# `kmesh_objects("VAR")` runs only where VAR names a directory of them (built by hand with Kmesh's own build);
# elsewhere it is left out of the run (deselected) and the summary says which tests and why.
KMESH_OBJECTS_MARK = "kmesh_objects"


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", f"{KMESH_OBJECTS_MARK}(var): needs Kmesh's real objects in the directory "
                                       "the environment variable var names; left out of the run without it")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    keep: list[pytest.Item] = []
    left: list[pytest.Item] = []
    for item in items:
        mark = item.get_closest_marker(KMESH_OBJECTS_MARK)
        (left if mark and not os.environ.get(mark.args[0]) else keep).append(item)
    if left:
        config.hook.pytest_deselected(items=left)
        items[:] = keep
        config.stash[_LEFT_OUT] = left


_LEFT_OUT = pytest.StashKey[list]()


def pytest_terminal_summary(terminalreporter, exitstatus: int, config: pytest.Config) -> None:
    for item in config.stash.get(_LEFT_OUT, []):
        var = item.get_closest_marker(KMESH_OBJECTS_MARK).args[0]
        terminalreporter.write_line(f"LEFT OUT {item.nodeid}: needs Kmesh's real objects, and {var} is unset "
                                    "(build them by hand: docs/map-types.md, docs/upgrading.md)")


def _fail_skip(report: pytest.TestReport | pytest.CollectReport, path: Path) -> None:
    """Turn a skip into a failure that says why it was skipped."""
    longrepr = report.longrepr
    reason = longrepr[2] if isinstance(longrepr, tuple) else str(longrepr)
    report.outcome = "failed"
    report.longrepr = f"{path.name} skipped ({reason}), and no test may skip: install what it needs (scripts/setup)"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    report = (yield).get_result()
    if report.skipped and not hasattr(report, "wasxfail"):
        _fail_skip(report, item.path)


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector: pytest.Collector):
    report = (yield).get_result()
    if report.skipped:
        _fail_skip(report, collector.path)


def require_tool(name: str) -> str:
    """The path of a tool scripts/setup installs; a test that needs it fails (never skips) without it."""
    found = shutil.which(name)
    if found is None:
        pytest.fail(f"{name} is not installed: run scripts/setup")
    return found


@pytest.fixture(autouse=True, scope="session")
def _own_config_cache(tmp_path_factory: pytest.TempPathFactory) -> None:
    """The config cache and the plan-signing key of every test (and of the CLIs they run) live in the
    session's tmp dir, not in ~/.cache and /var/lib/kmesh-apply."""
    os.environ["KMESH_APPLY_CACHE_DIR"] = str(tmp_path_factory.mktemp("kmesh-cache"))
    os.environ["KMESH_APPLY_PLAN_KEY"] = str(tmp_path_factory.mktemp("kmesh-key") / "plan-key")


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
    require_tool("bpftool")
    return bpftool_json


def traced_apply(root: Path, *args: str, inject: str | None = None) -> tuple[subprocess.CompletedProcess, list[str]]:
    """`kmesh-apply ARGS --pin-root ROOT` under strace: its result and the bpf() commands it made, in order.
    `inject` is strace's fault injection (e.g. "bpf:when=9:signal=KILL"); the last command is the one it struck."""
    exe = Path(sys.executable).parent / "kmesh-apply"
    fd, name = tempfile.mkstemp(suffix=".strace")
    os.close(fd)
    trace = Path(name)
    injected = ["-e", f"inject={inject}", "-e", f"trace=bpf,{inject.split(':')[0]}"] if inject else ["-e", "trace=bpf"]
    try:
        res = subprocess.run([require_tool("strace"), "-f", "-qq", *injected, "-o", str(trace), str(exe), *args,
                              "--pin-root", str(root)], capture_output=True, text=True)
        return res, re.findall(r"bpf\((BPF_\w+)", trace.read_text())
    finally:
        trace.unlink(missing_ok=True)


def bpf_syscalls(root: Path, *args: str) -> list[str]:
    """The bpf() commands `kmesh-apply ARGS --pin-root ROOT` makes, in order, traced with strace."""
    res, calls = traced_apply(root, *args)
    assert res.returncode == 0, res.stderr
    return calls


# The calls that change a filesystem's names, and bpf()'s pinning; strace -y shows each fd's path.
_CHANGING = ("mkdir", "mkdirat", "rename", "renameat", "renameat2", "symlink", "symlinkat", "link", "linkat", "unlink",
             "unlinkat", "rmdir", "bpf")
_PATH_ARG = re.compile(r'(?:(\d+)<([^>]*)>, )?"((?:[^"\\]|\\.)*)"')


def bpffs_changes(trace: str) -> set[str]:
    """The paths under /sys/fs/bpf that the calls traced in `trace` (strace -f -y output) created, renamed
    or removed, successful calls only: what a test checks against its own pin root, without looking at
    the directory other tests and tools on the machine share."""
    out = set()
    for line in trace.splitlines():
        m = re.match(r"\d+\s+(\w+)\((.*)\)\s+=\s+(\d+)", line)
        if not m or m.group(1) not in _CHANGING or (m.group(1) == "bpf" and "BPF_OBJ_PIN" not in m.group(2)):
            continue
        for _fd, directory, name in _PATH_ARG.findall(m.group(2)):
            path = os.path.normpath(name if name.startswith("/") or not directory else f"{directory}/{name}")
            if path == str(BPFFS) or path.startswith(f"{BPFFS}/"):
                out.add(path)
    return out


def run_traced_cli(*argv: str) -> tuple[subprocess.CompletedProcess, set[str]]:
    """run_cli under strace: the result, and bpffs_changes of everything the command and its children did."""
    fd, name = tempfile.mkstemp(suffix=".strace")
    os.close(fd)
    try:
        res = run_cli("strace", "-f", "-qq", "-y", "-s", "4096", "-o", name, "-e", "trace=" + ",".join(_CHANGING),
                      str(Path(sys.executable).parent / argv[0]), *argv[1:])
        return res, bpffs_changes(Path(name).read_text())
    finally:
        os.unlink(name)


def run_cli(*argv: str, env: dict[str, str] | None = None, input: str | None = None) -> subprocess.CompletedProcess:
    """Run one of our console scripts (`kmesh-apply` or `kmesh`) from the venv as a user would."""
    exe = Path(sys.executable).parent / argv[0] if argv[0] != "strace" else Path(require_tool("strace"))
    full_env = dict(os.environ)
    full_env.update(env or {})
    return subprocess.run([str(exe), *argv[1:]], capture_output=True, text=True, env=full_env, input=input)


class LocalUser:
    """An unprivileged local user made for one test: what another user of a shared node can do."""

    def __init__(self, name: str, home: Path) -> None:
        import pwd

        entry = pwd.getpwnam(name)
        self.name, self.uid, self.gid = name, entry.pw_uid, entry.pw_gid
        self.home = home  # theirs, where they write files (pytest's tmp_path is root's alone)
        os.chown(home, self.uid, self.gid)
        self.started: list[subprocess.Popen] = []

    def argv(self, *argv: str) -> list[str]:
        """`argv` run as this user (no groups, no capabilities)."""
        return ["setpriv", f"--reuid={self.uid}", f"--regid={self.gid}", "--clear-groups", "--inh-caps=-all", *argv]

    def run(self, *argv: str, input: bytes | None = None, timeout: float = 60) -> subprocess.CompletedProcess:
        return subprocess.run(self.argv(*argv), input=input, capture_output=True, timeout=timeout)

    def start(self, *argv: str) -> subprocess.Popen:
        """A process of this user, stopped when the test ends."""
        proc = subprocess.Popen(self.argv(*argv), stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self.started.append(proc)
        return proc

    def write(self, path: Path, data: bytes) -> Path:
        """Write a file as this user (in a directory they may write): the file is theirs."""
        res = self.run("dd", f"of={path}", "status=none", input=data)
        assert res.returncode == 0, res.stderr
        return path


@contextlib.contextmanager
def unprivileged_user():
    """A fresh unprivileged user (useradd), removed afterwards with the processes started as it."""
    import tempfile

    name = f"kmt{uuid.uuid4().hex[:10]}"
    subprocess.run(["useradd", "--no-create-home", "--shell", "/usr/sbin/nologin", name], check=True, capture_output=True)
    home = Path(tempfile.mkdtemp(prefix=f"{name}-"))
    user = None
    try:
        user = LocalUser(name, home)
        yield user
    finally:
        for proc in user.started if user is not None else []:
            if proc.poll() is None:
                proc.kill()
            proc.wait()
        shutil.rmtree(home, ignore_errors=True)
        subprocess.run(["userdel", name], capture_output=True)


@pytest.fixture
def local_user() -> LocalUser:
    """An unprivileged user of the test's own (see unprivileged_user)."""
    with unprivileged_user() as user:
        yield user
