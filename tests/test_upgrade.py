"""Upgrading a data plane without losing its data (issue 23): an OLD data plane serves a connect()
redirect from maps a daemon filled (foreign to kmesh-apply, declared with key_size/value_size so
they carry no BTF, as Kmesh declares them); a configuration naming the NEW objects' maps adopts and
migrates them (map renames and layout changes); the NEW programs load reusing the migrated pins;
the same connect() reaches the same backend, and no entry was written after the upgrade.

Always on: our own small connect4 program in the shape of Kmesh's workload path (MESH), with the
map names and key/value layouts re-typed from Kmesh's public headers at the commits LAYOUT names.
With KMESH_UPGRADE_OBJECTS=<dir> (see docs/upgrading.md), the same test runs Kmesh's real
objects, built by hand from its source: <dir>/old and <dir>/new each hold cgroup_sock.o (the
workload object) and types.o (a BPF object whose BTF names the workload map types).
"""

from __future__ import annotations

import json
import os
import socket
import struct
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from conftest import run_cli
from dataplane import backends, bpftool_update, cgroup, compile_bpf, load_object, remove_tree
from kmesh_headers import WORKLOAD_TYPES

MESH = r"""
#include <linux/bpf.h>
#include <linux/in.h>
#include <bpf/bpf_helpers.h>

""" + WORKLOAD_TYPES + r"""
#define CONTROL_CMD_IP 2
#define ENABLE_KMESH_PORT 0x3a1

#if LAYOUT >= 4
#define FRONTEND km_frontend
#define SERVICE km_service
#define ENDPOINT km_endpoint
#define BACKEND km_backend
#define MANAGE km_manage
#define AUTH km_auth_res
#else
#define FRONTEND kmesh_frontend
#define SERVICE kmesh_service
#define ENDPOINT kmesh_endpoint
#define BACKEND kmesh_backend
#define MANAGE kmesh_manage
#define AUTH map_of_auth
#endif

struct manager_key { union { __u64 netns_cookie; struct ip_addr addr; }; };
struct sock_tuple4 { __u32 saddr, daddr; __u16 sport, dport; };

#ifdef TYPES  /* an object whose BTF names the map types, for migrate.btf and btf: */
frontend_key t1; frontend_value t2; service_key t3; service_value t4;
endpoint_key t5; endpoint_value t6; backend_key t7; backend_value t8;
#endif

#define HASH_MAP(name, k, v) struct { __uint(type, BPF_MAP_TYPE_HASH); __uint(key_size, sizeof(k)); \
    __uint(value_size, sizeof(v)); __uint(max_entries, 1024); __uint(map_flags, BPF_F_NO_PREALLOC); } name SEC(".maps")
HASH_MAP(FRONTEND, frontend_key, frontend_value);
HASH_MAP(SERVICE, service_key, service_value);
HASH_MAP(ENDPOINT, endpoint_key, endpoint_value);
HASH_MAP(BACKEND, backend_key, backend_value);
struct { __uint(type, BPF_MAP_TYPE_HASH); __type(key, struct manager_key); __type(value, __u32);
         __uint(max_entries, 64); __uint(map_flags, BPF_F_NO_PREALLOC); } MANAGE SEC(".maps");
struct { __uint(type, BPF_MAP_TYPE_HASH); __type(key, struct sock_tuple4); __type(value, __u32);
         __uint(max_entries, 64); __uint(map_flags, BPF_F_NO_PREALLOC); } AUTH SEC(".maps");

SEC("cgroup/connect4")
int connect4(struct bpf_sock_addr *ctx)
{
    struct manager_key mk = {};
    mk.netns_cookie = bpf_get_netns_cookie(ctx);
    if (ctx->user_ip4 == __builtin_bswap32(CONTROL_CMD_IP) && ctx->user_port == __builtin_bswap16(ENABLE_KMESH_PORT)) {
        __u32 zero = 0;
        bpf_map_update_elem(&MANAGE, &mk, &zero, BPF_ANY);  /* what Kmesh's CNI does to enable a netns */
        return 1;
    }
    if (ctx->protocol != IPPROTO_TCP || !bpf_map_lookup_elem(&MANAGE, &mk))
        return 1;
    frontend_key fk = {};
    fk.addr.ip4 = ctx->user_ip4;
    frontend_value *fv = bpf_map_lookup_elem(&FRONTEND, &fk);
    if (!fv)
        return 1;
    service_key sk = {.service_id = fv->upstream_id};
    service_value *sv = bpf_map_lookup_elem(&SERVICE, &sk);
    if (!sv)
        return 1;
    endpoint_key ek = {};
    ek.service_id = sk.service_id;
    __u32 count = 0;
#if LAYOUT == 1
    count = sv->endpoint_count;
#elif LAYOUT == 2
    ek.prio = 6;
    count = sv->prio_endpoint_count[6];
#else
    for (int i = 0; i < PRIO_COUNT; i++) {
        if (sv->prio_endpoint_count[i]) {
            ek.prio = i;
            count = sv->prio_endpoint_count[i];
            break;
        }
    }
#endif
    if (!count)
        return 1;
    ek.backend_index = bpf_get_prandom_u32() % count + 1;
    endpoint_value *ev = bpf_map_lookup_elem(&ENDPOINT, &ek);
    if (!ev)
        return 1;
    backend_key bk = {.backend_uid = ev->backend_uid};
    backend_value *bv = bpf_map_lookup_elem(&BACKEND, &bk);
    if (!bv)
        return 1;
    for (int j = 0; j < MAX_PORT_COUNT; j++) {
        if (sv->service_port[j] == ctx->user_port) {
            ctx->user_ip4 = bv->addr.ip4;
            ctx->user_port = sv->target_port[j];
            break;
        }
    }
    return 1;
}

char _license[] SEC("license") = "Dual BSD/GPL";
"""

SERVICES = {"A": ("10.254.0.1", 1, 701), "B": ("10.254.0.2", 2, 702)}  # backend -> (service IP, service id, backend uid)
OLD_NAMES = ("kmesh_frontend", "kmesh_service", "kmesh_endpoint", "kmesh_backend", "kmesh_manage", "map_of_auth")
NEW_NAMES = ("km_frontend", "km_service", "km_endpoint", "km_backend", "km_manage", "km_auth_res")
FAILOVER = 2  # lb_policy_t LB_POLICY_FAILOVER (workload_common.h); LB_POLICY_RANDOM is 0


def _port(p: int) -> bytes:
    """A port as Kmesh's service_value holds it: network order in a u32."""
    return struct.pack("<I", socket.htons(p))


def fill(root: Path, layout: int, names: tuple[str, ...], ports: dict[str, int]) -> None:
    """The entries Kmesh's daemon writes for a service at SERVICES[name] (port 80) with one endpoint, the
    backend listening at 127.0.0.1:ports[name]; packed by hand, per the layout's headers, written by bpftool."""
    frontend, service, endpoint, backend = (root / n for n in names[:4])
    for name, (ip, svc, uid) in SERVICES.items():
        bpftool_update(frontend, socket.inet_aton(ip) + bytes(12), struct.pack("<I", svc))
        ports_part = _port(80) + bytes(36) + _port(ports[name]) + bytes(36) + bytes(16) + struct.pack("<I", 0)
        if layout == 1:  # endpoint_count; lb_policy random
            value = struct.pack("<II", 1, 0) + ports_part
            key = struct.pack("<II", svc, 1)
        else:  # prio_endpoint_count[7]: the endpoint at prio 6 (random, layout 2) or 0 (failover, layout 3)
            prio = 6 if layout == 2 else 0
            counts = [0] * 7
            counts[prio] = 1
            policy = 0 if layout == 2 else FAILOVER
            value = struct.pack("<7I", *counts) + struct.pack("<II", policy, 0) + ports_part
            key = struct.pack("<III", svc, prio, 1)
        bpftool_update(service, struct.pack("<I", svc), value)
        bpftool_update(endpoint, key, struct.pack("<I", uid))
        backend_value = socket.inet_aton("127.0.0.1") + bytes(12) + struct.pack("<II", 1, svc) + bytes(36) + bytes(20)
        bpftool_update(backend, struct.pack("<I", uid), backend_value)
    auth = root / names[5]  # a struct bpf_sock_tuple: its ipv4 member first, the rest of the union zero
    size = json.loads(subprocess.run(["bpftool", "-j", "map", "show", "pinned", str(auth)], check=True,
                                     capture_output=True, text=True).stdout)["bytes_key"]
    tuple4 = socket.inet_aton("10.0.0.9") + socket.inet_aton("10.254.0.1") + struct.pack("<HH", 4242, 80)
    bpftool_update(auth, tuple4.ljust(size, b"\0"), struct.pack("<I", 1))


def upgrade_config(path: Path, new_obj: Path, new_types: Path, old_types: Path, layouts: tuple[int, int]) -> Path:
    """The configuration of the NEW data plane's maps: adopted, and migrated from the OLD ones."""
    old_names, new_names = (OLD_NAMES, NEW_NAMES) if layouts == (3, 4) else (OLD_NAMES, OLD_NAMES)
    typed = {"frontend": ("frontend_key", "frontend_value"), "service": ("service_key", "service_value"),
             "endpoint": ("endpoint_key", "endpoint_value"), "backend": ("backend_key", "backend_value"),
             "manage": None, "auth": None}
    lines = [f"btf: [{new_obj}, {new_types}]", "maps:"]
    for (role, types), old, new in zip(typed.items(), old_names, new_names):
        declared = f"object_map: {new}, manage_entries: none, adopt: true"
        if types is not None:
            declared += f", key: {types[0]}, value: {types[1]}"
        migrate = [f"from: {old}"] if old != new else []
        if role in ("service", "endpoint"):  # their layouts change: the old types, which the maps do not carry
            migrate += [f"btf: [{old_types}]", f"key: {types[0]}", f"value: {types[1]}"]  # type: ignore[index]
        if layouts == (1, 2) and role == "service":
            migrate.append('renamed: {"prio_endpoint_count[6]": endpoint_count}')
        if layouts == (1, 2) and role == "endpoint":
            migrate.append("defaults: {prio: 6}")  # 63920e72: random balancing keeps every endpoint at prio 6
        if migrate:
            declared += f", migrate: {{{', '.join(migrate)}}}"
        lines.append(f"  {new}: {{{declared}}}")
    path.write_text("\n".join(lines) + "\n")
    return path


@dataclass
class DataPlane:
    """Objects of one version: the workload object, an object naming its map types, its connect4 program."""

    obj: Path
    types: Path
    program: str


def _ours(tmp: Path, layout: int) -> DataPlane:
    return DataPlane(compile_bpf(MESH, tmp / f"mesh-v{layout}.o", f"LAYOUT={layout}"),
                     compile_bpf(MESH, tmp / f"types-v{layout}.o", f"LAYOUT={layout}", "TYPES"), "connect4")


def _kmesh(version: str) -> DataPlane:
    base = Path(os.environ["KMESH_UPGRADE_OBJECTS"]) / version
    return DataPlane(base / "cgroup_sock.o", base / "types.o", "cgroup_connect4_prog")


def _prepare_kmesh_old(root: Path) -> None:
    """Kmesh's daemon creates its map-in-map pair itself (libbpf cannot from the object: no template there)."""
    root.mkdir(exist_ok=True)
    subprocess.run(["bpftool", "map", "create", str(root / "inner_map"), "type", "array", "key", "4", "value", "1300",
                    "entries", "1", "name", "inner_map"], check=True)
    subprocess.run(["bpftool", "map", "create", str(root / "outer_map"), "type", "array_of_maps", "key", "4", "value",
                    "4", "entries", "8192", "name", "outer_map", "inner_map", "pinned", str(root / "inner_map")],
                   check=True)


def _wait_until_clean(cfg: Path, pin_root: Path) -> subprocess.CompletedProcess:
    for _ in range(100):  # the old program goes after an RCU grace period
        out = run_cli("kmesh-apply", "plan", str(cfg), "--pin-root", str(pin_root), "--detailed-exitcode")
        if out.returncode != 2:
            return out
        time.sleep(0.1)
    return out


CASES = [
    pytest.param("ours", (3, 4), id="ours-9eab2f91-to-today"),
    pytest.param("ours", (1, 2), id="ours-20cb2d8b-to-63920e72"),
    pytest.param("kmesh", (3, 4), id="kmesh-9eab2f91-to-today",
                 marks=pytest.mark.kmesh_objects("KMESH_UPGRADE_OBJECTS")),  # see conftest
]


@pytest.mark.parametrize("objects, layouts", CASES)
def test_an_upgrade_keeps_the_data_plane_serving_without_a_write(objects, layouts, pin_root, tmp_path, bpf_scratch,
                                                                  bpftool):
    old, new = (_ours(tmp_path, layouts[0]), _ours(tmp_path, layouts[1])) if objects == "ours" else \
        (_kmesh("old"), _kmesh("new"))
    progs = {v: bpf_scratch / v for v in ("old", "new")}
    for d in progs.values():
        d.mkdir()
    if objects == "kmesh":
        _prepare_kmesh_old(pin_root)
    try:
        with backends("A", "B") as ports, cgroup() as group:
            old_prog = load_object(old.obj, pin_root, progs["old"], [old.program])[old.program]
            fill(pin_root, layouts[0], OLD_NAMES, ports)
            group.attach(old_prog)
            served = {name: group.connect(ip, 80, enable=name == "A") for name, (ip, _, _) in SERVICES.items()}
            assert served == {n: ("127.0.0.1", ports[n], n.encode()) for n in SERVICES}

            cfg = upgrade_config(tmp_path / "upgrade.yaml", new.obj, new.types, old.types, layouts)
            planned = run_cli("kmesh-apply", "plan", str(cfg), "--pin-root", str(pin_root))
            assert planned.returncode == 0, planned.stderr
            service, endpoint = ("km_service", "km_endpoint") if layouts == (3, 4) else ("kmesh_service", "kmesh_endpoint")
            if layouts == (3, 4):
                assert ('~ map "km_service" will be migrated: 2 entries from "kmesh_service" '
                        "(value: field lb_strict_prio removed, 136 -> 132 bytes)") in planned.stdout, planned.stdout
                assert "  migrated   km_service (2 entries, from kmesh_service)\n" in planned.stdout
                assert ("  renamed    km_frontend (from kmesh_frontend), km_endpoint (from kmesh_endpoint), km_backend "
                        "(from kmesh_backend), km_manage (from kmesh_manage), km_auth_res (from map_of_auth)\n"
                        ) in planned.stdout, planned.stdout
            else:
                assert ('~ map "kmesh_endpoint" will be migrated: 2 entries (key: field prio added (= 6), 8 -> 12 bytes)'
                        in planned.stdout), planned.stdout
                assert ('~ map "kmesh_service" will be migrated: 2 entries (value: field prio_endpoint_count added, '
                        "field endpoint_count renamed to prio_endpoint_count[6], field lb_strict_index added, "
                        "108 -> 136 bytes)") in planned.stdout, planned.stdout
            assert "held by program" in planned.stdout  # the old program holds the maps a migration replaces
            applied = run_cli("kmesh-apply", "apply", str(cfg), "--pin-root", str(pin_root), "--auto-approve",
                              "--allow-replace-in-use")
            assert applied.returncode == 0, applied.stderr

            new_prog = load_object(new.obj, pin_root, progs["new"], [new.program])[new.program]  # reuses the pins
            group.replace(old_prog, new_prog)
            again = {name: group.connect(ip, 80) for name, (ip, _, _) in SERVICES.items()}
            assert again == served
            held = bpftool("prog", "show", "pinned", str(new_prog))["map_ids"]
            assert {bpftool("map", "show", "pinned", str(pin_root / n))["id"] for n in (service, endpoint)} <= set(held)

        os.unlink(old_prog)  # the old programs unloaded: the pin root is what the configuration says
        assert _wait_until_clean(cfg, pin_root).returncode == 0
    finally:
        for d in progs.values():
            remove_tree(d)
