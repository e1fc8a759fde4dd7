"""What finding the programs that hold a pin root's maps costs (issue 11), with many programs loaded.

Loads N tiny socket-filter programs (each holds one of M maps, by fd, in this process: nothing is
attached or pinned, and everything goes when the process exits), then times, in the same run:
  - kmesh_apply.kernel.progs.map_holders: the one walk over every loaded program that plan, apply,
    `kmesh map list` and the synchroniser share;
  - `bpftool -j prog show`: what a script would run to get the same answer (it also prints more).
Prints the cost per loaded program and the ratio. Needs root; `.venv/bin/python bench/holders.py [N]`.
"""

from __future__ import annotations

import ctypes
import json
import os
import statistics
import subprocess
import sys
import time
from typing import Callable

from kmesh_apply.kernel.maps import Map
from kmesh_apply.kernel.progs import map_holders

lib = ctypes.CDLL("libbpf.so.1", use_errno=True)
lib.bpf_prog_load.restype = ctypes.c_int
lib.bpf_prog_load.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_void_p, ctypes.c_size_t,
                              ctypes.c_void_p]
SOCKET_FILTER = 1
MAPS = 50
RUNS = 7


def holding(map_fd: int) -> bytes:
    """`r1 = map; r0 = 0; exit`: the smallest program that holds a map."""
    ld_map = bytes([0x18, 0x1 | 0x1 << 4, 0, 0]) + map_fd.to_bytes(4, "little")  # ld_imm64 r1, BPF_PSEUDO_MAP_FD
    return ld_map + bytes(8) + bytes([0xb7, 0, 0, 0, 0, 0, 0, 0]) + bytes([0x95, 0, 0, 0, 0, 0, 0, 0])


def load(n: int, maps: list[Map]) -> list[int]:
    fds = []
    for i in range(n):
        insns = holding(maps[i % len(maps)].fd)
        fd = lib.bpf_prog_load(SOCKET_FILTER, f"hold{i}".encode(), b"GPL", insns, len(insns) // 8, None)
        if fd < 0:
            sys.exit(f"bpf_prog_load failed: {os.strerror(-fd)} (root? memlock?)")
        fds.append(fd)
    return fds


def bpftool_prog_show() -> subprocess.CompletedProcess:
    return subprocess.run(["bpftool", "prog", "show", "-j"], capture_output=True, check=True)


def median_seconds(fn: Callable[[], object]) -> float:
    times = []
    for _ in range(RUNS):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 300
    maps = [Map.create("hash", 4, 8, 16, name=f"bench_held{i}") for i in range(MAPS)]
    ids = [m.id for m in maps]
    fds = load(n, maps)
    try:
        total = len(json.loads(bpftool_prog_show().stdout))  # every loaded program, ours and anyone else's
        found = map_holders(ids)
        assert sum(len(p) for p in found.values()) == n, "every program holds one of the maps"
        ours = median_seconds(lambda: map_holders(ids))
        theirs = median_seconds(bpftool_prog_show)
        print(f"{total} programs loaded ({n} of them holding one of {MAPS} maps), median of {RUNS} runs:")
        print(f"  map_holders            {ours * 1e3:8.2f} ms   {ours / total * 1e6:6.1f} us per loaded program")
        print(f"  bpftool -j prog show   {theirs * 1e3:8.2f} ms   {theirs / total * 1e6:6.1f} us per loaded program")
        print(f"  ratio                  {theirs / ours:8.1f}x  (bpftool / map_holders)")
    finally:
        for fd in fds:
            os.close(fd)
        for m in maps:
            m.close()


if __name__ == "__main__":
    main()
