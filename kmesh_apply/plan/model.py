"""A plan is plain data: what changes per map (for people) and the ordered steps (for the executor).

Like a Terraform plan it can be rendered, saved as JSON and applied later; the
saved form carries a fingerprint of the live state it was made against so a
stale plan is refused rather than applied over someone else's change.

Map instances in steps are named by their pin path relative to the pin root:
`backends-a` is the live pin, `_kmesh_staging/backends-a` a map being built aside.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, MutableMapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import TYPE_CHECKING, Any, Union

from kmesh_apply.errors import KmeshError
from kmesh_apply.state import EntryScope, LiveState, name_problem, step_pin_problem
from kmesh_apply.wording import count, verb

if TYPE_CHECKING:
    from kmesh_apply.kernel.progs import Program

PLAN_FORMAT = 1


@dataclass(frozen=True)
class MapDef:
    """The fixed properties of a map: changing any of them means building a new map."""

    name: str
    type: str
    key_size: int
    value_size: int
    max_entries: int
    flags: tuple[str, ...]
    key_type: Any = None  # type spec (contract section 2), None when only the size is known
    value_type: Any = None
    inner_map: str | None = None  # outer maps: the template inner map's name

    @property
    def is_outer(self) -> bool:
        return self.type in ("array_of_maps", "hash_of_maps")


# ---- steps, in the order the executor performs them -------------------------------------


@dataclass
class CreateMap:
    """Create a map with `map`'s properties and pin it at `pin` (outer maps: `template` gives the inner template)."""

    map: MapDef
    pin: str
    template: str | None = None  # pin of an inner map with the template's properties
    op: str = "create"

    def describe(self) -> str:
        return f"create {self.map.type} map '{self.map.name}' at {self.pin}"


@dataclass
class WriteEntries:
    """Put and delete entries of the map pinned at `pin`, in batches."""

    map: str
    pin: str
    put: Mapping[bytes, bytes] = field(default_factory=dict)  # the config's `Entries` when a map is filled whole
    delete: list[bytes] = field(default_factory=list)
    op: str = "write"

    def describe(self) -> str:
        return f"write {len(self.put)} and delete {len(self.delete)} entries of '{self.map}' ({self.pin})"


@dataclass
class SetSlots:
    """Point slots of the outer map at `pin` to inner map pins, and clear others: one batch each."""

    map: str
    pin: str
    set: dict[bytes, str] = field(default_factory=dict)
    clear: list[bytes] = field(default_factory=list)
    op: str = "slots"

    def describe(self) -> str:
        return f"set {len(self.set)} and clear {len(self.clear)} slots of '{self.map}' ({self.pin})"


@dataclass
class MovePin:
    """Move a map built aside into place; rename(2) replaces the old pin atomically."""

    map: str
    src: str
    dst: str
    op: str = "move"

    def describe(self) -> str:
        return f"move {self.src} into place as {self.dst}"


@dataclass
class RemovePin:
    """Unpin a map; the kernel frees it once no slot or program holds it any more."""

    map: str
    pin: str
    op: str = "remove"

    def describe(self) -> str:
        return f"remove '{self.map}' ({self.pin})"


@dataclass
class RecordMap:
    """Write the tool's records about the live map at `pin` (kernel ID `id`): with `adopt`, take it
    over (it is managed from then on); with `layout`, record the layout it does not carry as BTF
    (key and value types; an outer map's template). The executor checks the pin still holds `id`."""

    map: str
    pin: str
    id: int
    adopt: bool = False
    layout: MapDef | None = None
    op: str = "record"

    def describe(self) -> str:
        what = " and ".join(w for w, on in (("adopt", self.adopt), ("record the layout of", self.layout)) if on)
        return f"{what} '{self.map}' (ID {self.id})"


@dataclass
class MigrateEntries:
    """Fill the map built aside at `pin` with every entry of the live map at `src`, converted from the
    old key and value layout to the new one (contract section 10; type specs, None for raw bytes of
    the maps' sizes), then write the configuration's own entries over them (`put`, `delete`:
    manage_entries: listed). The executor keeps what it read for the second pass (`CatchUp`)."""

    map: str
    src: str
    pin: str
    id: int  # the old map's kernel ID: the entries read under the apply's lock are its first pass
    old_key: Any
    old_value: Any
    new_key: Any
    new_value: Any
    defaults: dict[str, Any] = field(default_factory=dict)
    renamed: dict[str, str] = field(default_factory=dict)
    put: Mapping[bytes, bytes] = field(default_factory=dict)
    delete: list[bytes] = field(default_factory=list)
    op: str = "migrate"

    def describe(self) -> str:
        return f"copy the entries of '{self.src}' into {self.pin}, converted to the new layout"


@dataclass
class CatchUp:
    """The second pass of a migration, just before the new map takes the old one's place: what was
    written to `src` since the first pass (by programs, by a daemon) is converted into `pin` too."""

    map: str
    src: str
    pin: str
    op: str = "catch_up"

    def describe(self) -> str:
        return f"copy what changed in '{self.src}' since the first pass into {self.pin}"


Step = Union[CreateMap, WriteEntries, SetSlots, MovePin, RemovePin, RecordMap, MigrateEntries, CatchUp]
STEP_TYPES: dict[str, type] = {c.op: c for c in (CreateMap, WriteEntries, SetSlots, MovePin, RemovePin,  # type: ignore[attr-defined]
                                                 RecordMap, MigrateEntries, CatchUp)}


def step_problems(step: Step) -> list[str]:
    """What makes a step one no plan may hold: a pin that is not a map's name in the pin root or in
    its staging directory, or a map name that is not a plain name."""
    pins: Sequence[tuple[str, object]]
    names: list[object] = [step.map.name if isinstance(step, CreateMap) else step.map]
    if isinstance(step, CreateMap):
        pins = [("pin", step.pin)] + ([("template", step.template)] if step.template is not None else [])
    elif isinstance(step, SetSlots):
        pins = [("pin", step.pin)] + [("slot", p) for p in step.set.values()]
    elif isinstance(step, MovePin):
        pins = [("src", step.src), ("dst", step.dst)]
    elif isinstance(step, (MigrateEntries, CatchUp)):
        pins = [("src", step.src), ("pin", step.pin)]
    else:
        pins = [("pin", step.pin)]
    out = [f"map name {n!r}: {p}" for n in names if (p := name_problem(n)) is not None]
    out += [f"{what} {pin!r}: {p}" for what, pin in pins if (p := step_pin_problem(pin)) is not None]
    return out


def check_steps(steps: list[Step]) -> None:
    """Refuse (nothing done) a plan with a step `step_problems` finds fault with."""
    for i, step in enumerate(steps, 1):
        problems = step_problems(step)
        if problems:
            raise KmeshError(f"refusing the plan: step {i} ({step.op}) touches what no plan may: {'; '.join(problems)}")


# ---- per-map summary, for people and for CI --------------------------------------------


@dataclass
class Migration:
    """What a migration does to one map, for review: where its entries come from, how many, and how
    their layout changes (`layout`: as the plan says it; `diffs`: the same per key and value, as data)."""

    source: str  # the pin the entries are read from (the map's previous name, or its own)
    entries: int  # live entries converted, when the plan was made
    layout: str = ""
    diffs: list[dict[str, Any]] = field(default_factory=list)
    renamed_only: bool = False  # moved to its new name as it is: no new map


@dataclass
class MapChange:
    """What happens to one map. `action` is create | update | replace | destroy | recover | adopt
    (adopt: taken over, its entries maybe written in place; a map adopted and replaced is a
    replace with `adopted` set)."""

    name: str
    action: str
    kind: str  # "inner" | "outer" | "plain" (a map declared under `maps:`, or in no outer slot)
    definition: MapDef | None = None  # desired properties (None when destroyed)
    reasons: list[str] = field(default_factory=list)  # why replaced, or what is recovered
    added: MutableMapping[bytes, Any] = field(default_factory=dict)  # entry key -> new value (outer: inner map name)
    changed: dict[bytes, tuple[Any, Any]] = field(default_factory=dict)  # key -> (old, new)
    removed: dict[bytes, Any] = field(default_factory=dict)  # key -> old value
    swap: bool = False  # entries change by building a new map and switching slots at once
    holders: list[Program] = field(default_factory=list)  # loaded programs holding the live map
    adopted: bool = False  # this plan takes the map over from whoever pinned it
    manage_entries: str = "all"  # entries the config does not name are left alone unless "all"
    migration: Migration | None = None  # action "migrate" or "rename": where the entries come from
    # A replaced map's live properties: its old entries (removed, and the old side of changed) are read
    # with these, not with `definition` (a key of u32 is no u64).
    old: MapDef | None = None


@dataclass(frozen=True)
class Unmanaged:
    """A map pinned in the pin root that the tool does not manage: listed, never changed."""

    name: str
    type: str
    id: int

    def describe(self) -> str:
        return f"{self.name} ({self.type}, ID {self.id})"


@dataclass
class HeldReplaced:
    """A map this pin root replaced or destroyed, still held by loaded programs: drift until they let go."""

    name: str  # the pin it was replaced at, or removed from
    id: int  # its kernel ID
    programs: list[Program] = field(default_factory=list)
    destroyed: bool = False  # nothing is pinned under its name now

    def describe(self) -> str:
        return (f"the {'destroyed' if self.destroyed else 'replaced'} map '{self.name}' (ID {self.id}) is still held by "
                f"{', '.join(map(str, self.programs))}")


@dataclass
class Plan:
    pin_root: str
    changes: list[MapChange] = field(default_factory=list)
    steps: list[Step] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    held_replaced: list[HeldReplaced] = field(default_factory=list)
    unmanaged: list[Unmanaged] = field(default_factory=list)
    kept: list[str] = field(default_factory=list)  # declared maps the plan leaves as they are (for review)
    # The entries the plan depends on, for maps where that is not all of them (`manage_entries:
    # listed` or `none`, adopted maps): a change elsewhere in such a map does not make it stale.
    scopes: dict[str, EntryScope] = field(default_factory=dict)
    # What the plan was made from: the live state itself while in memory, its digests once saved.
    base: LiveState | None = field(default=None, repr=False, compare=False)
    saved_fingerprint: dict[str, str] = field(default_factory=dict, repr=False)
    # Fingerprints of (desired, live) entries of large maps this plan found equal, to be remembered.
    verified: set[tuple[bytes, bytes]] = field(default_factory=set, repr=False, compare=False)
    # How the entries of large maps were compared with the kernel's: map name -> "kernel digest"
    # (summed in the kernel, nothing copied out) or "read: <why>" (`plan -v`, `plan --json`).
    entry_checks: dict[str, str] = field(default_factory=dict, repr=False, compare=False)

    def fingerprint(self) -> dict[str, str]:
        return self.base.fingerprint(self.scopes) if self.base is not None else self.saved_fingerprint

    def moved_since(self, now: LiveState) -> list[str]:
        """What changed in the pin root since the plan was made (empty: the plan still applies)."""
        then: dict[str, Any]
        current: dict[str, Any]
        if self.base is not None:  # compare the data itself: cheaper than digests of a million entries
            then, current = self.base.scoped(self.scopes), now.scoped(self.scopes)
            changed = [n for n in then if n in current and not then[n][0].same_as(current[n][0], then[n][1])]
        else:
            then, current = self.saved_fingerprint, now.fingerprint(self.scopes)
            changed = [n for n in then if n in current and then[n] != current[n]]
        return ([f"map '{n}' appeared" for n in current if n not in then]
                + [f"map '{n}' disappeared" for n in then if n not in current]
                + [f"map '{n}' changed" for n in changed])

    def sparing(self, names: Collection[str]) -> "Plan":
        """This plan without destroying `names` (maps the watcher's destroy guard keeps for now)."""
        return replace(self, changes=[c for c in self.changes if c.action != "destroy" or c.name not in names],
                       steps=[s for s in self.steps if not (isinstance(s, RemovePin) and s.pin in names)])

    @property
    def has_changes(self) -> bool:
        return bool(self.steps)

    @property
    def drift(self) -> bool:
        """The pin root differs from what it should be: steps to apply, or programs still on replaced maps
        (which no apply can fix: `plan --detailed-exitcode` exits 2 until they are reloaded)."""
        return self.has_changes or bool(self.held_replaced)

    def displaced(self, live: LiveState) -> dict[int, str]:
        """The live maps this plan moves another map over (replaced, swapped or migrated) or unpins
        (destroyed), by kernel ID: a program holding one goes on reading it. A map renamed first
        (`migrate.from`) is found under its old name."""
        pinned = {**live.unmanaged, **live.maps}  # an adopted map is still unmanaged in the state the plan was made from
        was = {s.dst: s.src for s in self.steps if isinstance(s, MovePin) and s.src in pinned}  # renames
        out = {}
        for s in self.steps:
            if isinstance(s, MovePin) and s.src not in pinned:
                old = was.get(s.dst, s.dst)
                if old in pinned:
                    out[pinned[old].id] = s.dst
        out.update((live.maps[s.pin].id, s.pin) for s in self.steps if isinstance(s, RemovePin) and s.pin in live.maps)
        return out

    @property
    def counts(self) -> dict[str, int]:
        """Terraform's counting: a replaced map is one created and one destroyed."""
        c = {"adopt": 0, "migrate": 0, "rename": 0, "create": 0, "update": 0, "destroy": 0}
        for ch in self.changes:
            if ch.adopted:
                c["adopt"] += 1
            if ch.action in ("migrate", "rename"):
                c[ch.action] += 1
            elif ch.action == "replace":
                c["create"] += 1
                c["destroy"] += 1
            elif ch.action in c and ch.action != "adopt":
                c[ch.action] += 1
            elif ch.action == "recover":
                c["update"] += 1
        return c

    def summary(self) -> str:
        if not self.has_changes:
            if self.held_replaced:
                n = len(self.held_replaced)
                what = " or ".join(sorted({"destroyed" if h.destroyed else "replaced" for h in self.held_replaced},
                                          reverse=True))
                return (f"No changes to apply, but {count(n, what + ' map')} {verb(n, 'is', 'are')} still held by "
                        "loaded programs: reload or unload them.")
            return "No changes. The pin root matches the configuration."
        c = self.counts
        first = "".join(f"{c[k]} to {k}, " for k in ("adopt", "migrate", "rename") if c[k])
        return f"Plan: {first}{c['create']} to create, {c['update']} to update, {c['destroy']} to destroy."

    # ---- saving (bytes as hex; plan/saved.py signs, reads back and checks it) -----------

    def to_saved(self) -> dict[str, Any]:
        return {
            "format": PLAN_FORMAT,
            "pin_root": self.pin_root,
            "fingerprint": self.fingerprint(),
            "warnings": self.warnings,
            "held_replaced": [asdict(h) for h in self.held_replaced],
            "unmanaged": [asdict(u) for u in self.unmanaged],
            "kept": self.kept,
            "scopes": {name: None if scope is None else [k.hex() for k in sorted(scope)] for name, scope in self.scopes.items()},
            "changes": [_hexify(asdict(c)) for c in self.changes],
            "steps": [_hexify(asdict(s)) for s in self.steps],
        }


# Bytes become {"hex": "..."} so a saved plan is plain JSON; dict keys that are bytes get a "0x" prefix.
def _hexify(obj: Any) -> Any:
    if isinstance(obj, bytes):
        return {"hex": obj.hex()}
    if isinstance(obj, Mapping):  # a dict, or packed `Entries`
        return {("0x" + k.hex() if isinstance(k, bytes) else k): _hexify(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_hexify(v) for v in obj]
    return obj
