"""What a map may be and what it costs: the kernel's own caps on a map's sizes (known offline, so
`validate` refuses what the kernel would), and the memory the kernel takes when it creates a map,
against what the machine has (so `plan` refuses a map that would exhaust it, before anything is made).

Memory figures follow what the kernel charges for a map (`memlock:` in fdinfo, bpftool's
bytes_memlock), measured on this project's kernel (6.18) per type:

- array: max_entries x value_size rounded up to 8; percpu_array: a pointer per index and the value
  on every possible CPU; array_of_maps: a pointer per index;
- hash, lru_hash, hash_of_maps (and their per-CPU kinds): 16 bytes per bucket, buckets a power of
  two >= max_entries; every element (a 48-byte header, the key and the value, each rounded up to 8;
  per-CPU: a pointer, and the value on every possible CPU) allocated at creation unless
  `no_prealloc` (LRU maps always preallocate), else as entries are inserted;
- lpm_trie: nothing at creation, a node per entry.
Other types: no figure (never refused on a guess).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

from kmesh_apply.errors import KmeshError
from kmesh_apply.plan.model import CreateMap, Plan, WriteEntries
from kmesh_apply.wording import a, count, human_bytes

HASH_TYPES = ("hash", "lru_hash", "percpu_hash", "lru_percpu_hash", "hash_of_maps")
PERCPU = ("percpu_hash", "lru_percpu_hash", "percpu_array")
# A hash map's buckets are a power of two >= max_entries, 16 bytes each, and their count times 16
# must fit 32 bits: past 2^27 entries the kernel refuses with E2BIG (measured: 2^27 + 1 is refused).
MAX_HASH_ENTRIES = 1 << 27
BUCKET_BYTES = 16
ELEMENT_HEADER = 48  # struct htab_elem
# An lpm_trie key is a 4-byte prefix length and 1 to 256 bytes of data (LPM_DATA_SIZE_MIN/MAX).
LPM_KEY_SIZES = (5, 260)


def _round8(n: int) -> int:
    return (n + 7) & ~7


# Beyond any machine's memory: the kernel allocates a map's preallocated memory in its vmalloc area,
# 32 TiB on x86-64. Refused offline (validate); what this machine has is checked by plan and apply.
MAX_MAP_BYTES = 1 << 45


def kernel_limit(map_type: str, key_size: int, max_entries: int) -> str | None:
    """Why the kernel would refuse a map of these sizes at creation, whatever the machine, or None."""
    if map_type in HASH_TYPES and max_entries > MAX_HASH_ENTRIES:
        return (f"max_entries {max_entries} is beyond the kernel's limit for {map_type} maps, {MAX_HASH_ENTRIES} "
                f"(2^27: its buckets, a power of two of 16 bytes each, must fit 32 bits); the kernel refuses it (E2BIG)")
    if map_type == "lpm_trie" and not LPM_KEY_SIZES[0] <= key_size <= LPM_KEY_SIZES[1]:
        return (f"an lpm_trie key is 4 bytes of prefix length and 1 to 256 bytes of address, {LPM_KEY_SIZES[0]}.."
                f"{LPM_KEY_SIZES[1]} bytes; got {count(key_size, 'byte')} (the kernel refuses it)")
    return None


def offline_problem(map_type: str, key_size: int, value_size: int, max_entries: int, flags: Iterable[str]) -> str | None:
    """Why no machine could create this map, known without one: a kernel cap, or more memory at creation
    (counted for one CPU and no entries: the least it can take) than the kernel can allocate for a map."""
    limit = kernel_limit(map_type, key_size, max_entries)
    if limit is not None:
        return limit
    need = creation_bytes(map_type, key_size, value_size, max_entries, flags, 0, 1)
    if need is not None and need > MAX_MAP_BYTES:
        return (f"max_entries {max_entries} with values of {count(value_size, 'byte')}: {a(map_type)} map this large "
                f"takes at least {human_bytes(need)} of kernel memory at creation, more than the kernel can allocate for "
                f"one map ({human_bytes(MAX_MAP_BYTES)})")
    return None


def creation_bytes(map_type: str, key_size: int, value_size: int, max_entries: int, flags: Iterable[str],
                   entries: int, ncpus: int) -> int | None:
    """About how much memory the kernel takes for a new map holding `entries` entries (None: no figure
    for this type)."""
    value = _round8(value_size)
    if map_type == "array":
        return max_entries * value
    if map_type == "percpu_array":
        return max_entries * (8 + value * ncpus)
    if map_type == "array_of_maps":
        return max_entries * 8
    if map_type in HASH_TYPES:
        percpu = map_type in PERCPU
        element = ELEMENT_HEADER + _round8(key_size) + (8 + value * ncpus if percpu else value)
        buckets = (1 << max(max_entries - 1, 0).bit_length()) * BUCKET_BYTES
        preallocated = "no_prealloc" not in flags or map_type.startswith("lru")
        return buckets + element * (max_entries if preallocated else entries)
    if map_type == "lpm_trie":
        return entries * (ELEMENT_HEADER + key_size + value)
    return None


@dataclass(frozen=True)
class Available:
    bytes: int
    source: str  # where the figure comes from, for the message


def available_memory() -> Available | None:
    """The memory new maps may take here: MemAvailable, or what this process's memory cgroup still
    allows if that is less. None when /proc/meminfo cannot be read."""
    try:
        meminfo = Path("/proc/meminfo").read_text()
    except OSError:
        return None
    fields = dict(line.split(":", 1) for line in meminfo.splitlines() if ":" in line)
    if "MemAvailable" not in fields:
        return None
    found = Available(int(fields["MemAvailable"].split()[0]) * 1024, "MemAvailable in /proc/meminfo")
    room = _cgroup_room()
    return room if room is not None and room.bytes < found.bytes else found


def _cgroup_room() -> Available | None:
    """Limit minus usage of this process's memory cgroup (v2's memory.max, or v1's memory controller)."""
    try:
        lines = Path("/proc/self/cgroup").read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        _, controllers, path = line.split(":", 2)
        if controllers == "":
            limit, usage = Path("/sys/fs/cgroup", path.lstrip("/"), "memory.max"), "memory.current"
        elif "memory" in controllers.split(","):
            limit, usage = Path("/sys/fs/cgroup/memory", path.lstrip("/"), "memory.limit_in_bytes"), "memory.usage_in_bytes"
        else:
            continue
        try:
            most, used = limit.read_text().strip(), limit.with_name(usage).read_text().strip()
        except OSError:
            continue
        if most.isdigit() and used.isdigit() and int(most) < 1 << 60:
            return Available(max(int(most) - int(used), 0), f"the limit of memory cgroup {path}")
    return None


def check_memory(needs: list[tuple[str, int]], available: Available | None = None) -> None:
    """Refuse (KmeshError, with the figures) new maps that would take more memory than the machine has.
    `needs`: (map name, bytes) of each map a plan creates."""
    if not needs:
        return
    room = available if available is not None else available_memory()
    total = sum(n for _, n in needs)
    if room is None or total <= room.bytes:
        return
    biggest = sorted(needs, key=lambda need: -need[1])[:3]
    maps = ", ".join(f"'{name}' {human_bytes(n)}" for name, n in biggest)
    raise KmeshError(f"the maps this plan creates would take about {human_bytes(total)} of kernel memory ({maps}), "
                     f"more than the {human_bytes(room.bytes)} this machine has ({room.source}); nothing was changed. "
                     "Lower their max_entries, or give no_prealloc to hash maps that are mostly empty.")


def plan_needs(plan: Plan, ncpus: int) -> list[tuple[str, int]]:
    """(map name, bytes) of every map `plan` creates (new, or a replacement built aside while the old
    one still stands), with the entries it writes into it."""
    written = {s.pin: len(s.put) for s in plan.steps if isinstance(s, WriteEntries)}
    needs = []
    for s in plan.steps:
        if isinstance(s, CreateMap):
            d = s.map
            n = creation_bytes(d.type, d.key_size, d.value_size, d.max_entries, d.flags, written.get(s.pin, 0), ncpus)
            if n:
                needs.append((d.name, n))
    return needs
