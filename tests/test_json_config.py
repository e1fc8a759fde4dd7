"""JSON configs: parsed with orjson, object keys as strings where the key type is numeric,
errors with file and line, and `show --json` accepted back by apply."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from conftest import REPO, run_cli
from kmesh_apply.config import load_config
from kmesh_apply.config.loader import _repeats_a_key
from kmesh_apply.errors import ConfigError

# Every kind of key a JSON object can carry: decimal and 0x text for numeric keys (entries, slots,
# array indexes, key_size), raw hex bytes, and text keys (char[N]) that stay text even when all digits.
KEYS = """
inner_maps:
  counts:   {type: hash, key: u32, value: u64, max_entries: 8, entries: {3: 16, 0x4: 17}}
  signed:   {type: hash, key: i16, value: u8, max_entries: 8, entries: {-2: 1}}
  netorder: {type: hash, key: be32, value: u8, max_entries: 8, entries: {258: 1}}
  raw:      {type: hash, key_size: 4, value: u32, max_entries: 8, entries: {7: 1, 0a000001: 2}}
  wide:     {type: hash, key_size: 5, value: u32, max_entries: 8, entries: {"0000000001": 1}}
  names:    {type: hash, key: "char[4]", value: u32, max_entries: 8, entries: {"12": 1}}
  slots:    {type: array, key: u32, value: u32, max_entries: 4, entries: {3: 9}}
  routes:   {type: lpm_trie, key: {lpm: ipv4}, value: u32, max_entries: 8, flags: [no_prealloc],
             entries: [{key: 10.0.0.0/8, value: 1}]}
outer_maps:
  services: {type: array_of_maps, key: u32, max_entries: 4, inner_map: counts, entries: {1: counts}}
"""


def as_json(doc: dict) -> str:
    return json.dumps(doc, indent=2)


def test_json_keys_mean_what_the_yaml_keys_mean(tmp_path: Path):
    doc = yaml.safe_load(KEYS)
    doc["inner_maps"]["raw"]["entries"] = {7: 1, "0a000001": 2}
    (tmp_path / "c.json").write_text(as_json(doc))  # every object key becomes a string
    (tmp_path / "c.yaml").write_text(KEYS)
    from_json, from_yaml = load_config([tmp_path / "c.json"]), load_config([tmp_path / "c.yaml"])
    assert {n: m.entries for n, m in from_json.inner_maps.items()} == {n: m.entries for n, m in from_yaml.inner_maps.items()}
    assert from_json.outer_maps["services"].slots == from_yaml.outer_maps["services"].slots
    assert from_json.inner_maps["names"].entries == {b"12\0\0": (1).to_bytes(4, "little")}
    assert from_json.inner_maps["raw"].entries[bytes.fromhex("0a000001")] == (2).to_bytes(4, "little")


def test_a_directory_merges_json_and_yaml(tmp_path: Path):
    doc = yaml.safe_load(KEYS)
    (tmp_path / "outer.yaml").write_text(yaml.safe_dump({"outer_maps": doc.pop("outer_maps")}))
    (tmp_path / "inner.json").write_text(as_json(doc))
    cfg = load_config([tmp_path])
    assert set(cfg.inner_maps) == set(doc["inner_maps"]) and set(cfg.outer_maps) == {"services"}


def test_an_inline_mapping_may_carry_text_keys():
    """As Ansible hands over its module arguments: through JSON, so int keys arrive as strings."""
    cfg = load_config(inline=json.loads(as_json(yaml.safe_load(KEYS))))
    assert cfg.inner_maps["counts"].entries[(3).to_bytes(4, "little")] == (16).to_bytes(8, "little")


def diagnostics(tmp_path: Path, text: str) -> list[str]:
    path = tmp_path / "c.json"
    path.write_text(text)
    with pytest.raises(ConfigError) as e:
        load_config([path])
    return [str(d).replace(str(path), "c.json") for d in e.value.diagnostics]


GOOD = """{
  "inner_maps": {
    "b": {"type": "hash", "key": "u32", "value": "u8", "max_entries": 4,
          "entries": {"1": 2, "2": 3}}
  }
}
"""


def test_syntax_errors_name_file_line_and_column(tmp_path: Path):
    assert diagnostics(tmp_path, GOOD.replace('"2": 3}', '"2": 3,}')) == [
        "c.json:4: invalid JSON: trailing comma is not allowed (column 37)"]


def test_a_key_given_twice_is_an_error(tmp_path: Path):
    assert diagnostics(tmp_path, GOOD.replace('"2": 3}', '"2": 3, "1": 4}')) == [
        "c.json:4: duplicate key: a key may appear once in an object"]
    # An escaped quote followed by a colon inside a string is not a key.
    text = GOOD.replace('"u8"', '"u8", "update": "x\\": y"').replace('"2": 3}', '"2": 3, "1": 4}')
    assert diagnostics(tmp_path, text) == ["c.json:4: duplicate key: a key may appear once in an object"]


def test_two_spellings_of_one_integer_key_are_one_key_given_twice(tmp_path: Path):
    """"3" and "03" are different object keys but the same u32: a duplicate, not the last one silently kept."""
    (problem,) = diagnostics(tmp_path, GOOD.replace('"2": 3}', '"2": 3, "02": 4}'))
    assert "given twice" in problem


def test_validation_problems_keep_their_lines(tmp_path: Path):
    text = GOOD.replace('"2": 3}', '"2": 300,\n                      "x": 1}')
    assert diagnostics(tmp_path, text) == [
        "c.json:4: map 'b' entry 2: value: expected an integer 0..255 for u8, got 300",
        "c.json:5: map 'b' entry x: key: expected an integer 0..4294967295 for u32, got 'x'",
    ]


def test_keys_counted_in_text_and_in_data_agree():
    """Whatever the spacing, and with quotes and colons inside strings, a text without repeats has none."""
    for doc in ({"a": {"b": [1, {"c": "d\": e"}]}, "": {}}, {"x\\": {" :": 1}}, [{"k": 1}, {}], {"q": "\u0022:"}):
        for text in (json.dumps(doc), json.dumps(doc, indent=1), json.dumps(doc, separators=(",", " : "))):
            assert not _repeats_a_key(text, json.loads(text)), text
            assert _repeats_a_key(text.replace("{", '{"k": 0, "k": 1, ', 1), doc), text


def kmesh_apply(*args: str, expect: int = 0) -> str:
    res = run_cli("kmesh-apply", *args)
    assert res.returncode == expect and "Traceback" not in res.stderr, res.stdout + res.stderr
    return res.stdout


def test_show_json_is_accepted_back(tmp_path: Path, pin_root: Path):
    """apply YAML -> show --json -> plan from that JSON: no changes; and applied from scratch, that JSON
    builds what the YAML built."""
    configs = [REPO / "examples/mesh", tmp_path / "percpu.yaml", tmp_path / "keys.yaml"]
    (tmp_path / "percpu.yaml").write_text((REPO / "examples/percpu/percpu.yaml").read_text().replace("pin_root:", "#"))
    (tmp_path / "keys.yaml").write_text(KEYS.replace("services:", "keyed:").replace("routes:", "more-routes:"))
    root = ["--pin-root", str(pin_root)]
    kmesh_apply("apply", *map(str, configs), *root, "--auto-approve")
    shown = tmp_path / "live.json"
    shown.write_text(kmesh_apply("show", *root, "--json"))
    assert "No changes" in kmesh_apply("plan", str(shown), *root, "--detailed-exitcode")
    kmesh_apply("destroy", *root, "--auto-approve")
    kmesh_apply("apply", str(shown), *root, "--auto-approve")
    assert "No changes" in kmesh_apply("plan", *map(str, configs), *root, "--detailed-exitcode")


def test_only_plain_decimal_text_becomes_an_integer():
    from kmesh_apply.config.validate import _integers

    assert _integers(["1", "-2", "07"]) == [1, -2, 7]
    odd = ["+3", " 3", "3_0", "3-", "", "\u0663", "0x4"]
    assert _integers(["1", *odd]) == [1, *odd]
    assert _integers([5, "6", True]) == [5, 6, True]  # a mapping handed over may mix keys
