"""examples/kmesh, Kmesh's own workload and maglev maps: applied, then read back byte for byte
through a C program that uses Kmesh's struct definitions (re-typed in kmesh_headers.py and below from
the public headers bpf/include/common.h, bpf/kmesh/workload/include/workload.h and workload_common.h,
bpf/kmesh/ads/include/cluster.h); it plans clean, and so does what `show` prints."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml_rs

from cbytes import c_bytes
from conftest import REPO
from kmesh_headers import WORKLOAD_TYPES
from kmesh_apply import api
from kmesh_apply.config import dump_yaml, load_config
from kmesh_apply.config.codecs import encode
from kmesh_apply.ctype import parse_type
from kmesh_apply.pinroot.reader import read_live

KMESH = REPO / "examples" / "kmesh"
MAGLEV_TABLE_SIZE = 16381
CLUSTER = "outbound|80||web.default.svc.cluster.local"

PROGRAM = r"""
#include <arpa/inet.h>
#include <linux/types.h>
#include <string.h>

/* Kmesh's definitions, as its headers declare them. */
""" + WORKLOAD_TYPES + r"""
#define BPF_DATA_MAX_LEN 192
#define MAGLEV_TABLE_SIZE 16381

typedef enum { LB_POLICY_RANDOM = 0, LB_POLICY_STRICT = 1, LB_POLICY_FAILOVER = 2 } lb_policy_t;

#define ZERO(x) memset(&(x), 0, sizeof(x))

int main(void)
{
    frontend_key fk; frontend_value fv; service_key sk; service_value sv;
    endpoint_key ek; endpoint_value ev; backend_key bk; backend_value bv;
    static __u32 table[MAGLEV_TABLE_SIZE];
    char cluster[BPF_DATA_MAX_LEN];

    ZERO(fk); inet_pton(AF_INET, "10.96.0.10", &fk.addr.ip4); show("frontend_key.0", &fk, sizeof(fk));
    ZERO(fk); inet_pton(AF_INET6, "fd00:10:96::a", fk.addr.ip6); show("frontend_key.1", &fk, sizeof(fk));
    ZERO(fv); fv.upstream_id = 1; show("frontend_value.0", &fv, sizeof(fv));

    ZERO(sk); sk.service_id = 1; show("service_key.0", &sk, sizeof(sk));
    ZERO(sv);
    sv.prio_endpoint_count[0] = 2; sv.lb_policy = LB_POLICY_FAILOVER;
    sv.service_port[0] = htons(80); sv.service_port[1] = htons(443);  /* as Kmesh's control plane writes ports */
    sv.target_port[0] = htons(8080); sv.target_port[1] = htons(8443);
    show("service_value.0", &sv, sizeof(sv));

    ZERO(ek); ek.service_id = 1; ek.backend_index = 2; show("endpoint_key.1", &ek, sizeof(ek));  /* counted from 1 */
    ZERO(ev); ev.backend_uid = 1002; show("endpoint_value.1", &ev, sizeof(ev));

    ZERO(bk); bk.backend_uid = 1002; show("backend_key.1", &bk, sizeof(bk));
    ZERO(bv);
    inet_pton(AF_INET6, "fd00:10:244:2::7", bv.addr.ip6); bv.service_count = 1; bv.service[0] = 1;
    inet_pton(AF_INET, "10.244.9.9", &bv.wp_addr.ip4); bv.waypoint_port = htons(15008);
    show("backend_value.1", &bv, sizeof(bv));

    for (int i = 0; i < MAGLEV_TABLE_SIZE; i++)
        table[i] = (i * 7919u) % 3;
    show("maglev_table", table, sizeof(table));
    memset(cluster, 0, sizeof(cluster));
    strcpy(cluster, "outbound|80||web.default.svc.cluster.local");
    show("cluster_key", cluster, sizeof(cluster));
    return 0;
}
"""


@pytest.fixture(scope="module")
def kmesh_bytes(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    return c_bytes(tmp_path_factory.mktemp("kmesh_c"), PROGRAM)


def _with_table(table: list[int]) -> dict:
    """The example, with a filled maglev table (16381 numbers do not belong in an example file)."""
    doc: dict = {}
    for f in sorted(KMESH.glob("*.yaml")):
        part = yaml_rs.loads(f.read_text())
        for section in ("inner_maps", "outer_maps"):
            doc.setdefault(section, {}).update(part.get(section, {}))
    doc["inner_maps"]["maglev-web"]["entries"] = {0: table}
    return doc


def test_kmesh_maps_read_back_through_kmesh_structs(kmesh_bytes: dict[str, str], pin_root: Path) -> None:
    table = [(i * 7919) % 3 for i in range(MAGLEV_TABLE_SIZE)]
    cfg = load_config(inline=_with_table(table))
    api.converge(cfg, str(pin_root))
    live = read_live(str(pin_root))

    def entry(map_name: str, key: str) -> str:
        return live.maps[map_name].entries[bytes.fromhex(kmesh_bytes[key])].hex()

    assert entry("map_of_frontend", "frontend_key.0") == kmesh_bytes["frontend_value.0"]
    assert bytes.fromhex(kmesh_bytes["frontend_key.1"]) in live.maps["map_of_frontend"].entries
    assert entry("map_of_service", "service_key.0") == kmesh_bytes["service_value.0"]
    assert entry("map_of_endpoint", "endpoint_key.1") == kmesh_bytes["endpoint_value.1"]
    assert entry("map_of_backend", "backend_key.1") == kmesh_bytes["backend_value.1"]
    assert live.maps["maglev-web"].entries[bytes(4)].hex() == kmesh_bytes["maglev_table"]
    slots = live.maps["outer_of_maglev"].slots
    assert slots == {bytes.fromhex(kmesh_bytes["cluster_key"]): live.maps["maglev-web"].id}
    for name in ("map_of_frontend", "map_of_service", "map_of_endpoint", "map_of_backend"):
        assert live.maps[name].flags == ("no_prealloc",)

    assert not api.plan(cfg, str(pin_root)).has_changes
    shown = dump_yaml(api.show(str(pin_root)))
    assert not api.plan(load_config(inline=shown), str(pin_root)).has_changes
    assert "LB_POLICY_FAILOVER" in shown and "fd00:10:244:2::7" in shown
    assert api.show(str(pin_root))["outer_maps"]["outer_of_maglev"]["entries"] == {CLUSTER: "maglev-web"}

    table[100] = 2 if table[100] != 2 else 1
    changed = load_config(inline=_with_table(table))
    plan = api.plan(changed, str(pin_root))
    (change,) = plan.changes
    assert change.swap  # an array value is copied in place by the kernel: swapped, even for one entry
    assert "1 of 16381 elements changed: [100]" in api.render_text(plan)
    assert encode(parse_type("u32[16381]"), table) == change.changed[bytes(4)][1]
    api.converge(None, str(pin_root))  # destroy: the outer map's records go with it, and the empty pin root
    assert not pin_root.exists()


def test_endpoints_are_numbered_as_kmesh_picks_them() -> None:
    """Kmesh picks an endpoint as `rand % prio_endpoint_count[prio] + 1` (service.h): for each service
    and prio, the example's backend_index values are exactly 1..count (an index 0 is never looked up)."""
    doc = yaml_rs.loads((KMESH / "workload.yaml").read_text())["inner_maps"]
    counts = {e["key"]["service_id"]: e["value"]["prio_endpoint_count"] for e in doc["map_of_service"]["entries"]}
    seen: dict[tuple[int, int], list[int]] = {}
    for e in doc["map_of_endpoint"]["entries"]:
        k = e["key"]
        seen.setdefault((k["service_id"], k["prio"]), []).append(k["backend_index"])
    for (service, prio), indexes in seen.items():
        assert sorted(indexes) == list(range(1, counts[service][prio] + 1)), (service, prio, indexes)
