"""ConfigFiles: only changed files are read again, a changed inner-map file is merged into the last
good configuration, and anything a merge could get wrong is loaded in full (no kernel needed)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from kmesh_apply import ConfigError, load_config
from kmesh_apply.sync.files import ConfigFiles

OUTER = """outer_maps:
  services: {type: hash_of_maps, key: u32, max_entries: 16, inner_map: svc-0, entries: {0: svc-0, 1: svc-1}}
"""


def service(name: str, value: int, max_entries: int = 8) -> str:
    return f"""inner_maps:
  {name}:
    type: hash
    key: u32
    value: u64
    max_entries: {max_entries}
    entries: {{0: {value}, 1: {value + 1}}}
"""


def save(path: Path, text: str) -> None:
    """An editor's atomic save: write aside, rename over."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    (tmp_path / "outer.yaml").write_text(OUTER)
    for i in range(3):
        (tmp_path / f"svc-{i}.yaml").write_text(service(f"svc-{i}", 10 * i))
    return tmp_path


def test_an_unchanged_tree_loads_once(tree: Path):
    files = ConfigFiles([tree])
    config, changed = files.load()
    assert len(changed) == 4 and set(config.inner_maps) == {"svc-0", "svc-1", "svc-2"}
    assert files.load() is None


def test_a_changed_service_file_is_merged_and_equals_a_full_load(tree: Path):
    files = ConfigFiles([tree])
    before, _ = files.load()
    save(tree / "svc-1.yaml", service("svc-1", 500))
    (tree / "svc-3.yaml").write_text(service("svc-3", 7))
    (tree / "svc-2.yaml").unlink()
    after, changed = files.load()
    assert changed == [str(tree / "svc-1.yaml"), str(tree / "svc-3.yaml"), str(tree / "svc-2.yaml")]
    assert after.inner_maps["svc-0"] is before.inner_maps["svc-0"], "an unchanged map keeps its spec object"
    assert after.outer_maps["services"] is before.outer_maps["services"]
    full = load_config([tree])
    assert after.inner_maps == full.inner_maps and after.outer_maps == full.outer_maps


@pytest.mark.parametrize("change, message", [
    (lambda t: (t / "svc-1.yaml").unlink(), "'svc-1' is not defined under inner_maps"),
    (lambda t: save(t / "svc-2.yaml", service("svc-0", 1)), "'svc-0' is defined again"),
    (lambda t: save(t / "svc-0.yaml", service("svc-0", 1).replace("value: u64", "value: u32")), "incompatible"),
    (lambda t: save(t / "svc-1.yaml", service("svc-1", 1) + "  broken: ["), "svc-1.yaml:8: invalid YAML"),
])
def test_what_a_merge_cannot_decide_is_loaded_in_full(tree: Path, change, message):
    files = ConfigFiles([tree])
    good, _ = files.load()
    change(tree)
    with pytest.raises(ConfigError, match=message):
        files.load()
    assert files.config is good, "the last good configuration stays"
    for i in range(3):  # the fix arrives
        save(tree / f"svc-{i}.yaml", service(f"svc-{i}", 1))
    fixed, _ = files.load()
    assert fixed.inner_maps == load_config([tree]).inner_maps


def test_one_big_file_is_merged_map_by_map(tmp_path: Path):
    """One file holding everything: a changed inner map is parsed alone; an outer map's change loads all."""
    big = tmp_path / "all.yaml"
    services = "".join(service(f"svc-{i}", 10 * i).removeprefix("inner_maps:\n") for i in range(3))
    outer = OUTER.replace("  services: {", "  services:\n    {")  # map headers alone on their line (chunks.py)
    big.write_text("pin_root: /sys/fs/bpf/x\ninner_maps:\n" + services + outer)
    files = ConfigFiles([big])
    before, _ = files.load()
    save(big, big.read_text().replace("{0: 10, 1: 11}", "{0: 10, 1: 12, 2: 13}"))
    after, changed = files.load(touched={str(big)})
    assert changed == [str(big)]
    assert after.inner_maps["svc-0"] is before.inner_maps["svc-0"] and after.inner_maps["svc-1"] is not before.inner_maps["svc-1"]
    assert after.inner_maps == load_config([big]).inner_maps and after.pin_root == "/sys/fs/bpf/x"
    save(big, big.read_text().replace("1: svc-1}", "1: svc-1, 2: svc-2}"))
    after, _ = files.load(touched={str(big)})
    assert after.outer_maps == load_config([big]).outer_maps and after.inner_maps["svc-0"] is not before.inner_maps["svc-0"]


def test_any_edit_of_a_file_gives_what_a_full_load_gives(tmp_path: Path):
    big = tmp_path / "all.yaml"
    outer = OUTER.replace("  services: {", "  services:\n    {")
    text = "inner_maps:\n" + "".join(service(f"svc-{i}", 10 * i).removeprefix("inner_maps:\n") for i in range(4)) + outer
    big.write_text(text)
    files = ConfigFiles([big])
    files.load()
    edits = [
        ("{0: 20, 1: 21}", "{0: 20, 1: 22}"),                           # a value
        ("  svc-3:\n", "  # a comment\n  svc-3:\n"),                  # a comment between maps
        ("  svc-3:\n", "  svc-9:\n  svc-3:\n"),                        # a broken map (no definition)
        ("  svc-9:\n  svc-3:\n", "  svc-3:\n"),                        # fixed again
        ("  svc-2:\n", "  svc-4:\n"),                                  # a rename
        ("outer_maps:", "  svc-5:\n    type: hash\n    key: u32\n    value: u64\n    max_entries: 8\nouter_maps:"),
        ("max_entries: 16", "max_entries: 17"),                         # the outer map
        ("  svc-4:\n    type: hash", "  svc-4:\n    type: lru_hash"),  # not held by a slot: fine
        ("  svc-1:\n    type: hash", "  svc-1:\n    type: lru_hash"),  # held by a slot: incompatible
    ]
    for old, new in edits:
        assert old in text, old
        text = text.replace(old, new, 1)
        save(big, text)
        try:
            merged = files.load(touched={str(big)})[0]
        except ConfigError as e:
            with pytest.raises(ConfigError) as full:
                load_config([big])
            assert str(e) == str(full.value)
            continue
        full = load_config([big])
        assert (merged.inner_maps, merged.outer_maps) == (full.inner_maps, full.outer_maps), (old, new)


def test_edits_made_with_a_rejected_change_are_not_lost(tree: Path):
    files = ConfigFiles([tree])
    files.load()
    save(tree / "svc-1.yaml", service("svc-1", 100))
    save(tree / "svc-2.yaml", service("svc-0", 1))  # defined twice: the whole change is rejected
    with pytest.raises(ConfigError):
        files.load(touched={str(tree / "svc-1.yaml"), str(tree / "svc-2.yaml")})
    save(tree / "svc-2.yaml", service("svc-2", 200))  # the fix names only svc-2
    config, _ = files.load(touched={str(tree / "svc-2.yaml")})
    assert config.inner_maps == load_config([tree]).inner_maps  # svc-1's edit is there too


def test_only_the_files_events_name_are_read_again(tree: Path):
    files = ConfigFiles([tree])
    files.load()
    save(tree / "svc-1.yaml", service("svc-1", 100))
    save(tree / "svc-2.yaml", service("svc-2", 200))
    (tree / ".svc-1.yaml.swp").write_text("editor state")
    config, changed = files.load(touched={str(tree / "svc-1.yaml"), str(tree / ".svc-1.yaml.swp")})
    assert changed == [str(tree / "svc-1.yaml")]
    assert files.load(touched={str(tree / "svc-0.yaml")}) is None
    config, changed = files.load(touched={str(tree / "..data")})  # a ConfigMap swap: everything is looked at
    assert changed == [str(tree / "svc-2.yaml")]


def test_a_file_argument_is_watched_through_its_directory(tree: Path):
    files = ConfigFiles([tree / "svc-0.yaml", tree / "outer.yaml", tree / "svc-1.yaml"])
    assert files.directories() == [str(tree)]
    assert set(files.load()[0].inner_maps) == {"svc-0", "svc-1"}


def test_an_edit_of_a_large_map_parses_only_its_blocks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """A value changed, a line added, a bad value, a repeated key: a large map's edit is assembled
    from the blocks it touched and the map's last good entries, and gives what a full load gives."""
    from conftest import private_block_cache

    from kmesh_apply.config import blocks

    private_block_cache(tmp_path, monkeypatch, 1024)
    parsed: list[bytes] = []
    real = blocks._encode_block
    monkeypatch.setattr(blocks, "_encode_block", lambda text, *a: parsed.append(text) or real(text, *a))
    lines = [f"      {i * 7}: {i}\n" for i in range(3000)]

    def text() -> str:
        return ("inner_maps:\n  small:\n    type: hash\n    key: u32\n    value: u64\n    max_entries: 4\n    entries: {1: 2}\n"
                "  big:\n    type: hash\n    key: u32\n    value: u64\n    max_entries: 4000\n    entries:\n" + "".join(lines))

    big = tmp_path / "big.yaml"
    big.write_text(text())
    files = ConfigFiles([big])
    files.load()
    for edit in ("value", "insert", "bad", "repeat", "fixed"):
        if edit == "value":
            lines[1500] = "      10500: 99\n"
        elif edit == "insert":
            lines.insert(700, "      5: 5\n")
        elif edit == "bad":
            lines[100] = "      700: notanumber\n"
        elif edit == "repeat":
            lines[100] = "      7: 1\n"  # the key of line 2, from another block
        else:
            lines[100] = "      700: 100\n"
        save(big, text())
        parsed.clear()
        try:
            merged = files.load(touched={str(big)})[0]
        except ConfigError as e:
            with pytest.raises(ConfigError) as full:
                load_config([big], use_cache=False)
            assert str(e) == str(full.value) and edit in ("bad", "repeat")
            continue
        assert edit not in ("bad", "repeat")
        assert merged.inner_maps == load_config([big], use_cache=False).inner_maps
        assert 1 <= len(parsed) <= 4, edit  # the touched block (and its neighbours), not all sixty


def test_json_files_in_a_directory_are_followed_like_yaml(tree: Path):
    """Issue 21: the directory's *.json files were listed by the first load but never read again."""
    (tree / "svc-9.json").write_text('{"inner_maps": {"svc-9": {"type": "hash", "key": "u32", "value": "u64", '
                                     '"max_entries": 8, "entries": {"1": 10}}}}')
    files = ConfigFiles([tree])
    assert files.load()[0].inner_maps["svc-9"].entries == {(1).to_bytes(4, "little"): (10).to_bytes(8, "little")}
    save(tree / "svc-9.json", (tree / "svc-9.json").read_text().replace('"1": 10', '"1": 11, "2": 12'))
    config, changed = files.load(touched={str(tree / "svc-9.json")})
    assert changed == [str(tree / "svc-9.json")] and len(config.inner_maps["svc-9"].entries) == 2
    assert config.inner_maps == load_config([tree]).inner_maps
    save(tree / "svc-8.json", (tree / "svc-9.json").read_text().replace("svc-9", "svc-8"))
    config, changed = files.load(touched={str(tree / "svc-8.json")})
    assert changed == [str(tree / "svc-8.json")] and config.inner_maps == load_config([tree]).inner_maps
