"""How messages count things ("1 inner map", "2 inner maps", "1 entry", "0 entries") and quote what
a user wrote (`{ip: 10.0.0.1, port: 80}`, as in their YAML, not a Python repr)."""

from __future__ import annotations

from typing import Any


def count(n: int, noun: str, plural: str = "") -> str:
    """`n` and the noun in the number it takes (`plural` for nouns that do not just add an s)."""
    return f"{n} {noun if n == 1 else plural or noun + 's'}"


def verb(n: int, one: str, many: str) -> str:
    """The verb agreeing with a count of `n`: verb(1, "is", "are") -> "is"."""
    return one if n == 1 else many


def a(word: str) -> str:
    """The word with its indefinite article, as it is read aloud ("an array", "an lru_hash", "a hash")."""
    return f"{'an' if word[:1] in tuple('aeiou') or word.startswith(('lru', 'lpm')) else 'a'} {word}"


def human_bytes(n: int | None) -> str:
    """1536 -> "1.5 KiB", 2**48 -> "256.0 TiB"; None (not read) -> "-"."""
    if n is None:
        return "-"
    if n < 1024:
        return f"{n} B"
    size, unit = n / 1024, "KiB"
    for bigger in ("MiB", "GiB", "TiB", "PiB"):
        if size < 1024:
            break
        size, unit = size / 1024, bigger
    return f"{size:.1f} {unit}"
