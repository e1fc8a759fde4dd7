"""Cutting a config file's text into one chunk per map, without parsing it.

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

SECTIONS = ("inner_maps", "outer_maps")
# Characters that open anchors, aliases or tags (or break lines oddly): a file that holds any
# of them anywhere, even in a comment or a string, is parsed whole rather than reasoned about.
_UNSAFE_CHARS = "&*!\r\t"
_UNSAFE_LINE_STARTS = ("---", "...", "%")  # documents and directives
# Patterns start with a literal newline so that the regex engine skips ahead between lines.
_TOP_LINE = re.compile(r"\n([^ #\n][^\n]*)")
_FIRST_LINE = re.compile(r"([^ #\n][^\n]*)")
# A top-level key with nothing after it, a plain scalar, or a quoted one closed on the same line.
_TOP_KEY = re.compile(r"""([A-Za-z_][A-Za-z0-9_]*):(?:[ ]+(?:[^ #{\[|>'"].*|"[^"\\]*"[ ]*|'[^']*'[ ]*)?)?(?:[ ]+#.*)?""")
_SECTION_HEADER = re.compile(r"(inner_maps|outer_maps):[ ]*(?:#.*)?")
_CONTENT_LINE = re.compile(r"\n( *)[^ \n#]")


@dataclass(frozen=True)
class Chunk:
    """One map's definition as text: `start`/`end` are offsets in the file's text."""

    section: str
    name: str
    start: int
    end: int


def split(text: str) -> list[Chunk] | None:
    """The map chunks of `text` in file order, or None when the file is not plain enough to cut."""
    if _unsafe(text):
        return None
    first = _FIRST_LINE.match(text)
    tops = ([first] if first else []) + list(_TOP_LINE.finditer(text))
    seen: set[str] = set()
    chunks: list[Chunk] = []
    for i, top in enumerate(tops):
        line = top.group(1)
        key = _TOP_KEY.fullmatch(line)
        if key is None or key.group(1) in seen:
            return None  # not a plain top-level key, or a repeated one: the parser reports it
        seen.add(key.group(1))
        if key.group(1) not in SECTIONS:
            continue
        if not _SECTION_HEADER.fullmatch(line):
            return None  # a section written in flow style or on one line
        body_end = tops[i + 1].start() + 1 if i + 1 < len(tops) else len(text)
        found = _section_chunks(text, key.group(1), top.end(), body_end)
        if found is None:
            return None
        chunks += found
    return chunks


def _unsafe(text: str) -> bool:
    return (any(c in text for c in _UNSAFE_CHARS) or text.startswith(_UNSAFE_LINE_STARTS)
            or any("\n" + s in text for s in _UNSAFE_LINE_STARTS))


def _section_chunks(text: str, section: str, start: int, end: int) -> list[Chunk] | None:
    """The maps of one section (`start` is at the newline that ends its header line): every
    content line at the section's first indentation is a map header, and none is less indented."""
    first = _CONTENT_LINE.search(text, start, end)
    if first is None:
        return []
    indent = len(first.group(1))
    if indent == 0:
        return None
    outline = re.compile(r"\n {0,%d}(?=[^ \n#])" % indent)  # content lines no deeper than a header
    header = re.compile(" " * indent + r"([A-Za-z0-9_-]+):[ ]*(?:#.*)?")
    heads: list[tuple[int, str]] = []
    names: set[str] = set()
    for m in outline.finditer(text, start, end):
        line_start = m.start() + 1
        eol = text.find("\n", line_start, end)
        h = header.fullmatch(text, line_start, end if eol < 0 else eol)
        if h is None or h.group(1) in names:
            return None  # content outside any map, a map on one line, or a repeated name
        names.add(h.group(1))
        heads.append((line_start, h.group(1)))
    bounds = [s for s, _ in heads[1:]] + [end]
    return [Chunk(section, name, s, e) for (s, name), e in zip(heads, bounds)]


def blank_out(text: str, chunks: list[Chunk]) -> str:
    """`text` with the given chunks replaced by as many empty lines, so every other line keeps its number."""
    parts, pos = [], 0
    for c in sorted(chunks, key=lambda c: c.start):
        parts.append(text[pos:c.start])
        parts.append("\n" * text.count("\n", c.start, c.end))
        pos = c.end
    parts.append(text[pos:])
    return "".join(parts)
