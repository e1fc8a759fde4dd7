"""Test helper: pin a map of every type the kernel has into a directory, as another loader would
(libbpf, cilium/ebpf, bpftool), some holding entries, so that tests can check that no command
fails on them and that reading never changes them (a queue's values stay until popped).

`pin_foreign_maps(root)` returns what it pinned; `snapshot(root, pinned)` is what bpftool (the
independent client) says of them now: kernel IDs, and the entries of the types it can dump.
"""

from __future__ import annotations

import ctypes
import json
import os
import socket
import subprocess
from dataclasses import dataclass
from pathlib import Path

from kmesh_apply.ctype import Int
from kmesh_apply.kernel import libbpf as L
from kmesh_apply.kernel.btf import btf_for
from kmesh_apply.kernel.maps import Map, possible_cpus

QUEUE_VALUES = (11, 22, 33)
STACK_VALUES = (1, 2)


@dataclass(frozen=True)
class Foreign:
    type: str
    key_size: int
    value_size: int
    max_entries: int
    flags: tuple[str, ...] = ()


# name -> what is pinned under it (storage maps need BTF: created with an i32 key and a u64 value).
FOREIGN = {
    "f_ringbuf": Foreign("ringbuf", 0, 0, 4096),
    "f_user_ringbuf": Foreign("user_ringbuf", 0, 0, 4096),
    "f_queue": Foreign("queue", 0, 4, 8),
    "f_stack": Foreign("stack", 0, 4, 8),
    "f_bloom": Foreign("bloom_filter", 0, 4, 16),
    "f_prog_array": Foreign("prog_array", 4, 4, 4),
    "f_perf_event_array": Foreign("perf_event_array", 4, 4, 4),
    "f_stack_trace": Foreign("stack_trace", 4, 64, 8),
    "f_cgroup_array": Foreign("cgroup_array", 4, 4, 4),
    "f_devmap": Foreign("devmap", 4, 8, 4),
    "f_devmap_hash": Foreign("devmap_hash", 4, 8, 4),
    "f_sockmap": Foreign("sockmap", 4, 4, 4),
    "f_sockhash": Foreign("sockhash", 4, 8, 4),
    "f_cpumap": Foreign("cpumap", 4, 8, 0),  # max_entries: the possible CPUs
    "f_xskmap": Foreign("xskmap", 4, 4, 4),
    "f_cgroup_storage": Foreign("cgroup_storage", 16, 8, 0),
    "f_percpu_cgroup_storage": Foreign("percpu_cgroup_storage", 16, 8, 0),
    "f_reuseport": Foreign("reuseport_sockarray", 4, 8, 4),
    "f_sk_storage": Foreign("sk_storage", 4, 8, 0, ("no_prealloc",)),
    "f_inode_storage": Foreign("inode_storage", 4, 8, 0, ("no_prealloc",)),
    "f_task_storage": Foreign("task_storage", 4, 8, 0, ("no_prealloc",)),
    "f_cgrp_storage": Foreign("cgrp_storage", 4, 8, 0, ("no_prealloc",)),
    "f_arena": Foreign("arena", 0, 0, 2, ("mmapable",)),
    "f_struct_ops": Foreign("struct_ops", 4, 0, 1),  # value: the kernel's bpf_struct_ops_bpf_dummy_ops
    "f_hash": Foreign("hash", 4, 4, 8),
}
STORAGE = {"sk_storage", "inode_storage", "task_storage", "cgrp_storage"}
BTF_KIND_STRUCT = 4


def _struct_ops_value() -> tuple[int, int]:
    """The vmlinux BTF id and size of the value of a struct_ops map of bpf_dummy_ops."""
    vmlinux = L.btf__parse(b"/sys/kernel/btf/vmlinux", None)
    try:
        tid = L.btf__find_by_name_kind(vmlinux, b"bpf_struct_ops_bpf_dummy_ops", BTF_KIND_STRUCT)
        assert tid > 0, "this kernel has no bpf_dummy_ops struct_ops"
        return tid, L.btf__type_by_id(vmlinux, tid).contents.size_or_type
    finally:
        L.btf__free(vmlinux)


def _struct_ops(name: str) -> Map:
    tid, size = _struct_ops_value()
    opts = L.MapCreateOpts(sz=ctypes.sizeof(L.MapCreateOpts), btf_vmlinux_value_type_id=tid)
    opts.btf_fd = btf_for("hash", Int("u32"), Int("u32")).fd  # the kernel wants some BTF object with it
    fd = L.bpf_map_create(26, name.encode(), 4, size, 1, ctypes.byref(opts))
    if fd < 0:
        raise OSError(-fd, "create a struct_ops map")
    return Map(fd)


def _push(m: Map, values: tuple[int, ...]) -> None:
    for v in values:
        assert L.bpf_map_update_elem(m.fd, None, v.to_bytes(4, "little"), 0) == 0


def pin_foreign_maps(root: Path) -> dict[str, Foreign]:
    """Pin one map of every type under root (created if needed): a queue and a stack holding
    values, a bloom filter holding one, a devmap and a cpumap with an entry, a hash with two."""
    root.mkdir(exist_ok=True)
    for name, f in FOREIGN.items():
        if f.type == "struct_ops":
            m = _struct_ops(name[:15])
        elif f.type in STORAGE:
            m = Map.create(f.type, 4, 8, 0, name=name[:15], flags=f.flags, key_type=Int("i32"), value_type=Int("u64"))
        else:
            most = possible_cpus() if f.type == "cpumap" else f.max_entries
            m = Map.create(f.type, f.key_size, f.value_size, most, name=name[:15], flags=f.flags)
        with m:
            if f.type == "queue":
                _push(m, QUEUE_VALUES)
            elif f.type == "stack":
                _push(m, STACK_VALUES)
            elif f.type == "bloom_filter":
                _push(m, (5,))
            elif f.type in ("devmap", "devmap_hash"):
                m.update((0).to_bytes(4, "little"), socket.if_nametoindex("lo").to_bytes(4, "little") + bytes(4))
            elif f.type == "cpumap":
                m.update((0).to_bytes(4, "little"), (192).to_bytes(4, "little") + bytes(4))
            elif f.type == "hash":
                m.update((1).to_bytes(4, "little"), (10).to_bytes(4, "little"))
                m.update((2).to_bytes(4, "little"), (20).to_bytes(4, "little"))
            m.pin(str(root / name))
    return dict(FOREIGN)


def bpftool(*args: str) -> object:
    out = subprocess.run(["bpftool", "-j", *args], check=True, capture_output=True, text=True).stdout
    return json.loads(out) if out.strip() else None


def snapshot(root: Path, names: list[str] | dict[str, Foreign]) -> dict[str, object]:
    """What bpftool says of each pinned map: its ID and type, and its entries where bpftool can dump
    them (never for queues and stacks: a dump would not show them, a pop would consume them)."""
    out: dict[str, object] = {}
    for name in names:
        path = str(root / name)
        if not os.path.exists(path):
            out[name] = None
            continue
        info = bpftool("map", "show", "pinned", path)
        assert isinstance(info, dict)
        entries = None
        if FOREIGN[name].type in ("hash", "devmap", "devmap_hash", "cpumap"):
            entries = bpftool("map", "dump", "pinned", path)
        out[name] = (info["id"], info["type"], entries)
    return out


def drain(root: Path, name: str) -> list[int]:
    """Pop every value of a pinned queue or stack, in the order its readers would get them."""
    values = []
    shown = bpftool("map", "show", "pinned", str(root / name))
    verb = "dequeue" if isinstance(shown, dict) and shown["type"] == "queue" else "pop"
    while True:
        res = subprocess.run(["bpftool", "-j", "map", verb, "pinned", str(root / name)], capture_output=True, text=True)
        if res.returncode != 0:
            return values
        got = json.loads(res.stdout)
        values.append(int.from_bytes(bytes(int(b, 16) for b in got["value"]), "little"))
