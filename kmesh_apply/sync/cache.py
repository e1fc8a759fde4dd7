"""Keeping the synchroniser's cache equal to the kernel without reading it again.

While the executor runs a plan, each step's effect is replayed on the cached
`LiveState` as soon as the step is done: entries and slots written, maps created
(read back once, while still at their pin, for kernel IDs and types, not entries: the
steps that filled them are replayed too), moved and removed. A map a migration filled is
read back with its entries (they were converted from another map's). A plan cut short
leaves the cache unknown, and the synchroniser then
reads the pin root afresh instead.
"""

from __future__ import annotations

from typing import Callable

from kmesh_apply.plan.model import CatchUp, CreateMap, MigrateEntries, MovePin, RemovePin, SetSlots, Step, WriteEntries
from kmesh_apply.state import LiveMap, LiveState, StagedMap


class Mirror:
    """Replays performed steps on `state`; `created(pin, entries)` reads a map a step just created
    (or filled, with `entries`)."""

    def __init__(self, state: LiveState, created: Callable[[str, bool], LiveMap]):
        self.state = state
        self.created = created
        self.aside = {s.pin: s.live for s in state.staged}  # maps pinned under the staging directory
        self.touched: set[str] = set()  # names of the maps the steps changed

    def _at(self, pin: str) -> LiveMap:
        return self.aside[pin] if pin in self.aside else self.state.maps[pin]

    def __call__(self, step: Step) -> None:
        maps = self.state.maps
        self.touched.add(step.map.name if isinstance(step, CreateMap) else step.map)
        if isinstance(step, CreateMap):
            live = self.created(step.pin, False)
            live.name = step.map.name
            if step.pin == step.map.name:
                maps[step.pin] = live
            else:
                self.aside[step.pin] = live
        elif isinstance(step, WriteEntries) and self._at(step.pin).unreadable:
            pass  # a queue's or a bloom filter's values: a read gives none back either
        elif isinstance(step, WriteEntries):
            entries = self._at(step.pin).entries
            entries.update(step.put)
            for key in step.delete:
                entries.pop(key, None)
        elif isinstance(step, SetSlots):
            slots = self._at(step.pin).slots
            for key, pin in step.set.items():
                slots[key] = self._at(pin).id
            for key in step.clear:
                slots.pop(key, None)
        elif isinstance(step, (MigrateEntries, CatchUp)):
            live = self.created(step.pin, True)
            live.name = step.map
            self.aside[step.pin] = live
        elif isinstance(step, MovePin):
            if step.src in self.aside:
                maps[step.dst] = self.aside.pop(step.src)
            else:  # a map moved to its new name (migrate.from), adopted first if it was someone else's
                moved = maps.pop(step.src, None) or self.state.unmanaged.pop(step.src)
                moved.name = step.dst
                maps[step.dst] = moved
        elif isinstance(step, RemovePin):
            if self.aside.pop(step.pin, None) is None:
                maps.pop(step.pin, None)
        self.state.staged = [StagedMap(pin, live.name, live) for pin, live in self.aside.items()]
