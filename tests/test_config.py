"""The config layer: one test per rule, each asserting the diagnostic names file, line and map."""

from __future__ import annotations

import struct
import textwrap
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kmesh_apply.config import dump_yaml, load_config, schema_text
from kmesh_apply.errors import ConfigError, KmeshError

from conftest import REPO

GOOD = """\
inner_maps:
  a:
    type: hash
    key: u32
    value: u64
    max_entries: 10
    entries:
      1: 2
      3: 4
  b:
    type: hash
    key: u32
    value: u64
    max_entries: 20
outer_maps:
  o:
    type: array_of_maps
    key: u32
    max_entries: 4
    inner_map: a
    entries:
      0: a
      1: b
"""


def write(tmp_path: Path, text: str, name: str = "c.yaml") -> Path:
    p = tmp_path / name
    p.write_text(textwrap.dedent(text))
    return p


def errors(tmp_path: Path, text: str) -> list:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as e:
        load_config([path])
    for d in e.value.diagnostics:
        assert d.file == str(path)
    return e.value.diagnostics


def one(tmp_path: Path, text: str, line: int, map_: str, *words: str):
    diags = errors(tmp_path, text)
    match = [d for d in diags if d.line == line and d.map == map_ and all(w in d.message for w in words)]
    assert match, f"expected line {line} map {map_} {words}, got: {[str(d) for d in diags]}"
    assert f":{line}:" in str(match[0])


def test_good(tmp_path: Path):
    cfg = load_config([write(tmp_path, GOOD)])
    assert cfg.inner_maps["a"].entries == {struct.pack("<I", 1): struct.pack("<Q", 2), struct.pack("<I", 3): struct.pack("<Q", 4)}
    assert cfg.outer_maps["o"].slots == {struct.pack("<I", 0): "a", struct.pack("<I", 1): "b"}
    assert cfg.inner_maps["a"].update == "swap"


@pytest.mark.parametrize("text", ["", "\n\n", "# everything was here\n# and is gone\n", "---\n", "~\n", "null\n"])
def test_an_empty_or_comment_only_file_is_an_error(tmp_path: Path, text: str):
    """Issue 21: such a file meant "no maps", and watch destroyed every map on `: > config.yaml`."""
    (diag,) = errors(tmp_path, text)
    assert "holds no configuration" in diag.message and "inner_maps: {}" in diag.message
    with pytest.raises(ConfigError, match="holds no configuration"):
        load_config(inline=text)
    with pytest.raises(ConfigError, match=r"empty\.yaml(:\d+)?: the file holds no configuration"):
        load_config([write(tmp_path, GOOD, "good.yaml"), write(tmp_path, text, "empty.yaml")])


@pytest.mark.parametrize("text", ["inner_maps: {}\n", "{}\n", "# no maps, on purpose\ninner_maps: {}\nouter_maps: {}\n"])
def test_an_explicitly_empty_configuration_is_valid(tmp_path: Path, text: str):
    cfg = load_config([write(tmp_path, text)])
    assert not cfg.inner_maps and not cfg.outer_maps


def test_examples_validate():
    for ex in ("mesh", "percpu", "multi"):
        load_config([REPO / "examples" / ex])


def test_unknown_key(tmp_path: Path):
    one(tmp_path, GOOD.replace("    max_entries: 20\n", "    max_entries: 20\n    colour: red\n"), 15, "b", "unknown key", "colour")


def test_duplicate_key(tmp_path: Path):
    diags = errors(tmp_path, GOOD.replace("      3: 4\n", "      3: 4\n      1: 5\n"))
    assert diags[0].line == 10 and "duplicate" in diags[0].message


def test_bad_name(tmp_path: Path):
    one(tmp_path, GOOD.replace("  b:\n", "  b.c:\n").replace("1: b\n", "1: a\n"), 10, "b.c", "not a valid map name")


def test_unknown_type_name(tmp_path: Path):
    one(tmp_path, GOOD.replace("value: u64\n    max_entries: 10", "value: u65\n    max_entries: 10"), 5, "a", "unknown type 'u65'")


def test_key_and_key_size(tmp_path: Path):
    one(tmp_path, GOOD.replace("    key: u32\n    value: u64\n    max_entries: 20", "    key: u32\n    key_size: 4\n    value: u64\n    max_entries: 20"),
        12, "b", "exactly one of 'key'")


def test_value_does_not_fit(tmp_path: Path):
    one(tmp_path, GOOD.replace("3: 4", "3: 18446744073709551616"), 9, "a", "value")


def test_every_bad_entry_is_reported(tmp_path: Path):
    diags = errors(tmp_path, GOOD.replace("1: 2", "1: x").replace("3: 4", "3: -1"))
    assert [d.line for d in diags] == [8, 9]


STRUCTS = """\
inner_maps:
  s:
    type: hash
    key: u32
    value: {struct: [{ip: ipv4}, {port: be16}, {weight: u16}]}
    max_entries: 8
    entries:
      0: {ip: 10.0.0.1, port: 80, weight: 1}
      1: {weight: 2, port: '0x51', ip: 10.0.0.2}
"""


def test_struct_values_by_column_and_by_entry(tmp_path: Path):
    """Struct values encode by whole columns; a column with any unusual value goes entry by entry,
    with the same bytes, and bad entries are each reported as before."""
    record = {struct.pack("<I", 0): bytes.fromhex("0a000001" "0050" "0100"),
              struct.pack("<I", 1): bytes.fromhex("0a000002" "0051" "0200")}
    assert load_config([write(tmp_path, STRUCTS)]).inner_maps["s"].entries == record
    assert load_config([write(tmp_path, STRUCTS.replace("'0x51'", "81"))]).inner_maps["s"].entries == record
    bad = STRUCTS + "      2: {ip: 10.0.0.3, port: 70000, weight: 1}\n      3: [1, 2, 3]\n      4: {ip: 10.0.0.1, port: 80}\n"
    assert [(d.line, d.entry, d.message) for d in errors(tmp_path, bad)] == [
        (10, "2", "value: field 'port': expected an integer 0..65535 for be16, got 70000"),
        (11, "3", "value: expected a mapping of field to value (ip, port, weight), got [1, 2, 3]"),
        (12, "4", "value: field 'weight': missing (a struct value needs every field: ip, port, weight)"),
    ]


def test_too_many_entries(tmp_path: Path):
    one(tmp_path, GOOD.replace("max_entries: 10", "max_entries: 1"), 7, "a", "do not fit max_entries 1")


def test_array_index_out_of_range(tmp_path: Path):
    one(tmp_path, GOOD.replace("    type: hash\n    key: u32\n    value: u64\n    max_entries: 20",
                               "    type: array\n    key: u32\n    value: u64\n    max_entries: 20\n    entries:\n      25: 1").replace("1: b", "2: a"),
        16, "b", "out of range")


def test_slot_names_an_undefined_map(tmp_path: Path):
    one(tmp_path, GOOD.replace("1: b", "1: nope"), 23, "o", "'nope' is not defined")


def test_outer_map_as_inner_map(tmp_path: Path):
    one(tmp_path, GOOD.replace("inner_map: a", "inner_map: o"), 20, "o", "cannot be an inner map")


def test_incompatible_inner_map(tmp_path: Path):
    one(tmp_path, GOOD.replace("    type: hash\n    key: u32\n    value: u64\n    max_entries: 20", "    type: lru_hash\n    key: u32\n    value: u64\n    max_entries: 20"),
        23, "o", "incompatible", "type lru_hash")


def test_array_template_needs_same_max_entries(tmp_path: Path):
    text = GOOD.replace("type: hash\n    key: u32\n    value: u64\n    max_entries: 10", "type: array\n    key: u32\n    value: u64\n    max_entries: 10")
    text = text.replace("type: hash\n    key: u32\n    value: u64\n    max_entries: 20", "type: array\n    key: u32\n    value: u64\n    max_entries: 20")
    one(tmp_path, text, 23, "o", "max_entries 20")


def test_lpm_needs_no_prealloc(tmp_path: Path):
    one(tmp_path, "inner_maps:\n  r:\n    type: lpm_trie\n    key: {lpm: ipv4}\n    value: u32\n    max_entries: 8\n", 3, "r", "no_prealloc")


def test_lpm_host_bits(tmp_path: Path):
    one(tmp_path, "inner_maps:\n  r:\n    type: lpm_trie\n    key: {lpm: ipv4}\n    value: u32\n    max_entries: 8\n"
                  "    flags: [no_prealloc]\n    entries:\n      - key: 10.0.0.1/8\n        value: 1\n", 9, "r", "key")


def test_flag_not_valid_for_type(tmp_path: Path):
    one(tmp_path, GOOD.replace("max_entries: 20", "max_entries: 20\n    flags: [mmapable]"), 15, "b", "mmapable")


def test_same_name_in_two_files(tmp_path: Path):
    first = write(tmp_path, GOOD, "a.yaml")
    second = write(tmp_path, "inner_maps:\n  a:\n    type: hash\n    key: u32\n    value: u64\n    max_entries: 1\n", "b.yaml")
    with pytest.raises(ConfigError) as e:
        load_config([tmp_path])
    (d,) = e.value.diagnostics
    assert d.file == str(second) and d.line == 2 and str(first) in d.message


def test_inner_and_outer_share_a_namespace(tmp_path: Path):
    one(tmp_path, GOOD + "  a:\n    type: hash_of_maps\n    key: u32\n    max_entries: 2\n    inner_map: a\n", 24, "a", "defined again")


def test_reserved_name(tmp_path: Path):
    one(tmp_path, GOOD.replace("  b:\n", "  _kmesh_staging:\n").replace("1: b", "1: a"), 10, "_kmesh_staging", "reserved")


def test_multi_file_directory_merges(tmp_path: Path):
    cfg = load_config([REPO / "examples" / "multi"])
    assert set(cfg.inner_maps) == {"tenant-a", "tenant-b"} and cfg.outer_maps["tenants"].type == "array_of_maps"


def test_inline_mapping_and_text():
    assert set(load_config(inline=GOOD).inner_maps) == {"a", "b"}
    import yaml

    assert set(load_config(inline=yaml.safe_load(GOOD)).outer_maps) == {"o"}
    with pytest.raises(ConfigError) as e:
        load_config(inline=GOOD.replace("u64\n    max_entries: 10", "u99\n    max_entries: 10"))
    assert e.value.diagnostics[0].file == "<inline>" and e.value.diagnostics[0].line == 5


def test_schema_is_valid_json_schema():
    import json

    from jsonschema import Draft202012Validator

    Draft202012Validator.check_schema(json.loads(schema_text()))
    assert json.loads(schema_text()) == json.loads((REPO / "schemas" / "config-v1.schema.json").read_text())


def test_dump_yaml_round_trips(tmp_path: Path):
    """What dump_yaml writes loads back as the same maps: types, and every entry byte for byte (strings a
    YAML reader would take for something else are quoted; integer-only maps take the fast path)."""
    doc = {"inner_maps": {
        "a": {"type": "hash", "key": "u32", "value": {"struct": [{"ip": "ipv4"}, {"port": "be16"}]},
              "max_entries": 4, "entries": {1: {"ip": "10.0.0.1", "port": 80}, 2: {"ip": "10.0.0.2", "port": 8080}}},
        "names": {"type": "hash", "key": "u32", "value": "char[8]", "max_entries": 8,
                  "entries": {1: "yes", 2: "0x10", 3: "1e3", 4: "null", 5: "~", 6: "a: b", 7: "- x", 8: ""}},
        "ints": {"type": "hash", "key": "i64", "value": "u64", "max_entries": 4, "entries": {-3: 0, 7: 2**64 - 1}}}}
    text = dump_yaml(doc)
    assert "{ip: 10.0.0.1, port: 80}" in text
    back, want = load_config([write(tmp_path, text)]), load_config(inline=doc)
    assert set(back.inner_maps) == set(doc["inner_maps"])
    for name, spec in want.inner_maps.items():
        got = back.inner_maps[name]
        assert (got.key, got.value, got.max_entries) == (spec.key, spec.value, spec.max_entries), name
        assert got.entries == spec.entries and len(got.entries) == len(doc["inner_maps"][name]["entries"]), name


def test_integer_entries_are_written_as_pyyaml_writes_them(tmp_path: Path):
    """Integer-only entries skip PyYAML (a minute for a million) and come out byte for byte the same."""
    import yaml

    entries = {k: v for k, v in zip([0, 7, -3, 2**63], [2**64 - 1, -(2**63), 0, 5])}
    doc = {"pin_root": "/sys/fs/bpf/x", "inner_maps": {
        "a": {"type": "hash", "key": "s64", "value": "u64", "max_entries": 8, "entries": entries},
        "b": {"type": "hash", "key": "u32", "value": "ipv4", "max_entries": 8, "entries": {1: "10.0.0.1"}},
        "c": {"type": "hash", "key": "u32", "value": "u32", "max_entries": 8, "entries": {1: True, 2: 3}},
        "d": {"type": "hash", "key": "u32", "value": "u32", "max_entries": 8, "entries": {5: 6}}}}
    assert dump_yaml(doc) == yaml.safe_dump(doc, sort_keys=False, width=120)


# ---- fuzzing: nothing but the tool's own error type, ever -------------------------------

yaml_text = st.lists(st.sampled_from(list("abkeyvlu:0123456789 -_[]{}\n\t#&*!|>'\",.x/")
                                     + ["inner_maps", "outer_maps", "type", "hash", "entries", "\n  ", ": "]),
                     max_size=120).map("".join)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(yaml_text)
def test_fuzz_arbitrary_text(text: str):
    try:
        load_config(inline=text)
    except KmeshError:
        pass


@pytest.mark.parametrize("text, message", [
    ("a:\n:", "unknown key None, 'a' in the top level"),
    ("inner_maps:\n  x:\n    type: hash\n    key: u32\n    value: u32\n    max_entries: 1\n    ~: 1\n",
     "unknown key None in the map"),
])
def test_null_keys_are_reported(text: str, message: str):
    """Found by the fuzz test: keys that JSON cannot sort once raised TypeError."""
    with pytest.raises(ConfigError, match=message):
        load_config(inline=text)


GOOD_LINES = GOOD.splitlines()


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.integers(0, len(GOOD_LINES) - 1), st.sampled_from(["", "x", "-1", "0x", "[1]", "{a: 1}", "99999999999999999999",
                                                              "null", "u8", "array", "&a 1", "*a", "!!binary x", "'", "1.5"]),
       st.booleans())
def test_fuzz_mutated_valid_config(line: int, replacement: str, whole_line: bool):
    lines = list(GOOD_LINES)
    if whole_line:
        lines[line] = replacement
    else:
        head, sep, _ = lines[line].partition(": ")
        lines[line] = f"{head}{sep or ': '}{replacement}"
    try:
        load_config(inline="\n".join(lines) + "\n")
    except KmeshError:
        pass
