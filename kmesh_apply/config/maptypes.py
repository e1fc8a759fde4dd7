"""What a configuration may declare of each map type, by bpftool's name: the kernel's rules for its
key, value, max_entries and flags (kernel/bpf/*.c, each type's map_alloc_check), and what its
`entries:` mean. Checked at validate time, one clear error per broken rule, so that no rule is
first met as an EINVAL from the kernel.

Entry kinds (`MapKind.entries`):
- DATA: key -> value, bytes the config encodes (hash, array, lpm_trie and their kin);
- LIST: values in order, pushed when the map is created (queue, stack: reading them back would
  pop them, so a live queue's contents are its readers', never compared or rewritten);
- SET: values a bloom filter is given; it can only grow (values are never removed);
- PROGRAMS, DEVICES, CPUS: values naming a pinned program, a network interface, a CPU's queue
  (prog_array, devmap/devmap_hash, cpumap), resolved to the kernel's IDs when a plan is made;
- NONE: the entries are sockets, files, tasks, records or stacks that programs or daemons put
  there: a config declares the map only.
"""

from __future__ import annotations

import resource
from dataclasses import dataclass

from kmesh_apply.wording import a, count

DATA, LIST, SET, PROGRAMS, DEVICES, CPUS, NONE = "data", "list", "set", "programs", "devices", "cpus", "none"
REFERENCES = (PROGRAMS, DEVICES, CPUS)

ACCESS = frozenset({"rdonly", "wronly", "rdonly_prog", "wronly_prog"})
_RW = frozenset({"numa_node", "rdonly", "wronly"})
_STORAGE = frozenset({"no_prealloc", "clone"})


@dataclass(frozen=True)
class MapKind:
    """The rules of one map type. key/value: 'any' (one or more bytes), 'none' (the type has none),
    or the sizes the kernel allows; max_entries: 'positive', 'zero', 'ringbuf' (bytes, a power of
    two times the page size) or 'pages' (an arena's pages)."""

    entries: str
    flags: frozenset[str]
    key: str | tuple[int, ...] = "any"
    value: str | tuple[int, ...] = "any"
    max_entries: str = "positive"
    needs: frozenset[str] = frozenset()  # flags the kernel requires
    holds: str = ""  # NONE: what its entries are, for the error when a config gives some
    per: str = ""  # max_entries 'zero': what each entry is kept with


_SOCKETS = "sockets, added by programs (sock_ops) or by the daemon that owns them"
_STORAGE_HOLDS = "kept with each {} by programs (bpf_{}_storage_get), keyed by its file descriptor"
_CGROUP_HOLDS = "created for each cgroup a program using the map is attached to"
KINDS: dict[str, MapKind] = {
    "hash": MapKind(DATA, ACCESS | {"numa_node", "no_prealloc", "zero_seed"}),
    "percpu_hash": MapKind(DATA, ACCESS | {"numa_node", "no_prealloc", "zero_seed"}),
    "lru_hash": MapKind(DATA, ACCESS | {"numa_node", "no_common_lru", "zero_seed"}),
    "lru_percpu_hash": MapKind(DATA, ACCESS | {"numa_node", "no_common_lru", "zero_seed"}),
    "array": MapKind(DATA, ACCESS | {"numa_node", "mmapable", "inner_map"}, key=(4,)),
    "percpu_array": MapKind(DATA, ACCESS | {"numa_node", "inner_map"}, key=(4,)),
    "lpm_trie": MapKind(DATA, ACCESS | {"numa_node", "no_prealloc"}, needs=frozenset({"no_prealloc"})),
    "prog_array": MapKind(PROGRAMS, _RW, key=(4,), value=(4,)),
    "devmap": MapKind(DEVICES, _RW, key=(4,), value=(4, 8)),
    "devmap_hash": MapKind(DEVICES, _RW, key=(4,), value=(4, 8)),
    "cpumap": MapKind(CPUS, frozenset({"numa_node"}), key=(4,), value=(4, 8)),
    "queue": MapKind(LIST, ACCESS | {"numa_node"}, key="none"),
    "stack": MapKind(LIST, ACCESS | {"numa_node"}, key="none"),
    "bloom_filter": MapKind(SET, ACCESS | {"numa_node", "zero_seed"}, key="none"),
    "ringbuf": MapKind(NONE, frozenset({"numa_node"}), key="none", value="none", max_entries="ringbuf",
                       holds="records a program writes for user space to read, not entries"),
    "user_ringbuf": MapKind(NONE, frozenset({"numa_node"}), key="none", value="none", max_entries="ringbuf",
                            holds="records user space writes for a program to read, not entries"),
    "arena": MapKind(NONE, frozenset({"mmapable", "segv_on_fault", "no_user_conv"}), key="none", value="none",
                     max_entries="pages", needs=frozenset({"mmapable"}),
                     holds="pages of memory shared by programs and user space, not entries"),
    "sockmap": MapKind(NONE, _RW, key=(4,), value=(4, 8), holds=_SOCKETS),
    "sockhash": MapKind(NONE, _RW, value=(4, 8), holds=_SOCKETS),
    "reuseport_sockarray": MapKind(NONE, _RW | {"rdonly_prog", "wronly_prog"}, key=(4,), value=(4, 8),
                                   holds="listening sockets of a SO_REUSEPORT group, added by their owner"),
    "xskmap": MapKind(NONE, _RW, key=(4,), value=(4,), holds="AF_XDP sockets, added by the program that opens them"),
    "perf_event_array": MapKind(NONE, _RW | {"preserve_elems"}, key=(4,), value=(4,),
                                holds="perf events, opened and added by the reader of the events"),
    "cgroup_array": MapKind(NONE, _RW, key=(4,), value=(4,), holds="cgroups, added by file descriptor"),
    "stack_trace": MapKind(NONE, _RW | {"stack_build_id"}, key=(4,), holds="stacks that programs record"),
    "cgroup_storage": MapKind(NONE, ACCESS | {"numa_node"}, key=(8, 16), max_entries="zero",
                              holds=_CGROUP_HOLDS, per="cgroup"),
    "percpu_cgroup_storage": MapKind(NONE, ACCESS | {"numa_node"}, key=(8, 16), max_entries="zero",
                                     holds=_CGROUP_HOLDS, per="cgroup"),
    "sk_storage": MapKind(NONE, _STORAGE, key=(4,), max_entries="zero", needs=frozenset({"no_prealloc"}),
                          holds=_STORAGE_HOLDS.format("socket", "sk"), per="socket"),
    "inode_storage": MapKind(NONE, _STORAGE, key=(4,), max_entries="zero", needs=frozenset({"no_prealloc"}),
                             holds=_STORAGE_HOLDS.format("file", "inode"), per="file"),
    "task_storage": MapKind(NONE, _STORAGE, key=(4,), max_entries="zero", needs=frozenset({"no_prealloc"}),
                            holds=_STORAGE_HOLDS.format("task", "task"), per="task"),
    "cgrp_storage": MapKind(NONE, _STORAGE, key=(4,), max_entries="zero", needs=frozenset({"no_prealloc"}),
                            holds=_STORAGE_HOLDS.format("cgroup", "cgrp"), per="cgroup"),
}
OUTER_FLAGS = {"array_of_maps": ACCESS | {"numa_node"}, "hash_of_maps": ACCESS | {"numa_node", "no_prealloc"}}
# Map types a config names but cannot declare, and why.
REFUSED = {
    "struct_ops": "a struct_ops map is a kernel ops table (tcp_congestion_ops, sched_ext_ops...) whose value is "
                  "filled with programs by the loader that registers it (libbpf's bpf_map__attach_struct_ops); "
                  "kmesh-apply cannot create or fill one",
    "insn_array": "an insn_array map belongs to the program it is loaded with (jump tables); kmesh-apply "
                  "cannot create one on its own",
}
# The types an outer map's slots may hold (and its template may be).
SLOT_TYPES = ("hash", "array", "lru_hash", "percpu_hash", "percpu_array", "lru_percpu_hash", "lpm_trie")
# Keys given as array indexes below max_entries.
INDEXED = ("array", "percpu_array", "prog_array", "devmap", "cpumap")


def kind(map_type: str) -> MapKind:
    return KINDS[map_type]


def page_size() -> int:
    return resource.getpagesize()


def _sizes(sizes: tuple[int, ...]) -> str:
    return " or ".join(f"{n} bytes" for n in sizes)


def rule_problems(map_type: str, key_size: int | None, value_size: int | None, max_entries: int,
                  flags: tuple[str, ...]) -> list[tuple[str, str]]:
    """The kernel's rules for a map of this type that the declaration breaks, as (message, the key of
    the declaration it is about). A size is None when the declaration gives none (or one that is not
    a type: that is reported where it is parsed)."""
    k = KINDS[map_type]
    out = []
    for which, rule, size in (("key", k.key, key_size), ("value", k.value, value_size)):
        if rule == "none":
            if size is not None:
                out.append((f"{a(map_type)} map has no {which}: leave out '{which}' and '{which}_size'", which))
        elif size is not None and isinstance(rule, tuple) and size not in rule:
            what = "a 4-byte index (u32)" if which == "key" and map_type in INDEXED else _sizes(rule)
            out.append((f"{a(map_type)} map's {which} is {what}, got {count(size, 'byte')}", which))
    if map_type == "stack_trace" and value_size is not None:
        unit = 32 if "stack_build_id" in flags else 8
        if not value_size or value_size % unit:
            what = "bpf_stack_build_id records (32 bytes each)" if unit == 32 else "u64 addresses"
            out.append((f"a stack_trace map's value is a whole number of {what}, got {value_size} bytes", "value"))
    out += _max_entries_problems(map_type, k, max_entries)
    out += [(message, "flags") for message in flag_problems(map_type, flags)]
    return out


def flag_problems(map_type: str, flags: tuple[str, ...]) -> list[str]:
    """What is wrong with the flags of a map of this type (inner or outer), one message each."""
    allowed = OUTER_FLAGS[map_type] if map_type in OUTER_FLAGS else KINDS[map_type].flags
    needs = frozenset() if map_type in OUTER_FLAGS else KINDS[map_type].needs
    out = []
    bad = [f for f in flags if f not in allowed]
    if bad:
        which = f"flag {bad[0]} is" if len(bad) == 1 else f"flags {', '.join(bad)} are"
        hint = " (the kernel sets rdonly_prog on every devmap itself)" if "rdonly_prog" in bad and "devmap" in map_type else ""
        out.append(f"{which} not valid for {a(map_type)} map: expected some of {', '.join(sorted(allowed))}{hint}")
    missing = sorted(needs - set(flags))
    if missing:
        out.append(f"{a(map_type)} map needs flags: [{', '.join(missing)}] (the kernel refuses it otherwise)")
    if {"rdonly_prog", "wronly_prog"} <= set(flags) or {"rdonly", "wronly"} <= set(flags):
        out.append("a map cannot be both read-only and write-only (rdonly and wronly, rdonly_prog and wronly_prog)")
    return out


def _max_entries_problems(map_type: str, k: MapKind, n: int) -> list[tuple[str, str]]:
    if k.max_entries == "zero":
        return [] if n == 0 else [(f"max_entries must be 0 for {a(map_type)} map: its entries are kept per "
                                   f"{k.per}, not counted by the map", "max_entries")]
    if n < 1:
        return [(f"max_entries must be at least 1 for {a(map_type)} map", "max_entries")]
    page = page_size()
    if k.max_entries == "ringbuf" and (n & (n - 1) or n % page):
        return [(f"{a(map_type)} map's max_entries is its size in bytes: a power of two and a multiple of the "
                 f"page size ({page}), e.g. {max(page, 1 << (n - 1).bit_length())}", "max_entries")]
    if k.max_entries == "pages" and n * page > 1 << 32:
        return [(f"an arena's max_entries is its size in pages, at most 4 GiB ({(1 << 32) // page} pages)",
                 "max_entries")]
    return []
