"""Property tests: for random types and values, what the kernel holds after an apply, read by bpftool
(its raw bytes, and its `formatted` output through the BTF the tool wrote, compared with the config's
values by tests/bpftool_view.py, which shares no code with the tool), per-CPU values that differ per
CPU included; and the config just applied plans clean, and so does what `show` prints of it (through
YAML text, read back by the same YAML 1.2 reader as configs).

Types are drawn from the whole type language (scalars, enums, bitfields, nested and packed
structs, unions, arrays of anything); each example applies one config to a fresh pin root."""

from __future__ import annotations

import string
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from bpftool_view import raw, same, view
from conftest import _unique_root, bpftool_json
from kmesh_apply import api
from kmesh_apply.config import dump_yaml, load_config
from kmesh_apply.config.codecs import encode
from kmesh_apply.kernel.maps import possible_cpus
from kmesh_apply.ctype import Addr, Array, Bool, Bytes, Chars, CType, CUnion, Enum, Int, Struct, parse_type
from kmesh_apply.errors import ConfigError

SCALARS = ["u8", "u16", "u32", "u64", "i8", "i16", "i32", "i64", "be16", "be32", "be64", "bool", "ipv4", "ipv6", "mac"]
HOST_INTS = ["u8", "u16", "u32", "u64", "i8", "i16", "i32", "i64"]
names = st.text(alphabet=string.ascii_lowercase, min_size=1, max_size=6)


@st.composite
def enums(draw: st.DrawFn) -> dict[str, Any]:
    base = draw(st.sampled_from(HOST_INTS))
    t = Int(base)
    lo, hi = (-(1 << (8 * t.size - 1)), (1 << (8 * t.size - 1)) - 1) if t.signed else (0, (1 << 8 * t.size) - 1)
    values = draw(st.dictionaries(names.map(str.upper), st.integers(lo, hi), max_size=4))
    return {"enum": base, "values": values}


leaf_specs = st.one_of(
    st.sampled_from(SCALARS),
    st.builds(lambda w, n: f"{w}[{n}]", st.sampled_from(["bytes", "char"]), st.integers(1, 20)),
    st.builds(lambda t, n: f"{t}[{n}]", st.sampled_from(SCALARS), st.integers(1, 4)),
    st.builds(lambda t, n, m: f"{t}[{n}][{m}]", st.sampled_from(HOST_INTS), st.integers(1, 3), st.integers(1, 3)),
    enums(),
)


@st.composite
def struct_fields(draw: st.DrawFn, children: st.SearchStrategy[Any]) -> list[dict[str, Any]]:
    out = []
    for name in draw(st.lists(names, min_size=1, max_size=4, unique=True)):
        if draw(st.integers(0, 5)) == 0:  # a bitfield
            base = draw(st.sampled_from(HOST_INTS))
            out.append({name: f"{base}:{draw(st.integers(1, 8 * Int(base).size))}"})
        else:
            out.append({name: draw(children)})
    return out


def _compound(children: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.one_of(
        st.builds(lambda f, p: {"struct": f, "packed": p}, struct_fields(children), st.booleans()),
        st.builds(lambda f: {"union": [{n: t} for n, t in f.items()]},
                  st.dictionaries(names, children, min_size=1, max_size=3)),
        st.builds(lambda t, n: {"array": t, "length": n}, children, st.integers(1, 3)),
    )


type_specs = st.recursive(leaf_specs, _compound, max_leaves=6)


def values_of(t: CType) -> st.SearchStrategy[Any]:
    if isinstance(t, Int):
        lo, hi = (-(1 << (8 * t.size - 1)), (1 << (8 * t.size - 1)) - 1) if t.signed else (0, (1 << 8 * t.size) - 1)
        return st.integers(lo, hi)
    if isinstance(t, Bool):
        return st.booleans()
    if isinstance(t, Enum):
        return st.one_of(values_of(t.base), *([st.sampled_from([n for n, _ in t.values])] if t.values else []))
    if isinstance(t, Addr):
        if t.family == "mac":
            return st.binary(min_size=6, max_size=6).map(lambda b: b.hex(":"))
        return st.ip_addresses(v=4 if t.family == "ipv4" else 6).map(str)
    if isinstance(t, Bytes):
        return st.binary(min_size=t.size, max_size=t.size).map(bytes.hex)
    if isinstance(t, Chars):  # bpftool 7's JSON writer does not escape \\ or " in a char array printed per character
        return st.text(st.characters(codec="utf-8", exclude_characters='\0\\"'), max_size=t.size).filter(
            lambda s: len(s.encode()) <= t.size)
    if isinstance(t, Array):
        return st.lists(values_of(t.elem), min_size=t.length, max_size=t.length)
    if isinstance(t, Struct):
        fields = {}
        for f in t.fields:
            if f.bits:
                signed = isinstance(f.type, Int) and f.type.signed
                lo, hi = (-(1 << (f.bits - 1)), (1 << (f.bits - 1)) - 1) if signed else (0, (1 << f.bits) - 1)
                fields[f.name] = st.integers(lo, hi)
            else:
                fields[f.name] = values_of(f.type)
        return st.fixed_dictionaries(fields)
    if isinstance(t, CUnion):
        return st.one_of(*[values_of(f.type).map(lambda v, n=f.name: {n: v}) for f in t.fields])
    raise AssertionError(t)


@st.composite
def configs(draw: st.DrawFn) -> dict[str, Any]:
    key_t = parse_type(key_spec := draw(type_specs))
    value_t = parse_type(value_spec := draw(type_specs))
    entries: dict[bytes, dict[str, Any]] = {}
    for k, v in draw(st.lists(st.tuples(values_of(key_t), values_of(value_t)), max_size=4)):
        entries[encode(key_t, k)] = {"key": k, "value": v}
    array_values = draw(st.lists(values_of(value_t), min_size=1, max_size=3))
    ncpus = possible_cpus()
    per_cpu = [{"key": e["key"], "value": {"per_cpu": draw(st.lists(values_of(value_t), min_size=ncpus, max_size=ncpus))}}
               for e in list(entries.values())[:2]]
    return {"inner_maps": {
        "h": {"type": "hash", "key": key_spec, "value": value_spec, "max_entries": 8, "entries": list(entries.values())},
        "p": {"type": "percpu_hash", "key": key_spec, "value": value_spec, "max_entries": 8, "entries": per_cpu},
        "a": {"type": "array", "key": "u32", "value": value_spec, "max_entries": 4,
              "entries": [{"key": i, "value": v} for i, v in enumerate(array_values)]},
    }, "outer_maps": {  # outer maps carry no BTF: show gives their key type back from its record
        "o": {"type": "hash_of_maps", "key": key_spec, "max_entries": 8, "inner_map": "a",
              "entries": [{"key": e["key"], "value": "a"} for e in entries.values()]},
    }}


BITFIELD_ENUM = {"struct": [{"a": "u8:1"}, {"aa": {"enum": "u8", "values": {"X": 1}}}]}


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(configs())
@example({"inner_maps": {  # an enum beside a bitfield is written as a bitfield of its own width: bpftool prints hex
    "h": {"type": "hash", "key": "u8", "value": BITFIELD_ENUM, "max_entries": 8, "entries": []},
    "p": {"type": "percpu_hash", "key": "u8", "value": BITFIELD_ENUM, "max_entries": 8, "entries": []},
    "a": {"type": "array", "key": "u32", "value": BITFIELD_ENUM, "max_entries": 4,
          "entries": [{"key": 0, "value": {"a": 1, "aa": "X"}}]}},
    "outer_maps": {"o": {"type": "hash_of_maps", "key": "u8", "max_entries": 8, "inner_map": "a", "entries": []}}})
def test_applied_config_and_its_show_plan_clean(doc: dict[str, Any]) -> None:
    with _unique_root("prop") as root:
        cfg = load_config(inline=doc, use_cache=False)
        api.converge(cfg, str(root))
        assert_bpftool_reads(doc, root)
        again = api.plan(cfg, str(root))
        assert not again.has_changes, api.render_text(again)
        shown = dump_yaml(api.show(str(root)))
        written: list[str] = []
        api.show_yaml(str(root), written.append)  # what `kmesh-apply show` prints: the same bytes
        assert "".join(written) == shown
        back = api.plan(load_config(inline=shown, use_cache=False), str(root))
        assert not back.has_changes, shown + api.render_text(back)


def assert_bpftool_reads(doc: dict[str, Any], root: Path) -> None:
    """Every entry of every map, as bpftool dumps it, against the config's entries: the raw bytes are the
    encoded key and value, and `formatted` is what bpftool_view works out from the config's values."""
    inner = doc["inner_maps"]
    for name, spec in inner.items():
        key_t, value_t = parse_type(spec["key"]), parse_type(spec["value"])
        want = {encode(key_t, e["key"]): e for e in spec["entries"]}
        dump = bpftool_json("map", "dump", "pinned", str(root / name)) or []
        if spec["type"] == "array":  # every index is there; those not written are zero
            dump = [d for d in dump if raw(d["key"]) in want]
        assert sorted(raw(d["key"]) for d in dump) == sorted(want), name
        for d in dump:
            e = want[raw(d["key"])]
            assert same(d["formatted"]["key"], view(key_t, e["key"])), (name, d["formatted"]["key"], e["key"])
            per_cpu = e["value"]["per_cpu"] if spec["type"] == "percpu_hash" else None
            if per_cpu is None:
                assert raw(d["value"]) == encode(value_t, e["value"]), (name, e)
                assert same(d["formatted"]["value"], view(value_t, e["value"])), (name, d["formatted"], e["value"])
                continue
            assert [raw(c["value"]) for c in d["values"]] == [encode(value_t, v) for v in per_cpu], (name, e)
            printed = [c["value"] for c in d["formatted"]["values"]]
            assert all(same(p, view(value_t, v)) for p, v in zip(printed, per_cpu, strict=True)), (name, printed, per_cpu)
    outer = doc["outer_maps"]["o"]
    inner_id = bpftool_json("map", "show", "pinned", str(root / outer["inner_map"]))["id"]
    slots = {raw(d["key"]): int.from_bytes(raw(d["value"]), "little")
             for d in bpftool_json("map", "dump", "pinned", str(root / "o")) or []}  # no BTF: raw bytes only
    assert slots == {encode(parse_type(outer["key"]), e["key"]): inner_id for e in outer["entries"]}


NESTED_ERRORS = """\
inner_maps:
  a:
    type: hash
    key: u32
    value:
      struct:
        - ip: ipv4
        - port: u24
    max_entries: 4
  b:
    type: hash
    key: u32
    value:
      array:
        struct:
          - inner:
              struct:
                - x: u16
                - y: {enum: be32}
      length: 2
    max_entries: 4
"""


def test_errors_in_nested_types_name_the_field_line(tmp_path) -> None:
    path = tmp_path / "nested.yaml"
    path.write_text(NESTED_ERRORS)
    with pytest.raises(ConfigError) as err:
        load_config([path])
    found = {(d.map, d.line): d.message for d in err.value.diagnostics}
    assert set(found) == {("a", 8), ("b", 19)}
    assert found[("a", 8)].startswith("value field 'port': unknown type 'u24'")
    assert found[("b", 19)].startswith("value field 'inner.y': an enum's base is a host-order integer type")
