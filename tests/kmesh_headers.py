"""Kmesh's workload map key and value types, re-typed from its public headers (bpf/include/common.h,
bpf/kmesh/workload/include/workload.h and workload_common.h) at the commits LAYOUT names, today's by
default: one C text for the tests that compile them, in a BPF data plane (test_upgrade.py) and in a
user-space reader of the bytes a config writes (test_kmesh_example.py)."""

WORKLOAD_TYPES = r"""
#define MAX_PORT_COUNT 10
#define MAX_SERVICE_COUNT 10
#define PRIO_COUNT 7
#ifndef LAYOUT
#define LAYOUT 4
#endif

/* LAYOUT 1: Kmesh 20cb2d8b (one endpoint count; endpoint keys without prio); 2: 63920e72 (prio added,
 * random balancing keeps every endpoint at prio 6); 3: 9eab2f91 (lb_strict_prio, locality failover
 * from prio 0); 4: today (lb_strict_prio gone, every map renamed km_*). */

struct ip_addr { union { __u32 ip4; __u32 ip6[4]; }; };

#pragma pack(1)
typedef struct { struct ip_addr addr; } frontend_key;
typedef struct { __u32 upstream_id; } frontend_value;
typedef struct { __u32 service_id; } service_key;
typedef struct {
#if LAYOUT == 1
    __u32 endpoint_count;
#else
    __u32 prio_endpoint_count[PRIO_COUNT];
#endif
    __u32 lb_policy;
#if LAYOUT == 2
    __u32 lb_strict_index;
#elif LAYOUT == 3
    __u32 lb_strict_prio;
#endif
    __u32 service_port[MAX_PORT_COUNT];
    __u32 target_port[MAX_PORT_COUNT];
    struct ip_addr wp_addr;
    __u32 waypoint_port;
} service_value;
typedef struct {
    __u32 service_id;
#if LAYOUT >= 2
    __u32 prio;
#endif
    __u32 backend_index;
} endpoint_key;
typedef struct { __u32 backend_uid; } endpoint_value;
typedef struct { __u32 backend_uid; } backend_key;
typedef struct {
    struct ip_addr addr;
    __u32 service_count;
    __u32 service[MAX_SERVICE_COUNT];
    struct ip_addr wp_addr;
    __u32 waypoint_port;
} backend_value;
#pragma pack()
"""
