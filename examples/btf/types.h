/* Types of the example BPF object (maps.bpf.c), shaped like Kmesh's: a union of a v4 and a v6
 * address held in __u32s (network order), a port held in a __u32 as an htons() value, a
 * typedef'd enum, and typedefs of anonymous packed structs. */
#ifndef EXAMPLE_TYPES_H
#define EXAMPLE_TYPES_H

#include <linux/types.h>

struct ip_addr {
    union {
        __u32 ip4;
        __u32 ip6[4];
    };
};

typedef enum { LB_POLICY_RANDOM = 0, LB_POLICY_STRICT = 1, LB_POLICY_FAILOVER = 2 } lb_policy_t;

#pragma pack(1)
typedef struct {
    struct ip_addr addr;
} frontend_key;

typedef struct {
    __u32 backend_uid;
} frontend_value;

typedef struct {
    __u32 backend_uid;
} backend_key;

typedef struct {
    struct ip_addr addr;
    __u32 port;      /* htons(port) */
    __u32 lb_policy; /* an lb_policy_t */
} backend_value;
#pragma pack()

#endif
