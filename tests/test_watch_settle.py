"""When `watch` reads a file and when it destroys maps (issue 21), without the kernel: the settling rules
on event sequences as editors, scripts and Kubernetes make them, the destroy guard, and the synchroniser
keeping held destroys (against test_sync_retries' in-memory kernel)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from test_sync_retries import CONFIG, MemoryKernel

from kmesh_apply import load_config
from kmesh_apply.sync import Synchroniser
from kmesh_apply.sync.guard import FilesGuard
from kmesh_apply.sync.inotify import (IN_CLOSE_WRITE, IN_CREATE, IN_DELETE, IN_MODIFY, IN_MOVED_FROM, IN_MOVED_TO,
                                      IN_Q_OVERFLOW, Event)
from kmesh_apply.sync.retries import HELD
from kmesh_apply.sync.settle import EVERYTHING, FILE, GONE, SETTLE, STABLE, WRITER_QUIET, Settling

D = "/conf"
F = f"{D}/mesh.yaml"


def kind(path: str) -> str | None:
    name = path.rsplit("/", 1)[1]
    return EVERYTHING if name.startswith("..") else FILE if name.endswith((".yaml", ".json")) else None


def settling(*steps: tuple[float, int, str]) -> Settling:
    s = Settling(kind)
    for at, mask, path in steps:
        s.observe([Event(mask, path, D)], at)
    return s


def test_a_rename_into_place_is_read_at_once():
    s = settling((10.0, IN_MOVED_FROM, f"{D}/.mesh.yaml.swp"), (10.0, IN_MOVED_TO, F))
    assert s.pending() and s.ready_at() == 10.0 and s.stable_at() == 0.0  # complete: destroys need not wait
    assert s.take(10.0) == {F} and not s.pending()


def test_an_in_place_write_is_read_once_closed_and_settled():
    s = settling((10.0, IN_MODIFY, F), (10.05, IN_MODIFY, F))  # a writer pausing between writes, file still open
    assert s.ready_at() == pytest.approx(10.05 + WRITER_QUIET)
    s.observe([Event(IN_CLOSE_WRITE, F, D)], 10.1)
    assert s.ready_at() == pytest.approx(10.1 + SETTLE)
    s.observe([Event(IN_MODIFY, F, D), Event(IN_CLOSE_WRITE, F, D)], 10.15)  # `cat more >> f`: the window starts again
    assert s.ready_at() == pytest.approx(10.15 + SETTLE) and s.stable_at() == pytest.approx(10.15 + STABLE)


def test_a_vanished_file_is_gone_only_after_a_while(tmp_path: Path):
    s = settling((10.0, IN_DELETE, F))
    assert s.ready_at() == pytest.approx(10.0 + GONE) and s.stable_at() == pytest.approx(10.0 + STABLE)
    s.observe([Event(IN_MOVED_TO, F, D)], 10.02)  # an editor's rename and rewrite: back, complete
    assert s.ready_at() == pytest.approx(10.02)
    # vim: renamed to a backup, then written anew in place (a regular file its creator holds open)
    new = tmp_path / "mesh.yaml"
    new.write_text("inner_maps: {}\n")
    s = Settling(lambda p: FILE if p.endswith(".yaml") else None)
    s.observe([Event(IN_MOVED_FROM, str(new), str(tmp_path)), Event(IN_MOVED_TO, f"{new}~", str(tmp_path))], 20.0)
    s.observe([Event(IN_CREATE, str(new), str(tmp_path)), Event(IN_MODIFY, str(new), str(tmp_path))], 20.02)
    assert s.ready_at() == pytest.approx(20.02 + WRITER_QUIET)
    s.observe([Event(IN_CLOSE_WRITE, str(new), str(tmp_path))], 20.03)
    assert s.ready_at() == pytest.approx(20.03 + SETTLE)


def test_a_link_created_is_complete(tmp_path: Path):
    (tmp_path / "target.yaml").write_text("inner_maps: {}\n")
    (tmp_path / "link.yaml").symlink_to("target.yaml")
    s = Settling(lambda p: FILE)
    s.observe([Event(IN_CREATE, str(tmp_path / "link.yaml"), str(tmp_path))], 5.0)
    assert s.ready_at() == 5.0


def test_editor_files_are_ignored_and_configmap_swaps_list_everything():
    s = settling((1.0, IN_MODIFY, f"{D}/.mesh.yaml.swp"), (1.0, IN_CREATE, f"{D}/4913"), (1.0, IN_MOVED_TO, f"{D}/mesh.yaml~"))
    assert not s.pending()
    s.observe([Event(IN_MOVED_TO, f"{D}/..data", D)], 2.0)
    assert s.ready_at() == 2.0 and s.take(2.0) is None  # every file is listed again


def test_lost_events_list_everything_after_a_settle():
    s = settling((1.0, IN_MOVED_TO, F))
    s.observe([Event(IN_Q_OVERFLOW, "", "")], 2.0)
    assert s.ready_at() == pytest.approx(2.0 + SETTLE) and s.take(3.0) is None
    s.give_back({F})  # a read dropped: read again
    assert s.take(3.0) == {F}


def test_the_guard_waits_for_stable_files_and_bounds_a_mass_destroy():
    s = Settling(kind)
    guard = FilesGuard(s, max_destroy=2)
    written = time.monotonic() - STABLE / 2  # in place, half the stable time ago
    s.observe([Event(IN_CLOSE_WRITE, F, D)], written)
    held = guard.hold(["a"])
    assert held["a"].until == pytest.approx(written + STABLE) and f"{STABLE:g} s" in held["a"].reason
    s.observe([Event(IN_CLOSE_WRITE, F, D)], written - STABLE)
    assert guard.hold(["a", "b"]) == {}  # stable now, and within the limit
    held = guard.hold(["a", "b", "c"])
    assert set(held) == {"a", "b", "c"} and all(h.until is None for h in held.values())
    assert "3 maps would be destroyed" in held["a"].reason and "SIGHUP" in held["a"].reason
    guard.confirm(["a", "b", "c"])
    assert guard.hold(["a", "b", "c", "d"]) == {}  # confirmed; d alone is within the limit
    assert guard.hold([]) == {} and guard.confirmed == set()  # a confirmation does not outlive what it confirmed
    assert set(guard.hold(["a", "b", "c"])) == {"a", "b", "c"}


def test_the_synchroniser_keeps_held_destroys_until_released():
    kernel, s = MemoryKernel(), Settling(kind)
    guard = FilesGuard(s, max_destroy=1)
    sync = Synchroniser(kernel.state.pin_root, kernel=kernel, guard=guard)
    sync.apply(load_config(inline=CONFIG))
    without_b = CONFIG.replace("  b: {type: hash, key: u32, value: u64, max_entries: 8, entries: {3: 30}}\n", "") \
        .replace(", 1: b", "")
    written = time.monotonic() - STABLE + 0.3
    s.observe([Event(IN_CLOSE_WRITE, F, D)], written)
    sync.apply(load_config(inline=without_b))
    assert "b" in kernel.state.maps and sync.held()["b"].until == pytest.approx(written + STABLE)  # not stable yet
    assert kernel.state.maps["o"].slots == {(0).to_bytes(4, "little"): kernel.state.maps["a"].id}  # the rest applied
    assert sync.status()["b"].state == HELD and sync.health().ok  # a wait for stable files is not a failure
    assert 0 < sync.released_in() <= 0.3  # type: ignore[operator]
    sync.verify()  # the drift check keeps it too
    assert "b" in kernel.state.maps
    time.sleep(0.3)
    sync.flush()
    assert "b" not in kernel.state.maps and not sync.held() and "b" not in sync.status()

    two_more = CONFIG.replace("  b:", "  c: {type: hash, key: u32, value: u64, max_entries: 8}\n"
                                      "  d: {type: hash, key: u32, value: u64, max_entries: 8}\n  b:")
    sync.apply(load_config(inline=two_more))
    sync.apply(load_config(inline=without_b))  # c, d and b go at once: more than max_destroy 1
    assert {"b", "c", "d"} <= kernel.state.maps.keys() and sync.released_in() is None
    health = sync.health()
    assert not health.ok and "3 maps would be destroyed" in health.reasons[0] and "(b, c, d)" in health.reasons[0]
    guard.confirm(sync.held())  # SIGHUP
    sync.flush()
    assert not {"b", "c", "d"} & kernel.state.maps.keys() and sync.health().ok
