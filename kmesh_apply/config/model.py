"""The validated configuration: what the user wants the pin root to hold.

Entries are already encoded to the exact bytes the kernel stores, so the planner
compares bytes with bytes and never needs a codec. For per-CPU maps a value is
the whole per-CPU buffer (each CPU's value padded to 8 bytes, as the kernel
lays it out for syscalls).
"""

from __future__ import annotations

from collections.abc import Mapping, MutableMapping
from dataclasses import dataclass, field
from typing import Any

from kmesh_apply.ctype import CType
from kmesh_apply.errors import KmeshError
from kmesh_apply.terminal import printable

INNER_TYPES = ("hash", "array", "lru_hash", "percpu_hash", "percpu_array", "lru_percpu_hash", "lpm_trie")
OUTER_TYPES = ("array_of_maps", "hash_of_maps")
# The seed CLI's short spellings for outer map types.
OUTER_ALIASES = {"array": "array_of_maps", "hash": "hash_of_maps"}
# How an inner map that sits in an outer slot takes a multi-entry change (issue 5):
# "swap" builds a new map aside and switches the slots at once (consistent for readers),
# "in_place" writes the live map (cheaper, readers may see a half-done change).
UPDATE_STRATEGIES = ("swap", "in_place")
# Inner map types whose every index exists (unnamed ones hold zeroes), and those with a value per CPU.
ARRAY_TYPES = ("array", "percpu_array")
PERCPU_TYPES = ("percpu_hash", "percpu_array", "lru_percpu_hash")
DEFAULT_PIN_ROOT = "/sys/fs/bpf/kmesh"
# Who owns a map's entries (contract section 9): `all` the config's entries are the whole truth,
# `listed` only the keys the config names are the tool's, `none` the entries are someone else's.
MANAGE_ENTRIES = ("all", "listed", "none")
# The sections of non-outer maps: inner maps (for outer slots) and plain maps (in no slot).
INNER_SECTION, PLAIN_SECTION = "inner_maps", "maps"


# A map at or above this fill (entries / max_entries) is nearly full: plan warns, show --usage marks it,
# and examples/monitoring alerts on it.
NEARLY_FULL = 0.9
# Map types whose every index exists from creation: an update never fails for want of room, so they
# cannot fill up (Kmesh's maglev inner map is a one-entry array by design) and are never warned of.
INDEXED_TYPES = ("array", "percpu_array", "array_of_maps", "prog_array", "perf_event_array", "cgroup_array",
                 "devmap", "cpumap", "xskmap", "sockmap", "reuseport_sockarray")
# Map types whose max_entries is no count of entries: bytes or pages (ring buffers, arenas), or 0
# (storage maps, which hold one value per socket, file, task or cgroup).
UNCOUNTED_TYPES = ("ringbuf", "user_ringbuf", "arena", "sk_storage", "inode_storage", "task_storage", "cgrp_storage",
                   "cgroup_storage", "percpu_cgroup_storage")


def can_fill(type_: str) -> bool:
    """Whether inserts into a map of this type fail (LRU maps: evict) once it holds max_entries entries."""
    return type_ not in INDEXED_TYPES and type_ not in UNCOUNTED_TYPES


def used_entries(type_: str, entries: Mapping[bytes, bytes]) -> int:
    """Entries a map holds. Every index of an array exists, so an array counts the indexes holding
    a non-zero value (the config's rule for unnamed indexes)."""
    if type_ in ARRAY_TYPES:
        return sum(1 for v in entries.values() if v.count(0) != len(v))
    return len(entries)


@dataclass(frozen=True)
class Location:
    file: str
    line: int

    def __str__(self) -> str:
        return f"{self.file}:{self.line}"


@dataclass(frozen=True)
class Management:
    """What a map's declaration says about who owns the map and its entries (`adopt:`, `manage_entries:`)."""

    adopt: bool = False  # take over a map pinned under this name by someone else
    entries: str = "all"  # one of MANAGE_ENTRIES
    # Keys whose entries must not be there (`listed` maps: what the synchroniser was told to delete).
    absent: frozenset[bytes] = frozenset()

    @property
    def all_entries(self) -> bool:
        return self.entries == "all"


@dataclass(frozen=True)
class MigrateSpec:
    """`migrate:` of a map (contract section 10): how its live entries reach a new layout or name.

    `source`: the map's previous name in the pin root (`from:`, Terraform's moved block); `key` and
    `value`: the old types, for a live map that carries no BTF and has no layout record (from the
    files under `migrate.btf`); `defaults` (new field path -> value) and `renamed` (new path -> old
    path) as convert.conversion takes them."""

    source: str | None = None
    key: CType | None = None
    value: CType | None = None
    defaults: Mapping[str, Any] = field(default_factory=dict)
    renamed: Mapping[str, str] = field(default_factory=dict)


@dataclass
class InnerMapSpec:
    """A map that is not an outer map: an inner map (`inner_maps:`) or a plain map (`maps:`); both
    plan alike, `section` says where it was declared."""

    name: str
    type: str
    key: CType
    value: CType
    max_entries: int
    flags: tuple[str, ...]
    entries: MutableMapping[bytes, bytes]  # packed `Entries` when loaded; any mapping plans the same
    location: Location
    update: str = "swap"
    section: str = INNER_SECTION
    manage: Management = field(default_factory=Management)
    migrate: MigrateSpec | None = None

    @property
    def key_size(self) -> int:
        return self.key.size

    @property
    def value_size(self) -> int:
        return self.value.size


@dataclass
class OuterMapSpec:
    name: str
    type: str
    key: CType
    max_entries: int
    flags: tuple[str, ...]
    inner_map: str
    slots: dict[bytes, str]
    location: Location
    manage: Management = field(default_factory=Management)

    @property
    def key_size(self) -> int:
        return self.key.size

    value_size = 4  # an outer slot holds a map fd on update, a map ID on lookup


@dataclass
class Config:
    # Every map that is not an outer map, from `inner_maps:` and `maps:` (one namespace; see `section`).
    inner_maps: dict[str, InnerMapSpec] = field(default_factory=dict)
    outer_maps: dict[str, OuterMapSpec] = field(default_factory=dict)
    pin_root: str | None = None
    files: tuple[str, ...] = ()


def pin_root_problem(path: str) -> str | None:
    """Why `path` cannot be a pin root as written, or None. A NUL cannot be in a path at all; a control
    character or line break in one is a trick, not a directory name (it would rewrite terminals and
    split log lines)."""
    if "\0" in path:
        return f"pin root {printable(path)} contains a NUL byte, which no path can hold"
    if not path.isprintable():
        return f"pin root {printable(path)} contains control characters or line breaks: give a plain path"
    return None


def resolve_pin_root(flag: str | None, config: Config | None = None) -> str:
    """The pin root in the contract's order: --pin-root, then $KMESH_PIN_ROOT, then the file, then the default."""
    import os

    root = flag or os.environ.get("KMESH_PIN_ROOT") or (config.pin_root if config else None) or DEFAULT_PIN_ROOT
    problem = pin_root_problem(root)
    if problem is not None:
        raise KmeshError(problem)
    return root
