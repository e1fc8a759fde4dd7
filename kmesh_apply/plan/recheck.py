"""A saved plan re-derived from what it shows (contract section 11): data to check, not a program.

A saved plan carries its changes (what its reviewer read) and its steps (what the executor
runs). Before any step runs, under the pin root's lock and against the live state its
fingerprint matched, the desired state of every map is rebuilt from the changes over the live
maps, and the real planner plans it: the saved steps must be exactly the steps it gives, and the
changes exactly the changes it finds. A step edited, added or dropped, a pin outside the pin root,
a `move` onto another map, changes that do not describe what the steps do: all are refused,
naming the first difference. What then runs is the plan the planner made, never the file's.

Pure, like the planner: the live state comes in as data.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, replace
from typing import Any

from kmesh_apply.config.model import (
    INNER_SECTION,
    PERCPU_TYPES,
    PLAIN_SECTION,
    Config,
    InnerMapSpec,
    Location,
    Management,
    MigrateSpec,
    OuterMapSpec,
)
from kmesh_apply.ctype import Raw, parse_type, type_or_raw
from kmesh_apply.errors import KmeshError
from kmesh_apply.plan.model import (
    CreateMap,
    MapChange,
    MapDef,
    MigrateEntries,
    MovePin,
    Plan,
    SetSlots,
    Step,
    WriteEntries,
)
from kmesh_apply.plan.planner import NOT_SWAPPED, adopted_staged, make_plan
from kmesh_apply.state import ALL_ENTRIES, EntryScope, LiveMap, LiveState

FROM_PLAN = Location("<saved plan>", 0)


class PlanMismatchError(KmeshError):
    """A saved plan whose steps or changes are not what its changes need."""


def rederive(saved: Plan, live: LiveState) -> Plan:
    """The plan the planner makes for the desired state `saved`'s changes describe over `live`;
    refused unless its changes and steps are exactly `saved`'s (in any order: the planner's own
    order is what runs)."""
    config, changed = desired_config(saved, live)
    again = make_plan(config, live, only=changed)
    problem = _first_difference(saved, again, changed)
    if problem:
        raise PlanMismatchError(f"refusing the saved plan: its steps are not what its changes need ({problem}). "
                                "It was edited, or the programs holding the pin root's maps changed since it was made; "
                                "make a fresh plan and review it")
    return again


def desired_config(saved: Plan, live: LiveState) -> tuple[Config, set[str]]:
    """What the configuration must have been for the planner to find `saved`'s changes, and the maps
    they change (the plan is re-derived for those alone, as the synchroniser plans a few maps): every
    managed map as it is (the planner's view, staged maps it adopts included), changed as the changes
    say; maps of others only where a change adopts them."""
    current = dict(live.maps)
    for s in adopted_staged(live):
        current[s.name] = s.live
    names_by_id = {m.id: n for n, m in (*live.unmanaged.items(), *current.items())}  # as the planner names slots
    changes: dict[str, MapChange] = {}
    for ch in saved.changes:
        if ch.action == "recover":
            continue  # the planner finds these itself, in the staging directory
        if ch.name in changes:
            raise PlanMismatchError(f"refusing the saved plan: it changes map '{ch.name}' twice")
        changes[ch.name] = ch
    # `migrate.from`: a map moved from its previous name (a MovePin out of no staging directory), and
    # what a migration writes into the new map (its MigrateEntries); both checked like every step.
    moved = {s.dst: s.src for s in saved.steps if isinstance(s, MovePin) and s.map == s.dst and "/" not in s.src}
    migrating = {s.map: s for s in saved.steps if isinstance(s, MigrateEntries)}
    sources = {moved[n] for n in changes if n in moved}
    config = Config(pin_root=saved.pin_root)
    for name, have in current.items():
        if name not in changes and name not in sources:
            layout = live.layouts.get(name)
            _put(config, _as_live(have, names_by_id, layout.template if layout is not None else None))
    for name, ch in changes.items():
        if ch.action == "destroy":
            continue
        source = moved.get(name)
        if ch.action == "create":
            pinned = None
        elif source is not None:
            pinned = current.get(source) or live.unmanaged.get(source)
        else:
            pinned = (live.unmanaged if ch.adopted else current).get(name)
        move = Move(source, source in live.unmanaged, migrating.get(name)) if source or name in migrating else None
        _put(config, _as_changed(ch, pinned, names_by_id, saved.scopes.get(name, ALL_ENTRIES), move))
    for name in changes:
        if name in config.outer_maps:
            _check_names(config, config.outer_maps[name])
    return config, set(changes)


def _put(config: Config, spec: InnerMapSpec | OuterMapSpec) -> None:
    if isinstance(spec, OuterMapSpec):
        config.outer_maps[spec.name] = spec
    else:
        config.inner_maps[spec.name] = spec


def _slot_names(have: LiveMap | None, names_by_id: dict[int, str]) -> dict[bytes, str]:
    if have is None or not have.is_outer:
        return {}
    return {k: names_by_id.get(i, f"id {i}") for k, i in have.slots.items()}


def _as_live(have: LiveMap, names_by_id: dict[int, str], template: str | None) -> InnerMapSpec | OuterMapSpec:
    """A map the plan leaves alone, declared as it is (raw types: the planner compares types only when
    both sides have them). An outer map's template is the one recorded, else the inner map in its first
    slot, which is where the planner looks for it."""
    if have.is_outer:
        template = template or next((names_by_id[i] for i in have.slots.values() if i in names_by_id), "")
        return OuterMapSpec(have.name, have.type, Raw(have.key_size), have.max_entries, have.flags, template,
                            _slot_names(have, names_by_id), FROM_PLAN)
    return InnerMapSpec(have.name, have.type, Raw(have.key_size), Raw(have.value_size), have.max_entries, have.flags,
                        have.entries, FROM_PLAN)


@dataclass(frozen=True)
class Move:
    """What the configuration's `migrate:` said of a map, as its plan shows it: the previous name it is
    moved from (someone else's, then adopted first), and the migration's first pass."""

    source: str | None
    foreign: bool
    first_pass: MigrateEntries | None

    def spec(self) -> MigrateSpec:
        m = self.first_pass
        if m is None:
            return MigrateSpec(self.source)
        return MigrateSpec(self.source, parse_type(m.old_key) if m.old_key is not None else None,
                           parse_type(m.old_value) if m.old_value is not None else None, dict(m.defaults), dict(m.renamed))


def _as_changed(ch: MapChange, have: LiveMap | None, names_by_id: dict[int, str],
                scope: EntryScope, move: Move | None = None) -> InnerMapSpec | OuterMapSpec:
    """A map the plan creates, updates, replaces, adopts or migrates: its definition, and the entries
    (slots) the configuration gave it: with `manage_entries: all`, the live ones with the change's added,
    changed and removed ones applied; `listed`, the keys in the plan's scope for it (a key removed, or
    not there and not added, is one to be absent), or for a migration the entries and absent keys its
    first pass writes (in the new layout); `none`, none."""
    d = ch.definition
    if d is None or (ch.kind == "outer") != d.is_outer or d.name != ch.name:
        raise PlanMismatchError(f"refusing the saved plan: the change of map '{ch.name}' does not define the map it makes")
    base: Mapping[bytes, Any] = _slot_names(have, names_by_id) if d.is_outer else have.entries if have is not None else {}
    absent: set[bytes] = set()
    want: dict[bytes, Any] = {}
    first_pass = move.first_pass if move is not None else None
    if first_pass is not None:
        want, absent = dict(first_pass.put), set(first_pass.delete)
    elif ch.manage_entries == "all":
        want = dict(base.items())
        for k in ch.removed:
            want.pop(k, None)
    elif ch.manage_entries == "listed":
        if scope is None:
            raise PlanMismatchError(f"refusing the saved plan: map '{ch.name}' has listed entries, but the plan does "
                                    "not say which")
        for k in scope:
            if k in ch.removed or (k not in base and k not in ch.added):
                absent.add(k)
            elif k in base:
                want[k] = base[k]
    if ch.manage_entries != "none":
        want.update(ch.added)
        want.update((k, new) for k, (_, new) in ch.changed.items())
    _check_entries(d, want)
    manage = Management(ch.adopted or (move is not None and move.foreign), ch.manage_entries, frozenset(absent))
    key = type_or_raw(d.key_type, d.key_size)
    if d.is_outer:
        return OuterMapSpec(d.name, d.type, key, d.max_entries, d.flags, d.inner_map or "", want, FROM_PLAN, manage)
    swap = ch.swap or any(r.startswith(NOT_SWAPPED) for r in ch.reasons)
    return InnerMapSpec(d.name, d.type, key, type_or_raw(d.value_type, d.value_size), d.max_entries, d.flags, want,
                        FROM_PLAN, "swap" if swap else "in_place", PLAIN_SECTION if ch.kind == "plain" else INNER_SECTION,
                        manage, move.spec() if move is not None else None)


def _check_entries(d: MapDef, entries: dict[bytes, Any]) -> None:
    """Every key of the map's size, every value of its size (per-CPU maps: a whole number of 8-byte
    aligned copies, the same for all) or, for outer maps, an inner map's name."""
    if any(len(k) != d.key_size for k in entries):
        raise PlanMismatchError(f"refusing the saved plan: map '{d.name}' has keys of another size than its "
                                f"key_size ({d.key_size})")
    if d.is_outer:
        ok = all(isinstance(v, str) for v in entries.values())
    elif not all(isinstance(v, bytes) for v in entries.values()):
        ok = False
    elif d.type in PERCPU_TYPES:
        unit = (d.value_size + 7) // 8 * 8
        lengths = {len(v) for v in entries.values()}
        ok = len(lengths) <= 1 and all(n and unit and n % unit == 0 for n in lengths)
    else:
        ok = all(len(v) == d.value_size for v in entries.values())
    if not ok:
        raise PlanMismatchError(f"refusing the saved plan: map '{d.name}' has entries that are not "
                                f"{'inner map names' if d.is_outer else f'values of its value_size ({d.value_size})'}")


def _check_names(config: Config, outer: OuterMapSpec) -> None:
    """An outer map's template and slots name maps of the desired state (the planner looks them up)."""
    for name in {outer.inner_map, *outer.slots.values()}:
        if name not in config.inner_maps and name not in config.outer_maps:
            raise PlanMismatchError(f"refusing the saved plan: outer map '{outer.name}' names '{name}', which is "
                                    "not a map of the pin root or of the plan")
    if outer.inner_map not in config.inner_maps:
        raise PlanMismatchError(f"refusing the saved plan: outer map '{outer.name}' takes its template from "
                                f"'{outer.inner_map}', which is not an inner map")


def _first_difference(saved: Plan, again: Plan, changed: set[str]) -> str | None:
    """Where two plans differ, changes first, then the entries they depend on, then steps (each in any
    order), or None."""
    want = {(c.name, c.action): _shown(c) for c in again.changes}
    for c in saved.changes:
        if want.pop((c.name, c.action), None) != _shown(c):
            return f"the change '{c.action} {c.name}' is not what the live state and the plan's other changes give"
    if want:
        name, action = next(iter(want))
        return f"it does not show the change '{action} {name}' that its changes need"
    for name in sorted(changed):
        if saved.scopes.get(name, ALL_ENTRIES) != again.scopes.get(name, ALL_ENTRIES):
            return f"the entries of map '{name}' it depends on are not those its changes need"
    needed: dict[tuple[str, ...], list[tuple[Any, Step]]] = {}
    for step in again.steps:
        needed.setdefault(_identity(step), []).append((_canonical(step), step))
    for i, step in enumerate(saved.steps, 1):
        same = needed.get(_identity(step), [])
        canonical = _canonical(step)
        match = next((j for j, (c, _) in enumerate(same) if c == canonical), None)
        if match is None:
            return f"step {i}, '{step.describe()}', is not one its changes need"
        del same[match]
    missing = next((s for left in needed.values() for _, s in left), None)
    if missing is not None:
        return f"it lacks the step '{missing.describe()}'"
    return None


def _shown(change: MapChange) -> MapChange:
    """A change as compared: without the programs holding its map, which are the live state's (apply
    checks them again itself, and names them when it refuses), and a migration's layout differences
    as JSON gives them back (lists, not tuples)."""
    migration = change.migration
    if migration is not None:
        migration = replace(migration, diffs=json.loads(json.dumps(migration.diffs)))
    return replace(change, holders=[], migration=migration)


def _identity(step: Step) -> tuple[str, ...]:
    """What tells a plan's steps apart: the operation, the map and where."""
    where = (step.src, step.dst) if isinstance(step, MovePin) else (step.pin,)
    return (step.op, step.map.name if isinstance(step, CreateMap) else step.map, *where)


def _canonical(step: Step) -> Any:
    """A step as compared: entries as a mapping, deletions in any order (the kernel takes them so)."""
    if isinstance(step, WriteEntries):
        return ("write", step.map, step.pin, dict(step.put.items()), sorted(step.delete))
    if isinstance(step, SetSlots):
        return ("slots", step.map, step.pin, dict(step.set), sorted(step.clear))
    return asdict(step)
