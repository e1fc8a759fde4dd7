"""Pure planner tests: live states are built by hand (the only place a fake kernel is allowed)."""

from __future__ import annotations

import json
import struct

from hypothesis import given
from hypothesis import strategies as st

from kmesh_apply.config.codecs import encode
from kmesh_apply.config.model import Config, InnerMapSpec, Location, OuterMapSpec
from kmesh_apply.ctype import parse_type
from kmesh_apply.plan.model import CreateMap, MovePin, Plan, RemovePin, SetSlots, WriteEntries
from kmesh_apply.plan.planner import destroy_plan, entry_diff, make_plan
from kmesh_apply.plan.render import render_json, render_text
from kmesh_apply.plan.saved import decode
from kmesh_apply.state import STAGING_DIR, LiveMap, LiveState, StagedMap

LOC = Location("t.yaml", 1)


def k(i: int) -> bytes:
    return struct.pack("<I", i)


def v(i: int) -> bytes:
    return struct.pack("<Q", i)


def inner(name: str, entries: dict[int, int], *, type: str = "hash", max_entries: int = 100, update: str = "swap") -> InnerMapSpec:
    return InnerMapSpec(name, type, parse_type("u32"), parse_type("u64"), max_entries, (),
                        {k(a): v(b) for a, b in entries.items()}, LOC, update)


def outer(name: str, template: str, slots: dict[int, str], max_entries: int = 10) -> OuterMapSpec:
    return OuterMapSpec(name, "array_of_maps", parse_type("u32"), max_entries, (), template,
                        {k(a): n for a, n in slots.items()}, LOC)


def config(*specs) -> Config:
    c = Config()
    for s in specs:
        (c.outer_maps if isinstance(s, OuterMapSpec) else c.inner_maps)[s.name] = s
    return c


def live_of(cfg: Config, ids: dict[str, int]) -> LiveState:
    """The live state an apply of cfg would leave, with the given kernel IDs."""
    st = LiveState("/sys/fs/bpf/t")
    for s in cfg.inner_maps.values():
        st.maps[s.name] = LiveMap(s.name, ids[s.name], s.type, 4, 8, s.max_entries, s.flags, "u32", "u64", dict(s.entries))
    for s in cfg.outer_maps.values():
        st.maps[s.name] = LiveMap(s.name, ids[s.name], s.type, 4, 4, s.max_entries, s.flags, "u32", None,
                                  slots={key: ids[n] for key, n in s.slots.items()})
    return st


BASE = config(inner("a", {1: 10, 2: 20}), inner("b", {3: 30}), outer("svc", "a", {0: "a", 1: "b"}))
IDS = {"a": 11, "b": 12, "svc": 13}


def ops(plan: Plan) -> list[str]:
    return [s.op for s in plan.steps]


def test_cold_plan_orders_creates_before_slots():
    plan = make_plan(BASE, LiveState("/sys/fs/bpf/t"))
    assert ops(plan) == ["create", "write", "create", "write", "create", "slots"]
    assert plan.counts == {"adopt": 0, "migrate": 0, "rename": 0, "create": 3, "update": 0, "destroy": 0}
    slots = plan.steps[-1]
    assert isinstance(slots, SetSlots) and slots.set == {k(0): "a", k(1): "b"}
    assert "Plan: 3 to create, 0 to update, 0 to destroy." in render_text(plan)


def test_converged_state_plans_nothing():
    plan = make_plan(BASE, live_of(BASE, IDS))
    assert plan.steps == [] and not plan.has_changes
    assert render_text(plan).startswith("No changes")


def test_single_entry_change_is_in_place():
    cfg = config(inner("a", {1: 10, 2: 21}), inner("b", {3: 30}), outer("svc", "a", {0: "a", 1: "b"}))
    plan = make_plan(cfg, live_of(BASE, IDS))
    assert [type(s) for s in plan.steps] == [WriteEntries]
    assert plan.steps[0].put == {k(2): v(21)} and plan.steps[0].delete == []
    assert plan.counts == {"adopt": 0, "migrate": 0, "rename": 0, "create": 0, "update": 1, "destroy": 0}
    assert "~ 2: 20 -> 21" in render_text(plan)


def _single_change(map_type: str, live: dict[int, int], want: dict[int, int]) -> list[str]:
    cfg = config(inner("a", want, type=map_type), outer("svc", "a", {0: "a"}))
    base = config(inner("a", live, type=map_type), outer("svc", "a", {0: "a"}))
    return ops(make_plan(cfg, live_of(base, {"a": 11, "svc": 13})))


def test_single_entry_change_is_in_place_only_where_the_kernel_replaces_the_element():
    for map_type in ("hash", "lru_hash"):
        assert _single_change(map_type, {1: 10}, {1: 11}) == ["write"]  # a new element linked in (RCU)
    for map_type in ("array", "percpu_array"):
        assert _single_change(map_type, {1: 10}, {1: 11}) == ["create", "write", "slots", "move"]  # copied in place
    for map_type in ("percpu_hash", "lru_percpu_hash"):
        assert _single_change(map_type, {1: 10}, {1: 11}) == ["create", "write", "slots", "move"]  # pcpu_copy_value
        assert _single_change(map_type, {1: 10}, {1: 10, 2: 20}) == ["write"]  # a new key: linked in
        assert _single_change(map_type, {1: 10, 2: 20}, {1: 10}) == ["write"]  # a deletion: unlinked


def test_a_packed_struct_read_back_unpacked_plans_clean():
    spec = InnerMapSpec("p", "hash", parse_type("u32"), parse_type({"struct": [{"a": "u32"}], "packed": True}), 4, (),
                        {}, LOC)
    live = LiveState("/sys/fs/bpf/t")
    live.maps["p"] = LiveMap("p", 1, "hash", 4, 4, 4, (), "u32", {"struct": [{"a": "u32"}]})
    assert not make_plan(config(spec), live).has_changes


def test_multi_entry_change_of_slot_held_map_is_a_swap():
    cfg = config(inner("a", {1: 11, 5: 50}), inner("b", {3: 30}), outer("svc", "a", {0: "a", 1: "b"}))
    plan = make_plan(cfg, live_of(BASE, IDS))
    staged = f"{STAGING_DIR}/a"
    assert ops(plan) == ["create", "write", "slots", "move"]
    create, write, slots, move = plan.steps
    assert isinstance(create, CreateMap) and create.pin == staged
    assert write.put == {k(1): v(11), k(5): v(50)}  # the whole desired content, into the fresh map
    assert slots.set == {k(0): staged} and slots.clear == []
    assert isinstance(move, MovePin) and (move.src, move.dst) == (staged, "a")
    assert plan.counts == {"adopt": 0, "migrate": 0, "rename": 0, "create": 0, "update": 1, "destroy": 0}


def test_in_place_opt_out_writes_the_live_map():
    cfg = config(inner("a", {1: 11, 5: 50}, update="in_place"), inner("b", {3: 30}), outer("svc", "a", {0: "a", 1: "b"}))
    plan = make_plan(cfg, live_of(BASE, IDS))
    assert ops(plan) == ["write"]
    assert plan.steps[0].put == {k(1): v(11), k(5): v(50)} and plan.steps[0].delete == [k(2)]


def test_fixed_property_change_replaces_and_repoints_slots():
    cfg = config(inner("a", {1: 10, 2: 20}), inner("b", {3: 30}, max_entries=200), outer("svc", "a", {0: "a", 1: "b"}))
    plan = make_plan(cfg, live_of(BASE, IDS))
    assert ops(plan) == ["create", "write", "slots", "move"]
    assert plan.changes[0].action == "replace" and plan.changes[0].reasons == ["max_entries 100 -> 200"]
    assert plan.counts == {"adopt": 0, "migrate": 0, "rename": 0, "create": 1, "update": 0, "destroy": 1}


def test_template_change_replaces_the_outer_map():
    cfg = config(inner("a", {1: 10}, type="lru_hash"), inner("b", {3: 30}, type="lru_hash"), outer("svc", "a", {0: "a", 1: "b"}))
    plan = make_plan(cfg, live_of(BASE, IDS))
    outer_change = next(c for c in plan.changes if c.name == "svc")
    assert outer_change.action == "replace" and "inner map template" in outer_change.reasons[0]
    assert not plan.warnings and not outer_change.holders  # no program holds it: nothing to warn about
    # The new outer map is built aside and filled before it is moved into place.
    assert ops(plan)[-3:] == ["slots", "move", "move"] or ops(plan).index("slots") < ops(plan).index("move")


def test_removed_map_and_slot():
    cfg = config(inner("a", {1: 10, 2: 20}), outer("svc", "a", {0: "a"}))
    plan = make_plan(cfg, live_of(BASE, IDS))
    assert ops(plan) == ["slots", "remove"]
    assert plan.steps[0].clear == [k(1)] and isinstance(plan.steps[1], RemovePin) and plan.steps[1].pin == "b"
    assert plan.counts == {"adopt": 0, "migrate": 0, "rename": 0, "create": 0, "update": 1, "destroy": 1}


def test_array_keys_not_named_are_zeroed_not_deleted():
    arr = InnerMapSpec("arr", "array", parse_type("u32"), parse_type("u64"), 4, (), {k(0): v(1)}, LOC)
    live = LiveState("/r", {"arr": LiveMap("arr", 5, "array", 4, 8, 4, (), "u32", "u64",
                                           {k(0): v(1), k(1): v(7), k(2): v(0), k(3): v(0)})})
    plan = make_plan(config(arr), live)
    assert plan.steps[0].put == {k(1): v(0)} and plan.steps[0].delete == []


def test_interrupted_swap_is_adopted_and_orphans_removed():
    live = live_of(BASE, IDS)
    new_a = LiveMap("a", 21, "hash", 4, 8, 100, (), "u32", "u64", dict(BASE.inner_maps["a"].entries))
    live.maps["svc"].slots[k(0)] = 21  # the slot was switched before the kill
    live.staged = [StagedMap(f"{STAGING_DIR}/a", "a", new_a),
                   StagedMap(f"{STAGING_DIR}/b", "b", LiveMap("b", 22, "hash", 4, 8, 100, (), None, None))]
    plan = make_plan(BASE, live)
    assert [(s.op, getattr(s, "src", getattr(s, "pin", None))) for s in plan.steps] == [
        ("move", f"{STAGING_DIR}/a"), ("remove", f"{STAGING_DIR}/b")]


def test_scoped_plan_touches_only_the_named_maps():
    cfg = config(inner("a", {1: 10, 2: 21}), inner("b", {3: 31}), outer("svc", "a", {0: "a", 1: "b"}))
    live = live_of(BASE, IDS)
    live.maps["stray"] = LiveMap("stray", 99, "hash", 4, 8, 10, (), "u32", "u64")
    plan = make_plan(cfg, live, only={"a"})
    assert [(s.op, s.map) for s in plan.steps] == [("write", "a")]  # b's change and the stray map wait
    assert [c.name for c in plan.changes] == ["a"]


def test_a_scoped_plan_warns_of_its_own_nearly_full_maps_only():
    """The synchroniser's one-entry flush must not look at 5,000 maps: the others were looked at when they changed."""
    cfg = config(inner("a", {1: 10, 2: 20}, max_entries=2), inner("b", {3: 30}, max_entries=1),
                 outer("svc", "a", {0: "a", 1: "b"}))
    assert [w.split("'")[1] for w in make_plan(cfg, live_of(BASE, IDS), only={"a"}).warnings] == ["a"]
    assert [w.split("'")[1] for w in make_plan(cfg, live_of(BASE, IDS)).warnings] == ["a", "b"]


def test_scoped_plan_destroys_a_named_map_the_config_dropped():
    cfg = config(inner("a", {1: 10, 2: 20}), outer("svc", "a", {0: "a"}))
    plan = make_plan(cfg, live_of(BASE, IDS), only={"b", "svc"})
    assert ops(plan) == ["slots", "remove"] and plan.steps[1].pin == "b"


def test_scoped_swap_moves_the_slots_of_outer_maps_holding_the_map():
    cfg = config(inner("a", {1: 11, 5: 50}), inner("b", {3: 30}), outer("svc", "a", {0: "a", 1: "b"}))
    scoped = make_plan(cfg, live_of(BASE, IDS), only={"a"})
    assert ops(scoped) == ["create", "write", "slots", "move"]
    assert scoped.steps[2].set == {k(0): f"{STAGING_DIR}/a"}


def test_scoped_plan_equals_the_full_plan_when_scoped_to_every_changed_map():
    cfg = config(inner("a", {1: 11, 5: 50}), inner("b", {3: 30}, max_entries=200), inner("c", {7: 70}),
                 outer("svc", "a", {0: "a", 1: "b", 2: "c"}))
    live = live_of(BASE, IDS)
    full = make_plan(cfg, live)
    scoped = make_plan(cfg, live, only={c.name for c in full.changes})
    assert sorted(s.describe() for s in scoped.steps) == sorted(s.describe() for s in full.steps)
    assert ops(scoped) == ops(full)


def test_destroy_removes_outer_before_inner():
    plan = destroy_plan(live_of(BASE, IDS))
    assert [s.pin for s in plan.steps] == ["svc", "a", "b"]
    assert plan.counts == {"adopt": 0, "migrate": 0, "rename": 0, "create": 0, "update": 0, "destroy": 3}


def test_saved_plan_round_trips_through_json():
    cfg = config(inner("a", {1: 11, 5: 50}), inner("b", {3: 30}), outer("svc", "a", {0: "a", 1: "b"}))
    plan = make_plan(cfg, live_of(BASE, IDS))
    again = decode(json.loads(json.dumps(plan.to_saved())))
    assert again.steps == plan.steps and again.changes == plan.changes and again.fingerprint() == plan.fingerprint()


def test_json_rendering_decodes_entries():
    plan = make_plan(BASE, LiveState("/r"))
    data = render_json(plan)
    a = next(c for c in data["changes"] if c["name"] == "a")
    assert a["added"] == [{"key": 1, "value": 10}, {"key": 2, "value": 20}]
    svc = next(c for c in data["changes"] if c["name"] == "svc")
    assert svc["added"] == [{"key": 0, "value": "a"}, {"key": 1, "value": "b"}]
    json.dumps(data)


_small = st.dictionaries(st.binary(min_size=1, max_size=1), st.sampled_from([b"\0", b"\1", b"\2"]), max_size=12)


@given(_small, _small, st.booleans())
def test_entry_diff_puts_and_deletes_exactly_what_differs(desired, live, is_array):
    put, delete = entry_diff(desired, live, is_array)
    want = {k: v for k, v in desired.items() if live.get(k) != v}  # in the config's order
    gone = [k for k in live if k not in desired]  # in the live map's order
    if is_array:  # array slots are never deleted: the ones no longer named are zeroed
        want.update((k, bytes(len(live[k]))) for k in gone if live[k].count(0) != len(live[k]))
        gone = []
    assert list(put.items()) == list(want.items())
    assert delete == gone


# ---- programs holding maps (issue 11): holders are given by hand here, found by kernel/progs.py live ----

def held(live: LiveState, map_id: int, prog_id: int = 42) -> LiveState:
    from kmesh_apply.kernel.progs import Program

    live.holders[map_id] = (Program(prog_id, "lb", "xdp", ("xdp link 7 on eth0",)),)
    return live


def test_a_replaced_map_names_its_holders_and_warns():
    cfg = config(inner("a", {1: 10, 2: 20}), inner("b", {3: 30}), outer("svc", "a", {0: "a", 1: "b"}, max_entries=20))
    plan = make_plan(cfg, held(live_of(BASE, IDS), IDS["svc"]))
    change = next(c for c in plan.changes if c.name == "svc")
    assert change.action == "replace" and [p.id for p in change.holders] == [42]
    assert plan.displaced(live_of(BASE, IDS)) == {IDS["svc"]: "svc"}
    assert '# held by program 42 "lb" (xdp, xdp link 7 on eth0)' in render_text(plan)
    assert "--allow-replace-in-use" in plan.warnings[0]
    assert render_json(plan)["changes"][0]["holders"] == [{"id": 42, "name": "lb", "type": "xdp",
                                                           "attached": ("xdp link 7 on eth0",)}]
    again = decode(json.loads(json.dumps(plan.to_saved())))
    assert again.changes == plan.changes


def test_an_inner_map_a_program_holds_is_written_in_place_not_swapped():
    cfg = config(inner("a", {1: 11, 5: 50}), inner("b", {3: 30}), outer("svc", "a", {0: "a", 1: "b"}))
    plan = make_plan(cfg, held(live_of(BASE, IDS), IDS["a"]))
    assert ops(plan) == ["write"] and plan.displaced(live_of(BASE, IDS)) == {}
    change = plan.changes[0]
    assert not change.swap and "written in place, not swapped" in change.reasons[0] and change.holders


def test_replaced_maps_still_held_are_drift():
    live = held(held(live_of(BASE, IDS), 7, prog_id=1), 8, prog_id=2)
    live.replaced = {7: "svc", 8: "gone", 9: "a", IDS["b"]: "b"}  # 9: no program holds it; b's: still the map at 'b'
    held(live, IDS["b"], prog_id=3)
    plan = make_plan(BASE, live)
    assert not plan.has_changes and plan.drift
    assert [(h.name, h.id, [p.id for p in h.programs]) for h in plan.held_replaced] == [("svc", 7, [1]), ("gone", 8, [2])]
    text = render_text(plan)
    assert "the replaced map 'svc' (ID 7) is still held by program 1" in text and "No changes to apply" in text
    assert render_json(plan)["drift"] is True
    assert decode(json.loads(json.dumps(plan.to_saved()))).held_replaced == plan.held_replaced


def test_a_huge_value_change_shows_only_the_changed_elements():
    table = parse_type("u32[16381]")
    old = list(range(16381))
    new = list(old)
    new[5], new[7000] = 0, 1

    def maglev(values: list[int]) -> InnerMapSpec:
        return InnerMapSpec("m", "array", parse_type("u32"), table, 1, (), {k(0): encode(table, values)}, LOC)

    live = LiveState("/sys/fs/bpf/t")
    live.maps["m"] = LiveMap("m", 1, "array", 4, table.size, 1, (), "u32", table.spec(), dict(maglev(old).entries))
    plan = make_plan(config(maglev(new)), live)
    text = render_text(plan)
    assert "~ 0: 2 of 16381 elements changed: [5]: 5 -> 0, [7000]: 7000 -> 1" in text
    assert len(text) < 1000
    changed = render_json(plan)["changes"][0]["changed"]
    assert changed == [{"key": 0, "elements": 16381, "changed_elements": [{"path": "[5]", "old": 5, "new": 0},
                                                                          {"path": "[7000]", "old": 7000, "new": 1}]}]


def test_slot_changes_say_what_each_slot_held():
    """A slot newly set is added, a slot pointed elsewhere is changed from the map it held, and a
    cleared slot names what it held (a map the tool does not know by its ID)."""
    live = live_of(BASE, IDS)
    live.maps["svc"].slots[k(1)] = 99  # an inner map no pin names
    cfg = config(inner("a", {1: 10, 2: 20}), inner("b", {3: 30}), outer("svc", "a", {0: "b", 2: "a"}))
    (change,) = make_plan(cfg, live).changes
    assert (change.name, change.action) == ("svc", "update")
    assert change.added == {k(2): "a"}
    assert change.changed == {k(0): ("a", "b")}
    assert change.removed == {k(1): "id 99"}


def test_a_dropped_map_in_no_slot_is_destroyed_as_a_plain_map():
    live = live_of(BASE, IDS)
    live.maps["stray"] = LiveMap("stray", 14, "hash", 4, 8, 100, (), "u32", "u64", {})
    (change,) = make_plan(BASE, live).changes
    assert (change.name, change.action, change.kind) == ("stray", "destroy", "plain")


def test_a_nearly_full_map_is_warned_of_with_how_full_it_would_be():
    cfg = config(inner("a", {i: i for i in range(9)}, max_entries=10), inner("b", {3: 30}),
                 outer("svc", "a", {0: "a", 1: "b"}))
    assert make_plan(cfg, live_of(cfg, IDS)).warnings == [
        "inner map 'a' would be 90% full (9 of 10 entries); raise its max_entries before it fills up"]


def test_a_dropped_map_a_program_holds_is_warned_of_as_destroyed():
    cfg = config(inner("a", {1: 10, 2: 20}), outer("svc", "a", {0: "a"}))
    plan = make_plan(cfg, held(live_of(BASE, IDS), IDS["b"]))
    change = next(c for c in plan.changes if c.name == "b")
    assert change.action == "destroy" and [p.id for p in change.holders] == [42]
    assert plan.warnings == [f"map 'b' (ID {IDS['b']}) is held by program 42 \"lb\" (xdp, xdp link 7 on eth0): apply "
                             "refuses to destroy it unless --allow-replace-in-use, and then they keep reading the "
                             "destroyed map until they are reloaded"]
