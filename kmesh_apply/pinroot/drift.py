"""Whether a pin root still holds what was read from it, for the cost of about one number per map.

Why: `watch` re-reads the whole pin root every `--drift-interval` to find changes made by
others, and almost always finds none: at Kmesh's scale that full read and plan took 1-1.6 s
of a core each time, a million-entry map 0.5 s of batch lookups plus hashing. Here each pin
is known to still name the same map (kernel ID) by its inode: a pin's bpffs inode is made when
the map is pinned and lives as long as the pin, so a pin whose inode number and change time
are the ones seen when its map ID was last checked names that map still; other pins are
opened and their IDs compared. Outer maps' slots are read (one batch each), and entries are
compared by digests computed in the kernel (kernel.digest): all the inner maps an outer map
holds in one program run, a large map on its own in one run. Small maps outside any slot, and
maps the kernel cannot sum, are read and compared as they are. Anything that differs, or
cannot be checked this cheaply, answers "changed": the caller then reads the pin root in full.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping

from kmesh_apply.entries import HASH_SUM_FROM, Entries
from kmesh_apply.errors import KmeshError
from kmesh_apply.kernel.digest import WALKED_TYPES, Digest, DigestRefused, map_digest, of_entries, slot_digests
from kmesh_apply.kernel.maps import ARRAY_TYPES, LookupBuffers, Map, MapInfo
from kmesh_apply.kernel.progs import map_holders
from kmesh_apply.pinroot.guard import PinRoot
from kmesh_apply.state import RECORD_NAMES, LiveMap, LiveState


# A pin as last seen naming a map: (inode number, change time in ns) -> that map's kernel ID.
Seen = dict[str, tuple[int, int, int]]


def unchanged(state: LiveState, seen: Seen) -> bool:
    """Whether the pin root `state` was read from still holds exactly `state`: the same pins naming
    the same maps, the same outer slots, the same entries, and programs holding the same maps.
    `seen`: the caller's memory of pins whose map IDs were checked, kept up to date here."""
    try:
        root = PinRoot.open(state.pin_root)
    except (KmeshError, OSError):
        return False  # the full read says what is wrong
    if root is None:
        return not (state.maps or state.unmanaged)
    with root:
        return _unchanged(root, state, seen)


def _unchanged(root: PinRoot, state: LiveState, seen: Seen) -> bool:
    maps = {**state.maps, **state.unmanaged}  # others' maps too: their usage is reported, so kept up to date
    handles: dict[str, Map] = {}
    try:
        pins = {name for name, _ in root.entries() if name not in RECORD_NAMES}
        if state.staged or pins != maps.keys():
            return False
        for name, cached in maps.items():
            stat = os.stat(name, dir_fd=root.fd, follow_symlinks=False)
            if seen.get(name) == (stat.st_ino, stat.st_ctime_ns, cached.id):
                continue
            m = handles[name] = root.open_map(name)  # checked as the reader checks it
            if m.info.id != cached.id:
                return False
            seen[name] = (stat.st_ino, stat.st_ctime_ns, cached.id)
        return _same_entries(maps, lambda name: _handle(handles, root, name)) and \
            map_holders(_ids(state)) == state.holders
    except (KmeshError, OSError):
        return False
    finally:
        for m in handles.values():
            m.close()


def _handle(handles: dict[str, Map], root: PinRoot, name: str) -> Map:
    m = handles.get(name)
    if m is None:
        m = handles[name] = root.open_map(name)
    return m


def _ids(state: LiveState) -> list[int]:
    """The maps whose holders the reader looks for (pinroot.reader.read_live)."""
    return [m.id for m in state.maps.values()] + [m.id for m in state.unmanaged.values()] + list(state.replaced)


def _same_entries(maps: Mapping[str, LiveMap], handle: Callable[[str], Map]) -> bool:
    buffers = LookupBuffers()
    by_id = {m.id: name for name, m in maps.items() if not m.is_outer}
    summed: set[str] = set()
    for name, cached in maps.items():
        if not cached.is_outer:
            continue
        if handle(name).slots(buffers) != cached.slots:
            return False
        held = {key: by_id[i] for key, i in cached.slots.items() if i in by_id and by_id[i] not in summed}
        if held and not _same_slot_digests(handle(name), held, maps, handle):
            return False
        summed.update(held.values())
    for name, cached in maps.items():
        if cached.is_outer or name in summed or cached.unreadable:
            continue  # an unreadable map's entries (a ringbuf's, a queue's) are unknown to a full read too
        m = handle(name)
        if len(cached.entries) >= HASH_SUM_FROM and m.info.type in WALKED_TYPES:
            try:
                if map_digest(m) != _expected(cached):
                    return False
                continue
            except DigestRefused:
                pass
        if not _same(m.items(buffers), cached):
            return False
    return True


def _same_slot_digests(outer: Map, held: dict[bytes, str], maps: Mapping[str, LiveMap], handle: Callable[[str], Map]) -> bool:
    """The inner maps in these slots, summed in one run (read one by one where the kernel cannot).
    The run looks each slot up itself: the slots were just found to hold the cached maps."""
    template = maps[next(iter(held.values()))]
    try:
        found = slot_digests(outer, list(held), _shape(template))
    except DigestRefused:
        buffers = LookupBuffers()
        return all(_same(handle(name).items(buffers), maps[name]) for name in held.values())
    return all(found.get(key) == _expected(maps[name]) for key, name in held.items())


def _shape(cached: LiveMap) -> MapInfo:
    """What the digest program needs of an inner map: its type and sizes (from the cache: no open)."""
    return MapInfo(cached.id, cached.type, cached.key_size, cached.value_size, cached.max_entries, cached.flags, cached.name)


def _expected(cached: LiveMap) -> Digest:
    return of_entries(cached.entries, array=cached.type == "array")


def _same(live: Entries, cached: LiveMap) -> bool:
    """The entries read now against the cache's; an array's all-zero values are as good as absent
    (the cache of an array just created holds only the indexes written to it)."""
    if cached.type in ARRAY_TYPES:
        return _set(live) == _set(cached.entries)
    return live == cached.entries


def _set(entries: Mapping[bytes, bytes]) -> dict[bytes, bytes]:
    return {k: v for k, v in entries.items() if any(v)}
