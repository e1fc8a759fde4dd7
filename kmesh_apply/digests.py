"""Large maps compared with the kernel by digests summed in the kernel, instead of reading them.

A plan reading a million-entry map back costs 0.45 s of batch lookups and hashing; a digest
(kernel.digest) costs one walk in the kernel and one number. Each large hash map of a plan is
compared this way:

- The config cache records the digests of entries under a key of its own (config.cache: drawn
  once, kept in the user's own directory and nowhere else), by the entries' fingerprint. With a
  record for the desired entries, one walk under that key tells whether the map holds them, and
  nothing of the config is hashed. With a record for the version of the entries the config had
  before it changed (config.blocks: `Entries.base`), the walk can also find the map still
  holding that version: then only the changed blocks are planned, and the new version's digest
  follows from the old one and those blocks (hashed here, a few thousand records), so it is
  recorded before anything is written.
- Without a record, the walk sums under the process's own key (what `Entries.hash_sum` sums to,
  worked out on another thread) and under the cache's key at once: equal, and the cache's digest
  is recorded for next time. Both sums come from the same walk, so they describe the same entries
  even while someone writes the map.
- Anything else, and maps the kernel cannot sum (`kernel.digest.unavailable`), is read as before.

`checks` says which path each map took (`Plan.entry_checks`: `plan --json`, `plan -v`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable

from kmesh_apply.entries import Entries, previous
from kmesh_apply.kernel.digest import (Digest, DigestRefused, Key, map_digests, moved, no_key_reason, of_entries, of_records,
                                       process_key)
from kmesh_apply.kernel.maps import Map

if TYPE_CHECKING:
    from kmesh_apply.config.cache import Cache

# Map types whose plans may take a digest for their entries: hash maps read back exactly as the
# config gives them (an array's live entries hold every index: arrays are read, cheaply).
DIGEST_TYPES = ("hash", "lru_hash")
# Changed records hashed here (pure Python) to record the new version's digest; beyond this many,
# the next plan finds it by the process's key instead.
HASHED_HERE = 20_000
KERNEL_DIGEST = "kernel digest"
PREVIOUS_VERSION = "kernel digest (the previous version of its entries)"
DIFFERS = "read: the kernel's digest differs from the configuration's"


class DigestCheck:
    """The reader's `known` callback for one plan: entries the kernel's digest shows a map holds."""

    def __init__(self, cache: Cache | None, wanted: dict[str, Entries], known_equal: set[tuple[bytes, bytes]]):
        self.cache = cache
        self.wanted = wanted
        self.known_equal = known_equal  # (base, live) pairs added here when a map holds the base
        found = cache.entry_digests() if cache is not None else None
        self.key: Key | None = found[0] if found is not None else None
        self.recorded: dict[bytes, tuple[int, int]] = found[1] if found is not None else {}
        self.record: dict[bytes, tuple[int, int]] = {}
        self.checks: dict[str, str] = {}
        self.wait: Callable[[str], object] = lambda name: None  # until Python's hash sum of a map's entries is ready

    def unrecorded(self) -> dict[str, Entries]:
        """The wanted maps whose comparison needs Python's hash sum of the config's entries."""
        return {name: e for name, e in self.wanted.items() if self._recorded(e) == (None, None)}

    def _recorded(self, desired: Entries) -> tuple[Digest | None, Digest | None]:
        """The recorded digests of the desired entries and of the version before them."""
        mine = self.recorded.get(desired.fingerprint())
        base = self.recorded.get(desired.base.fingerprint) if desired.base is not None else None
        return (Digest(*mine) if mine else None), (Digest(*base) if base else None)

    def __call__(self, name: str, m: Map) -> Entries | None:
        desired = self.wanted.get(name)
        if desired is None or m.info.type not in DIGEST_TYPES:
            return None
        mine, base = self._recorded(desired)
        process = process_key()
        try:
            if mine is not None or base is not None:
                assert self.key is not None
                (found,) = map_digests(m, [self.key])
                return self._compare(name, desired, found, mine, base)
            if process is None:
                raise DigestRefused(no_key_reason())
            sums = map_digests(m, [process] + ([self.key] if self.key is not None else []))
        except DigestRefused as e:
            self.checks[name] = f"read: {e}"
            return None
        self.wait(name)
        keyed = sums[1] if len(sums) > 1 else None
        if sums[0] == of_entries(desired):
            self._keep(desired, keyed)
            self.checks[name] = KERNEL_DIGEST
            return desired
        before = previous(desired)
        if before is not None and desired.base is not None and sums[0] == of_entries(before):
            if keyed is not None:
                self.record[desired.base.fingerprint] = (keyed.entries, keyed.sum)
                self._follow(desired, keyed)
            self.checks[name] = PREVIOUS_VERSION
            return before
        self.checks[name] = DIFFERS
        return None

    def _compare(self, name: str, desired: Entries, found: Digest, mine: Digest | None,
                 base: Digest | None) -> Entries | None:
        if found == mine:
            self.checks[name] = KERNEL_DIGEST
            return desired
        before = previous(desired) if base is not None and found == base else None
        if before is None:
            self.checks[name] = DIFFERS
            return None
        assert desired.base is not None and base is not None
        self.known_equal.add((desired.base.fingerprint, before.fingerprint()))  # planned from the blocks
        self._follow(desired, base)
        self.checks[name] = PREVIOUS_VERSION
        return before

    def _keep(self, entries: Entries, digest: Digest | None) -> None:
        if digest is not None:
            self.record[entries.fingerprint()] = (digest.entries, digest.sum)

    def _follow(self, desired: Entries, base: Digest) -> None:
        """Record the desired entries' digest, worked out from their previous version's and the blocks
        that changed: it describes the config, whatever happens to the map next."""
        assert desired.base is not None and self.key is not None
        added, taken = desired.base.added, desired.base.taken
        if len(added) + len(taken) <= HASHED_HERE:
            self._keep(desired, moved(base, of_records(self.key, added), of_records(self.key, taken)))

    def save(self) -> None:
        if self.cache is not None:
            self.cache.save_digests(self.record)
