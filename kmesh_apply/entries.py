"""A map's entries as batch syscalls take and return them: keys and values packed in two buffers.

Why: a map can hold millions of entries, and a dict of bytes -> bytes costs about 100 bytes
of Python objects per entry (B's million 12-byte entries took 440 MB). Here the config
encodes into the buffers, the reader copies batch lookups into them, the executor hands
them to the kernel as they are, and the planner compares them; an index from key to
position is built only when someone asks for one entry by key.

`Entries` is a `MutableMapping[bytes, bytes]`, so code that only reads or writes a few
entries (show, render, the synchroniser's cache) treats it as a dict. Order is insertion
order, as for a dict; deleting an entry moves the last one into its place.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import ItemsView, Iterator, Mapping, MutableMapping, ValuesView
from itertools import filterfalse, islice
from typing import Any, NamedTuple

from kmesh_apply.ctype import copy_runs, records


class Base(NamedTuple):
    """What entries assembled from blocks are relative to (config.blocks): the entries of the map's
    previous version, known by their fingerprint, and the records added to them (the parsed blocks,
    at `added_at`: (position, count) of each run in the new entries) and taken out of them."""

    fingerprint: bytes
    added: Entries
    taken: Entries
    added_at: tuple[tuple[int, int], ...] | None = None


class Entries(MutableMapping[bytes, bytes]):
    """Fixed-size records: `keys` holds len(self) keys of `key_size` bytes, `values` as many values."""

    __slots__ = ("key_size", "value_size", "keys_buffer", "values_buffer", "_index", "base", "_fingerprint", "_hash_sum")

    def __init__(self, key_size: int, value_size: int, keys: bytes | bytearray = b"", values: bytes | bytearray = b""):
        if key_size <= 0 or value_size <= 0 or len(keys) % key_size or len(keys) // key_size * value_size != len(values):
            raise ValueError(f"{len(keys)} key bytes and {len(values)} value bytes are not whole records "
                             f"of {key_size} + {value_size} bytes")
        self.key_size, self.value_size = key_size, value_size
        self.keys_buffer, self.values_buffer = keys, values
        self._index: dict[bytes, int] | None = None  # key -> position, built on the first lookup by key
        # What these entries are relative to other entries (config.blocks): the other entries'
        # fingerprint, the records added here and the records taken out; None once written to.
        self.base: Base | None = None
        self._fingerprint: bytes | None = None  # both worked out once, forgotten on a write
        self._hash_sum: int | None = None

    @classmethod
    def of(cls, entries: Mapping[bytes, bytes], key_size: int, value_size: int) -> Entries:
        """Packed copies of any mapping's entries (an `Entries` of the same sizes is returned as is)."""
        if isinstance(entries, Entries) and (entries.key_size, entries.value_size) == (key_size, value_size):
            return entries
        return cls(key_size, value_size, b"".join(entries.keys()), b"".join(entries.values()))

    def fingerprint(self) -> bytes:
        """SHA-256 of the sizes and the records in their order (16 bytes): equal fingerprints mean
        equal entries, so a comparison of two large maps can be remembered (see the planner)."""
        if self._fingerprint is None:
            h = hashlib.sha256(b"%d,%d\0" % (self.key_size, self.value_size))
            h.update(self.keys_buffer)
            h.update(self.values_buffer)
            self._fingerprint = h.digest()[:16]
        return self._fingerprint

    def hash_sum(self) -> int:
        """The sum of the records' hashes, which does not depend on their order (the kernel returns a
        hash map's entries in bucket order, the config gives them in file order).

        Python hashes bytes with SipHash under a key drawn at random for each process, so two
        different sets of records have the same sum with a chance of about 2**-64, the same for
        every pair of maps and not something the map's contents can aim at (unless PYTHONHASHSEED
        fixes the key: then `diff` and `holds_base` do not use it).
        """
        if self._hash_sum is None:
            self._hash_sum = sum(map(hash, records(_interleaved(self), self.key_size + self.value_size)))
        return self._hash_sum

    def remember_hash_sum(self, total: int) -> None:
        """Take `hash_sum` as worked out part by part (a whole's sum is its parts' sums added up):
        the reader's parts, summed while the kernel read the next ones."""
        self._hash_sum = total

    def _written(self) -> None:
        self.base = self._fingerprint = self._hash_sum = None

    def payload(self) -> tuple[int, int, bytes, bytes]:
        """What `Entries(*payload)` rebuilds, as plain values (marshal, for the config cache)."""
        return self.key_size, self.value_size, bytes(self.keys_buffer), bytes(self.values_buffer)

    # --- the Mapping protocol ---------------------------------------------------------------

    def __len__(self) -> int:
        return len(self.keys_buffer) // self.key_size

    def __iter__(self) -> Iterator[bytes]:
        return iter(records(self.keys_buffer, self.key_size))

    def _positions(self) -> dict[bytes, int]:
        if self._index is None:
            self._index = dict(zip(records(self.keys_buffer, self.key_size), range(len(self))))
        return self._index

    def find(self, key: bytes) -> bytes | None:
        """The value under `key` without building the index: a scan of the packed keys, for a few lookups."""
        i = self._scan(key)
        vs = self.value_size
        return None if i is None else bytes(self.values_buffer[i * vs:(i + 1) * vs])

    def _scan(self, key: bytes) -> int | None:
        """The position of `key`, found by scanning the packed keys (memchr speed)."""
        keys, ks = self.keys_buffer, self.key_size
        pos = keys.find(key)
        while pos >= 0 and pos % ks:  # a match that straddles two keys
            pos = keys.find(key, pos + 1)
        return None if pos < 0 else pos // ks

    def __getitem__(self, key: bytes) -> bytes:
        i = self._positions()[key]
        vs = self.value_size
        return bytes(self.values_buffer[i * vs:(i + 1) * vs])

    def __contains__(self, key: object) -> bool:
        return key in self._positions()

    def items(self) -> ItemsView[bytes, bytes]:
        return _Items(self)

    def values(self) -> ValuesView[bytes]:
        return _Values(self)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Entries) and (other.key_size, other.value_size) == (self.key_size, self.value_size):
            if self.keys_buffer == other.keys_buffer and self.values_buffer == other.values_buffer:
                return True  # the same records in the same order: no index needed
            if len(other) != len(self):
                return False
            if len(self) >= HASH_SUM_FROM and _HASH_KEY_SECRET:
                return self.hash_sum() == other.hash_sum()  # as `diff` would find them (see there)
            put, gone, _ = diff(self, other)
            return not put and not gone
        if not isinstance(other, Mapping):
            return NotImplemented
        return len(other) == len(self) and dict(self.items()) == dict(other.items())

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        shown = "".join(f", {k.hex()}: {v.hex()}" for k, v in islice(self.items(), 3))
        return f"Entries({len(self)} of {self.key_size}+{self.value_size} bytes{shown}{', ...' if len(self) > 3 else ''})"

    # --- writes (the synchroniser's cache) ---------------------------------------------------

    def _check(self, key: bytes, value: bytes | None = None) -> None:
        if len(key) != self.key_size or (value is not None and len(value) != self.value_size):
            raise ValueError(f"an entry here is a {self.key_size}-byte key and a {self.value_size}-byte value")

    def _mutable(self) -> tuple[bytearray, bytearray]:
        if not isinstance(self.keys_buffer, bytearray):
            self.keys_buffer = bytearray(self.keys_buffer)
        if not isinstance(self.values_buffer, bytearray):
            self.values_buffer = bytearray(self.values_buffer)
        return self.keys_buffer, self.values_buffer

    def update(self, other: Any = (), /, **kwargs: bytes) -> None:
        """As a dict's; a few entries written to a large map without an index are found by scanning
        (the synchroniser's cache takes one changed entry without indexing a million keys), and
        packed entries written to an empty map are taken as they are (the cache of a map just
        created and filled shares the config's buffers: a million entries cost no index or tuples)."""
        if not self and not kwargs and isinstance(other, Entries) and \
                (other.key_size, other.value_size) == (self.key_size, self.value_size):
            self.keys_buffer, self.values_buffer = bytes(other.keys_buffer), bytes(other.values_buffer)
            self._index = None
            self._written()
            return
        items = list(other.items() if isinstance(other, Mapping) else other) + list(kwargs.items())
        if self._index is not None or len(items) > FEW_KEYS:
            super().update(items)
            return
        vs = self.value_size
        for key, value in items:
            key, value = bytes(key), bytes(value)
            self._check(key, value)
            i = self._scan(key)
            keys, values = self._mutable()
            if i is None:
                keys += key
                values += value
            else:
                values[i * vs:(i + 1) * vs] = value
        if items:
            self._written()

    def __setitem__(self, key: bytes, value: bytes) -> None:
        key, value = bytes(key), bytes(value)
        self._check(key, value)
        self._written()
        index = self._positions()
        keys, values = self._mutable()
        vs = self.value_size
        i = index.get(key)
        if i is None:
            index[key] = len(self)
            keys += key
            values += value
        else:
            values[i * vs:(i + 1) * vs] = value

    def __delitem__(self, key: bytes) -> None:
        index = self._positions()
        i = index.pop(key)
        self._written()
        keys, values = self._mutable()
        ks, vs, last = self.key_size, self.value_size, len(self) - 1
        if i != last:  # the last record moves into the hole
            moved = bytes(keys[last * ks:])
            keys[i * ks:(i + 1) * ks] = moved
            values[i * vs:(i + 1) * vs] = values[last * vs:]
            index[moved] = i
        del keys[last * ks:], values[last * vs:]


class _Items(ItemsView[bytes, bytes]):
    _mapping: Entries

    def __iter__(self) -> Iterator[tuple[bytes, bytes]]:
        m = self._mapping
        return zip(records(m.keys_buffer, m.key_size), records(m.values_buffer, m.value_size))


class _Values(ValuesView[bytes]):
    _mapping: Entries

    def __iter__(self) -> Iterator[bytes]:
        m = self._mapping
        return iter(records(m.values_buffer, m.value_size))


def packed(entries: Mapping[bytes, bytes]) -> tuple[bytes | bytearray, bytes | bytearray]:
    """Keys and values concatenated, as a batch update takes them (no copy for `Entries`)."""
    if isinstance(entries, Entries):
        return entries.keys_buffer, entries.values_buffer
    return b"".join(entries), b"".join(entries.values())


def diff(desired: Entries, live: Entries) -> tuple[dict[bytes, bytes], list[bytes], dict[bytes, bytes]]:
    """What differs between two packed maps of the same sizes: the desired entries `live` lacks or
    holds differently, the live keys `desired` lacks, and the live entries that differ (the old
    values, for the plan's description).

    Two large maps of as many entries are first compared by their hash sums (`Entries.hash_sum`):
    equal, they cost no set at all. Otherwise whole records (key and value together) are compared
    as sets, built in C: no dict of a million entries, and no Python code per entry; only a
    change that replaces or drops live entries builds the second set.
    """
    if desired.keys_buffer == live.keys_buffer and desired.values_buffer == live.values_buffer:
        return {}, [], {}
    if len(desired) == len(live) <= FEW_KEYS and _as_dict(desired) == _as_dict(live):
        return {}, [], {}  # a small map in another order (Kmesh's 5,000 services): no interleaving
    size, ks = desired.key_size + desired.value_size, desired.key_size
    if len(desired) == len(live) >= HASH_SUM_FROM and _HASH_KEY_SECRET and desired.hash_sum() == live.hash_sum():
        return {}, [], {}
    live_records = set(records(_interleaved(live), size))
    wanted = _interleaved(desired)
    missing = list(filterfalse(live_records.__contains__, records(wanted, size)))
    put = {r[:ks]: r[ks:] for r in missing}
    replaced = len(live) - (len(desired) - len(missing))  # live records not desired as they are
    if not replaced:
        return put, [], {}
    if len(put) <= FEW_KEYS:  # the usual small change: are the replaced records those of put's keys?
        old = {k: v for k, v in ((k, live.find(k)) for k in put) if v is not None}
        if len(old) == replaced:
            return put, [], old
    del live_records
    desired_records = set(records(wanted, size))
    old = {r[:ks]: r[ks:] for r in filterfalse(desired_records.__contains__, records(_interleaved(live), size))}
    return put, [k for k in old if k not in put], old


# From this many records, two maps of as many entries are first compared by their records'
# hash sums (see `Entries.hash_sum`): for a million, 0.2 s per side and no set, against a 1 s set diff.
HASH_SUM_FROM = 4096
# A PYTHONHASHSEED set to a number makes the key known: then only the exact diff is trusted.
_HASH_KEY_SECRET = os.environ.get("PYTHONHASHSEED", "random") == "random"


def holds_base(desired: Entries, live: Entries) -> bool:
    """Whether `live` holds exactly the entries `desired` was made from (`desired.base`: made by
    taking records out of them and adding others), found by hash sums without comparing every
    record: the records `desired` was made from sum to its sum, minus the added, plus the taken out."""
    if desired.base is None or not _HASH_KEY_SECRET:
        return False
    added, taken = desired.base.added, desired.base.taken
    if len(live) != len(desired) - len(added) + len(taken) or len(live) < HASH_SUM_FROM:
        return False
    return live.hash_sum() == desired.hash_sum() - added.hash_sum() + taken.hash_sum()


def previous(entries: Entries) -> Entries | None:
    """The entries `entries` were made from (`entries.base`), rebuilt: its records but the runs added,
    then those taken out (None when the runs are not known). Its hash sum follows from the one of
    `entries`, when that is known, without hashing."""
    base = entries.base
    if base is None or base.added_at is None:
        return None
    ks, vs = entries.key_size, entries.value_size
    keys, values, at = [], [], 0
    for pos, n in (*base.added_at, (len(entries), 0)):
        keys.append(entries.keys_buffer[at * ks:pos * ks])
        values.append(entries.values_buffer[at * vs:pos * vs])
        at = pos + n
    keys.append(base.taken.keys_buffer)
    values.append(base.taken.values_buffer)
    out = Entries(ks, vs, b"".join(keys), b"".join(values))
    if entries._hash_sum is not None:
        out.remember_hash_sum(entries._hash_sum - base.added.hash_sum() + base.taken.hash_sum())
    return out


# Up to this many keys are looked up by scanning the packed keys (memchr speed) rather than by an index.
FEW_KEYS = 64

def _as_dict(entries: Entries) -> dict[bytes, bytes]:
    return dict(zip(records(entries.keys_buffer, entries.key_size), records(entries.values_buffer, entries.value_size)))


def _interleaved(entries: Entries) -> bytes | bytearray:
    """Each key followed by its value, by strided copies (`copy_runs`)."""
    ks, vs, n = entries.key_size, entries.value_size, len(entries)
    out = bytearray((ks + vs) * n)
    copy_runs(out, ks + vs, entries.keys_buffer, ks, ((0, 0, ks),), n)
    copy_runs(out, ks + vs, entries.values_buffer, vs, ((0, ks, vs),), n)
    return out
