"""The synchroniser's retries against the real kernel failing: a map frozen by someone else (the kernel
refuses every update), a map filled up by another writer, a pin removed in the middle of a flush.
Backoffs are read on a clock the test steps by hand; what the kernel holds is read with bpftool."""

from __future__ import annotations

import os
import subprocess
import threading
from pathlib import Path
from typing import Callable

import pytest

from conftest import bpftool_json
from kmesh_apply import load_config
from kmesh_apply.errors import ApplyError, ConfigError, Diagnostic
from kmesh_apply.executor import ApplyReport
from kmesh_apply.plan.model import Plan, Step
from kmesh_apply.state import LiveState
from kmesh_apply.sync import Synchroniser
from kmesh_apply.sync.kernel import PinRootKernel
from kmesh_apply.sync.retries import BACKOFF_MAX, backoff
from kmesh_apply.sync.synchroniser import SHOWN_DIAGNOSTICS

CONFIG = """
inner_maps:
  a: {type: hash, key: u32, value: u64, max_entries: 8, entries: {1: 10, 2: 20}}
  b: {type: hash, key: u32, value: u64, max_entries: 2, manage_entries: listed, entries: {3: 30}}
outer_maps:
  o: {type: hash_of_maps, key: u32, max_entries: 4, inner_map: a, entries: {0: a, 1: a}}
"""


class Clock:
    """A monotonic clock that moves only when the test says."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Recorded:
    def __init__(self) -> None:
        self.events: list[tuple] = []

    def reconcile(self, outcome: str, seconds: float) -> None:
        self.events.append(("reconcile", outcome))

    def drift(self, differences: int) -> None:
        self.events.append(("drift", differences))

    def config_error(self) -> None:
        self.events.append(("config_error",))


@pytest.fixture
def setup(pin_root: Path) -> tuple[Synchroniser, Clock, Recorded]:
    clock, recorder = Clock(), Recorded()
    with Synchroniser(str(pin_root), recorder=recorder, clock=clock) as sync:
        sync.apply(load_config(inline=CONFIG))
        yield sync, clock, recorder


def entries(root: Path, name: str) -> dict[int, int]:
    """A map's entries as bpftool formats them (the map's BTF says u32 -> u64)."""
    return {e["formatted"]["key"]: e["formatted"]["value"]
            for e in bpftool_json("map", "dump", "pinned", str(root / name)) or []}


def map_id(root: Path, name: str) -> int:
    return bpftool_json("map", "show", "pinned", str(root / name))["id"]


def slots(root: Path, outer: str) -> dict[int, int]:
    """{slot: ID of the inner map in it}, from bpftool's raw bytes (an outer map has no BTF)."""
    raw = lambda hexes: int.from_bytes(bytes(int(h, 16) for h in hexes), "little")  # noqa: E731
    return {raw(e["key"]): raw(e["value"]) for e in bpftool_json("map", "dump", "pinned", str(root / outer)) or []}


def bpftool(*args: str) -> None:
    subprocess.run(["bpftool", *args], check=True, capture_output=True)


def u32(n: int) -> list[str]:
    return [str(b) for b in n.to_bytes(4, "little")]


def test_a_frozen_map_fails_the_flush_with_backoff_and_the_retry_rereads_the_kernel(setup, pin_root: Path):
    sync, clock, recorder = setup
    frozen = map_id(pin_root, "a")
    bpftool("map", "freeze", "pinned", str(pin_root / "a"))  # read-only for syscalls: updates fail with EPERM
    sync.put("a", {1: 11})
    with pytest.raises(ApplyError, match=r"Operation not permitted \(errno 1\)"):
        sync.flush()
    st = sync.status()["a"]
    assert (st.state, st.attempts) == ("failed", 1) and "errno 1" in st.error
    assert sync.retry_in() == pytest.approx(backoff(1)) == pytest.approx(0.1)
    clock.now += 0.04
    assert sync.retry_in() == pytest.approx(0.06)
    health = sync.health()
    assert not health.ok and "map 'a' failed 1 time: " in health.reasons[0]
    clock.now += 0.06
    with pytest.raises(ApplyError):
        sync.flush()
    assert sync.status()["a"].attempts == 2 and sync.retry_in() == pytest.approx(0.2)
    assert entries(pin_root, "a") == {1: 10, 2: 20}  # nothing written
    os.unlink(pin_root / "a")  # the operator removes the frozen map: only a fresh read of the pin root sees that
    clock.now += 0.2
    sync.flush()
    new = map_id(pin_root, "a")
    assert new != frozen and entries(pin_root, "a") == {1: 11, 2: 20}
    assert slots(pin_root, "o") == {0: new, 1: new}, "the outer map's slots still hold the frozen map"
    assert sync.status()["a"].state == "applied" and sync.retry_in() is None and sync.health().ok
    assert [e for e in recorder.events if e[0] == "reconcile"][-3:] == [
        ("reconcile", "error"), ("reconcile", "error"), ("reconcile", "success")]


def test_a_map_filled_by_another_writer_fails_until_there_is_room(setup, pin_root: Path):
    sync, clock, _ = setup
    bpftool("map", "update", "pinned", str(pin_root / "b"), "key", *u32(9), "value", *u32(1), *u32(0))  # b: 2 of 2
    sync.put("b", {4: 40})
    with pytest.raises(ApplyError, match=r"errno 7\); the map is full"):
        sync.flush()
    assert sync.status()["b"].state == "failed" and entries(pin_root, "b") == {3: 30, 9: 1}
    bpftool("map", "delete", "pinned", str(pin_root / "b"), "key", *u32(9))
    clock.now += sync.retry_in()
    sync.flush()
    assert entries(pin_root, "b") == {3: 30, 4: 40} and sync.status()["b"].state == "applied"


def test_a_newer_value_replaces_a_pending_retry(setup, pin_root: Path):
    sync, clock, _ = setup
    bpftool("map", "freeze", "pinned", str(pin_root / "a"))
    sync.put("a", {1: 11})
    with pytest.raises(ApplyError):
        sync.flush()
    assert sync.retry_in() == pytest.approx(0.1)
    sync.put("a", {1: 12})
    assert sync.retry_in() == 0, "a new desired value is due at once"
    os.unlink(pin_root / "a")
    sync.flush()
    assert entries(pin_root, "a") == {1: 12, 2: 20}


class Unpinning(PinRootKernel):
    """The real pin root, where someone removes the pin of `victim` right after the flush's step on `after`."""

    def __init__(self, pin_root: str, victim: str, after: str):
        super().__init__(pin_root, lock_timeout=10)
        self.victim, self.after, self.armed = victim, after, False

    def run(self, plan: Plan, live: LiveState, on_step: Callable[[Step], None]) -> ApplyReport:
        def step(s: Step) -> None:
            on_step(s)
            if self.armed and getattr(s, "map", None) == self.after:
                self.armed = False
                os.unlink(f"{self.pin_root}/{self.victim}")

        return super().run(plan, live, step)


def test_a_pin_removed_mid_flush_is_found_and_recreated_by_verify(pin_root: Path):
    """The flush writes through the map handles it holds, so the kernel takes the write into the unpinned
    map and the flush succeeds; the next verify reads the pin root, finds the map gone and creates it with
    every desired entry."""
    kernel = Unpinning(str(pin_root), victim="b", after="a")
    with Synchroniser(str(pin_root), recorder=(recorder := Recorded()), kernel=kernel, clock=Clock()) as sync:
        sync.apply(load_config(inline=CONFIG))
        kernel.armed = True
        sync.put("a", {1: 11})
        sync.put("b", {4: 41})
        assert sync.flush().steps == ["write 1 and delete 0 entries of 'a' (a)", "write 1 and delete 0 entries of 'b' (b)"]
        assert not kernel.armed and not (pin_root / "b").exists()
        drift = sync.verify()
        assert [(c.name, c.action) for c in drift] == [("b", "create")] and ("drift", 1) in recorder.events
        assert entries(pin_root, "b") == {3: 30, 4: 41} and entries(pin_root, "a") == {1: 11, 2: 20}


def test_unchanged_state_is_a_noop_and_drift_is_counted(setup, pin_root: Path):
    sync, _, recorder = setup
    assert sync.flush().steps == [] and recorder.events[-1] == ("reconcile", "noop")
    bpftool("map", "update", "pinned", str(pin_root / "a"), "key", *u32(1), "value", *u32(99), *u32(0))  # out of band
    drift = sync.verify()
    assert [c.name for c in drift] == ["a"] and ("drift", 1) in recorder.events
    assert entries(pin_root, "a") == {1: 10, 2: 20}


def test_a_rejected_config_makes_health_say_why(setup):
    sync, _, recorder = setup
    sync.reject_config(ConfigError([Diagnostic("invalid YAML: near 'secret=1'", "mesh.yaml", 3, kind="invalid YAML")]))
    health = sync.health()
    assert not health.ok and health.reasons == ["configuration rejected, the last good one stays applied:",
                                                "  mesh.yaml:3: invalid YAML"]
    assert "secret" not in "".join(health.reasons)  # where and what kind, never the config's text
    assert recorder.events[-1] == ("config_error",)
    many = [Diagnostic(f"bad value {i}", "mesh.yaml", 10 + i, "a", str(i), kind="bad value") for i in range(SHOWN_DIAGNOSTICS + 5)]
    sync.reject_config(ConfigError(many))  # every diagnostic, not the first; bounded, with a count of the rest
    reasons = sync.health().reasons
    assert reasons[1:-1] == [f"  mesh.yaml:{10 + i}: map 'a': bad value" for i in range(SHOWN_DIAGNOSTICS)]
    assert reasons[-1] == "  and 5 more problems (the log lists them all)"
    sync.apply(load_config(inline=CONFIG))
    assert sync.health().ok


def test_backoff_doubles_from_100ms_to_a_minute():
    assert [backoff(n) for n in (1, 2, 3)] == [0.1, 0.2, 0.4]
    assert backoff(30) == BACKOFF_MAX == 60.0


def test_scrapes_and_probes_do_not_wait_for_an_apply(setup):
    """While an apply holds the synchroniser (a cold apply at Kmesh scale takes seconds), usage and health
    answer at once with what held before it: a liveness probe must not time out on a busy watcher."""
    sync, _, _ = setup
    before = sync.usage()
    applying, done = threading.Event(), threading.Event()

    def long_apply() -> None:
        with sync._lock:  # what flush holds while the kernel works
            applying.set()
            done.wait(10)

    worker = threading.Thread(target=long_apply)
    worker.start()
    try:
        assert applying.wait(10)
        answered = threading.Event()
        prober = threading.Thread(target=lambda: (sync.usage(), sync.health(), answered.set()))
        prober.start()
        assert answered.wait(5), "usage/health waited for the apply"
        assert sync.usage() == before and sync.health().ok
    finally:
        done.set()
        worker.join()
    sync.put("a", {4: 40})
    sync.flush()
    assert sync.usage() != before  # free again: computed afresh
