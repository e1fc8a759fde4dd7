// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/* A small BPF object to try kmesh-apply's BTF workflow on (docs/types.md): two maps, one
 * declared with its key and value types (so the object's BTF has them), one declared by sizes
 * only, as Kmesh declares its maps (the types then come from types.h). Build it with
 *
 *     clang -O2 -g -target bpf -c maps.bpf.c -o maps.bpf.o
 *
 * (Debian keeps <asm/types.h> in /usr/include/<triplet>: add -I/usr/include/$(uname -m)-linux-gnu.)
 */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

#include "types.h"

struct {
    __uint(type, BPF_MAP_TYPE_HASH);
    __type(key, frontend_key);
    __type(value, frontend_value);
    __uint(max_entries, 1024);
    __uint(map_flags, BPF_F_NO_PREALLOC);
} km_frontend SEC(".maps");

struct {
    __uint(type, BPF_MAP_TYPE_HASH);
    __uint(key_size, sizeof(backend_key));
    __uint(value_size, sizeof(backend_value));
    __uint(max_entries, 1024);
    __uint(map_flags, BPF_F_NO_PREALLOC);
} km_backend SEC(".maps");

/* Follows a frontend to its backend, so the maps are the program's own. */
SEC("xdp")
int lookup(struct xdp_md *ctx)
{
    frontend_key fk = {};
    frontend_value *fv = bpf_map_lookup_elem(&km_frontend, &fk);
    if (fv) {
        backend_key bk = {.backend_uid = fv->backend_uid};
        if (bpf_map_lookup_elem(&km_backend, &bk))
            return XDP_PASS;
    }
    return XDP_PASS;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
