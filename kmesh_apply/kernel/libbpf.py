"""ctypes binding of the system libbpf (1.x): the only code that calls into libbpf.

Every function has its argtypes/restype set, so a wrong argument is a Python
TypeError, not memory corruption. libbpf 1.x returns -errno from int functions
and NULL (with errno set) from pointer functions; callers in this package turn
both into KernelError.
"""

from __future__ import annotations

import ctypes
from typing import Any
from ctypes import POINTER, c_char_p, c_int, c_size_t, c_uint32, c_uint64, c_void_p

c_u32_p = POINTER(c_uint32)


class MapCreateOpts(ctypes.Structure):
    """struct bpf_map_create_opts (bpf/bpf.h)."""

    _fields_ = [
        ("sz", c_size_t),
        ("btf_fd", c_uint32),
        ("btf_key_type_id", c_uint32),
        ("btf_value_type_id", c_uint32),
        ("btf_vmlinux_value_type_id", c_uint32),
        ("inner_map_fd", c_uint32),
        ("map_flags", c_uint32),
        ("map_extra", c_uint64),
        ("numa_node", c_uint32),
        ("map_ifindex", c_uint32),
    ]


class MapBatchOpts(ctypes.Structure):
    """struct bpf_map_batch_opts (bpf/bpf.h)."""

    _fields_ = [("sz", c_size_t), ("elem_flags", c_uint64), ("flags", c_uint64)]


BPF_OBJ_NAME_LEN = 16


class BpfMapInfo(ctypes.Structure):
    """struct bpf_map_info (linux/bpf.h); the kernel fills as much as we give it room for."""

    _fields_ = [
        ("type", c_uint32),
        ("id", c_uint32),
        ("key_size", c_uint32),
        ("value_size", c_uint32),
        ("max_entries", c_uint32),
        ("map_flags", c_uint32),
        ("name", ctypes.c_char * BPF_OBJ_NAME_LEN),
        ("ifindex", c_uint32),
        ("btf_vmlinux_value_type_id", c_uint32),
        ("netns_dev", c_uint64),
        ("netns_ino", c_uint64),
        ("btf_id", c_uint32),
        ("btf_key_type_id", c_uint32),
        ("btf_value_type_id", c_uint32),
        ("_pad", c_uint32),
        ("map_extra", c_uint64),
    ]


class BpfProgInfo(ctypes.Structure):
    """struct bpf_prog_info (linux/bpf.h) up to ifindex: the kernel fills only as much as we give it
    room for, and fills map_ids (up to nr_map_ids of them) only when we point it at a buffer."""

    _fields_ = [
        ("type", c_uint32),
        ("id", c_uint32),
        ("tag", ctypes.c_uint8 * 8),
        ("jited_prog_len", c_uint32),
        ("xlated_prog_len", c_uint32),
        ("jited_prog_insns", c_uint64),
        ("xlated_prog_insns", c_uint64),
        ("load_time", c_uint64),
        ("created_by_uid", c_uint32),
        ("nr_map_ids", c_uint32),
        ("map_ids", c_uint64),
        ("name", ctypes.c_char * BPF_OBJ_NAME_LEN),
        ("ifindex", c_uint32),
        ("_flags", c_uint32),
    ]


class BpfLinkInfo(ctypes.Structure):
    """struct bpf_link_info (linux/bpf.h): type, IDs, and the per-type union as raw 32-bit words
    (their meaning depends on the link type; see kernel/progs.py)."""

    _fields_ = [("type", c_uint32), ("id", c_uint32), ("prog_id", c_uint32), ("_pad", c_uint32),
                ("words", c_uint32 * 12)]


class BtfType(ctypes.Structure):
    """struct btf_type (linux/btf.h): the common head; kind-specific data follows it."""

    _fields_ = [("name_off", c_uint32), ("info", c_uint32), ("size_or_type", c_uint32)]


class BtfArray(ctypes.Structure):
    _fields_ = [("type", c_uint32), ("index_type", c_uint32), ("nelems", c_uint32)]


class BtfMember(ctypes.Structure):
    _fields_ = [("name_off", c_uint32), ("type", c_uint32), ("offset", c_uint32)]


class BtfEnum(ctypes.Structure):
    _fields_ = [("name_off", c_uint32), ("val", ctypes.c_int32)]


class BtfEnum64(ctypes.Structure):
    _fields_ = [("name_off", c_uint32), ("val_lo32", c_uint32), ("val_hi32", c_uint32)]


class BtfVarSecinfo(ctypes.Structure):
    _fields_ = [("type", c_uint32), ("offset", c_uint32), ("size", c_uint32)]


class ProgLoadOpts(ctypes.Structure):
    """struct bpf_prog_load_opts (bpf/bpf.h, libbpf 1.1), up to the verifier log."""

    _fields_ = [
        ("sz", c_size_t),
        ("attempts", c_int),
        ("expected_attach_type", c_uint32),
        ("prog_btf_fd", c_uint32),
        ("prog_flags", c_uint32),
        ("prog_ifindex", c_uint32),
        ("kern_version", c_uint32),
        ("attach_btf_id", c_uint32),
        ("attach_prog_fd", c_uint32),
        ("attach_btf_obj_fd", c_uint32),
        ("fd_array", c_void_p),
        ("func_info", c_void_p),
        ("func_info_cnt", c_uint32),
        ("func_info_rec_size", c_uint32),
        ("line_info", c_void_p),
        ("line_info_cnt", c_uint32),
        ("line_info_rec_size", c_uint32),
        ("log_level", c_uint32),
        ("log_size", c_uint32),
        ("log_buf", c_void_p),
    ]


class TestRunOpts(ctypes.Structure):
    """struct bpf_test_run_opts (bpf/bpf.h)."""

    _fields_ = [
        ("sz", c_size_t),
        ("data_in", c_void_p),
        ("data_out", c_void_p),
        ("data_size_in", c_uint32),
        ("data_size_out", c_uint32),
        ("ctx_in", c_void_p),
        ("ctx_out", c_void_p),
        ("ctx_size_in", c_uint32),
        ("ctx_size_out", c_uint32),
        ("retval", c_uint32),
        ("repeat", c_int),
        ("duration", c_uint32),
        ("flags", c_uint32),
        ("cpu", c_uint32),
        ("batch_size", c_uint32),
    ]


BTF_P = c_void_p  # struct btf * is opaque to us

lib = ctypes.CDLL("libbpf.so.1", use_errno=True)


def _bind(name: str, restype: Any, *argtypes: Any) -> Any:
    fn = getattr(lib, name)
    fn.restype = restype
    fn.argtypes = list(argtypes)
    return fn


libbpf_set_print = _bind("libbpf_set_print", c_void_p, c_void_p)
libbpf_num_possible_cpus = _bind("libbpf_num_possible_cpus", c_int)
bpf_map_create = _bind("bpf_map_create", c_int, c_int, c_char_p, c_uint32, c_uint32, c_uint32, POINTER(MapCreateOpts))
bpf_obj_pin = _bind("bpf_obj_pin", c_int, c_int, c_char_p)
bpf_obj_get = _bind("bpf_obj_get", c_int, c_char_p)
bpf_map_get_fd_by_id = _bind("bpf_map_get_fd_by_id", c_int, c_uint32)
bpf_prog_get_next_id = _bind("bpf_prog_get_next_id", c_int, c_uint32, c_u32_p)
bpf_prog_get_fd_by_id = _bind("bpf_prog_get_fd_by_id", c_int, c_uint32)
bpf_link_get_next_id = _bind("bpf_link_get_next_id", c_int, c_uint32, c_u32_p)
bpf_link_get_fd_by_id = _bind("bpf_link_get_fd_by_id", c_int, c_uint32)
libbpf_bpf_prog_type_str = _bind("libbpf_bpf_prog_type_str", c_char_p, c_int)
libbpf_bpf_link_type_str = _bind("libbpf_bpf_link_type_str", c_char_p, c_int)
libbpf_bpf_attach_type_str = _bind("libbpf_bpf_attach_type_str", c_char_p, c_int)
bpf_obj_get_info_by_fd = _bind("bpf_obj_get_info_by_fd", c_int, c_int, c_void_p, c_u32_p)
bpf_map_update_elem = _bind("bpf_map_update_elem", c_int, c_int, c_void_p, c_void_p, c_uint64)
bpf_map_lookup_elem = _bind("bpf_map_lookup_elem", c_int, c_int, c_void_p, c_void_p)
bpf_map_delete_elem = _bind("bpf_map_delete_elem", c_int, c_int, c_void_p)
bpf_map_get_next_key = _bind("bpf_map_get_next_key", c_int, c_int, c_void_p, c_void_p)
bpf_map_update_batch = _bind("bpf_map_update_batch", c_int, c_int, c_void_p, c_void_p, c_u32_p, POINTER(MapBatchOpts))
bpf_map_lookup_batch = _bind("bpf_map_lookup_batch", c_int, c_int, c_void_p, c_void_p, c_void_p, c_void_p, c_u32_p, POINTER(MapBatchOpts))
bpf_map_delete_batch = _bind("bpf_map_delete_batch", c_int, c_int, c_void_p, c_u32_p, POINTER(MapBatchOpts))
bpf_prog_load = _bind("bpf_prog_load", c_int, c_int, c_char_p, c_char_p, c_void_p, c_size_t, POINTER(ProgLoadOpts))
bpf_prog_test_run_opts = _bind("bpf_prog_test_run_opts", c_int, c_int, POINTER(TestRunOpts))
btf__new_empty = _bind("btf__new_empty", BTF_P)
btf__free = _bind("btf__free", None, BTF_P)
btf__add_int = _bind("btf__add_int", c_int, BTF_P, c_char_p, c_size_t, c_int)
btf__add_array = _bind("btf__add_array", c_int, BTF_P, c_int, c_int, c_uint32)
btf__add_struct = _bind("btf__add_struct", c_int, BTF_P, c_char_p, c_uint32)
btf__add_field = _bind("btf__add_field", c_int, BTF_P, c_char_p, c_int, c_uint32, c_uint32)
btf__add_typedef = _bind("btf__add_typedef", c_int, BTF_P, c_char_p, c_int)
btf__add_func_proto = _bind("btf__add_func_proto", c_int, BTF_P, c_int)
btf__add_func_param = _bind("btf__add_func_param", c_int, BTF_P, c_char_p, c_int)
btf__add_func = _bind("btf__add_func", c_int, BTF_P, c_char_p, c_int, c_int)
btf__add_union = _bind("btf__add_union", c_int, BTF_P, c_char_p, c_uint32)
btf__add_enum = _bind("btf__add_enum", c_int, BTF_P, c_char_p, c_uint32)
btf__add_enum_value = _bind("btf__add_enum_value", c_int, BTF_P, c_char_p, ctypes.c_int64)
btf__add_enum64 = _bind("btf__add_enum64", c_int, BTF_P, c_char_p, c_uint32, ctypes.c_bool)
btf__add_enum64_value = _bind("btf__add_enum64_value", c_int, BTF_P, c_char_p, c_uint64)
btf__parse = _bind("btf__parse", BTF_P, c_char_p, c_void_p)
btf__new = _bind("btf__new", BTF_P, c_void_p, c_uint32)
btf__raw_data = _bind("btf__raw_data", c_void_p, BTF_P, c_u32_p)
btf__find_by_name_kind = _bind("btf__find_by_name_kind", c_int, BTF_P, c_char_p, c_uint32)
btf__load_into_kernel = _bind("btf__load_into_kernel", c_int, BTF_P)
btf__fd = _bind("btf__fd", c_int, BTF_P)
btf__load_from_kernel_by_id = _bind("btf__load_from_kernel_by_id", BTF_P, c_uint32)
btf__type_by_id = _bind("btf__type_by_id", POINTER(BtfType), BTF_P, c_uint32)
btf__name_by_offset = _bind("btf__name_by_offset", c_char_p, BTF_P, c_uint32)
btf__type_cnt = _bind("btf__type_cnt", c_uint32, BTF_P)

# We report every failure ourselves; libbpf's own stderr chatter would only confuse users.
libbpf_set_print(None)


def batch_opts() -> MapBatchOpts:
    """Default batch options (no flags); sz must be set for libbpf's compatibility check."""
    return MapBatchOpts(sz=ctypes.sizeof(MapBatchOpts))


def last_errno() -> int:
    """errno of the last libbpf call that returned NULL (pointer-returning functions)."""
    return ctypes.get_errno()
