"""What a pin root holds right now, as plain data (read by `reader`, diffed by the planner).

Keeping the live state as data, not as open map handles, is what lets the
planner stay pure and lets tests build live states by hand.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, MutableMapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, NamedTuple, Optional

if TYPE_CHECKING:
    from kmesh_apply.kernel.progs import Program

# Maps built aside during an apply are pinned here until they are moved into place;
# a killed apply leaves them behind and the next run adopts or removes them.
STAGING_DIR = "_kmesh_staging"
# The tool's record of maps it replaced while loaded programs held them (see replaced.py).
REPLACED_PIN = "_kmesh_replaced"
# The tool's record of the maps it manages (created or adopted), see pinroot/records.py.
OWNED_PIN = "_kmesh_owned"
# The layout the tool applied to managed maps that cannot carry it as BTF (outer maps, adopted maps
# without BTF): one small map per described map, pinned here under its kernel ID (pinroot/records.py).
LAYOUTS_DIR = "_kmesh_layouts"
# Before layout records, the key type of an outer map was recorded as the BTF key of a one-entry hash
# map pinned here under the outer map's name; still read, and removed with its map.
KEY_TYPES_DIR = "_kmesh_keys"
# The tool's records (pinroot/records.py, replaced.py): small maps of its own, never listed as the pin root's maps.
RECORD_NAMES = (REPLACED_PIN, OWNED_PIN, LAYOUTS_DIR, KEY_TYPES_DIR)
# Names in a pin root that belong to the tool itself: never a map of a configuration.
RESERVED_NAMES = (STAGING_DIR, *RECORD_NAMES)
# The directories a pin root may hold: the tool's own (everything else in it is a pin).
TOOL_DIRS = (STAGING_DIR, LAYOUTS_DIR, KEY_TYPES_DIR)
# What the tool remembers having done to a map (`Owned.origin`).
CREATED, ADOPTED = "created", "adopted"
MAX_NAME_BYTES = 255  # a bpffs entry name, as any Linux file name


def name_problem(name: object) -> str | None:
    """Why `name` cannot be an entry of a pin root (None: it can): a plain file name, no path."""
    if not isinstance(name, str) or not name:
        return "it is not a name"
    if "/" in name or "\0" in name or name in (".", ".."):
        return "it is not a plain name (no '/', NUL, '.' or '..')"
    if len(name) * 4 > MAX_NAME_BYTES and len(name.encode(errors="surrogateescape")) > MAX_NAME_BYTES:
        return f"it is longer than {MAX_NAME_BYTES} bytes"
    return None


def step_pin_problem(pin: object) -> str | None:
    """Why a plan may not touch `pin` (None: it may): only a map's name in the pin root, or that name
    in the staging directory, where maps are built aside; never a path, never the tool's records."""
    if not isinstance(pin, str):
        return "it is not a name"
    folder, _, name = pin.rpartition("/")
    if folder not in ("", STAGING_DIR):
        return f"it is not a name in the pin root (or in {STAGING_DIR}/)"
    problem = name_problem(name)
    if problem is None and not folder and name in RESERVED_NAMES:
        problem = "the name is reserved for kmesh-apply's own records"
    return problem


# Which entries of a map a plan depends on: None for all of them, else the keys it looks at (a
# `manage_entries: listed` map's listed keys; none for `none` maps and unmanaged ones).
EntryScope = Optional[frozenset[bytes]]
ALL_ENTRIES: EntryScope = None
NO_ENTRIES: EntryScope = frozenset()


@dataclass
class LiveMap:
    """One pinned map. `key_type`/`value_type` are type specs recovered from BTF (None if absent)."""

    name: str
    id: int
    type: str
    key_size: int
    value_size: int
    max_entries: int
    flags: tuple[str, ...]
    key_type: Any = None
    value_type: Any = None
    entries: MutableMapping[bytes, bytes] = field(default_factory=dict)  # packed (`Entries`) when read from the kernel
    slots: dict[bytes, int] = field(default_factory=dict)
    memlock: int | None = None  # bytes the kernel charges (fdinfo), when read with memlock=True
    # Why user space cannot read the map's entries (a ringbuf, a queue, a map of sockets...): its
    # `entries` are then unknown, not absent. '' when they were read.
    unreadable: str = ""

    @property
    def is_outer(self) -> bool:
        return self.type in ("array_of_maps", "hash_of_maps")

    def digest(self, scope: EntryScope = None) -> str:
        """A fingerprint of everything a plan depends on, independent of iteration order: the map,
        and its entries or slots within `scope` (None: all; else only these keys)."""
        h = hashlib.blake2b(digest_size=16)
        h.update(repr((self.id, self.type, self.key_size, self.value_size, self.max_entries, self.flags,
                       self.key_type, self.value_type, self.unreadable)).encode())
        entries, slots = self.in_scope(scope)
        h.update(b"".join(sorted(k + v for k, v in entries.items())))
        h.update(b"".join(sorted(k + i.to_bytes(4, "little") for k, i in slots.items())))
        return h.hexdigest()

    def in_scope(self, scope: EntryScope) -> tuple[Mapping[bytes, bytes], Mapping[bytes, int]]:
        """The entries and slots whose keys are in `scope` (None: all of them)."""
        if scope is None:
            return self.entries, self.slots
        return ({k: self.entries[k] for k in scope if k in self.entries},
                {k: self.slots[k] for k in scope if k in self.slots})

    def same_as(self, other: LiveMap, scope: EntryScope = None) -> bool:
        """Equal as far as a plan with this entry scope is concerned."""
        if scope is None:
            return self == other
        return (self.metadata() == other.metadata() and self.in_scope(scope) == other.in_scope(scope))

    def metadata(self) -> tuple[Any, ...]:
        return (self.name, self.id, self.type, self.key_size, self.value_size, self.max_entries, self.flags,
                self.key_type, self.value_type, self.unreadable)


class Owned(NamedTuple):
    """The ownership record of one managed map: how the tool came to manage it, and the kernel IDs
    its pin may hold (the map, and while an apply moves a new map into its place, that one too).
    A pin holding any other map is someone else's, whatever its name. (A tuple: a reader of
    5,000 maps makes 5,000 of them.)"""

    origin: str  # CREATED | ADOPTED
    ids: tuple[int, ...]


@dataclass(frozen=True)
class Layout:
    """The layout the tool applied to a map that does not carry it as BTF (type specs; None: not
    recorded), and for an outer map the name of the inner map it was created with as template."""

    key_type: Any = None
    value_type: Any = None
    template: str | None = None


@dataclass
class StagedMap:
    """A map left in the staging directory by an interrupted apply."""

    pin: str  # path relative to the pin root
    name: str  # the map it was being built for
    live: LiveMap


@dataclass
class LiveState:
    pin_root: str
    maps: dict[str, LiveMap] = field(default_factory=dict)
    staged: list[StagedMap] = field(default_factory=list)
    # Loaded programs holding a map, by map ID: the maps above, staged ones and replaced ones.
    holders: dict[int, tuple[Program, ...]] = field(default_factory=dict)
    # Maps that pins of this root replaced while programs held them: map ID -> the pin's name.
    replaced: dict[int, str] = field(default_factory=dict)
    # Maps pinned here that the tool does not manage (someone else's): read, never changed.
    unmanaged: dict[str, LiveMap] = field(default_factory=dict)
    # The ownership record (name -> Owned); None when the pin root has none yet.
    owned: dict[str, Owned] | None = None
    # No ownership record, but other records of the tool: made by an earlier version, wholly managed.
    legacy: bool = False
    # Names the ownership record holds that pin no managed map any more: pruned by the next apply.
    stale: set[str] = field(default_factory=set)
    # Recorded layouts of managed maps, by name (outer maps' templates, types of maps without BTF).
    layouts: dict[str, Layout] = field(default_factory=dict)
    # Bloom filter name -> the values of the config it may hold (filled by `resolve.prepare` for a plan:
    # a bloom filter can only be asked about values, not listed).
    probed: dict[str, set[bytes]] = field(default_factory=dict)

    def fingerprint(self, scopes: Mapping[str, EntryScope] | None = None) -> dict[str, str]:
        """Per-map digests, so a refused saved plan can say which map moved. `scopes`: the entries a
        plan depended on, per map (unmanaged maps: none of them, unless the plan adopts them)."""
        return {name: m.digest(scope) for name, (m, scope) in self.scoped(scopes).items()}

    def scoped(self, scopes: Mapping[str, EntryScope] | None = None) -> dict[str, tuple[LiveMap, EntryScope]]:
        """Every map a plan depends on (managed, staged, unmanaged: an unmanaged one under its name
        and a mark, so a change of owner is a change), each with the entries that matter."""
        scopes = scopes or {}
        out = {name: (m, scopes.get(name, ALL_ENTRIES)) for name, m in sorted(self.maps.items())}
        for s in self.staged:
            out[s.pin] = (s.live, ALL_ENTRIES)
        for name, m in sorted(self.unmanaged.items()):
            out[name if name in scopes else f"{name} (unmanaged)"] = (m, scopes.get(name, NO_ENTRIES))
        return out

    def names_by_id(self) -> dict[int, str]:
        return {m.id: name for name, m in self.maps.items()}
