"""The planner: desired configuration + live state -> plan. Pure: it never touches the kernel.

Step order is what keeps a data plane safe while it runs:
  1. finish or discard what an interrupted apply left in the staging directory;
     record the maps adopted (`adopt: true`) as managed before anything changes them;
     move maps to their new names (`migrate.from`);
  2. create new inner maps and fill them (nothing points at them yet);
  3. write in-place entry changes;
  4. build swapped, replaced and migrated maps aside, fully filled (migrations: every live entry
     converted to the new layout, see plan/migrations.py);
  5. create new outer maps, and replaced outer maps aside;
  6. migrations' second pass: what was written to the old maps meanwhile;
  7. point outer slots at their inner maps, one batch per outer map (one RCU wait each);
  8. move the maps built aside into place (rename(2) replaces the old pin atomically);
  9. remove the maps the configuration no longer names, outer maps first.
So no slot ever points at a map that is not yet filled, and a BPF program reading
through a slot sees either the whole old inner map or the whole new one.

Only managed maps are planned (`LiveState.maps`; contract section 9): a map someone else pinned
is listed and never touched, unless the configuration adopts it; a declared name pinned by
someone else without `adopt: true` makes the configuration unplannable (PlanError). Entries
are planned per `manage_entries`: all of them, only the listed ones, or none; a map whose
entries are not all the config's is never swapped, and is migrated where it would be replaced
(a new map filled with the config's entries would lose the others).
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Set as AbstractSet
from dataclasses import replace
from functools import cached_property
from itertools import compress
from operator import ne
from typing import TYPE_CHECKING, Any

from kmesh_apply.config import maptypes
from kmesh_apply.config.model import (
    ARRAY_TYPES,
    NEARLY_FULL,
    PLAIN_SECTION,
    Config,
    InnerMapSpec,
    OuterMapSpec,
    can_fill,
    used_entries,
)
from kmesh_apply.convert import LayoutError, MigrationRefused
from kmesh_apply.ctype import CType, same_type
from kmesh_apply.entries import Entries, diff, holds_base
from kmesh_apply.errors import PlanError
from kmesh_apply.plan import migrations
from kmesh_apply.plan.model import (
    CreateMap,
    HeldReplaced,
    MapChange,
    MapDef,
    Migration,
    MovePin,
    Plan,
    RecordMap,
    RemovePin,
    SetSlots,
    Step,
    Unmanaged,
    WriteEntries,
)
from kmesh_apply.state import ALL_ENTRIES, NO_ENTRIES, STAGING_DIR, LiveMap, LiveState, StagedMap
from kmesh_apply.wording import a, verb

if TYPE_CHECKING:
    from kmesh_apply.kernel.progs import Program

FIXED_PROPERTIES = ("type", "key_size", "value_size", "max_entries", "flags")
# Maps of at least this many entries have their comparisons remembered (see `_Planner._entries`):
# below it, comparing costs less than the fingerprints.
REMEMBER_FROM_ENTRIES = 4096
# How a change says that its map, to be swapped, is written in place because programs hold it directly.
NOT_SWAPPED = "written in place, not swapped"


def map_def(spec: InnerMapSpec | OuterMapSpec) -> MapDef:
    """The fixed properties a config entry asks for."""
    if isinstance(spec, OuterMapSpec):
        return MapDef(spec.name, spec.type, spec.key_size, spec.value_size, spec.max_entries, spec.flags,
                      _spec(spec.key), None, spec.inner_map)
    return MapDef(spec.name, spec.type, spec.key_size, spec.value_size, spec.max_entries, spec.flags,
                  _spec(spec.key), _spec(spec.value))


_SPECS: dict[int, tuple[CType, Any]] = {}


def _spec(typ: CType) -> Any:
    """A type's spec, written once for the thousands of maps that share one type object (the config
    parses each spec once); known by identity, which costs less than hashing a struct's fields."""
    known = _SPECS.get(id(typ))
    if known is None or known[0] is not typ:
        if len(_SPECS) >= 1024:
            _SPECS.clear()
        known = _SPECS[id(typ)] = (typ, typ.spec())  # the type is kept: its id is not reused meanwhile
    return known[1]


def live_def(have: LiveMap) -> MapDef:
    """The fixed properties of a live map (its types as its BTF gives them, when it has BTF)."""
    return MapDef(have.name, have.type, have.key_size, have.value_size, have.max_entries, have.flags,
                  have.key_type, have.value_type)


def staging_pin(name: str) -> str:
    return f"{STAGING_DIR}/{name}"


def replace_reasons(want: MapDef, have: LiveMap) -> list[str]:
    """Why `have` cannot become `want` in place: its fixed properties (and BTF types, when both are known,
    compared by layout: a packed struct read back from BTF is the natural struct it lays out as)."""
    reasons = []
    for prop in FIXED_PROPERTIES:
        old, new = getattr(have, prop), getattr(want, prop)
        if old != new:
            show = (lambda v: ",".join(v) or "none") if prop == "flags" else str
            reasons.append(f"{prop} {show(old)} -> {show(new)}")
    for prop in ("key_type", "value_type"):
        old, new = getattr(have, prop), getattr(want, prop)
        if old is not None and new is not None and not same_type(old, new):
            reasons.append(f"{prop} {old} -> {new}")
    return reasons


def template_mismatch(template: MapDef, inner: LiveMap) -> list[str]:
    """The kernel's rule for putting `inner` in a slot of an outer map made with `template`."""
    props = ["type", "key_size", "value_size", "flags"]
    if template.type in ARRAY_TYPES and "inner_map" not in template.flags:
        props.append("max_entries")
    return [f"{p} {getattr(inner, p)} -> {getattr(template, p)}" for p in props if getattr(inner, p) != getattr(template, p)]


def entry_diff(desired: Mapping[bytes, Any], live: Mapping[bytes, Any], is_array: bool) -> tuple[dict[bytes, Any], list[bytes]]:
    """Entries (values, or for outer maps the inner map in a slot) to put and keys to delete.
    Array slots cannot be deleted: unnamed ones are zeroed instead."""
    return _diff(desired, live, is_array)[:2]


def _diff(desired: Mapping[bytes, Any], live: Mapping[bytes, Any],
          is_array: bool) -> tuple[dict[bytes, Any], list[bytes], Mapping[bytes, Any]]:
    """`entry_diff`, and the live entries as something to look keys up in (for `describe_entries`)."""
    have: Mapping[bytes, Any]
    if isinstance(desired, Entries) and isinstance(live, Entries) and \
            (desired.key_size, desired.value_size) == (live.key_size, live.value_size):
        put, dropped, have = diff(desired, live)
        if is_array:
            put.update(_zeroed(dropped, have))
            return put, [], have
        return put, dropped, have
    if desired == live:  # the common case, compared in C
        return {}, [], live
    have = dict(live.items()) if isinstance(live, Entries) else live
    # Compared in C (map/compress), in the config's order: a million entries in 0.18 s, not 0.27 s.
    put = dict(compress(desired.items(), map(ne, map(have.get, desired), desired.values())))
    shared = len(desired) - sum(1 for k in put if k not in have)
    gone: list[bytes] = []
    if len(have) > shared:  # else every live key is desired
        wanted = desired if isinstance(desired, dict) else set(desired)
        gone = [k for k in have if k not in wanted]
    if is_array:
        put.update(_zeroed(gone, have))
        return put, [], have
    return put, gone, have


def _zeroed(gone: list[bytes], have: Mapping[bytes, Any]) -> dict[bytes, bytes]:
    """Array indexes the config no longer names hold zeroes: the ones that do not yet."""
    return {k: bytes(len(have[k])) for k in gone if have[k].count(0) != len(have[k])}


# Map types whose update of an existing key links a new element in place of the old one (RCU),
# so a reader finds the old value or the new one, never a mix (kernel/bpf/hashtab.c
# htab_map_update_elem, htab_lru_map_update_elem; lpm_trie.c trie_update_elem).
REPLACE_ELEMENT_TYPES = ("hash", "lru_hash", "lpm_trie")
# Per-CPU hash maps copy an existing key's new value over the old one (pcpu_copy_value), as
# arrays do for every index (arraymap.c array_map_update_elem): a reader may see it half done.
PERCPU_HASH_TYPES = ("percpu_hash", "lru_percpu_hash")


def atomic_for_readers(map_type: str, put: dict[bytes, Any], delete: list[bytes], have: LiveMap) -> bool:
    """Whether writing this change in place lets no reader see a mix of old and new: one element,
    replaced as a whole (or added or deleted, which is linking or unlinking it)."""
    if len(put) + len(delete) != 1:
        return False
    if map_type in REPLACE_ELEMENT_TYPES:
        return True
    return map_type in PERCPU_HASH_TYPES and (bool(delete) or next(iter(put)) not in have.entries)


def describe_entries(change: MapChange, put: dict[bytes, Any], delete: list[bytes], live: Mapping[bytes, Any]) -> None:
    for k, v in put.items():
        old = live.get(k)
        if old is None:
            change.added[k] = v
        else:
            change.changed[k] = (old, v)
    for k in delete:
        change.removed[k] = live[k]


class _Planner:
    """Holds the working sets of one planning pass; `plan()` is the whole algorithm."""

    def __init__(self, config: Config, live: LiveState, only: Collection[str] | None = None,
                 known_equal: AbstractSet[tuple[bytes, bytes]] = frozenset()):
        self.config = config
        self.only = only
        self.known_equal = known_equal
        # Copied only when staged or adopted maps join it (a copy of 5,000 maps costs more than a scoped plan).
        self.live = dict(live.maps) if live.staged else live.maps
        self.base = live
        self.holders = live.holders
        self.probed = live.probed
        self.result = Plan(live.pin_root, base=live)
        self.problems: list[str] = []  # what makes the configuration unplannable here (PlanError)
        self.adopting: set[str] = set()
        self.recover: list[Step] = []
        self.adopt: list[Step] = []
        self.rename: list[Step] = []
        self.fill_new: list[Step] = []
        self.in_place: list[Step] = []
        self.build_aside: list[Step] = []
        self.outer_create: list[Step] = []
        self.catch_up: list[Step] = []
        self.slots: list[Step] = []
        self.move: list[Step] = []
        self.remove_outer: list[Step] = []
        self.remove_inner: list[Step] = []
        # Where each desired inner map will be by the time slots are set.
        self.instance: dict[str, str] = {}
        # Inner maps whose live instance is superseded (swapped or replaced): every slot holding them moves.
        self.superseded: set[str] = set()
        # Maps moved to their name from another (`migrate.from`): new name -> the map as it was there.
        self.renamed_from: dict[str, LiveMap] = {}
        self._adopt_staged(live)
        self._claim()
        self.result.held_replaced = held_replaced(live)

    @cached_property
    def slot_held(self) -> set[int]:
        """IDs of the inner maps some outer slot holds (computed only when a multi-entry change asks)."""
        return {i for m in self.live.values() if m.is_outer for i in m.slots.values()}

    @cached_property
    def foreign_slots(self) -> dict[int, str]:
        """IDs of the maps slots of unmanaged outer maps hold -> that outer map's name."""
        return {i: n for n, m in self.base.unmanaged.items() if m.is_outer for i in m.slots.values()}

    @cached_property
    def names_by_id(self) -> dict[int, str]:
        return {m.id: n for n, m in (*self.base.unmanaged.items(), *self.live.items())}

    def _adopt_staged(self, live: LiveState) -> None:
        """A staged map some slot already points at was complete: finish its move. Others are discarded."""
        if not live.staged:
            return
        adopted = {s.pin for s in adopted_staged(live)}
        for s in live.staged:
            if s.pin in adopted:
                self.recover.append(MovePin(s.name, s.pin, s.name))
                self.live[s.name] = s.live
                self.result.changes.append(MapChange(s.name, "recover", "inner", reasons=[f"finish the interrupted move of {s.pin}"]))
            else:
                self.recover.append(RemovePin(s.name, s.pin))
                self.result.changes.append(MapChange(s.name, "recover", "outer" if s.live.is_outer else "inner",
                                                     reasons=[f"remove {s.pin} left by an interrupted apply"]))

    def _claim(self) -> None:
        """Declared names pinned by someone else: adopted (`adopt: true`, same map type) or refused.
        An adopted map is planned like a managed one from here on; others are listed, never touched."""
        unmanaged = self.base.unmanaged
        for name, have in unmanaged.items():
            spec: InnerMapSpec | OuterMapSpec | None = self.config.inner_maps.get(name) or self.config.outer_maps.get(name)
            if spec is None or (self.only is not None and name not in self.only):
                continue
            if not spec.manage.adopt:
                self.problems.append(f"map '{spec.name}' is pinned in the pin root but kmesh-apply does not manage it "
                                     f"({self._whose(spec.name, have)}): add adopt: true to take it over, or pick "
                                     "another name")
            elif have.type != spec.type:
                self.problems.append(f"map '{spec.name}': adopt: the pinned map (ID {have.id}) is {a(have.type)} map, "
                                     f"the configuration declares {a(spec.type)} map; kmesh-apply does not replace a "
                                     f"map it does not own on a guess: declare type: {have.type}, or pick another name")
            else:
                if self.live is self.base.maps:
                    self.live = dict(self.live)
                self.live[spec.name] = have
                self.adopting.add(spec.name)
        self.result.unmanaged = [Unmanaged(n, m.type, m.id) for n, m in sorted(unmanaged.items()) if n not in self.adopting]

    def _whose(self, name: str, have: LiveMap) -> str:
        record = (self.base.owned or {}).get(name)
        if record is not None:
            return f"its pin now holds map ID {have.id}, not the map ID {record.ids[0]} kmesh-apply made"
        return f"{a(have.type)} map, ID {have.id}, pinned by someone else"

    def plan(self) -> Plan:
        inner_maps, outer_maps = self.config.inner_maps, self.config.outer_maps
        if self.only is None:
            for inner in inner_maps.values():
                self._plan_inner(inner)
            outers = list(outer_maps.values())
            candidates = sorted(self.live.items())
        else:
            for name in sorted(self.only):
                if name in inner_maps:
                    self._plan_inner(inner_maps[name])
            outers = [o for o in outer_maps.values() if o.name in self.only or self._holds_superseded(o.name)]
            candidates = [(n, self.live[n]) for n in sorted(self.only) if n in self.live]
        for outer in outers:
            self._plan_outer(outer)
        if self.problems:
            raise PlanError(self.problems)
        for name, have in candidates:
            if name not in inner_maps and name not in outer_maps:
                (self.remove_outer if have.is_outer else self.remove_inner).append(RemovePin(name, name))
                self.result.changes.append(MapChange(name, "destroy", self._kind(have),
                                                     holders=self._in_use(name, have, "destroy")))
        self.result.steps = (self.recover + self.adopt + self.rename + self.fill_new + self.in_place + self.build_aside
                             + self.outer_create + self.catch_up + self.slots + self.move + self.remove_outer
                             + self.remove_inner)
        changed = {ch.name for ch in self.result.changes}
        self.result.kept = sorted(n for n in (*inner_maps, *outer_maps) if n not in changed and n in self.live)
        self._capacity_warnings()
        return self.result

    def _kind(self, have: LiveMap) -> str:
        """How a live map the configuration does not declare is named: by what holds it."""
        return "outer" if have.is_outer else "inner" if have.id in self.slot_held else "plain"

    def _capacity_warnings(self) -> None:
        """Maps that would end nearly full: inserts start failing (LRU maps: evicting) soon after.
        Arrays cannot fill up (see can_fill). A scoped plan looks at its own maps only (the others
        were looked at when they changed)."""
        inner_maps: Collection[InnerMapSpec] = self.config.inner_maps.values()
        outer_maps: Collection[OuterMapSpec] = self.config.outer_maps.values()
        if self.only is not None:
            inner_maps = [self.config.inner_maps[n] for n in self.only if n in self.config.inner_maps]
            outer_maps = [self.config.outer_maps[n] for n in self.only if n in self.config.outer_maps]
        usage = [("inner", s.name, used_entries(s.type, s.entries), s.max_entries, "entries")
                 for s in inner_maps if can_fill(s.type)]
        usage += [("outer", s.name, len(s.slots), s.max_entries, "slots") for s in outer_maps if can_fill(s.type)]
        for kind, name, used, most, what in usage:
            if used >= NEARLY_FULL * most:
                self.result.warnings.append(
                    f"{kind} map '{name}' would be {used * 100 // most}% full ({used} of {most} {what}); "
                    "raise its max_entries before it fills up")

    def _change(self, spec: InnerMapSpec | OuterMapSpec, action: str, want: MapDef | None = None,
                **fields: Any) -> MapChange:
        """A change of a declared map, saying whose entries it manages and whether it is adopted now."""
        kind = "outer" if isinstance(spec, OuterMapSpec) else "plain" if spec.section == PLAIN_SECTION else "inner"
        adopted = spec.name in self.adopting
        if adopted and action == "update":
            action = "adopt"
        moved = self.renamed_from.get(spec.name)
        if moved is not None:
            reasons = fields.setdefault("reasons", [])
            if action == "update":
                action = "rename"
                fields["migration"] = Migration(moved.name, len(moved.entries), renamed_only=True)
            elif action != "migrate":
                reasons.insert(0, f"moved from '{moved.name}' first")
            if moved.name in self.base.unmanaged:
                reasons.append(f"'{moved.name}' was pinned by someone else: adopted (adopt: true), then moved")
        return MapChange(spec.name, action, kind, want, adopted=adopted, manage_entries=spec.manage.entries, **fields)

    def _owned(self, spec: InnerMapSpec | OuterMapSpec, want: MapDef, have: LiveMap) -> None:
        """Scope the entries the plan depends on, and record the adoption (and the layout an adopted
        map without BTF cannot carry) before any other step: intent first."""
        keys = spec.slots if isinstance(spec, OuterMapSpec) else spec.entries
        if not spec.manage.all_entries:
            self.result.scopes[spec.name] = frozenset(keys) | spec.manage.absent
        elif spec.name in self.adopting:
            self.result.scopes[spec.name] = ALL_ENTRIES
        if spec.name not in self.adopting:
            return
        untyped = have.key_type is None and have.value_type is None and (want.key_type, want.value_type) != (None, None)
        layout = want if want.is_outer or untyped else None
        self.adopt.append(RecordMap(spec.name, spec.name, have.id, adopt=True, layout=layout))

    def _refuse_replace(self, spec: InnerMapSpec | OuterMapSpec, reasons: list[str], have: LiveMap) -> bool:
        """A map whose entries are not all the config's, and that cannot be migrated (an outer map, a map
        whose entries cannot be read), cannot be replaced by an empty one: a problem, and True."""
        if spec.manage.all_entries:
            return False
        why = (f"its entries cannot be read ({have.unreadable})" if have.unreadable
               else "an outer map's slots are not migrated")
        self.problems.append(
            f"map '{spec.name}' would have to be replaced ({'; '.join(reasons)}), and a new map would lose the entries "
            f"others wrote (manage_entries: {spec.manage.entries}); kmesh-apply cannot carry them over: {why}. Keep "
            "its fixed properties as they are, or use manage_entries: all to replace it with the entries given here")
        return True

    def _moved_here(self, spec: InnerMapSpec) -> None:
        """`migrate.from`: the map pinned under the previous name is moved to this one first (adopted
        first if someone else pinned it), and planned from then on as this map."""
        source = spec.migrate.source if spec.migrate is not None else None
        if source is None:
            return
        old, foreign = self.live.get(source), False
        if old is None:
            old = self.base.unmanaged.get(source)
            foreign = old is not None
        if old is None:
            return  # moved already, or never there
        if spec.name in self.live or spec.name in self.base.unmanaged:
            self.problems.append(f"map '{spec.name}': migrate.from: both '{source}' and '{spec.name}' are pinned: "
                                 f"drop migrate.from if '{spec.name}' is the map to keep (then '{source}' is "
                                 "destroyed, or left alone if someone else pinned it), else remove the other pin")
            return
        if foreign:
            if not spec.manage.adopt:
                self.problems.append(f"map '{spec.name}': migrate.from: '{source}' ({self._whose(source, old)}) is "
                                     "not kmesh-apply's: add adopt: true to take it over")
                return
            self.adopt.append(RecordMap(source, source, old.id, adopt=True))
            self.result.unmanaged = [u for u in self.result.unmanaged if u.name != source]
        if self.live is self.base.maps:
            self.live = dict(self.live)
        self.live.pop(source, None)
        self.live[spec.name] = replace(old, name=spec.name)
        self.renamed_from[spec.name] = old
        self.result.scopes[source] = NO_ENTRIES  # what is written there until the apply is carried over, not a change
        self.rename.append(MovePin(spec.name, source, spec.name))

    def _migrated(self, spec: InnerMapSpec, want: MapDef, have: LiveMap, reasons: list[str]) -> bool:
        """Plan the change as a migration when it is one (see plan/migrations.py); True when planned
        (or found impossible: a problem says why)."""
        if not migrations.wanted(spec) or have.unreadable:
            return False
        try:
            conv, warnings = migrations.conversion_for(spec, have)
            if not reasons and not conv.changed:
                return False
            entries = migrations.count_entries(conv, spec, have)
        except (LayoutError, MigrationRefused) as e:
            self.problems.append(migrations.refused(spec.name, e))
            return True
        self.result.warnings += warnings
        pin = staging_pin(spec.name)
        self.instance[spec.name] = pin
        self.superseded.add(spec.name)
        first, second = migrations.steps(spec, want, have, pin, conv)
        self.build_aside += [CreateMap(want, pin), *first]
        self.catch_up.append(second)
        self.move.append(MovePin(spec.name, pin, spec.name))
        source = self.renamed_from.get(spec.name, have).name
        fixed = [r for r in reasons if not r.startswith(("key_type ", "value_type ", "key_size ", "value_size "))]
        # (the layout text says those)
        self.result.changes.append(self._change(spec, "migrate", want, reasons=fixed,
                                                holders=self._in_use(spec.name, have),
                                                migration=migrations.summary(conv, source, entries)))
        self._foreign_slot_warning(spec.name, have)
        return True

    def _plan_inner(self, spec: InnerMapSpec) -> None:
        want = map_def(spec)
        self._moved_here(spec)
        have = self.live.get(spec.name)
        if have is None:
            self.instance[spec.name] = spec.name
            self.fill_new += [CreateMap(want, spec.name), *self._fill(spec, spec.name)]
            # The plan shares the config's entries (no copies: B's million entries are 40 MB a dict).
            self.result.changes.append(self._change(spec, "create", want, added=spec.entries))
            return
        self._owned(spec, want, have)
        reasons = replace_reasons(want, have)
        if self._migrated(spec, want, have, reasons):
            return
        kind = maptypes.kind(spec.type).entries
        if reasons:
            if self._refuse_replace(spec, reasons, have):
                return
            self._build_aside(spec, want)
            if kind in (maptypes.LIST, maptypes.SET) and have.type == spec.type:
                reasons.append(f"the new {spec.type} starts with the config's values: the old one's cannot be read")
            change = self._change(spec, "replace", want, reasons=reasons, holders=self._in_use(spec.name, have),
                                  old=live_def(have))
            if have.unreadable or kind in (maptypes.LIST, maptypes.SET):
                change.added = spec.entries
            else:
                describe_entries(change, *_diff(spec.entries, have.entries, want.type in ARRAY_TYPES))
            self._foreign_slot_warning(spec.name, have)
            self.result.changes.append(change)
            return
        self.instance[spec.name] = spec.name
        put: dict[bytes, Any]
        delete: list[bytes]
        have_entries: Mapping[bytes, Any]
        if kind in (maptypes.NONE, maptypes.LIST):  # not the config's, or a queue's readers' once it exists
            put, delete, have_entries = {}, [], have.entries
        elif kind == maptypes.SET:  # a bloom filter: only what it surely lacks can be added
            present = self.probed.get(spec.name, set())
            put, delete, have_entries = {v: v for v in spec.entries if v not in present}, [], {}
        else:
            put, delete, have_entries = self._entries(spec, have)
        if not put and not delete:
            if spec.name in self.adopting or spec.name in self.renamed_from:
                self.result.changes.append(self._change(spec, "update", want))
            return
        swap = (spec.update == "swap" and not atomic_for_readers(spec.type, put, delete, have)
                and have.id in self.slot_held)
        holders = self._holders(have)
        change = self._change(spec, "update", want, holders=holders)
        if swap and holders:  # they hold this very map, not the slot: a swap would leave them on the old one
            swap = False
            change.reasons.append(f"{NOT_SWAPPED}: {_programs(holders)} {verb(len(holders), 'holds', 'hold')} this inner map "
                                  "directly and would stay on the old map; readers may see the change half done")
        if swap and not spec.manage.all_entries:
            swap = False
            change.reasons.append(f"{NOT_SWAPPED}: a new map would lose the entries others write "
                                  f"(manage_entries: {spec.manage.entries}); readers may see the change half done")
        if swap and have.id in self.foreign_slots:
            swap = False
            change.reasons.append(f"{NOT_SWAPPED}: the unmanaged outer map '{self.foreign_slots[have.id]}' "
                                  "holds it in a slot and would stay on the old map; readers may see the change half done")
        if kind == maptypes.SET:
            change.reasons.append("a bloom filter only grows: values it holds stay in it until it is replaced")
        change.swap = swap
        describe_entries(change, put, delete, have_entries)
        self.result.changes.append(change)
        if swap:
            self._build_aside(spec, want)
        else:
            self.in_place.append(WriteEntries(spec.name, spec.name, put, delete))

    def _entries(self, spec: InnerMapSpec, have: LiveMap) -> tuple[dict[bytes, Any], list[bytes], Mapping[bytes, Any]]:
        """What to write to a map that stays: per `manage_entries`, all its entries, only the listed ones
        (and the keys to be absent), or none."""
        is_array = spec.type in ARRAY_TYPES
        if spec.manage.all_entries:
            return self._all_entries(spec.entries, have.entries, is_array)
        if spec.manage.entries == "none":
            return {}, [], have.entries
        return _listed(spec.entries, have.entries, spec.manage.absent, is_array)

    def _all_entries(self, desired: Mapping[bytes, Any], live: Mapping[bytes, Any],
                     is_array: bool) -> tuple[dict[bytes, Any], list[bytes], Mapping[bytes, Any]]:
        """`_diff`, skipped for a pair of large maps already found equal: their fingerprints (one
        hash of the packed buffers each) are in `known_equal`; a pair found equal is added to the plan's.
        Entries assembled from blocks whose previous version is known equal to the live map (by an
        earlier plan, or now by hash sums) are compared by their changed blocks only."""
        if not (isinstance(desired, Entries) and isinstance(live, Entries) and len(desired) >= REMEMBER_FROM_ENTRIES):
            return _diff(desired, live, is_array)
        live_print = live.fingerprint()
        if desired.base is not None and ((desired.base[0], live_print) in self.known_equal or holds_base(desired, live)):
            # The live map equals the entries these were made from: only the blocks that changed differ.
            return _diff(desired.base[1], desired.base[2], is_array)
        pair = (desired.fingerprint(), live_print)
        if pair in self.known_equal:
            return {}, [], live
        put, delete, have = _diff(desired, live, is_array)
        if not put and not delete:
            self.result.verified.add(pair)
        return put, delete, have

    def _fill(self, spec: InnerMapSpec, pin: str) -> list[Step]:
        """A fresh map holds zeroes (arrays) or nothing: write only the entries that differ from that."""
        entries: Mapping[bytes, bytes]
        if spec.type in ARRAY_TYPES:
            entries = {k: v for k, v in spec.entries.items() if v.count(0) != len(v)}
        else:
            entries = spec.entries
        return [WriteEntries(spec.name, pin, entries)] if entries else []

    def _holds_superseded(self, outer: str) -> bool:
        """Whether a live outer map holds an inner map this plan swaps or replaces (its slots must move too)."""
        have = self.live.get(outer)
        ids = {self.live[n].id for n in self.superseded if n in self.live}
        return have is not None and bool(ids) and not ids.isdisjoint(have.slots.values())

    def _build_aside(self, spec: InnerMapSpec, want: MapDef) -> None:
        pin = staging_pin(spec.name)
        self.instance[spec.name] = pin
        self.superseded.add(spec.name)
        self.build_aside += [CreateMap(want, pin), *self._fill(spec, pin)]
        self.move.append(MovePin(spec.name, pin, spec.name))

    def _foreign_slot_warning(self, name: str, have: LiveMap) -> None:
        outer = self.foreign_slots.get(have.id)
        if outer is not None:
            self.result.warnings.append(f"map '{name}' (ID {have.id}) is in a slot of the unmanaged outer map '{outer}', "
                                        "which kmesh-apply leaves alone: that slot keeps the old map after the replacement")

    def _plan_outer(self, spec: OuterMapSpec) -> None:
        want = map_def(spec)
        template = map_def(self.config.inner_maps[spec.inner_map])
        have = self.live.get(spec.name)
        if have is not None:
            self._owned(spec, want, have)
        reasons = replace_reasons(want, have) if have is not None else []
        if have is not None and not reasons and have.is_outer:
            reasons = self._template_reasons(template, have)
        if have is not None and reasons and self._refuse_replace(spec, reasons, have):
            return
        if have is None or reasons:
            pin = spec.name if have is None else staging_pin(spec.name)
            self.outer_create.append(CreateMap(want, pin, template=self._instance(spec.inner_map)))
            if spec.slots:
                self.slots.append(SetSlots(spec.name, pin, {k: self._instance(n) for k, n in spec.slots.items()}))
            if have is None:
                self.result.changes.append(self._change(spec, "create", want, added=dict(spec.slots)))
            else:
                self.move.append(MovePin(spec.name, pin, spec.name))
                change = self._change(spec, "replace", want, reasons=reasons, holders=self._in_use(spec.name, have),
                                      old=live_def(have))
                old = {k: self.names_by_id.get(i, f"id {i}") for k, i in have.slots.items()} if have.is_outer else {}
                describe_entries(change, *entry_diff(dict(spec.slots), old, False), old)
                self.result.changes.append(change)
            return
        set_: dict[bytes, str] = {}
        change = self._change(spec, "update", want)
        for key, name in spec.slots.items():
            held = have.slots.get(key)
            current = self.live.get(name)
            if held is None or current is None or held != current.id:
                set_[key] = self._instance(name)
                was = self.names_by_id.get(held, f"id {held}") if held is not None else None
                if was is None:
                    change.added[key] = name
                else:
                    change.changed[key] = (was, name)
            elif name in self.superseded:
                set_[key] = self.instance[name]  # same map by name, new instance: not a change users see
        if spec.manage.all_entries:
            clear = [k for k in have.slots if k not in spec.slots]
        else:
            clear = [k for k in spec.manage.absent if k in have.slots]
            # Slots someone else set that hold a map this plan supersedes follow it to its new instance.
            moving = {self.live[n].id: n for n in self.superseded if n in self.live}
            set_.update({k: self.instance[moving[i]] for k, i in have.slots.items() if k not in spec.slots and i in moving})
        for k in clear:
            change.removed[k] = self.names_by_id.get(have.slots[k], f"id {have.slots[k]}")
        if set_ or clear:
            self.slots.append(SetSlots(spec.name, spec.name, set_, clear))
        recorded = self.base.layouts.get(spec.name)
        if spec.name not in self.adopting and recorded is not None and recorded.template not in (None, spec.inner_map):
            self.in_place.append(RecordMap(spec.name, spec.name, have.id, layout=want))
            change.reasons.append(f"its template is recorded as '{spec.inner_map}' (was '{recorded.template}')")
        if change.added or change.changed or change.removed or change.reasons or change.adopted:
            self.result.changes.append(change)

    def _holders(self, have: LiveMap) -> list[Program]:
        """The loaded programs holding this very map (not those reaching it through a slot)."""
        return list(self.holders.get(have.id, ()))

    def _in_use(self, name: str, have: LiveMap, action: str = "replace") -> list[Program]:
        """The programs holding a map about to be replaced or destroyed; apply refuses while there are any."""
        holders = self._holders(have)
        if holders:
            self.result.warnings.append(
                f"map '{name}' (ID {have.id}) is held by {_programs(holders)}: apply refuses to {action} it unless "
                f"--allow-replace-in-use, and then they keep reading the {'destroyed' if action == 'destroy' else 'old'} "
                "map until they are reloaded")
        return holders

    def _instance(self, name: str) -> str:
        """The pin an inner map will have when slots are set (its own, when this plan leaves it alone)."""
        return self.instance.get(name, name)

    def _template_reasons(self, template: MapDef, have: LiveMap) -> list[str]:
        """The kernel does not report an outer map's template; the inner maps in its slots reveal it."""
        by_id = {m.id: m for m in (*self.base.unmanaged.values(), *self.live.values())}
        for inner_id in have.slots.values():
            inner = by_id.get(inner_id)
            if inner is not None:
                mismatch = template_mismatch(template, inner)
                if mismatch:
                    return [f"inner map template: {', '.join(mismatch)}"]
                return []
        return []


def _listed(desired: Mapping[bytes, Any], live: Mapping[bytes, Any], absent: AbstractSet[bytes],
            is_array: bool) -> tuple[dict[bytes, Any], list[bytes], Mapping[bytes, Any]]:
    """`manage_entries: listed`: the listed entries that differ, and the keys to be absent that are there
    (an array's are zeroed); every other entry is someone else's."""
    have = dict(live.items()) if isinstance(live, Entries) and len(desired) + len(absent) > 64 else live
    put = {k: v for k, v in desired.items() if have.get(k) != v}
    gone = [k for k in absent if k in have]
    if is_array:
        put.update(_zeroed(gone, have))
        return put, [], have
    return put, gone, have


def _programs(programs: list[Program]) -> str:
    return ", ".join(map(str, programs))


def adopted_staged(live: LiveState) -> list[StagedMap]:
    """The maps an interrupted apply left staged that some outer slot already points at: they were
    complete, so their move is finished (the others are discarded)."""
    held = {i for m in live.maps.values() if m.is_outer for i in m.slots.values()}
    return [s for s in live.staged if s.live.id in held and not s.live.is_outer]


def held_replaced(live: LiveState) -> list[HeldReplaced]:
    """Maps this pin root replaced or destroyed that programs still hold (not the map now at the pin:
    a replacement that never happened)."""
    out = []
    for map_id, name in sorted(live.replaced.items()):
        programs = live.holders.get(map_id)
        current = live.maps.get(name)
        if programs and (current is None or current.id != map_id):
            out.append(HeldReplaced(name, map_id, list(programs), destroyed=current is None))
    return out


def make_plan(config: Config, live: LiveState, only: Collection[str] | None = None,
              known_equal: AbstractSet[tuple[bytes, bytes]] = frozenset()) -> Plan:
    """Diff `config` against `live` into an ordered plan (see the module docstring for the order).
    `known_equal`: fingerprints of (desired, live) entries found equal before (`Plan.verified`).

    `only` scopes the plan to the maps it names (the synchroniser's changed maps): others are
    neither planned nor destroyed, except that an outer map holding an inner map the plan swaps
    or replaces is planned too, so its slots move with it. Staging leftovers are always handled."""
    return _Planner(config, live, only, known_equal).plan()


def destroy_plan(live: LiveState) -> Plan:
    """The plan that empties the pin root."""
    return make_plan(Config(), live)
