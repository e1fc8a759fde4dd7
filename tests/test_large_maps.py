"""A large map end to end through the kernel: packed entries read and written, comparisons
remembered across plans, a change planned from the blocks it touched."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from kmesh_apply import api
from kmesh_apply.config import load_config
from kmesh_apply.entries import Entries, holds_base
from kmesh_apply.plan.planner import REMEMBER_FROM_ENTRIES
from kmesh_apply.pinroot.reader import read_live
from conftest import bpftool_json, private_block_cache

N = REMEMBER_FROM_ENTRIES + 100


@pytest.fixture(autouse=True)
def private_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    private_block_cache(tmp_path, monkeypatch, 4096)


def write(path: Path, entries: dict[int, int]) -> Path:
    path.write_text("inner_maps:\n  big:\n    type: hash\n    key: u32\n    value: u64\n"
                    f"    max_entries: {2 * N}\n    entries:\n" + "".join(f"      {k}: {v}\n" for k, v in entries.items()))
    return path


def test_a_large_map_is_planned_from_what_changed(tmp_path: Path, pin_root: Path) -> None:
    rng = random.Random(15)
    entries = {k: rng.getrandbits(64) for k in rng.sample(range(1 << 32), N)}
    path = write(tmp_path / "big.yaml", entries)
    plan, report = api.converge(load_config([path]), str(pin_root))
    assert report is not None and report.entries_written == N
    live = read_live(str(pin_root)).maps["big"]
    assert isinstance(live.entries, Entries) and len(live.entries) == N
    assert bpftool_json("map", "show", "pinned", str(pin_root / "big"))["max_entries"] == 2 * N

    first = api.plan(load_config([path]), str(pin_root))
    assert not first.has_changes and len(first.verified) == 1  # compared in full, remembered
    again = api.plan(load_config([path]), str(pin_root))
    assert not again.has_changes and not again.verified  # known: two fingerprints compared

    key = next(iter(entries))
    entries[key] = 7
    changed = load_config([write(path, entries)])
    assert changed.inner_maps["big"].entries.base is not None  # assembled from blocks
    plan, report = api.converge(changed, str(pin_root))
    assert report is not None and report.entries_written == 1
    assert list(plan.changes[0].changed) == [key.to_bytes(4, "little")]
    assert not api.plan(load_config([path], use_cache=False), str(pin_root)).has_changes


def test_an_observed_read_sums_its_parts_as_the_whole(tmp_path: Path, pin_root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The live side's hash sum, worked out batch by batch while the kernel reads the next batch,
    is the whole map's; an apply then a changed apply with no plan between is planned from the
    changed blocks, the live map found to hold the previous version by those sums."""
    from kmesh_apply import digests
    from kmesh_apply.kernel import maps

    monkeypatch.setattr(maps, "_PART_BYTES", 4096)  # many batches for a few thousand entries
    monkeypatch.setattr(digests, "DIGEST_TYPES", ())  # the map is read (tests/test_digest.py: not read)
    rng = random.Random(16)
    entries = {k: rng.getrandbits(64) for k in rng.sample(range(1 << 32), N)}
    path = write(tmp_path / "big.yaml", entries)
    api.converge(load_config([path]), str(pin_root))
    parts: list[Entries] = []
    live = read_live(str(pin_root), observe=lambda name: parts.append if name == "big" else None)
    whole = live.maps["big"].entries
    assert isinstance(whole, Entries) and len(parts) > 10 and sum(len(p) for p in parts) == N
    assert sum(p.hash_sum() for p in parts) == Entries(4, 8, whole.keys_buffer, whole.values_buffer).hash_sum()

    key = next(iter(entries))
    entries[key] = 9
    changed = load_config([write(path, entries)])
    remembered = api._Remembered.of(changed)
    assert not remembered.known_equal  # no plan between the two applies
    state = remembered.read_live(changed, str(pin_root))
    assert state.maps["big"].entries._hash_sum is not None  # summed while read
    from kmesh_apply.plan import planner

    found: list[bool] = []
    monkeypatch.setattr(planner, "holds_base", lambda d, lv: found.append(holds_base(d, lv)) or found[-1])
    plan, report = api.converge(changed, str(pin_root))
    assert found == [True]  # planned from the changed blocks
    assert report is not None and report.entries_written == 1 and list(plan.changes[0].changed) == [key.to_bytes(4, "little")]
