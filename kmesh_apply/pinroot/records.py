"""The tool's own records in a pin root: which maps it manages, and the layouts it applied to them.

bpffs holds only pins and directories, so a record is itself a small map whose entries or BTF
carry what is remembered, pinned under a reserved name (`state.RESERVED_NAMES`). Every record
carries BTF, so `bpftool map dump pinned <record>` prints it formatted. Record formats (version 1;
another tool, such as a migration, may read them; only kmesh-apply writes them, under the pin
root's lock except where said):

`_kmesh_owned` — the ownership record: which maps of the pin root the tool manages.
    A `hash` map (no_prealloc; capacity grows by rebuilding it aside and renaming it over).
    key:   `char[256]` — the map's name in the pin root (its pin), NUL-padded.
    value: `struct { u32 format; u32 origin; u32 id; u32 next_id; }`, 16 bytes, host order:
           format  = 1 (`OWNED_FORMAT`; a record of another format is refused, never guessed at);
           origin  = 1 created (the tool made the map) | 2 adopted (`adopt: true` took it over);
           id      = the kernel ID of the managed map;
           next_id = the kernel ID of a map being moved into its place (a swap or a replacement),
                     else 0.
    A map pinned under a recorded name is managed only if its kernel ID is `id` or `next_id`:
    a pin someone else replaced is theirs. Any other map in the pin root is unmanaged.
    Written before the map exists at its pin (intent first: a killed apply never leaves a map
    the tool made unrecorded, and never a record that vouches for someone else's map): maps
    created one after another in one batch, before they are pinned; adoptions before any step
    changes them; the rest in one batch at the end of an apply (`next_id` folded into `id` after a move, names of
    removed or vanished maps pruned). The pin goes with the last entry.
    No ownership record, but another of the tool's records (`_kmesh_keys`, `_kmesh_replaced`,
    `_kmesh_staging`): a pin root made by an earlier version, read as wholly managed; the next
    apply writes the record. No record at all: every map already there is someone else's.

`_kmesh_layouts/<kernel ID>` — the layout the tool applied to one managed map that cannot carry
    it as BTF: an outer map (the kernel refuses BTF on map-in-map types), or an adopted map
    without BTF whose configuration gives types. A `hash` map, max_entries 1, no_prealloc:
    BTF key type   = the described map's key type (a map without a key: `u32`, ignored);
    BTF value type = the described map's value type, or for an outer map `char[256]`;
    an outer map's record holds one entry, key all zero, value the name of the inner map the
    outer map was created with as its template (NUL-padded). Other records hold no entry.
    Keyed by the kernel ID, not the name, so a record never describes the wrong map while a
    replacement is moved into place; written before the map is pinned (or adopted); records
    of IDs no longer managed are removed at the end of an apply.
    Tool-made inner and plain maps carry their own BTF: they get no layout record.

`_kmesh_keys/<outer map>` (earlier versions; read, and removed with its map) — an outer map's
    key type as the BTF key of a one-entry hash map pinned under the outer map's name.

The record of replaced maps still held by programs lives beside these, in `replaced.py`.

Reading them: `reader.read_live` sorts the pinned maps into `LiveState.maps` (managed) and
`LiveState.unmanaged`, keeps the ownership record as `LiveState.owned` (name -> `Owned`) and
the layouts as `LiveState.layouts` (name -> `Layout`); a managed map without BTF of its own
gets its recorded key and value types as `LiveMap.key_type`/`value_type`. So "the old layout"
of a map is its `LiveMap` types: from its BTF, else from its layout record.
"""

from __future__ import annotations

import errno
import struct
from typing import TYPE_CHECKING, Any, Iterable

from kmesh_apply.ctype import CType, Raw, parse_type
from kmesh_apply.errors import KernelError, KmeshError
from kmesh_apply.kernel.maps import LookupBuffers, Map
from kmesh_apply.state import (
    ADOPTED,
    CREATED,
    KEY_TYPES_DIR,
    LAYOUTS_DIR,
    OWNED_PIN,
    REPLACED_PIN,
    RESERVED_NAMES,
    STAGING_DIR,
    Layout,
    LiveMap,
    LiveState,
    Owned,
)

if TYPE_CHECKING:
    from kmesh_apply.pinroot.guard import PinRoot

OWNED_FORMAT = 1
NAME_BYTES = 256  # a bpffs name is at most 255 bytes, NUL-padded here
ORIGINS = {CREATED: 1, ADOPTED: 2}
_ORIGIN_NAMES = {n: o for o, n in ORIGINS.items()}
_VALUE = struct.Struct("=IIII")
_OWNED_KEY = parse_type(f"char[{NAME_BYTES}]")
_OWNED_VALUE = parse_type({"struct": [{"format": "u32"},
                                      {"origin": {"enum": "u32", "values": {"created": 1, "adopted": 2}}},
                                      {"id": "u32"}, {"next_id": "u32"}]})
MIN_CAPACITY = 1024  # no_prealloc: the capacity costs 16 bytes of hash buckets per entry, the entries what they hold


# ---- the ownership record -------------------------------------------------------------


def read_owned(root: PinRoot, buffers: LookupBuffers | None = None) -> dict[str, Owned]:
    """The ownership record of `root`: name -> Owned. Refuses a record it cannot read exactly."""
    path = root.shown(OWNED_PIN)
    with root.open_map(OWNED_PIN) as m:
        info = m.info
        if (info.type, info.key_size, info.value_size) != ("hash", NAME_BYTES, _VALUE.size):
            raise KmeshError(f"{path} is not a kmesh-apply ownership record ({info.type} map, key {info.key_size} "
                             f"bytes, value {info.value_size} bytes): remove it only if you know who made it")
        entries = m.items(buffers)
    keys, values = entries.keys_buffer, entries.values_buffer
    end = keys.index  # a name ends at its first NUL (at most 255 bytes: there always is one)
    names = [keys[i:end(0, i)].decode(errors="replace") for i in range(0, len(keys), NAME_BYTES)]
    out = {}
    for name, (fmt, origin, map_id, next_id) in zip(names, _VALUE.iter_unpack(values)):
        if fmt != OWNED_FORMAT or origin not in _ORIGIN_NAMES:
            raise KmeshError(f"{path} holds a record of format {fmt} (origin {origin}); this kmesh-apply reads "
                             f"format {OWNED_FORMAT}: use the kmesh-apply that wrote it, or a newer one")
        out[name] = Owned(_ORIGIN_NAMES[origin], (map_id, next_id) if next_id else (map_id,))
    return out


def _owned_key(name: str) -> bytes:
    return name.encode().ljust(NAME_BYTES, b"\0")


def _owned_value(o: Owned) -> bytes:
    return _VALUE.pack(OWNED_FORMAT, ORIGINS[o.origin], *(*o.ids, 0, 0)[:2])


def _capacity(n: int) -> int:
    cap = MIN_CAPACITY
    while cap < 2 * n:
        cap *= 4
    return cap


class Ownership:
    """The tool's records as one apply changes them (see the module docstring for when each is written).

    It works on `live.owned` in place, so a caller that keeps its live state (the synchroniser's
    cache) keeps the record it describes."""

    def __init__(self, root: PinRoot, live: LiveState):
        self.root = root
        self.live = live
        self.moved: dict[str, Owned] = {}  # names whose next_id is now their map: folded in at the end
        self.removed: set[str] = set()
        self.touched: set[str] = set()  # written during this apply: not pruned as vanished
        self.reserve = 0  # entries about to be written, so that the record is made large enough at once
        self._record: Map | None = None

    @property
    def owned(self) -> dict[str, Owned]:
        if self.live.owned is None:
            self.live.owned = {}
        return self.live.owned

    def begin(self, expected: int = 0) -> None:
        """Before the first step: a pin root of an earlier version gets its record (every map it holds
        managed), and room is made for `expected` more entries (maps about to be created or adopted)."""
        self.reserve = expected
        if self.live.owned is None and self.live.legacy and self.live.maps:
            self._put({name: Owned(CREATED, (m.id,)) for name, m in self.live.maps.items()})
        self.live.legacy = False

    def created(self, maps: list[tuple[str, int, bool]]) -> None:
        """Maps the tool just created, not pinned yet, in one update: (name, kernel ID, aside), where
        `aside` means it will be moved over the managed map now pinned there, which stays managed until then."""
        entries = {}
        for name, map_id, aside in maps:
            live = self.live.maps.get(name) if aside else None
            entries[name] = Owned(CREATED, (live.id, map_id) if live is not None else (map_id,))
        self._put(entries)

    def adopted(self, name: str, map_id: int) -> None:
        """The map pinned under `name` is managed from now on (it moves to the live state's managed maps)."""
        self._put({name: Owned(ADOPTED, (map_id,))})
        if name in self.live.unmanaged:
            self.live.maps[name] = self.live.unmanaged.pop(name)

    def moved_into_place(self, name: str, map_id: int) -> None:
        old = self.owned.get(name)
        self.moved[name] = Owned(old.origin if old else CREATED, (map_id,))

    def unpinned(self, name: str) -> None:
        self.removed.add(name)

    def finish(self) -> None:
        """After the last step (or a failed one): fold moves in, prune removed maps and those the reader
        found no longer pinned under their name with a recorded ID (`LiveState.stale`), in one batch
        each, and the layout records of maps no longer managed; remove the record when it is left
        empty. Nothing to do costs no syscall (the synchroniser finishes every flush)."""
        owned = self.owned
        stale = self.live.stale - self.touched - self.moved.keys()
        gone = sorted((self.removed - self.moved.keys() | stale) & owned.keys())
        update = {n: o for n, o in self.moved.items() if owned.get(n) != o}
        changed = bool(gone or update or self.touched)
        self.moved.clear()
        self.removed.clear()
        try:
            if gone and len(gone) == len(owned) and not update and not has_legacy_records(self.root):
                self.root.unlink(OWNED_PIN)  # (an empty record stays while other records do: else the root would read as an earlier version's)
                owned.clear()
            elif gone or update:
                m = self._handle(len(owned) + len(update))
                if gone:
                    m.delete_batch(b"".join(map(_owned_key, gone)), len(gone))
                    for n in gone:
                        del owned[n]
                self._put(update)
            self.live.stale = set()
        finally:
            self._close()
        if changed:
            prune_layouts(self.root, {i for o in owned.values() for i in o.ids})

    def _put(self, entries: dict[str, Owned]) -> None:
        if not entries:
            return
        m = self._handle(len(self.owned) + len(entries))
        keys = b"".join(map(_owned_key, entries))
        values = b"".join(map(_owned_value, entries.values()))
        if len(entries) == 1:
            m.update(keys, values)
        else:
            m.update_batch(keys, values, len(entries))
        self.owned.update(entries)
        self.touched.update(entries)

    def _handle(self, needed: int) -> Map:
        """The record, open; created, or rebuilt with more room, when it cannot hold `needed` entries."""
        m = self._record
        if m is None:
            try:
                m = self.root.open_map(OWNED_PIN)
            except KernelError as e:
                if e.errno != errno.ENOENT:
                    raise
                m = _create_owned(self.root, OWNED_PIN, _capacity(needed + self.reserve))
            self._record = m
        if needed > m.info.max_entries:
            self._record = m = _rebuild(self.root, m, self.owned, _capacity(needed + self.reserve))
        return m

    def _close(self) -> None:
        if self._record is not None:
            self._record.close()
            self._record = None


def _create_owned(root: PinRoot, pin: str, capacity: int) -> Map:
    return root.pin_new(Map.create("hash", NAME_BYTES, _VALUE.size, capacity, name="kmesh_owned", flags=("no_prealloc",),
                                   key_type=_OWNED_KEY, value_type=_OWNED_VALUE), pin)


def _rebuild(root: PinRoot, old: Map, owned: dict[str, Owned], capacity: int) -> Map:
    """A larger record holding the same entries, built aside and renamed over the old one (a killed
    run leaves either record whole; one left in the staging directory is removed by the next plan)."""
    aside = f"{STAGING_DIR}/{OWNED_PIN}"
    m = _create_owned(root, aside, capacity)
    try:
        if owned:
            m.update_batch(b"".join(map(_owned_key, owned)), b"".join(map(_owned_value, owned.values())), len(owned))
        root.replace(aside, OWNED_PIN)
        m.path = old.path
    except BaseException:
        m.close()
        raise
    finally:
        old.close()
        root.remove_if_empty(STAGING_DIR)  # unless maps are still staged there
    return m


def record_created_outside_apply(root: PinRoot, name: str, map_id: int) -> None:
    """Record a map that `kmesh map create-*` made and is about to pin (not under an apply: only its
    own entry is written, one element update that no apply's batch overwrites). A pin root of an
    earlier version is first recorded whole, as an apply would."""
    live = LiveState(root.path)
    if root.lexists(OWNED_PIN):
        live.owned = {}  # only the one entry is written: the others need not be read
    elif has_legacy_records(root):
        live.legacy = True
        live.maps = {n: _pinned(root, n) for n, is_dir in root.entries() if not is_dir and n not in RESERVED_NAMES}
    own = Ownership(root, live)
    try:
        own.begin()
        own.created([(name, map_id, False)])
    finally:
        own._close()


def has_legacy_records(root: PinRoot) -> bool:
    """Whether a pin root without an ownership record holds another of the tool's records (an earlier
    version made it: every map in it is the tool's)."""
    return any(root.lexists(n) for n in (KEY_TYPES_DIR, REPLACED_PIN, STAGING_DIR))


def _pinned(root: PinRoot, name: str) -> LiveMap:
    """A pinned map's properties, without its entries."""
    with root.open_map(name) as m:
        info = m.info
    return LiveMap(name, info.id, info.type, info.key_size, info.value_size, info.max_entries, info.flags)


# ---- layout records -------------------------------------------------------------------


def record_layout(root: PinRoot, map_id: int, key_type: CType | None, value_type: CType | None,
                  template: str | None = None) -> None:
    """Pin the layout record of the map with kernel ID `map_id` (see the module docstring), in place of
    any earlier one. An outer map's `value_type` is ignored: its record holds the template's name."""
    path = f"{LAYOUTS_DIR}/{map_id}"
    key = key_type if key_type is not None and key_type.size else parse_type("u32")
    value = parse_type(f"char[{NAME_BYTES}]") if template is not None else value_type or Raw(1)
    again = root.lexists(path)  # a record rewritten (a new template name) is replaced whole, by rename
    aside = f"{path}_new" if again else path  # not a kernel ID: never read, and pruned if left behind
    with Map.create("hash", key.size, value.size, 1, name="kmesh_layout", flags=("no_prealloc",),
                    key_type=key, value_type=value) as record:
        if template is not None:
            record.update(bytes(key.size), template.encode().ljust(NAME_BYTES, b"\0"))
        if again:
            root.unlink(aside)
        root.pin_map(record, aside)
    if again:
        root.replace(aside, path)


def read_layouts(root: PinRoot, wanted: dict[int, Any]) -> dict[str, Layout]:
    """The layouts recorded for managed maps: `wanted` maps kernel IDs to the LiveMap at that ID (whose
    name and kind say how to read the record); records of other IDs are left for `prune_layouts`.
    The records of earlier versions (`_kmesh_keys`) fill in for outer maps without one."""
    out: dict[str, Layout] = {}
    if root.lexists(LAYOUTS_DIR):
        for name, _ in root.entries(LAYOUTS_DIR):
            live = wanted.get(int(name)) if name.isdigit() else None
            if live is None:
                continue
            with root.open_map(f"{LAYOUTS_DIR}/{name}") as m:
                key_type, value_type = m.types()
                template = None
                if live.is_outer:
                    raw = m.lookup(bytes(m.info.key_size))
                    template = raw.rstrip(b"\0").decode(errors="replace") if raw else None
                    value_type = None
            out[live.name] = Layout(_spec(key_type, live.key_size), _spec(value_type, live.value_size), template)
    if root.lexists(KEY_TYPES_DIR):
        by_name = {live.name: live for live in wanted.values()}
        for name, _ in root.entries(KEY_TYPES_DIR):
            live = by_name.get(name)
            if live is None or name in out:
                continue
            with root.open_map(f"{KEY_TYPES_DIR}/{name}") as m:
                key_type = m.key_type()
            out[name] = Layout(_spec(key_type, live.key_size))
    return out


def _spec(typ: CType | None, size: int) -> Any:
    """A recorded type's spec, if it fits the map it describes (a raw or mismatched one says nothing)."""
    if typ is None or typ.size != size or isinstance(typ, Raw):
        return None
    return typ.spec()


def prune_layouts(root: PinRoot, keep: Iterable[int]) -> None:
    """Remove the layout records of maps no longer managed (and the folder once empty)."""
    if not root.lexists(LAYOUTS_DIR):
        return
    kept = {str(i) for i in keep}
    for name, _ in root.entries(LAYOUTS_DIR):
        if name not in kept:
            root.unlink(f"{LAYOUTS_DIR}/{name}")
    root.remove_if_empty(LAYOUTS_DIR)


def forget(root: PinRoot, name: str) -> None:
    """Remove the record of an earlier version about the map `name` (it is gone); the folder goes once empty."""
    if "/" in name or not root.lexists(KEY_TYPES_DIR) or not root.unlink(f"{KEY_TYPES_DIR}/{name}"):
        return
    root.remove_if_empty(KEY_TYPES_DIR)
