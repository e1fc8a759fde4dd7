"""Hostile input (issue 5): each case gets a clear error, exit 1, no traceback, and nothing
outside the pin root is touched."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from conftest import REPO, bpffs_changes, run_traced_cli

SMALL = """
inner_maps:
  {name}:
    type: hash
    key: u32
    value: u64
    max_entries: {max_entries}
    entries:
      1: 2
"""


def refused(*args: str, expect: str, cwd: Path | None = None) -> str:
    """Run kmesh-apply ARGS under strace: it must fail with `expect` and change nothing on bpffs outside
    its pin root (seen in its own syscalls, not in the directory other runs on the machine share)."""
    res, changed = run_traced_cli("kmesh-apply", *args)
    assert res.returncode == 1, f"exit {res.returncode}: {res.stdout}{res.stderr}"
    assert "Traceback" not in res.stderr
    assert expect in res.stderr, res.stderr
    root = args[args.index("--pin-root") + 1]
    outside = {p for p in changed if p != root and not p.startswith(root + "/")}
    assert not outside, f"changed outside the pin root {root}: {sorted(outside)}"
    return res.stderr


def test_the_trace_check_sees_what_a_command_changes_on_bpffs():
    trace = ('7 mkdirat(5</sys/fs/bpf/kmesh-test-x>, "../escape", 0777) = 0\n'
             '7 bpf(BPF_OBJ_PIN, {pathname="/sys/fs/bpf/other/m", bpf_fd=4<anon_inode:bpf-map>, file_flags=0}, 16) = 0\n'
             '7 renameat2(AT_FDCWD, "/tmp/a", 6</sys/fs/bpf/kmesh-test-x>, "b", RENAME_NOREPLACE) = 0\n'
             '7 mkdir("/sys/fs/bpf/nope", 0777) = -1 EEXIST (File exists)\n'
             '7 bpf(BPF_OBJ_GET, {pathname="/sys/fs/bpf/read", bpf_fd=0, file_flags=0}, 16) = 3<anon_inode:bpf-map>\n')
    assert bpffs_changes(trace) == {"/sys/fs/bpf/escape", "/sys/fs/bpf/other/m", "/sys/fs/bpf/kmesh-test-x/b"}


@pytest.mark.parametrize("name", ["../escape", "a/b", "..", "with.dot"])
def test_names_cannot_leave_the_pin_root(tmp_path: Path, pin_root: Path, name: str):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(SMALL.format(name=f'"{name}"', max_entries=10))
    err = refused("apply", str(cfg), "--auto-approve", "--pin-root", str(pin_root), expect=f"{cfg}:3")
    assert not pin_root.exists()
    assert name in err


def test_symlink_in_pin_root_path(tmp_path: Path, bpf_scratch: Path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(SMALL.format(name="m", max_entries=10))
    (bpf_scratch / "real").mkdir()
    os.symlink(bpf_scratch / "real", bpf_scratch / "link")
    refused("apply", str(cfg), "--auto-approve", "--pin-root", str(bpf_scratch / "link" / "root"), expect="symlink")
    assert list((bpf_scratch / "real").iterdir()) == []


def test_pin_root_not_on_bpffs(tmp_path: Path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(SMALL.format(name="m", max_entries=10))
    refused("apply", str(cfg), "--auto-approve", "--pin-root", str(tmp_path / "root"), expect="not on a bpf filesystem")
    assert not (tmp_path / "root").exists()


def test_alias_bomb(tmp_path: Path, pin_root: Path):
    lines = ['a0: &a0 ["x", "x", "x", "x", "x", "x", "x", "x", "x"]']
    lines += [f"a{i}: &a{i} [*a{i-1}, *a{i-1}, *a{i-1}, *a{i-1}, *a{i-1}, *a{i-1}, *a{i-1}, *a{i-1}, *a{i-1}]" for i in range(1, 10)]
    cfg = tmp_path / "bomb.yaml"
    cfg.write_text("\n".join(lines) + "\ninner_maps: {}\n")
    err = refused("plan", str(cfg), "--pin-root", str(pin_root), expect="aliases expand too far (a YAML alias bomb?)")
    assert err.startswith(f"error: {cfg}: alias expansion limit exceeded") and len(err.splitlines()) == 1, err


def test_deep_nesting(tmp_path: Path, pin_root: Path):
    cfg = tmp_path / "deep.yaml"
    cfg.write_text("inner_maps: " + "[" * 5000 + "]" * 5000 + "\n")
    err = refused("plan", str(cfg), "--pin-root", str(pin_root), expect="nested too deeply")
    assert err == f"error: {cfg}:1: invalid YAML: nested too deeply (more than 255 levels)\n"


def test_enormous_max_entries(tmp_path: Path, pin_root: Path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(SMALL.format(name="m", max_entries=2**40))
    refused("apply", str(cfg), "--auto-approve", "--pin-root", str(pin_root), expect=f"{cfg}:")


def test_enormous_file(tmp_path: Path, pin_root: Path):
    cfg = tmp_path / "huge.yaml"
    with open(cfg, "wb") as f:
        f.truncate(3 << 30)  # sparse: costs no disk
    refused("plan", str(cfg), "--pin-root", str(pin_root), expect="too large")


def test_a_program_pinned_in_the_pin_root(tmp_path: Path, pin_root: Path):
    from bpfprog import BpfProgram

    pin_root.mkdir()
    prog = BpfProgram('#include <linux/bpf.h>\n#include <bpf/bpf_helpers.h>\n'
                      'SEC("xdp") int pass(struct xdp_md *c) { return 2; }\nchar LICENSE[] SEC("license") = "GPL";\n',
                      tmp_path, pin_root / "m", {})
    prog.close()
    cfg = tmp_path / "c.yaml"
    cfg.write_text(SMALL.format(name="m", max_entries=10))
    refused("apply", str(cfg), "--auto-approve", "--pin-root", str(pin_root), expect="not a map")
    assert [p.name for p in pin_root.iterdir()] == ["m"]


def test_without_bpf_privileges(tmp_path: Path, pin_root: Path):
    """Root without capabilities is what the kernel sees of an unprivileged user (a real uid switch
    would also lose access to this checkout's virtualenv)."""
    cfg = tmp_path / "c.yaml"
    cfg.write_text(SMALL.format(name="m", max_entries=10))
    exe = Path(os.environ.get("VIRTUAL_ENV", REPO / ".venv")) / "bin" / "kmesh-apply"
    res = subprocess.run(["setpriv", "--bounding-set=-all", "--inh-caps=-all",
                          str(exe), "apply", str(cfg), "--auto-approve", "--pin-root", str(pin_root)],
                         capture_output=True, text=True)
    assert res.returncode == 1 and "Traceback" not in res.stderr, res.stderr
    assert "failed: Operation not permitted (errno 1); run as root (CAP_BPF and CAP_SYS_ADMIN)" in res.stderr, res.stderr
    assert "applied 0 steps before the failure" in res.stderr, res.stderr
    assert not pin_root.exists() or list(pin_root.iterdir()) == []
