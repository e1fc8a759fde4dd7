"""Performs a plan's steps against the kernel, in order, with batched syscalls.

Entries and outer slots are written with one batch call per step (the kernel
layer splits huge batches); an outer-slot batch costs one RCU grace period
instead of one per slot. If the kernel refuses a step, the error says which
steps were applied and which were not, and a re-run converges from there.

The tool's records follow the steps (pinroot.records): a map is recorded as managed
before it is pinned, an adoption before any step, the rest once the steps are done. Maps
created one after another (and filled) are recorded in one batch and only then pinned, so
5,000 new maps cost one record update, not 5,000.

A migration (plan/migrations.py) reads the old map whole, converts it and writes the new map
(`MigrateEntries`), and keeps what it read; its second pass (`CatchUp`) reads the old map again
just before the switch and carries over only what differs. What programs write to the old map
after that read is not carried: the report measures that window, up to the new map's move.

Every pin is reached through the pin root's guard (no links followed, nothing
another user owns), and a step whose pin is not a map's name in the pin root
(or in its staging directory) is refused before anything runs, whoever made
the plan: the last wall against a forged or buggy plan.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from kmesh_apply.config.model import ARRAY_TYPES, PERCPU_TYPES
from kmesh_apply.convert import Conversion, conversion
from kmesh_apply.ctype import CType, type_or_raw
from kmesh_apply.entries import Entries, diff, packed
from kmesh_apply.errors import ApplyError, KmeshError
from kmesh_apply.kernel.maps import Map, possible_cpus
from kmesh_apply.plan.model import (
    CatchUp,
    CreateMap,
    MapDef,
    MigrateEntries,
    MovePin,
    Plan,
    RecordMap,
    RemovePin,
    SetSlots,
    Step,
    WriteEntries,
    check_steps,
)
from kmesh_apply.pinroot import records
from kmesh_apply.pinroot.guard import PinRoot
from kmesh_apply.state import STAGING_DIR, LiveState


@dataclass
class MigrationReport:
    """One map migrated: entries converted in the first pass and in the second, and the window (from
    the second pass's read of the old map to the new map in place) in which writes to the old map
    were not carried over."""

    map: str
    entries: int
    caught_up: int = 0
    window_seconds: float = 0.0


@dataclass
class ApplyReport:
    """What an apply did, for the CLI's closing line and the Ansible module's result."""

    steps: list[str] = field(default_factory=list)
    entries_written: int = 0
    entries_deleted: int = 0
    slots_set: int = 0
    seconds: float = 0.0
    migrations: list[MigrationReport] = field(default_factory=list)


@dataclass
class _FirstPass:
    """What a migration's first pass read and how it converts, for its second pass."""

    read: Entries
    conversion: Conversion
    cpus: int
    listed: frozenset[bytes]  # keys the configuration writes itself (manage_entries: listed)
    report: MigrationReport
    second_read: float = 0.0  # when the second pass started reading (monotonic)


def kernel_name(name: str) -> str:
    """The kernel object name: at most 15 of [A-Za-z0-9_.] (bpftool shows it; the pin carries the full name)."""
    return re.sub(r"[^A-Za-z0-9_.]", "_", name)[:15]


class Executor:
    """Runs steps with one open handle per pin, closed when done; a caller that keeps running
    plans (the synchroniser) passes its own `handles`, which then stay open for the next run.
    `live`: the state read under the pin root's lock, whose ownership record it keeps up to date."""

    def __init__(self, root: PinRoot, live: LiveState, on_step: Callable[[Step], None] | None = None,
                 handles: dict[str, Map] | None = None):
        self.root = root
        self.owns_handles = handles is None
        self.handles: dict[str, Map] = {} if handles is None else handles
        self.on_step = on_step
        self.report = ApplyReport()
        self.ownership = records.Ownership(root, live)
        self.live = live
        self.unpinned: list[tuple[CreateMap, Map]] = []  # created (and maybe filled), to record and pin at once
        self.untold: list[Step] = []  # done, not yet shown to on_step: a step is shown once its maps are pinned
        self.migrating: dict[str, _FirstPass] = {}  # pin of a map built aside by a migration -> its first pass
        self._types: dict[int, tuple[Any, CType]] = {}

    def _map(self, pin: str) -> Map:
        m = self.handles.get(pin)
        if m is None:
            m = self.handles[pin] = self.root.open_map(pin)
        return m

    def _drop(self, pin: str) -> None:
        m = self.handles.pop(pin, None)
        if m is not None:
            m.close()

    def close(self) -> None:
        for pin in list(self.handles):
            self._drop(pin)

    def run(self, plan: Plan) -> ApplyReport:
        start = time.monotonic()
        check_steps(plan.steps)
        expected = sum(1 for s in plan.steps if isinstance(s, CreateMap) and s.pin == s.map.name or
                       isinstance(s, RecordMap) and s.adopt)
        done = False
        try:
            try:
                self.ownership.begin(expected)
            except (KmeshError, OSError) as e:
                raise self._failed(e, "record the maps kmesh-apply manages", plan.steps) from None
            for i, step in enumerate(plan.steps):
                try:
                    if not isinstance(step, (CreateMap, WriteEntries)):
                        self._pin_created()  # what comes next works on pins
                    self._do(step)
                except (KmeshError, OSError) as e:
                    self._pin_created(quiet=True)  # what was applied before this step is really there
                    raise self._failed(e, step.describe(), plan.steps[i:]) from None
                self.report.steps.append(step.describe())
                self.untold.append(step)
                if not self.unpinned:
                    self._tell()
            try:
                self._pin_created()
            except (KmeshError, OSError) as e:
                raise self._failed(e, "record and pin the maps created", []) from None
            done = True
        finally:
            try:
                self.ownership.finish()
            except (KmeshError, OSError) as e:
                if done:  # else the step's own failure is the one to report
                    raise self._failed(e, "update the record of the maps kmesh-apply manages", []) from None
            if self.owns_handles:
                self.close()
        self.report.seconds = time.monotonic() - start
        return self.report

    def _pin_created(self, quiet: bool = False) -> None:
        """Record the maps created since the last call (one batch), then pin them; `quiet`: on the way
        out of a failure, whose error is the one to report (a map not pinned then simply goes away)."""
        if not self.unpinned:
            return
        created, self.unpinned = self.unpinned, []
        try:
            self.ownership.created([(step.map.name, m.id, step.pin != step.map.name) for step, m in created])
            for step, m in created:
                self.root.pin_map(m, step.pin)
        except (KmeshError, OSError):
            if not quiet:
                raise
            return
        self._tell()

    def _tell(self) -> None:
        for step in self.untold if self.on_step else ():
            self.on_step(step)  # type: ignore[misc]
        self.untold.clear()

    def _failed(self, e: KmeshError | OSError, what: str, remaining: list[Step]) -> ApplyError:
        """The ApplyError for a failure while doing `what`: which steps were and were not applied."""
        cause = e if isinstance(e, KmeshError) else KmeshError(f"{what}: {e.strerror or e}")
        return ApplyError(cause, self.report.steps, [s.describe() for s in remaining])

    def _do(self, step: Step) -> None:
        if isinstance(step, CreateMap):
            self._create(step)
        elif isinstance(step, WriteEntries):
            m = self._map(step.pin)
            if step.put and not m.info.key_size:  # a queue, stack or bloom filter: its values are pushed, in order
                m.push(b"".join(step.put.values()), len(step.put))
                self.report.entries_written += len(step.put)
            elif step.put:
                m.update_batch(*packed(step.put), len(step.put))
                self.report.entries_written += len(step.put)
            if step.delete:
                m.delete_batch(b"".join(step.delete), len(step.delete))
                self.report.entries_deleted += len(step.delete)
        elif isinstance(step, SetSlots):
            outer = self._map(step.pin)
            if step.set:
                outer.update_slots(b"".join(step.set), [self._map(p) for p in step.set.values()])
                self.report.slots_set += len(step.set)
            if step.clear:
                outer.delete_batch(b"".join(step.clear), len(step.clear))
        elif isinstance(step, MovePin):
            moved = self._map(step.src).id
            self.root.replace(step.src, step.dst)
            self._drop(step.dst)
            if step.src in self.handles:
                self.handles[step.dst] = self.handles.pop(step.src)
            self._tidy_staging(step.src)
            self.ownership.moved_into_place(step.dst, moved)
            first = self.migrating.pop(step.src, None)
            if first is not None:
                first.report.window_seconds = time.monotonic() - first.second_read
        elif isinstance(step, MigrateEntries):
            self._migrate(step)
        elif isinstance(step, CatchUp):
            self._catch_up(step)
        elif isinstance(step, RemovePin):
            self._drop(step.pin)
            if not self.root.unlink(step.pin):
                raise KmeshError(f"{step.describe()}: nothing is pinned at {self.root.shown(step.pin)}")
            self._tidy_staging(step.pin)
            if step.pin == step.map:
                self.ownership.unpinned(step.map)
                records.forget(self.root, step.pin)
        elif isinstance(step, RecordMap):
            self._record(step)

    def _migrate(self, step: MigrateEntries) -> None:
        """A migration's first pass: every entry of the old map, converted, into the map built aside;
        then the configuration's own entries over them."""
        src, dst = self._map(step.src), self._map(step.pin)
        old, new = src.info, dst.info
        conv = conversion(type_or_raw(step.old_key, old.key_size), type_or_raw(step.new_key, new.key_size),
                          type_or_raw(step.old_value, old.value_size), type_or_raw(step.new_value, new.value_size),
                          step.defaults, step.renamed)
        cpus = possible_cpus() if old.type in PERCPU_TYPES else 0
        read = self._read_under_lock(step.id) if src.id == step.id else None
        if read is None:
            read = src.items()
        converted = conv.convert(read, new.max_entries, cpus=cpus, array=new.type in ARRAY_TYPES)
        self._write(dst, converted)
        if step.put:
            dst.update_batch(*packed(step.put), len(step.put))
        if step.delete:
            present = [k for k in step.delete if k in converted]
            if present:
                dst.delete_batch(b"".join(present), len(present))
        report = MigrationReport(step.map, len(converted))
        self.report.migrations.append(report)
        self.migrating[step.pin] = _FirstPass(read, conv, cpus, frozenset(step.put) | frozenset(step.delete), report)

    def _read_under_lock(self, map_id: int) -> Entries | None:
        """The entries of the map with this kernel ID as the live state read them, under the lock this
        apply holds (a million entries need not be read twice: what was written since, the second
        pass carries)."""
        for m in (*self.live.maps.values(), *self.live.unmanaged.values()):
            if m.id == map_id and isinstance(m.entries, Entries) and not m.unreadable:
                return m.entries
        return None

    def _catch_up(self, step: CatchUp) -> None:
        """A migration's second pass: what differs in the old map since the first pass (entries added,
        changed or deleted meanwhile), converted into the map built aside."""
        first = self.migrating[step.pin]
        first.second_read = time.monotonic()
        now = self._map(step.src).items()
        put, gone, _ = diff(now, first.read)
        dst = self._map(step.pin)
        put = {k: v for k, v in put.items() if k not in first.listed}
        if put:
            added = Entries(now.key_size, now.value_size, b"".join(put), b"".join(put.values()))
            self._write(dst, first.conversion.convert(added, cpus=first.cpus))
        gone = [k for k in gone if k not in first.listed]
        if gone:
            keys, failures = first.conversion.key.convert(b"".join(gone), len(gone))
            if not failures:
                for k in (bytes(keys[i * dst.info.key_size:(i + 1) * dst.info.key_size]) for i in range(len(gone))):
                    dst.delete(k)  # one by one: a key the second pass put back is no error
        first.report.caught_up = len(put) + len(gone)
        self.report.entries_deleted += len(gone)

    def _write(self, m: Map, entries: Entries) -> None:
        if len(entries):
            m.update_batch(entries.keys_buffer, entries.values_buffer, len(entries))
            self.report.entries_written += len(entries)

    def _record(self, step: RecordMap) -> None:
        """Adopt the map at the step's pin and/or record its layout, if the pin still holds the map planned."""
        found = self._map(step.pin).id
        if found != step.id:
            raise KmeshError(f"{step.describe()}: {step.pin} now holds map ID {found}, not the map planned: "
                             "plan again")
        if step.adopt:
            self.ownership.adopted(step.map, step.id)
        if step.layout is not None:
            self._layout(step.layout, step.id)

    def _layout(self, d: MapDef, map_id: int) -> None:
        key_type = type_or_raw(d.key_type, d.key_size) if d.key_size else None
        value_type = type_or_raw(d.value_type, d.value_size) if d.value_size and not d.is_outer else None
        records.record_layout(self.root, map_id, key_type, value_type, d.inner_map if d.is_outer else None)

    def _create(self, step: CreateMap) -> None:
        d: MapDef = step.map
        template = self._map(step.template) if step.template else None
        key_type = self._type(d.key_type, d.key_size)
        value_type = None if d.is_outer else self._type(d.value_type, d.value_size)
        m = Map.create(d.type, d.key_size, d.value_size, d.max_entries, name=kernel_name(d.name), flags=d.flags,
                       inner_map=template, key_type=key_type, value_type=value_type)
        self.handles[step.pin] = m  # closed with the others if it is never pinned: then it goes away
        if d.is_outer:  # outer maps carry no BTF: their key type and template are recorded (before the pin)
            self._layout(d, m.id)
        self.unpinned.append((step, m))  # recorded as managed, then pinned, by _pin_created

    def _type(self, spec: Any, size: int) -> CType:
        """type_or_raw, once per spec object: the planner shares one between the maps of a type
        (Kmesh's 5,000 services), and parsing it again costs as much as creating the map."""
        known = self._types.get(id(spec))
        if known is None or known[0] is not spec or known[1].size != size:
            known = self._types[id(spec)] = (spec, type_or_raw(spec, size))  # the spec is kept: its id stays its own
        return known[1]

    def _tidy_staging(self, pin: str) -> None:
        """Remove the staging directory once it is empty, so a converged pin root holds only maps."""
        if pin.startswith(STAGING_DIR + "/"):
            self.root.remove_if_empty(STAGING_DIR)
