"""Entries converted from one layout to another (kmesh_apply.convert): pure, no kernel.

The property test draws a random key and value layout, edits it as a new version of a data plane
would (fields added with or without defaults, removed, reordered, renamed, nested, widened,
narrowed, enum values renumbered or dropped, arrays and strings resized, union members changed,
bitfields resized), draws random entries, and checks the converter against a reference written
on decoded values, field by field: every converted entry equals what the reference expects, and
the conversion is refused exactly when the reference finds data that would be lost (a value that
does not fit, two old keys that become one, more entries than the new max_entries).
"""

from __future__ import annotations

import itertools
import struct
from typing import Any

import pytest
from hypothesis import HealthCheck, assume, event, given, settings
from hypothesis import strategies as st

from kmesh_apply.config.codecs import decode, encode
from kmesh_apply.convert import LayoutError, MigrationRefused, conversion, parse_path, path_text
from kmesh_apply.ctype import (Array, Bool, Bytes, Chars, CType, CUnion, Enum, Int, Raw, Struct, TypeSpecError,
                               parse_type)
from kmesh_apply.entries import Entries

INTS = ["u8", "u16", "u32", "u64", "i8", "i16", "i32", "i64", "be16", "be32", "be64"]
HOST_INTS = ["u8", "u16", "u32", "u64", "i8", "i16", "i32", "i64"]
ENUM_NAMES = ["RED", "GREEN", "BLUE", "CYAN", "GREY"]


def _range(name: str) -> tuple[int, int]:
    t = Int(name)
    return (-(1 << (8 * t.size - 1)), (1 << (8 * t.size - 1)) - 1) if t.signed else (0, (1 << 8 * t.size) - 1)


# ---------------------------------------------------------------- random layouts and their edits


class Names:
    """Fresh field names, with a prefix so key and value fields never share one."""

    def __init__(self, prefix: str):
        self.prefix, self.n = prefix, itertools.count()

    def __call__(self) -> str:
        return f"{self.prefix}{next(self.n)}"


@st.composite
def enum_specs(draw: st.DrawFn) -> dict[str, Any]:
    base = draw(st.sampled_from(HOST_INTS))
    lo, hi = _range(base)
    names = draw(st.lists(st.sampled_from(ENUM_NAMES), min_size=1, max_size=4, unique=True))
    numbers = draw(st.lists(st.integers(max(lo, -3), min(hi, 300)), min_size=len(names), max_size=len(names), unique=True))
    return {"enum": base, "values": dict(zip(names, numbers))}


@st.composite
def type_specs(draw: st.DrawFn, names: Names, depth: int = 0) -> Any:
    kinds = ["int", "int", "bool", "enum", "chars", "bytes", "array"] + (["struct", "union"] if depth < 2 else [])
    kind = draw(st.sampled_from(kinds))
    if kind == "int":
        return draw(st.sampled_from(INTS))
    if kind == "bool":
        return "bool"
    if kind == "enum":
        return draw(enum_specs())
    if kind in ("chars", "bytes"):
        return f"{'char' if kind == 'chars' else 'bytes'}[{draw(st.integers(1, 6))}]"
    if kind == "array":
        return f"{draw(st.sampled_from(INTS))}[{draw(st.integers(1, 4))}]"
    if kind == "union":
        members = [{names(): draw(st.sampled_from(INTS + ["u32[2]", "u16[3]"]))} for _ in range(draw(st.integers(1, 3)))]
        return {"union": members}
    return {"struct": draw(field_lists(names, depth + 1)), "packed": draw(st.booleans())}


@st.composite
def field_lists(draw: st.DrawFn, names: Names, depth: int) -> list[dict[str, Any]]:
    out = []
    for _ in range(draw(st.integers(1, 4))):
        if draw(st.integers(0, 4)) == 0:  # a bitfield
            base = draw(st.sampled_from(HOST_INTS + ["bool"]))
            width = 1 if base == "bool" else draw(st.integers(1, 8 * Int(base).size))
            out.append({names(): f"{base}:{width}"})
        else:
            out.append({names(): draw(type_specs(names, depth))})
    return out


class Edits:
    """What an edit script asks of the converter: renamed and defaults, by path text."""

    def __init__(self, names: Names):
        self.names = names
        self.renamed: dict[str, str] = {}
        self.defaults: dict[str, Any] = {}


def _bitfield(spec: Any) -> tuple[str, int] | None:
    if isinstance(spec, str) and ":" in spec:
        base, width = spec.split(":")
        return base, int(width)
    return None


@st.composite
def retyped(draw: st.DrawFn, spec: Any, edits: Edits, new_path: tuple, old_path: tuple) -> Any:
    """A new version of one field's type, of the same kind."""
    bf = _bitfield(spec)
    if bf is not None:
        base = draw(st.sampled_from(HOST_INTS + ["bool"]))
        return f"{base}:{1 if base == 'bool' else draw(st.integers(1, 8 * Int(base).size))}"
    if spec in INTS or spec == "bool":
        return draw(st.sampled_from(INTS + ["bool"]))
    if isinstance(spec, str) and spec.startswith(("char[", "bytes[")):
        return f"{spec.split('[')[0]}[{draw(st.integers(1, 6))}]"
    if isinstance(spec, str):  # an array of integers
        elem = spec.split("[")[0]
        return f"{draw(st.sampled_from([elem] + INTS))}[{draw(st.integers(1, 5))}]"
    if "enum" in spec:
        values = dict(spec["values"])
        for name in list(values):
            choice = draw(st.integers(0, 3))
            if choice == 0:
                values[name] = draw(st.integers(0, 120))
            elif choice == 1 and len(values) > 1:
                del values[name]
        if draw(st.booleans()):
            values.setdefault(draw(st.sampled_from(ENUM_NAMES)), draw(st.integers(0, 120)))
        values = {n: v for n, v in values.items() if v not in list(values.values())[:list(values).index(n)]}
        base = draw(st.sampled_from(HOST_INTS)) if draw(st.booleans()) else spec["enum"]
        lo, hi = _range(base)
        return {"enum": base, "values": {n: v for n, v in values.items() if lo <= v <= hi}}
    if "union" in spec:
        members = [dict(m) for m in spec["union"]]
        out = []
        for m in members:
            (name, t), = m.items()
            choice = draw(st.integers(0, 3))
            if choice == 0 and len(members) > 1:
                continue  # removed
            out.append({name: draw(retyped(t, edits, new_path + (name,), old_path + (name,))) if choice == 1 else t})
        if not out or draw(st.integers(0, 3)) == 0:
            out.append({edits.names(): draw(st.sampled_from(INTS + ["u32[4]"]))})
        return {"union": out}
    return {"struct": draw(edited_fields(spec["struct"], edits, new_path, old_path)), "packed": draw(st.booleans())}


@st.composite
def edited_fields(draw: st.DrawFn, fields: list[dict[str, Any]], edits: Edits, new_base: tuple = (),
                  old_base: tuple = ()) -> list[dict[str, Any]]:
    out = []
    for f in fields:
        (name, spec), = f.items()
        action = draw(st.sampled_from(["keep", "keep", "retype", "retype", "remove", "rename", "nest"]))
        old_path = old_base + (name,)
        if action == "remove":
            continue
        if action == "keep":
            out.append({name: spec})
        elif action == "retype":
            out.append({name: draw(retyped(spec, edits, new_base + (name,), old_path))})
        elif action == "rename":
            new = edits.names()
            edits.renamed[path_text(new_base + (new,))] = path_text(old_path)
            out.append({new: spec if draw(st.booleans()) else draw(retyped(spec, edits, new_base + (new,), old_path))})
        elif _bitfield(spec) is None and "." not in path_text(new_base):  # nest: the field moves into a new struct
            outer = edits.names()
            edits.renamed[path_text(new_base + (outer, name))] = path_text(old_path)
            out.append({outer: {"struct": [{name: spec}]}})
        else:
            out.append({name: spec})
    for _ in range(draw(st.integers(0, 2))):  # new fields, some with defaults
        new = edits.names()
        spec = draw(st.sampled_from(INTS + ["bool", "char[3]", "u16[2]", "u8:3", "i16:5"]))
        if draw(st.booleans()):
            t = parse_type(spec.split(":")[0]) if _bitfield(spec) is None else None
            edits.defaults[path_text(new_base + (new,))] = (draw(values_of(t)) if t is not None
                                                              else draw(st.integers(0, 3)))
        out.append({new: spec})
    if not out:
        out.append({edits.names(): "u32"})
    return draw(st.permutations(out)) if draw(st.integers(0, 3)) == 0 else out


@st.composite
def values_of(draw: st.DrawFn, t: CType, bits: int = 0) -> Any:
    """A value as a user writes it; integers are often small, so narrowed fields often still fit."""
    if bits:
        if isinstance(t, Bool):
            return draw(st.booleans())
        lo, hi = (-(1 << (bits - 1)), (1 << (bits - 1)) - 1) if isinstance(t, Int) and t.signed else (0, (1 << bits) - 1)
        return draw(st.one_of(st.integers(max(lo, 0), min(hi, 3)), st.integers(lo, hi)))
    if isinstance(t, Int):
        lo, hi = _range(t.name)
        return draw(st.one_of(st.integers(max(lo, 0), min(hi, 300)), st.integers(lo, hi)))
    if isinstance(t, Bool):
        return draw(st.booleans())
    if isinstance(t, Enum):
        lo, hi = _range(t.base.name)
        return draw(st.one_of(st.sampled_from([n for n, _ in t.values]), st.integers(max(lo, 0), min(hi, 130))))
    if isinstance(t, Chars):
        return draw(st.text(alphabet="abé", max_size=t.size).map(lambda s: s.encode()[:t.size].decode(errors="ignore")))
    if isinstance(t, Bytes):
        used = draw(st.integers(0, t.size))
        return (draw(st.binary(min_size=used, max_size=used)) + bytes(t.size - used)).hex()
    if isinstance(t, Array):
        return [draw(values_of(t.elem)) for _ in range(t.length)]
    if isinstance(t, CUnion):
        m = draw(st.sampled_from(t.fields))
        return {m.name: draw(values_of(m.type))}
    assert isinstance(t, Struct)
    return {f.name: draw(values_of(f.type, f.bits)) for f in t.fields}


# ---------------------------------------------------------------- the reference: decoded values, field by field


class Lost(Exception):
    """The entry cannot keep its data."""


class Reference:
    def __init__(self, old_root: CType, old_value: Any, renamed: dict[tuple, tuple], defaults: dict[tuple, Any]):
        self.old_root, self.old_value, self.renamed, self.defaults = old_root, old_value, renamed, defaults

    def at(self, path: tuple) -> tuple[CType, int, Any]:
        t, bits, v = self.old_root, 0, self.old_value
        for part in path:
            assert isinstance(t, Struct)
            f = next(f for f in t.fields if f.name == part)
            t, bits, v = f.type, f.bits, v[part]
        return t, bits, v

    def new(self, t: CType, bits: int, path: tuple) -> Any:
        """A field the old layout lacks: its default, else zero, with renamed fields inside it."""
        if path in self.renamed:
            return self.convert(*self.at(self.renamed[path]), t, bits, path)
        if path in self.defaults:
            return self.defaults[path]
        if isinstance(t, Struct):
            return {f.name: self.new(f.type, f.bits, path + (f.name,)) for f in t.fields}
        if bits:
            return False if isinstance(t, Bool) else 0
        return decode(t, bytes(t.size))

    def convert(self, s: CType, sbits: int, v: Any, d: CType, dbits: int, path: tuple) -> Any:
        if isinstance(d, Struct):
            assert isinstance(s, Struct)
            old = {f.name: f for f in s.fields}
            out = {}
            for f in d.fields:
                p = path + (f.name,)
                if p in self.renamed:
                    out[f.name] = self.convert(*self.at(self.renamed[p]), f.type, f.bits, p)
                elif f.name in old:
                    out[f.name] = self.convert(old[f.name].type, old[f.name].bits, v[f.name], f.type, f.bits, p)
                else:
                    out[f.name] = self.new(f.type, f.bits, p)
            return out
        if isinstance(d, (Int, Bool, Enum)):
            return self.number(s, v, d, dbits)
        if isinstance(d, (Chars, Bytes)):
            data = encode(s, v)
            if any(data[d.size:]):
                raise Lost
            return decode(d, data[:d.size].ljust(d.size, b"\0"))
        if isinstance(d, Array):
            assert isinstance(s, Array)
            kept = [self.convert(s.elem, 0, e, d.elem, 0, path) for e in v[:d.length]]
            if any(encode(s.elem, e) != bytes(s.elem.size) for e in v[d.length:]):
                raise Lost
            return kept + [decode(d.elem, bytes(d.elem.size))] * (d.length - len(kept))
        assert isinstance(d, CUnion) and isinstance(s, CUnion)
        if s == d:
            return v
        data, span = encode(s, v), max(f.type.size for f in s.fields)
        new = {f.name: f for f in d.fields}
        lost = False
        for m in s.fields:
            if any(data[m.type.size:span]) or m.name not in new:
                continue
            try:
                return {m.name: self.convert(m.type, 0, decode(m.type, data[:m.type.size]), new[m.name].type, 0, path)}
            except Lost:
                lost = True
        if lost:
            raise Lost
        return decode(d, bytes(d.size))

    def number(self, s: CType, v: Any, d: CType, dbits: int) -> Any:
        if isinstance(v, str):  # an enum's name
            assert isinstance(s, Enum)
            if isinstance(d, Enum):
                if v not in dict(d.values):
                    raise Lost
                n = dict(d.values)[v]
                lo, hi = _bits_range(d, dbits)
                if not lo <= n <= hi:
                    raise Lost
                return v
            v = dict(s.values)[v]
        n = int(v)
        lo, hi = _bits_range(d, dbits)
        if not lo <= n <= hi:
            raise Lost
        return bool(n) if isinstance(d, Bool) else n


def _bits_range(t: CType, bits: int) -> tuple[int, int]:
    base = t.base if isinstance(t, Enum) else t
    if isinstance(base, Bool):
        return 0, 1
    assert isinstance(base, Int)
    width = bits or 8 * base.size
    return (-(1 << (width - 1)), (1 << (width - 1)) - 1) if base.signed else (0, (1 << width) - 1)


def _root_spec(fields: list[dict[str, Any]], packed: bool) -> Any:
    return {"struct": fields, "packed": packed}


@st.composite
def migrations(draw: st.DrawFn) -> tuple:
    sides = []
    edits_all = []
    for prefix in ("k", "v"):
        names = Names(prefix)
        old_fields = draw(field_lists(names, 1))
        edits = Edits(names)
        new_fields = draw(edited_fields(old_fields, edits))
        try:
            old, new = parse_type(_root_spec(old_fields, draw(st.booleans()))), parse_type(_root_spec(new_fields, draw(st.booleans())))
        except TypeSpecError:
            assume(False)
        sides.append((old, new))
        edits_all.append(edits)
    renamed = {**edits_all[0].renamed, **edits_all[1].renamed}
    defaults = {**edits_all[0].defaults, **edits_all[1].defaults}
    (old_key, new_key), (old_value, new_value) = sides
    keys = draw(st.lists(values_of(old_key), min_size=1, max_size=12))
    unique = list({encode(old_key, k): k for k in keys}.values())
    values = [draw(values_of(old_value)) for _ in unique]
    max_entries = draw(st.one_of(st.none(), st.integers(max(len(unique) - 1, 1), len(unique) + 1)))
    return old_key, new_key, old_value, new_value, renamed, defaults, unique, values, max_entries


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much,
                                                                   HealthCheck.data_too_large])
@given(migrations())
def test_converted_entries_are_the_field_by_field_expectation(case: tuple) -> None:
    old_key, new_key, old_value, new_value, renamed, defaults, keys, values, max_entries = case
    conv = conversion(old_key, new_key, old_value, new_value, defaults, renamed)
    for change in {c.kind for d in conv.diffs for c in d.changes}:
        event(f"change: {change}")
    for (old, new), diff in zip(((old_key, new_key), (old_value, new_value)), conv.diffs):
        assert all(c.path for c in diff.changes if c.kind in ("added", "removed", "moved"))
        if old == new and not any(k.startswith(("k", "key.")) == (diff.part == "key") for k in (*renamed, *defaults)):
            assert not diff.changed
    old_entries = Entries(old_key.size, old_value.size, b"".join(encode(old_key, k) for k in keys),
                          b"".join(encode(old_value, v) for v in values))
    parsed_renamed = {parse_path(n): parse_path(o) for n, o in renamed.items()}
    parsed_defaults = {parse_path(p): v for p, v in defaults.items()}
    expected: list[tuple[bytes, bytes]] | None = []
    assert expected is not None
    for k, v in zip(keys, values):
        k, v = decode(old_key, encode(old_key, k)), decode(old_value, encode(old_value, v))  # as the map holds them
        try:
            ek = Reference(old_key, k, parsed_renamed, parsed_defaults).convert(old_key, 0, k, new_key, 0, ())
            ev = Reference(old_value, v, parsed_renamed, parsed_defaults).convert(old_value, 0, v, new_value, 0, ())
        except Lost:
            assert not conv.total, "a conversion said to take any entry lost one"
            expected = None
            break
        expected.append((encode(new_key, ek), encode(new_value, ev)))
    if conv.total:  # nothing checked: only max_entries can refuse
        assert len({k for k, _ in expected or []}) == len(expected or [])
    if expected is not None and (len({k for k, _ in expected}) < len(expected)
                                 or max_entries is not None and len(expected) > max_entries):
        expected = None
    if expected is None:
        event("refused")
        with pytest.raises(MigrationRefused):
            conv.convert(old_entries, max_entries)
        return
    event(f"converted {'no' if not keys else 'some'} entries")
    got = conv.convert(old_entries, max_entries)
    assert list(got.items()) == expected


# ---------------------------------------------------------------- examples


IP_ADDR = {"union": [{"ip4": "u32"}, {"ip6": "u32[4]"}]}
# Kmesh's service_value before and after commit 9eab2f91's successor dropped lb_strict_prio (workload.h)
SERVICE_OLD = parse_type({"struct": [{"prio_endpoint_count": "u32[7]"}, {"lb_policy": "u32"}, {"lb_strict_prio": "u32"},
                                     {"service_port": "u32[10]"}, {"target_port": "u32[10]"}, {"wp_addr": IP_ADDR},
                                     {"waypoint_port": "u32"}], "packed": True})
SERVICE_NEW = parse_type({"struct": [{"prio_endpoint_count": "u32[7]"}, {"lb_policy": "u32"},
                                     {"service_port": "u32[10]"}, {"target_port": "u32[10]"}, {"wp_addr": IP_ADDR},
                                     {"waypoint_port": "u32"}], "packed": True})
U32 = parse_type("u32")


def _entries(key: CType, value: CType, items: list[tuple[Any, Any]]) -> Entries:
    return Entries(key.size, value.size, b"".join(encode(key, k) for k, _ in items),
                   b"".join(encode(value, v) for _, v in items))


def _decoded(e: Entries, key: CType, value: CType) -> list[tuple[Any, Any]]:
    return [(decode(key, k), decode(value, v)) for k, v in e.items()]


def test_a_removed_field_is_dropped_and_the_rest_moves_as_two_byte_runs() -> None:
    conv = conversion(U32, U32, SERVICE_OLD, SERVICE_NEW)
    assert conv.text() == "value: field lb_strict_prio removed, 136 -> 132 bytes" and not conv.diffs[0].changed
    assert conv.value.copies == ((0, 0, 32), (36, 32, 100)) and not conv.value.numbers
    old = {"prio_endpoint_count": [0, 0, 0, 0, 0, 0, 2], "lb_policy": 0, "lb_strict_prio": 0,
           "service_port": [80] + [0] * 9, "target_port": [8080] + [0] * 9, "wp_addr": {"ip4": 0}, "waypoint_port": 0}
    new = conv.convert(_entries(U32, SERVICE_OLD, [(7, old)]))
    expected = {k: v for k, v in old.items() if k != "lb_strict_prio"}
    assert _decoded(new, U32, SERVICE_NEW) == [(7, expected)]


def test_kmesh_locality_change_key_field_with_a_default_and_a_count_moved_into_an_array() -> None:
    """63920e72: endpoint_key gained `prio` (random balancing uses prio 6 for every endpoint), and
    service_value's endpoint_count became prio_endpoint_count[7], indexed by prio."""
    old_key = parse_type({"struct": [{"service_id": "u32"}, {"backend_index": "u32"}]})
    new_key = parse_type({"struct": [{"service_id": "u32"}, {"prio": "u32"}, {"backend_index": "u32"}]})
    old_value = parse_type({"struct": [{"endpoint_count": "u32"}, {"lb_policy": "u32"}, {"port": "u32"}]})
    new_value = parse_type({"struct": [{"prio_endpoint_count": "u32[7]"}, {"lb_policy": "u32"},
                                       {"lb_strict_index": "u32"}, {"port": "u32"}]})
    conv = conversion(old_key, new_key, old_value, new_value, {"prio": 6},
                      {"prio_endpoint_count[6]": "endpoint_count"})
    assert conv.text() == ("key: field prio added (= 6), 8 -> 12 bytes; value: field prio_endpoint_count added, "
                           "field endpoint_count renamed to prio_endpoint_count[6], field lb_strict_index added, "
                           "12 -> 40 bytes")
    assert conv.key.injective  # every old key byte is carried: no check for keys becoming one
    old = _entries(old_key, U32, [({"service_id": 1, "backend_index": b}, b + 100) for b in (1, 2)])
    conv_k = conversion(old_key, new_key, U32, U32, {"prio": 6})
    assert _decoded(conv_k.convert(old), new_key, U32) == [
        ({"service_id": 1, "prio": 6, "backend_index": 1}, 101), ({"service_id": 1, "prio": 6, "backend_index": 2}, 102)]
    svc = conv.convert(_entries(old_key, old_value, [({"service_id": 1, "backend_index": 0},
                                                      {"endpoint_count": 2, "lb_policy": 0, "port": 80})]))
    assert _decoded(svc, new_key, new_value)[0][1] == {"prio_endpoint_count": [0] * 6 + [2], "lb_policy": 0,
                                                       "lb_strict_index": 0, "port": 80}


def test_a_narrowed_field_refuses_the_entries_whose_values_do_not_fit_naming_them() -> None:
    old = parse_type({"struct": [{"id": "u32"}, {"port": "u32"}]})
    new = parse_type({"struct": [{"id": "u32"}, {"port": "u16"}]})
    conv = conversion(U32, U32, old, new)
    assert conv.text() == "value: field port retyped (u32 -> u16)"
    entries = _entries(U32, old, [(1, {"id": 1, "port": 80}), (2, {"id": 2, "port": 70000}), (3, {"id": 3, "port": 65536})])
    with pytest.raises(MigrationRefused) as e:
        conv.convert(entries)
    assert e.value.problems == ["value field port: values that do not fit u16 (0..65535) in 2 entries: "
                                "key 2 (70000), key 3 (65536)"]
    fits = _entries(U32, old, [(1, {"id": 1, "port": 80})])
    assert _decoded(conv.convert(fits), U32, new) == [(1, {"id": 1, "port": 80})]


def test_two_old_keys_that_become_one_are_refused_and_so_are_too_many_entries() -> None:
    old_key = parse_type({"struct": [{"a": "u32"}, {"b": "u32"}]})
    new_key = parse_type({"struct": [{"a": "u32"}]})
    conv = conversion(old_key, new_key, U32, U32)
    assert conv.text() == "key: field b removed, 8 -> 4 bytes" and not conv.key.injective
    entries = _entries(old_key, U32, [({"a": 1, "b": 1}, 5), ({"a": 1, "b": 2}, 6), ({"a": 2, "b": 1}, 7)])
    with pytest.raises(MigrationRefused, match=r'old keys become one new key: key \{"a": 1, "b": 1\} and key \{"a": 1, "b": 2\}'):
        conv.convert(entries)
    same = conversion(U32, U32, U32, parse_type("u64"))
    with pytest.raises(MigrationRefused, match="3 entries do not fit the new max_entries 2"):
        same.convert(_entries(U32, U32, [(1, 1), (2, 2), (3, 3)]), max_entries=2)


def test_enums_convert_by_name_and_a_name_the_new_enum_lacks_is_refused() -> None:
    old = parse_type({"enum": "u32", "values": {"RANDOM": 0, "STRICT": 1, "FAILOVER": 2}})
    new = parse_type({"enum": "u8", "values": {"RANDOM": 0, "FAILOVER": 1}})
    conv = conversion(U32, U32, old, new)
    assert conv.text() == "value: retyped (enum u32 -> u8, FAILOVER 2 -> 1, STRICT removed), 4 -> 1 byte"
    assert _decoded(conv.convert(_entries(U32, old, [(1, "RANDOM"), (2, "FAILOVER")])), U32, new) == [(1, "RANDOM"), (2, "FAILOVER")]
    with pytest.raises(MigrationRefused, match="enum values whose names the new enum lacks in 1 entry: key 3"):
        conv.convert(_entries(U32, old, [(3, "STRICT")]))


def test_unchanged_bitfields_are_copied_as_bytes_and_changed_ones_by_value() -> None:
    old = parse_type({"struct": [{"a": "u8:3"}, {"b": "u8:4"}, {"c": "u16"}, {"d": "u32:5"}, {"e": "u32:7"}]})
    new = parse_type({"struct": [{"a": "u8:3"}, {"b": "u8:4"}, {"c": "u32"}, {"d": "u32:9"}, {"e": "u32:7"}]})
    conv = conversion(U32, U32, old, new)
    assert (0, 0, 1) in conv.value.copies  # a and b: the same bits in the same byte
    assert sorted(path_text(n.path) for n in conv.value.numbers) == ["c", "d", "e"]
    value = {"a": 5, "b": 9, "c": 700, "d": 31, "e": 100}
    assert _decoded(conv.convert(_entries(U32, old, [(1, value)])), U32, new) == [(1, value)]


def test_the_plan_text_names_each_change_once_for_every_element_of_an_array() -> None:
    old = parse_type({"struct": [{"a": "u32"}, {"b": "u16"}, {"c": "u8"}, {"d": "char[8]"},
                                 {"eps": {"array": {"struct": [{"ip": "ipv4"}, {"w": "u16"}]}, "length": 3}}]})
    new = parse_type({"struct": [{"c": "u8"}, {"a": "u64"}, {"b": "u16"}, {"meta": {"struct": [{"name": "char[4]"}, {"on": "bool"}]}},
                                 {"eps": {"array": {"struct": [{"ip": "ipv4"}, {"w": "u32"}, {"zone": "u8"}]}, "length": 4}}]})
    conv = conversion(U32, U32, old, new, defaults={"meta.on": True}, renamed={"meta.name": "d"})
    assert conv.text() == (
        "value: field a retyped (u32 -> u64), field meta added (meta.on = true), field d renamed to meta.name, "
        "field meta.name retyped (char[8] -> char[4]), field eps retyped (3 -> 4 elements), "
        "field eps[].w retyped (u16 -> u32), field eps[].zone added, field c moved (offset 6 -> 0), 40 -> 72 bytes")


def test_per_cpu_values_convert_every_cpu() -> None:
    old, new = parse_type({"struct": [{"hits": "u32"}, {"bytes": "u32"}]}), parse_type({"struct": [{"bytes": "u64"}, {"hits": "u64"}]})
    conv = conversion(U32, U32, old, new)
    cpus = 3
    value = b"".join(encode(old, {"hits": c, "bytes": 10 * c}) for c in range(cpus))  # stride 8: no padding
    out = conv.convert(Entries(4, 8 * cpus, encode(U32, 1), value), cpus=cpus)
    assert out.value_size == 16 * cpus
    assert [decode(new, out.values_buffer[i * 16:(i + 1) * 16]) for i in range(cpus)] == [
        {"bytes": 10 * c, "hits": c} for c in range(cpus)]


def test_an_array_map_cut_short_keeps_its_zero_entries_out_and_refuses_the_others() -> None:
    conv = conversion(U32, U32, U32, U32)
    entries = _entries(U32, U32, [(i, 7 if i in (0, 3) else 0) for i in range(5)])
    kept = conv.convert(entries, 4, array=True)
    assert _decoded(kept, U32, U32) == [(0, 7), (1, 0), (2, 0), (3, 7)]
    with pytest.raises(MigrationRefused, match="entries past the new max_entries 3 hold data: key 3"):
        conv.convert(entries, 3, array=True)


def test_layouts_that_cannot_convert_are_said_before_any_entry_is_read() -> None:
    old = parse_type({"struct": [{"a": "u32"}, {"b": "ipv4"}]})
    with pytest.raises(LayoutError, match=r"b: ipv4 cannot become a struct"):
        conversion(U32, U32, old, parse_type({"struct": [{"a": "u32"}, {"b": {"struct": [{"x": "u32"}]}}]}))
    new = parse_type({"struct": [{"a": "u32"}, {"c": "u32"}]})
    with pytest.raises(LayoutError, match="defaults: a is not a new field"):
        conversion(U32, U32, old, new, defaults={"a": 1})
    with pytest.raises(LayoutError, match="defaults: neither the new key nor the new value has a field nope"):
        conversion(U32, U32, old, new, defaults={"nope": 1})
    with pytest.raises(LayoutError, match="renamed: the old layout has no field zz"):
        conversion(U32, U32, old, new, renamed={"c": "zz"})
    with pytest.raises(LayoutError, match="defaults: c: expected an integer 0..4294967295"):
        conversion(U32, U32, old, new, defaults={"c": "ten"})
    with pytest.raises(LayoutError, match="12 bytes cannot become a struct: the old layout is not known"):
        conversion(U32, U32, Raw(12), new)
    with pytest.raises(LayoutError, match="a struct cannot become 12 bytes: the new layout is not known"):
        conversion(U32, U32, new, Raw(12))
    assert conversion(U32, U32, Raw(8), new).value.copies == ((0, 0, 8),)  # the same size: bytes kept as they are
    before, both = parse_type({"struct": [{"y": "u32"}]}), parse_type({"struct": [{"y": "u32"}, {"x": "u32"}]})
    with pytest.raises(LayoutError, match="write key.x or value.x"):
        conversion(before, both, before, both, defaults={"x": 1})
    conv = conversion(before, both, before, both, defaults={"key.x": 1, "value.x": 2})
    assert (conv.key.template, conv.value.template) == (struct.pack("<II", 0, 1), struct.pack("<II", 0, 2))


def test_a_union_converts_as_the_first_member_that_holds_its_bytes_and_keeps_them() -> None:
    old = parse_type({"union": [{"small": "u16"}, {"big": "u32"}]})
    new = parse_type({"union": [{"small": "u8"}, {"big": "u64"}, {"extra": "u32[4]"}]})
    conv = conversion(U32, U32, old, new)
    entries = _entries(U32, old, [(1, {"small": 5}), (2, {"small": 300}), (3, {"big": 70000})])
    got = _decoded(conv.convert(entries), U32, new)
    # 300 does not fit small's u8, but the same bytes are big = 300, which keeps them
    assert got == [(1, {"small": 5}), (2, {"big": 300}), (3, {"big": 70000})]
    assert "field extra added" in conv.text()


def test_a_million_entries_convert_in_well_under_a_few_seconds() -> None:
    """Not a timing assertion (bench/ measures speed): a smoke test that a large map takes the
    column path and gives the same bytes as the per-entry reference for a sample."""
    n = 200_000
    conv = conversion(U32, U32, SERVICE_OLD, SERVICE_NEW)
    values = bytearray(SERVICE_OLD.size * n)
    for i in range(0, n, 997):
        values[i * SERVICE_OLD.size:i * SERVICE_OLD.size + 4] = struct.pack("<I", i)
    entries = Entries(4, SERVICE_OLD.size, struct.pack(f"<{n}I", *range(n)), bytes(values))
    out = conv.convert(entries)
    for i in range(0, n, 997):
        assert out.values_buffer[i * SERVICE_NEW.size:i * SERVICE_NEW.size + 4] == struct.pack("<I", i)
