"""One command for the issue-6 benchmark: kmesh-apply against bpftool, a naive applier and C.

    .venv/bin/python bench/run.py [--quick] [--only S,K,B,G] [--runs N] [--markdown] [--pin-root DIR]

Builds bench/c/batch_apply.c, generates the workloads (bench/workloads.py), then runs
every competitor on the same data, each in a fresh pin root under /sys/fs/bpf or --pin-root (removed
afterwards, also on failure or Ctrl-C), and prints one table of times (median), ratios,
bpf() syscall counts (perf stat of the sys_enter_bpf tracepoint, or strace) and peak RSS (per child, /usr/bin/time), the S-like growth
curve, and each issue-6 target as met / not met. Needs root.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import re
import secrets
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Sequence

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path.insert(0, str(BENCH))

import workloads  # noqa: E402  (bench/ is not a package)

BPFFS = Path("/sys/fs/bpf")
C_SOURCE = BENCH / "c" / "batch_apply.c"
C_BINARY = BENCH / "bin" / "batch_apply"
CHILD_TIMEOUT = 900.0
TIME = "/usr/bin/time"  # GNU time: the peak RSS of one child (scripts/setup installs it)

# Competitor labels, in table order.
C_PROG = "C, libbpf batch"
BPFTOOL = "bpftool batch file"
DUMP = "bpftool map dump"
NAIVE = "naive Python"
# kmesh-apply runs: cold = empty pin root and empty config cache (a new node); the no-op plan and
# the change then find the cache the cold apply left, as on a node that applied before; the
# "no cache" rows run with KMESH_APPLY_CACHE_DIR=off, parsing the whole file every time.
COLD = "kmesh-apply apply (cold)"
NOOP = "kmesh-apply plan (no-op)"
NOOP_AGAIN = "kmesh-apply plan (no-op, repeated)"
NOOP_NC = "kmesh-apply plan (no-op, no cache)"
CHANGE = "kmesh-apply apply (change)"
CHANGE_NC = "kmesh-apply apply (change, no cache)"
# Reading the pin root back as a config (beside `bpftool map dump`, which reads it back as text).
SHOW = "kmesh-apply show"
# What `watch`'s drift check costs a core, in CPU seconds per check (bench/drift_check.py).
DRIFT = "watch drift check (CPU s a check)"
KMESH = (COLD, NOOP, NOOP_AGAIN, NOOP_NC, CHANGE, CHANGE_NC, SHOW, DRIFT)
ORDER = (COLD, NOOP, NOOP_AGAIN, NOOP_NC, CHANGE, CHANGE_NC, SHOW, DRIFT, C_PROG, BPFTOOL, DUMP, NAIVE)
DRIFT_INTERVAL = 60.0  # watch's default --drift-interval
NO_CACHE = "off"
SLOW = (BPFTOOL, DUMP, NAIVE)  # one syscall per entry: run fewer times

GROWTH = ("S10k", "S100k", "S", "S1M")
QUICK_GROWTH = ("S10k", "S100k", "S")


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# --- running children ----------------------------------------------------------------------


_EXCEPTION_LINE = re.compile(r"^[A-Za-z_][\w.]*(Error|Exception|Interrupt|Exit)\b.*")


@dataclass
class Outcome:
    seconds: float
    rss_kb: int
    rc: int
    stderr: str

    @property
    def first_error_line(self) -> str:
        """The first line of stderr, or for a traceback the exception's line (its first line is noise)."""
        lines = [ln.strip() for ln in self.stderr.splitlines() if ln.strip()]
        raised = [ln for ln in lines if _EXCEPTION_LINE.match(ln)]
        return (raised or lines or [""])[-1 if raised else 0]


def _env() -> dict[str, str]:
    env = dict(os.environ, NO_COLOR="1", PYTHONDONTWRITEBYTECODE="1")
    env.pop("KMESH_PIN_ROOT", None)
    return env


def _kill_group(proc: subprocess.Popen) -> None:
    """Kill the child and whatever it started (time -> command -> ...): they share a session."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()


def run_child(argv: Sequence[str], timeout: float = CHILD_TIMEOUT, stdout: Path | None = None) -> Outcome:
    """Run argv with stdout discarded (or written to `stdout`): wall time, and the peak RSS of argv alone.

    The peak RSS comes from /usr/bin/time, because wait4's ru_maxrss of a child
    forked by this (larger) process starts at this process's RSS.
    """
    with tempfile.TemporaryFile() as err, tempfile.NamedTemporaryFile("r", suffix=".rss") as rss, \
            (stdout.open("wb") if stdout else open(os.devnull, "wb")) as out:
        start = time.perf_counter()
        proc = subprocess.Popen([TIME, "-f", "%M", "-o", rss.name, *argv], stdin=subprocess.DEVNULL,
                                stdout=out, stderr=err, env=_env(), cwd=ROOT, start_new_session=True)
        # Popen.wait(timeout) polls with sleeps of up to 50 ms, which rounded every time up by as
        # much; a blocking wait returns at the exit, and a timer enforces the timeout.
        timer = threading.Timer(timeout, _kill_group, (proc,))
        timer.start()
        try:
            proc.wait()
        except BaseException:
            _kill_group(proc)
            raise
        finally:
            timer.cancel()
        seconds = time.perf_counter() - start
        if seconds >= timeout:
            err.write(f"timed out after {timeout:.0f} s\n".encode())
        err.seek(0)
        text = err.read().decode(errors="replace")
        last = (rss.read().strip().splitlines() or ["0"])[-1]
    return Outcome(seconds, int(last) if last.isdigit() else 0, proc.returncode, text)


def count_bpf_syscalls(argv: Sequence[str]) -> tuple[int | None, Outcome]:
    """bpf() calls made by argv and its children (None when neither perf nor strace is there).

    perf counts the sys_enter_bpf tracepoint at next to no cost; strace (a ptrace stop per
    call, about 100 us here) is the fallback.
    """
    with tempfile.NamedTemporaryFile("r", suffix=".count") as out:
        if shutil.which("perf"):
            outcome = run_child(["perf", "stat", "-x,", "-e", "syscalls:sys_enter_bpf", "-o", out.name, "--", *argv])
            for line in out.read().splitlines():
                fields = line.split(",")
                if len(fields) > 2 and fields[2] == "syscalls:sys_enter_bpf" and fields[0].isdigit():
                    return int(fields[0]), outcome
        if shutil.which("strace"):
            outcome = run_child(["strace", "-f", "--seccomp-bpf", "-c", "-e", "trace=bpf", "-o", out.name, "--", *argv])
            for line in out.read().splitlines():
                parts = line.split()
                if parts and parts[-1] == "total":
                    return int(parts[3]), outcome
            return 0, outcome
    return None, run_child(argv)


# --- pin roots ---------------------------------------------------------------------------------


_live_roots: set[Path] = set()


def _remove_root(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)
    _live_roots.discard(path)


@contextmanager
def fresh_pin_root() -> Iterator[str]:
    """A new empty pin root under --pin-root, checked and made (mode 0700) as kmesh-apply makes one,
    and removed with everything pinned in it, whatever happens."""
    from kmesh_apply.pinroot.guard import PinRoot

    path = _pin_parent / f"kmesh-bench-{secrets.token_hex(4)}"
    _live_roots.add(path)
    try:
        PinRoot.make(str(path)).close()
        yield str(path)
    finally:
        _remove_root(path)


_pin_parent = BPFFS  # where fresh pin roots are made (--pin-root)


def _on_sigterm(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


# --- results --------------------------------------------------------------------------------


@dataclass
class Result:
    times: list[float] = field(default_factory=list)
    rss_kb: int = 0
    syscalls: int | None = None
    error: str | None = None
    note: str = ""

    @property
    def median(self) -> float | None:
        return statistics.median(self.times) if self.times else None

    def add(self, outcome: Outcome, expect_rc: int = 0) -> bool:
        """Record a timed run; False (and the error) when it did not exit as expected."""
        if outcome.rc != expect_rc:
            self.error = f"exit {outcome.rc}: {outcome.first_error_line or '(no message)'}"
            return False
        self.times.append(outcome.seconds)
        self.rss_kb = max(self.rss_kb, outcome.rss_kb)
        return True


Results = dict[str, dict[str, Result]]  # workload -> competitor -> result


# --- the competitors ----------------------------------------------------------------------


_kmesh_apply_override: str | None = None  # --kmesh-apply: benchmark another build


def kmesh_apply_bin() -> str:
    if _kmesh_apply_override:
        return _kmesh_apply_override
    local = ROOT / ".venv" / "bin" / "kmesh-apply"
    return str(local) if local.exists() else (shutil.which("kmesh-apply") or str(local))


def kmesh_argv(verb: str, config: Path, pin_root: str) -> list[str]:
    extra = ["--auto-approve"] if verb == "apply" else ["--detailed-exitcode"]
    return [kmesh_apply_bin(), verb, str(config), "--pin-root", pin_root, *extra]


def kmesh_cmd(verb: str, config: Path, pin_root: str, cache: str | Path = NO_CACHE) -> list[str]:
    """A kmesh-apply command line run with `cache` as its config cache directory (or "off")."""
    return ["env", f"KMESH_APPLY_CACHE_DIR={cache}", *kmesh_argv(verb, config, pin_root)]


def build_c() -> None:
    """Compile the C competitor (at run time: binaries are never committed)."""
    if C_BINARY.exists() and C_BINARY.stat().st_mtime >= C_SOURCE.stat().st_mtime:
        return
    C_BINARY.parent.mkdir(parents=True, exist_ok=True)
    cmd = ["cc", "-O2", "-Wall", "-o", str(C_BINARY), str(C_SOURCE), "-lbpf"]
    log("building " + " ".join(cmd))
    subprocess.run(cmd, check=True)


def _batch_file(template: Path, pin_root: str, tmp: Path) -> str:
    """The bpftool batch file with the placeholder replaced by this run's pin root (not timed)."""
    out = tmp / f"{template.stem}-{Path(pin_root).name}.batch"
    out.write_text(template.read_text().replace(workloads.PIN_PLACEHOLDER, pin_root))
    return str(out)


_FOUND = re.compile(rb"^Found (\d+) elements?$", re.M)


def judge_dump(outcome: Outcome, output: Path, meta: dict) -> tuple[Outcome, str]:
    """The `bpftool map dump` row by what it printed, not by its exit code alone.

    `bpftool batch file` ends by testing errno rather than the stream's error flag (main.c,
    do_batch: `if (errno && errno != ENOENT) p_err("reading batch file failed: ...")`), so a
    complete run whose commands left some errno behind (seen as "Bad file descriptor" on
    another host) exits 255. A dump is accepted when every map printed its "Found N elements"
    line and the counts add up to the workload's entries and slots; the note says so.
    """
    found = [int(n) for n in _FOUND.findall(output.read_bytes())]
    if len(found) != len(meta["map_names"]) or sum(found) != meta["entries"] + meta["slots"]:
        return outcome, "" if outcome.rc else f"CHECK FAILED: dumped {sum(found):,} entries of {len(found)} maps"
    if outcome.rc == 0:
        return outcome, ""
    note = f"complete dump, then exit {outcome.rc}: {outcome.first_error_line}"
    return Outcome(outcome.seconds, outcome.rss_kb, 0, outcome.stderr), note


def verify(pin_root: str, meta: dict) -> str | None:
    """A cheap check that a competitor built the workload: every map pinned, sample entries right."""
    pinned = set(os.listdir(pin_root))
    missing = [n for n in meta["map_names"] if n not in pinned]
    if missing:
        return f"{len(missing)} map(s) not pinned, e.g. {missing[0]}"
    try:
        from kmesh_apply.kernel.maps import Map
    except Exception as e:  # the kernel layer is someone else's work in progress
        return f"(not verified: {e})"
    for name, entries in meta["sample"].items():
        with Map.open_pinned(os.path.join(pin_root, name)) as m:
            for key, value in entries.items():
                got = m.lookup(bytes.fromhex(key))
                if got is None or got.hex() != value:
                    return f"{name}: key {key} holds {got.hex() if got else 'nothing'}, expected {value}"
    return None


@dataclass
class Plan:
    """How much to run: chosen by --quick / --runs."""

    runs: int
    slow_runs: int
    count_slow: bool  # count the per-entry competitors' calls too (as slow as their timed run)
    count_calls: bool


def bench_workload(name: str, wdir: Path, plan: Plan, kmesh_ok: bool, tmp: Path) -> dict[str, Result]:
    meta = json.loads((wdir / "meta.json").read_text())
    res = {label: Result() for label in ORDER}
    config, change = wdir / "config.yaml", wdir / "change.yaml"
    binary = str(wdir / "input.bin")

    def check(label: str, pin_root: str) -> None:
        problem = verify(pin_root, meta)
        if problem:
            res[label].note = "CHECK FAILED: " + problem
            log(f"{name}: {label}: {problem}")

    for rep in range(plan.runs):
        log(f"{name}: run {rep + 1}/{plan.runs}: C, kmesh-apply")
        with fresh_pin_root() as p:
            if res[C_PROG].add(run_child([str(C_BINARY), binary, p])) and rep == 0:
                check(C_PROG, p)
        if kmesh_ok and not res[COLD].error:
            cache = tmp / f"cache-{name}-{rep}"  # empty: the cold apply fills it
            with fresh_pin_root() as p:
                if not res[COLD].add(run_child(kmesh_cmd("apply", config, p, cache))):
                    continue
                if rep == 0:
                    check(COLD, p)
                res[NOOP].add(run_child(kmesh_cmd("plan", config, p, cache)), expect_rc=0)
                # The drift check of a node that planned before: large maps found equal are remembered.
                res[NOOP_AGAIN].add(run_child(kmesh_cmd("plan", config, p, cache)), expect_rc=0)
                res[NOOP_NC].add(run_child(kmesh_cmd("plan", config, p)), expect_rc=0)
                shown = tmp / f"show-{name}.yaml"
                if res[SHOW].add(run_child([kmesh_apply_bin(), "show", "--pin-root", p], stdout=shown)) and rep == 0:
                    again = run_child(kmesh_cmd("plan", shown, p))  # what show prints, planned: no changes
                    if again.rc != 0:
                        res[SHOW].note = f"CHECK FAILED: a plan of its output exits {again.rc}"
                shown.unlink(missing_ok=True)
                drift_check(res[DRIFT], config, p, cache, tmp)
                if res[CHANGE].add(run_child(kmesh_cmd("apply", change, p, cache))) and rep == 0:
                    after = run_child(kmesh_cmd("plan", change, p))
                    if after.rc != 0:
                        res[CHANGE].note = f"CHECK FAILED: plan after the change exits {after.rc}"
                run_child(kmesh_cmd("apply", config, p, cache))  # back, untimed
                res[CHANGE_NC].add(run_child(kmesh_cmd("apply", change, p)))
            shutil.rmtree(cache, ignore_errors=True)
    for rep in range(plan.slow_runs if meta.get("per_entry_competitors", True) else 0):
        log(f"{name}: run {rep + 1}/{plan.slow_runs}: bpftool, naive Python")
        with fresh_pin_root() as p:
            if res[BPFTOOL].add(run_child(["bpftool", "batch", "file", _batch_file(wdir / "bpftool.batch", p, tmp)])):
                if rep == 0:
                    check(BPFTOOL, p)
                dumped = tmp / f"dump-{name}.out"
                outcome, note = judge_dump(run_child(["bpftool", "batch", "file", _batch_file(wdir / "dump.batch", p, tmp)],
                                                     stdout=dumped), dumped, meta)
                dumped.unlink()
                if res[DUMP].add(outcome) and note:
                    res[DUMP].note = note
        with fresh_pin_root() as p:
            if res[NAIVE].add(run_child([sys.executable, str(BENCH / "naive_apply.py"), binary, p])) and rep == 0:
                check(NAIVE, p)
    if plan.count_calls:
        log(f"{name}: counting bpf() syscalls")
        with fresh_pin_root() as p:
            res[C_PROG].syscalls, _ = count_bpf_syscalls([str(C_BINARY), binary, p])
        if kmesh_ok and not res[COLD].error:
            cache = tmp / f"cache-{name}-count"
            with fresh_pin_root() as p:
                res[COLD].syscalls, _ = count_bpf_syscalls(kmesh_cmd("apply", config, p, cache))
                res[NOOP].syscalls, _ = count_bpf_syscalls(kmesh_cmd("plan", config, p, cache))
                res[CHANGE].syscalls, _ = count_bpf_syscalls(kmesh_cmd("apply", change, p, cache))
            shutil.rmtree(cache, ignore_errors=True)
        if plan.count_slow and meta.get("per_entry_competitors", True):
            with fresh_pin_root() as p:
                res[BPFTOOL].syscalls, _ = count_bpf_syscalls(
                    ["bpftool", "batch", "file", _batch_file(wdir / "bpftool.batch", p, tmp)])
                res[DUMP].syscalls, _ = count_bpf_syscalls(
                    ["bpftool", "batch", "file", _batch_file(wdir / "dump.batch", p, tmp)])
            with fresh_pin_root() as p:
                res[NAIVE].syscalls, _ = count_bpf_syscalls([sys.executable, str(BENCH / "naive_apply.py"), binary, p])
    return res


def drift_check(result: Result, config: Path, pin_root: str, cache: Path, tmp: Path) -> None:
    """The CPU time of one of `watch`'s drift checks on the applied pin root, as bench/drift_check.py
    measures it in a child (it takes the pin root's lock); recorded as the row's time."""
    out = tmp / "drift.json"
    outcome = run_child(["env", f"KMESH_APPLY_CACHE_DIR={cache}", sys.executable, str(BENCH / "drift_check.py"),
                         str(config), pin_root], stdout=out)
    try:
        found = json.loads(out.read_text().splitlines()[-1]) if outcome.rc == 0 else None
    except (ValueError, IndexError):
        found = None
    out.unlink(missing_ok=True)
    if found is None:
        result.add(outcome if outcome.rc else Outcome(0.0, 0, 1, "no result from bench/drift_check.py"))
        return
    if result.add(Outcome(found["cpu_seconds"], outcome.rss_kb, 0, "")):
        result.note = (f"{100 * result.median / DRIFT_INTERVAL:.2f}% of a core at --drift-interval 60; "
                       f"{found['wall_seconds']:.3f} s wall" + (f"; CHECK FAILED: drift {found['drift']}" if found["drift"] else ""))


TINY_CONFIG = """\
inner_maps:
  probe_in:
    type: hash
    key: u32
    value: u64
    max_entries: 4
    entries: {1: 2, 3: 4}
outer_maps:
  probe_outer:
    type: hash_of_maps
    key: u32
    max_entries: 2
    inner_map: probe_in
    entries: {1: probe_in}
"""


def probe_kmesh_apply(tmp: Path) -> str | None:
    """None when `kmesh-apply apply` works on a tiny config; else why not, for the table."""
    config = tmp / "probe.yaml"
    config.write_text(TINY_CONFIG)
    with fresh_pin_root() as p:
        for verb in ("apply", "plan"):
            out = run_child(kmesh_cmd(verb, config, p), timeout=120)
            if out.rc != 0:
                return f"kmesh-apply: not available (exit {out.rc}: {out.first_error_line or 'no message'})"
        pinned = sorted(n for n in os.listdir(p) if not n.startswith("_kmesh"))  # beside the tool's own records
        if pinned != ["probe_in", "probe_outer"]:
            shown = ", ".join(pinned[:3]) + (f" and {len(pinned) - 3} more" if len(pinned) > 3 else "")
            return f"kmesh-apply: not available (apply of probe_in, probe_outer pinned: {shown or 'nothing'})"
    return None


def time_help(runs: int) -> Result:
    res = Result()
    for _ in range(runs):
        res.add(run_child([kmesh_apply_bin(), "--help"]))
    return res


# --- targets -------------------------------------------------------------------------------


@dataclass
class Target:
    measure: str
    target: str
    check: Callable[[Results, Result | None], tuple[str, bool] | None]  # (measured, met) or None if n/a


def _t(results: Results, w: str, label: str) -> float | None:
    r = results.get(w, {}).get(label)
    return r.median if r and not r.error else None


def _ratio_target(w: str, label: str, ref: str, limit: float) -> Callable[[Results, Result | None], tuple[str, bool] | None]:
    def check(results: Results, _: Result | None) -> tuple[str, bool] | None:
        a, b = _t(results, w, label), _t(results, w, ref)
        if a is None or b is None:
            return None
        return f"{a:.3f} s vs {b:.3f} s = {a / b:.3g}x", a / b <= limit
    return check


def _abs_target(w: str, label: str, limit: float) -> Callable[[Results, Result | None], tuple[str, bool] | None]:
    def check(results: Results, _: Result | None) -> tuple[str, bool] | None:
        a = _t(results, w, label)
        return None if a is None else (f"{a:.3f} s", a <= limit)
    return check


def _syscall_target(w: str, label: str, limit: int) -> Callable[[Results, Result | None], tuple[str, bool] | None]:
    def check(results: Results, _: Result | None) -> tuple[str, bool] | None:
        r = results.get(w, {}).get(label)
        if r is None or r.syscalls is None or r.error:
            return None
        return f"{r.syscalls:,} bpf() calls", r.syscalls <= limit
    return check


def _rss_target(w: str, label: str, limit_mb: float) -> Callable[[Results, Result | None], tuple[str, bool] | None]:
    def check(results: Results, _: Result | None) -> tuple[str, bool] | None:
        r = results.get(w, {}).get(label)
        if r is None or r.error or not r.times:
            return None
        return f"{r.rss_kb / 1024:.0f} MB", r.rss_kb / 1024 <= limit_mb
    return check


def _drift_target(w: str, share: float) -> Callable[[Results, Result | None], tuple[str, bool] | None]:
    """A drift check's CPU time, as a share of one core at watch's default interval."""
    def check(results: Results, _: Result | None) -> tuple[str, bool] | None:
        a = _t(results, w, DRIFT)
        return None if a is None else (f"{a:.3f} s CPU a check = {100 * a / DRIFT_INTERVAL:.2f}% of a core", a / DRIFT_INTERVAL < share)
    return check


def _help_target(results: Results, help_result: Result | None) -> tuple[str, bool] | None:
    if help_result is None or help_result.median is None:
        return None
    return f"{help_result.median:.3f} s", help_result.median <= 0.3


def _linear_target(label: str, small: str, big: str) -> Callable[[Results, Result | None], tuple[str, bool] | None]:
    """Linear growth between two workloads: the per-entry cost at `big` is at most 1.5x the one at `small`."""
    def check(results: Results, _: Result | None) -> tuple[str, bool] | None:
        a, b = _t(results, small, label), _t(results, big, label)
        if a is None or b is None:
            return None
        n_small, n_big = (workloads.SHAPES[w].entries for w in (small, big))
        per_a, per_b = a / n_small * 1e6, b / n_big * 1e6
        return f"{per_a:.2f} -> {per_b:.2f} us/entry", per_b <= 1.5 * per_a
    return check


TARGETS = (
    Target("S cold apply", "<= 0.1x bpftool batch", _ratio_target("S", COLD, BPFTOOL, 0.1)),
    Target("S cold apply", "<= 5x the C program", _ratio_target("S", COLD, C_PROG, 5.0)),
    Target("S no-op plan", "<= 0.1x bpftool batch apply", _ratio_target("S", NOOP, BPFTOOL, 0.1)),
    Target("S no-op plan", "faster than bpftool map dump", _ratio_target("S", NOOP, DUMP, 1.0)),
    Target("S one-entry change", "<= 2,000 bpf() calls", _syscall_target("S", CHANGE, 2000)),
    Target("K cold apply", "<= 3 s", _abs_target("K", COLD, 3.0)),
    Target("K one-service change (CLI)", "<= 0.5 s", _abs_target("K", CHANGE, 0.5)),
    Target("B cold apply", "<= 3 s", _abs_target("B", COLD, 3.0)),
    Target("B cold apply peak RSS", "<= 500 MB", _rss_target("B", COLD, 500)),
    Target("B no-op plan", "<= 2 s", _abs_target("B", NOOP, 2.0)),
    Target("kmesh-apply --help", "<= 0.3 s", _help_target),
    Target("growth, cold apply", "linear: us/entry at 1M <= 1.5x at 100k", _linear_target(COLD, "S100k", "S1M")),
    Target("growth, no-op plan", "linear: us/entry at 1M <= 1.5x at 100k", _linear_target(NOOP, "S100k", "S1M")),
    # Issue 15: a change costs what changed, in time and memory.
    Target("B one-entry change", "<= 0.5x the C program", _ratio_target("B", CHANGE, C_PROG, 0.5)),
    Target("B no-op plan", "<= 1x the C program", _ratio_target("B", NOOP, C_PROG, 1.0)),
    Target("B no-op plan, repeated", "<= 1x the C program", _ratio_target("B", NOOP_AGAIN, C_PROG, 1.0)),
    Target("B cold apply", "<= 3x the C program", _ratio_target("B", COLD, C_PROG, 3.0)),
    Target("B cold apply peak RSS", "<= 150 MB", _rss_target("B", COLD, 150)),
    Target("B no-op plan peak RSS", "<= 150 MB", _rss_target("B", NOOP, 150)),
    Target("B one-entry change peak RSS", "<= 150 MB", _rss_target("B", CHANGE, 150)),
    Target("growth 1M -> 10M, cold apply", "linear: us/entry at 10M <= 1.5x at 1M", _linear_target(COLD, "B", "B10M")),
    Target("growth 1M -> 10M, no-op plan", "linear: us/entry at 10M <= 1.5x at 1M", _linear_target(NOOP, "B", "B10M")),
    Target("growth 1M -> 10M, one-entry change", "linear: us/entry at 10M <= 1.5x at 1M", _linear_target(CHANGE, "B", "B10M")),
    # Issue 25: speed at Kmesh scale.
    Target("K show", "<= 1x bpftool map dump", _ratio_target("K", SHOW, DUMP, 1.0)),
    Target("K show peak RSS", "<= 100 MB", _rss_target("K", SHOW, 100)),
    Target("B show", "<= 2 s", _abs_target("B", SHOW, 2.0)),
    Target("K cold apply", "<= 5x the C program", _ratio_target("K", COLD, C_PROG, 5.0)),
    Target("S cold apply", "<= 3x the C program", _ratio_target("S", COLD, C_PROG, 3.0)),
    Target("K one-service change (CLI)", "<= 0.3 s", _abs_target("K", CHANGE, 0.3)),
    Target("K no-op plan", "<= 3x the C program", _ratio_target("K", NOOP, C_PROG, 3.0)),
    Target("B no-op plan", "<= 0.2x the C program", _ratio_target("B", NOOP, C_PROG, 0.2)),
    Target("B no-op plan, repeated", "<= 0.2x the C program", _ratio_target("B", NOOP_AGAIN, C_PROG, 0.2)),
    Target("watch drift check at K", "< 1% of a core (interval 60 s)", _drift_target("K", 0.01)),
    Target("watch drift check at B", "< 1% of a core (interval 60 s)", _drift_target("B", 0.01)),
)


# --- rendering --------------------------------------------------------------------------------


def table(headers: Sequence[str], rows: Sequence[Sequence[str]], markdown: bool) -> str:
    if markdown:
        lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
        lines += ["| " + " | ".join(r) + " |" for r in rows]
        return "\n".join(lines)
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)]
    fmt = lambda r: "  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip()  # noqa: E731
    return "\n".join([fmt(headers), fmt(["-" * w for w in widths]), *map(fmt, rows)])


def _secs(v: float | None) -> str:
    return "-" if v is None else f"{v:.3f}"


def _ratio(a: float | None, b: float | None) -> str:
    return "-" if a is None or not b else f"{a / b:.3g}x"


def _shown_python() -> str:
    """How the runner was invoked, relative to the repository when it is the project's venv."""
    exe = Path(sys.executable)
    return str(exe.relative_to(ROOT)) if exe.is_relative_to(ROOT) else exe.name


def machine() -> str:
    cpu = next((ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                if ln.startswith("model name")), platform.processor())
    mem = int(next(ln.split()[1] for ln in Path("/proc/meminfo").read_text().splitlines()
                   if ln.startswith("MemTotal"))) / 1024 / 1024
    bpftool = subprocess.run(["bpftool", "version"], capture_output=True, text=True).stdout.splitlines()
    return (f"{os.cpu_count()} cores ({cpu}), {mem:.0f} GB RAM, kernel {platform.release()}, "
            f"Python {platform.python_version()}, {'; '.join(bpftool[:2])}")


def report(results: Results, help_result: Result | None, unavailable: str | None, args: argparse.Namespace,
           plan: Plan, markdown: bool, elapsed: float) -> str:
    md = markdown
    out: list[str] = []

    def heading(text: str, level: int = 3) -> None:
        out.extend([("#" * level + " " if md else "") + text, ""])

    heading("kmesh-apply benchmark (issue 6)", 2)
    out.append(f"- command: `{' '.join(shlex.quote(a) for a in [_shown_python(), 'bench/run.py', *args.argv])}`"
               f" ({plan.runs} timed run(s), median; {plan.slow_runs} for bpftool and naive Python)")
    out.append(f"- date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M UTC}; took {elapsed:.0f} s")
    out.append(f"- machine: {machine()}")
    if unavailable:
        out.append(f"- {unavailable}")
    out.append("")
    for w, res in results.items():
        meta = json.loads((workloads.DEFAULT_OUT / w / "meta.json").read_text())
        heading(f"{w}: {meta['description']}")
        ref_bpftool, ref_c = res[BPFTOOL].median, res[C_PROG].median
        rows = []
        for label in ORDER:
            r = res[label]
            if label in KMESH and unavailable:
                continue
            rows.append([
                label if label != CHANGE else f"{label}: {meta['changed_entries']} entr{'y' if meta['changed_entries'] == 1 else 'ies'}",
                r.error or _secs(r.median), str(len(r.times)),
                *(("-", "-") if label == DUMP else (_ratio(r.median, ref_bpftool), _ratio(r.median, ref_c))),
                "-" if r.syscalls is None else f"{r.syscalls:,}",
                f"{r.rss_kb / 1024:.0f}" if r.times else "-", r.note,
            ])
        out.append(table(["competitor", "time s", "runs", "/ bpftool batch", "/ C", "bpf() calls", "peak RSS MB",
                          "note"], rows, md))
        out.append("")
    growth = [w for w in GROWTH if w in results]
    if len(growth) > 1:
        heading("Growth (S-like: 200 inner maps, entries per map varied)")
        rows = []
        for w in growth:
            n = json.loads((workloads.DEFAULT_OUT / w / "meta.json").read_text())["entries"]
            row = [f"{w} ({n:,})"]
            for label in (COLD, NOOP, C_PROG, BPFTOOL, NAIVE):
                t = _t(results, w, label)
                row.append("-" if t is None else f"{t:.3f} ({t / n * 1e6:.2f} us/e)")
            rows.append(row)
        out.append(table(["workload (entries)", COLD, NOOP, C_PROG, BPFTOOL, NAIVE], rows, md))
        out.append("")
    heading("Targets (issues 6, 15 and 25)")
    rows = []
    for t in TARGETS:
        got = t.check(results, help_result)
        rows.append([t.measure, t.target, *(("-", "n/a") if got is None else (got[0], "met" if got[1] else "NOT MET"))])
    out.append(table(["measure", "target", "measured", "status"], rows, md))
    return "\n".join(out)


# --- main ----------------------------------------------------------------------------------


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description="Run the issue-6 benchmark and print the table.")
    ap.add_argument("--quick", action="store_true", help="one run each, growth up to S, bpf() calls of kmesh-apply and C only")
    ap.add_argument("--only", default="", help="comma list of S, K, B, G (growth) or workload names")
    ap.add_argument("--runs", type=int, help="timed runs per fast competitor (default 3, quick 1)")
    ap.add_argument("--slow-runs", type=int, help="timed runs of bpftool and naive Python (default 1)")
    ap.add_argument("--no-counts", action="store_true", help="skip the bpf() syscall counts (perf or strace)")
    ap.add_argument("--kmesh-apply", metavar="PATH", help="the kmesh-apply to run (default: .venv/bin/kmesh-apply)")
    ap.add_argument("--markdown", action="store_true", help="print the results as markdown (for bench/RESULTS.md)")
    ap.add_argument("--pin-root", metavar="DIR", type=Path, default=BPFFS,
                    help=f"bpffs directory in which each run's fresh pin root is made and removed (default {BPFFS})")
    args = ap.parse_args(argv)
    args.argv = list(argv)
    return args


def selected(args: argparse.Namespace) -> list[str]:
    growth = QUICK_GROWTH if args.quick else GROWTH
    names: list[str] = []
    for part in (args.only.split(",") if args.only else ["S", "K", "B", "G"]):
        part = part.strip()
        expanded = list(growth) if part == "G" else [part]
        for n in expanded:
            if n not in workloads.SHAPES:
                raise SystemExit(f"unknown workload {n}; known: {', '.join(workloads.SHAPES)} and G")
            if n not in names:
                names.append(n)
    return names


def main(argv: Sequence[str]) -> int:
    args = parse_args(argv)
    if os.geteuid() != 0:
        raise SystemExit("bench/run.py needs root (it creates and pins BPF maps)")
    if not os.access(TIME, os.X_OK):
        raise SystemExit(f"bench/run.py needs GNU time at {TIME} (apt-get install time)")
    runs = args.runs or (1 if args.quick else 3)
    plan = Plan(runs=runs, slow_runs=args.slow_runs or 1, count_calls=not args.no_counts, count_slow=not args.quick)
    names = selected(args)
    global _kmesh_apply_override, _pin_parent
    _kmesh_apply_override = args.kmesh_apply
    from kmesh_apply.errors import KmeshError

    _pin_parent = args.pin_root.absolute()
    try:  # --pin-root holds pin roots, it is not one: bpffs's own root (sticky, 1777) is fine
        with fresh_pin_root():
            pass
    except KmeshError as e:
        raise SystemExit(f"--pin-root: {e}") from None
    signal.signal(signal.SIGTERM, _on_sigterm)
    started = time.perf_counter()
    results: Results = {}
    help_result: Result | None = None
    try:
        build_c()
        # Children run with PYTHONDONTWRITEBYTECODE: byte-compile once, or an edited module is recompiled every run.
        subprocess.run([sys.executable, "-m", "compileall", "-q", str(ROOT / "kmesh_apply")], check=False)
        with tempfile.TemporaryDirectory(prefix="kmesh-bench-") as tmpdir:
            tmp = Path(tmpdir)
            unavailable = probe_kmesh_apply(tmp)
            if unavailable:
                log(unavailable)
            else:
                help_result = time_help(max(5, runs))
            for name in names:
                wdir = workloads.generate(name, log=log)
                results[name] = bench_workload(name, wdir, plan, unavailable is None, tmp)
    except KeyboardInterrupt:
        log("interrupted; pin roots removed")
        return 130
    finally:
        for root in list(_live_roots):
            _remove_root(root)
    print(report(results, help_result, unavailable, args, plan, args.markdown, time.perf_counter() - started))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
