"""The kernel layer: the only code that talks to libbpf. It knows maps, not YAML."""

from kmesh_apply.kernel.maps import (
    MAP_FLAGS,
    MAP_TYPES,
    BatchError,
    Map,
    MapInfo,
    flag_bits,
    flag_names,
    incompatibility,
    possible_cpus,
)

__all__ = [
    "MAP_FLAGS", "MAP_TYPES", "BatchError", "Map", "MapInfo", "flag_bits", "flag_names",
    "incompatibility", "possible_cpus",
]
