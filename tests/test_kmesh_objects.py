"""Kmesh's real workload objects (kmesh-net/kmesh bpf/kmesh/workload: cgroup_sock, sockops, sendmsg,
cgroup_skb, built with Kmesh's own build scripts): every map they declare taken by `object_map:`
(ringbufs, an sk_storage, prog_arrays, a sockhash and hash maps), applied and planned clean; the
real programs load reusing every pinned map; and a connect() through the real connect4 program,
attached to a cgroup, is redirected by the entries the config wrote.

The objects are not in this repository: build them by hand with Kmesh's own build (see docs/map-types.md) and point KMESH_OBJECTS at the directory holding them. Without it the test is left out of the run (conftest).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
import yaml_rs
from conftest import REPO, run_cli

KMESH_OBJECTS = os.environ.get("KMESH_OBJECTS")
OBJECTS = ("KmeshCgroupSockWorkload.o", "KmeshSockopsWorkload.o", "KmeshSendmsg.o", "KmeshCgroupSkb.o")
CGROUP2 = Path("/sys/fs/cgroup/unified") if Path("/sys/fs/cgroup/unified/cgroup.procs").exists() else Path("/sys/fs/cgroup")
SO_NETNS_COOKIE = 71
SERVICE_IP = "10.96.0.10"

pytestmark = pytest.mark.kmesh_objects("KMESH_OBJECTS")  # left out of the run without it (see conftest)


def maps_of(obj: Path) -> list[str]:
    """The maps an object declares in its .maps section, as bpftool reads its BTF."""
    dump = json.loads(subprocess.run(["bpftool", "-j", "btf", "dump", "file", str(obj)], check=True,
                                     capture_output=True, text=True).stdout)
    types = {t["id"]: t for t in dump["types"]}
    sec = next(t for t in dump["types"] if t["kind"] == "DATASEC" and t["name"] == ".maps")
    return [types[v["type_id"]]["name"] for v in sec["vars"]]


def netns_cookie() -> int:
    with socket.socket() as s:
        return int.from_bytes(s.getsockopt(socket.SOL_SOCKET, SO_NETNS_COOKIE, 8), "little")


def config_text(objects: list[Path], maps: list[str], port: int) -> str:
    """Every map by object_map; Kmesh's frontend/service/endpoint/backend maps (declared by size only)
    typed as examples/kmesh/workload.yaml types them (formats included: addresses and htons() ports
    written as such), with the entries that send SERVICE_IP:80 to
    127.0.0.1:port; and this network namespace marked as managed by Kmesh (km_manage)."""
    example = yaml_rs.loads((REPO / "examples" / "kmesh" / "workload.yaml").read_text())
    typed = {**(example.get("inner_maps") or {}), **(example.get("maps") or {})}
    entries = {
        "km_manage": [{"key": {"netns_cookie": netns_cookie()}, "value": 0}],
        "km_frontend": [{"key": {"addr": {"ip4": SERVICE_IP}}, "value": {"upstream_id": 1}}],
        "km_service": [{"key": {"service_id": 1}, "value": {
            "prio_endpoint_count": [1, 0, 0, 0, 0, 0, 0], "lb_policy": "LB_POLICY_RANDOM",
            "service_port": [80] + [0] * 9, "target_port": [port] + [0] * 9,
            "wp_addr": {"ip4": "0.0.0.0"}, "waypoint_port": 0}}],
        "km_endpoint": [{"key": {"service_id": 1, "prio": 0, "backend_index": 1}, "value": {"backend_uid": 1001}}],
        "km_backend": [{"key": {"backend_uid": 1001}, "value": {
            "addr": {"ip4": "127.0.0.1"}, "service_count": 1, "service": [1] + [0] * 9,
            "wp_addr": {"ip4": "0.0.0.0"}, "waypoint_port": 0}}],
    }
    doc = {"btf": [str(o) for o in objects], "maps": {}}
    for name in maps:
        m = {"object_map": name}
        example = "map_of_" + name.removeprefix("km_")
        if name in entries:
            if example in typed:
                m.update({k: typed[example][k] for k in ("key", "value", "formats") if k in typed[example]})
            m["entries"] = entries[name]
        doc["maps"][name] = m
    return json.dumps(doc)


@pytest.fixture
def cgroup():
    path = CGROUP2 / f"kmesh-test-{uuid.uuid4().hex[:12]}"
    path.mkdir()
    try:
        yield path
    finally:
        shown = subprocess.run(["bpftool", "-j", "cgroup", "show", str(path)], capture_output=True, text=True).stdout
        for prog in json.loads(shown) if shown.strip() else []:
            subprocess.run(["bpftool", "cgroup", "detach", str(path), prog["attach_type"], "id", str(prog["id"])])
        path.rmdir()


def test_kmesh_workload_objects_apply_load_and_redirect_a_connect(pin_root: Path, tmp_path: Path,
                                                                   bpf_scratch: Path, cgroup: Path, bpftool):
    objects = [Path(KMESH_OBJECTS) / o for o in OBJECTS]  # type: ignore[arg-type]
    per_object = {o: maps_of(o) for o in objects}
    maps = sorted({m for names in per_object.values() for m in names})
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(10)
    port = listener.getsockname()[1]
    config = tmp_path / "kmesh.json"
    config.write_text(config_text(objects, maps, port))

    def kmesh_apply(*argv: str, check: int = 0) -> subprocess.CompletedProcess:
        res = run_cli("kmesh-apply", *argv, "--pin-root", str(pin_root))
        assert res.returncode == check, res.stdout + res.stderr
        return res

    kmesh_apply("apply", "--auto-approve", str(config))
    kmesh_apply("plan", "--detailed-exitcode", str(config))
    live = {m: bpftool("map", "show", "pinned", str(pin_root / m)) for m in maps}
    types = {m: info["type"] for m, info in live.items()}
    assert {"ringbuf", "sk_storage", "prog_array", "sockhash", "hash"} <= set(types.values()), types

    pinned_ids = {info["id"] for info in live.values()}
    for obj, names in per_object.items():
        progs = bpf_scratch / obj.stem
        cmd = ["bpftool", "prog", "loadall", str(obj), str(progs)]
        for name in names:
            cmd += ["map", "name", name, "pinned", str(pin_root / name)]
        res = subprocess.run(cmd, capture_output=True, text=True)
        assert res.returncode == 0, f"{obj.name}: {res.stderr[-3000:]}"
        for prog in progs.iterdir():
            used = {i for i in bpftool("prog", "show", "pinned", str(prog)).get("map_ids", [])
                    if "." not in bpftool("map", "show", "id", str(i))["name"]}  # not libbpf's .rodata, .bss
            assert used <= pinned_ids, f"{obj.name} {prog.name} uses maps that are not the pinned ones"
    kmesh_apply("plan", "--detailed-exitcode", str(config))  # loading them changed nothing we manage

    connect4 = bpf_scratch / "KmeshCgroupSockWorkload" / "cgroup_connect4_prog"
    subprocess.run(["bpftool", "cgroup", "attach", str(cgroup), "connect4", "pinned", str(connect4)], check=True)
    client = subprocess.run(
        [sys.executable, "-c", f"import socket; socket.create_connection(('{SERVICE_IP}', 80), timeout=5).sendall(b'kmesh')"],
        preexec_fn=lambda: (cgroup / "cgroup.procs").write_text(str(os.getpid())), capture_output=True, text=True,
        timeout=30)
    assert client.returncode == 0, client.stderr
    conn, _ = listener.accept()
    with conn, listener:
        assert conn.recv(16) == b"kmesh", f"{SERVICE_IP}:80 was redirected to 127.0.0.1:{port} by Kmesh's connect4"
