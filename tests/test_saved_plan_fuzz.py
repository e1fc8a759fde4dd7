"""Fuzzing `apply PLAN` (issue 20): mutated saved plans (steps, pins, ops, nesting, sizes, types),
mostly signed again with the host's key so that they reach the walls behind the signature (the
strict decoder, the re-derivation of the steps, the executor's pin check). Whatever the mutation:
one KmeshError, or an apply of exactly the honest plan, never anything else (a traceback), no
example over a second,
and nothing that is not the tool's touched (a canary pin root, a canary file, a map someone else
pinned in the test's pin root and an entry someone else wrote into a `listed` map, compared before
and after every example).

A bounded number of examples runs in the suite; `KMESH_FUZZ_EXAMPLES=5000` runs more by hand.
"""

from __future__ import annotations

import json
import os
import re
import time
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import bpftool_json

from kmesh_apply import api
from kmesh_apply.config import load_config
from kmesh_apply.errors import KmeshError
from kmesh_apply.kernel.maps import Map
from kmesh_apply.plan.render import render_text
from kmesh_apply.plan.saved import load_plan, plan_key, signed

EXAMPLES = int(os.environ.get("KMESH_FUZZ_EXAMPLES", "40"))
FOREIGN_KEY = (99).to_bytes(4, "little")
DEEP = re.compile(rb'"DEEP:(\d+)"')  # nesting too deep to build as Python objects, spliced into the text

BASE = """
inner_maps:
  backends: {type: hash, key: u32, value: u32, max_entries: 16, entries: {1: 10, 2: 20, 3: 30}}
  spare: {type: array, key: u32, value: u64, max_entries: 4, entries: {0: 5}}
  gone: {type: hash, key: u32, value: u32, max_entries: 4, entries: {7: 7}}
outer_maps:
  services: {type: hash_of_maps, key: u16, max_entries: 4, inner_map: backends, entries: {1: backends}}
maps:
  counters: {type: hash, key: u32, value: u32, max_entries: 16, manage_entries: listed, entries: {1: 1}}
  stats: {type: hash, key: u32, value: u32, max_entries: 8, manage_entries: none}
"""
TARGET = """
inner_maps:
  backends: {type: hash, key: u32, value: u32, max_entries: 16, entries: {1: 11, 3: 30, 4: 40}}
  spare: {type: array, key: u32, value: u64, max_entries: 8, entries: {0: 5, 1: 6}}
  fresh: {type: hash, key: u32, value: u32, max_entries: 8, entries: {9: 9}}
outer_maps:
  services: {type: hash_of_maps, key: u16, max_entries: 4, inner_map: backends, entries: {1: backends, 2: fresh}}
maps:
  counters: {type: hash, key: u32, value: u32, max_entries: 16, manage_entries: listed, entries: {1: 2, 2: 2}}
  stats: {type: hash, key: u32, value: u64, max_entries: 8, manage_entries: none}   # a migration
"""


def hostile_values(pin_root: Path, other: Path, canary: Path) -> st.SearchStrategy[Any]:
    names = ["backends", "spare", "gone", "fresh", "services", "counters", "stats", "theirs", "_kmesh_replaced", "_kmesh_owned",
             "_kmesh_layouts", "_kmesh_keys", "_kmesh_staging", "_kmesh_staging/_kmesh_owned",
             "_kmesh_staging/backends", "_kmesh_keys/services", f"../{other.name}/backends", str(other / "backends"),
             str(canary), str(canary.parent), "../../etc/passwd", "/", "", ".", "..", "a/b", "x\0y", "x" * 300,
             "_kmesh_staging/../../x", "_kmesh_staging/", str(pin_root), str(other)]
    scalars = st.one_of(st.sampled_from(names), st.text(max_size=20), st.integers(min_value=-2**70, max_value=2**70),
                        st.floats(allow_nan=True), st.booleans(), st.none(),
                        st.sampled_from(["create", "write", "slots", "move", "remove", "update", "destroy", "recover",
                                         "inner", "outer", "hash", "array_of_maps", "ringbuf"]))
    blobs = st.one_of(st.binary(max_size=12).map(lambda b: {"hex": b.hex()}),
                      st.sampled_from([{"hex": "zz"}, {"hex": "0"}, {"hex": "00 00"}, {"hex": 5}, {"hex": "00" * 4096}]))
    deep = st.integers(min_value=2, max_value=20_000).map(lambda n: json.loads("[" * min(n, 900) + "]" * min(n, 900))
                                                            if n < 900 else "DEEP:%d" % n)
    return st.recursive(st.one_of(scalars, blobs, deep),
                        lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                st.dictionaries(st.sampled_from(names + ["0x01000000", "0x", "hex", "op",
                                                                                        "pin", "map"]), inner, max_size=3)),
                        max_leaves=6)


def paths(doc: Any, prefix: tuple = ()) -> list[tuple]:
    """Every place in a JSON document, as a path of keys and indexes."""
    out = [prefix]
    if isinstance(doc, dict):
        for k, v in doc.items():
            out += paths(v, prefix + (k,))
    elif isinstance(doc, list):
        for i, v in enumerate(doc):
            out += paths(v, prefix + (i,))
    return out


def mutate(doc: Any, path: tuple, how: str, value: Any) -> Any:
    if not path:
        return value if how == "set" else doc
    parent = doc
    for k in path[:-1]:
        parent = parent[k]
    last = path[-1]
    if how == "set":
        parent[last] = value
    elif how == "delete":
        del parent[last]
    elif how == "duplicate" and isinstance(parent, list):
        parent.insert(last, json.loads(json.dumps(parent[last])))
    elif how == "swap" and isinstance(parent, list) and len(parent) > 1:
        parent[0], parent[last] = parent[last], parent[0]
    elif how == "rename" and isinstance(parent, dict) and isinstance(value, str):
        parent[value] = parent.pop(last)
    return doc


def snapshot(other: Path, canary: Path, pin_root: Path) -> tuple:
    """What must never change: the canary pin root's pins and entries (as bpftool sees them), the canary
    file, and in the test's own pin root a map someone else pinned there and an entry someone else
    wrote into a `manage_entries: listed` map."""
    pins = sorted(str(p.relative_to(other)) for p in other.rglob("*"))
    maps = {pin: (bpftool_json("map", "show", "pinned", str(other / pin))["id"],
                  bpftool_json("map", "dump", "pinned", str(other / pin)))
            for pin in pins if (other / pin).is_file()}
    theirs = (bpftool_json("map", "show", "pinned", str(pin_root / "theirs"))["id"],
              bpftool_json("map", "dump", "pinned", str(pin_root / "theirs")))
    with Map.open_pinned(str(pin_root / "counters")) as m:
        written = m.lookup(FOREIGN_KEY)
    return pins, maps, canary.read_bytes(), os.stat(canary).st_ino, theirs, written


def test_mutated_saved_plans_are_refused_or_applied_and_touch_nothing_else(tmp_path: Path, pin_root: Path,
                                                                           bpf_scratch: Path):
    other, canary = bpf_scratch / "canary-root", tmp_path / "canary.txt"
    canary.write_text("keep me\n")
    base, target = load_config(inline=BASE), load_config(inline=TARGET)
    api.converge(base, str(other))
    api.converge(base, str(pin_root))
    with Map.create("hash", 4, 4, 4, name="theirs") as theirs:  # pinned by someone else: unmanaged
        theirs.update(FOREIGN_KEY, b"\x07\0\0\0")
        theirs.pin(str(pin_root / "theirs"))
    with Map.open_pinned(str(pin_root / "counters")) as m:
        m.update(FOREIGN_KEY, b"\x09\0\0\0")  # an entry someone else writes into a listed map
    with Map.open_pinned(str(pin_root / "stats")) as m:
        m.update(FOREIGN_KEY, b"\x05\0\0\0")  # a daemon's entry: migrated with the map
    before = snapshot(other, canary, pin_root)
    key = plan_key(create=True)
    state: dict[str, Any] = {}
    outcomes = {"refused": 0, "applied": 0}

    def fresh_plan() -> bytes:
        """The honest plan from BASE to TARGET, made again whenever resetting the pin root changed it
        (a `listed` entry TARGET added stays after BASE is applied again: it is removed by hand)."""
        changed = api.converge(base, str(pin_root))[1] is not None
        with Map.open_pinned(str(pin_root / "counters")) as m:
            changed = m.delete((2).to_bytes(4, "little")) or changed
        if changed or "doc" not in state:
            state["doc"] = json.dumps(api.plan(target, str(pin_root)).to_saved())
        return state["doc"]

    @settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), derandomize=False)
    @given(data=st.data(), sign=st.integers(0, 9).map(lambda n: n > 0),
           how=st.sampled_from(["set", "set", "set", "delete", "duplicate", "swap", "rename"]),
           value=hostile_values(pin_root, other, canary))
    def example(data, sign: bool, how: str, value: Any) -> None:
        doc = json.loads(fresh_plan())
        path = data.draw(st.sampled_from(paths(doc)), label="path")
        doc = mutate(doc, path, how, value)
        body = DEEP.sub(lambda m: b"[" * int(m[1]) + b"]" * int(m[1]), json.dumps(doc).encode())
        saved = tmp_path / "p.plan"
        saved.write_bytes(signed(body, key) if sign and body.endswith(b"}") else body + b"\n")
        start = time.monotonic()
        applied = False
        try:
            plan = load_plan(saved)
            api.apply(plan, lock_timeout=5, on_checked=lambda p: render_text(p, steps=True))
            applied = True
        except KmeshError as e:
            assert str(e)
        assert time.monotonic() - start < 1.0, f"{how} at {path}: {time.monotonic() - start:.2f}s"
        outcomes["applied" if applied else "refused"] += 1
        if applied:  # a mutation that changed nothing the plan does (the order of steps, its warnings)
            assert not api.plan(target, str(pin_root)).has_changes, f"{how} at {path} applied something else"
        assert snapshot(other, canary, pin_root) == before, f"{how} at {path} touched what is not the tool's"

    example()
    assert outcomes["refused"] > 0
    print(f"saved-plan fuzz: {EXAMPLES} examples, {outcomes}")


def test_a_signed_plan_naming_an_unknown_map_type_or_flag_is_refused_as_it_is_read(tmp_path: Path, pin_root: Path):
    """Found by a long run of the fuzz above: a map type or flag the tool does not know reached the
    planner (a KeyError) when the plan was re-derived; the decoder now refuses it, naming where."""
    doc = api.plan(load_config(inline=BASE), str(pin_root)).to_saved()
    key = plan_key(create=True)
    for field, bad, expected in (("type", "no_such_type", "a map type kmesh-apply declares"),
                                 ("flags", ["no_such_flag"], "a map flag")):
        forged = json.loads(json.dumps(doc))
        forged["changes"][0]["definition"][field] = bad
        saved = tmp_path / "p.plan"
        saved.write_bytes(signed(json.dumps(forged).encode(), key))
        with pytest.raises(KmeshError, match=expected):
            load_plan(saved)
