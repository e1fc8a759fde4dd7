"""Reads a pin root's maps into a `LiveState`: every map, its properties, BTF types and entries."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from kmesh_apply.ctype import CType
from kmesh_apply.errors import KmeshError
from kmesh_apply.kernel.maps import Map
from kmesh_apply.pinroot import check_pin_root
from kmesh_apply.state import STAGING_DIR, LiveMap, LiveState, StagedMap


_specs: dict[int, tuple[CType, Any]] = {}


def _spec(typ: CType | None) -> Any:
    """A BTF type as a type spec, once per decoded type object (thousands of maps share a few;
    keyed by identity because hashing a struct type walks all its fields; the entry keeps it alive)."""
    if typ is None:
        return None
    hit = _specs.get(id(typ))
    if hit is None:
        if len(_specs) >= 4096:  # types made afresh (no BTF) would otherwise pile up
            _specs.clear()
        hit = _specs[id(typ)] = (typ, typ.spec())
    return hit[1]


def read_map(path: str | Path, name: str) -> LiveMap:
    """One pinned map as data; outer slots become kernel IDs of the inner maps they hold."""
    with Map.open_pinned(str(path)) as m:
        info = m.info
        live = LiveMap(name, info.id, info.type, info.key_size, info.value_size, info.max_entries, info.flags,
                       _spec(m.key_type()), _spec(m.value_type()))
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
        if entry.is_dir(follow_symlinks=False):
            if entry.name != STAGING_DIR:
                raise KmeshError(f"{entry.path} is a directory; a pin root holds only the maps kmesh-apply manages. "
                                 "Use a separate pin root for nested trees.")
            for staged in sorted(os.scandir(entry.path), key=lambda e: e.name):
                pin = f"{STAGING_DIR}/{staged.name}"
                state.staged.append(StagedMap(pin, staged.name, read_map(staged.path, staged.name)))
            continue
        state.maps[entry.name] = read_map(entry.path, entry.name)
    return state
