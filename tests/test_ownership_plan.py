"""Ownership in the pure planner (contract section 9): unmanaged maps, adoption, manage_entries.
Live states are built by hand, as in test_planner.py."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
from test_planner import IDS, config, inner, k, live_of, outer, v

from kmesh_apply.config.model import Management
from kmesh_apply.errors import PlanError
from kmesh_apply.plan.model import RecordMap, RemovePin, SetSlots, WriteEntries
from kmesh_apply.plan.planner import destroy_plan, make_plan
from kmesh_apply.plan.render import render_json, render_text
from kmesh_apply.plan.saved import decode
from kmesh_apply.state import LiveMap, Owned


def foreign(name: str, id: int, entries: dict[int, int] | None = None, type: str = "hash") -> LiveMap:
    return LiveMap(name, id, type, 4, 8, 100, (), "u32", "u64", {k(a): v(b) for a, b in (entries or {}).items()})


def managed(spec, **fields) -> object:
    return replace(spec, manage=Management(**fields))


def test_unmanaged_maps_are_listed_never_planned_nor_destroyed():
    cfg = config(inner("a", {1: 10}))
    live = live_of(cfg, {"a": 11})
    live.unmanaged = {"events": foreign("events", 90, type="ringbuf"), "x": foreign("x", 91, {1: 1})}
    plan = make_plan(cfg, live)
    assert not plan.has_changes and [u.name for u in plan.unmanaged] == ["events", "x"]
    text = render_text(plan)
    assert "Unmanaged (2 maps pinned here by others, left alone): events (ringbuf, ID 90), x (hash, ID 91)" in text
    assert render_json(plan)["unmanaged"] == [{"name": "events", "type": "ringbuf", "id": 90},
                                              {"name": "x", "type": "hash", "id": 91}]
    gone = destroy_plan(live)
    assert [s.pin for s in gone.steps] == ["a"] and [u.name for u in gone.unmanaged] == ["events", "x"]


def test_a_declared_name_pinned_by_someone_else_is_a_plan_error():
    cfg = config(inner("a", {1: 10}), inner("x", {}))
    live = live_of(config(inner("a", {1: 10})), {"a": 11})
    live.unmanaged = {"x": foreign("x", 91)}
    with pytest.raises(PlanError, match=r"map 'x' is pinned in the pin root but kmesh-apply does not manage it "
                                        r"\(a hash map, ID 91, pinned by someone else\): add adopt: true"):
        make_plan(cfg, live)
    live.owned = {"x": Owned("created", (55,))}  # the tool made one, someone replaced its pin since
    with pytest.raises(PlanError, match="its pin now holds map ID 91, not the map ID 55 kmesh-apply made"):
        make_plan(cfg, live)


def test_adoption_is_recorded_first_and_shows_its_differences():
    cfg = config(inner("a", {1: 10}), managed(inner("x", {1: 1, 2: 2}), adopt=True))
    live = live_of(config(inner("a", {1: 10})), {"a": 11})
    live.unmanaged = {"x": foreign("x", 91, {1: 1, 3: 3})}
    plan = make_plan(cfg, live)
    record, write = plan.steps
    assert isinstance(record, RecordMap) and (record.map, record.id, record.adopt, record.layout) == ("x", 91, True, None)
    assert isinstance(write, WriteEntries) and write.put == {k(2): v(2)} and write.delete == [k(3)]
    (change,) = plan.changes
    assert (change.action, change.adopted) == ("adopt", True)
    assert plan.counts == {"adopt": 1, "migrate": 0, "rename": 0, "create": 0, "update": 0, "destroy": 0}
    assert plan.summary() == "Plan: 1 to adopt, 0 to create, 0 to update, 0 to destroy."
    assert '<= inner map "x" will be adopted' in render_text(plan) and plan.unmanaged == []
    # Adopted with nothing to change: still a change (the record), and a map without BTF gets its layout recorded.
    live.unmanaged["x"] = replace(foreign("x", 91, {1: 1, 2: 2}), key_type=None, value_type=None)
    (record,) = make_plan(cfg, live).steps
    assert isinstance(record, RecordMap) and record.layout is not None and record.layout.value_type == "u64"


def test_adopting_a_map_of_another_type_is_refused_not_replaced():
    cfg = config(managed(inner("x", {}), adopt=True))
    live = live_of(config(), {})
    live.unmanaged = {"x": foreign("x", 91, type="lru_hash")}
    with pytest.raises(PlanError, match=r"adopt: the pinned map \(ID 91\) is an lru_hash map, the configuration "
                                        r"declares a hash map; .*declare type: lru_hash"):
        make_plan(cfg, live)


def test_listed_entries_are_kept_as_written_and_others_left_alone():
    cfg = config(managed(inner("a", {1: 10, 2: 20}), entries="listed"), inner("b", {3: 30}), outer("svc", "a", {0: "a", 1: "b"}))
    live = live_of(config(inner("a", {1: 11, 7: 70, 8: 80}), inner("b", {3: 30}), outer("svc", "a", {0: "a", 1: "b"})), IDS)
    plan = make_plan(cfg, live)
    (write,) = plan.steps  # in place, though a slot holds it: a swap would lose entries 7 and 8
    assert isinstance(write, WriteEntries) and write.put == {k(1): v(10), k(2): v(20)} and write.delete == []
    (change,) = plan.changes
    assert not change.swap and "manage_entries: listed" in change.reasons[0]
    assert plan.scopes == {"a": frozenset({k(1), k(2)})}
    # What the synchroniser was told to delete is deleted; others' entries are still not.
    cfg.inner_maps["a"] = managed(cfg.inner_maps["a"], entries="listed", absent=frozenset({k(7)}))
    (write,) = make_plan(cfg, live).steps
    assert write.delete == [k(7)]


def test_listed_array_indexes_not_named_are_not_zeroed():
    cfg = config(managed(inner("c", {1: 5}, type="array", max_entries=4), entries="listed"))
    live = live_of(config(inner("c", {0: 0, 1: 0, 2: 9, 3: 0}, type="array", max_entries=4)), {"c": 21})
    (write,) = make_plan(cfg, live).steps
    assert write.put == {k(1): v(5)} and write.delete == []


def test_none_declares_only_the_map():
    cfg = config(managed(inner("d", {}), entries="none"), managed(outer("o", "d", {}), entries="none"))
    live = live_of(config(inner("d", {1: 1, 2: 2}), outer("o", "d", {0: "d"})), {"d": 31, "o": 32})
    plan = make_plan(cfg, live)
    assert not plan.has_changes and plan.scopes == {"d": frozenset(), "o": frozenset()}


def test_a_replacement_that_would_lose_others_entries_is_a_migration():
    """Issue 23: the live entries are carried over (tests/test_migrate.py has the details)."""
    for mode in ("listed", "none"):
        cfg = config(managed(inner("a", {}, max_entries=200), entries=mode))
        live = live_of(config(inner("a", {1: 1})), {"a": 11})
        plan = make_plan(cfg, live)
        assert [s.op for s in plan.steps] == ["create", "migrate", "catch_up", "move"]
        (change,) = plan.changes
        assert change.action == "migrate" and change.migration.entries == 1 and change.reasons == ["max_entries 100 -> 200"]


def test_an_outer_map_whose_slots_others_set_is_not_replaced():
    cfg = config(inner("a", {}), managed(outer("o", "a", {}, max_entries=20), entries="none"))
    live = live_of(config(inner("a", {}), outer("o", "a", {0: "a"})), {"a": 11, "o": 12})
    with pytest.raises(PlanError, match=r"map 'o' would have to be replaced \(max_entries 10 -> 20\), and a new map "
                                        r"would lose the entries others wrote \(manage_entries: none\); kmesh-apply "
                                        r"cannot carry them over: an outer map's slots are not migrated"):
        make_plan(cfg, live)


def test_slots_others_set_follow_a_swapped_inner_map_in_a_listed_outer_map():
    cfg = config(inner("a", {1: 10, 2: 20}), inner("b", {3: 30}), managed(outer("svc", "a", {0: "a"}), entries="listed"))
    live = live_of(config(inner("a", {1: 1}), inner("b", {3: 30}), outer("svc", "a", {0: "a", 5: "a", 1: "b"})), IDS)
    plan = make_plan(cfg, live)
    slots = next(s for s in plan.steps if isinstance(s, SetSlots))
    assert slots.set == {k(0): "_kmesh_staging/a", k(5): "_kmesh_staging/a"} and slots.clear == []
    assert not any(isinstance(s, RemovePin) for s in plan.steps)


def test_a_saved_plan_is_not_stale_when_others_write_entries_it_does_not_own():
    cfg = config(managed(inner("a", {1: 10}), entries="listed"), managed(inner("n", {}), entries="none"))
    live = live_of(config(inner("a", {1: 1, 5: 5}), inner("n", {9: 9})), {"a": 11, "n": 12})
    live.unmanaged = {"f": foreign("f", 90, {1: 1})}
    saved = decode(json.loads(json.dumps(make_plan(cfg, live).to_saved())))
    now = live_of(config(inner("a", {1: 1, 5: 6, 6: 6}), inner("n", {})), {"a": 11, "n": 12})
    now.unmanaged = {"f": foreign("f", 90, {1: 2, 3: 3})}
    assert saved.moved_since(now) == []
    now.maps["a"].entries[k(1)] = v(2)  # a listed entry: the plan depended on it
    assert saved.moved_since(now) == ["map 'a' changed"]
    now.unmanaged["g"] = foreign("g", 93)
    assert "map 'g (unmanaged)' appeared" in saved.moved_since(now)
