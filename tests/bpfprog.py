"""Test helper: compile a small BPF C program with clang-14, load it with bpftool reusing
pinned maps by name, and run it with BPF_PROG_TEST_RUN (through libbpf) to see what the
data path sees."""

from __future__ import annotations

import ctypes
import subprocess
from pathlib import Path

_lib = ctypes.CDLL("libbpf.so.1", use_errno=True)


class _TestRunOpts(ctypes.Structure):
    _fields_ = [
        ("sz", ctypes.c_size_t),
        ("data_in", ctypes.c_void_p),
        ("data_out", ctypes.c_void_p),
        ("data_size_in", ctypes.c_uint32),
        ("data_size_out", ctypes.c_uint32),
        ("ctx_in", ctypes.c_void_p),
        ("ctx_out", ctypes.c_void_p),
        ("ctx_size_in", ctypes.c_uint32),
        ("ctx_size_out", ctypes.c_uint32),
        ("retval", ctypes.c_uint32),
        ("repeat", ctypes.c_int),
        ("duration", ctypes.c_uint32),
        ("flags", ctypes.c_uint32),
        ("cpu", ctypes.c_uint32),
        ("batch_size", ctypes.c_uint32),
    ]


_lib.bpf_prog_test_run_opts.argtypes = [ctypes.c_int, ctypes.POINTER(_TestRunOpts)]
_lib.bpf_prog_test_run_opts.restype = ctypes.c_int
_lib.bpf_obj_get.argtypes = [ctypes.c_char_p]
_lib.bpf_obj_get.restype = ctypes.c_int
_lib.bpf_link_create.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_void_p]
_lib.bpf_link_create.restype = ctypes.c_int
BPF_XDP = 37  # enum bpf_attach_type


def test_run(fd: int, repeat: int = 1) -> int:
    """BPF_PROG_TEST_RUN of a program that takes a packet (XDP, tc) on a 64-byte one; its return value."""
    packet = ctypes.create_string_buffer(64)
    opts = _TestRunOpts(sz=ctypes.sizeof(_TestRunOpts), data_in=ctypes.addressof(packet), data_size_in=64,
                        repeat=repeat)
    rc = _lib.bpf_prog_test_run_opts(fd, ctypes.byref(opts))
    if rc < 0:
        raise OSError(-rc, "BPF_PROG_TEST_RUN")
    return opts.retval


def run_pinned(path: Path) -> int:
    """test_run of the program pinned at path."""
    import os

    fd = _lib.bpf_obj_get(str(path).encode())
    if fd < 0:
        raise OSError(-fd, f"bpf_obj_get {path}")
    try:
        return test_run(fd)
    finally:
        os.close(fd)


class BpfProgram:
    """An XDP program loaded from C source, its maps reused from pins, runnable by test-run."""

    def __init__(self, source: str, workdir: Path, prog_pin: Path, maps: dict[str, Path]):
        src = workdir / "prog.bpf.c"
        obj = workdir / "prog.bpf.o"
        src.write_text(source)
        subprocess.run(["clang-14", "-O2", "-g", "-target", "bpf", "-I/usr/include/x86_64-linux-gnu",
                        "-c", str(src), "-o", str(obj)], check=True, capture_output=True, text=True)
        cmd = ["bpftool", "prog", "load", str(obj), str(prog_pin), "type", "xdp"]
        for name, path in maps.items():
            cmd += ["map", "name", name, "pinned", str(path)]
        res = subprocess.run(cmd, capture_output=True, text=True)
        if res.returncode != 0:
            raise RuntimeError(f"bpftool prog load failed: {res.stderr}")
        self.fd = _lib.bpf_obj_get(str(prog_pin).encode())
        if self.fd < 0:
            raise OSError(-self.fd, "bpf_obj_get of the test program")

    def run(self, repeat: int = 1) -> int:
        """One BPF_PROG_TEST_RUN; returns the program's return value."""
        return test_run(self.fd, repeat)

    def attach_xdp(self, ifindex: int) -> int:
        """Attach the program to a network device through a BPF link; returns the link's fd (close it to detach)."""
        fd = _lib.bpf_link_create(self.fd, ifindex, BPF_XDP, None)
        if fd < 0:
            raise OSError(-fd, "bpf_link_create (xdp)")
        return fd

    def close(self) -> None:
        import os

        os.close(self.fd)
