"""What a pin root holds right now, as plain data (read by `reader`, diffed by the planner).

Keeping the live state as data, not as open map handles, is what lets the
planner stay pure and lets tests build live states by hand.
"""

from __future__ import annotations

import hashlib
from collections.abc import MutableMapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from kmesh_apply.kernel.progs import Program

# Maps built aside during an apply are pinned here until they are moved into place;
# a killed apply leaves them behind and the next run adopts or removes them.
STAGING_DIR = "_kmesh_staging"
# The tool's record of maps it replaced while loaded programs held them (see replaced.py).
REPLACED_PIN = "_kmesh_replaced"
# Outer maps cannot carry BTF, so the key type a config gave an outer map is recorded as the BTF
# key of a one-entry hash map pinned here under the outer map's name; `show` gives it back.
KEY_TYPES_DIR = "_kmesh_keys"


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

    def digest(self) -> str:
        """A fingerprint of everything a plan depends on, independent of iteration order."""
        h = hashlib.blake2b(digest_size=16)
        h.update(repr((self.id, self.type, self.key_size, self.value_size, self.max_entries, self.flags,
                       self.key_type, self.value_type, self.unreadable)).encode())
        h.update(b"".join(sorted(k + v for k, v in self.entries.items())))
        h.update(b"".join(sorted(k + i.to_bytes(4, "little") for k, i in self.slots.items())))
        return h.hexdigest()


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
    key_types: dict[str, Any] = field(default_factory=dict)  # outer map name -> key type spec (KEY_TYPES_DIR)

    def fingerprint(self) -> dict[str, str]:
        """Per-map digests, so a refused saved plan can say which map moved."""
        out = {name: m.digest() for name, m in sorted(self.maps.items())}
        for s in self.staged:
            out[s.pin] = s.live.digest()
        return out

    def names_by_id(self) -> dict[int, str]:
        return {m.id: name for name, m in self.maps.items()}
