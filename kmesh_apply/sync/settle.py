"""When `watch` may read its files: only once their writers are done (issue 21: never act on a guess).

watchfiles (sync/events.py) says which followed paths were added, modified or deleted during a
burst, as a set: no order, and nothing when a writer closes a file. So a path is decided from
those changes together with the file system as it is now, looked at after each burst and again
until the path is ready. A look is a stat (device, inode, size, mtime, ctime: any difference from
the last look is a change) and a lease probe (sync/leases.py: does a process hold it open for
writing?). Then:
- added alone in the burst and put in place whole (renamed within its directory, which reports
  the rename's source as deleted: an atomic save, a Kubernetes `..data` swap; or a link), and
  held by no writer: complete, read at once;
- otherwise (written in place, created, or held by a writer since it appeared): read
  once no writer holds it and it has stayed unchanged for SETTLE since the last look that found
  it changed or held, so that `: > f; cat a >> f; cat b >> f` is read whole; while a writer
  holds it, looked at every LOOK (however long: a file is never read half-written); where the
  file system refuses leases, read once it has stayed unchanged for WRITER_QUIET;
- vanished (deleted, renamed away, a link left dangling): deleted only once it has stayed gone
  for GONE (an editor's rename to a backup, then a new file, puts it back within milliseconds).
A pass waits until every followed path is ready, so one configuration never mixes a finished
file with a half-written one. Destroying maps waits longer: until no file has been written in
place, held by a writer, or vanished, for STABLE (see sync/guard.py).
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from typing import Callable, Iterable

from kmesh_apply.sync.leases import open_for_writing

ADDED, MODIFIED, DELETED = 1, 2, 3  # the changes watchfiles reports (its Change), as sync/events.py hands them over

SETTLE = 0.2  # seconds a file written in place must stay unchanged, with no writer holding it
WRITER_QUIET = 2.0  # without leases, seconds unchanged after which a file counts as closed; with them,
                    # how long a writer may hold a file unchanged before the log says what watch waits for
GONE = 1.0  # seconds a vanished file must stay gone to count as deleted
STABLE = 1.0  # seconds no file may have been written in place, held by a writer or vanished, before maps are destroyed
LOOK = 0.05  # seconds between looks at a file a writer holds open (its close comes with no event)

FILE, EVERYTHING = "file", "everything"  # what a path is to the watcher (see `Settling.kind`)

Look = tuple[int, ...] | None  # a path's device, inode, size, mtime and ctime (following links); None: it does not exist


def look(path: str) -> Look:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns, stat.S_ISDIR(st.st_mode)


def _put_in_place(path: str, gone: set[str]) -> bool:
    """Whether `path`, reported added alone, was renamed into place or linked: complete as it is. watchfiles
    reports a file created and then written as added alone too (a write to a path added in the same
    burst is not reported), and that file may be written again by the next writer (`cat a > f;
    cat b >> f`); a rename within the directory also reports its source as deleted."""
    directory = os.path.dirname(path)
    if any(g != path and os.path.dirname(g) == directory for g in gone):
        return True
    try:
        return stat.S_ISLNK(os.lstat(path).st_mode)  # a link is made whole by one symlink(2)
    except OSError:
        return False


@dataclass
class _Path:
    seen: Look  # what the last look found
    busy: float  # when it was last busy: a change reported, a look that found it different or held by a writer
    looked: float  # when it was last looked at
    whole: bool = False  # added, and neither written nor held by a writer since: complete as it is
    writer: bool | None = False  # a process held it open for writing at the last look (None: cannot tell here)
    held_since: float | None = None  # since when writers have held it, look after look

    def ready_at(self) -> float:
        """When it may be read, from what the last look found; while a writer holds it, when to look again."""
        if self.seen is None:
            return self.busy + GONE
        if self.writer:
            return self.looked + LOOK
        if self.writer is None:
            return self.busy + WRITER_QUIET
        return self.busy if self.whole else self.busy + SETTLE

    def stable_at(self) -> float:
        """When maps may be destroyed, as far as this path goes."""
        return 0.0 if self.whole else self.busy + STABLE


class Settling:
    """Which followed paths changed since they were last read, and when they may be read."""

    def __init__(self, kind: Callable[[str], str | None],
                 open_for_writing: Callable[[str], bool | None] = open_for_writing):
        """`kind(path)`: FILE for a config file, EVERYTHING for a path whose change may move every
        file (a ConfigMap's `..data` link), None for anything else (editors' swap files).
        `open_for_writing(path)`: the lease probe (sync/leases.py)."""
        self.kind = kind
        self.open_for_writing = open_for_writing
        self.paths: dict[str, _Path] = {}
        self.touched: set[str] = set()  # changed since last taken
        self.everything = False  # every file must be listed again (a directory changed, events may have been lost)

    def observe(self, changes: Iterable[tuple[int, str]], now: float) -> set[str]:
        """Take in a burst's changes, (ADDED | MODIFIED | DELETED, path), and look at the followed
        paths they name; returns those paths."""
        named: dict[str, set[int]] = {}
        gone: set[str] = set()  # every path deleted in the burst, a rename's source among them
        for change, path in changes:
            if change == DELETED:
                gone.add(path)
            kind = self.kind(path)
            if kind is not None:
                named.setdefault(path, set()).add(change)
                self.everything |= kind == EVERYTHING
        for path, kinds in named.items():
            p = self.paths.get(path)
            if p is None:
                p = self.paths[path] = _Path(None, now, now)
            p.seen, p.busy = look(path), now
            p.whole = kinds == {ADDED} and p.seen is not None and _put_in_place(path, gone)
            self._look(path, p, now)
        self.touched |= named.keys()
        return set(named)

    def look(self, now: float) -> None:
        """Look again at every path not read since it changed: a difference is a change (made in place:
        its own report may come later), and whether a writer holds it is asked again."""
        for path in self.touched:
            p = self.paths.get(path)
            if p is not None:
                seen = look(path)
                if seen != p.seen:
                    p.seen, p.busy, p.whole = seen, now, False
                self._look(path, p, now)

    def _look(self, path: str, p: _Path, now: float) -> None:
        p.looked = now
        if p.seen is not None and p.seen[-1]:
            self.everything = True  # a directory: every file is listed again
        p.writer = self.open_for_writing(path) if p.seen is not None else False
        if p.writer:
            p.whole, p.busy = False, now  # its quiet time starts once no writer holds it
            p.held_since = p.held_since if p.held_since is not None else now
        else:
            p.held_since = None

    def lost(self, now: float, path: str = "") -> None:
        """Changes may have been lost (a watched directory went away or came back): every file is
        listed again once nothing has changed for a while; `path` (the directory) counts as vanished."""
        self.everything = True
        for p in self.paths.values():
            p.busy, p.whole = now, False
        if path:
            self.paths[path] = _Path(None, now, now)
            self.touched.add(path)

    def pending(self) -> bool:
        return self.everything or bool(self.touched)

    def ready_at(self) -> float:
        """When every followed path may be read, from the last looks (a past time: now); while a writer
        holds one, when to look again."""
        return max((p.ready_at() for p in self.paths.values()), default=0.0)

    def stable_at(self) -> float:
        """When no file will have been written in place, held or vanished for STABLE (destroys may run then)."""
        return max((p.stable_at() for p in self.paths.values()), default=0.0)

    def held(self, now: float, longer_than: float) -> list[str]:
        """The paths writers have held open for more than `longer_than` seconds, for a log line."""
        return sorted(path for path, p in self.paths.items()
                      if p.held_since is not None and now - p.held_since > longer_than)

    def take(self, now: float) -> set[str] | None:
        """The changed paths to read (None: list every file), forgetting them; paths settled long ago are forgotten too."""
        touched = None if self.everything else set(self.touched)
        self.touched.clear()
        self.everything = False
        self.paths = {path: p for path, p in self.paths.items() if max(p.ready_at(), p.stable_at()) > now}
        return touched

    def give_back(self, touched: set[str] | None) -> None:
        """Paths taken for a read that was dropped (a file changed while it was read): read them next time."""
        if touched is None:
            self.everything = True
        else:
            self.touched |= touched
