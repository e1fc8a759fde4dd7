"""The seed's imperative map-in-map API: create outer and inner maps, fill slots and entries.

    with MapInMapManager("/sys/fs/bpf/kmesh") as mgr:
        inner = mgr.create_inner_map(InnerMapConfig("hash", 4, 8, 1000))
        outer = mgr.create_outer_map(OuterMapConfig("array", 4, None, 100, inner_map_id=inner))
        mgr.update_outer_element(outer, 1, inner)
        mgr.update_inner_element(inner, 100, 200)
        mgr.lookup_element(outer, 1, 100)        # b'\\xc8\\x00...' (the 8-byte value)

Maps are named by their kernel IDs. With a pin root, created maps are pinned at
`<pin root>/inner-<id>` / `outer-<id>` and outlive the process; without one they
live as long as the manager holds them (until close()). Keys and values are
`bytes` of the map's sizes or integers (encoded little-endian, range-checked).
The manager is safe to share between threads.
"""

from __future__ import annotations

import errno
import os
import threading
from dataclasses import dataclass

from kmesh_apply.config.model import INNER_TYPES, OUTER_ALIASES, OUTER_TYPES
from kmesh_apply.errors import KernelError, KmeshError
from kmesh_apply.pinroot.guard import PinRoot
from kmesh_apply.pinroot.records import record_created_outside_apply
from kmesh_apply.kernel.maps import (
    OUTER_TYPES as KERNEL_OUTER_TYPES,
    PERCPU_TYPES,
    Map,
    flag_bits,
    possible_cpus,
)
from kmesh_apply.kernel.names import type_name
from kmesh_apply.wording import a, count

Key = int | bytes


@dataclass(frozen=True)
class OuterMapConfig:
    """An outer map (the seed's fields); the template is inner_map_fd or, simpler, inner_map_id.

    type: array_of_maps | hash_of_maps (or the seed's `array` / `hash`), or the kernel's number.
    """

    type: str | int
    key_size: int
    inner_map_fd: int | None
    max_entries: int
    inner_map_id: int | None = None
    flags: tuple[str, ...] = ()
    name: str = ""


@dataclass(frozen=True)
class InnerMapConfig:
    """An inner map (the seed's fields); type is a name (hash, array, ...) or the kernel's number."""

    type: str | int
    key_size: int
    value_size: int
    max_entries: int
    flags: tuple[str, ...] = ()
    name: str = ""


@dataclass(frozen=True)
class MapInMapInfo:
    """An outer map at a glance (the seed's fields).

    inner_id is the inner map in the first used slot (lowest key, read as a
    little-endian integer), 0 when no slot is used; entries is the number of
    used slots; flags is the outer map's map_flags.
    """

    outer_id: int
    inner_id: int
    entries: int
    flags: int


def _type_name(t: str | int, allowed: tuple[str, ...], aliases: dict[str, str], what: str) -> str:
    name = type_name(t) if isinstance(t, int) else aliases.get(t, t)
    if name not in allowed:
        raise KmeshError(f"unknown {what} map type '{t}': expected one of {', '.join([*allowed, *aliases])}")
    return name


def encode(value: Key, size: int, what: str) -> bytes:
    """value as exactly size bytes: integers little-endian (negative ones as two's complement)."""
    if isinstance(value, bytes):
        if len(value) != size:
            raise KmeshError(f"{what} is {count(len(value), 'byte')}, expected {size}")
        return value
    if isinstance(value, bool) or not isinstance(value, int):
        raise KmeshError(f"{what} must be an integer or bytes, got {value!r}")
    bits = 8 * size
    if not -(1 << (bits - 1)) <= value < (1 << bits):
        raise KmeshError(f"{what} {value} does not fit in {count(size, 'byte')}")
    return (value % (1 << bits)).to_bytes(size, "little")


def _sort_key(key: bytes) -> int:
    return int.from_bytes(key, "little")


class MapInMapManager:
    """The seed's six operations plus deletes and batched slot updates, over kernel map IDs."""

    def __init__(self, pin_root: str | None = None):
        self.pin_root = pin_root
        self._lock = threading.Lock()
        self._maps: dict[int, Map] = {}  # open handles by kernel ID, closed by close()

    def __enter__(self) -> MapInMapManager:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close every map handle; maps created without a pin root disappear with them."""
        with self._lock:
            maps, self._maps = list(self._maps.values()), {}
        for m in maps:
            m.close()

    # --- handles ------------------------------------------------------------------------

    def map(self, map_id: int) -> Map:
        """The manager's handle on a map (opened once by ID, then reused)."""
        with self._lock:
            m = self._maps.get(map_id)
            if m is None:
                m = self._maps[map_id] = Map.from_id(map_id)
            return m

    def fd_of(self, map_id: int) -> int:
        """An fd for map_id, owned by the manager: what the seed's OuterMapConfig.inner_map_fd wants."""
        return self.map(map_id).fd

    def _outer(self, outer_id: int) -> Map:
        m = self.map(outer_id)
        if m.info.type not in KERNEL_OUTER_TYPES:
            raise KernelError("use as outer map", m.label, errno.EINVAL, f"it is {a(m.info.type)} map, not an array_of_maps or hash_of_maps")
        return m

    def _inner(self, inner_id: int) -> Map:
        m = self.map(inner_id)
        if m.info.type in KERNEL_OUTER_TYPES:
            raise KernelError("use as inner map", m.label, errno.EINVAL, f"it is an outer map ({m.info.type}); use the outer-map operations")
        return m

    def _adopt(self, m: Map, kind: str) -> int:
        """Pin a new map under the pin root (if any), recorded as one kmesh-apply manages, and keep its handle."""
        try:
            if self.pin_root:
                with PinRoot.make(self.pin_root) as root:  # checked and reached as the pin root's guard does
                    record_created_outside_apply(root, f"{kind}-{m.id}", m.id)
                    root.pin_map(m, f"{kind}-{m.id}")
        except (KmeshError, OSError) as e:
            m.close()
            if isinstance(e, OSError):
                raise KmeshError(f"cannot pin into pin root {self.pin_root}: {e.strerror}") from None
            raise
        with self._lock:
            self._maps[m.id] = m
        return m.id

    # --- the seed's operations ----------------------------------------------------------

    def create_inner_map(self, config: InnerMapConfig) -> int:
        """Create (and pin) an inner map; returns its kernel ID."""
        t = _type_name(config.type, INNER_TYPES, {}, "inner")
        m = Map.create(t, config.key_size, config.value_size, config.max_entries, name=config.name, flags=config.flags)
        return self._adopt(m, "inner")

    def create_outer_map(self, config: OuterMapConfig) -> int:
        """Create (and pin) an outer map whose slots take inner maps like the template; returns its ID."""
        t = _type_name(config.type, OUTER_TYPES, OUTER_ALIASES, "outer")
        if (config.inner_map_fd is None) == (config.inner_map_id is None):
            raise KmeshError("an outer map needs its template: give exactly one of inner_map_fd, inner_map_id")
        if config.inner_map_id is not None:
            m = Map.create(t, config.key_size, 4, config.max_entries, name=config.name, flags=config.flags,
                           inner_map=self._inner(config.inner_map_id))
        else:
            assert config.inner_map_fd is not None  # exactly one of the two, checked above
            with Map(os.dup(config.inner_map_fd)) as template:  # the caller keeps its own fd
                m = Map.create(t, config.key_size, 4, config.max_entries, name=config.name, flags=config.flags,
                               inner_map=template)
        return self._adopt(m, "outer")

    def update_outer_element(self, outer_id: int, key: Key, inner_id: int) -> None:
        """Put inner map inner_id in slot key of the outer map."""
        outer = self._outer(outer_id)
        outer.update_slots(encode(key, outer.info.key_size, "outer key"), [self._inner(inner_id)])

    def update_outer_elements(self, outer_id: int, slots: dict[Key, int]) -> None:
        """Fill many slots in one syscall (a slot update costs an RCU grace period; a batch pays it once)."""
        outer = self._outer(outer_id)
        ks = outer.info.key_size
        keys = b"".join(encode(k, ks, "outer key") for k in slots)
        outer.update_slots(keys, [self._inner(i) for i in slots.values()])

    def update_inner_element(self, inner_id: int, key: Key, value: Key) -> None:
        """Write one entry; a per-CPU map gets the same value on every CPU unless given all of them."""
        inner = self._inner(inner_id)
        inner.update(encode(key, inner.info.key_size, "key"), self._value(inner, value))

    def lookup_element(self, outer_id: int, outer_key: Key, inner_key: Key) -> bytes | None:
        """The value under inner_key in the inner map in slot outer_key (None: empty slot or no entry).

        For a per-CPU inner map the value holds every CPU's copy, each padded to 8 bytes.
        """
        inner_id = self.lookup_slot(outer_id, outer_key)
        return None if inner_id is None else self.lookup_inner_element(inner_id, inner_key)

    def lookup_slot(self, outer_id: int, key: Key) -> int | None:
        """The kernel ID of the inner map in slot key (None: the slot is empty)."""
        outer = self._outer(outer_id)
        slot = outer.lookup(encode(key, outer.info.key_size, "outer key"))
        return None if slot is None else int.from_bytes(slot[:4], "little")

    def lookup_inner_element(self, inner_id: int, key: Key) -> bytes | None:
        inner = self._inner(inner_id)
        return inner.lookup(encode(key, inner.info.key_size, "inner key"))

    def get_map_info(self, outer_id: int) -> MapInMapInfo:
        outer = self._outer(outer_id)
        slots = outer.slots()
        first = slots[min(slots, key=_sort_key)] if slots else 0
        return MapInMapInfo(outer_id, first, len(slots), flag_bits(outer.info.flags))

    def delete_outer_element(self, outer_id: int, key: Key) -> bool:
        """Empty slot key; False when it was empty already."""
        outer = self._outer(outer_id)
        return outer.delete(encode(key, outer.info.key_size, "outer key"))

    def delete_inner_element(self, inner_id: int, key: Key) -> bool:
        """Delete one entry; False when it was not there."""
        inner = self._inner(inner_id)
        return inner.delete(encode(key, inner.info.key_size, "key"))

    def _value(self, inner: Map, value: Key) -> bytes:
        vs = inner.info.value_size
        if inner.info.type not in PERCPU_TYPES:
            return encode(value, vs, "value")
        if isinstance(value, bytes) and len(value) == inner.syscall_value_size:
            return value  # every CPU's copy given
        return encode(value, vs, "value").ljust((vs + 7) // 8 * 8, b"\0") * possible_cpus()
