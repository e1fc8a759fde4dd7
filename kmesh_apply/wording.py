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


def flow(value: Any) -> str:
    """A key or value as YAML writes it on one line: `{ip: 10.0.0.1, port: 80}`, `[1, 2]`, `7`."""
    if isinstance(value, (str, int, float)):
        return str(value)
    import yaml

    try:
        text = yaml.safe_dump(value, default_flow_style=True, sort_keys=False, width=1 << 30, allow_unicode=True)
    except yaml.YAMLError:
        return repr(value)
    return text.removesuffix("...\n").strip()
