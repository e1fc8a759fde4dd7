"""The pin root on disk: checks that it is a real bpffs directory, and the per-pin-root lock.

A pin root is the unit kmesh-apply owns. Before touching one we make sure it is
on bpffs and reached without symlinks (so a hostile path cannot steer us outside
it), and two applies on the same pin root serialise on an flock of the directory
itself: bpffs holds no regular files, and a lock dies with its process, so a
killed apply never blocks the next one.
"""

from __future__ import annotations

import errno
import fcntl
import os
import time
from pathlib import Path
from types import TracebackType

from kmesh_apply.errors import KmeshError, LockError

BPFFS_MAGIC = "bpf"


def _mount_fstype(path: Path) -> str | None:
    """The filesystem type of the mount holding `path`, from /proc/self/mountinfo."""
    best, fstype = "", None
    with open("/proc/self/mountinfo") as f:
        for line in f:
            left, _, right = line.partition(" - ")
            mnt = left.split()[4].encode().decode("unicode_escape")
            if (str(path) == mnt or str(path).startswith(mnt.rstrip("/") + "/")) and len(mnt) >= len(best):
                best, fstype = mnt, right.split()[0]
    return fstype


def check_pin_root(pin_root: str) -> Path:
    """Refuse a pin root that is relative, goes through a symlink, or is not on bpffs."""
    path = Path(pin_root)
    if not path.is_absolute():
        raise KmeshError(f"pin root {pin_root!r} must be an absolute path (under a bpffs mount such as /sys/fs/bpf)")
    if ".." in path.parts:
        raise KmeshError(f"pin root {pin_root!r} must not contain '..'")
    probe = path
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    for p in [probe, *probe.parents]:
        if p.is_symlink():
            raise KmeshError(f"pin root {pin_root!r} goes through the symlink {p}; give the real path")
    if path.exists() and not path.is_dir():
        raise KmeshError(f"pin root {pin_root!r} exists and is not a directory")
    fstype = _mount_fstype(probe)
    if fstype != BPFFS_MAGIC:
        hint = " (mount it with: mount -t bpf bpf /sys/fs/bpf)" if str(path).startswith("/sys/fs/bpf") else ""
        raise KmeshError(f"pin root {pin_root!r} is not on a bpf filesystem (found {fstype or 'nothing'}){hint}")
    return path


def _lock_holder(path: Path) -> str:
    """Who holds the flock on `path`, read from /proc/locks (best effort)."""
    try:
        st = os.stat(path)
        with open("/proc/locks") as f:
            for line in f:
                parts = line.split()
                if len(parts) >= 6 and parts[1] == "FLOCK" and parts[5].endswith(f":{st.st_ino}"):
                    return f"process {parts[4]}"
    except OSError:
        pass
    return "another process"


class PinRootLock:
    """An exclusive lock on one pin root, waited for up to `timeout` seconds."""

    def __init__(self, pin_root: str, timeout: float = 10.0):
        self.path = check_pin_root(pin_root)
        self.timeout = timeout
        self.fd = -1

    def __enter__(self) -> "PinRootLock":
        try:
            self.path.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise KmeshError(f"cannot create pin root {self.path}: {e.strerror}") from None
        self.fd = os.open(self.path, os.O_RDONLY | os.O_DIRECTORY)
        deadline = time.monotonic() + self.timeout
        while True:
            try:
                fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return self
            except OSError as e:
                if e.errno not in (errno.EAGAIN, errno.EACCES):
                    raise
            if time.monotonic() >= deadline:
                holder = _lock_holder(self.path)
                os.close(self.fd)
                raise LockError(f"pin root {self.path} is locked by {holder} (an apply, destroy or watch in progress); "
                                f"gave up after {self.timeout:g}s: retry later or raise --lock-timeout")
            time.sleep(0.05)

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None) -> None:
        os.close(self.fd)
        self.fd = -1
