"""The config cache: files cut into map chunks, unchanged maps reused, results never changed by it."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from kmesh_apply.config import cache as cache_mod
from kmesh_apply.config import load_config, loader
from kmesh_apply.config.chunks import blank_out, split
from kmesh_apply.errors import ConfigError

HEADER = "# a test config\npin_root: /sys/fs/bpf/kmesh-cache-test\n"


def inner(name: str, entries: dict[int, int], value: str = "u64") -> str:
    lines = [f"  {name}:", "    type: hash", "    key: u32", f"    value: {value}", "    max_entries: 64", "    entries:"]
    lines += [f"      {k}: {v}" for k, v in entries.items()]
    return "\n".join(lines) + "\n"


def config_text(n: int = 4, changed: dict[int, str] | None = None) -> str:
    maps = [inner(f"m{i}", {k: i * 100 + k for k in range(8)}) for i in range(n)]
    for i, text in (changed or {}).items():
        maps[i] = text
    outer = "outer_maps:\n  outer:\n    type: hash_of_maps\n    key: u32\n    max_entries: 8\n    inner_map: m0\n    entries:\n"
    outer += "".join(f"      {i}: m{i}\n" for i in range(n))
    return HEADER + "inner_maps:\n" + "".join(maps) + "\n# trailing comment\n" + outer


@pytest.fixture
def cache_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private cache that takes every file, however small."""
    d = tmp_path / "cache"
    monkeypatch.setenv("KMESH_APPLY_CACHE_DIR", str(d))
    monkeypatch.setattr(cache_mod, "MIN_FILE_BYTES", 0)
    return d


@pytest.fixture
def parsed(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The texts handed to the YAML parser, to see what was reused."""
    seen: list[str] = []
    real = loader.parse_text

    def spy(text: str, file: str, *rest):  # type: ignore[no-untyped-def]
        seen.append(text)
        return real(text, file, *rest)

    monkeypatch.setattr(loader, "parse_text", spy)
    return seen


def same_config(a, b) -> None:  # type: ignore[no-untyped-def]
    assert list(a.inner_maps) == list(b.inner_maps)
    assert a.inner_maps == b.inner_maps
    assert a.outer_maps == b.outer_maps
    assert a.pin_root == b.pin_root


# ---- cutting a file into chunks ------------------------------------------------------------


def test_split_gives_each_map_its_exact_text() -> None:
    text = config_text()
    chunks = split(text.encode())
    assert chunks is not None
    assert [(c.section, c.name) for c in chunks] == [("inner_maps", f"m{i}") for i in range(4)] + [("outer_maps", "outer")]
    assert text[chunks[1].start:chunks[1].end] == inner("m1", {k: 100 + k for k in range(8)})
    assert text[chunks[3].start:chunks[3].end].endswith("\n\n# trailing comment\n")  # comments stay with the map above
    blanked = blank_out(text.encode(), chunks[:2]).decode()
    assert blanked.count("\n") == text.count("\n") and "m0" not in blanked.split("outer_maps")[0]


@pytest.mark.parametrize("text", [
    HEADER + "inner_maps:\n  a: &x\n    type: hash\n  b: *x\n",                 # anchors and aliases
    HEADER + "inner_maps: {a: {type: hash}}\n",                               # flow style section
    HEADER + "inner_maps:\n  a: {type: hash}\n",                              # a map on one line
    HEADER + "inner_maps:\n  a:\n    type: hash\n  a:\n    type: hash\n",     # a repeated name
    HEADER + "inner_maps:\n  a:\n    type: hash\n---\ninner_maps: {}\n",     # several documents
    HEADER + "inner_maps:\n  a:\n    type: !!str hash\n",                     # a tag
    HEADER + "inner_maps:\n  a:\n\ttype: hash\n",                             # a tab
    HEADER + "inner_maps:\n  a:\n    type: hash\ninner_maps:\n  b: {}\n",     # a repeated section
    "%YAML 1.2\n---\ninner_maps:\n  a:\n    type: hash\n",                   # a directive
    HEADER + "inner_maps:\n  - a\n",                                          # not a mapping
])
def test_split_refuses_what_it_cannot_reason_about(text: str) -> None:
    assert split(text.encode()) is None


def test_less_indented_content_is_left_to_the_parser(tmp_path: Path, cache_dir: Path) -> None:
    f = tmp_path / "c.yaml"
    f.write_text(config_text().replace("  m2:\n", " odd: 1\n  m2:\n"))
    for _ in range(2):
        with pytest.raises(ConfigError):
            load_config([f])
    assert not list(cache_dir.glob("*.pack"))


def test_split_without_maps() -> None:
    assert split(HEADER.encode()) == []
    assert split(b"inner_maps:\n\n# nothing yet\n") == []


# ---- loading through the cache -------------------------------------------------------------


def test_cached_load_equals_uncached(tmp_path: Path, cache_dir: Path, parsed: list[str]) -> None:
    f = tmp_path / "c.yaml"
    f.write_text(config_text())
    first = load_config([f])
    assert list(cache_dir.glob("*.pack"))
    second = load_config([f])
    same_config(first, second)
    same_config(second, load_config([f], use_cache=False))
    # the second load parsed only what no cache can hold: the top level and the outer map
    assert "m1:" not in parsed[1] and "outer:" in parsed[1] and parsed[1].count("\n") == f.read_text().count("\n")


def test_plain_maps_are_reused_like_inner_maps(tmp_path: Path, cache_dir: Path, parsed: list[str]) -> None:
    """`maps:` is cut and cached as `inner_maps:` is; a map moved from one section to the other is parsed again."""
    f = tmp_path / "c.yaml"
    plain = HEADER + "maps:\n" + inner("p0", {1: 1}) + inner("p1", {2: 2}) + config_text().removeprefix(HEADER)
    f.write_text(plain)
    first = load_config([f])
    second = load_config([f])
    same_config(first, second)
    assert "p0:" not in parsed[-1] and "m1:" not in parsed[-1]
    assert (second.inner_maps["p0"].section, second.inner_maps["p1"].section, second.inner_maps["m0"].section) == \
        ("maps", "maps", "inner_maps")
    f.write_text(plain.replace("maps:\n" + inner("p0", {1: 1}), "maps:\n", 1).replace("inner_maps:\n", "inner_maps:\n" + inner("p0", {1: 1})))
    moved = load_config([f])
    assert "p0:" in parsed[-1] and moved.inner_maps["p0"].section == "inner_maps"
    same_config(moved, load_config([f], use_cache=False))


def test_a_changed_map_is_parsed_again_and_others_reused(tmp_path: Path, cache_dir: Path, parsed: list[str]) -> None:
    f = tmp_path / "c.yaml"
    f.write_text(config_text())
    load_config([f])
    f.write_text(config_text(changed={2: inner("m2", {1: 11, 2: 22})}))
    cfg = load_config([f])
    assert "  m2:" in parsed[-1] and "  m1:" not in parsed[-1]
    assert cfg.inner_maps["m2"].entries == {(1).to_bytes(4, "little"): (11).to_bytes(8, "little"),
                                            (2).to_bytes(4, "little"): (22).to_bytes(8, "little")}
    same_config(cfg, load_config([f], use_cache=False))


def test_a_copy_elsewhere_reuses_the_newest_pack(tmp_path: Path, cache_dir: Path, parsed: list[str]) -> None:
    a, b = tmp_path / "a.yaml", tmp_path / "b.yaml"
    a.write_text(config_text())
    load_config([a])
    b.write_text(config_text(changed={0: inner("m0", {5: 5})}))
    same_config(load_config([b]), load_config([b], use_cache=False))
    assert "  m3:" not in parsed[1]


def test_an_error_in_a_changed_map_keeps_its_line(tmp_path: Path, cache_dir: Path) -> None:
    f = tmp_path / "c.yaml"
    f.write_text(config_text())
    load_config([f])
    f.write_text(config_text(changed={3: inner("m3", {1: 1, 2: 2**64})}))
    with pytest.raises(ConfigError) as e:
        load_config([f])
    line = next(i for i, text in enumerate(f.read_text().splitlines(), 1) if "2: 18446744073709551616" in text)
    assert [(d.file, d.line, d.map) for d in e.value.diagnostics] == [(str(f), line, "m3")]
    f.write_text(config_text(changed={3: inner("m3", {1: 1}) + "    bogus: 1\n"}))
    with pytest.raises(ConfigError, match="unknown key 'bogus'"):
        load_config([f])


def test_a_syntax_error_keeps_its_line(tmp_path: Path, cache_dir: Path) -> None:
    f = tmp_path / "c.yaml"
    f.write_text(config_text())
    load_config([f])
    broken = config_text(changed={3: inner("m3", {1: 1}) + "    entries: [\n"})
    f.write_text(broken)
    with pytest.raises(ConfigError) as e:
        load_config([f])
    assert e.value.diagnostics[0].line >= broken.splitlines().index("  m3:") + 1


def test_names_still_clash_across_files(tmp_path: Path, cache_dir: Path) -> None:
    a, b = tmp_path / "a.yaml", tmp_path / "b.yaml"
    a.write_text(config_text())
    load_config([a])
    b.write_text("inner_maps:\n" + inner("m1", {1: 1}))
    with pytest.raises(ConfigError, match="'m1' is defined again"):
        load_config([a, b])


def test_a_broken_or_stale_pack_is_ignored(tmp_path: Path, cache_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    f = tmp_path / "c.yaml"
    f.write_text(config_text())
    want = load_config([f], use_cache=False)
    load_config([f])
    for pack in cache_dir.glob("*.pack"):
        pack.write_bytes(b"\x00garbage")
    same_config(load_config([f]), want)
    monkeypatch.setattr(cache_mod, "CACHE_FORMAT", cache_mod.CACHE_FORMAT + 1)  # e.g. another version
    same_config(load_config([f]), want)


def test_a_directory_others_can_write_is_not_trusted(tmp_path: Path, cache_dir: Path) -> None:
    cache_dir.mkdir(mode=0o777)
    os.chmod(cache_dir, 0o777)
    f = tmp_path / "c.yaml"
    f.write_text(config_text())
    load_config([f])
    assert not list(cache_dir.iterdir())


def test_off_and_small_files_write_nothing(tmp_path: Path, cache_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    f = tmp_path / "c.yaml"
    f.write_text(config_text())
    monkeypatch.setenv("KMESH_APPLY_CACHE_DIR", "off")
    load_config([f])
    assert not cache_dir.exists()
    monkeypatch.setenv("KMESH_APPLY_CACHE_DIR", str(cache_dir))
    monkeypatch.setattr(cache_mod, "MIN_FILE_BYTES", 1 << 20)
    load_config([f])
    assert not list(cache_dir.glob("*.pack"))


def test_a_known_schema_shape_skips_jsonschema(tmp_path: Path, cache_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The shape counts the maps taken from the cache too, so loads that reuse more or fewer of
    them recognise the shape of the first, full load."""
    from kmesh_apply.config import validate

    f = tmp_path / "c.yaml"
    f.write_text(config_text())
    load_config([f])

    def refuse() -> None:
        raise AssertionError("jsonschema ran for a shape known to be valid")

    monkeypatch.setattr(validate, "_validator", refuse)
    load_config([f])  # all inner maps reused
    f.write_text(config_text(changed={1: inner("m1", {3: 3})}))  # same definitions, other entries
    load_config([f])
    f.write_text(config_text(changed={1: inner("m1", {3: 3}, value="u32")}))  # a new shape: validated
    with pytest.raises(AssertionError, match="jsonschema ran"):
        load_config([f])


def test_non_ascii_text_is_cut_by_bytes(tmp_path: Path, cache_dir: Path, parsed: list[str]) -> None:
    f = tmp_path / "c.yaml"
    f.write_text("# 网格配置\n" + config_text(changed={1: inner("m1", {1: 1}).replace("    type:", "    # 后端 ✓\n    type:")}),
                 encoding="utf-8")
    first = load_config([f])
    second = load_config([f])
    same_config(first, second)
    assert "后端" not in parsed[1] and "网格配置" in parsed[1]


def test_an_unchanged_file_is_not_cut_again(tmp_path: Path, cache_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    f = tmp_path / "c.yaml"
    f.write_text(config_text())
    want = load_config([f], use_cache=False)
    load_config([f])  # cuts and stores the cut with the pack
    packs = {p: p.stat().st_mtime_ns for p in cache_dir.glob("*.pack")}
    cuts: list[bytes] = []
    real = loader.split
    monkeypatch.setattr(loader, "split", lambda data: cuts.append(data) or real(data))
    same_config(load_config([f]), want)
    assert cuts == [] and {p: p.stat().st_mtime_ns for p in cache_dir.glob("*.pack")} == packs  # nothing rewritten
    f.write_text(config_text(changed={0: inner("m0", {7: 7})}))
    same_config(load_config([f]), load_config([f], use_cache=False))
    assert len(cuts) == 1  # a changed file is cut again


def test_the_newest_schema_shapes_are_kept(tmp_path: Path, cache_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cache_mod, "KEEP_SHAPES", 2)
    f = tmp_path / "c.yaml"
    for size in (32, 40, 48, 56):  # four shapes, one after another
        f.write_text(config_text(changed={1: inner("m1", {1: 1}).replace("max_entries: 64", f"max_entries: {size}")}))
        load_config([f])
    import jsonschema

    class Refuse:
        def __init__(self, *a: object) -> None:
            raise AssertionError("jsonschema ran")

    monkeypatch.setattr(jsonschema, "Draft202012Validator", Refuse)
    load_config([f])  # the last shape is among the kept ones


# ---- a file known by its status is not read --------------------------------------------------


@pytest.fixture
def settled(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Files count as settled 50 ms after their last change (instead of 2 s); returns the files read whole."""
    monkeypatch.setattr(loader, "SETTLED_NS", 50_000_000)
    read: list[str] = []
    real = loader._cache_rereader

    def spy(path: Path, layout: object, cache: cache_mod.Cache):  # type: ignore[no-untyped-def]
        inner_reread = real(path, layout, cache)  # type: ignore[arg-type]

        def reread() -> str | None:
            read.append(str(path))
            return inner_reread()

        return reread

    monkeypatch.setattr(loader, "_cache_rereader", spy)
    return read


def _settle() -> None:
    import time

    time.sleep(0.1)


def test_a_settled_unchanged_file_is_known_by_its_status(tmp_path: Path, cache_dir: Path, parsed: list[str],
                                                        settled: list[str], monkeypatch: pytest.MonkeyPatch) -> None:
    f = tmp_path / "c.yaml"
    f.write_text(config_text())
    want = load_config([f], use_cache=False)
    load_config([f])  # too fresh to be known by its status: read, cut, stored without it
    _settle()
    load_config([f])  # settled: stored again, with its status and the text around the inner maps
    reads: list[str] = []
    real_open = Path.open

    def spy_open(self: Path, mode: str = "r", *a: object, **k: object):  # type: ignore[no-untyped-def]
        fh = real_open(self, mode, *a, **k)  # type: ignore[arg-type]
        if self == f:
            real_read = fh.read
            fh.read = lambda *ra: reads.append("read") or real_read(*ra)  # type: ignore[method-assign]
        return fh

    monkeypatch.setattr(Path, "open", spy_open)
    same_config(load_config([f]), want)
    assert reads == [] and settled == []  # the file was opened and its status taken, never read
    assert "m1:" not in parsed[-1] and "outer:" in parsed[-1]
    # A change of the same size changes the status: the file is read again and the change is seen.
    _settle()
    f.write_text(config_text().replace("      3: 103\n", "      3: 999\n"))
    cfg = load_config([f])
    assert reads and cfg.inner_maps["m1"].entries[(3).to_bytes(4, "little")] == (999).to_bytes(8, "little")
    same_config(cfg, load_config([f], use_cache=False))


def test_a_problem_in_a_known_file_still_names_its_line(tmp_path: Path, cache_dir: Path, settled: list[str]) -> None:
    """The known file's text is not kept: a problem's line comes from reading it again, and from
    nowhere if the file changed since (no line rather than a wrong one)."""
    f = tmp_path / "c.yaml"
    f.write_text(config_text())
    _settle()
    load_config([f])
    src = loader.read_source(f, cache_mod.Cache.open())
    assert isinstance(src, loader.Source) and src.text is None and set(src.reused) == {"m0", "m1", "m2", "m3"}
    problem = loader.Problem(str(f), ("outer_maps", "outer", "entries", 2), "a problem", "outer")
    want = f.read_text().splitlines().index("      2: m2") + 1
    assert [(d.line, d.map) for d in loader.resolve([problem], {str(f): src})] == [(want, "outer")]
    assert settled == [str(f)]
    f.write_text("\n" + config_text())  # changed after it was parsed
    assert [d.line for d in loader.resolve([problem], {str(f): src})] == [0]


def test_a_fresh_file_is_not_known_by_its_status(tmp_path: Path, cache_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Within SETTLED_NS of a change, a later change could keep the same status: the file is read and hashed."""
    f = tmp_path / "c.yaml"
    f.write_text(config_text())
    load_config([f])
    load_config([f])
    pack = cache_mod.Cache.open().load(str(f))  # type: ignore[union-attr]
    assert pack.layout is not None and pack.layout[4] is None
