"""read_live against the real kernel: every map of a pin root, with its own types, entries and slots."""

from __future__ import annotations

import os

import pytest

from kmesh_apply.ctype import parse_type
from kmesh_apply.errors import KmeshError
from kmesh_apply.kernel import Map
from kmesh_apply.pinroot.reader import read_live
from kmesh_apply.state import STAGING_DIR

# Same sizes, different types: a reader that shares decoded types between maps must not mix them up.
VALUES = {
    "a_u64": "u64",
    "b_be64": "be64",
    "c_pair": {"struct": [{"x": "u32"}, {"y": "u32"}]},
    "d_pair": {"struct": [{"ip": "ipv4"}, {"port": "be16"}, {"w": "u16"}]},
    "e_u64": "u64",
}


def _pinned(root, name: str, map_type: str, value_spec, entries: int, max_entries: int = 16) -> Map:
    value = parse_type(value_spec)
    m = Map.create(map_type, 4, value.size, max_entries, key_type=parse_type("u32"), value_type=value)
    for i in range(entries):
        m.update(i.to_bytes(4, "little"), bytes([i + 1]) * m.syscall_value_size)
    m.pin(str(root / name))
    return m


def test_every_map_keeps_its_own_types_entries_and_slots(pin_root):
    os.makedirs(pin_root / STAGING_DIR)
    maps = [_pinned(pin_root, name, "hash", spec, entries=i + 1) for i, (name, spec) in enumerate(VALUES.items())]
    maps.append(_pinned(pin_root, "f_counts", "percpu_array", "u32", entries=3, max_entries=3))
    maps.append(_pinned(pin_root / STAGING_DIR, "a_u64", "hash", "u64", entries=2))
    outer = Map.create("hash_of_maps", 4, 4, 8, inner_map=maps[0])
    outer.update_slots(b"".join(i.to_bytes(4, "little") for i in (3, 7)), [maps[0], maps[4]])
    outer.pin(str(pin_root / "g_outer"))
    maps.append(outer)
    try:
        state = read_live(str(pin_root))
        assert list(state.maps) == [*VALUES, "f_counts", "g_outer"]
        for i, (name, spec) in enumerate(VALUES.items()):
            live = state.maps[name]
            assert (live.key_type, live.value_type) == ("u32", spec)
            assert live.entries == {k.to_bytes(4, "little"): bytes([k + 1]) * live.value_size for k in range(i + 1)}
        counts = state.maps["f_counts"]
        assert counts.type == "percpu_array" and counts.value_type == "u32" and len(counts.entries) == 3
        assert state.maps["g_outer"].slots == {(3).to_bytes(4, "little"): maps[0].id, (7).to_bytes(4, "little"): maps[4].id}
        assert state.maps["g_outer"].key_type is None and state.maps["g_outer"].entries == {}
        [staged] = state.staged
        assert (staged.pin, staged.name, staged.live.id) == (f"{STAGING_DIR}/a_u64", "a_u64", maps[-2].id)
        assert len(staged.live.entries) == 2
    finally:
        for m in maps:
            m.close()


def test_missing_root_is_empty_and_a_nested_directory_is_refused(pin_root):
    assert read_live(str(pin_root)).maps == {}
    os.makedirs(pin_root / "nested")
    with pytest.raises(KmeshError, match="nested is a directory; a pin root holds only the maps kmesh-apply manages"):
        read_live(str(pin_root))
