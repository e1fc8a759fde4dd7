"""Text that reaches a terminal or a log line: names, keys, values and paths written so that
no one who chose them (another user's pin, a config file, a map's bytes) can steer the terminal.

A terminal acts on control characters: ESC starts sequences that move the cursor, rewrite the
title or the clipboard (OSC), hide text; a line break inside a name forges a line of a plan;
bidi overrides reorder what is shown. Every character Python does not call printable (C0 and C1
controls, DEL, line and paragraph separators, format characters such as bidi overrides, spaces
other than ' ') is written as an escape (`\\x1b`, `\\n`, `\\u202e`), as `repr` would.
"""

from __future__ import annotations

import reprlib
from typing import Any

_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escape(c: str) -> str:
    if c in _NAMED:
        return _NAMED[c]
    n = ord(c)
    return f"\\x{n:02x}" if n < 0x100 else f"\\u{n:04x}" if n < 0x10000 else f"\\U{n:08x}"


def printable(text: str) -> str:
    """One name, key, value or path as it may appear inside a line: every character a terminal
    would act on is escaped. (A backslash stays as it is: messages hold reprs, whose escapes must read as written.)"""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else _escape(c) for c in text)


def printable_lines(text: str) -> str:
    """A whole message or block of output: each line made printable, the line breaks kept."""
    if text.isprintable():
        return text
    return "\n".join(map(printable, text.split("\n")))


class _Shown(reprlib.Repr):
    """repr, bounded: nesting, lengths and integers too long to convert (Python refuses to write an
    integer of more than 4,300 digits, and a 10^5-digit one would fill a screen anyway)."""

    def __init__(self) -> None:
        super().__init__()
        self.maxlevel, self.maxstring, self.maxother = 3, 40, 40
        self.maxlist = self.maxtuple = self.maxdict = self.maxset = 6

    def repr_int(self, x: int, level: int) -> str:
        if x.bit_length() > 128:
            return f"<an integer of {x.bit_length()} bits>"
        return repr(x)

    def repr_float(self, x: float, level: int) -> str:
        return repr(x)


_shown = _Shown()
SHOWN_LIMIT = 60


def shown(value: Any, limit: int = SHOWN_LIMIT) -> str:
    """A value someone wrote, for an error message: a string quoted and escaped (so that '10' and 10
    differ), a mapping or list as YAML writes it on one line (`{ip: 10.0.0.1, port: 80}`), at most
    about `limit` characters, and never failing whatever the value is."""
    bounded = _shown.repr(value)  # reprlib describes a value whose own __repr__ raises
    text = printable(_flow(value, bounded) if isinstance(value, (dict, list)) else bounded)
    return text if len(text) <= limit else text[:limit - 3] + "..."


def _flow(value: dict[Any, Any] | list[Any], bounded: str) -> str:
    """YAML's one-line form of a small mapping or list (the bounded repr of a large or deep one, or of
    one YAML cannot write)."""
    if "..." in bounded:
        return bounded
    import yaml

    try:
        text = yaml.safe_dump(value, default_flow_style=True, sort_keys=False, width=1 << 30, allow_unicode=True)
    except (yaml.YAMLError, ValueError, RecursionError):
        return bounded
    return text.removesuffix("...\n").strip()


def label(value: Any, limit: int = SHOWN_LIMIT) -> str:
    """A key or name as it reads in a message (`entry 10.0.0.0/8`, `entry 7`): a string as it is,
    escaped and cut to about `limit` characters; anything else as `shown` writes it."""
    if not isinstance(value, str):
        return shown(value, limit)
    text = printable(value)
    return text if len(text) <= limit else text[:limit - 3] + "..."


def _unicode_escape(c: str, yaml: bool) -> str:
    """`\\uXXXX` as JSON and YAML write a character in a double-quoted string; past U+FFFF, YAML's
    `\\UXXXXXXXX` or JSON's surrogate pair."""
    n = ord(c)
    if n < 0x10000:
        return f"\\u{n:04x}"
    if yaml:
        return f"\\U{n:08x}"
    n -= 0x10000
    return f"\\u{0xD800 + (n >> 10):04x}\\u{0xDC00 + (n & 0x3FF):04x}"


def escape_quoted(text: str, yaml: bool = False) -> str:
    """JSON or YAML whose writer already escaped C0 controls but left other characters a terminal acts on
    (C1 controls, bidi overrides, separators) raw: those become `\\u` escapes. Only for text where every
    such character is inside a double-quoted string (orjson's output; dump_yaml's, which double-quotes
    any string that is not printable), where the escape means the same character."""
    if text.isascii():
        return text
    return "\n".join(line if line.isprintable() else "".join(c if c.isprintable() else _unicode_escape(c, yaml)
                                                              for c in line) for line in text.split("\n"))
