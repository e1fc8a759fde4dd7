"""The tool's own records in a pin root: what it remembers about the maps it manages.

bpffs holds only pins and directories, so a record is itself a small map whose BTF or
entries carry what is remembered, pinned under a reserved name (`state.RESERVED_NAMES`).
Today: the key type of each outer map created with a key other than `u32`
(`_kmesh_keys/<outer map>`; outer maps cannot carry BTF, so `show` would otherwise print
their keys as raw bytes). The record of replaced maps lives beside it, in `replaced.py`.
"""

from __future__ import annotations

import os
from typing import Any

from kmesh_apply.ctype import CType, Raw
from kmesh_apply.kernel.maps import Map
from kmesh_apply.state import KEY_TYPES_DIR


def record_key_type(pin_root: str, name: str, key_type: CType) -> None:
    """Pin a one-entry hash map whose BTF key is the outer map's key type in place of any earlier
    record (only `show` reads it, and checks its size against the map's)."""
    folder = os.path.join(pin_root, KEY_TYPES_DIR)
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, name)
    if os.path.lexists(path):
        os.unlink(path)
    with Map.create("hash", key_type.size, 1, 1, name="kmesh_key_type", flags=("no_prealloc",),
                    key_type=key_type, value_type=Raw(1)) as record:
        record.pin(path)


def forget(pin_root: str, name: str) -> None:
    """Remove what is recorded about the map `name` (it is gone); the folder goes once empty."""
    folder = os.path.join(pin_root, KEY_TYPES_DIR)
    path = os.path.join(folder, name)
    if "/" in name or not os.path.lexists(path):
        return
    os.unlink(path)
    try:
        os.rmdir(folder)
    except OSError:
        pass  # other records are still there


def read_key_types(folder: str) -> dict[str, Any]:
    """The key types recorded for outer maps (outer map name -> type spec): only BTF is read, no entries."""
    out = {}
    for pin in sorted(os.scandir(folder), key=lambda e: e.name):
        with Map.open_pinned(pin.path) as m:
            key_type = m.key_type()
        if key_type is not None:
            out[pin.name] = key_type.spec()
    return out
