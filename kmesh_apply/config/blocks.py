"""Cutting the entries of a large inner map into blocks of lines, so that a change parses
and encodes only the blocks it touched (the config cache keeps each block's digest).

Why: a map's chunk (see `chunks`) changes as a whole when one of its million entries
changes, and parsing 38 MB of YAML again costs seconds. Here the entries of a map whose
text is plain enough are cut into blocks of about BLOCK_BYTES at content-chosen lines
(a line ending in "0", so that inserting a line moves at most the blocks around it); a
block whose text (under the same map definition) is known takes its encoded entries from
the previous version of the map, and only the other blocks are parsed.

Plain enough: `entries:` is the map's last field, followed only by lines holding one
`key: value` each (no comments, blank lines or multi-line values): a map's blocks are
stored only when its lines are as many as its entries, and a parsed block must hold as
many entries as lines. Anything else is left to the whole-chunk path; a block that does
not parse, encode or check cleanly makes the load start again without blocks, so every
error is reported exactly as without them.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field

from kmesh_apply.config import codecs
from kmesh_apply.config.chunks import Chunk
from kmesh_apply.ctype import CType, records
from kmesh_apply.entries import FEW_KEYS, Entries

BLOCK_BYTES = 64 * 1024
# A block ends at the first line ending in "0" after BLOCK_BYTES, or after MAX_BLOCK_BYTES at any line.
MAX_BLOCK_BYTES = 4 * BLOCK_BYTES
_ANCHOR = re.compile(rb"0\n")
_ENTRIES_LINE = re.compile(rb"\n( +)entries:[ ]*\n")
_FIRST_ENTRY = re.compile(rb"( +)[^ #\n]")

# A cached map's blocks: (digest, entry count) in file order.
BlockList = list[tuple[bytes, int]]


class BlocksRefused(Exception):
    """A map's changed blocks did not assemble cleanly: load again without the cache, for exact errors."""


def entries_body(data: bytes, chunk: Chunk) -> tuple[int, bytes] | None:
    """Where a map chunk's entries body starts, and its indentation; None when the map has no
    `entries:` line followed by a deeper one. Whether every line holds one entry is checked per
    block: when parsed (lines = entries), and for a whole map when its blocks are stored.
    Maps of less than two blocks are left whole: cutting them would save nothing."""
    if chunk.end - chunk.start < 2 * BLOCK_BYTES:
        return None
    m = _ENTRIES_LINE.search(data, chunk.start, chunk.end)
    if m is None or not data.endswith(b"\n", chunk.start, chunk.end):
        return None
    start = m.end()
    first = _FIRST_ENTRY.match(data, start, chunk.end)
    if first is None or len(first.group(1)) <= len(m.group(1)):
        return None
    return start, first.group(1)


def cut(data: bytes, start: int, end: int) -> list[tuple[int, int]]:
    """Block bounds (byte offsets) of an entries body, each block whole lines."""
    bounds = []
    while start < end:
        at = start + BLOCK_BYTES
        if at >= end:
            bounds.append((start, end))
            break
        anchor = _ANCHOR.search(data, at, min(end, start + MAX_BLOCK_BYTES))
        stop = anchor.end() if anchor else data.find(b"\n", at, end) + 1 or end
        bounds.append((start, stop))
        start = stop
    return bounds


def block_digests(salt: bytes, data: bytes, chunk: Chunk, body: int) -> list[tuple[bytes, int, int]]:
    """(digest, start, end) of each block: its text under the map's definition text (and `salt`)."""
    base = hashlib.sha256(salt)
    base.update(data[chunk.start:body])
    out = []
    view = memoryview(data)
    for s, e in cut(data, body, chunk.end):
        h = base.copy()
        h.update(view[s:e])
        out.append((h.digest()[:16], s, e))
    return out


@dataclass
class Partial:
    """A changed map assembled from blocks: its previous entries and blocks, and its new blocks
    as (digest, text), the text empty for a block the previous version holds; the new blocks'
    entry counts are filled in by `assemble`."""

    previous: tuple[int, int, bytes, bytes]
    previous_blocks: BlockList
    blocks: list[tuple[bytes, bytes]]
    counts: BlockList = field(default_factory=list)

    def assemble(self, key: CType, value: CType, max_entries: int) -> Entries:
        """The map's entries: known blocks sliced from the previous entries, the others parsed and
        encoded; raises BlocksRefused on anything a full parse should report."""
        import yaml_rs

        old = Entries(*self.previous)
        if (old.key_size, old.value_size) != (key.size, value.size):
            raise BlocksRefused
        known: dict[bytes, tuple[int, int]] = {}
        at = 0
        for digest, n in self.previous_blocks:
            known.setdefault(digest, (at, n))
            at += n
        if at != len(old) or len({d for d, _ in self.blocks}) != len(self.blocks):
            raise BlocksRefused  # a stale block list, or the same block twice (repeated keys)
        ks, vs = key.size, value.size
        key_parts, value_parts, parsed, parsed_values = [], [], [], []
        for digest, text in self.blocks:
            if digest in known:
                i, n = known.pop(digest)
                key_parts.append(old.keys_buffer[i * ks:(i + n) * ks])
                value_parts.append(old.values_buffer[i * vs:(i + n) * vs])
            else:
                try:
                    entries = yaml_rs.loads(text.decode(), parse_datetime=False)
                except Exception:  # noqa: BLE001  (the full parse reports it, with its line)
                    raise BlocksRefused from None
                n = text.count(b"\n")
                if not isinstance(entries, dict) or len(entries) != n:
                    raise BlocksRefused
                key_blob = codecs.encode_column(key, list(entries))
                value_blob = codecs.encode_column(value, list(entries.values()))
                if key_blob is None or value_blob is None:
                    raise BlocksRefused
                key_parts.append(key_blob)
                value_parts.append(value_blob)
                parsed.append(key_blob)
                parsed_values.append(value_blob)
            self.counts.append((digest, n))
        result = Entries(ks, vs, b"".join(key_parts), b"".join(value_parts))
        if len(result) > max_entries:
            raise BlocksRefused
        self._check_distinct(old, known, parsed, ks)
        dropped = sorted(known.values())
        result.base = (old.fingerprint(),
                       Entries(ks, vs, b"".join(parsed), b"".join(parsed_values)),
                       Entries(ks, vs, b"".join(old.keys_buffer[i * ks:(i + n) * ks] for i, n in dropped),
                               b"".join(old.values_buffer[i * vs:(i + n) * vs] for i, n in dropped)))
        return result

    @staticmethod
    def _check_distinct(old: Entries, dropped: dict[bytes, tuple[int, int]], parsed: list[bytes], ks: int) -> None:
        """Parsed keys are distinct, and none is in a kept block. Kept blocks held distinct keys
        before, as did the dropped ones, so only a parsed key that no dropped block held needs a look."""
        new = set(records(b"".join(parsed), ks))
        if len(new) != sum(len(p) // ks for p in parsed):
            raise BlocksRefused
        gone = {k for i, n in dropped.values() for k in records(old.keys_buffer[i * ks:(i + n) * ks], ks)}
        unseen = new - gone
        if len(unseen) > FEW_KEYS or any(old.find(k) is not None for k in unseen):
            raise BlocksRefused  # many added keys are left to the full parse, which checks them all
