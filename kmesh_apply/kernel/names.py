"""The kernel's names for map types and map flags, both ways (shared by maps and by the BTF
reader, which finds them in an object's `.maps` declarations).

Map types are named as libbpf and bpftool name them (libbpf's `map_type_name`), never by number,
so a message, `show` and a plan say `ringbuf` where the kernel says 27.
"""

from __future__ import annotations

from functools import cache
from typing import Iterable

from kmesh_apply.errors import KmeshError

MAP_TYPES: dict[str, int] = {
    "hash": 1, "array": 2, "prog_array": 3, "perf_event_array": 4, "percpu_hash": 5, "percpu_array": 6,
    "stack_trace": 7, "cgroup_array": 8, "lru_hash": 9, "lru_percpu_hash": 10, "lpm_trie": 11,
    "array_of_maps": 12, "hash_of_maps": 13, "devmap": 14, "sockmap": 15, "cpumap": 16, "xskmap": 17,
    "sockhash": 18, "cgroup_storage": 19, "reuseport_sockarray": 20, "percpu_cgroup_storage": 21,
    "queue": 22, "stack": 23, "sk_storage": 24, "devmap_hash": 25, "struct_ops": 26, "ringbuf": 27,
    "inode_storage": 28, "task_storage": 29, "bloom_filter": 30, "user_ringbuf": 31, "cgrp_storage": 32,
    "arena": 33, "insn_array": 34,
}
MAP_TYPE_NAMES = {v: k for k, v in MAP_TYPES.items()}
MAP_FLAGS: dict[str, int] = {
    "no_prealloc": 1 << 0, "no_common_lru": 1 << 1, "numa_node": 1 << 2, "rdonly": 1 << 3,
    "wronly": 1 << 4, "stack_build_id": 1 << 5, "zero_seed": 1 << 6, "rdonly_prog": 1 << 7,
    "wronly_prog": 1 << 8, "clone": 1 << 9, "mmapable": 1 << 10, "preserve_elems": 1 << 11,
    "inner_map": 1 << 12, "link": 1 << 13, "segv_on_fault": 1 << 17, "no_user_conv": 1 << 18,
}


def type_name(number: int) -> str:
    """bpftool's name of a map type; a type newer than this table is `type N`, as bpftool says it."""
    return MAP_TYPE_NAMES.get(number) or f"type {number}"


def flag_bits(names: Iterable[str]) -> int:
    """map_flags from flag names (names of unknown bits are their hex value)."""
    bits = 0
    for n in names:
        if n in MAP_FLAGS:
            bits |= MAP_FLAGS[n]
        elif n.startswith("0x"):
            bits |= int(n, 16)
        else:
            raise KmeshError(f"unknown map flag '{n}': expected one of {', '.join(MAP_FLAGS)}")
    return bits


@cache
def flag_names(bits: int) -> tuple[str, ...]:
    """Sorted flag names of map_flags; a bit we have no name for shows as its hex value."""
    names = [n for n, b in MAP_FLAGS.items() if bits & b]
    rest = bits & ~sum(MAP_FLAGS.values())
    names += [hex(1 << i) for i in range(32) if rest >> i & 1]
    return tuple(sorted(names))
