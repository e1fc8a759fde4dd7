"""Directories and files that no other user can change under the tool (contract section 11).

The tool runs as root on shared nodes, so every directory it writes in and every file it writes
must be out of other users' reach: a directory is reached component by component without
following links, and each directory on the way must be one no other user can swap (owned by
root or by us, and writable by others only when sticky, like /tmp or bpffs's /sys/fs/bpf); the
directory itself is ours and writable by no one else. A file is written aside in its directory
(O_EXCL|O_NOFOLLOW, mode 0600 whatever the umask), synced and renamed into place: never through
a link, never into another user's file. Everything after the first check acts relative to the
directory's fd, so a rename of a component meanwhile cannot redirect it.
"""

from __future__ import annotations

import os
import pwd
import secrets
import stat

from kmesh_apply.errors import KmeshError
from kmesh_apply.terminal import printable

PRIVATE_DIR_MODE = 0o700
PRIVATE_FILE_MODE = 0o600
_DIR_FLAGS = os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def user_name(uid: int) -> str:
    """`name (uid N)`, or `uid N` for a uid with no account."""
    try:
        return f"{pwd.getpwuid(uid).pw_name} (uid {uid})"
    except KeyError:
        return f"uid {uid}"


def check_passage(st: os.stat_result, path: str) -> None:
    """Refuse a directory on the way to ours that another user could swap a component of."""
    path = printable(path)  # a name someone else chose reaches the terminal escaped
    if st.st_uid not in (0, os.geteuid()):
        raise KmeshError(f"{path} belongs to {user_name(st.st_uid)}, who could swap what lies under it; "
                         f"use a path whose directories belong to root (or chown root {path})")
    if st.st_mode & 0o022 and not st.st_mode & stat.S_ISVTX:
        raise KmeshError(f"{path} is writable by other users (mode {stat.S_IMODE(st.st_mode):04o}) and not sticky, "
                         f"so they could swap what lies under it; fix it with: chmod go-w {path}")


def check_owned(st: os.stat_result, path: str, what: str = "") -> None:
    """Refuse a directory or file of ours that another user owns or may write."""
    what = what or ("directory" if stat.S_ISDIR(st.st_mode) else "file")
    path = printable(path)
    if st.st_uid != os.geteuid():
        me = user_name(os.geteuid())
        raise KmeshError(f"{what} {path} belongs to {user_name(st.st_uid)}, not to {me}: another user could steer "
                         f"kmesh-apply through it; remove it, or chown {me.split()[0]} {path} if it is really yours")
    if st.st_mode & 0o022:
        raise KmeshError(f"{what} {path} is writable by other users (mode {stat.S_IMODE(st.st_mode):04o}); "
                         f"fix it with: chmod go-w {path}")


def walk(path: str) -> tuple[int, list[str]]:
    """The deepest existing directory of absolute `path` as an fd, and the components missing
    below it. Every component is opened relative to the one before (O_NOFOLLOW: a link is
    refused, naming it) and checked with `check_passage`; the caller checks the last one as its own."""
    if not os.path.isabs(path) or "\0" in path:
        raise KmeshError(f"{path!r} must be an absolute path")
    parts = [p for p in path.split("/") if p]
    if any(p in (".", "..") for p in parts):
        raise KmeshError(f"{path!r} must not contain '.' or '..' components")
    fd = os.open("/", os.O_PATH | _DIR_FLAGS)
    here = ""
    try:
        for i, part in enumerate(parts):
            check_passage(os.fstat(fd), here or "/")
            try:
                child = os.open(part, os.O_PATH | _DIR_FLAGS, dir_fd=fd)
            except FileNotFoundError:
                return fd, parts[i:]
            except OSError as e:
                raise _not_a_directory(fd, part, f"{here}/{part}", e) from None
            os.close(fd)
            fd, here = child, f"{here}/{part}"
        return fd, []
    except BaseException:
        os.close(fd)
        raise


def _not_a_directory(parent: int, name: str, path: str, e: OSError) -> KmeshError:
    path = printable(path)
    try:
        st = os.stat(name, dir_fd=parent, follow_symlinks=False)
    except OSError:
        return KmeshError(f"cannot open {path}: {e.strerror}")
    if stat.S_ISLNK(st.st_mode):
        return KmeshError(f"{path} is a symlink: kmesh-apply never follows links on its way to what it writes; "
                          "give the real path")
    return KmeshError(f"{path} exists and is not a directory")


def make_dirs(fd: int, missing: list[str], path: str, mode: int = PRIVATE_DIR_MODE) -> int:
    """Create `missing` one below the other under directory `fd` (consumed) with exactly `mode`,
    whatever the umask; the fd of the last one (of `path`)."""
    parts = [p for p in path.split("/") if p]
    here = "".join("/" + p for p in parts[:len(parts) - len(missing)])
    try:
        for i, part in enumerate(missing):
            here += "/" + part
            made = True
            try:
                os.mkdir(part, mode, dir_fd=fd)
            except FileExistsError:
                made = False  # made meanwhile by someone else: checked like any other
            try:
                child = os.open(part, os.O_RDONLY | _DIR_FLAGS, dir_fd=fd)
            except OSError as e:
                raise _not_a_directory(fd, part, here, e) from None
            os.close(fd)
            fd = child
            st = os.fstat(fd)
            if made and stat.S_IMODE(st.st_mode) != mode:
                os.fchmod(fd, mode)
                st = os.fstat(fd)
            (check_owned if i == len(missing) - 1 else check_passage)(st, here)
        return fd
    except OSError as e:
        os.close(fd)
        raise KmeshError(f"cannot create {printable(path)}: {e.strerror}") from None
    except BaseException:
        os.close(fd)
        raise


def open_private_dir(path: str, create: bool = True) -> int | None:
    """An fd (O_RDONLY) of directory `path`, made (mode 0700) if missing and `create`, after the
    checks of the module docstring; None when it is missing and not `create`."""
    fd, missing = walk(path)
    if missing:
        if not create:
            os.close(fd)
            return None
        return make_dirs(fd, missing, path)
    try:
        check_owned(os.fstat(fd), path)
        own = os.open(".", os.O_RDONLY | _DIR_FLAGS, dir_fd=fd)
    finally:
        os.close(fd)
    return own


def write_private(path: str | os.PathLike[str], data: bytes, replace: bool = True) -> None:
    """Write `data` as the file `path`, mode 0600: aside in the same directory (a new file no link
    can lead out of), synced, then renamed over `path`, which is never opened or followed: a link
    there is replaced, not written through. Refused when `path` is another user's file or a directory.
    `replace=False`: linked into place only if nothing is there yet (a file made once, like a key:
    of two runs making it at once, the first one's stays)."""
    folder, name = os.path.split(os.path.abspath(os.fspath(path)))
    path = printable(os.fspath(path))  # as messages name it
    try:
        dir_fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as e:
        raise KmeshError(f"cannot write {path}: {printable(folder)}: {e.strerror}") from None
    try:
        try:
            st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
        except FileNotFoundError:
            pass
        else:
            if stat.S_ISDIR(st.st_mode):
                raise KmeshError(f"cannot write {path}: it is a directory")
            if st.st_uid != os.geteuid():
                raise KmeshError(f"refusing to write {path}: it belongs to {user_name(st.st_uid)}, not to "
                                 f"{user_name(os.geteuid())}; remove it or choose another path")
        tmp = f".{name[:200]}.{secrets.token_hex(6)}.tmp"
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                         PRIVATE_FILE_MODE, dir_fd=dir_fd)
            try:
                os.fchmod(fd, PRIVATE_FILE_MODE)  # the umask may have taken bits away
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view):]
                os.fsync(fd)
            finally:
                os.close(fd)
            if replace:
                os.replace(tmp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
            else:
                try:
                    os.link(tmp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd, follow_symlinks=False)
                except FileExistsError:
                    pass
                os.unlink(tmp, dir_fd=dir_fd)
        except OSError as e:
            try:
                os.unlink(tmp, dir_fd=dir_fd)
            except OSError:
                pass
            raise KmeshError(f"cannot write {path}: {e.strerror or e}") from None
    finally:
        os.close(dir_fd)
