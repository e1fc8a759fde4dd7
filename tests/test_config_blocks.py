"""Large maps' entries cut into blocks: only changed blocks are parsed, results never change, errors keep their lines."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from conftest import private_block_cache

import kmesh_apply.config as config_module
from kmesh_apply.config import cache as cache_mod
from kmesh_apply.config import load_config
from kmesh_apply.config.blocks import cut, entries_body
from kmesh_apply.config.chunks import split
from kmesh_apply.errors import ConfigError

N = 3000  # entries of the big map: about 60 blocks of 1 KiB with the block size below


@pytest.fixture(autouse=True)
def small_blocks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    private_block_cache(tmp_path, monkeypatch, 1024)


@pytest.fixture
def parsed_blocks(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The block texts parsed on their own (by either reader of a block)."""
    from kmesh_apply.config import blocks

    seen: list[str] = []
    real = blocks._encode_block

    def spy(text: bytes, *args: Any) -> Any:
        seen.append(text.decode())
        return real(text, *args)

    monkeypatch.setattr(blocks, "_encode_block", spy)
    return seen


def lines_of(seed: int = 15) -> list[str]:
    rng = random.Random(seed)
    return [f"      {k}: {rng.getrandbits(64)}\n" for k in rng.sample(range(1 << 32), N)]


def write(path: Path, lines: list[str], value: str = "u64") -> Path:
    path.write_text("inner_maps:\n  big:\n    type: hash\n    key: u32\n    value: " + value
                    + f"\n    max_entries: {N + 10}\n    entries:\n" + "".join(lines)
                    + "  small:\n    type: hash\n    key: u32\n    value: u64\n    max_entries: 4\n    entries: {1: 2}\n")
    return path


def load_both(path: Path) -> Any:
    """The config through the cache, checked against a load that parses everything."""
    cached, whole = load_config([path]), load_config([path], use_cache=False)
    a, b = cached.inner_maps["big"].entries, whole.inner_maps["big"].entries
    assert list(a.items()) == list(b.items())  # the same entries in the same (file) order
    assert cached.inner_maps == whole.inner_maps
    return cached


def test_plain_entries_are_cut_into_blocks_that_insertions_barely_move(tmp_path: Path) -> None:
    lines = lines_of()
    data = write(tmp_path / "c.yaml", lines).read_bytes()
    chunk = next(c for c in split(data) or [] if c.name == "big")
    body = entries_body(data, chunk)
    assert body is not None and body[1] == b"      "
    flow = b"inner_maps:\n  m:\n    type: hash\n    entries: {" + b", ".join(b"%d: 1" % i for i in range(900)) + b"}\n"
    assert entries_body(flow, next(iter(split(flow) or []))) is None
    bounds = cut(data, body[0], chunk.end)
    assert bounds[0][0] == body[0] and bounds[-1][1] == chunk.end and len(bounds) > 20
    assert all(data[e - 1:e] == b"\n" and e == s2 for (_, e), (s2, _) in zip(bounds, bounds[1:]))
    lines.insert(N // 2, "      5: 6\n")
    data2 = write(tmp_path / "c.yaml", lines).read_bytes()
    chunk2 = next(c for c in split(data2) or [] if c.name == "big")
    texts = {data[s:e] for s, e in bounds}
    moved = [data2[s:e] for s, e in cut(data2, entries_body(data2, chunk2)[0], chunk2.end) if data2[s:e] not in texts]  # type: ignore[index]
    assert 1 <= len(moved) <= 3  # the block that took the line, and maybe its neighbours


@pytest.mark.parametrize("text", [
    "      1: 2\n\n      3: 4\n",          # a blank line
    "      1: 2\n      # note\n      3: 4\n",  # a comment
    "      1:\n        2\n",                  # a value on the next line
    "      1: 2\n    update: in_place\n",     # another field after the entries
])
def test_maps_not_one_entry_a_line_keep_no_blocks(tmp_path: Path, text: str) -> None:
    path = tmp_path / "c.yaml"
    plain = "".join(f"      {i}: {i}\n" for i in range(10, 400))  # enough for several blocks
    path.write_text("inner_maps:\n  m:\n    type: hash\n    key: u32\n    value: u64\n    max_entries: 500\n"
                    "    entries:\n" + plain + text)
    load_config([path])
    layout = cache_mod.Cache.open().load(str(path)).layout  # type: ignore[union-attr]
    assert layout is not None and "m" not in layout[3]
    path.write_text(path.read_text().replace(text, "      1: 2\n"))  # one entry a line: kept
    load_config([path])
    assert "m" in cache_mod.Cache.open().load(str(path)).layout[3]  # type: ignore[union-attr]


def test_a_changed_value_parses_one_block(tmp_path: Path, parsed_blocks: list[str]) -> None:
    lines = lines_of()
    path = write(tmp_path / "c.yaml", lines)
    load_both(path)
    parsed_blocks.clear()
    lines[N // 2] = lines[N // 2].split(":")[0] + ": 7\n"
    cfg = load_config([write(path, lines)])
    assert len(parsed_blocks) == 1 and lines[N // 2] in parsed_blocks[0]
    assert load_both(path).inner_maps["big"].entries == cfg.inner_maps["big"].entries
    parsed_blocks.clear()
    del lines[10]
    lines.insert(N // 3, "      5: 6\n")
    cfg = load_both(write(path, lines))
    assert len(cfg.inner_maps["big"].entries) == N and 2 <= len(parsed_blocks) <= 8  # two places, twice (checked)


def test_errors_in_blocks_are_reported_as_without_blocks(tmp_path: Path) -> None:
    lines = lines_of()
    path = write(tmp_path / "c.yaml", lines)
    load_config([path])
    first_key = lines[0].split(":")[0].strip()
    bad = list(lines)
    bad[-1] = f"      {first_key}: 1\n"  # repeats the first block's key, from the last block
    with pytest.raises(ConfigError) as dup:
        load_config([write(path, bad)])
    assert f"c.yaml:{N + 7}" in str(dup.value) and "duplicate" in str(dup.value)
    bad = list(lines)
    bad[N // 4] = "      77: notanumber\n"
    with pytest.raises(ConfigError) as wrong:
        load_config([write(path, bad)])
    assert f"c.yaml:{N // 4 + 8}" in str(wrong.value) and "entry 77" in str(wrong.value)
    too_many = lines + [f"      {i}: 1\n" for i in range(11)]  # beyond max_entries
    with pytest.raises(ConfigError, match="do not fit max_entries"):
        load_config([write(path, too_many)])
    assert load_both(write(path, lines))  # and back: the cache still serves the good file


def test_a_type_change_parses_every_block(tmp_path: Path, parsed_blocks: list[str]) -> None:
    lines = [f"      {i}: {i % 60000}\n" for i in range(N)]
    path = write(tmp_path / "c.yaml", lines)
    load_config([path])
    parsed_blocks.clear()
    cfg = load_both(write(path, lines, value="u32"))
    assert cfg.inner_maps["big"].entries[(5).to_bytes(4, "little")] == (5).to_bytes(4, "little")
    # A new definition: no block is known under it, so every block is parsed, each once, in order.
    assert "".join(parsed_blocks) == "".join(lines)


def test_a_changed_copy_reuses_the_blocks_of_the_original(tmp_path: Path, parsed_blocks: list[str]) -> None:
    """A config written to a new path each run (a template, a CI checkout) finds the newest pack's blocks."""
    lines = lines_of()
    load_config([write(tmp_path / "c.yaml", lines)])
    parsed_blocks.clear()
    lines[7] = lines[7].split(":")[0] + ": 8\n"
    load_both(write(tmp_path / "d.yaml", lines))
    assert parsed_blocks and lines[7] in parsed_blocks[0] and len(parsed_blocks) <= 2  # one block (+ none for the check)


# ---- a map seen for the first time is parsed block by block -----------------------------------


def test_a_new_map_is_parsed_block_by_block_and_equals_a_whole_parse(tmp_path: Path, parsed_blocks: list[str]) -> None:
    lines = lines_of()
    cfg = load_both(write(tmp_path / "c.yaml", lines))  # the first load: no pack yet
    assert len(parsed_blocks) > 20 and "".join(parsed_blocks) == "".join(lines)
    assert len(cfg.inner_maps["big"].entries) == N


@pytest.mark.parametrize("value,render", [
    ("{struct: [{a: u16}, {b: u32}]}", lambda i: f"{{a: {i % 60000}, b: {i}}}"),  # not integers: YAML, block by block
    ("u64", lambda i: f"0x{i:x}"),                                                # hex: YAML reads it
    ("u64", lambda i: str(i) if i % 7 else f"{i:,}".replace(",", "_")),          # underscores: YAML reads them
])
def test_new_maps_of_other_forms_equal_a_whole_parse(tmp_path: Path, value: str, render: Any) -> None:
    lines = [f"      {i * 3}: {render(i)}\n" for i in range(N)]
    assert len(load_both(write(tmp_path / "c.yaml", lines, value=value)).inner_maps["big"].entries) == N


@pytest.mark.parametrize("kind", ["array", "percpu_hash"])
def test_new_arrays_and_per_cpu_maps_are_parsed_as_values(tmp_path: Path, kind: str, monkeypatch: pytest.MonkeyPatch) -> None:
    lines = [f"      {i}: {i * 5}\n" for i in range(N)]
    path = tmp_path / "c.yaml"
    path.write_text(f"inner_maps:\n  big:\n    type: {kind}\n    key: u32\n    value: u64\n    max_entries: {N}\n"
                    "    entries:\n" + "".join(lines))
    cached, whole = load_config([path]), load_config([path], use_cache=False)
    assert cached.inner_maps == whole.inner_maps and len(cached.inner_maps["big"].entries) == N
    changed = list(lines)
    changed[7] = "      7: 99\n"
    reads: list[bool] = []
    real = config_module.read_source
    monkeypatch.setattr(config_module, "read_source", lambda *a, **k: reads.append(True) or real(*a, **k))
    cached = load_config([write_raw(path, kind, changed)])
    assert reads == [True]  # one read: the changed map was parsed as values, the load did not start again
    assert cached.inner_maps == load_config([path], use_cache=False).inner_maps
    bad = list(lines)
    # An index beyond max_entries, a value out of range: reported with its line.
    bad[N // 2] = f"      {N + 5}: 1\n" if kind == "array" else f"      {N // 2}: -1\n"
    with pytest.raises(ConfigError) as e:
        load_config([write_raw(path, kind, bad)])
    assert f"c.yaml:{N // 2 + 8}" in str(e.value)


def write_raw(path: Path, kind: str, lines: list[str]) -> Path:
    path.write_text(f"inner_maps:\n  big:\n    type: {kind}\n    key: u32\n    value: u64\n    max_entries: {N}\n"
                    "    entries:\n" + "".join(lines))
    return path


@pytest.mark.parametrize("change,where,what", [
    (lambda lines: lines[:-1] + [lines[0]], N + 7, "duplicate"),                              # a key again, blocks apart
    (lambda lines: lines[:9] + ["      9: 18446744073709551616\n"] + lines[10:], 9 + 8, "18446744073709551616"),
    (lambda lines: lines[:5] + ["      7: -1\n"] + lines[6:], 5 + 8, "entry 7"),             # out of range for u64
    (lambda lines: lines[:N // 2] + ["        " + ln.lstrip() for ln in lines[N // 2:]], None, ""),  # deeper
])
def test_errors_in_a_new_map_are_reported_as_without_blocks(tmp_path: Path, change: Any, where: int | None,
                                                             what: str) -> None:
    path = write(tmp_path / "c.yaml", change(lines_of()))
    with pytest.raises(ConfigError) as cached:
        load_config([path])
    with pytest.raises(ConfigError) as whole:
        load_config([path], use_cache=False)
    assert str(cached.value) == str(whole.value)
    if where is not None:
        assert f"c.yaml:{where}" in str(cached.value) and what in str(cached.value)


# ---- the integer reader agrees with the YAML parser ----------------------------------------------


@st.composite
def integer_like_blocks(draw: Any) -> bytes:
    """Blocks of lines made mostly of what `_integer_lines` accepts, with its near misses."""
    token = st.one_of(st.integers(-2**65, 2**65).map(str), st.integers(0, 99).map(str),
                      st.sampled_from(["007", "-0", "-", "--1", "1-2", "", "1 2", " 3"]))
    sep = st.sampled_from([": ", ": ", ": ", ":", ": : ", "  ", " : ", ": 1: ", ""])
    line = st.tuples(st.sampled_from(["  ", "  ", "  ", "   ", " "]), token, sep, token)
    lines = draw(st.lists(line, min_size=1, max_size=6))
    return "".join(f"{ind}{k}{sep}{v}\n" for ind, k, sep, v in lines).encode()


@settings(max_examples=1000, deadline=None)
@given(integer_like_blocks())
def test_the_integer_reader_reads_what_yaml_reads_or_declines(text: bytes) -> None:
    """What a block of lines at the map's indentation gives the integer reader, YAML reads alike."""
    import yaml_rs

    from kmesh_apply.config.blocks import _integer_lines

    n = text.count(b"\n")
    got = _integer_lines(text, n, b"  ")
    if got is None:
        return
    try:
        parsed = yaml_rs.loads(text.decode())
    except yaml_rs.YAMLDecodeError as e:  # repeated keys are found later, across all blocks
        assert "duplicate" in str(e) and len(set(got[0])) < n
        return
    assert isinstance(parsed, dict) and len(parsed) == n
    assert got == (list(parsed), list(parsed.values()))


def test_without_the_cache_large_maps_are_parsed_block_by_block_too(tmp_path: Path, parsed_blocks: list[str],
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    from kmesh_apply.config import loader

    path = write(tmp_path / "c.yaml", lines_of())
    whole = load_config([path], use_cache=False)  # below MIN_BLOCKS_BYTES: parsed whole
    assert not parsed_blocks
    monkeypatch.setattr(loader, "MIN_BLOCKS_BYTES", 0)
    monkeypatch.setenv("KMESH_APPLY_CACHE_DIR", "off")
    streamed = load_config([path])
    assert len(parsed_blocks) > 20 and streamed.inner_maps == whole.inner_maps
    assert list(streamed.inner_maps["big"].entries.items()) == list(whole.inner_maps["big"].entries.items())
    bad = lines_of()
    bad[N // 3] = "      77: notanumber\n"
    with pytest.raises(ConfigError) as wrong:
        load_config([write(path, bad)])
    assert f"c.yaml:{N // 3 + 8}" in str(wrong.value) and "entry 77" in str(wrong.value)
