"""Cutting a config file into one chunk of text per map, without parsing it.

Why: parsing is most of the cost of loading a large configuration (100,000 entries
take 0.3 s even with yaml-rs), yet between two runs usually only a few maps change.
A map's chunk is the exact text of its definition, header line included; identical
text under the same section means the same map, so a map whose chunk was validated
before can be taken from the cache (see `cache`) and only the other chunks parsed.

Only plain block-style files are cut: top-level keys at column 0, each map header
alone on its line at one indentation. Anything that could make a chunk's meaning
depend on text outside it (anchors, aliases, tags, directives, several documents,
flow style at the map level, CR line ends) makes `split` return None, and the whole
file is parsed as usual.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

SECTIONS = ("inner_maps", "maps", "outer_maps")
# The sections whose maps are taken from the cache: plain and inner maps, whose entries make up most of a file.
CACHED_SECTIONS = ("inner_maps", "maps")
# Bytes that open anchors, aliases or tags (or break lines oddly): a file that holds any of
# them anywhere, even in a comment or a string, is parsed whole rather than reasoned about.
_UNSAFE_BYTES = (b"&", b"*", b"!", b"\r", b"\t")
# Patterns start with a literal newline so that the regex engine skips ahead between lines.
_TOP_LINE = re.compile(rb"\n([^ #\n][^\n]*)")
_FIRST_LINE = re.compile(rb"([^ #\n][^\n]*)")
# A top-level key with nothing after it, a plain scalar, or a quoted one closed on the same line.
_TOP_KEY = re.compile(rb"""([A-Za-z_][A-Za-z0-9_]*):(?:[ ]+(?:[^ #{\[|>'"].*|"[^"\\]*"[ ]*|'[^']*'[ ]*)?)?(?:[ ]+#.*)?""")
_SECTION_HEADER = re.compile(rb"(inner_maps|maps|outer_maps):[ ]*(?:#.*)?")
_CONTENT_LINE = re.compile(rb"\n( *)[^ \n#]")


@dataclass(frozen=True)
class Chunk:
    """One map's definition: `start`/`end` are byte offsets in the file."""

    section: str
    name: str
    start: int
    end: int


def split(data: bytes) -> list[Chunk] | None:
    """The map chunks of a file's bytes (UTF-8) in file order, or None when it is not plain enough to cut."""
    if _unsafe(data):
        return None
    first = _FIRST_LINE.match(data)
    # Every line at column 0 must be a plain top-level key: this also refuses documents (---, ...) and directives (%).
    tops = ([first] if first else []) + list(_TOP_LINE.finditer(data))
    seen: set[bytes] = set()
    chunks: list[Chunk] = []
    for i, top in enumerate(tops):
        line = top.group(1)
        key = _TOP_KEY.fullmatch(line)
        if key is None or key.group(1) in seen:
            return None  # not a plain top-level key, or a repeated one: the parser reports it
        seen.add(key.group(1))
        if key.group(1).decode() not in SECTIONS:
            continue
        if not _SECTION_HEADER.fullmatch(line):
            return None  # a section written in flow style or on one line
        body_end = tops[i + 1].start() + 1 if i + 1 < len(tops) else len(data)
        found = _section_chunks(data, key.group(1).decode(), top.end(), body_end)
        if found is None:
            return None
        chunks += found
    return chunks


def _unsafe(data: bytes) -> bool:
    return any(b in data for b in _UNSAFE_BYTES)  # one memchr each


def inner_chunks(data: bytes, start: int, end: int) -> list[Chunk] | None:
    """The chunks of the inner maps that `data[start:end]` holds whole (a run of them, as `split`
    cut the file before), in place: a 50 MB map is not copied to be cut again. None when the run is
    not plain enough to cut, or holds a line at column 0 (`split` would see another top-level key)."""
    if any(data.find(b, start, end) >= 0 for b in _UNSAFE_BYTES) or _TOP_LINE.search(data, start - 1, end):
        return None
    return _section_chunks(data, "inner_maps", start - 1, end)


def _section_chunks(data: bytes, section: str, start: int, end: int) -> list[Chunk] | None:
    """The maps of one section (`start` is at the newline that ends its header line): every
    content line at the section's first indentation is a map header."""
    first = _CONTENT_LINE.search(data, start, end)
    if first is None:
        return []
    indent = len(first.group(1))
    if indent == 0:
        return None
    # Content lines at the headers' indentation. A less indented one is bad YAML: the parser
    # reports it, or names a map the cut did not see, and then nothing is stored (config._store).
    outline = re.compile(rb"\n {%d}(?=[^ \n#])" % indent)
    header = re.compile(b" " * indent + rb"([A-Za-z0-9_-]+):[ ]*(?:#.*)?")
    heads: list[tuple[int, str]] = []
    names: set[str] = set()
    for m in outline.finditer(data, start, end):
        line_start = m.start() + 1
        eol = data.find(b"\n", line_start, end)
        h = header.fullmatch(data, line_start, end if eol < 0 else eol)
        name = h.group(1).decode() if h is not None else ""
        if not name or name in names:
            return None  # content outside any map, a map on one line, or a repeated name
        names.add(name)
        heads.append((line_start, name))
    bounds = [s for s, _ in heads[1:]] + [end]
    return [Chunk(section, name, s, e) for (s, name), e in zip(heads, bounds)]


def blank_out(data: bytes, chunks: list[Chunk], start: int = 0, end: int | None = None) -> bytes:
    """`data[start:end]` with the given chunks replaced by as many empty lines, so every other line keeps its number."""
    parts, pos = [], start
    for c in sorted(chunks, key=lambda c: c.start):
        parts.append(data[pos:c.start])
        parts.append(b"\n" * data.count(b"\n", c.start, c.end))
        pos = c.end
    parts.append(data[pos:end])
    return b"".join(parts)
