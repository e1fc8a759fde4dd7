"""The kernel layer against the real kernel: map handles, entries, batches, slots and errors."""

from __future__ import annotations

import ctypes
import errno
import gc
import os
import struct

import pytest

from kmesh_apply.ctype import records
from kmesh_apply.errors import KernelError, KmeshError
from kmesh_apply.kernel import BatchError, Map, MapInfo, incompatibility, possible_cpus
from kmesh_apply.kernel import libbpf as L
from kmesh_apply.kernel import maps


def u32(n: int) -> bytes:
    return n.to_bytes(4, "little")


def u64(n: int) -> bytes:
    return n.to_bytes(8, "little")


def hex_le(hex_bytes: list[str]) -> int:
    """An integer from bpftool -j's list of "0x.." bytes (host order)."""
    return int.from_bytes(bytes(int(b, 16) for b in hex_bytes), "little")


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_create_and_info(bpftool):
    with Map.create("hash", 4, 8, 1000, name="kt_info", flags=["no_prealloc"]) as m:
        info = m.info
        assert (info.type, info.key_size, info.value_size, info.max_entries) == ("hash", 4, 8, 1000)
        assert info.flags == ("no_prealloc",) and info.name == "kt_info"
        shown = bpftool("map", "show", "id", str(m.id))
        assert shown["id"] == info.id and shown["type"] == "hash" and shown["name"] == "kt_info"
        assert m.memlock() and m.memlock() > 0
        assert m.label == f"map kt_info (ID {info.id})"


def test_unknown_type_flag_and_bad_name_are_user_errors():
    with pytest.raises(KmeshError, match="unknown map type 'hashh'"):
        Map.create("hashh", 4, 4, 4)
    with pytest.raises(KmeshError, match="unknown map flag 'prealloc'"):
        Map.create("hash", 4, 4, 4, flags=["prealloc"])
    with pytest.raises(KmeshError, match="kernel object name"):
        Map.create("hash", 4, 4, 4, name="has-dash")


def test_create_hints():
    with pytest.raises(KernelError, match="lpm_trie needs flag no_prealloc") as e:
        Map.create("lpm_trie", 8, 4, 4)
    assert e.value.errno == errno.EINVAL
    with pytest.raises(KernelError, match="key_size must be 4"):
        Map.create("array", 8, 4, 4)


def test_entries_one_at_a_time():
    with Map.create("hash", 4, 8, 4) as m:
        assert m.lookup(u32(1)) is None and m.next_key(None) is None
        m.update(u32(1), u64(10))
        m.update(u32(2), u64(20))
        assert m.lookup(u32(1)) == u64(10)
        assert {m.next_key(None), m.next_key(m.next_key(None))} == {u32(1), u32(2)}
        assert m.delete(u32(1)) is True and m.delete(u32(1)) is False
        assert m.items() == {u32(2): u64(20)}


def test_wrong_key_and_value_sizes_are_refused_before_the_kernel():
    with Map.create("hash", 4, 8, 4) as m:
        with pytest.raises(KernelError, match="key is 8 bytes, the map's key_size is 4"):
            m.update(u64(1), u64(1))
        with pytest.raises(KernelError, match="value is 4 bytes"):
            m.update(u32(1), u32(1))
        with pytest.raises(KernelError, match="key is 2 bytes"):
            m.lookup(b"ab")


def test_full_map_is_e2big_with_hint():
    with Map.create("hash", 4, 4, 2) as m:
        m.update(u32(1), u32(1))
        m.update(u32(2), u32(2))
        with pytest.raises(KernelError, match="max_entries") as e:
            m.update(u32(3), u32(3))
        assert e.value.errno == errno.E2BIG
    with Map.create("array", 4, 4, 2) as m, pytest.raises(KernelError, match="indexes below max_entries"):
        m.update(u32(5), u32(1))


def test_update_flags_hints():
    with Map.create("hash", 4, 4, 4) as m:
        m.update(u32(1), u32(1))
        with pytest.raises(KernelError, match="exists already"):
            m.update(u32(1), u32(1), flags=1)
        with pytest.raises(KernelError, match="does not exist"):
            m.update(u32(2), u32(1), flags=2)


@pytest.mark.parametrize("map_type", ["hash", "lru_hash", "array", "percpu_hash", "percpu_array", "lpm_trie"])
def test_batches_and_items(map_type):
    n = 3000
    flags = ["no_prealloc"] if map_type == "lpm_trie" else []
    ks = 8 if map_type == "lpm_trie" else 4
    with Map.create(map_type, ks, 4, n if "array" in map_type else 2 * n, flags=flags) as m:  # LRU evicts early
        vs = m.syscall_value_size
        if map_type == "lpm_trie":
            keys = [u32(32) + i.to_bytes(4, "big") for i in range(n)]
        else:
            keys = [u32(i) for i in range(n)]
        values = [(i * 7).to_bytes(4, "little").ljust(vs, b"\0") for i in range(n)]
        m.update_batch(b"".join(keys), b"".join(values), n)
        assert m.items() == dict(zip(keys, values))
        if map_type in ("array", "percpu_array"):
            return  # array entries cannot be deleted
        m.delete_batch(b"".join(keys[: n // 2]), n // 2)
        assert m.items() == dict(zip(keys[n // 2:], values[n // 2:]))


@pytest.mark.parametrize("map_type", ["hash", "lru_hash", "array", "percpu_hash", "percpu_array"])
@pytest.mark.parametrize("lookup_bytes", [1, 7 * 12, 1 << 20])
def test_items_in_chunks_with_shared_buffers(map_type, lookup_bytes, monkeypatch):
    """Chunks of one entry (hash buckets with more grow the chunk), of a few, or the whole map; one
    LookupBuffers serves maps of different sizes in turn."""
    monkeypatch.setattr(maps, "_LOOKUP_BYTES", lookup_bytes)
    buffers = maps.LookupBuffers()
    for n, ks, value_size in ((300, 4, 8), (3, 8, 4), (1000, 4, 12)):
        with Map.create(map_type, 4 if "array" in map_type else ks, value_size, n if "array" in map_type else 2 * n) as m:
            ks, vs = m.info.key_size, m.syscall_value_size
            keys = [i.to_bytes(ks, "little") for i in range(n)]
            values = [(i * 7 + 1).to_bytes(vs, "little") for i in range(n)]
            m.update_batch(b"".join(keys), b"".join(values), n)
            assert m.items(buffers) == dict(zip(keys, values))


@pytest.mark.parametrize("map_type,entries", [("array", 4), ("hash", 3), ("hash", 0), ("percpu_array", 4)])
def test_small_maps_are_read_in_one_call(map_type, entries, monkeypatch):
    """A hash map reports its end with the entries; a full array needs no call to find it has no more."""
    seen = []
    lookup = L.bpf_map_lookup_batch
    monkeypatch.setattr(L, "bpf_map_lookup_batch", lambda *a: seen.append(a) or lookup(*a))
    with Map.create(map_type, 4, 8, 4) as m:
        vs = m.syscall_value_size
        for i in range(entries):
            m.update(u32(i), u64(i + 1).ljust(vs, b"\0"))
        assert m.items() == {u32(i): u64(i + 1).ljust(vs, b"\0") for i in range(entries)}
    assert len(seen) == 1


@pytest.mark.parametrize("count", [0, 1, 2, 3, 20, 63, 64, 65, 1023, 1024, 1025, 5000])
@pytest.mark.parametrize("size", [1, 4, 13])
def test_records(count, size):
    blob = os.urandom(count * size + 5)  # records, then bytes that are not asked for
    want = [blob[i:i + size] for i in range(0, count * size, size)]
    assert list(records(blob, size, count)) == want
    buf = (ctypes.c_char * len(blob)).from_buffer_copy(blob)
    assert list(records(buf, size, count)) == want
    assert list(records(blob[:count * size], size)) == want  # all of them


def test_percpu_values_hold_one_copy_per_cpu():
    with Map.create("percpu_hash", 4, 4, 4) as m:
        assert m.syscall_value_size == 8 * possible_cpus()
        per_cpu = b"".join(u64(c) for c in range(possible_cpus()))
        m.update(u32(1), per_cpu)
        assert m.lookup(u32(1)) == per_cpu


def test_batch_failure_names_the_entry():
    with Map.create("hash", 4, 4, 2) as m:
        with pytest.raises(BatchError) as e:
            m.update_batch(u32(1) + u32(2) + u32(3), u32(0) * 3, 3)
        assert e.value.done == 2 and "entry 3 of 3" in str(e.value) and e.value.errno == errno.E2BIG
        with pytest.raises(KernelError, match="entry 1 of 1"):
            m.delete_batch(u32(9), 1)


def test_pin_and_open_pinned(pin_root, bpftool):
    os.makedirs(pin_root)
    path = str(pin_root / "m1")
    with Map.create("hash", 4, 4, 4, name="kt_pin") as m:
        m.pin(path)
        m.update(u32(1), u32(5))
        created_id = m.id
        with pytest.raises(KernelError, match="already pinned"):
            m.pin(path)
    with Map.open_pinned(path) as again:
        assert again.id == created_id and again.lookup(u32(1)) == u32(5)
        assert again.label == f"map {path} (ID {created_id})"
    assert bpftool("map", "show", "pinned", path)["id"] == created_id
    with pytest.raises(KernelError, match="nothing is pinned at"):
        Map.open_pinned(str(pin_root / "missing"))


def _pin_a_program(path: str) -> None:
    """Load the smallest socket filter (r0 = 0; exit) and pin it."""
    insns = struct.pack("<BBhiBBhi", 0xB7, 0, 0, 0, 0x95, 0, 0, 0)
    fn = L.lib.bpf_prog_load
    fn.restype = ctypes.c_int
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_size_t, ctypes.c_void_p]
    fd = fn(1, b"kt_prog", b"GPL", insns, 2, None)
    assert fd >= 0, fd
    assert L.bpf_obj_pin(fd, path.encode()) == 0
    os.close(fd)


def test_open_pinned_program_is_a_clear_error(pin_root):
    os.makedirs(pin_root)
    path = str(pin_root / "prog")
    _pin_a_program(path)
    before = open_fds()
    with pytest.raises(KernelError, match="is a BPF prog, not a map"):
        Map.open_pinned(path)
    assert open_fds() == before


def test_from_id():
    with Map.create("array", 4, 4, 4) as m, Map.from_id(m.id) as same:
        assert same.info == m.info
    with pytest.raises(KernelError, match="no map has kernel ID") as e:
        Map.from_id(0x7FFFFFF0)
    assert e.value.errno == errno.ENOENT


def test_closed_handles_and_garbage_collection_release_fds():
    before = open_fds()
    m = Map.create("hash", 4, 4, 4)
    m.close()
    m.close()  # idempotent
    with pytest.raises(KmeshError, match="already closed"):
        m.lookup(u32(1))
    for _ in range(50):
        Map.create("hash", 4, 4, 4)  # forgotten handles
    gc.collect()
    assert open_fds() == before


def test_no_fd_leak_after_10000_operations():
    with Map.create("hash", 4, 4, 100) as m:
        before = open_fds()
        for i in range(2500):
            m.update(u32(i % 100), u32(i))
            m.lookup(u32(i % 100))
            m.items() if i % 100 == 0 else m.next_key(None)
            m.delete(u32(i % 100))
        assert open_fds() == before


# --- outer maps ----------------------------------------------------------------


def test_outer_map_slots(bpftool):
    with Map.create("hash", 4, 8, 16) as tmpl, Map.create("array_of_maps", 4, 4, 8, inner_map=tmpl) as outer:
        assert outer.template == tmpl.info
        inners = [Map.create("hash", 4, 8, 16) for _ in range(3)]
        outer.update_slots(u32(1), inners[:1])
        outer.update_slots(u32(2) + u32(5), inners[1:])
        assert outer.slots() == {u32(1): inners[0].id, u32(2): inners[1].id, u32(5): inners[2].id}
        assert outer.lookup(u32(1)) == u32(inners[0].id)
        dump = bpftool("map", "dump", "id", str(outer.id))
        assert {hex_le(e["key"]): hex_le(e["value"]) for e in dump} == {1: inners[0].id, 2: inners[1].id, 5: inners[2].id}
        assert outer.delete(u32(2)) and outer.lookup(u32(2)) is None
        for m in inners:
            m.close()


def test_hash_of_maps_batch_slots():
    with Map.create("hash", 4, 4, 4) as tmpl, Map.create("hash_of_maps", 8, 4, 300, inner_map=tmpl) as outer:
        inners = [Map.create("hash", 4, 4, 4) for _ in range(200)]
        keys = b"".join(u64(1000 + i) for i in range(200))
        outer.update_slots(keys, inners)
        assert outer.slots() == {u64(1000 + i): m.id for i, m in enumerate(inners)}
        outer.delete_batch(keys, 200)
        assert outer.slots() == {}
        for m in inners:
            m.close()


# The table in kernel-facts.md: (template, inserted, property named in the hint or None when ok).
INCOMPATIBLE = [
    (("hash", 16, 8, []), ("hash", 32, 8, []), None),
    (("array", 4, 8, []), ("array", 8, 8, []), "max_entries 8"),
    (("array", 4, 8, ["inner_map"]), ("array", 8, 8, []), "flags"),
    (("array", 4, 8, ["inner_map"]), ("array", 8, 8, ["inner_map"]), None),
    (("hash", 4, 8, []), ("hash", 4, 8, ["no_prealloc"]), "flags ('no_prealloc',)"),
    (("hash", 4, 8, []), ("hash", 4, 4, []), "value_size 4 (template: 8)"),
    (("hash", 4, 8, []), ("lru_hash", 4, 8, []), "type 'lru_hash' (template: 'hash')"),
]


def _mk(spec) -> Map:
    t, max_entries, value_size, flags = spec
    return Map.create(t, 4, value_size, max_entries, flags=flags)


@pytest.mark.parametrize("template,inserted,differs", INCOMPATIBLE)
@pytest.mark.parametrize("knows_template", [True, False])
def test_incompatible_inner_map_hint(template, inserted, differs, knows_template):
    with _mk(template) as tmpl, Map.create("array_of_maps", 4, 4, 4, inner_map=tmpl) as created, _mk(inserted) as inner:
        outer = created if knows_template else Map.from_id(created.id)
        if not knows_template:  # the hint then compares with an inner map in another slot
            peer = _mk(template)
            outer.update_slots(u32(0), [peer])
        if differs is None:
            outer.update_slots(u32(1), [inner])
            assert incompatibility(tmpl.info, inner.info) == []
        else:
            with pytest.raises(KernelError) as e:
                outer.update_slots(u32(1), [inner])
            assert e.value.errno == errno.EINVAL and differs in e.value.hint
            assert ("template" in e.value.hint) if knows_template else ("slot 00000000" in e.value.hint)
            # the batched form names the same difference
            with pytest.raises(BatchError) as e:
                outer.update_slots(u32(2) + u32(3), [tmpl, inner])
            assert e.value.done == 1 and differs in e.value.hint
        if not knows_template:
            outer.close()
            peer.close()


def test_incompatible_without_any_reference_still_explains():
    with Map.create("hash", 4, 8, 4) as tmpl, Map.create("array_of_maps", 4, 4, 4, inner_map=tmpl) as created:
        with Map.from_id(created.id) as outer, Map.create("lru_hash", 4, 8, 4) as inner:
            with pytest.raises(KernelError, match="must match the outer map's template"):
                outer.update_slots(u32(0), [inner])


def test_incompatibility_is_pure():
    a = MapInfo(1, "array", 4, 8, 4, (), "a")
    b = MapInfo(2, "array", 4, 8, 5, ("inner_map",), "b")
    assert len(incompatibility(a, b)) == 2
