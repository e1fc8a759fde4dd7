"""The loaded BPF programs that hold maps, and where the kernel says they are attached.

A program holds the maps it was loaded with by reference, not by pin: a map replaced at
its pin lives on for the program, which goes on reading it. The kernel lists each
program's maps (bpf_prog_info.map_ids), so one walk over every loaded program answers
"who holds these maps" for any number of maps; programs pinned in bpffs are found by ID
like any other. A program holds only the maps its code names: one reading an inner map
through an outer map's slot holds the outer map, not the inner one.
"""

from __future__ import annotations

import ctypes
import errno as E
import os
import socket
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Iterator

from kmesh_apply.errors import KernelError
from kmesh_apply.kernel import libbpf as L
from kmesh_apply.kernel.digest import PROG_NAME as DIGEST_PROG_NAME
from kmesh_apply.kernel.digest import PROG_TYPE_SYSCALL as _SYSCALL_PROG_TYPE
from kmesh_apply.kernel.maps import fail, fd_kind

# Names the system's libbpf (1.1) predates; it returns NULL for them.
_NEWER_PROG_TYPES = {32: "netfilter"}
_NEWER_LINK_TYPES = {10: "netfilter", 11: "tcx", 12: "uprobe_multi", 13: "netkit", 14: "sockmap"}
_NEWER_ATTACH_TYPES = {44: "struct_ops", 45: "netfilter", 46: "tcx_ingress", 47: "tcx_egress",
                       48: "trace_uprobe_multi", 54: "netkit_primary", 55: "netkit_peer"}
_MAP_IDS = 64  # map IDs read per program in the first call; a program with more is asked again


@dataclass(frozen=True)
class Program:
    """A loaded BPF program, as plans and `kmesh map info` name it. `attached` describes each
    link the program is attached through (empty when it has none, e.g. attached through
    netlink or a legacy cgroup attach, or not attached at all)."""

    id: int
    name: str
    type: str
    attached: tuple[str, ...] = ()

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> Program:
        """The inverse of dataclasses.asdict, after a trip through JSON (a saved plan, `kmesh map info --json`)."""
        return cls(raw["id"], raw["name"], raw["type"], tuple(raw["attached"]))

    def __str__(self) -> str:
        where = "; ".join(self.attached)
        return f'program {self.id} "{self.name}" ({self.type}{", " + where if where else ""})'


def map_holders(map_ids: Iterable[int]) -> dict[int, tuple[Program, ...]]:
    """Every loaded program that holds one of `map_ids`, by map ID (a map no program holds is
    absent). One pass over all loaded programs (three bpf() calls each), plus one over the
    links when some program matched; programs that unload meanwhile are skipped."""
    wanted = set(map_ids)
    if not wanted:
        return {}
    found: dict[int, list[tuple[int, str, str]]] = {}
    buf = (ctypes.c_uint32 * _MAP_IDS)()
    info = L.BpfProgInfo()
    for prog_id, fd in _each(L.bpf_prog_get_next_id, L.bpf_prog_get_fd_by_id, "program"):
        while True:
            _fill(fd, info, f"program ID {prog_id}", nr_map_ids=len(buf), map_ids=ctypes.addressof(buf))
            if info.nr_map_ids <= len(buf):
                break
            buf = (ctypes.c_uint32 * info.nr_map_ids)()
        held = wanted.intersection(buf[:info.nr_map_ids])
        if held and not _own_digest(info):
            entry = (prog_id, info.name.decode(errors="replace"), _prog_type(info.type))
            for map_id in held:
                found.setdefault(map_id, []).append(entry)
    if not found:
        return {}
    attached = _attachments({p[0] for progs in found.values() for p in progs})
    return {m: tuple(Program(i, n, t, tuple(attached.get(i, ()))) for i, n, t in progs) for m, progs in found.items()}


def _own_digest(info: L.BpfProgInfo) -> bool:
    """A digest program of this tool (kernel.digest), loaded for the moment a drift check sums a map
    (maybe by another kmesh-apply process): it runs only when called from user space, reads no
    packet, and is gone when the check is done, so it holds no map as a data plane does."""
    return info.type == _SYSCALL_PROG_TYPE and info.name.decode(errors="replace") == DIGEST_PROG_NAME


def _each(next_id: Callable[..., int], get_fd: Callable[[int], int], what: str) -> Iterator[tuple[int, int]]:
    """(ID, fd) of every loaded program or link, in ID order; each fd is closed when the caller moves on,
    and an object gone since the walk saw its ID is skipped."""
    current, nxt = 0, ctypes.c_uint32()
    while True:
        ret = next_id(current, ctypes.byref(nxt))
        if ret == -E.ENOENT:
            return
        if ret < 0:
            raise fail(f"list {what} IDs", f"{what} IDs after {current}", -ret)
        current = nxt.value
        fd = get_fd(current)
        if fd < 0:
            if -fd == E.ENOENT:
                continue
            raise fail(f"open {what} by ID", f"{what} ID {current}", -fd)
        try:
            yield current, fd
        finally:
            os.close(fd)


def _fill(fd: int, info: ctypes.Structure, target: str, **fields: int) -> None:
    """bpf_obj_get_info_by_fd into `info`, zeroed but for `fields` (zero buffer pointers: the kernel only
    reports the lengths of what it would copy there)."""
    ctypes.memset(ctypes.byref(info), 0, ctypes.sizeof(info))
    for name, value in fields.items():
        setattr(info, name, value)
    size = ctypes.c_uint32(ctypes.sizeof(info))
    ret = L.bpf_obj_get_info_by_fd(fd, ctypes.byref(info), ctypes.byref(size))
    if ret < 0:
        raise fail("get info", target, -ret)


def _attachments(prog_ids: set[int]) -> dict[int, list[str]]:
    """What the links of these programs attach them to, by program ID."""
    out: dict[int, list[str]] = {}
    info = L.BpfLinkInfo()
    for link_id, fd in _each(L.bpf_link_get_next_id, L.bpf_link_get_fd_by_id, "link"):
        _fill(fd, info, f"link ID {link_id}")
        if info.prog_id in prog_ids:
            out.setdefault(info.prog_id, []).append(_describe_link(info))
    return out


def _describe_link(info: L.BpfLinkInfo) -> str:
    """`xdp link 7 on eth0`, `cgroup link 3 to cgroup 4242 (cgroup_sock_ops)`, ...: what the kernel tells."""
    kind = _type_name(L.libbpf_bpf_link_type_str, info.type, _NEWER_LINK_TYPES)
    w = info.words
    head = f"{kind} link {info.id}"
    if kind == "xdp":
        return f"{head} on {_ifname(w[0])}"
    if kind in ("tcx", "netkit"):
        return f"{head} on {_ifname(w[0])} ({_attach_type(w[1])})"
    if kind == "cgroup":
        return f"{head} to cgroup {w[0] | w[1] << 32} ({_attach_type(w[2])})"
    if kind == "netns":
        return f"{head} to netns {w[0]} ({_attach_type(w[1])})"
    if kind == "tracing":
        return f"{head} ({_attach_type(w[0])})"
    return head


def _type_name(lookup: Callable[[int], bytes | None], number: int, newer: dict[int, str]) -> str:
    name = lookup(number)
    return name.decode() if name else newer.get(number, f"type {number}")


def _prog_type(number: int) -> str:
    return _type_name(L.libbpf_bpf_prog_type_str, number, _NEWER_PROG_TYPES)


def _attach_type(number: int) -> str:
    return _type_name(L.libbpf_bpf_attach_type_str, number, _NEWER_ATTACH_TYPES)


def _ifname(ifindex: int) -> str:
    try:
        return socket.if_indextoname(ifindex)
    except OSError:
        return f"ifindex {ifindex}"


def pinned_program(path: str) -> int:
    """The kernel ID of the program pinned at `path` (a config's reference to it)."""
    fd = L.bpf_obj_get(os.fsencode(path))
    if fd < 0:
        hint = "nothing is pinned there: load and pin the program first" if -fd == E.ENOENT else ""
        raise fail("open pinned program", path, -fd, hint)
    try:
        kind = fd_kind(fd)
        if kind != "prog":
            raise KernelError("open pinned program", path, E.EINVAL, f"the pinned object is a BPF {kind}, not a program")
        info = L.BpfProgInfo()
        _fill(fd, info, path)
        return int(info.id)
    finally:
        os.close(fd)


def program_loaded(prog_id: int) -> bool:
    """Whether a program of this kernel ID is loaded (a config may name a program by ID)."""
    fd = L.bpf_prog_get_fd_by_id(prog_id)
    if fd < 0:
        if -fd == E.ENOENT:
            return False
        raise fail("open program by ID", f"program ID {prog_id}", -fd)
    os.close(fd)
    return True


def program_pins(prog_ids: Iterable[int], bpffs: str = "/sys/fs/bpf") -> dict[int, str]:
    """Where in bpffs each of these programs is pinned (the first path in name order), for the ones
    that are: `show` gives a prog_array's programs back by path. Walks bpffs until all are found."""
    wanted, found = set(prog_ids), {}
    info = L.BpfProgInfo()
    for folder, dirs, files in os.walk(bpffs):
        dirs.sort()
        for name in sorted(files):
            path = os.path.join(folder, name)
            fd = L.bpf_obj_get(os.fsencode(path))
            if fd < 0:
                continue
            try:
                if fd_kind(fd) != "prog":
                    continue
                _fill(fd, info, path)
            finally:
                os.close(fd)
            if info.id in wanted and info.id not in found:
                found[info.id] = path
                if len(found) == len(wanted):
                    return found
    return found
