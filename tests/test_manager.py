"""MapInMapManager (the seed's API) against the real kernel."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
import threading

import pytest
from conftest import pinned_maps

from kmesh_apply import InnerMapConfig, KernelError, KmeshError, MapInMapInfo, MapInMapManager, OuterMapConfig
from kmesh_apply.kernel import Map, possible_cpus


def u32(n: int) -> bytes:
    return n.to_bytes(4, "little")


@pytest.fixture
def mgr(pin_root):
    with MapInMapManager(str(pin_root)) as m:
        yield m


def test_seed_operations_pin_their_maps(mgr, pin_root, bpftool):
    inner = mgr.create_inner_map(InnerMapConfig("hash", 4, 8, 1000))
    outer = mgr.create_outer_map(OuterMapConfig("array", 4, None, 100, inner_map_id=inner))
    assert [p.name for p in pinned_maps(pin_root)] == sorted([f"inner-{inner}", f"outer-{outer}"])
    assert bpftool("map", "show", "pinned", str(pin_root / f"outer-{outer}"))["type"] == "array_of_maps"
    mgr.update_outer_element(outer, 1, inner)
    mgr.update_inner_element(inner, 100, 200)
    assert mgr.lookup_element(outer, 1, 100) == (200).to_bytes(8, "little")
    assert mgr.lookup_element(outer, 1, 101) is None
    assert mgr.lookup_element(outer, 2, 100) is None
    assert mgr.get_map_info(outer) == MapInMapInfo(outer, inner, 1, 0)
    dump = bpftool("map", "dump", "pinned", str(pin_root / f"inner-{inner}"))
    assert [bytes(int(b, 16) for b in dump[0]["value"])] == [(200).to_bytes(8, "little")]


def test_maps_outlive_the_manager(pin_root):
    with MapInMapManager(str(pin_root)) as mgr:
        inner = mgr.create_inner_map(InnerMapConfig("array", 4, 4, 8, flags=("inner_map",)))
        mgr.update_inner_element(inner, 3, 33)
    with Map.open_pinned(str(pin_root / f"inner-{inner}")) as m:
        assert m.lookup(u32(3)) == u32(33) and m.info.flags == ("inner_map",)


def test_unpinned_manager_owns_its_maps():
    with MapInMapManager() as mgr:
        inner = mgr.create_inner_map(InnerMapConfig(1, 4, 4, 8))  # the kernel's number for hash
    with pytest.raises(KernelError) as e:
        Map.from_id(inner)
    assert e.value.errno == errno.ENOENT


def test_seed_style_template_fd(mgr):
    inner = mgr.create_inner_map(InnerMapConfig("hash", 4, 4, 16))
    outer = mgr.create_outer_map(OuterMapConfig("hash_of_maps", 8, mgr.fd_of(inner), 10))
    mgr.update_outer_element(outer, 2**40, inner)
    assert mgr.get_map_info(outer).entries == 1
    with pytest.raises(KmeshError, match="exactly one of inner_map_fd, inner_map_id"):
        mgr.create_outer_map(OuterMapConfig("array", 4, None, 10))


def test_batched_slots_and_info(mgr, bpftool):
    tmpl = mgr.create_inner_map(InnerMapConfig("hash", 4, 4, 16))
    outer = mgr.create_outer_map(OuterMapConfig("array_of_maps", 4, None, 300, inner_map_id=tmpl))
    inners = [mgr.create_inner_map(InnerMapConfig("hash", 4, 4, 32)) for _ in range(200)]
    mgr.update_outer_elements(outer, {100 + i: inner for i, inner in enumerate(inners)})
    info = mgr.get_map_info(outer)
    assert (info.inner_id, info.entries) == (inners[0], 200)
    slots = {int.from_bytes(bytes(int(b, 16) for b in e["key"]), "little"): int.from_bytes(bytes(int(b, 16) for b in e["value"]), "little")
             for e in bpftool("map", "dump", "id", str(outer))}
    assert slots == {100 + i: inner for i, inner in enumerate(inners)}
    assert mgr.delete_outer_element(outer, 100) is True
    assert mgr.delete_outer_element(outer, 100) is False
    assert mgr.get_map_info(outer).inner_id == inners[1]


def test_delete_inner_element(mgr):
    inner = mgr.create_inner_map(InnerMapConfig("lru_hash", 8, 2, 16))
    mgr.update_inner_element(inner, b"\x01" * 8, b"\xff\xff")
    assert mgr.delete_inner_element(inner, b"\x01" * 8) is True
    assert mgr.delete_inner_element(inner, b"\x01" * 8) is False


def test_per_cpu_inner_values(mgr):
    inner = mgr.create_inner_map(InnerMapConfig("percpu_hash", 4, 4, 16))
    outer = mgr.create_outer_map(OuterMapConfig("hash", 4, None, 4, inner_map_id=inner))
    mgr.update_outer_element(outer, 7, inner)
    mgr.update_inner_element(inner, 1, 5)
    assert mgr.lookup_element(outer, 7, 1) == u32(5).ljust(8, b"\0") * possible_cpus()
    per_cpu = b"".join((c).to_bytes(8, "little") for c in range(possible_cpus()))
    mgr.update_inner_element(inner, 1, per_cpu)
    assert mgr.lookup_element(outer, 7, 1) == per_cpu


def test_keys_and_values_are_range_checked(mgr):
    inner = mgr.create_inner_map(InnerMapConfig("hash", 2, 1, 4))
    mgr.update_inner_element(inner, -1, 255)
    with pytest.raises(KmeshError, match="key 65536 does not fit in 2 byte"):
        mgr.update_inner_element(inner, 65536, 1)
    with pytest.raises(KmeshError, match="value 256 does not fit in 1 byte"):
        mgr.update_inner_element(inner, 1, 256)
    with pytest.raises(KmeshError, match="key is 4 bytes, expected 2"):
        mgr.update_inner_element(inner, b"abcd", 1)
    with pytest.raises(KmeshError, match="must be an integer or bytes"):
        mgr.update_inner_element(inner, "1", 1)


def test_wrong_map_types(mgr):
    inner = mgr.create_inner_map(InnerMapConfig("hash", 4, 4, 4))
    outer = mgr.create_outer_map(OuterMapConfig("array", 4, None, 4, inner_map_id=inner))
    with pytest.raises(KernelError, match="it is a hash map, not an array_of_maps or hash_of_maps"):
        mgr.update_outer_element(inner, 0, inner)
    with pytest.raises(KernelError, match="it is an outer map"):
        mgr.update_inner_element(outer, 0, 0)
    with pytest.raises(KernelError, match="it is an outer map"):
        mgr.update_outer_element(outer, 0, outer)
    with pytest.raises(KmeshError, match="unknown inner map type 'hashmap'"):
        mgr.create_inner_map(InnerMapConfig("hashmap", 4, 4, 4))
    with pytest.raises(KmeshError, match="unknown outer map type 'lru_hash'"):
        mgr.create_outer_map(OuterMapConfig("lru_hash", 4, None, 4, inner_map_id=inner))
    with pytest.raises(KernelError, match="key_size must be 4"):
        mgr.create_outer_map(OuterMapConfig("array", 8, None, 4, inner_map_id=inner))


def test_missing_map_id(mgr):
    with pytest.raises(KernelError, match="no map has kernel ID 2147483632") as e:
        mgr.get_map_info(0x7FFFFFF0)
    assert e.value.errno == errno.ENOENT


@pytest.mark.parametrize("template,inserted,differs", [
    (("array", 4, 8, ()), ("array", 8, 8, ()), "max_entries 8"),
    (("hash", 16, 8, ()), ("hash", 16, 8, ("no_prealloc",)), "flags"),
    (("hash", 16, 8, ()), ("hash", 16, 4, ()), "value_size 4"),
    (("hash", 16, 8, ()), ("lru_hash", 16, 8, ()), "type 'lru_hash'"),
])
def test_incompatible_inner_map(mgr, template, inserted, differs):
    def inner(spec) -> int:
        t, max_entries, value_size, flags = spec
        return mgr.create_inner_map(InnerMapConfig(t, 4, value_size, max_entries, flags=flags))

    tmpl = inner(template)
    outer = mgr.create_outer_map(OuterMapConfig("array", 4, None, 4, inner_map_id=tmpl))
    bad = inner(inserted)
    with pytest.raises(KernelError, match=differs) as e:
        mgr.update_outer_element(outer, 1, bad)
    assert e.value.errno == errno.EINVAL and "incompatible with the template" in e.value.hint
    with pytest.raises(KernelError, match=differs):
        mgr.update_outer_elements(outer, {0: tmpl, 1: bad})
    # a fresh manager (as a new CLI process) compares with the inner map already in slot 0
    with MapInMapManager() as other, pytest.raises(KernelError, match=differs) as e:
        other.update_outer_element(outer, 2, bad)
    assert "slot 00000000" in e.value.hint


def test_not_root_is_eperm_with_hint(pin_root):
    code = (
        "from kmesh_apply import MapInMapManager, InnerMapConfig\n"
        f"MapInMapManager({str(pin_root)!r}).create_inner_map(InnerMapConfig('hash', 4, 8, 10))\n"
    )
    r = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", sys.executable, "-c", code],
                       capture_output=True, text=True)
    assert r.returncode != 0
    assert "Operation not permitted (errno 1); run as root" in r.stderr


def test_threads_share_one_manager(mgr):
    tmpl = mgr.create_inner_map(InnerMapConfig("hash", 4, 8, 1000))
    outer = mgr.create_outer_map(OuterMapConfig("hash", 4, None, 64, inner_map_id=tmpl))
    errors: list[BaseException] = []

    def worker(n: int) -> None:
        try:
            inner = mgr.create_inner_map(InnerMapConfig("hash", 4, 8, 1000))
            mgr.update_outer_element(outer, n, inner)
            for k in range(300):
                mgr.update_inner_element(inner, k, n * 1000 + k)
                assert mgr.lookup_element(outer, n, k) == (n * 1000 + k).to_bytes(8, "little")
                mgr.map(tmpl)  # concurrent opens of one ID share one handle
        except BaseException as e:  # noqa: BLE001 - reported by the main thread
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert mgr.get_map_info(outer).entries == 16


def test_no_fd_leak_after_10000_operations(pin_root):
    with MapInMapManager(str(pin_root)) as mgr:
        inner = mgr.create_inner_map(InnerMapConfig("hash", 4, 8, 100))
        outer = mgr.create_outer_map(OuterMapConfig("array", 4, None, 10, inner_map_id=inner))
        mgr.update_outer_element(outer, 1, inner)
    with MapInMapManager(str(pin_root)) as mgr:  # holds no handle yet: lookups open the maps by ID
        assert mgr.lookup_element(outer, 1, 0) is None  # opens the outer map, and the inner one through slot 1
        before = len(os.listdir("/proc/self/fd"))
        for i in range(2000):
            mgr.update_inner_element(inner, i % 100, i)
            assert mgr.lookup_element(outer, 1, i % 100) == i.to_bytes(8, "little")  # through the slot
            assert mgr.get_map_info(outer).entries == 1
            mgr.delete_inner_element(inner, i % 100)
            with pytest.raises(KernelError):
                mgr.get_map_info(inner)  # an error path, too
        assert len(os.listdir("/proc/self/fd")) == before
        opened = before
    assert len(os.listdir("/proc/self/fd")) == opened - 2  # closing the manager closes both
