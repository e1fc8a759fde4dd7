"""The data synchroniser: keeps a pin root equal to a desired state that changes continuously.

    with Synchroniser("/sys/fs/bpf/kmesh") as sync:   # locks the pin root, reads it once: the cache
        sync.apply(load_config(["mesh/"]))
        sync.put("backends-web", {3: {"ip": "10.0.1.13", "port": 8080, "weight": 10}})
        sync.flush()                                  # plans only what changed, against the cache
        sync.verify()                                 # re-reads the kernel and corrects drift

Level-triggered: `apply`, `put` and `delete` only change the desired state and mark maps
dirty; `flush` plans the dirty maps against the cache with the same pure planner as
`kmesh-apply apply` (so order, swaps and batching are the same), runs the plan, and
replays it on the cache. Only a failure or `verify` reads the kernel again.
"""

from __future__ import annotations

import threading
import time
from dataclasses import replace
from types import TracebackType
from typing import Any, Callable, Iterable, Mapping

from kmesh_apply.config import codecs, load_config, maptypes, references
from kmesh_apply.config.model import ARRAY_TYPES, PERCPU_TYPES, PLAIN_SECTION, Config, InnerMapSpec, OuterMapSpec
from kmesh_apply.errors import ApplyError, ConfigError, Diagnostic, KmeshError, PlanError, ReplaceInUseError
from kmesh_apply.config.validate import incompatible
from kmesh_apply.executor import ApplyReport
from kmesh_apply.kernel.maps import possible_cpus
from kmesh_apply.monitor import Health, MapUsage, NoopRecorder, Recorder, map_usage
from kmesh_apply.plan.model import CreateMap, MapChange, Plan, Step
from kmesh_apply.plan.planner import held_replaced, make_plan
from kmesh_apply.resolve import ResolveError, prepare
from kmesh_apply.show import show_document
from kmesh_apply.state import LiveState
from kmesh_apply.sync.cache import Mirror
from kmesh_apply.sync.kernel import Kernel, PinRootKernel
from kmesh_apply.sync.guard import DestroyGuard, Hold
from kmesh_apply.sync.retries import APPLIED, FAILED, HELD, PENDING, MapStatus, backoff
from kmesh_apply.wording import a, count, verb

DEFAULT_LOCK_TIMEOUT = 10.0
PUT_SOURCE = "<put>"
SHOWN_DIAGNOSTICS = 20  # of a rejected configuration, in health(); the rest are counted (the log has them all)


class Synchroniser:
    """Holds the pin root's lock, its cache and the desired state; safe to share between threads."""

    def __init__(self, pin_root: str, *, recorder: Recorder | None = None,
                 lock_timeout: float = DEFAULT_LOCK_TIMEOUT, allow_replace_in_use: bool = False,
                 kernel: Kernel | None = None, guard: DestroyGuard | None = None,
                 clock: Callable[[], float] = time.monotonic):
        """`allow_replace_in_use`: replace or destroy maps that loaded programs hold (refused otherwise, as by
        apply). `guard`: asked about every map a plan would destroy (the watcher's, sync/guard.py); none: all go.
        `clock`: what backoffs and durations are measured with (tests pass their own, to step it by hand)."""
        self.pin_root = pin_root
        self._clock = clock
        self.recorder: Recorder = recorder or NoopRecorder()
        self._guard = guard
        self._held: dict[str, Hold] = {}  # maps the guard kept at the last plan
        self._kernel: Kernel = (kernel if kernel is not None
                                else PinRootKernel(pin_root, lock_timeout, allow_replace_in_use))
        self._lock = threading.RLock()
        self._desired: Config | None = None
        self._owned: set[str] = set()  # desired specs copied from the caller's config, ours to change
        self._dirty: set[str] = set()
        self._plan_all = True  # the first flush plans every map (and removes those not desired)
        self._status: dict[str, MapStatus] = {}
        self._attempts = 0
        self._retry_at: float | None = None  # the clock's time when a failed flush is due again
        self._config_error: list[str] | None = None  # why the configuration was rejected, for health()
        self._files_held: str | None = None  # why the configuration's files are not read yet, for health()
        self._verify_error: str | None = None
        self._last_success: float | None = None
        self.last_changes: list[MapChange] = []  # what the last flush or verify changed, for logs
        try:
            self._cache: LiveState = self._kernel.read()
        except BaseException:
            self._kernel.close()
            raise
        self._cache_valid = True
        self._last_usage: list[MapUsage] = map_usage(self._cache)
        self._last_health = Health()

    # ---- the desired state ------------------------------------------------------------

    def apply(self, config: Config) -> ApplyReport:
        """Make the pin root equal `config` (maps it does not name are removed), now."""
        with self._lock:
            old = self._desired
            self._desired = Config(dict(config.inner_maps), dict(config.outer_maps), config.pin_root, config.files)
            self._owned.clear()
            if old is not None:
                self._mark(_changed(old.inner_maps, config.inner_maps) | _changed(old.outer_maps, config.outer_maps))
            else:
                self._mark(set(config.inner_maps) | set(config.outer_maps))
            self._config_error = None
            return self._flush()

    def put(self, map_name: str, entries: Mapping[Any, Any]) -> None:
        """Set entries of a map, keys and values as in the YAML; an outer map's are {slot: inner map name}.
        Applied by the next `flush`. Bad input raises ConfigError and changes nothing."""
        with self._lock:
            desired = self._desired_config()
            if map_name in desired.outer_maps:
                outer = desired.outer_maps[map_name]
                _entries_managed(outer)
                slots = self._encode_slots(desired, outer, entries)
                owned = self._own(desired, map_name)
                owned.slots.update(slots)  # type: ignore[union-attr]
                written = set(slots)
            else:
                spec = self._inner(desired, map_name)
                _entries_managed(spec)
                encoded = _encode_entries(spec, entries)
                fresh = sum(1 for k in encoded if k not in spec.entries)
                if spec.type not in ARRAY_TYPES and len(spec.entries) + fresh > spec.max_entries:
                    n = len(spec.entries) + fresh
                    raise _input_error(map_name, f"{count(n, 'entry', 'entries')} {verb(n, 'does', 'do')} not fit "
                                                 f"max_entries {spec.max_entries}")
                owned = self._own(desired, map_name)
                owned.entries.update(encoded)  # type: ignore[union-attr]
                written = set(encoded)
            if owned.manage.absent & written:  # keys put again are no longer to be absent
                owned.manage = replace(owned.manage, absent=owned.manage.absent - written)
            self._mark({map_name})

    def delete(self, map_name: str, keys: Iterable[Any]) -> None:
        """Remove entries (an array's are zeroed; an outer map's slots are cleared). Missing keys are fine.
        In a `manage_entries: listed` map the keys are deleted by the next flush and then left alone."""
        with self._lock:
            desired = self._desired_config()
            spec = desired.outer_maps.get(map_name) or self._inner(desired, map_name)
            _entries_managed(spec)
            encoded = [_encode(spec.key, k, map_name, k) for k in keys]
            owned = self._own(desired, map_name)
            table = owned.slots if isinstance(owned, OuterMapSpec) else owned.entries
            for key in encoded:
                table.pop(key, None)  # type: ignore[union-attr]
            if not owned.manage.all_entries:
                owned.manage = replace(owned.manage, absent=owned.manage.absent | set(encoded))
            self._mark({map_name})

    def reject_config(self, error: ConfigError) -> None:
        """A configuration could not be loaded: the last good state stays applied, health says why."""
        with self._lock:
            # Where and what kind, never the value: health goes to whoever reaches the metrics port.
            lines = [d.summary for d in error.diagnostics] or ["invalid configuration"]
            more = len(lines) - SHOWN_DIAGNOSTICS
            self._config_error = lines[:SHOWN_DIAGNOSTICS] + ([f"and {count(more, 'more problem')} (the log lists them all)"]
                                                              if more > 0 else [])
            self.recorder.config_error()

    def files_held(self, why: str | None) -> None:
        """The configuration's files are not read yet, and why (held open by a writer for long; None once
        they are read again): the last good state stays applied, health says so, so that a writer that never
        closes a file is seen."""
        with self._lock:
            self._files_held = why

    # ---- reconciling ----------------------------------------------------------------------

    def flush(self) -> ApplyReport:
        """Apply what `put`, `delete` and `apply` changed since the last flush (or what failed)."""
        with self._lock:
            return self._flush()

    def verify(self) -> list[MapChange]:
        """Re-read the kernel, correct whatever differs from the desired state, and return what differed.
        When everything was applied, the kernel is first asked cheaply whether it still holds the
        cache (entries summed in the kernel: one number per map); only a difference, or a doubt,
        costs the full read."""
        with self._lock:
            start = self._clock()
            if self._applied() and self._kernel.unchanged(self._cache):
                self._verify_error = None
                self.last_changes = []
                self.recorder.reconcile("noop", self._clock() - start)
                return []
            try:
                self._cache, self._cache_valid = self._kernel.read(), True
            except KmeshError as e:
                self._verify_error = f"verify could not read the pin root: {e}"
                self.recorder.reconcile("error", self._clock() - start)
                raise
            self._verify_error = None
            if self._desired is None:
                return []
            plan = self._planned(None, set(self._dirty), start)
            drift = [c for c in plan.changes if c.name not in self._dirty]
            if drift:
                self.recorder.drift(len(drift))
            self._run(plan, set(self._dirty) | {c.name for c in plan.changes}, start)
            return drift

    def _applied(self) -> bool:
        """The desired state was applied and the cache is the kernel's, as far as this process knows."""
        return self._cache_valid and self._desired is not None and not self._dirty and not self._plan_all

    def retry_in(self) -> float | None:
        """Seconds until a failed flush is due again (0 or less: due now); None when nothing failed."""
        with self._lock:
            return None if self._retry_at is None else self._retry_at - self._clock()

    def released_in(self) -> float | None:
        """Seconds until the guard may let a held destroy go (flush then); None when none waits for a time."""
        with self._lock:
            times = [h.until for h in self._held.values() if h.until is not None]
            return min(times) - time.monotonic() if times else None  # the guard's clock, not self._clock

    def held(self) -> dict[str, Hold]:
        """The maps the desired state no longer names that the destroy guard keeps for now, and why."""
        with self._lock:
            return dict(self._held)

    def _flush(self) -> ApplyReport:
        start = self._clock()
        if self._desired is None or (not self._dirty and not self._plan_all):
            self.last_changes = []
            self.recorder.reconcile("noop", self._clock() - start)
            return ApplyReport()
        reread = not self._cache_valid
        if reread:
            try:
                self._cache, self._cache_valid = self._kernel.read(), True
            except KmeshError as e:
                self._failed(e, set(self._dirty), None, start)
                raise
        scope = set(self._dirty)
        # After a failure the kernel state is read afresh and, like verify, planned whole: a map recreated
        # because its pin went away must also be put back in the outer maps' slots that held the old one.
        plan = self._planned(None if self._plan_all or reread else scope, scope, start)
        return self._run(plan, scope | {c.name for c in plan.changes}, start)

    def _planned(self, only: set[str] | None, names: set[str], start: float) -> Plan:
        """`_plan`; a configuration that cannot be planned here (PlanError: a map someone else owns, a
        program or interface an entry names that is not there) fails the pass like a refused apply:
        nothing was applied, health says why, and it is retried (the pin root may change)."""
        try:
            return self._plan(only)
        except PlanError as e:
            culprit = e.map if isinstance(e, ResolveError) else None
            self._failed(e, names | ({culprit} if culprit else set()), culprit, start, cache_valid=True)
            raise

    def _plan(self, only: set[str] | None) -> Plan:
        """Plan against the cache. A plan that moves a map over another (a replace or a swap) is made again
        with the programs holding maps read now: they decide between swap and in-place, and whether apply
        may replace at all (programs load and unload between full reads). The guard, if any, is asked
        about every map the plan would destroy."""
        assert self._desired is not None
        desired = prepare(self._desired, self._cache)  # programs and interfaces as they are now
        plan = make_plan(desired, self._cache, only)
        if plan.displaced(self._cache):
            holders = self._kernel.holders(m.id for m in self._cache.maps.values())
            if holders != self._cache.holders:
                self._cache.holders = holders
                plan = make_plan(desired, self._cache, only)
        doomed = [c.name for c in plan.changes if c.action == "destroy"]
        self._held = self._guard.hold(doomed) if self._guard is not None else {}
        return plan.sparing(self._held) if self._held else plan

    def _run(self, plan: Plan, names: set[str], start: float) -> ApplyReport:
        """Perform `plan` and replay it on the cache; `names` become applied (or failed)."""
        self.last_changes = plan.changes
        if not plan.has_changes:
            self._succeeded(names)
            self.recorder.reconcile("noop", self._clock() - start)
            return ApplyReport()
        mirror = Mirror(self._cache, self._kernel.read_map)
        held = {i: n for i, n in plan.displaced(self._cache).items() if self._cache.holders.get(i)}
        try:
            report = self._kernel.run(plan, self._cache, mirror)
        except ReplaceInUseError as e:  # nothing was applied: the cache still holds
            self._failed(e, names, None, start, cache_valid=True)
            raise
        except ApplyError as e:
            self._failed(e, names, _step_map(plan.steps[len(e.applied)]) if len(e.applied) < len(plan.steps) else None, start)
            raise
        self._cache.replaced.update(held)
        for name in mirror.touched:  # a preallocated map costs the same whatever it holds
            live = self._cache.maps.get(name)
            if live is not None and "no_prealloc" in live.flags:
                live.memlock = self._kernel.memlock(name)
        self._succeeded(names)
        self._last_success = time.time()
        self.recorder.reconcile("success", self._clock() - start)
        return report

    def _succeeded(self, names: set[str]) -> None:
        desired = self._desired
        assert desired is not None
        stamp = time.time()
        for name in names:
            if name in desired.inner_maps or name in desired.outer_maps:
                self._status[name] = MapStatus(APPLIED, since=stamp)
                spec = desired.inner_maps.get(name) or desired.outer_maps[name]
                if spec.manage.absent:  # deleted now: from here on, keys like any others not listed
                    self._own(desired, name).manage = replace(spec.manage, absent=frozenset())
            else:
                self._status.pop(name, None)
        self._dirty -= names
        for name, hold in self._held.items():  # planned again by the next flush
            self._status[name] = MapStatus(HELD, hold.reason, since=stamp)
            self._dirty.add(name)
        self._plan_all = False
        self._attempts, self._retry_at = 0, None

    def _failed(self, error: KmeshError, names: set[str], culprit: str | None, start: float,
                cache_valid: bool = False) -> None:
        """Retry after a backoff; unless nothing was applied, the kernel state is unknown: read it again next time."""
        self._cache_valid = cache_valid
        self._attempts += 1
        self._retry_at = self._clock() + backoff(self._attempts)
        self._dirty |= names
        stamp = time.time()
        message = str(error.cause if isinstance(error, ApplyError) else error)
        for name in names:
            if name == culprit or culprit is None:
                self._status[name] = MapStatus(FAILED, message, self._attempts, stamp)
            elif self._status.get(name, MapStatus(PENDING)).state != FAILED:
                self._status[name] = MapStatus(PENDING, None, 0, stamp)
        self.recorder.reconcile("error", self._clock() - start)

    def _mark(self, names: set[str]) -> None:
        """Names whose desired state changed; a newer value replaces a pending retry (due now)."""
        stamp = time.time()
        for name in names:
            old = self._status.get(name)
            attempts = old.attempts if old is not None else 0
            self._status[name] = MapStatus(PENDING, old.error if old else None, attempts, stamp)
        self._dirty |= names
        if self._retry_at is not None:
            self._retry_at = self._clock()

    # ---- what others read: status, usage, health --------------------------------------------

    def status(self) -> dict[str, MapStatus]:
        """Each desired map's status (applied, pending, failed with its error and attempts)."""
        with self._lock:
            return dict(self._status)

    def usage(self) -> list[MapUsage]:
        """How full each map is, from the cache (no bpf() call). During an apply, the figures from
        before it: a scrape or a liveness probe must not wait seconds for a large apply to end."""
        if self._lock.acquire(blocking=False):
            try:
                self._last_usage = map_usage(self._cache)
            finally:
                self._lock.release()
        return self._last_usage

    def health(self) -> Health:
        """Whether the pin root is kept equal to the desired state, and why not; during an apply,
        as it was before it (see `usage`)."""
        if self._lock.acquire(blocking=False):
            try:
                self._last_health = self._health()
            finally:
                self._lock.release()
        return self._last_health

    def _health(self) -> Health:
        reasons = []
        if self._config_error is not None:
            reasons.append("configuration rejected, the last good one stays applied:")
            reasons += [f"  {line}" for line in self._config_error]
        if self._verify_error is not None:
            reasons.append(self._verify_error)
        if self._files_held is not None:
            reasons.append(self._files_held)
        reasons += [h.describe() + ": reload them" for h in held_replaced(self._cache)]
        waiting: dict[str, list[str]] = {}  # destroys only an operator can let go, by reason
        for name, hold in sorted(self._held.items()):
            if hold.until is None:
                waiting.setdefault(hold.reason, []).append(name)
        for reason, names in waiting.items():
            shown = ", ".join(names[:SHOWN_DIAGNOSTICS]) + (f" and {len(names) - SHOWN_DIAGNOSTICS} more"
                                                            if len(names) > SHOWN_DIAGNOSTICS else "")
            reasons.append(f"destroy held: {reason} ({shown})")
        for name, st in sorted(self._status.items()):
            if st.state == FAILED:
                reasons.append(f"map '{name}' failed {count(st.attempts, 'time')}: {st.error}")
        return Health(not reasons, reasons, self._last_success)

    @property
    def cache(self) -> LiveState:
        """The cached live state (what the kernel holds, as far as the synchroniser knows)."""
        return self._cache

    # ---- helpers ---------------------------------------------------------------------------

    def _desired_config(self) -> Config:
        """The desired state; before any `apply`, the pin root as it is (so `put` works on live maps)."""
        if self._desired is None:
            self._desired = load_config(inline=show_document(self._cache))
            self._plan_all = False
        return self._desired

    def _inner(self, desired: Config, name: str) -> InnerMapSpec:
        spec = desired.inner_maps.get(name)
        if spec is None:
            raise _input_error(name, "no such map in the desired state (add it with apply first)")
        return spec

    def _own(self, desired: Config, name: str) -> InnerMapSpec | OuterMapSpec:
        """The desired spec of `name`, copied once so that the caller's Config is never modified."""
        if name in desired.outer_maps:
            if name not in self._owned:
                desired.outer_maps[name] = replace(desired.outer_maps[name], slots=dict(desired.outer_maps[name].slots))
                self._owned.add(name)
            return desired.outer_maps[name]
        if name not in self._owned:
            desired.inner_maps[name] = replace(desired.inner_maps[name], entries=dict(desired.inner_maps[name].entries))
            self._owned.add(name)
        return desired.inner_maps[name]

    def _encode_slots(self, desired: Config, outer: OuterMapSpec, slots: Mapping[Any, Any]) -> dict[bytes, str]:
        template = desired.inner_maps[outer.inner_map]
        out = {}
        for key, inner_name in slots.items():
            encoded = _encode(outer.key, key, outer.name, key)
            inner = desired.inner_maps.get(inner_name) if isinstance(inner_name, str) else None
            if inner is None or inner.section == PLAIN_SECTION:
                raise _input_error(outer.name, f"expected the name of an inner map of the desired state (under "
                                               f"inner_maps), got {inner_name!r}", key)
            problems = incompatible(template, inner)
            if problems:
                raise _input_error(outer.name, f"inner map '{inner_name}' is incompatible with the template "
                                               f"'{template.name}': {problems[0]}", key)
            if outer.type == "array_of_maps" and int.from_bytes(encoded, "little") >= outer.max_entries:
                raise _input_error(outer.name, f"slot index out of range (max_entries {outer.max_entries})", key)
            out[encoded] = inner_name
        if len(set(outer.slots) | set(out)) > outer.max_entries:
            raise _input_error(outer.name, f"the slots do not fit max_entries {outer.max_entries}")
        return out

    def close(self) -> None:
        """Release the pin root (its lock and open map handles); waits for a flush in flight."""
        with self._lock:
            self._kernel.close()

    def __enter__(self) -> "Synchroniser":
        return self

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None) -> None:
        self.close()


def _changed(old: Mapping[str, Any], new: Mapping[str, Any]) -> set[str]:
    """Names whose spec differs (unchanged specs are usually the very same objects: compared by identity first)."""
    differ = {n for n, spec in new.items() if old.get(n) is not spec}
    return {n for n in differ if old.get(n) != new[n]} | (old.keys() - new.keys())


def _entries_managed(spec: InnerMapSpec | OuterMapSpec) -> None:
    """`put` and `delete` write entries the configuration owns: not those of a `manage_entries: none` map."""
    if spec.manage.entries == "none":
        holds = maptypes.kind(spec.type).holds if spec.type in maptypes.KINDS else ""
        raise _input_error(spec.name, f"put does not apply to {a(spec.type)} map: its entries are {holds}" if holds else
                           "its entries are not kmesh-apply's to write (manage_entries: none): use manage_entries: "
                           "listed to manage some of them")


def _step_map(step: Step) -> str:
    return step.map.name if isinstance(step, CreateMap) else step.map


def _input_error(map_name: str, message: str, key: Any = None) -> ConfigError:
    return ConfigError([Diagnostic(message, PUT_SOURCE, 0, map_name, "" if key is None else str(key))])


def _encode(typ: Any, value: Any, map_name: str, key: Any) -> bytes:
    try:
        return codecs.encode(typ, value)
    except codecs.CodecError as e:
        raise _input_error(map_name, f"key: {e}", key) from None


def _encode_entries(spec: InnerMapSpec, entries: Mapping[Any, Any]) -> dict[bytes, Any]:
    """Keys and values in their YAML forms, encoded with the map's types (per-CPU values for every CPU;
    a prog_array's, devmap's or cpumap's as `Target`s, resolved when planned)."""
    kind = maptypes.kind(spec.type)
    encode_value: Callable[[Any], Any]
    if kind.entries in maptypes.REFERENCES:
        encode_value = references.parser(kind.entries, spec.value_size)
    elif kind.entries != maptypes.DATA:
        why = kind.holds or ("its values are pushed when it is created" if kind.entries == maptypes.LIST else
                             "it is given its values by apply (it only grows)")
        raise _input_error(spec.name, f"put does not apply to {a(spec.type)} map: {why}")
    elif spec.type in PERCPU_TYPES:
        ncpus = possible_cpus()
        encode_value = lambda v: codecs.encode_per_cpu(spec.value, v, ncpus)  # noqa: E731
    else:
        encode_value = codecs.encoder(spec.value)
    out = {}
    for key, value in entries.items():
        k = _encode(spec.key, key, spec.name, key)
        if spec.type in maptypes.INDEXED and int.from_bytes(k, "little") >= spec.max_entries:
            raise _input_error(spec.name, f"array index out of range (max_entries {spec.max_entries})", key)
        try:
            out[k] = encode_value(value)
        except codecs.CodecError as e:
            raise _input_error(spec.name, f"value: {e}", key) from None
    return out
