"""The pin root on disk: the checks it must pass before the tool touches it, every access to its
pins, and the per-pin-root lock.

The tool runs as root, and bpffs's /sys/fs/bpf is world-writable (sticky), so a pin root is
somewhere other users can reach. Before touching one we make sure no one else can steer what we
do there (contract section 11): the pin root is reached component by component without following
links, every directory on the way is one no other user can swap (root's, or sticky), the pin root
and every directory and pin in it are ours and writable by no one else, nothing in it is a link,
and it is on bpffs. Then every pin is reached relative to the pin root's fd (and its record
directories' fds): renames and unlinks with dir_fd, and libbpf's path-taking calls through
/proc/self/fd/<dir fd>/<name> after an fstatat that does not follow links. Nobody else can write
in a directory we checked, so nothing can be swapped between the check and the use.

Two applies on the same pin root serialise on an flock of a file only root can open, in
/run/kmesh-apply/locks and named after the pin root's path (not its inode: a pin root removed and
made again stays locked); a lock dies with its process, so a killed apply never blocks the next.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import os
import re
import stat
import time
from types import TracebackType

from kmesh_apply.errors import KernelError, KmeshError, LockError
from kmesh_apply.kernel.maps import Map
from kmesh_apply.private import check_owned, make_dirs, open_private_dir, walk
from kmesh_apply.state import TOOL_DIRS, name_problem
from kmesh_apply.terminal import printable

BPFFS = "bpf"
LOCK_DIR = "/run/kmesh-apply/locks"
DIR_MODE = 0o700
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def pin_root_path(pin_root: str) -> str:
    """The pin root as one spelling of its path; refuses what can never be one."""
    if "\0" in pin_root:
        raise KmeshError(f"pin root {pin_root!r} contains a NUL byte")
    if not os.path.isabs(pin_root):
        raise KmeshError(f"pin root {pin_root!r} must be an absolute path (under a bpffs mount such as /sys/fs/bpf)")
    if ".." in pin_root.split("/"):
        raise KmeshError(f"pin root {pin_root!r} must not contain '..'")
    return os.path.normpath(pin_root).replace("//", "/")


def _fstype(fd: int) -> str | None:
    """The type of the filesystem holding the open directory `fd`, by its device in /proc/self/mountinfo."""
    st = os.fstat(fd)
    dev = f"{os.major(st.st_dev)}:{os.minor(st.st_dev)}"
    with open("/proc/self/mountinfo") as f:
        for line in f:
            left, _, right = line.partition(" - ")
            if left.split()[2] == dev:
                return right.split()[0]
    return None


class PinRoot:
    """An open pin root: every pin is reached through it. `open` checks it (module docstring)."""

    def __init__(self, path: str, fd: int):
        self.path = path
        self.fd = fd
        self._dirs: dict[str, int] = {}

    @classmethod
    def open(cls, pin_root: str) -> PinRoot | None:
        """The pin root, checked (None when it does not exist). Every refusal is one line saying
        what is wrong and how to fix it."""
        return cls._open(pin_root, create=False)

    @classmethod
    def make(cls, pin_root: str) -> PinRoot:
        """The pin root, checked, and made (mode 0700, whatever the umask) when missing."""
        root = cls._open(pin_root, create=True)
        assert root is not None  # made when missing
        return root

    @classmethod
    def _open(cls, pin_root: str, create: bool) -> PinRoot | None:
        path = pin_root_path(pin_root)
        shown = printable(path)
        try:
            fd, missing = walk(path)
        except KmeshError as e:
            raise KmeshError(f"pin root {shown}: {e}") from None
        try:
            fstype = _fstype(fd)
            if fstype != BPFFS:
                hint = " (mount it with: mount -t bpf bpf /sys/fs/bpf)" if path.startswith("/sys/fs/bpf") else ""
                raise KmeshError(f"pin root {shown!r} is not on a bpf filesystem (found {fstype or 'nothing'}){hint}")
            if missing:
                if not create:
                    os.close(fd)
                    return None
                fd, made = -1, fd
                try:
                    fd = make_dirs(made, missing, path, DIR_MODE)
                except KmeshError as e:
                    raise KmeshError(f"pin root {shown}: {e}") from None
                return cls(path, fd)
            check_owned(os.fstat(fd), path, "pin root")
            own = os.open(".", _DIR_FLAGS, dir_fd=fd)
            os.close(fd)
            return cls(path, own)
        except BaseException:
            if fd >= 0:
                os.close(fd)
            raise

    def close(self) -> None:
        for fd in self._dirs.values():
            os.close(fd)
        self._dirs.clear()
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __enter__(self) -> PinRoot:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- the directories and their entries ---------------------------------------------

    def shown(self, pin: str) -> str:
        """How messages name a pin (escaped: a name in a pin root may be someone else's)."""
        return printable(f"{self.path}/{pin}")

    def _folder(self, folder: str, create: bool = False) -> int | None:
        """The fd of the pin root ("") or of one of the tool's record directories in it."""
        if not folder:
            return self.fd
        if folder not in TOOL_DIRS:
            raise KmeshError(f"{self.shown(folder)}: a pin root holds no directories but kmesh-apply's own "
                             f"({', '.join(TOOL_DIRS)})")
        fd = self._dirs.get(folder)
        if fd is None:
            if create:
                try:
                    os.mkdir(folder, DIR_MODE, dir_fd=self.fd)
                except FileExistsError:
                    pass
            try:
                fd = os.open(folder, _DIR_FLAGS, dir_fd=self.fd)
            except FileNotFoundError:
                return None
            except OSError:
                self._entry(self.fd, folder, folder, directory=True)  # says what it is instead
                raise
            st = os.fstat(fd)
            if create and st.st_uid == os.geteuid() and stat.S_IMODE(st.st_mode) != DIR_MODE:
                os.fchmod(fd, DIR_MODE)  # made by us just now under the umask, or by an earlier version
                st = os.fstat(fd)
            try:
                check_owned(st, self.shown(folder))
            except BaseException:
                os.close(fd)
                raise
            self._dirs[folder] = fd
        return fd

    def _locate(self, pin: str, create: bool = False) -> tuple[int, str] | None:
        """(directory fd, name) of a pin: a name in the pin root or in one of its record directories."""
        folder, _, name = pin.rpartition("/")
        problem = name_problem(name)
        if problem is not None:
            raise KmeshError(f"{self.shown(pin)}: not a pin of the pin root: {problem}")
        fd = self._folder(folder, create)
        return None if fd is None else (fd, name)

    def _entry(self, dir_fd: int, name: str, pin: str, directory: bool = False) -> os.stat_result | None:
        """What is at `name` in `dir_fd`, not following a link; None if nothing. A link, something
        that is not what we expect, or an entry another user owns or may write is refused."""
        try:
            st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
        except FileNotFoundError:
            return None
        shown = self.shown(pin)
        if stat.S_ISLNK(st.st_mode):
            raise KmeshError(f"{shown} is a symlink: a pin root holds only pins and kmesh-apply's own directories, "
                             f"and kmesh-apply never follows links in it; remove it (rm {shown})")
        if stat.S_ISDIR(st.st_mode) != directory:
            what = "a directory" if stat.S_ISDIR(st.st_mode) else "not a directory"
            raise KmeshError(f"{shown} is {what}; a pin root holds only the maps kmesh-apply manages and its own "
                             f"directories ({', '.join(TOOL_DIRS)}). Use a separate pin root for nested trees.")
        check_owned(st, shown, "directory" if directory else "pin")
        return st

    def entries(self, folder: str = "") -> list[tuple[str, bool]]:
        """(name, is a directory) of everything in the pin root or a record directory, by name; empty
        when the record directory does not exist. A link is refused here; owners are checked as each
        entry is opened (one fstatat per pin: the reader opens them all)."""
        fd = self._folder(folder)
        if fd is None:
            return []
        with os.scandir(fd) as it:
            found = sorted((e.name, e.is_dir(follow_symlinks=False), e.is_symlink()) for e in it)
        for name, _, link in found:
            if link:
                self._entry(fd, name, f"{folder}/{name}" if folder else name)  # says so, naming it
        return [(name, is_dir) for name, is_dir, _ in found]

    # ---- pins ------------------------------------------------------------------------------

    def open_map(self, pin: str) -> Map:
        """The map pinned at `pin`, opened without following links."""
        where = self._locate(pin)
        if where is None or self._entry(*where, pin) is None:
            raise KernelError("open pinned map", self.shown(pin), errno.ENOENT, f"nothing is pinned at {self.shown(pin)}")
        fd, name = where
        return Map.open_pinned(f"/proc/self/fd/{fd}/{name}", shown=self.shown(pin))

    def pin_map(self, m: Map, pin: str) -> None:
        """Pin `m` at `pin` (a record directory is made if needed); the kernel never follows a link there."""
        m.pin(self._pin_path(pin), shown=self.shown(pin))

    def pin_new(self, m: Map, pin: str) -> Map:
        """`pin_map` for a map just created: if pinning fails, it is closed (and so goes away)."""
        try:
            path = self._pin_path(pin)
        except BaseException:
            m.close()
            raise
        return m.pin_new(path, shown=self.shown(pin))

    def _pin_path(self, pin: str) -> str:
        where = self._locate(pin, create=True)
        assert where is not None  # made when missing
        return f"/proc/self/fd/{where[0]}/{where[1]}"

    def lexists(self, name: str) -> bool:
        """Whether anything is at `name` in the pin root (a link included: it is not followed)."""
        try:
            os.stat(name, dir_fd=self.fd, follow_symlinks=False)
        except FileNotFoundError:
            return False
        return True

    def replace(self, src: str, dst: str) -> None:
        """Move the pin `src` to `dst`, replacing the pin there atomically (rename(2))."""
        src_at, dst_at = self._locate(src), self._locate(dst, create=True)
        if src_at is None or self._entry(*src_at, src) is None:
            raise KmeshError(f"nothing is pinned at {self.shown(src)}")
        assert dst_at is not None  # made when missing
        self._entry(*dst_at, dst)
        os.replace(src_at[1], dst_at[1], src_dir_fd=src_at[0], dst_dir_fd=dst_at[0])

    def unlink(self, pin: str) -> bool:
        """Unpin `pin`; False when nothing was pinned there."""
        where = self._locate(pin)
        if where is None or self._entry(*where, pin) is None:
            return False
        os.unlink(where[1], dir_fd=where[0])
        return True

    def remove_if_empty(self, folder: str) -> None:
        """Remove a record directory once it holds nothing, so a converged pin root holds only maps."""
        fd = self._dirs.pop(folder, None)
        if fd is not None:
            os.close(fd)
        if folder in TOOL_DIRS:
            try:
                os.rmdir(folder, dir_fd=self.fd)
            except OSError:
                pass  # not empty, or already gone


# ---- the lock ----------------------------------------------------------------------------


def lock_file_name(pin_root: str) -> str:
    """The lock file of a pin root: its path made readable, and a hash of it so no two paths share one."""
    readable = re.sub(r"[^A-Za-z0-9_.-]", "_", pin_root.strip("/").replace("/", "-"))[:80]
    return f"{readable}-{hashlib.sha256(pin_root.encode(errors='surrogateescape')).hexdigest()[:16]}.lock"


def _lock_holder(st: os.stat_result) -> str:
    """Who holds the flock on the file `st` describes, read from /proc/locks (best effort)."""
    where = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
    try:
        with open("/proc/locks") as f:
            for line in f:
                parts = line.split()
                if len(parts) >= 6 and parts[1] == "FLOCK" and parts[5] == where:
                    try:
                        with open(f"/proc/{parts[4]}/comm") as comm:
                            return f"process {parts[4]} ({comm.read().strip()})"
                    except OSError:
                        return f"process {parts[4]}"
    except OSError:
        pass
    return "another process"


class PinRootLock:
    """An exclusive lock on one pin root's path, waited for up to `timeout` seconds. The lock file
    lives in a directory only root can enter (mode 0700), so no other user can take the lock. The
    holder removes the file before letting go, so locks of pin roots long gone do not pile up: a
    waiter that then gets the lock of a removed file tries again with the file now at the name."""

    def __init__(self, pin_root: str, timeout: float = 10.0):
        self.path = pin_root_path(pin_root)
        self.name = lock_file_name(self.path)
        self.timeout = timeout
        self.fd = self.dir_fd = -1

    def __enter__(self) -> PinRootLock:
        try:
            dir_fd = open_private_dir(LOCK_DIR)
        except KmeshError as e:
            raise KmeshError(f"cannot lock pin root {printable(self.path)}: {e}") from None
        assert dir_fd is not None  # made when missing
        self.dir_fd = dir_fd
        try:
            self._acquire(time.monotonic() + self.timeout)
        except BaseException:
            self._close()
            raise
        return self

    def _acquire(self, deadline: float) -> None:
        while True:
            try:
                self.fd = os.open(self.name, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600,
                                  dir_fd=self.dir_fd)
            except OSError as e:
                raise KmeshError(f"cannot open the lock of pin root {printable(self.path)} in {LOCK_DIR}: {e.strerror}") from None
            st = os.fstat(self.fd)
            check_owned(st, f"{LOCK_DIR}/{self.name}", "lock file")
            if st.st_mode & 0o077:
                os.fchmod(self.fd, 0o600)
            while True:
                try:
                    fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except OSError as e:
                    if e.errno not in (errno.EAGAIN, errno.EACCES):
                        raise
                if time.monotonic() >= deadline:
                    raise LockError(f"pin root {printable(self.path)} is locked by {_lock_holder(st)} (an apply, destroy or "
                                    f"watch in progress); gave up after {self.timeout:g}s: retry later or raise --lock-timeout")
                time.sleep(0.05)
            try:
                now = os.stat(self.name, dir_fd=self.dir_fd, follow_symlinks=False)
            except FileNotFoundError:
                now = None
            if now is not None and (now.st_dev, now.st_ino) == (st.st_dev, st.st_ino):
                return
            os.close(self.fd)  # the holder removed this file as it let go: take the one at the name now
            self.fd = -1

    def _close(self) -> None:
        for fd in (self.fd, self.dir_fd):
            if fd >= 0:
                os.close(fd)
        self.fd = self.dir_fd = -1

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None) -> None:
        try:
            os.unlink(self.name, dir_fd=self.dir_fd)  # still held: no one else can be using the name
        except OSError:
            pass
        self._close()
