"""Reads a pin root's maps into a `LiveState`: every map, its properties, BTF types and entries."""

from __future__ import annotations

import os
from pathlib import Path

from kmesh_apply.errors import KmeshError
from kmesh_apply.kernel.maps import Map
from kmesh_apply.pinroot import check_pin_root
from kmesh_apply.state import STAGING_DIR, LiveMap, LiveState, StagedMap


def read_map(path: Path, name: str) -> LiveMap:
    """One pinned map as data; outer slots become kernel IDs of the inner maps they hold."""
    with Map.open_pinned(str(path)) as m:
        info = m.info
        key_type, value_type = m.key_type(), m.value_type()
        live = LiveMap(name, info.id, info.type, info.key_size, info.value_size, info.max_entries, info.flags,
                       key_type.spec() if key_type is not None else None,
                       value_type.spec() if value_type is not None else None)
        if live.is_outer:
            live.slots = m.slots()
        else:
            live.entries = m.items()
    return live


def read_live(pin_root: str) -> LiveState:
    """The live state of `pin_root` (empty if it does not exist yet)."""
    root = check_pin_root(pin_root)
    state = LiveState(pin_root)
    if not root.exists():
        return state
    for entry in sorted(os.scandir(root), key=lambda e: e.name):
        path = Path(entry.path)
        if entry.is_dir(follow_symlinks=False):
            if entry.name != STAGING_DIR:
                raise KmeshError(f"{path} is a directory; a pin root holds only the maps kmesh-apply manages. "
                                 "Use a separate pin root for nested trees.")
            for staged in sorted(os.scandir(path), key=lambda e: e.name):
                pin = f"{STAGING_DIR}/{staged.name}"
                state.staged.append(StagedMap(pin, staged.name, read_map(Path(staged.path), staged.name)))
            continue
        state.maps[entry.name] = read_map(path, entry.name)
    return state
