"""Safe apply (issue 5): atomic swaps seen from BPF, SIGKILL at any point converges,
concurrent applies serialise, stale saved plans are refused."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from conftest import bpf_syscalls, pinned_maps, run_cli, traced_apply

KMESH_APPLY = str(Path(sys.executable).parent / "kmesh-apply")

SUM_PROG = r"""
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

struct values {
    __uint(type, BPF_MAP_TYPE_HASH);
    __uint(max_entries, 64);
    __type(key, __u32);
    __type(value, __u32);
};

struct {
    __uint(type, BPF_MAP_TYPE_ARRAY_OF_MAPS);
    __uint(max_entries, 4);
    __type(key, __u32);
    __array(values, struct values);
} outer SEC(".maps");

/* Sums every entry of the inner map in slot 0, reading through the outer map. */
SEC("xdp")
int sum(struct xdp_md *ctx)
{
    __u32 slot = 0, total = 0;
    void *inner = bpf_map_lookup_elem(&outer, &slot);
    if (!inner)
        return 0;
    for (__u32 i = 0; i < 64; i++) {
        __u32 k = i;
        __u32 *v = bpf_map_lookup_elem(inner, &k);
        if (v)
            total += *v;
    }
    return total;
}

char LICENSE[] SEC("license") = "GPL";
"""


def sum_config(value: int) -> str:
    entries = "\n".join(f"      {i}: {value}" for i in range(64))
    return f"""
inner_maps:
  values:
    type: hash
    key: u32
    value: u32
    max_entries: 64
    entries:
{entries}
outer_maps:
  outer:
    type: array_of_maps
    key: u32
    max_entries: 4
    inner_map: values
    entries:
      0: values
"""


def big_config(maps: int, entries: int, value: int) -> str:
    """`maps` inner hash maps of `entries` entries each, all in slots of one outer map."""
    out = ["inner_maps:"]
    for m in range(maps):
        out += [f"  svc-{m}:", "    type: hash", "    key: u32", "    value: u64", f"    max_entries: {entries}",
                "    entries:"]
        out += [f"      {i}: {value + i}" for i in range(entries)]
    out += ["outer_maps:", "  services:", "    type: hash_of_maps", "    key: u32", f"    max_entries: {maps}",
            "    inner_map: svc-0", "    entries:"]
    out += [f"      {m}: svc-{m}" for m in range(maps)]
    return "\n".join(out) + "\n"


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def cli(*args: str, root: Path, check: int | None = 0) -> subprocess.CompletedProcess:
    res = run_cli("kmesh-apply", *args, "--pin-root", str(root))
    assert "Traceback" not in res.stderr, res.stderr
    if check is not None:
        assert res.returncode == check, f"exit {res.returncode}\n{res.stdout}\n{res.stderr}"
    return res


def clean(cfg: Path, root: Path) -> bool:
    return cli("plan", str(cfg), "--detailed-exitcode", root=root, check=None).returncode == 0


def test_swap_is_atomic_for_a_bpf_reader(pin_root: Path, tmp_path: Path, bpf_scratch: Path):
    from bpfprog import BpfProgram

    one, three = write(tmp_path, "one.yaml", sum_config(1)), write(tmp_path, "three.yaml", sum_config(3))
    cli("apply", str(one), "--auto-approve", root=pin_root)
    prog = BpfProgram(SUM_PROG, tmp_path, bpf_scratch / "sum", {"outer": pin_root / "outer"})
    seen: dict[int, int] = {}
    stop = threading.Event()

    def reader() -> None:
        while not stop.is_set():
            total = prog.run()
            seen[total] = seen.get(total, 0) + 1

    t = threading.Thread(target=reader)
    t.start()
    try:
        for i in range(6):
            cli("apply", str(three if i % 2 == 0 else one), "--auto-approve", root=pin_root)
    finally:
        stop.set()
        t.join()
        prog.close()
    assert set(seen) <= {64, 192}, f"a reader saw a half-applied inner map: {seen}"
    assert seen.get(64) and seen.get(192)


def killed_apply(cfg: Path, root: Path, inject: str) -> list[str]:
    """`apply CFG`, killed by strace's fault injection at the syscall `inject` names; asserts that the kill
    landed: strace passes the tracee's death on, so it dies by SIGKILL too (an apply that ran to its end
    or failed on its own exits with a status instead). The bpf() commands it made, the last one struck."""
    res, calls = traced_apply(root, "apply", str(cfg), "--auto-approve", inject=f"{inject}:signal=KILL")
    assert res.returncode == -signal.SIGKILL, f"the kill at {inject} did not land: exit {res.returncode}\n{res.stderr}"
    return calls


def assert_converged(cfg: Path, root: Path, names: set[str]) -> None:
    cli("apply", str(cfg), "--auto-approve", root=root)
    assert clean(cfg, root)
    assert {p.name for p in pinned_maps(root)} == names, "stray pins after recovery"
    assert not (root / "_kmesh_staging").exists() or not any((root / "_kmesh_staging").iterdir()), "stray staged maps"


def staged(root: Path) -> list[str]:
    """The maps an apply has pinned aside in the pin root's staging directory."""
    staging = root / "_kmesh_staging"
    return sorted(p.name for p in staging.iterdir()) if staging.exists() else []


def test_sigkill_at_any_point_converges(pin_root: Path, tmp_path: Path):
    """Kills at bpf() calls chosen from a trace of the same apply, each checked to have landed mid-apply
    (the new state not reached) and where it was aimed: while new maps are created and filled, before any is
    pinned (the old state stands, nothing staged), and while and after they are pinned aside (staged)."""
    a = write(tmp_path, "a.yaml", big_config(20, 500, 1))
    b = write(tmp_path, "b.yaml", big_config(20, 500, 7))
    names = {f"svc-{m}" for m in range(20)} | {"services"}
    cli("apply", str(a), "--auto-approve", root=pin_root)
    calls = bpf_syscalls(pin_root, "apply", str(b), "--auto-approve")
    assert clean(b, pin_root)
    # Right after the Nth create or pin, found in a trace of the same apply. The bpf() calls before them list
    # every program on the machine (who holds the maps): when another program came or went meanwhile, the kill
    # lands elsewhere, which its own trace shows; then the same apply is traced again and the kill retried.
    for kind, n in (("BPF_MAP_CREATE", 1), ("BPF_MAP_CREATE", 10), ("BPF_OBJ_PIN", 10), ("BPF_OBJ_PIN", 20)):
        for _ in range(5):
            nth = [i for i, c in enumerate(calls) if c == kind][n - 1]
            cli("apply", str(a), "--auto-approve", root=pin_root)
            died = killed_apply(b, pin_root, f"bpf:when={nth + 2}")  # 1-based: the call after the Nth
            if len(died) > 1 and died[-2] == kind and died[:-1].count(kind) == n:
                break
            cli("apply", str(a), "--auto-approve", root=pin_root)
            calls = bpf_syscalls(pin_root, "apply", str(b), "--auto-approve")
        else:
            pytest.fail(f"the kill after {kind} #{n} landed elsewhere five times")
        assert not clean(b, pin_root), (kind, n)
        pinned_aside = died[:-1].count("BPF_OBJ_PIN")  # the last was struck: it never ran
        assert (clean(a, pin_root), len(staged(pin_root))) == (pinned_aside == 0, pinned_aside), (kind, n)
        assert_converged(b, pin_root, names)
    # Between switching the slots and moving the new maps into place.
    for when in (1, 7):
        cli("apply", str(a), "--auto-approve", root=pin_root)
        killed_apply(b, pin_root, f"rename,renameat,renameat2:when={when}")
        assert not clean(b, pin_root) and not clean(a, pin_root), when
        assert_converged(b, pin_root, names)
    # During a cold apply, while it pins the maps it created: some are there, not all.
    cli("destroy", "--auto-approve", root=pin_root)
    calls = bpf_syscalls(pin_root, "apply", str(a), "--auto-approve")
    pins = [i + 1 for i, c in enumerate(calls) if c == "BPF_OBJ_PIN"][-len(names):]  # the maps' (records first)
    for when in (pins[1], pins[len(pins) // 2], pins[-1]):
        cli("destroy", "--auto-approve", root=pin_root)
        killed_apply(a, pin_root, f"bpf:when={when}")
        assert 0 < len(pinned_maps(pin_root)) < len(names), when
        assert_converged(a, pin_root, names)


def test_concurrent_applies_serialise(pin_root: Path, tmp_path: Path):
    a = write(tmp_path, "a.yaml", big_config(5, 300, 1))
    b = write(tmp_path, "b.yaml", big_config(3, 400, 9))
    for _ in range(4):
        procs = [subprocess.Popen([KMESH_APPLY, "apply", str(c), "--auto-approve", "--pin-root", str(pin_root),
                                   "--lock-timeout", "60"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                 for c in (a, b)]
        for p in procs:
            out, err = p.communicate()
            assert p.returncode == 0, err
            assert "Traceback" not in err
        assert clean(a, pin_root) != clean(b, pin_root), "the end state must be exactly one of the two configs"


def test_lock_timeout_names_the_holder(pin_root: Path, tmp_path: Path):
    from kmesh_apply.pinroot.guard import PinRootLock

    cfg = write(tmp_path, "a.yaml", sum_config(1))
    with PinRootLock(str(pin_root)):
        res = cli("apply", str(cfg), "--auto-approve", "--lock-timeout", "0.3", root=pin_root, check=1)
        assert f"locked by process {os.getpid()}" in res.stderr
        assert cli("plan", str(cfg), root=pin_root, check=None).returncode == 0  # plan needs no lock


def test_stale_saved_plan_is_refused(pin_root: Path, tmp_path: Path):
    one, three = write(tmp_path, "one.yaml", sum_config(1)), write(tmp_path, "three.yaml", sum_config(3))
    cli("apply", str(one), "--auto-approve", root=pin_root)
    saved = tmp_path / "p.plan"
    cli("plan", str(three), "--out", str(saved), root=pin_root)
    # Someone else changes the live state after the plan was made.
    cli("apply", str(write(tmp_path, "two.yaml", sum_config(2))), "--auto-approve", root=pin_root)
    res = cli("apply", str(saved), root=pin_root, check=1)
    assert "stale" in res.stderr and "'values' changed" in res.stderr
    assert res.stdout == ""  # refused before showing what it will not do
    assert clean(tmp_path / "two.yaml", pin_root)
    cli("plan", str(three), "--out", str(saved), root=pin_root)
    cli("apply", str(saved), root=pin_root)
    assert clean(three, pin_root)
    assert json.loads(saved.read_text())["format"] == 1


def test_kernel_refusal_mid_apply_reports_and_converges(pin_root: Path, tmp_path: Path):
    """The kernel refuses per-CPU values over 32 KiB at creation, after an earlier map was applied."""
    text = """
inner_maps:
  a-first:
    type: hash
    key: u32
    value: u64
    max_entries: 4
    entries: {1: 1}
  b-stats:
    type: percpu_hash
    key: u32
    value_size: {size}
    max_entries: 4
"""
    bad = write(tmp_path, "bad.yaml", text.replace("{size}", "40000"))
    res = cli("apply", str(bad), "--auto-approve", root=pin_root, check=1)
    assert "create map on b_stats failed" in res.stderr and "errno 7" in res.stderr and "32 KiB" in res.stderr
    assert "failed step: create percpu_hash map 'b-stats'" in res.stderr
    assert "applied 2 steps" in res.stderr and "done: create hash map 'a-first'" in res.stderr
    assert "skipped: create percpu_hash map 'b-stats'" in res.stderr
    assert {p.name for p in pinned_maps(pin_root)} == {"a-first"}
    good = write(tmp_path, "good.yaml", text.replace("{size}", "64"))
    cli("apply", str(good), "--auto-approve", root=pin_root)
    assert clean(good, pin_root)
