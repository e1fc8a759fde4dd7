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


def test_counts_that_can_be_one_read_right(pin_root: Path, tmp_path: Path):
    """`1 entry written`, `1 map, 1 entry in inner maps`, `1 replaced map is still held`."""
    from kmesh_apply.plan.model import HeldReplaced, Plan
    from kmesh_apply.terminal import label, shown
    from kmesh_apply.wording import verb

    config = tmp_path / "one.yaml"
    config.write_text("inner_maps:\n  m: {type: hash, key: u32, value: u32, max_entries: 4, entries: {1: 1}}\n")
    res = run_cli("kmesh-apply", "apply", str(config), "--auto-approve", "--pin-root", str(pin_root))
    assert "(1 entry written, 0 deleted, 0 slots set in " in res.stdout, res.stdout
    usage = run_cli("kmesh-apply", "show", "--usage", "--pin-root", str(pin_root)).stdout
    assert usage.splitlines()[-1].startswith("1 map, 1 entry in inner maps, ")
    held = Plan(str(pin_root), held_replaced=[HeldReplaced("m", 7)])
    assert held.summary().startswith("No changes to apply, but 1 replaced map is still held by loaded programs")
    assert [verb(n, "is", "are") for n in (0, 1, 2)] == ["are", "is", "are"]
    assert shown({"ip": "10.0.0.1", "port": 80}) == "{ip: 10.0.0.1, port: 80}" and shown([1, [2, 3]]) == "[1, [2, 3]]"
    assert label({"ip": "10.0.0.1"}) == "{ip: 10.0.0.1}" and shown("10") == "'10'" and label("10") == "10"


def test_messages_name_what_was_meant(tmp_path: Path):
    """A misspelt struct field is named, with the field meant; a misspelt map key is one line with a
    suggestion (not also a second line saying the real key is missing); entries are named as YAML writes them."""
    config = tmp_path / "typos.yaml"
    config.write_text("""inner_maps:
  backends:
    type: hash
    key: {struct: [{ip: ipv4}, {port: u16}]}
    value: {struct: [{weight: u16}, {prio: u8}]}
    max_entires: 64
""")
    res = run_cli("kmesh-apply", "validate", str(config))
    errors = [ln.strip() for ln in res.stderr.splitlines()]
    assert errors == ["error: typos.yaml:6: map 'backends': unknown key 'max_entires' in the map (did you mean "
                      "'max_entries'?): expected one of adopt, entries, flags, formats, key, key_size, manage_entries, "
                      "max_entries, migrate, object_map, type, update, value, value_size".replace("typos.yaml", str(config))], res.stderr
    config.write_text(config.read_text().replace("max_entires: 64", """max_entries: 64
    entries:
      - key: {ip: 10.0.0.1, port: 80}
        value: {wieght: 3, prio: 1}
"""))
    res = run_cli("kmesh-apply", "validate", str(config))
    assert res.stderr.strip() == (f"error: {config}:8: map 'backends' entry {{ip: 10.0.0.1, port: 80}}: value: unknown "
                                  "field 'wieght': did you mean 'weight'? (the fields are: weight, prio)"), res.stderr
    config.write_text(config.read_text().replace("    max_entries: 64\n", "").replace("    type: hash\n", ""))
    res = run_cli("kmesh-apply", "validate", str(config))
    assert f"{config}:2: map 'backends': the map needs type and max_entries (or object_map)" in res.stderr, res.stderr
