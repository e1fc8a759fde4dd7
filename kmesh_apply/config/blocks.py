"""Cutting the entries of a large inner map into blocks of lines, so that a change parses
and encodes only the blocks it touched (the config cache keeps each block's digest).

Why: a map's chunk (see `chunks`) changes as a whole when one of its million entries
changes, and parsing 38 MB of YAML again costs seconds. Here the entries of a map whose
text is plain enough are cut into blocks of about BLOCK_BYTES at content-chosen lines
(a line ending in "0", so that inserting a line moves at most the blocks around it); a
block whose text (under the same map definition) is known takes its encoded entries from
the previous version of the map, and only the other blocks are parsed. A map seen for the
first time parses all its blocks, one at a time, so that its entries exist only packed
(a million entries as one parsed dict took 150 MB), and a block of plain integer lines
is read as JSON by orjson (`_integer_lines`), three times faster than by yaml-rs.

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
import sys
from dataclasses import dataclass, field
from typing import Any

from kmesh_apply.config import codecs
from kmesh_apply.config.chunks import Chunk
from kmesh_apply.ctype import CType, records
from kmesh_apply.entries import FEW_KEYS, Base, Entries

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
    """A changed map assembled from blocks of the file's bytes `data`, each (digest, start, end):
    a block the previous version of the map held (`previous` entries, cut into
    `previous_blocks`) is sliced from it, the others are parsed. A map seen for the first time
    (`previous` None) parses every block, one at a time, so that a million entries never
    exist as a dict. `counts` (digest, entries) is filled in by `assemble`."""

    previous: tuple[int, int, bytes, bytes] | None
    previous_blocks: BlockList
    data: bytes | None
    blocks: list[tuple[bytes, int, int]]
    indent: bytes  # every entry line's indentation
    counts: BlockList = field(default_factory=list)

    def assemble(self, key: CType, value: CType, max_entries: int) -> Entries:
        """The map's entries: known blocks sliced from the previous entries, the others parsed and
        encoded; raises BlocksRefused on anything a full parse should report."""
        old = Entries(*self.previous) if self.previous is not None else Entries(key.size, value.size)
        if (old.key_size, old.value_size) != (key.size, value.size) or self.data is None:
            raise BlocksRefused
        known: dict[bytes, tuple[int, int]] = {}
        at = 0
        for digest, n in self.previous_blocks:
            known.setdefault(digest, (at, n))
            at += n
        if at != len(old) or len({d for d, _, _ in self.blocks}) != len(self.blocks):
            raise BlocksRefused  # a stale block list, or the same block twice (repeated keys)
        ks, vs = key.size, value.size
        data = self.data
        key_parts, value_parts, parsed, parsed_values = [], [], [], []
        added_at, at = [], 0
        for digest, start, end in self.blocks:
            if digest in known:
                i, n = known.pop(digest)
                key_parts.append(old.keys_buffer[i * ks:(i + n) * ks])
                value_parts.append(old.values_buffer[i * vs:(i + n) * vs])
            else:
                n = data.count(b"\n", start, end)
                key_blob, value_blob = _encode_block(data[start:end], n, self.indent, key, value)
                key_parts.append(key_blob)
                value_parts.append(value_blob)
                if self.previous is not None:  # what changed, for the plan (a new map: everything)
                    parsed.append(key_blob)
                    parsed_values.append(value_blob)
                    added_at.append((at, n))
            self.counts.append((digest, n))
            at += n
        self.data = None  # the file's bytes are not needed any more (38 MB for a million entries)
        del data
        result = Entries(ks, vs, b"".join(key_parts), b"".join(value_parts))
        del key_parts, value_parts
        if len(result) > max_entries:
            raise BlocksRefused
        self._check_distinct(old, known, parsed if self.previous is not None else [bytes(result.keys_buffer)], ks)
        if self.previous is not None:
            dropped = sorted(known.values())
            result.base = Base(old.fingerprint(),
                               Entries(ks, vs, b"".join(parsed), b"".join(parsed_values)),
                               Entries(ks, vs, b"".join(old.keys_buffer[i * ks:(i + n) * ks] for i, n in dropped),
                                       b"".join(old.values_buffer[i * vs:(i + n) * vs] for i, n in dropped)),
                               tuple(added_at))
        return result

    @staticmethod
    def _check_distinct(old: Entries, dropped: dict[bytes, tuple[int, int]], parsed: list[bytes], ks: int) -> None:
        """Parsed keys are distinct, and none is in a kept block. Kept blocks held distinct keys
        before, as did the dropped ones, so only a parsed key that no dropped block held needs a look."""
        new = _key_set(parsed[0] if len(parsed) == 1 else b"".join(parsed), ks)
        if len(new) != sum(len(p) // ks for p in parsed):
            raise BlocksRefused
        if not len(old):
            return
        gone: set[Any] = set()
        for i, n in dropped.values():
            gone |= _key_set(old.keys_buffer[i * ks:(i + n) * ks], ks)
        unseen = new - gone
        if len(unseen) > FEW_KEYS or any(old.find(_key_bytes(k, ks)) is not None for k in unseen):
            raise BlocksRefused  # many added keys are left to the full parse, which checks them all

    def parse_whole(self) -> Any:
        """The entries as the YAML parser reads them, all blocks at once, for the map types whose
        checks need them as values (arrays, per-CPU maps). A body that is not plain YAML is
        refused (the full parse reports it, with its line)."""
        import yaml_rs

        if self.data is None or not self.blocks:
            raise BlocksRefused
        try:
            entries = yaml_rs.loads(self.data[self.blocks[0][1]:self.blocks[-1][2]].decode(), parse_datetime=False)
        except Exception:  # noqa: BLE001  (the full parse reports it, with its line)
            raise BlocksRefused from None
        self.data = None
        return entries


# Keys of these sizes are compared as the unsigned integers they read as (a third faster than bytes objects).
_INT_CODES = {1: "B", 2: "H", 4: "I", 8: "Q"}


def _key_set(keys: bytes | bytearray, ks: int) -> set[Any]:
    """The distinct keys of a packed buffer, as integers or bytes (see `_key_bytes`)."""
    code = _INT_CODES.get(ks)
    return set(memoryview(keys).cast(code)) if code else set(records(keys, ks))  # type: ignore[call-overload]


def _key_bytes(key: Any, ks: int) -> bytes:
    return key.to_bytes(ks, sys.byteorder) if isinstance(key, int) else key


# What `_integer_lines` takes out of a line before it looks at what is left (a colon and a line end).
_INT_LINE_BYTES = b"0123456789- "


def _encode_block(text: bytes, n: int, indent: bytes, key: CType, value: CType) -> tuple[bytes, bytes]:
    """A block's keys and values, encoded; BlocksRefused unless it holds `n` entries, one a line at
    `indent` (parsed alone, a block at another indentation would read as the whole map does not),
    that encode cleanly."""
    keys: list[Any]
    values: list[Any]
    numbers = _integer_lines(text, n, indent)
    if numbers is not None:
        keys, values = numbers
    else:
        import yaml_rs

        if not _at_indent(text, n, indent):
            raise BlocksRefused
        try:
            entries = yaml_rs.loads(text.decode(), parse_datetime=False)
        except Exception:  # noqa: BLE001  (the full parse reports it, with its line)
            raise BlocksRefused from None
        if not isinstance(entries, dict) or len(entries) != n:
            raise BlocksRefused
        keys, values = list(entries), list(entries.values())
    key_blob = codecs.encode_column(key, keys)
    value_blob = codecs.encode_column(value, values)
    if key_blob is None or value_blob is None:
        raise BlocksRefused
    return key_blob, value_blob


def _at_indent(text: bytes, n: int, indent: bytes, deeper_checked: bool = False) -> bool:
    """Whether each of the block's `n` lines starts at exactly `indent` (`deeper_checked`: only
    whether at least, when the caller knows no line starts deeper)."""
    return bool(n) and text.startswith(indent) and text.count(b"\n" + indent) == n - 1 and \
        (deeper_checked or not (text.startswith(indent + b" ") or b"\n" + indent + b" " in text))


def _integer_lines(text: bytes, n: int, indent: bytes) -> tuple[list[int], list[int]] | None:
    """The keys and values of a block of `n` lines that each hold `<indent>INTEGER: INTEGER` in
    decimal, read without a YAML parser (3x faster), else None.

    Such a line means the same in YAML and, with its colon and line end as commas, in JSON: a
    JSON integer is a YAML 1.2 integer of the same value. The checks make sure nothing else gets
    here: besides digits, '-' and spaces, each line holds one colon and its line end; as many
    spaces as the indentation and the ': ' take, every line indented at least as much (so no
    line is indented deeper, and each colon is followed by the line's one other space); and
    JSON's own grammar refuses the rest (leading zeros, a lone '-', two numbers in a row).
    Integers beyond 64 bits, which orjson reads as floats, are left to the YAML parser.
    """
    import orjson

    if text.translate(None, _INT_LINE_BYTES) != b":\n" * n or text.count(b" ") != (len(indent) + 1) * n or \
            not _at_indent(text, n, indent, deeper_checked=True):
        return None
    commas = text.replace(b": ", b",")
    if b":" in commas:  # a colon without its space
        return None
    try:
        numbers = orjson.loads(b"[" + commas.replace(b"\n", b",")[:-1] + b"]")
    except orjson.JSONDecodeError:
        return None
    if len(numbers) != 2 * n or set(map(type, numbers)) != {int}:
        return None
    return numbers[0::2], numbers[1::2]
