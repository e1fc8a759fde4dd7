"""Fuzzing the readers of hostile input (issue 20): mutated configs (YAML and JSON) thrown at the
loader, and mutated BTF objects at the BTF reader. Every input is either accepted or one clear error
(ConfigError; BtfFileError, TypeSpecError or no such type for BTF): never another exception, never
more than a second of CPU.

The suite runs a bounded, derandomized number of examples; KMESH_FUZZ_EXAMPLES raises it and
KMESH_FUZZ_RANDOM=1 draws fresh examples, for a longer run by hand:
    KMESH_FUZZ_EXAMPLES=20000 KMESH_FUZZ_RANDOM=1 .venv/bin/pytest -q tests/test_fuzz.py
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from conftest import REPO, private_block_cache
from kmesh_apply.config import load_config
from kmesh_apply.ctype import TypeSpecError, parse_type
from kmesh_apply.errors import ConfigError
from kmesh_apply.kernel.btf import BtfFileError, NamedTypes
from rawbtf import ENUM, INT, RawBtf, map_definition

EXAMPLES = int(os.environ.get("KMESH_FUZZ_EXAMPLES", "120"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None, database=None,
                derandomize=os.environ.get("KMESH_FUZZ_RANDOM") != "1",
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                       HealthCheck.data_too_large])
CPU_BOUND = 1.0  # seconds of CPU one input may take


def _cpu_bounded(work) -> None:
    start = time.process_time()
    work()
    spent = time.process_time() - start
    assert spent < CPU_BOUND, f"{spent:.2f}s of CPU"


# ---- configs -------------------------------------------------------------------------------

YAML_SEEDS = [
    (REPO / "examples" / "mesh" / "mesh.yaml").read_text(),
    """
pin_root: /sys/fs/bpf/kmesh-fuzz
inner_maps:
  routes:
    type: lpm_trie
    key: {lpm: ipv4}
    value: {struct: [{ip: ipv4}, {port: be16}, {w: u8:3}, {tag: 'char[6]'}], packed: true}
    max_entries: 64
    flags: [no_prealloc]
    entries:
      - {key: 10.0.0.0/8, value: {ip: 10.0.0.1, port: 80, w: 2, tag: web}}
  stats:
    type: percpu_array
    key: u32
    value: {union: [{a: u64}, {b: 'u8[8]'}]}
    max_entries: 4
    entries: {0: {a: 1}, 1: {per_cpu: [{a: 2}, {b: [1, 2, 3, 4, 5, 6, 7, 8]}]}}
  policy:
    type: hash
    key: 'bytes[4]'
    value: {enum: u32, values: {RANDOM: 0, STRICT: 1}}
    max_entries: 8
    entries: {'01020304': STRICT, '0a0b0c0d': 0}
outer_maps:
  o: {type: hash_of_maps, key: u64, max_entries: 4, inner_map: policy, entries: {1: policy}}
""",
    "a: &a {type: hash, key: u32, value: u32, max_entries: 4}\ninner_maps:\n  x: *a\n  y:\n    <<: *a\n",
]
JSON_SEEDS = [json.dumps({"inner_maps": {"m": {"type": "hash", "key": "u32", "value": "u64", "max_entries": 8,
                                               "entries": {"1": 2, "3": 4}}},
                          "outer_maps": {"o": {"type": "array_of_maps", "key": "u32", "max_entries": 2,
                                               "inner_map": "m", "entries": {"0": "m"}}}}, indent=1)]
TOKENS = ["&a ", "*a", "<<: *a", "[", "]", "{", "}", ": ", "\n  ", "\n- ", ", ", "9" * 5000, "-1", "0x",
          "0xffffffffffffffffff", "'", '"', "\\u0000", "\x00", "\x1b]0;x\x07", "\u202e", "\u2028", "\x85",
          "!!python/object/apply:os.system ['true']", "!!binary ", "? ", "|\n", ">-\n", "%YAML 1.1\n", "---\n",
          "...\n", "\t", "\r", "1e999", ".nan", "-.inf", "~", "null", "true", "{lpm: ipv6}", "struct",
          "max_entries", "no_prealloc", "inner_map", "entries", "key_size: 0", "value_size: 99999999",
          "type: array", "type: lpm_trie", "u8[4294967295]", "char[0]", "{array: u8, length: 0}",
          "[" * 300, "]" * 300, "{\"a\": " * 300, "\xff", "\ud800", "é", "网"]


@st.composite
def mutated(draw, seeds: list[str]) -> str:
    """A seed with a few edits: tokens put in, stretches cut out or repeated."""
    text = draw(st.sampled_from(seeds))
    for _ in range(draw(st.integers(1, 6))):
        at = draw(st.integers(0, len(text)))
        kind = draw(st.sampled_from(["insert", "replace", "cut", "repeat", "noise"]))
        if kind == "insert":
            text = text[:at] + draw(st.sampled_from(TOKENS)) + text[at:]
        elif kind == "replace":
            end = min(len(text), at + draw(st.integers(1, 40)))
            text = text[:at] + draw(st.sampled_from(TOKENS)) + text[end:]
        elif kind == "cut":
            text = text[:at] + text[min(len(text), at + draw(st.integers(1, 200))):]
        elif kind == "repeat":
            piece = text[at:at + draw(st.integers(1, 80))]
            text = text[:at] + piece * draw(st.integers(2, 50)) + text[at:]
        else:
            text = text[:at] + draw(st.text(min_size=1, max_size=20)) + text[at:]
    return text


def _load(path: Path, text: str) -> None:
    data = text.encode("utf-8", "surrogatepass")
    path.write_bytes(data)

    def work() -> None:
        try:
            load_config([path])
        except ConfigError as e:
            assert str(e) and "\x1b" not in str(e)

    _cpu_bounded(work)


@FUZZ
@given(text=mutated(YAML_SEEDS))
def test_mutated_yaml(tmp_path: Path, text: str) -> None:
    _load(tmp_path / "c.yaml", text)


@FUZZ
@given(text=mutated(JSON_SEEDS))
def test_mutated_json(tmp_path: Path, text: str) -> None:
    _load(tmp_path / "c.json", text)


@FUZZ
@given(text=mutated(YAML_SEEDS))
@example(text="\n")  # found here: a file of no document, kept by the cache
def test_mutated_yaml_through_the_block_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, text: str) -> None:
    """The config cache and block parsing take every file here (a large map's path on small files)."""
    private_block_cache(tmp_path, monkeypatch, 64)
    _load(tmp_path / "c.yaml", text)
    _load(tmp_path / "c.yaml", text + "\n")  # again: what the cache kept is read back


JSON_VALUES = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=10),
                           lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                                                          max_size=4), max_leaves=30)


@FUZZ
@given(definition=st.dictionaries(st.sampled_from(["type", "key", "value", "key_size", "value_size", "max_entries",
                                                   "flags", "entries", "update", "inner_map", "object_map"]),
                                  JSON_VALUES, max_size=8))
def test_generated_definitions(tmp_path: Path, definition: dict) -> None:
    """Definitions built from any JSON values, in both sections."""
    for section in ("inner_maps", "outer_maps"):
        _load(tmp_path / "c.json", json.dumps({section: {"m": definition}}))


# ---- BTF -------------------------------------------------------------------------------------

NAMES = ["struct s", "union u", "enum e", "t", "arr", "struct wide", "nope"]


def _seed_btf() -> bytes:
    b = RawBtf()
    u32 = b.int_("unsigned int", 4)
    u8 = b.int_("unsigned char", 1)
    ch = b.int_("char", 1, 2)
    index = b.int_("__ARRAY_SIZE_TYPE__", 4)
    e = b.enum("e", 4, [("A", 0), ("B", 1)])
    name = b.array(ch, index, 6)
    s = b.struct("s", 16, [("a", u32, 0), ("b", u8, 32), ("tag", name, 40), ("k", e, 96)])
    b.struct("u", 4, [("x", u32, 0), ("y", u8, 0)], union=True)
    b.typedef("t", s)
    b.typedef("arr", b.array(s, index, 3))
    b.struct("wide", 24, [("s", s, 0), ("n", u32, 128), ("m", u32, 160)])
    map_definition(b, "mp", u32, s)
    return b.bytes()


SEED_BTF = _seed_btf()
WORDS = [0, 1, 2, 3, 7, 15, 16, 31, 255, 0x7FFF, 0xFFFF, 0x10000, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFF,
         INT << 24, ENUM << 24, (4 << 24) | 0xFFFF, (8 << 24) | 1, (1 << 31) | (4 << 24) | 2]


@st.composite
def mutated_btf(draw) -> bytes:
    data = bytearray(SEED_BTF)
    for _ in range(draw(st.integers(1, 8))):
        kind = draw(st.sampled_from(["word", "byte", "cut", "grow"]))
        if kind == "word":  # the format is 32-bit words: ids, offsets, sizes, info
            at = draw(st.integers(0, len(data) // 4 - 1)) * 4
            word = draw(st.sampled_from(WORDS) | st.integers(0, 0xFFFFFFFF))
            data[at:at + 4] = word.to_bytes(4, "little")
        elif kind == "byte":
            at = draw(st.integers(0, len(data) - 1))
            data[at] = draw(st.integers(0, 255))
        elif kind == "cut":
            del data[draw(st.integers(24, len(data))):]
        else:
            data += draw(st.binary(min_size=1, max_size=64))
    return bytes(data)


def read_btf(path: Path) -> None:
    """What a config can ask of a BTF file: its named types (as parse_type takes them) and a map's
    declaration; errors are the reader's own."""
    named = NamedTypes()
    try:
        named.add(str(path))
    except BtfFileError:
        return
    with named:
        for name in NAMES:
            try:
                parse_type(name, named)
            except TypeSpecError:
                pass
        try:
            named.map_definition("mp")
        except TypeSpecError:
            pass


def _read_btf(path: Path, blob: bytes) -> None:
    path.write_bytes(blob)
    _cpu_bounded(lambda: read_btf(path))


def test_the_seed_btf_is_read(tmp_path: Path) -> None:
    """The fuzzed BTF starts from types the reader takes: the mutations, not the seed, make it hostile."""
    path = tmp_path / "seed.btf"
    path.write_bytes(SEED_BTF)
    with NamedTypes() as named:
        named.add(str(path))
        assert parse_type("struct s", named).size == 16 and parse_type("arr", named).size == 48
        assert named.map_definition("mp")[0] == {"type": "hash", "key": "u32", "value": parse_type("struct s", named).spec(),
                                              "max_entries": 8}


@FUZZ
@given(blob=mutated_btf())
def test_mutated_btf(tmp_path: Path, blob: bytes) -> None:
    _read_btf(tmp_path / "types.btf", blob)


@FUZZ
@given(blob=mutated_btf())
def test_mutated_btf_through_a_config(tmp_path: Path, blob: bytes) -> None:
    (tmp_path / "types.btf").write_bytes(blob)
    _load(tmp_path / "c.yaml", "btf: [types.btf]\ninner_maps:\n  a: {type: hash, key: u32, value: struct s, max_entries: 4}\n"
                               "  b: {object_map: mp}\n  c: {type: array, key: u32, value: arr, max_entries: 2}\n")
