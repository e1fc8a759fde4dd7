"""Whether a process holds a file open for writing, asked of the kernel with a lease (fcntl(2), "Leases").

`watch` must not read a file its writer has not finished, and watchfiles (sync/events.py) does not
report when a writer closes a file. A read lease (F_SETLEASE F_RDLCK, on a read-only descriptor)
is refused with EAGAIN while any process has the file open for writing, and granted otherwise;
it is given back at once. Root (CAP_LEASE) may take one on any file. Some file systems refuse
leases altogether (EINVAL: NFS, FUSE, or sysctl fs.leases-enable = 0): there nobody can tell,
and the caller falls back to a quiet time.
"""

from __future__ import annotations

import errno
import fcntl
import os
import signal
import stat

# While the lease is held (microseconds), a writer opening the file breaks it, and the kernel tells
# the holder with a signal: SIGIO by default, whose default action ends the process. SIGURG's is to
# ignore it (and nothing in the process handles it).
BREAK_SIGNAL = signal.SIGURG


def open_for_writing(path: str) -> bool | None:
    """True while a process holds `path` open for writing; False when none does, or when it is not a
    regular file now (gone, a directory: nothing to wait for); None when this file system refuses leases."""
    try:
        if not stat.S_ISREG(os.stat(path).st_mode):  # never open a FIFO or a device
            return False
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    except OSError as e:
        # EWOULDBLOCK: another holds a write lease (a file server); others: gone or unreadable, which the
        # caller's stat or the loader reports
        return None if e.errno == errno.EWOULDBLOCK else False
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):  # replaced since the stat
            return False
        fcntl.fcntl(fd, fcntl.F_SETSIG, BREAK_SIGNAL)
        try:
            fcntl.fcntl(fd, fcntl.F_SETLEASE, fcntl.F_RDLCK)
        except OSError as e:
            return True if e.errno == errno.EAGAIN else None
        fcntl.fcntl(fd, fcntl.F_SETLEASE, fcntl.F_UNLCK)
        return False
    finally:
        os.close(fd)
