"""The record of maps a pin root replaced or destroyed while loaded programs held them (contract section 8).

A program keeps the map it was loaded with. After a replacement the pin names the new
map (after a destroy, nothing, until the map is declared again), and nothing in bpffs
remembers the old one, so without a record a later plan would call the pin root clean
while the data plane reads stale data. The record is a small hash map of the tool's own,
pinned at `<pin root>/_kmesh_replaced` (a reserved name): the kernel ID of each replaced or
destroyed map -> the name of the pin it had. Plans report such a map as drift while a
program holds it; IDs, not names, so a map of the same name in another pin root never counts. An apply under the pin root's lock writes the record
before it replaces anything (a killed apply loses nothing) and prunes the entries no
program holds any more; the pin goes with the last entry.
"""

from __future__ import annotations

import errno
import struct
from typing import TYPE_CHECKING

from kmesh_apply.ctype import parse_type
from kmesh_apply.errors import KernelError
from kmesh_apply.kernel.maps import LookupBuffers, Map
from kmesh_apply.state import REPLACED_PIN, LiveState

if TYPE_CHECKING:
    from kmesh_apply.pinroot.guard import PinRoot

NAME_BYTES = 256  # a bpffs name is at most 255 bytes, NUL-padded here
CAPACITY = 1024  # replaced maps still held at one time; no_prealloc: memory only for those recorded


def read_replaced(root: PinRoot, buffers: LookupBuffers | None = None) -> dict[int, str]:
    """The record of `root`: replaced map ID -> pin name."""
    with root.open_map(REPLACED_PIN) as m:
        return {int.from_bytes(k, "little"): v.rstrip(b"\0").decode(errors="replace")
                for k, v in m.items(buffers).items()}


def record_replaced(root: PinRoot, live: LiveState, add: dict[int, str]) -> None:
    """Make the record hold `add` (maps about to be replaced or destroyed while programs hold them) and the
    entries of `live.replaced` still worth keeping: held by a program, and no longer the map at
    their pin (an apply that failed before its move left it there). No bpf() call when the
    record stays as it is; removed when it would be empty."""
    if not add and not live.replaced:
        return  # the usual case: nothing to record, nothing recorded
    want = {i: n for i, n in live.replaced.items()
            if live.holders.get(i) and (n not in live.maps or live.maps[n].id != i)}
    want.update(add)
    if want == live.replaced:
        return
    if not want:
        root.unlink(REPLACED_PIN)
        return
    m = _open_or_create(root)
    with m:
        gone = [i for i in live.replaced if i not in want]
        if gone:
            m.delete_batch(struct.pack(f"={len(gone)}I", *gone), len(gone))
        put = {i: n for i, n in want.items() if live.replaced.get(i) != n}
        if put:
            m.update_batch(struct.pack(f"={len(put)}I", *put),
                           b"".join(n.encode().ljust(NAME_BYTES, b"\0") for n in put.values()), len(put))


def _open_or_create(root: PinRoot) -> Map:
    try:
        return root.open_map(REPLACED_PIN)
    except KernelError as e:
        if e.errno != errno.ENOENT:
            raise
    return root.pin_new(Map.create("hash", 4, NAME_BYTES, CAPACITY, name="kmesh_replaced", flags=("no_prealloc",),
                                   key_type=parse_type("u32"), value_type=parse_type(f"char[{NAME_BYTES}]")),
                        REPLACED_PIN)
