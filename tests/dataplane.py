"""Test helper: a data plane made of BPF objects, as a daemon such as Kmesh's runs one.

Objects are loaded with libbpf (through ctypes) the way libbpf loaders do with pinned maps: every
map of the object is given a pin path under the pin root, so a map already pinned there is
reused (libbpf checks that it is compatible) and any other is created and pinned. Programs are
pinned outside the pin root and attached to a cgroup of the test's own; `connect` runs a child
process in that cgroup and reports where its connect() really went.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import socket
import subprocess
import sys
import threading
import uuid
from pathlib import Path
from typing import Iterator

_lib = ctypes.CDLL("libbpf.so.1", use_errno=True)
_P = ctypes.c_void_p
for _name, _res, _args in [
    ("bpf_object__open_file", _P, [ctypes.c_char_p, _P]),
    ("bpf_object__next_program", _P, [_P, _P]),
    ("bpf_object__next_map", _P, [_P, _P]),
    ("bpf_program__name", ctypes.c_char_p, [_P]),
    ("bpf_program__set_autoload", ctypes.c_int, [_P, ctypes.c_bool]),
    ("bpf_program__pin", ctypes.c_int, [_P, ctypes.c_char_p]),
    ("bpf_map__name", ctypes.c_char_p, [_P]),
    ("bpf_map__set_pin_path", ctypes.c_int, [_P, ctypes.c_char_p]),
    ("bpf_map__is_internal", ctypes.c_bool, [_P]),
    ("bpf_object__load", ctypes.c_int, [_P]),
    ("bpf_object__close", None, [_P]),
]:
    getattr(_lib, _name).restype = _res
    getattr(_lib, _name).argtypes = _args


def compile_bpf(source: str, out: Path, *defines: str) -> Path:
    """Compile BPF C source with clang-14 (-g: the object carries BTF)."""
    src = out.with_suffix(".c")
    src.write_text(source)
    subprocess.run(["clang-14", "-O2", "-g", "-target", "bpf", "-I/usr/include/x86_64-linux-gnu",
                    *[f"-D{d}" for d in defines], "-c", str(src), "-o", str(out)],
                   check=True, capture_output=True, text=True)
    return out


def load_object(obj: Path, pin_root: Path, prog_dir: Path, programs: list[str]) -> dict[str, Path]:
    """Load the named programs of `obj`, its maps pinned by name in `pin_root` (reused when already
    pinned there); the programs are pinned in `prog_dir`. Returns program name -> pin."""
    o = _lib.bpf_object__open_file(str(obj).encode(), None)
    if not o:
        raise OSError(ctypes.get_errno(), f"bpf_object__open_file {obj}")
    try:
        chosen = {}
        p = None
        while p := _lib.bpf_object__next_program(o, p):
            name = _lib.bpf_program__name(p).decode()
            _lib.bpf_program__set_autoload(p, name in programs)
            if name in programs:
                chosen[name] = p
        missing = set(programs) - set(chosen)
        if missing:
            raise ValueError(f"{obj} has no program {sorted(missing)}")
        m = None
        while m := _lib.bpf_object__next_map(o, m):
            if not _lib.bpf_map__is_internal(m):
                _lib.bpf_map__set_pin_path(m, str(pin_root / _lib.bpf_map__name(m).decode()).encode())
        pin_root.mkdir(exist_ok=True)
        rc = _lib.bpf_object__load(o)
        if rc:
            raise OSError(-rc, f"libbpf could not load {obj} (run with LIBBPF_LOG_LEVEL=debug to see why)")
        pins = {}
        for name, prog in chosen.items():
            pins[name] = prog_dir / name
            rc = _lib.bpf_program__pin(prog, str(pins[name]).encode())
            if rc:
                raise OSError(-rc, f"pinning program {name}")
        return pins
    finally:
        _lib.bpf_object__close(o)  # the pins keep the programs and maps


def _cgroup2_mount() -> Path:
    for line in Path("/proc/mounts").read_text().splitlines():
        fields = line.split()
        if fields[2] == "cgroup2":
            return Path(fields[1])
    raise RuntimeError("no cgroup2 hierarchy is mounted")


class Cgroup:
    """A cgroup v2 of the test's own, with connect4 programs attached to it."""

    def __init__(self, path: Path):
        self.path = path
        self.attached: list[Path] = []

    def attach(self, prog: Path) -> None:
        subprocess.run(["bpftool", "cgroup", "attach", str(self.path), "connect4", "pinned", str(prog)],
                       check=True, capture_output=True, text=True)
        self.attached.append(prog)

    def detach(self, prog: Path) -> None:
        subprocess.run(["bpftool", "cgroup", "detach", str(self.path), "connect4", "pinned", str(prog)],
                       check=True, capture_output=True, text=True)
        self.attached.remove(prog)

    def replace(self, old: Path, new: Path) -> None:
        """What a data plane's upgrade does once its new programs are loaded."""
        self.detach(old)
        self.attach(new)

    def connect(self, ip: str, port: int, enable: bool = False) -> tuple[str, int, bytes]:
        """Connect from a child process in this cgroup; the address it reached and what it read there.
        `enable`: first connect to 0.0.0.2:929, which Kmesh's CNI does so its programs manage the netns."""
        child = f"""
import os, socket, sys
open({str(self.path / 'cgroup.procs')!r}, "w").write(str(os.getpid()))
if {enable}:
    s = socket.socket(); s.settimeout(1)
    try: s.connect(("0.0.0.2", 929))
    except OSError: pass
    s.close()
s = socket.socket(); s.settimeout(3)
s.connect(({ip!r}, {port}))
host, port = s.getpeername()
print(host, port, s.recv(64).decode())
"""
        out = subprocess.run([sys.executable, "-c", child], capture_output=True, text=True, timeout=30)
        if out.returncode:
            raise RuntimeError(f"connect from the cgroup failed: {out.stderr.strip().splitlines()[-1:]}")
        host, got, said = out.stdout.split()
        return host, int(got), said.encode()


@contextlib.contextmanager
def cgroup() -> Iterator[Cgroup]:
    path = _cgroup2_mount() / f"kmesh-test-{uuid.uuid4().hex[:12]}"
    path.mkdir()
    group = Cgroup(path)
    try:
        yield group
    finally:
        for prog in list(group.attached):
            group.detach(prog)
        path.rmdir()


@contextlib.contextmanager
def backends(*names: str) -> Iterator[dict[str, int]]:
    """TCP servers on 127.0.0.1 that answer each connection with their name; name -> port."""
    servers, ports = [], {}
    stop = threading.Event()
    for name in names:
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        s.listen()
        s.settimeout(0.2)
        servers.append((s, name))
        ports[name] = s.getsockname()[1]

    def serve(s: socket.socket, name: str) -> None:
        while not stop.is_set():
            try:
                c, _ = s.accept()
            except OSError:
                continue
            with c:
                c.sendall(name.encode())

    threads = [threading.Thread(target=serve, args=pair, daemon=True) for pair in servers]
    for t in threads:
        t.start()
    try:
        yield ports
    finally:
        stop.set()
        for t in threads:
            t.join()
        for s, _ in servers:
            s.close()


def bpftool_update(pin: Path, key: bytes, value: bytes) -> None:
    """Write one entry as a foreign writer would (bpftool, not kmesh-apply)."""
    subprocess.run(["bpftool", "map", "update", "pinned", str(pin), "key", "hex", *[f"{b:02x}" for b in key],
                    "value", "hex", *[f"{b:02x}" for b in value]], check=True, capture_output=True, text=True)


def remove_tree(path: Path) -> None:
    """Unpin a directory of programs (bpffs has no recursive rmdir)."""
    if path.exists():
        for f in os.listdir(path):
            os.unlink(path / f)
        path.rmdir()
