"""Messages count things in the right number and put the right article before a map type."""

from __future__ import annotations

from pathlib import Path

import pytest

from conftest import run_cli
from kmesh_apply.errors import ApplyError, KmeshError
from kmesh_apply.wording import a, count


def test_count_and_article():
    assert [count(n, "entry", "entries") for n in (0, 1, 2)] == ["0 entries", "1 entry", "2 entries"]
    assert count(1, "inner map") == "1 inner map" and count(3, "byte") == "3 bytes"
    assert [a(t) for t in ("array", "hash", "lru_hash", "lpm_trie", "percpu_array")] == [
        "an array", "a hash", "an lru_hash", "an lpm_trie", "a percpu_array"]


@pytest.mark.parametrize(("maps", "said"), [
    (1, "Configuration valid: 1 inner map, 1 outer map, 2 entries."),
    (2, "Configuration valid: 2 inner maps, 1 outer map, 3 entries."),
])
def test_validate_counts_in_words(maps: int, said: str, tmp_path: Path):
    inner = "".join(f"  m{i}:\n    type: hash\n    key: u32\n    value: u32\n    max_entries: 4\n    entries: {{1: 1}}\n"
                    for i in range(maps))
    config = tmp_path / "c.yaml"
    config.write_text(f"inner_maps:\n{inner}outer_maps:\n  o:\n    type: hash_of_maps\n    key: u32\n"
                      "    max_entries: 4\n    inner_map: m0\n    entries: {1: m0}\n")
    res = run_cli("kmesh-apply", "validate", str(config))
    assert res.stdout.strip() == said, res.stderr


def test_an_apply_cut_short_counts_its_steps():
    text = str(ApplyError(KmeshError("boom"), ["create a"], ["create b", "create c"]))
    assert "applied 1 step before the failure:" in text and "not applied (2 steps):" in text
