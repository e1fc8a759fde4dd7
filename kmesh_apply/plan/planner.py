"""The planner: desired configuration + live state -> plan. Pure: it never touches the kernel.

Step order is what keeps a data plane safe while it runs:
  1. finish or discard what an interrupted apply left in the staging directory;
  2. create new inner maps and fill them (nothing points at them yet);
  3. write in-place entry changes;
  4. build swapped and replaced maps aside, fully filled;
  5. create new outer maps, and replaced outer maps aside;
  6. point outer slots at their inner maps, one batch per outer map (one RCU wait each);
  7. move the maps built aside into place (rename(2) replaces the old pin atomically);
  8. remove the maps the configuration no longer names, outer maps first.
So no slot ever points at a map that is not yet filled, and a BPF program reading
through a slot sees either the whole old inner map or the whole new one.
"""

from __future__ import annotations

from itertools import compress
from operator import ne
from typing import Any

from kmesh_apply.config.model import ARRAY_TYPES, Config, InnerMapSpec, OuterMapSpec
from kmesh_apply.ctype import same_type
from kmesh_apply.plan.model import CreateMap, MapChange, MapDef, MovePin, Plan, RemovePin, SetSlots, Step, WriteEntries
from kmesh_apply.state import STAGING_DIR, LiveMap, LiveState

FIXED_PROPERTIES = ("type", "key_size", "value_size", "max_entries", "flags")


def map_def(spec: InnerMapSpec | OuterMapSpec) -> MapDef:
    """The fixed properties a config entry asks for."""
    if isinstance(spec, OuterMapSpec):
        return MapDef(spec.name, spec.type, spec.key_size, spec.value_size, spec.max_entries, spec.flags,
                      spec.key.spec(), None, spec.inner_map)
    return MapDef(spec.name, spec.type, spec.key_size, spec.value_size, spec.max_entries, spec.flags,
                  spec.key.spec(), spec.value.spec())


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


def entry_diff(desired: dict[bytes, Any], live: dict[bytes, Any], is_array: bool) -> tuple[dict[bytes, Any], list[bytes]]:
    """Entries (values, or for outer maps the inner map in a slot) to put and keys to delete.
    Array slots cannot be deleted: unnamed ones are zeroed instead."""
    if desired == live:  # the common case, compared in C
        return {}, []
    # Compared in C (map/compress), in the config's order: a million entries in 0.18 s, not 0.27 s.
    put = {k: desired[k] for k in compress(desired, map(ne, map(live.get, desired), desired.values()))}
    shared = len(desired) - sum(1 for k in put if k not in live)
    gone = [k for k in live if k not in desired] if len(live) > shared else []  # else every live key is desired
    if is_array:
        for k in gone:
            v = live[k]
            if v.count(0) != len(v):
                put[k] = bytes(len(v))
        return put, []
    return put, gone


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


def describe_entries(change: MapChange, put: dict[bytes, Any], delete: list[bytes], live: dict[bytes, Any]) -> None:
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

    def __init__(self, config: Config, live: LiveState):
        self.config = config
        self.live = dict(live.maps)
        self.result = Plan(live.pin_root, base=live)
        self.recover: list[Step] = []
        self.fill_new: list[Step] = []
        self.in_place: list[Step] = []
        self.build_aside: list[Step] = []
        self.outer_create: list[Step] = []
        self.slots: list[Step] = []
        self.move: list[Step] = []
        self.remove_outer: list[Step] = []
        self.remove_inner: list[Step] = []
        # Where each desired inner map will be by the time slots are set.
        self.instance: dict[str, str] = {}
        # Inner maps whose live instance is superseded (swapped or replaced): every slot holding them moves.
        self.superseded: set[str] = set()
        self._adopt_staged(live)
        self.slot_held = {i for m in self.live.values() if m.is_outer for i in m.slots.values()}

    def _adopt_staged(self, live: LiveState) -> None:
        """A staged map some slot already points at was complete: finish its move. Others are discarded."""
        held = {i for m in live.maps.values() if m.is_outer for i in m.slots.values()}
        for s in live.staged:
            if s.live.id in held and not s.live.is_outer:
                self.recover.append(MovePin(s.name, s.pin, s.name))
                self.live[s.name] = s.live
                self.result.changes.append(MapChange(s.name, "recover", "inner", reasons=[f"finish the interrupted move of {s.pin}"]))
            else:
                self.recover.append(RemovePin(s.name, s.pin))
                self.result.changes.append(MapChange(s.name, "recover", "outer" if s.live.is_outer else "inner",
                                                     reasons=[f"remove {s.pin} left by an interrupted apply"]))

    def plan(self) -> Plan:
        for inner in self.config.inner_maps.values():
            self._plan_inner(inner)
        for outer in self.config.outer_maps.values():
            self._plan_outer(outer)
        for name, have in sorted(self.live.items()):
            if name not in self.config.inner_maps and name not in self.config.outer_maps:
                (self.remove_outer if have.is_outer else self.remove_inner).append(RemovePin(name, name))
                self.result.changes.append(MapChange(name, "destroy", "outer" if have.is_outer else "inner"))
        self.result.steps = (self.recover + self.fill_new + self.in_place + self.build_aside + self.outer_create
                             + self.slots + self.move + self.remove_outer + self.remove_inner)
        return self.result

    def _plan_inner(self, spec: InnerMapSpec) -> None:
        want = map_def(spec)
        have = self.live.get(spec.name)
        if have is None:
            self.instance[spec.name] = spec.name
            self.fill_new += [CreateMap(want, spec.name), *self._fill(spec, spec.name)]
            # The plan shares the config's entries (no copies: B's million entries are 40 MB a dict).
            self.result.changes.append(MapChange(spec.name, "create", "inner", want, added=spec.entries))
            return
        reasons = replace_reasons(want, have)
        if reasons:
            self._build_aside(spec, want)
            change = MapChange(spec.name, "replace", "inner", want, reasons)
            describe_entries(change, *entry_diff(spec.entries, have.entries, want.type in ARRAY_TYPES), have.entries)
            self.result.changes.append(change)
            return
        self.instance[spec.name] = spec.name
        put, delete = entry_diff(spec.entries, have.entries, want.type in ARRAY_TYPES)
        if not put and not delete:
            return
        swap = spec.update == "swap" and have.id in self.slot_held and not atomic_for_readers(spec.type, put, delete, have)
        change = MapChange(spec.name, "update", "inner", want, swap=swap)
        describe_entries(change, put, delete, have.entries)
        self.result.changes.append(change)
        if swap:
            self._build_aside(spec, want)
        else:
            self.in_place.append(WriteEntries(spec.name, spec.name, put, delete))

    def _fill(self, spec: InnerMapSpec, pin: str) -> list[Step]:
        """A fresh map holds zeroes (arrays) or nothing: write only the entries that differ from that."""
        if spec.type in ARRAY_TYPES:
            entries = {k: v for k, v in spec.entries.items() if v.count(0) != len(v)}
        else:
            entries = spec.entries
        return [WriteEntries(spec.name, pin, entries)] if entries else []

    def _build_aside(self, spec: InnerMapSpec, want: MapDef) -> None:
        pin = staging_pin(spec.name)
        self.instance[spec.name] = pin
        self.superseded.add(spec.name)
        self.build_aside += [CreateMap(want, pin), *self._fill(spec, pin)]
        self.move.append(MovePin(spec.name, pin, spec.name))

    def _plan_outer(self, spec: OuterMapSpec) -> None:
        want = map_def(spec)
        template = map_def(self.config.inner_maps[spec.inner_map])
        have = self.live.get(spec.name)
        reasons = replace_reasons(want, have) if have is not None else []
        if have is not None and not reasons and have.is_outer:
            reasons = self._template_reasons(template, have)
        names_by_id = {m.id: n for n, m in self.live.items()}
        if have is None or reasons:
            pin = spec.name if have is None else staging_pin(spec.name)
            self.outer_create.append(CreateMap(want, pin, template=self.instance[spec.inner_map]))
            if spec.slots:
                self.slots.append(SetSlots(spec.name, pin, {k: self.instance[n] for k, n in spec.slots.items()}))
            if have is None:
                self.result.changes.append(MapChange(spec.name, "create", "outer", want, added=dict(spec.slots)))
            else:
                self.move.append(MovePin(spec.name, pin, spec.name))
                self.result.warnings.append(
                    f"outer map '{spec.name}' is replaced: BPF programs that already hold it keep reading the old "
                    "map until they are reloaded")
                change = MapChange(spec.name, "replace", "outer", want, reasons)
                old = {k: names_by_id.get(i, f"id {i}") for k, i in have.slots.items()} if have.is_outer else {}
                describe_entries(change, *entry_diff(dict(spec.slots), old, False), old)
                self.result.changes.append(change)
            return
        set_: dict[bytes, str] = {}
        change = MapChange(spec.name, "update", "outer", want)
        for key, name in spec.slots.items():
            held = have.slots.get(key)
            current = self.live.get(name)
            if held is None or current is None or held != current.id:
                set_[key] = self.instance[name]
                was = names_by_id.get(held, f"id {held}") if held is not None else None
                if was is None:
                    change.added[key] = name
                else:
                    change.changed[key] = (was, name)
            elif name in self.superseded:
                set_[key] = self.instance[name]  # same map by name, new instance: not a change users see
        clear = [k for k in have.slots if k not in spec.slots]
        for k in clear:
            change.removed[k] = names_by_id.get(have.slots[k], f"id {have.slots[k]}")
        if set_ or clear:
            self.slots.append(SetSlots(spec.name, spec.name, set_, clear))
        if change.added or change.changed or change.removed:
            self.result.changes.append(change)

    def _template_reasons(self, template: MapDef, have: LiveMap) -> list[str]:
        """The kernel does not report an outer map's template; the inner maps in its slots reveal it."""
        by_id = {m.id: m for m in self.live.values()}
        for inner_id in have.slots.values():
            inner = by_id.get(inner_id)
            if inner is not None:
                mismatch = template_mismatch(template, inner)
                if mismatch:
                    return [f"inner map template: {', '.join(mismatch)}"]
                return []
        return []


def make_plan(config: Config, live: LiveState) -> Plan:
    """Diff `config` against `live` into an ordered plan (see the module docstring for the order)."""
    return _Planner(config, live).plan()


def destroy_plan(live: LiveState) -> Plan:
    """The plan that empties the pin root."""
    return make_plan(Config(), live)
