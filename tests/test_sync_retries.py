"""The synchroniser's bookkeeping in-process, against an in-memory kernel that fails on request:
retries with backoff, a newer value replacing a pending retry, status, health and the recorder."""

from __future__ import annotations

import copy
import threading
from typing import Callable, Iterable

import pytest

from kmesh_apply import load_config
from kmesh_apply.errors import ApplyError, ConfigError, Diagnostic, KernelError
from kmesh_apply.executor import ApplyReport
from kmesh_apply.kernel.progs import Program
from kmesh_apply.plan.model import CreateMap, Plan, Step
from kmesh_apply.state import LiveMap, LiveState
from kmesh_apply.sync import Synchroniser
from kmesh_apply.sync.cache import Mirror
from kmesh_apply.sync.retries import BACKOFF_MAX, backoff
from kmesh_apply.sync.synchroniser import SHOWN_DIAGNOSTICS

CONFIG = """
inner_maps:
  a: {type: hash, key: u32, value: u64, max_entries: 8, entries: {1: 10, 2: 20}}
  b: {type: hash, key: u32, value: u64, max_entries: 8, entries: {3: 30}}
outer_maps:
  o: {type: hash_of_maps, key: u32, max_entries: 4, inner_map: a, entries: {0: a, 1: b}}
"""


class MemoryKernel:
    """Holds a live state in memory; `fail(step) -> bool` makes a step fail with EBUSY."""

    def __init__(self) -> None:
        self.state = LiveState("/sys/fs/bpf/memory")
        self.next_id = 100
        self.reads = 0
        self.fail: Callable[[Step], bool] = lambda step: False
        self._creating: CreateMap | None = None
        self._mirror = Mirror(self.state, self._create)

    def _create(self, pin: str, entries: bool = True) -> LiveMap:
        d = self._creating.map  # type: ignore[union-attr]
        self.next_id += 1
        return LiveMap(d.name, self.next_id, d.type, d.key_size, d.value_size, d.max_entries, d.flags,
                       None if d.is_outer else d.key_type, None if d.is_outer else d.value_type)

    def read(self) -> LiveState:
        self.reads += 1
        return copy.deepcopy(self.state)

    def run(self, plan: Plan, live: LiveState, on_step: Callable[[Step], None]) -> ApplyReport:
        mirror = self._mirror = Mirror(self.state, self._create)
        report = ApplyReport()
        for i, step in enumerate(plan.steps):
            if self.fail(step):
                raise ApplyError(KernelError("update", step.describe(), 16), report.steps,
                                 [s.describe() for s in plan.steps[i:]])
            self._creating = step if isinstance(step, CreateMap) else None
            mirror(step)
            report.steps.append(step.describe())
            on_step(step)
        return report

    def unchanged(self, state: LiveState) -> bool:
        return False  # every verify reads the state in full

    def read_map(self, pin: str, entries: bool = True) -> LiveMap:
        return copy.deepcopy(self._mirror._at(pin))

    def memlock(self, pin: str) -> int | None:
        return 4096

    def holders(self, map_ids: Iterable[int]) -> dict[int, tuple[Program, ...]]:
        return {}

    def close(self) -> None:
        pass


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
def setup() -> tuple[Synchroniser, MemoryKernel, Recorded]:
    kernel, recorder = MemoryKernel(), Recorded()
    sync = Synchroniser(kernel.state.pin_root, recorder=recorder, kernel=kernel)
    sync.apply(load_config(inline=CONFIG))
    return sync, kernel, recorder


def value_of(kernel: MemoryKernel, name: str, key: int) -> int:
    return int.from_bytes(kernel.state.maps[name].entries[key.to_bytes(4, "little")], "little")


def test_a_failed_flush_backs_off_and_its_retry_rereads_the_kernel(setup):
    sync, kernel, recorder = setup
    kernel.fail = lambda step: getattr(step, "map", None) == "b"
    sync.put("b", {3: 31})
    with pytest.raises(ApplyError):
        sync.flush()
    st = sync.status()["b"]
    assert (st.state, st.attempts) == ("failed", 1) and "errno 16" in st.error
    assert 0.05 < sync.retry_in() <= 0.1
    health = sync.health()
    assert not health.ok and "map 'b' failed 1 time: " in health.reasons[0]
    with pytest.raises(ApplyError):
        sync.flush()
    assert sync.status()["b"].attempts == 2 and 0.1 < sync.retry_in() <= 0.2
    reads = kernel.reads
    kernel.fail = lambda step: False
    sync.flush()
    assert kernel.reads == reads + 1, "after a failure the cache is read afresh"
    assert value_of(kernel, "b", 3) == 31 and sync.status()["b"].state == "applied"
    assert sync.retry_in() is None and sync.health().ok
    assert [e for e in recorder.events if e[0] == "reconcile"][-3:] == [
        ("reconcile", "error"), ("reconcile", "error"), ("reconcile", "success")]


def test_a_newer_value_replaces_a_pending_retry(setup):
    sync, kernel, _ = setup
    kernel.fail = lambda step: True
    sync.put("a", {1: 11})
    with pytest.raises(ApplyError):
        sync.flush()
    assert sync.retry_in() > 0
    sync.put("a", {1: 12})
    assert sync.retry_in() <= 0, "a new desired value is due at once"
    kernel.fail = lambda step: False
    sync.flush()
    assert value_of(kernel, "a", 1) == 12


def test_unchanged_state_is_a_noop_and_drift_is_counted(setup):
    sync, kernel, recorder = setup
    assert sync.flush().steps == [] and recorder.events[-1] == ("reconcile", "noop")
    kernel.state.maps["a"].entries[(1).to_bytes(4, "little")] = (99).to_bytes(8, "little")  # out of band
    drift = sync.verify()
    assert [c.name for c in drift] == ["a"] and ("drift", 1) in recorder.events
    assert value_of(kernel, "a", 1) == 10


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
    sync, kernel, recorder = setup
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
    sync.put("b", {4: 40})
    sync.flush()
    assert sync.usage() != before  # free again: computed afresh
