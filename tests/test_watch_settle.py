"""When `watch` reads a file and when it destroys maps (issue 21): the settling rules on changes as watchfiles
reports them (a set of (added | modified | deleted, path) per burst) for real files as editors, scripts and
Kubernetes leave them, the lease probe against real writers and the destroy guard, without the kernel; the
synchroniser keeping held destroys, on a real pin root read with bpftool."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from test_sync_retries import map_id, slots

from kmesh_apply import load_config
from kmesh_apply.sync import Synchroniser
from kmesh_apply.sync.guard import FilesGuard
from kmesh_apply.sync.leases import open_for_writing
from kmesh_apply.sync.retries import HELD
from kmesh_apply.sync.settle import (ADDED, DELETED, EVERYTHING, FILE, GONE, LOOK, MODIFIED, SETTLE, STABLE,
                                     WRITER_QUIET, Settling)

TEXT = "inner_maps: {}\n"


def kind(path: str) -> str | None:
    name = path.rsplit("/", 1)[1]
    return EVERYTHING if name.startswith("..") else FILE if name.endswith((".yaml", ".json")) else None


def test_a_rename_into_place_is_read_at_once(tmp_path: Path):
    f, tmp = tmp_path / "mesh.yaml", tmp_path / ".mesh.yaml.tmp"
    tmp.write_text(TEXT)
    os.replace(tmp, f)
    s = Settling(kind)
    assert s.observe({(ADDED, str(tmp)), (DELETED, str(tmp)), (ADDED, str(f))}, 10.0) == {str(f)}
    assert s.pending() and s.ready_at() == 10.0 and s.stable_at() == 0.0  # complete: destroys need not wait
    assert s.take(10.0) == {str(f)} and not s.pending()


def test_an_in_place_write_is_read_once_no_writer_holds_it_and_it_settled(tmp_path: Path):
    f = tmp_path / "mesh.yaml"
    f.write_text(TEXT)
    s = Settling(kind)
    with open(f, "a") as writer:  # a writer pausing between writes, the file still open
        writer.write("# more\n")
        writer.flush()
        s.observe({(MODIFIED, str(f))}, 10.0)
        assert s.ready_at() == pytest.approx(10.0 + LOOK)  # not ready: look again then
        s.look(10.05)
        assert s.ready_at() == pytest.approx(10.05 + LOOK) and s.held(12.1, WRITER_QUIET) == [str(f)]
    s.look(10.1)  # closed: it must now stay unchanged for SETTLE from the last look that found it held
    assert s.ready_at() == pytest.approx(10.05 + SETTLE) and s.stable_at() == pytest.approx(10.05 + STABLE)
    assert s.held(12.1, WRITER_QUIET) == []
    with open(f, "a") as more:  # `cat more >> f`, its report not in yet: the look sees the change
        more.write("# and more\n")
    s.look(10.15)
    assert s.ready_at() == pytest.approx(10.15 + SETTLE)
    s.observe({(MODIFIED, str(f))}, 10.16)  # the report itself
    assert s.ready_at() == pytest.approx(10.16 + SETTLE) and s.stable_at() == pytest.approx(10.16 + STABLE)


def test_a_new_file_is_read_once_written_closed_and_settled(tmp_path: Path):
    f = tmp_path / "mesh.yaml"
    s = Settling(kind)
    with open(f, "w") as writer:  # created, and its creator still writes it: reported as added alone
        writer.write("inner_maps:\n")
        writer.flush()
        s.observe({(ADDED, str(f))}, 5.0)
        assert s.ready_at() == pytest.approx(5.0 + LOOK) and s.stable_at() == pytest.approx(5.0 + STABLE)
    s.look(5.05)
    assert s.ready_at() == pytest.approx(5.0 + SETTLE)
    # `cat a > f; cat b >> f`: created, written and closed within a burst is reported as added alone too,
    # and the next writer may follow: not complete (unlike a rename, which reports its source deleted)
    g = tmp_path / "other.yaml"
    g.write_text("inner_maps:\n")
    s = Settling(kind)
    s.observe({(ADDED, str(g))}, 6.0)
    assert s.ready_at() == pytest.approx(6.0 + SETTLE) and s.stable_at() == pytest.approx(6.0 + STABLE)


def test_a_vanished_file_is_gone_only_after_a_while(tmp_path: Path):
    f, backup = tmp_path / "mesh.yaml", tmp_path / "mesh.yaml~"
    backup.write_text(TEXT)
    s = Settling(kind)
    s.observe({(DELETED, str(f))}, 10.0)
    assert s.ready_at() == pytest.approx(10.0 + GONE) and s.stable_at() == pytest.approx(10.0 + STABLE)
    os.replace(backup, f)
    s.observe({(DELETED, str(backup)), (ADDED, str(f))}, 10.02)  # renamed back: complete
    assert s.ready_at() == pytest.approx(10.02)
    # vim: renamed to a backup, then written anew (a file its creator holds open)
    os.replace(f, backup)
    s = Settling(kind)
    s.observe({(DELETED, str(f)), (ADDED, str(backup))}, 20.0)
    with open(f, "w") as writer:
        writer.write(TEXT)
        writer.flush()
        s.observe({(ADDED, str(f))}, 20.02)
        assert s.ready_at() == pytest.approx(20.02 + LOOK)
    s.look(20.03)
    assert s.ready_at() == pytest.approx(20.02 + SETTLE)
    # the same within one burst, the writer done: the file's own deletion is no rename into place
    os.replace(f, backup)
    f.write_text(TEXT)
    s = Settling(kind)
    s.observe({(DELETED, str(f)), (ADDED, str(backup)), (ADDED, str(f))}, 30.0)
    assert s.ready_at() == pytest.approx(30.0 + SETTLE)


def test_a_link_created_is_complete(tmp_path: Path):
    (tmp_path / "target.yaml").write_text(TEXT)
    (tmp_path / "link.yaml").symlink_to("target.yaml")
    s = Settling(lambda p: FILE)
    s.observe({(ADDED, str(tmp_path / "link.yaml"))}, 5.0)
    assert s.ready_at() == 5.0


def test_editor_files_are_ignored_and_configmap_swaps_list_everything(tmp_path: Path):
    d = str(tmp_path)
    s = Settling(kind)
    s.observe({(MODIFIED, f"{d}/.mesh.yaml.swp"), (ADDED, f"{d}/4913"), (ADDED, f"{d}/mesh.yaml~")}, 1.0)
    assert not s.pending()
    (tmp_path / "..2026_12_03").mkdir()
    (tmp_path / "..data").symlink_to("..2026_12_03")
    s.observe({(ADDED, f"{d}/..data")}, 2.0)
    assert s.ready_at() == 2.0 and s.take(2.0) is None  # every file is listed again


def test_lost_changes_list_everything_after_a_settle(tmp_path: Path):
    f = tmp_path / "mesh.yaml"
    f.write_text(TEXT)
    s = Settling(kind)
    s.observe({(ADDED, str(f))}, 1.0)
    s.lost(2.0)
    assert s.ready_at() == pytest.approx(2.0 + SETTLE) and s.take(3.0) is None
    s.give_back({str(f)})  # a read dropped: read again
    assert s.take(3.0) == {str(f)}


def test_where_leases_are_refused_a_file_is_read_after_a_quiet_time(tmp_path: Path):
    f = tmp_path / "mesh.yaml"
    f.write_text(TEXT)
    s = Settling(kind, open_for_writing=lambda path: None)  # EINVAL: NFS, FUSE, fs.leases-enable = 0
    s.observe({(MODIFIED, str(f))}, 1.0)
    assert s.ready_at() == pytest.approx(1.0 + WRITER_QUIET)


def test_the_lease_probe_sees_writers_of_any_process(tmp_path: Path):
    f = tmp_path / "mesh.yaml"
    f.write_text(TEXT)
    assert open_for_writing(str(f)) is False
    with open(f) as reader:
        assert open_for_writing(str(f)) is False  # readers do not count
        reader.read()
    with open(f, "a"):
        assert open_for_writing(str(f)) is True
    child = subprocess.Popen([sys.executable, "-c", "import sys; f = open(sys.argv[1], 'a'); print(flush=True); "
                              "sys.stdin.read()", str(f)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None and child.stdout.readline() == "\n"  # it holds the file open now
        assert open_for_writing(str(f)) is True
    finally:
        child.communicate("")  # it closes the file and ends
    assert open_for_writing(str(f)) is False and f.read_text() == TEXT  # the probe changed nothing
    os.mkfifo(tmp_path / "fifo.yaml")
    assert open_for_writing(str(tmp_path / "fifo.yaml")) is False  # never opened (it would block)
    assert open_for_writing(str(tmp_path)) is False and open_for_writing(str(tmp_path / "nothing.yaml")) is False


def written_file(tmp_path: Path) -> str:
    """A config file written in place and closed."""
    (tmp_path / "mesh.yaml").write_text(TEXT)
    return str(tmp_path / "mesh.yaml")


def test_the_guard_waits_for_stable_files_and_bounds_a_mass_destroy(tmp_path: Path):
    s, f = Settling(kind), written_file(tmp_path)
    guard = FilesGuard(s, max_destroy=2)
    written = time.monotonic() - STABLE / 2  # in place, half the stable time ago
    s.observe({(MODIFIED, f)}, written)
    held = guard.hold(["a"])
    assert held["a"].until == pytest.approx(written + STABLE) and f"{STABLE:g} s" in held["a"].reason
    s.observe({(MODIFIED, f)}, written - STABLE)
    assert guard.hold(["a", "b"]) == {}  # stable now, and within the limit
    held = guard.hold(["a", "b", "c"])
    assert set(held) == {"a", "b", "c"} and all(h.until is None for h in held.values())
    assert "3 maps would be destroyed" in held["a"].reason and "SIGHUP" in held["a"].reason
    guard.confirm(["a", "b", "c"])
    assert guard.hold(["a", "b", "c", "d"]) == {}  # confirmed; d alone is within the limit
    assert guard.hold([]) == {} and guard.confirmed == set()  # a confirmation does not outlive what it confirmed
    assert set(guard.hold(["a", "b", "c"])) == {"a", "b", "c"}


WITH_B = """
inner_maps:
  a: {type: hash, key: u32, value: u64, max_entries: 8, entries: {1: 10}}
  b: {type: hash, key: u32, value: u64, max_entries: 8, entries: {3: 30}}
outer_maps:
  o: {type: hash_of_maps, key: u32, max_entries: 4, inner_map: a, entries: {0: a, 1: b}}
"""
WITHOUT_B = WITH_B.replace("  b: {type: hash, key: u32, value: u64, max_entries: 8, entries: {3: 30}}\n", "").replace(", 1: b", "")
TWO_MORE = WITH_B.replace("  b:", "  c: {type: hash, key: u32, value: u64, max_entries: 8}\n"
                                  "  d: {type: hash, key: u32, value: u64, max_entries: 8}\n  b:")


def pinned(root: Path) -> set[str]:
    return {p.name for p in root.iterdir() if not p.name.startswith("_kmesh")}


def test_the_synchroniser_keeps_held_destroys_until_released(pin_root: Path, tmp_path: Path):
    assert "b" not in WITHOUT_B and "c" in TWO_MORE
    s, f = Settling(kind), written_file(tmp_path)
    guard = FilesGuard(s, max_destroy=1)
    with Synchroniser(str(pin_root), guard=guard) as sync:
        sync.apply(load_config(inline=WITH_B))
        written = time.monotonic() - STABLE + 60  # a file written in place: stable a minute from now
        s.observe({(MODIFIED, f)}, written)
        sync.apply(load_config(inline=WITHOUT_B))
        assert "b" in pinned(pin_root) and sync.held()["b"].until == pytest.approx(written + STABLE)  # not stable yet
        assert slots(pin_root, "o") == {0: map_id(pin_root, "a")}  # the rest applied
        assert sync.status()["b"].state == HELD and sync.health().ok  # a wait for stable files is not a failure
        assert 0 < sync.released_in() <= 60  # type: ignore[operator]
        sync.verify()  # the drift check keeps it too
        assert "b" in pinned(pin_root)
        s.observe({(MODIFIED, f)}, time.monotonic() - STABLE)  # as if written STABLE ago: stable now
        sync.flush()
        assert pinned(pin_root) == {"a", "o"} and not sync.held() and "b" not in sync.status()

        sync.apply(load_config(inline=TWO_MORE))
        sync.apply(load_config(inline=WITHOUT_B))  # c, d and b go at once: more than max_destroy 1
        assert pinned(pin_root) == {"a", "b", "c", "d", "o"} and sync.released_in() is None
        health = sync.health()
        assert not health.ok and "3 maps would be destroyed" in health.reasons[0] and "(b, c, d)" in health.reasons[0]
        guard.confirm(sync.held())  # SIGHUP
        sync.flush()
        assert pinned(pin_root) == {"a", "o"} and sync.health().ok
