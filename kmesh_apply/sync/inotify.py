"""Linux inotify(7) through libc, for `watch`: the file events it needs to know when a writer is done.

Why not a library: watchfiles' RustNotify (used before) hands over a set of (added | modified |
deleted, path), without the order of events and without close-after-write, so a file being
written in place looked the same after its first write as after its last. Here every event
comes in order with its kind: IN_CLOSE_WRITE (a writer closed the file), IN_MOVED_TO (a file
renamed into place: complete at once), IN_MODIFY (written, maybe not finished), deletions.
Directories are watched, not files (a watched file is lost at its first atomic save).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
import struct
from dataclasses import dataclass

IN_MODIFY = 0x2
IN_ATTRIB = 0x4
IN_CLOSE_WRITE = 0x8
IN_MOVED_FROM = 0x40
IN_MOVED_TO = 0x80
IN_CREATE = 0x100
IN_DELETE = 0x200
IN_DELETE_SELF = 0x400
IN_MOVE_SELF = 0x800
IN_Q_OVERFLOW = 0x4000  # events were lost: the queue was full
IN_IGNORED = 0x8000  # the watch is gone (its directory was removed)
IN_ONLYDIR = 0x01000000
IN_EXCL_UNLINK = 0x04000000  # nothing about files once unlinked (an editor's deleted temporary file)
IN_ISDIR = 0x40000000

WATCHED = (IN_MODIFY | IN_ATTRIB | IN_CLOSE_WRITE | IN_MOVED_FROM | IN_MOVED_TO | IN_CREATE | IN_DELETE
           | IN_DELETE_SELF | IN_MOVE_SELF)
_NONBLOCK_CLOEXEC = os.O_NONBLOCK | os.O_CLOEXEC  # IN_NONBLOCK and IN_CLOEXEC are these
_HEADER = struct.Struct("iIII")  # struct inotify_event: wd, mask, cookie, len; then len bytes of name


@dataclass(frozen=True)
class Event:
    """One event: `path` is the watched directory joined with the name (the directory itself for
    IN_DELETE_SELF, IN_MOVE_SELF and IN_IGNORED; empty for IN_Q_OVERFLOW)."""

    mask: int
    path: str
    directory: str


def _libc() -> ctypes.CDLL:
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    libc.inotify_init1.argtypes = [ctypes.c_int]
    libc.inotify_init1.restype = ctypes.c_int
    libc.inotify_add_watch.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_uint32]
    libc.inotify_add_watch.restype = ctypes.c_int
    libc.inotify_rm_watch.argtypes = [ctypes.c_int, ctypes.c_int]
    libc.inotify_rm_watch.restype = ctypes.c_int
    return libc


class Inotify:
    """An inotify instance: `watch(directory)`, then `read()` whatever happened (never blocks; poll `fileno()`)."""

    def __init__(self) -> None:
        self._libc = _libc()
        fd = self._libc.inotify_init1(_NONBLOCK_CLOEXEC)
        if fd < 0:
            e = ctypes.get_errno()
            raise OSError(e, f"inotify_init1: {os.strerror(e)} (fs.inotify.max_user_instances reached?)")
        self.fd = fd
        self._dirs: dict[int, str] = {}  # watch descriptor -> directory

    def fileno(self) -> int:
        return self.fd

    def watch(self, directory: str) -> bool:
        """Follow a directory's entries; False when it does not exist (now)."""
        wd = self._libc.inotify_add_watch(self.fd, os.fsencode(directory), WATCHED | IN_ONLYDIR | IN_EXCL_UNLINK)
        if wd < 0:
            e = ctypes.get_errno()
            if e in (errno.ENOENT, errno.ENOTDIR):
                return False
            raise OSError(e, f"inotify_add_watch {directory}: {os.strerror(e)} (fs.inotify.max_user_watches reached?)")
        self._dirs[wd] = directory
        return True

    def watching(self) -> set[str]:
        return set(self._dirs.values())

    def forget(self, directory: str) -> None:
        """Stop following a directory (one renamed away: its watch would follow it there)."""
        for wd, d in list(self._dirs.items()):
            if d == directory:
                del self._dirs[wd]
                self._libc.inotify_rm_watch(self.fd, wd)  # EINVAL when the kernel dropped it already: fine

    def read(self) -> list[Event]:
        """Every event queued now, in order (empty when there is none)."""
        out: list[Event] = []
        while True:
            try:
                data = os.read(self.fd, 1 << 16)
            except BlockingIOError:
                return out
            pos = 0
            while pos + _HEADER.size <= len(data):
                wd, mask, _, size = _HEADER.unpack_from(data, pos)
                name = data[pos + _HEADER.size:pos + _HEADER.size + size].rstrip(b"\0")
                pos += _HEADER.size + size
                directory = self._dirs.get(wd, "")
                if mask & IN_IGNORED:
                    self._dirs.pop(wd, None)
                out.append(Event(mask, os.path.join(directory, os.fsdecode(name)) if name else directory, directory))

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __enter__(self) -> "Inotify":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
