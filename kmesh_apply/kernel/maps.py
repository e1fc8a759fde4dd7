"""Map handles over libbpf: create, pin, open, read and write maps, one or many entries at a time.

A `Map` owns its file descriptor. Keys and values are `bytes` of the map's
exact sizes (for per-CPU maps a value is the whole syscall buffer: each CPU's
value padded to 8 bytes). Batched calls take keys and values concatenated,
so a caller with thousands of entries crosses into the kernel once, with no
Python work per entry. Every failure is a KernelError naming the operation,
the map and errno, with a hint where the cause is known.
"""

from __future__ import annotations

import ctypes
import errno as E
import os
import re
import struct
from dataclasses import dataclass
from functools import cache
from typing import Callable, Iterable, Sequence

from kmesh_apply.ctype import CType
from kmesh_apply.entries import Entries
from kmesh_apply.errors import KernelError, KmeshError
from kmesh_apply.kernel import libbpf as L
from kmesh_apply.kernel.failure import ENOTSUPP, HINTS, fail
from kmesh_apply.kernel.names import MAP_FLAGS, MAP_TYPES, flag_bits, flag_names, type_name
from kmesh_apply.wording import a

PERCPU_TYPES = frozenset({"percpu_hash", "percpu_array", "lru_percpu_hash", "percpu_cgroup_storage"})
OUTER_TYPES = frozenset({"array_of_maps", "hash_of_maps"})
# Array-like maps: every index exists, a slot's template also fixes max_entries.
ARRAY_TYPES = frozenset({"array", "percpu_array", "array_of_maps"})
UNSUPPORTED = (ENOTSUPP, E.EOPNOTSUPP)
UPDATE_ANY, UPDATE_NOEXIST, UPDATE_EXIST = 0, 1, 2
_NAME_RE = re.compile(r"^[A-Za-z0-9_.]{0,15}$")
# A batch lookup's buffers hold at most this many bytes of entries (more is not faster: the
# kernel's time per entry is the same for any chunk) and at least one entry of any size.
_LOOKUP_BYTES = 16 << 20
# The same for a caller that works on each batch as it comes (the lookups cost the same per entry
# from 256 KiB to 16 MiB a batch).
_PART_BYTES = 1 << 20
_LOOKUP_OPTS_REF = ctypes.byref(L.batch_opts())  # no flags; the kernel only reads them
_no_batch: set[str] = set()  # map types seen refusing batch operations
_HANDLES = "its keys are {}, which user space reaches only through their file descriptors"
_NOT_GIVEN_BACK = "the kernel does not give {} back to user space"
# Map types whose entries user space cannot read, and why: their syscall side has no lookup or
# no get_next_key (kernel/bpf/*.c map_ops), or reading would consume what it reads.
UNREADABLE: dict[str, str] = {
    "ringbuf": "a ring buffer holds a stream of records, not entries",
    "user_ringbuf": "a ring buffer holds a stream of records, not entries",
    "arena": "an arena is pages of memory shared with programs, not entries",
    "queue": "its values can only be read by popping them, which would consume them",
    "stack": "its values can only be read by popping them, which would consume them",
    "bloom_filter": "a bloom filter can only be asked whether it may hold a value",
    "sk_storage": _HANDLES.format("sockets"),
    "inode_storage": _HANDLES.format("files"),
    "task_storage": _HANDLES.format("tasks"),
    "cgrp_storage": _HANDLES.format("cgroups"),
    "xskmap": _NOT_GIVEN_BACK.format("AF_XDP sockets"),
    "perf_event_array": _NOT_GIVEN_BACK.format("perf events"),
    "cgroup_array": _NOT_GIVEN_BACK.format("cgroups"),
}
# Maps of sockets give back each socket's cookie, for 8-byte values only (sock_map_lookup_sys).
SOCKET_TYPES = frozenset({"sockmap", "sockhash", "reuseport_sockarray"})
# Flags the kernel adds by itself at creation (devmap.c: programs may not write a devmap's values).
IMPLIED_FLAGS = {"devmap": frozenset({"rdonly_prog"}), "devmap_hash": frozenset({"rdonly_prog"})}
# Where a value holds a program: the kernel takes the program's fd on update and gives back its ID
# on lookup (prog_array: the whole value; devmap, cpumap: bpf_prog after the ifindex or qsize).
PROGRAM_OFFSET = {"prog_array": 0, "devmap": 4, "devmap_hash": 4, "cpumap": 4}


@cache
def possible_cpus() -> int:
    """Number of possible CPUs: per-CPU values hold this many copies."""
    n = L.libbpf_num_possible_cpus()
    if n < 0:
        raise KernelError("count possible CPUs", "/sys/devices/system/cpu/possible", -n)
    return n


def map_type_number(name: str | int) -> int:
    if isinstance(name, int):
        return name
    if name not in MAP_TYPES:
        raise KmeshError(f"unknown map type '{name}': expected one of {', '.join(MAP_TYPES)}")
    return MAP_TYPES[name]


@dataclass(frozen=True)
class MapInfo:
    """What the kernel says about a map (bpf_obj_get_info_by_fd)."""

    id: int
    type: str
    key_size: int
    value_size: int
    max_entries: int
    flags: tuple[str, ...]
    name: str
    btf_id: int = 0
    btf_key_type_id: int = 0
    btf_value_type_id: int = 0

    @property
    def declared_flags(self) -> tuple[str, ...]:
        """The flags the map was created with: its map_flags without those the kernel adds by itself."""
        implied = IMPLIED_FLAGS.get(self.type)
        return tuple(f for f in self.flags if f not in implied) if implied else self.flags

    @property
    def program_offset(self) -> int | None:
        """Where a value holds a program's ID (fd on update), or None."""
        offset = PROGRAM_OFFSET.get(self.type)
        return offset if offset is not None and self.value_size >= offset + 4 else None


def incompatibility(template: MapInfo, inner: MapInfo) -> list[str]:
    """Why the kernel refuses inner in a slot whose template is template (empty: compatible).

    The kernel compares type, key_size, value_size and all flags; array maps
    also compare max_entries unless the template has flag inner_map.
    """
    diffs = [
        f"{prop} {getattr(inner, prop)!r} (template: {getattr(template, prop)!r})"
        for prop in ("type", "key_size", "value_size", "flags")
        if getattr(inner, prop) != getattr(template, prop)
    ]
    if template.type in ARRAY_TYPES and "inner_map" not in template.flags and inner.max_entries != template.max_entries:
        diffs.append(
            f"max_entries {inner.max_entries} (template: {template.max_entries}; array maps must match "
            "unless the template has flag inner_map)"
        )
    return diffs


def fd_kind(fd: int) -> str:
    """'map', 'prog', 'link', ... from the anon inode behind a bpf fd."""
    try:
        link = os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        return "unknown"
    return link.removeprefix("anon_inode:bpf-") if link.startswith("anon_inode:bpf-") else link


class Map:
    """An open BPF map; owns its fd (close(), context manager, closed on garbage collection)."""

    def __init__(self, fd: int, path: str = "", template: MapInfo | None = None):
        self._fd = fd
        self.path = path
        # For an outer map: the inner map it was created with, when we know it (for hints).
        self.template = template
        self._info: MapInfo | None = None
        self._sizes: tuple[int, int] | None = None  # (key_size, syscall_value_size), for the hot paths

    # --- opening and creating -------------------------------------------------------

    @classmethod
    def create(
        cls,
        type: str | int,
        key_size: int,
        value_size: int,
        max_entries: int,
        *,
        name: str = "",
        flags: Iterable[str] = (),
        inner_map: Map | None = None,
        key_type: CType | None = None,
        value_type: CType | None = None,
    ) -> Map:
        """Create a map; key_type/value_type are recorded as BTF so they can be read back."""
        from kmesh_apply.ctype import Raw
        from kmesh_apply.kernel.btf import btf_for

        tnum = map_type_number(type)
        tname = type_name(tnum)
        if not _NAME_RE.match(name):
            raise KmeshError(f"map name '{name}' is not a kernel object name: at most 15 letters, digits, '_' or '.'")
        opts = L.MapCreateOpts(sz=ctypes.sizeof(L.MapCreateOpts), map_flags=flag_bits(flags))
        if inner_map is not None:
            opts.inner_map_fd = inner_map.fd
        if key_type is not None or value_type is not None:
            for what, typ, size in (("key", key_type, key_size), ("value", value_type, value_size)):
                if typ is not None and typ.size != size:
                    raise KmeshError(f"{what} type is {typ.size} bytes but {what}_size is {size}")
            loaded = btf_for(tname, key_type or Raw(key_size), value_type or Raw(value_size))
            if loaded is not None:
                opts.btf_fd, opts.btf_key_type_id, opts.btf_value_type_id = loaded.fd, loaded.key_id, loaded.value_id
        fd = L.bpf_map_create(tnum, name.encode() or None, key_size, value_size, max_entries, ctypes.byref(opts))
        if fd < 0:
            raise fail("create map", name or f"a new {tname} map", -fd, _create_hint(-fd, tname, opts.map_flags, key_size))
        return cls(fd, template=inner_map.info if inner_map is not None else None)

    @classmethod
    def open_pinned(cls, path: str, shown: str | None = None) -> Map:
        """The map pinned at `path`; `shown` is how messages name the pin when `path` is not how users
        know it (the pin root's guard opens pins through /proc/self/fd/<directory fd>/<name>)."""
        shown = shown or path
        fd = L.bpf_obj_get(os.fsencode(path))
        if fd < 0:
            hint = f"nothing is pinned at {shown}" if -fd == E.ENOENT else ""
            raise fail("open pinned map", shown, -fd, hint)
        kind = fd_kind(fd)
        if kind != "map":
            os.close(fd)
            raise KernelError("open pinned map", shown, E.EINVAL, f"the pinned object is a BPF {kind}, not a map")
        return cls(fd, shown)

    @classmethod
    def from_id(cls, map_id: int) -> Map:
        fd = L.bpf_map_get_fd_by_id(map_id)
        if fd < 0:
            hint = f"no map has kernel ID {map_id} (bpftool map show lists them)" if -fd == E.ENOENT else ""
            raise fail("open map by ID", f"map ID {map_id}", -fd, hint)
        return cls(fd)

    def pin(self, path: str, shown: str | None = None) -> None:
        """Pin the map at `path` (`shown`: as for `open_pinned`); the kernel never follows a link there."""
        shown = shown or path
        ret = L.bpf_obj_pin(self.fd, os.fsencode(path))
        if ret < 0:
            hints = {
                E.EEXIST: "something is already pinned there",
                E.ENOENT: "the directory does not exist",
                E.EPERM: "not root, or the name contains a '.' (bpffs refuses dots)",
            }
            raise fail("pin", f"{self.label} at {shown}", -ret, hints.get(-ret, ""))
        self.path = shown

    def pin_new(self, path: str, shown: str | None = None) -> Map:
        """Pin a map just created; if that fails, close it (nothing else holds it: it goes away) and raise."""
        try:
            self.pin(path, shown)
        except BaseException:
            self.close()
            raise
        return self

    # --- the handle -------------------------------------------------------------------

    @property
    def fd(self) -> int:
        if self._fd < 0:
            raise KmeshError(f"the handle on map {self.path or (self._info.id if self._info else '')} is already closed")
        return self._fd

    def close(self) -> None:
        fd, self._fd = self._fd, -1
        if fd >= 0:
            os.close(fd)

    # Closes a forgotten handle (a weakref.finalize per map costs a reader of thousands of maps 4%).
    __del__ = close

    def __enter__(self) -> Map:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def info(self) -> MapInfo:
        """The kernel's description of the map; cached (a map's shape never changes)."""
        if self._info is None:
            raw = L.BpfMapInfo()
            size = ctypes.c_uint32(ctypes.sizeof(raw))
            ret = L.bpf_obj_get_info_by_fd(self.fd, ctypes.byref(raw), ctypes.byref(size))
            if ret < 0:
                raise fail("get map info", self.path or f"fd {self._fd}", -ret)
            # Filled in directly: a frozen dataclass's __init__ (one object.__setattr__ per field)
            # costs 3x as much, which shows when a reader opens thousands of maps.
            self._info = info = object.__new__(MapInfo)
            info.__dict__.update(
                id=raw.id, type=type_name(raw.type), key_size=raw.key_size,
                value_size=raw.value_size, max_entries=raw.max_entries, flags=flag_names(raw.map_flags),
                name=raw.name.decode(errors="replace"), btf_id=raw.btf_id,
                btf_key_type_id=raw.btf_key_type_id, btf_value_type_id=raw.btf_value_type_id,
            )
        return self._info

    @property
    def id(self) -> int:
        return self.info.id

    @property
    def label(self) -> str:
        """How error messages name this map: its pin path or name, and its kernel ID."""
        info = self.info
        return f"map {self.path or info.name or info.type} (ID {info.id})"

    @property
    def syscall_value_size(self) -> int:
        """Bytes of a value on syscalls: per-CPU maps carry one 8-byte-aligned copy per CPU."""
        info = self.info
        if info.type in PERCPU_TYPES:
            return (info.value_size + 7) // 8 * 8 * possible_cpus()
        return info.value_size

    def memlock(self) -> int | None:
        """Bytes the kernel charges for this map (from fdinfo; bpf_map_info lacks it)."""
        with open(f"/proc/self/fdinfo/{self.fd}") as f:
            for line in f:
                if line.startswith("memlock:"):
                    return int(line.split()[1])
        return None

    def key_type(self) -> CType | None:
        """The key's C type from the map's BTF; None when the map carries no BTF."""
        return self.types()[0]

    def value_type(self) -> CType | None:
        return self.types()[1]

    def types(self) -> tuple[CType | None, CType | None]:
        """The key's and the value's C types, decoded from one load of the map's BTF; None without BTF."""
        from kmesh_apply.kernel.btf import decode_types

        info = self.info
        if not info.btf_id:
            return None, None
        key, value = decode_types(info.btf_id, (info.btf_key_type_id, info.key_size), (info.btf_value_type_id, info.value_size))
        return key, value

    # --- one entry ----------------------------------------------------------------------

    def _entry_sizes(self) -> tuple[int, int]:
        if self._sizes is None:
            self._sizes = (self.info.key_size, self.syscall_value_size)
        return self._sizes

    def _check_sizes(self, op: str, keys: bytes | bytearray, count: int, values: bytes | bytearray | None = None) -> None:
        """Refuse buffers of the wrong size before the kernel reads past their end."""
        ks = self.info.key_size
        if len(keys) != ks * count:
            what = f"key is {len(keys)} bytes" if count == 1 else f"{len(keys)} key bytes for {count} keys"
            raise KernelError(op, self.label, E.EINVAL, f"{what}, the map's key_size is {ks}")
        if values is not None and len(values) != self.syscall_value_size * count:
            vs = self.syscall_value_size
            what = f"value is {len(values)} bytes" if count == 1 else f"{len(values)} value bytes for {count} values"
            raise KernelError(op, self.label, E.EINVAL, f"{what}, the map takes {vs} bytes per value")

    def lookup(self, key: bytes) -> bytes | None:
        """The value stored under key, or None when there is none."""
        ks, vs = self._sizes or self._entry_sizes()
        if len(key) != ks:
            self._check_sizes("lookup", key, 1)
        buf = ctypes.create_string_buffer(vs)
        ret = L.bpf_map_lookup_elem(self.fd, key, buf)
        if ret == -E.ENOENT:
            return None
        if ret < 0:
            raise fail("lookup", self.label, -ret)
        return buf.raw

    def update(self, key: bytes, value: bytes, flags: int = UPDATE_ANY) -> None:
        ks, vs = self._sizes or self._entry_sizes()
        if len(key) != ks or len(value) != vs:
            self._check_sizes("update", key, 1, value)
        ret = L.bpf_map_update_elem(self.fd, key, value, flags)
        if ret < 0:
            raise fail("update", f"{self.label} key {key.hex()}", -ret, self._update_hint(-ret, flags))

    def delete(self, key: bytes) -> bool:
        """Delete key; False when it was not there."""
        self._check_sizes("delete", key, 1)
        ret = L.bpf_map_delete_elem(self.fd, key)
        if ret == -E.ENOENT:
            return False
        if ret < 0:
            hint = "array map entries cannot be deleted, only overwritten" if -ret == E.EINVAL and self.info.type in ARRAY_TYPES - OUTER_TYPES else ""
            raise fail("delete", f"{self.label} key {key.hex()}", -ret, hint)
        return True

    def next_key(self, key: bytes | None) -> bytes | None:
        """The key after key (the first key for None); None at the end."""
        if key is not None:
            self._check_sizes("get next key", key, 1)
        out = ctypes.create_string_buffer(self.info.key_size)
        ret = L.bpf_map_get_next_key(self.fd, key, out)
        if ret == -E.ENOENT:
            return None
        if ret < 0:
            raise fail("get next key", self.label, -ret)
        return out.raw

    # --- many entries -------------------------------------------------------------------

    def unreadable(self) -> str:
        """Why user space cannot read this map's entries ('' when it can)."""
        info = self.info
        if info.type in UNREADABLE:
            return UNREADABLE[info.type]
        if info.type in SOCKET_TYPES and info.value_size != 8:
            return "its values are sockets, which the kernel gives back (as cookies) only for 8-byte values"
        if not info.key_size or not info.value_size:
            return f"{a(info.type)} map has no keys or values to read"
        return ""

    def items(self, buffers: LookupBuffers | None = None,
              on_part: Callable[[Entries], None] | None = None) -> Entries:
        """Every entry, packed as the batch lookups return them (get_next_key + lookup for types that
        refuse batches); a reader of many maps passes one `LookupBuffers` for all of them.
        `on_part` sees each batch's entries as they come (batches of about 1 MiB then), so that
        another thread can work on them while the kernel fills the next one.
        Raises `EntriesUnreadable` for a map whose entries user space cannot read."""
        info = self.info
        reason = self.unreadable()
        if reason:
            raise EntriesUnreadable(self.label, reason)
        if info.type not in _no_batch:
            try:
                return self._items_batched(info, buffers or LookupBuffers(), on_part)
            except _BatchRefused:
                _no_batch.add(info.type)
        entries = self._items_iterated()
        if on_part is not None:
            on_part(Entries(entries.key_size, entries.value_size, bytes(entries.keys_buffer), bytes(entries.values_buffer)))
        return entries

    def _items_batched(self, info: MapInfo, buffers: LookupBuffers,
                       on_part: Callable[[Entries], None] | None) -> Entries:
        ks, vs = self._sizes or self._entry_sizes()
        chunk = max(1, min(info.max_entries, (_PART_BYTES if on_part else _LOOKUP_BYTES) // (ks + vs)))
        keys, vals, in_tok, out_tok = buffers.reserve(chunk * ks, chunk * vs, max(ks, 8))  # tokens: bucket index or key
        count, count_ref, fd = buffers.count, buffers.count_ref, self.fd
        key_parts: list[bytes] = []
        value_parts: list[bytes] = []
        first = True
        while True:
            count.value = chunk
            ret = L.bpf_map_lookup_batch(fd, None if first else in_tok, out_tok, keys, vals, count_ref, _LOOKUP_OPTS_REF)
            n = count.value
            if ret < 0 and ret != -E.ENOENT:  # ENOENT: reached the end, the entries copied with it are valid
                if -ret in UNSUPPORTED:
                    raise _BatchRefused()
                if -ret == E.ENOSPC and n == 0:  # a hash bucket larger than the chunk
                    chunk *= 2
                    keys, vals = buffers.reserve(chunk * ks, chunk * vs, max(ks, 8))[:2]
                    continue
                raise fail("batch lookup", self.label, -ret)
            if n:
                key_parts.append(ctypes.string_at(keys, n * ks))
                value_parts.append(ctypes.string_at(vals, n * vs))
                if on_part is not None:
                    on_part(Entries(ks, vs, key_parts[-1], value_parts[-1]))
            if ret < 0 or (n == info.max_entries and info.type in ARRAY_TYPES):  # an array has no more keys
                return Entries(ks, vs, _joined(key_parts), _joined(value_parts))
            in_tok, out_tok = out_tok, in_tok
            first = False

    def _items_iterated(self) -> Entries:
        ks, vs = self._sizes or self._entry_sizes()
        out = Entries(ks, vs)
        try:
            key = self.next_key(None)
            while key is not None:
                value = self.lookup(key)
                if value is not None:  # deleted meanwhile, or an empty outer slot
                    out[key] = value
                key = self.next_key(key)
        except KernelError as e:  # a type this module does not know yet, refusing reads
            if e.errno in UNSUPPORTED:
                raise EntriesUnreadable(self.label, f"the kernel does not let user space read {a(self.info.type)} map") from None
            raise
        return out

    def update_batch(self, keys: bytes | bytearray, values: bytes | bytearray, count: int, flags: int = UPDATE_ANY) -> None:
        """Write count entries in one syscall; keys and values are concatenated fixed-size records.
        A value holding a program holds it as lookups give it back, by ID (see `program_offset`)."""
        self._check_sizes("batch update", keys, count, values)
        if count == 0:
            return
        if self.info.program_offset is not None:
            with _ProgramFds(self, values, count) as by_fd:
                return self._update_batch(keys, by_fd, count, flags)
        self._update_batch(keys, values, count, flags)

    def _update_batch(self, keys: bytes | bytearray, values: bytes | bytearray, count: int, flags: int) -> None:
        if self.info.type not in _no_batch:
            done = ctypes.c_uint32(count)
            opts = L.batch_opts()
            opts.elem_flags = flags
            ret = L.bpf_map_update_batch(self.fd, _c(keys), _c(values), ctypes.byref(done), ctypes.byref(opts))
            if ret >= 0:
                return
            if -ret not in UNSUPPORTED:
                raise self._batch_failure("batch update", -ret, keys, done.value, count, self._update_hint(-ret, flags))
            _no_batch.add(self.info.type)
        ks, vs = self.info.key_size, self.syscall_value_size
        kv, vv = memoryview(keys), memoryview(values)
        for i in range(count):
            self.update(bytes(kv[i * ks:(i + 1) * ks]), bytes(vv[i * vs:(i + 1) * vs]), flags)

    def push(self, values: bytes, count: int) -> None:
        """Add count values to a map without keys, in order: a queue's or a stack's push, a bloom
        filter's add (there is no batch call for these)."""
        vs = self.info.value_size
        if self.info.key_size or len(values) != vs * count:
            raise KernelError("push", self.label, E.EINVAL, f"a push takes {vs}-byte values into a map without keys")
        for i in range(count):
            ret = L.bpf_map_update_elem(self.fd, None, values[i * vs:(i + 1) * vs], UPDATE_ANY)
            if ret < 0:
                hint = "the map is full (max_entries reached)" if -ret == E.E2BIG else ""
                raise BatchError("push", f"{self.label} value {i + 1} of {count} ({i} done)", -ret, hint, i)

    def may_hold(self, value: bytes) -> bool:
        """A bloom filter's answer: False when it surely does not hold value (True may be a false positive)."""
        if len(value) != self.info.value_size:
            raise KernelError("look up", self.label, E.EINVAL, f"a value is {self.info.value_size} bytes")
        ret = L.bpf_map_lookup_elem(self.fd, None, value)
        if ret == -E.ENOENT:
            return False
        if ret < 0:
            raise fail("look up", self.label, -ret)
        return True

    def delete_batch(self, keys: bytes, count: int) -> None:
        """Delete count entries in one syscall; a missing key is an error naming it."""
        self._check_sizes("batch delete", keys, count)
        if count == 0:
            return
        if self.info.type not in _no_batch:
            done = ctypes.c_uint32(count)
            ret = L.bpf_map_delete_batch(self.fd, keys, ctypes.byref(done), ctypes.byref(L.batch_opts()))
            if ret >= 0:
                return
            if -ret not in UNSUPPORTED:
                raise self._batch_failure("batch delete", -ret, keys, done.value, count)
            _no_batch.add(self.info.type)
        ks = self.info.key_size
        for i in range(count):
            key = keys[i * ks:(i + 1) * ks]
            if not self.delete(key):
                raise fail("delete", f"{self.label} key {key.hex()}", E.ENOENT, "no such key")

    def _batch_failure(self, op: str, err: int, keys: bytes | bytearray, done: int, count: int, hint: str = "") -> BatchError:
        ks = self.info.key_size
        where = f"{self.label} entry {done + 1} of {count} (key {keys[done * ks:(done + 1) * ks].hex()}; {done} done)"
        return BatchError(op, where, err, hint or HINTS.get(err, ""), done)

    def _update_hint(self, err: int, flags: int) -> str:
        if err == E.EEXIST and flags == UPDATE_NOEXIST:
            return "the key exists already"
        if err == E.ENOENT and flags == UPDATE_EXIST:
            return "the key does not exist"
        info = self.info
        if err == E.E2BIG and info.type in ARRAY_TYPES | {"prog_array", "devmap", "cpumap"}:
            return f"an array map's keys are indexes below max_entries ({info.max_entries})"
        if err == E.EINVAL and info.type == "prog_array":
            return ("a prog_array holds programs of one type, that of the first program loaded with it or "
                    "put in it (and a program for tail calls cannot be an XDP program attached as a frags one)")
        if err == E.EINVAL and info.type in ("devmap", "devmap_hash", "cpumap"):
            where = "cpumap" if info.type == "cpumap" else "devmap"
            return f"a {where}'s program must be an XDP program loaded for it (SEC(\"xdp/{where}\"))"
        if err == E.ENODEV:
            return "no such network interface" if info.type != "cpumap" else "no such CPU"
        return ""

    # --- outer maps ---------------------------------------------------------------------

    def slots(self, buffers: LookupBuffers | None = None) -> dict[bytes, int]:
        """An outer map's used slots: key -> kernel ID of the inner map in it."""
        return {k: int.from_bytes(v[:4], "little") for k, v in self.items(buffers).items()}

    def update_slots(self, keys: bytes, inners: Sequence[Map]) -> None:
        """Put inners[i] in the slot keys[i] (concatenated keys); one syscall for any number of slots.

        An EINVAL gets a hint saying which property of the inner map differs from
        the template (the map this outer map was created with, or else an inner
        map already in a slot).
        """
        values = struct.pack(f"={len(inners)}I", *(m.fd for m in inners))
        try:
            if len(inners) == 1:
                self.update(keys, values)
            else:
                self.update_batch(keys, values, len(inners))
        except KernelError as e:
            if e.errno != E.EINVAL or e.hint:
                raise
            if isinstance(e, BatchError):
                raise BatchError(e.op, e.target, e.errno, self._slot_hint(inners[e.done]), e.done) from None
            raise KernelError(e.op, e.target, e.errno, self._slot_hint(inners[0])) from None

    def _slot_hint(self, inner: Map) -> str:
        template, source = self.template, "the template"
        if template is None:
            for key, inner_id in self.slots().items():
                if inner_id != inner.id:
                    try:
                        with Map.from_id(inner_id) as peer:
                            template, source = peer.info, f"the inner map in slot {key.hex()} (ID {inner_id})"
                    except KernelError:
                        continue
                    break
        if template is None:
            return (
                f"the inner map ({inner.info.type}) must match the outer map's template in type, key_size, "
                "value_size and flags (and max_entries for array maps without flag inner_map)"
            )
        diffs = incompatibility(template, inner.info)
        if not diffs:
            return f"{inner.label} matches {source}; the kernel still refused it"
        return f"{inner.label} is incompatible with {source}: " + "; ".join(diffs)


class LookupBuffers:
    """Buffers for batch lookups, grown on demand; one set can serve every map of a read
    (allocating them costs more than reading a small map). Not for concurrent use."""

    def __init__(self) -> None:
        self.count = ctypes.c_uint32()
        self.count_ref = ctypes.byref(self.count)
        self._buffers = (_EMPTY, _EMPTY, _EMPTY, _EMPTY)

    def reserve(self, key_bytes: int, value_bytes: int, token_bytes: int) -> tuple[ctypes.Array, ...]:
        """Buffers for keys, values, the in token and the out token of at least these sizes
        (tokens keep their contents: only a larger token size replaces them)."""
        keys, values, in_tok, out_tok = bufs = self._buffers
        if len(keys) < key_bytes or len(values) < value_bytes or len(in_tok) < token_bytes:
            bufs = self._buffers = (
                _grown(keys, key_bytes), _grown(values, value_bytes), _grown(in_tok, token_bytes), _grown(out_tok, token_bytes))
        return bufs


_EMPTY = (ctypes.c_char * 0)()


def _joined(parts: list[bytes]) -> bytes:
    return parts[0] if len(parts) == 1 else b"".join(parts)


def _c(buf: bytes | bytearray) -> bytes | ctypes.Array:
    """A buffer ctypes passes as a pointer: bytes as they are, a bytearray without a copy."""
    return (ctypes.c_char * len(buf)).from_buffer(buf) if isinstance(buf, bytearray) else buf


def _grown(buf: ctypes.Array, size: int) -> ctypes.Array:
    return buf if len(buf) >= size else (ctypes.c_char * size)()


class BatchError(KernelError):
    """A batch stopped part-way: the first `done` entries were applied, the next one failed."""

    def __init__(self, op: str, target: str, errno: int, hint: str, done: int):
        super().__init__(op, target, errno, hint)
        self.done = done


class _ProgramFds:
    """Values with each program ID replaced by an fd of that program, open while in use (the kernel
    takes fds on update; ID 0, no program, stays 0)."""

    def __init__(self, m: Map, values: bytes | bytearray, count: int):
        self.map, self.values, self.count = m, values, count
        self.fds: list[int] = []

    def __enter__(self) -> bytearray:
        offset, vs = self.map.info.program_offset, self.map.info.value_size
        assert offset is not None
        out = bytearray(self.values)
        for i in range(self.count):
            at = i * vs + offset
            prog_id = int.from_bytes(out[at:at + 4], "little")
            if prog_id:
                fd = L.bpf_prog_get_fd_by_id(prog_id)
                if fd < 0:
                    self.__exit__()
                    hint = "it was unloaded since: plan again" if -fd == E.ENOENT else ""
                    raise fail("open program by ID", f"program ID {prog_id} for {self.map.label}", -fd, hint)
                self.fds.append(fd)
                out[at:at + 4] = fd.to_bytes(4, "little")
        return out

    def __exit__(self, *exc: object) -> None:
        for fd in self.fds:
            os.close(fd)
        self.fds = []


class EntriesUnreadable(KmeshError):
    """User space cannot read this map's entries (`reason` says why); its type and sizes still read."""

    def __init__(self, label: str, reason: str):
        super().__init__(f"cannot read the entries of {label}: {reason}")
        self.reason = reason


class _BatchRefused(Exception):
    """This map type has no batch operations; use the one-entry calls."""


def _create_hint(err: int, type_name: str, flags: int, key_size: int) -> str:
    if err == E.E2BIG:
        return ("a key or value is too large for this map type (per-CPU values are limited to 32 KiB), "
                "or max_entries is too large")
    if err == E.ENOMEM:
        return "the kernel could not allocate the map: lower max_entries, or use flag no_prealloc for hash maps"
    if err != E.EINVAL:
        return ""
    if type_name == "lpm_trie" and not flags & MAP_FLAGS["no_prealloc"]:
        return "an lpm_trie needs flag no_prealloc"
    if flags & MAP_FLAGS["inner_map"] and type_name != "array":
        return "flag inner_map is for array maps only"
    if type_name in ARRAY_TYPES and key_size != 4:
        return "an array map's key_size must be 4"
    if type_name in OUTER_TYPES:
        return "an outer map needs an inner map (template) of a type that can be nested, and value_size 4"
    return "the kernel refused this combination of type, sizes, max_entries and flags"
