"""Test helper: a BPF object declaring maps of the types real data planes use, the way Kmesh
declares them (libbpf's BTF-defined maps: a ringbuf by size only, a sockhash keyed by a
`struct bpf_sock_tuple`, prog_arrays by key_size/value_size with map_flags 0, an sk_storage
with BPF_F_NO_PREALLOC and an `int` key), plus a queue, a bloom filter, a devmap, a cpumap and
an xskmap; programs that use every one of them; built with clang-14 into a directory.

`entry` (XDP) pops the queue, asks the bloom filter for 5, writes a ringbuf record and
tail-calls `tails[0]`: run by BPF_PROG_TEST_RUN it returns 42 when `handler` sits in that slot,
11 popped first and 5 in the filter; 7, 3 or 1 tell which part was missing.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

SOURCE = r"""
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

struct sock_storage_data {
    __u64 connect_ns;
    __u8 direction;
    struct bpf_sock_tuple sk_tuple;
};

struct {
    __uint(type, BPF_MAP_TYPE_RINGBUF);
    __uint(max_entries, 256 * 1024 /* 256 KB */);
} km_events SEC(".maps");

struct {
    __uint(type, BPF_MAP_TYPE_SOCKHASH);
    __type(key, struct bpf_sock_tuple);
    __type(value, __u32);
    __uint(max_entries, 64);
    __uint(map_flags, 0);
} km_socket SEC(".maps");

struct {
    __uint(type, BPF_MAP_TYPE_PROG_ARRAY);
    __uint(key_size, sizeof(__u32));
    __uint(value_size, sizeof(__u32));
    __uint(max_entries, 4);
    __uint(map_flags, 0);
} km_tails SEC(".maps");

struct {
    __uint(type, BPF_MAP_TYPE_SK_STORAGE);
    __uint(map_flags, BPF_F_NO_PREALLOC);
    __type(key, int);
    __type(value, struct sock_storage_data);
} km_sock_storage SEC(".maps");

struct {
    __uint(type, BPF_MAP_TYPE_QUEUE);
    __type(value, __u32);
    __uint(max_entries, 8);
} km_pending SEC(".maps");

struct {
    __uint(type, BPF_MAP_TYPE_BLOOM_FILTER);
    __type(value, __u32);
    __uint(max_entries, 64);
} km_seen SEC(".maps");

struct {
    __uint(type, BPF_MAP_TYPE_DEVMAP);
    __type(key, __u32);
    __type(value, struct bpf_devmap_val);
    __uint(max_entries, 4);
} km_ports SEC(".maps");

struct {
    __uint(type, BPF_MAP_TYPE_CPUMAP);
    __type(key, __u32);
    __type(value, struct bpf_cpumap_val);
    __uint(max_entries, 2);
} km_cpus SEC(".maps");

struct {
    __uint(type, BPF_MAP_TYPE_XSKMAP);
    __type(key, __u32);
    __type(value, __u32);
    __uint(max_entries, 4);
} km_xsks SEC(".maps");

SEC("xdp")
int handler(struct xdp_md *ctx)
{
    return 42;
}

SEC("xdp")
int entry(struct xdp_md *ctx)
{
    __u32 popped = 0, five = 5;
    if (bpf_map_pop_elem(&km_pending, &popped) || popped != 11)
        return 7;
    if (bpf_map_peek_elem(&km_seen, &five))
        return 3;
    bpf_ringbuf_output(&km_events, &popped, sizeof(popped), 0);
    bpf_tail_call(ctx, &km_tails, 0);
    return 1;
}

SEC("xdp")
int steer(struct xdp_md *ctx)
{
    if (ctx->rx_queue_index == 1)
        return bpf_redirect_map(&km_xsks, 0, XDP_PASS);
    if (ctx->rx_queue_index == 2)
        return bpf_redirect_map(&km_cpus, 0, XDP_PASS);
    return bpf_redirect_map(&km_ports, 0, XDP_PASS);
}

SEC("xdp/devmap")
int on_port(struct xdp_md *ctx)
{
    return XDP_PASS;
}

SEC("xdp/cpumap")
int on_cpu(struct xdp_md *ctx)
{
    return XDP_PASS;
}

SEC("sockops")
int track(struct bpf_sock_ops *skops)
{
    struct bpf_sock_tuple key = {};
    struct sock_storage_data *data;
    struct bpf_sock *sk = skops->sk;

    if (!sk)
        return 1;
    data = bpf_sk_storage_get(&km_sock_storage, sk, 0, BPF_SK_STORAGE_GET_F_CREATE);
    if (data)
        data->direction = 1;
    key.ipv4.sport = skops->local_port;
    bpf_sock_hash_update(skops, &km_socket, &key, BPF_NOEXIST);
    return 1;
}

char _license[] SEC("license") = "GPL";
"""

MAPS = ("km_events", "km_socket", "km_tails", "km_sock_storage", "km_pending", "km_seen", "km_ports", "km_cpus",
        "km_xsks")
PROGRAMS = ("handler", "entry", "steer", "on_port", "on_cpu", "track")


def build(workdir: Path) -> Path:
    """Compile the object (clang-14 -g: its .BTF section carries the map declarations)."""
    src, obj = workdir / "typed.bpf.c", workdir / "typed.bpf.o"
    src.write_text(SOURCE)
    subprocess.run(["clang-14", "-O2", "-g", "-target", "bpf", "-I/usr/include/x86_64-linux-gnu", "-c", str(src),
                    "-o", str(obj)], check=True, capture_output=True, text=True)
    return obj


def load_all(obj: Path, prog_dir: Path, maps: dict[str, Path]) -> subprocess.CompletedProcess:
    """`bpftool prog loadall`, reusing each pinned map by name; the programs are pinned in prog_dir by name."""
    cmd = ["bpftool", "prog", "loadall", str(obj), str(prog_dir)]
    for name, path in maps.items():
        cmd += ["map", "name", name, "pinned", str(path)]
    return subprocess.run(cmd, capture_output=True, text=True)
