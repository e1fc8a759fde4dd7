"""Performs a plan's steps against the kernel, in order, with batched syscalls.

Entries and outer slots are written with one batch call per step (the kernel
layer splits huge batches); an outer-slot batch costs one RCU grace period
instead of one per slot. If the kernel refuses a step, the error says which
steps were applied and which were not, and a re-run converges from there.

The tool's records follow the steps (pinroot.records): a map is recorded as managed
before it is pinned, an adoption before any step, the rest once the steps are done. Maps
created one after another (and filled) are recorded in one batch and only then pinned, so
5,000 new maps cost one record update, not 5,000.
"""

from __future__ import annotations

import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from kmesh_apply.ctype import type_or_raw
from kmesh_apply.entries import packed
from kmesh_apply.errors import ApplyError, KmeshError
from kmesh_apply.kernel.maps import Map
from kmesh_apply.plan.model import CreateMap, MapDef, MovePin, Plan, RecordMap, RemovePin, SetSlots, Step, WriteEntries
from kmesh_apply.pinroot import records
from kmesh_apply.state import LiveState


@dataclass
class ApplyReport:
    """What an apply did, for the CLI's closing line and the Ansible module's result."""

    steps: list[str] = field(default_factory=list)
    entries_written: int = 0
    entries_deleted: int = 0
    slots_set: int = 0
    seconds: float = 0.0


def kernel_name(name: str) -> str:
    """The kernel object name: at most 15 of [A-Za-z0-9_.] (bpftool shows it; the pin carries the full name)."""
    return re.sub(r"[^A-Za-z0-9_.]", "_", name)[:15]


class Executor:
    """Runs steps with one open handle per pin, closed when done; a caller that keeps running
    plans (the synchroniser) passes its own `handles`, which then stay open for the next run.
    `live`: the state read under the pin root's lock, whose ownership record it keeps up to date."""

    def __init__(self, pin_root: str, live: LiveState, on_step: Callable[[Step], None] | None = None,
                 handles: dict[str, Map] | None = None):
        self.root = Path(pin_root)
        self.owns_handles = handles is None
        self.handles: dict[str, Map] = {} if handles is None else handles
        self.on_step = on_step
        self.report = ApplyReport()
        self.ownership = records.Ownership(pin_root, live)
        self.unpinned: list[tuple[CreateMap, Map]] = []  # created (and maybe filled), to record and pin at once
        self.untold: list[Step] = []  # done, not yet shown to on_step: a step is shown once its maps are pinned

    def _map(self, pin: str) -> Map:
        m = self.handles.get(pin)
        if m is None:
            m = self.handles[pin] = Map.open_pinned(str(self.root / pin))
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
        self.root.mkdir(parents=True, exist_ok=True)
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
                m.pin(str(self.root / step.pin))
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
            os.replace(self.root / step.src, self.root / step.dst)
            self._drop(step.dst)
            if step.src in self.handles:
                self.handles[step.dst] = self.handles.pop(step.src)
            self._tidy_staging(step.src)
            self.ownership.moved_into_place(step.dst, moved)
        elif isinstance(step, RemovePin):
            self._drop(step.pin)
            os.unlink(self.root / step.pin)
            self._tidy_staging(step.pin)
            if step.pin == step.map:
                self.ownership.unpinned(step.map)
                records.forget(str(self.root), step.pin)
        elif isinstance(step, RecordMap):
            self._record(step)

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
        records.record_layout(str(self.root), map_id, key_type, value_type, d.inner_map if d.is_outer else None)

    def _create(self, step: CreateMap) -> None:
        d: MapDef = step.map
        path = self.root / step.pin
        path.parent.mkdir(exist_ok=True)
        template = self._map(step.template) if step.template else None
        key_type = type_or_raw(d.key_type, d.key_size)
        value_type = None if d.is_outer else type_or_raw(d.value_type, d.value_size)
        m = Map.create(d.type, d.key_size, d.value_size, d.max_entries, name=kernel_name(d.name), flags=d.flags,
                       inner_map=template, key_type=key_type, value_type=value_type)
        self.handles[step.pin] = m  # closed with the others if it is never pinned: then it goes away
        if d.is_outer:  # outer maps carry no BTF: their key type and template are recorded (before the pin)
            self._layout(d, m.id)
        self.unpinned.append((step, m))  # recorded as managed, then pinned, by _pin_created

    def _tidy_staging(self, pin: str) -> None:
        """Remove the staging directory once it is empty, so a converged pin root holds only maps."""
        parent = (self.root / pin).parent
        if parent != self.root:
            try:
                parent.rmdir()
            except OSError:
                pass
