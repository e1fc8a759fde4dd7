"""When `watch` may read its files: only once their writers are done (issue 21: never act on a guess).

From each file's events (sync/inotify.py), in order:
- renamed into place (IN_MOVED_TO) or created as a link: complete at once (an atomic save,
  a Kubernetes `..data` swap), so it is read at once;
- written in place: read once its writer has closed it (IN_CLOSE_WRITE) and it has then stayed
  unchanged for SETTLE, so that `: > f; cat a >> f; cat b >> f` is read whole; a file written
  and not closed (a truncate(2) by path, a writer holding it open) counts as closed once it has
  not been written for WRITER_QUIET;
- vanished (deleted, or renamed away): deleted only once it has stayed gone for GONE (an
  editor's rename to a backup, then a new file, puts it back within milliseconds).
A pass waits until every followed file is ready, so one configuration never mixes a finished
file with a half-written one. Destroying maps waits longer: until no file has been written in
place, or has vanished, for STABLE (see sync/guard.py).
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from typing import Callable, Iterable

from kmesh_apply.sync.inotify import (IN_ATTRIB, IN_CLOSE_WRITE, IN_CREATE, IN_DELETE, IN_ISDIR, IN_MODIFY,
                                      IN_MOVED_FROM, IN_MOVED_TO, IN_Q_OVERFLOW, Event)

SETTLE = 0.2  # seconds a file written in place must stay unchanged after its writer closed it
WRITER_QUIET = 2.0  # seconds without a write after which a file not closed counts as written
GONE = 1.0  # seconds a vanished file must stay gone to count as deleted
STABLE = 1.0  # seconds no file may have been written in place or vanished, before maps are destroyed

FILE, EVERYTHING = "file", "everything"  # what an event's path is to the watcher (see `Settling.kind`)


@dataclass
class _State:
    since: float  # time of the file's last event
    settle: float = 0.0  # how long it must then stay unchanged (0: complete as it is)
    writing: bool = False  # written since its writer last closed it
    in_place: bool = False  # its last change was made in place or by vanishing (not by a rename into place)

    def ready_at(self) -> float:
        return self.since + (max(self.settle, WRITER_QUIET) if self.writing else self.settle)


class Settling:
    """Which followed files changed since they were last read, and when they may be read."""

    def __init__(self, kind: Callable[[str], str | None]):
        """`kind(path)`: FILE for a config file, EVERYTHING for a path whose change may move every
        file (a directory, a ConfigMap's `..data` link), None for anything else (editors' swap files)."""
        self.kind = kind
        self.states: dict[str, _State] = {}
        self.touched: set[str] = set()  # changed since last taken
        self.everything = False  # every file must be listed again (events were lost, a directory changed)

    def observe(self, events: Iterable[Event], now: float) -> set[str]:
        """Take events in; the followed paths they name (with "" when events were lost)."""
        seen = set()
        for e in events:
            if e.mask & IN_Q_OVERFLOW:
                self.lost(now)
                seen.add("")
                continue
            kind = self.kind(e.path)
            if kind is None:
                continue
            seen.add(e.path)
            self.touched.add(e.path)
            if kind == EVERYTHING or e.mask & IN_ISDIR:
                self.everything = True
            state = self.states.setdefault(e.path, _State(now))
            state.since = now
            if e.mask & IN_MODIFY:
                state.writing, state.settle, state.in_place = True, SETTLE, True
            elif e.mask & IN_CLOSE_WRITE:
                state.writing, state.settle, state.in_place = False, SETTLE, True
            elif e.mask & IN_MOVED_TO:
                state.writing, state.settle, state.in_place = False, 0.0, False
            elif e.mask & (IN_MOVED_FROM | IN_DELETE):
                state.writing, state.settle, state.in_place = False, GONE, True
            elif e.mask & IN_CREATE:
                opened = _opened_by_creator(e.path)  # a new file its creator writes, or a link: complete
                state.writing, state.settle, state.in_place = opened, SETTLE if opened else 0.0, opened
            elif e.mask & IN_ATTRIB:
                pass  # times or mode changed: read again, within the window already running
        return seen

    def lost(self, now: float, path: str = "") -> None:
        """Events were lost (the queue overflowed, or a watched directory went away): every file is
        listed again once nothing has changed for a while."""
        self.everything = True
        for state in self.states.values():
            state.since, state.settle, state.writing, state.in_place = now, SETTLE, False, True
        if path:
            self.states[path] = _State(now, GONE, False, True)
            self.touched.add(path)

    def pending(self) -> bool:
        return self.everything or bool(self.touched)

    def ready_at(self) -> float:
        """When every followed file may be read (a past time: now)."""
        return max((s.ready_at() for s in self.states.values()), default=0.0)

    def stable_at(self) -> float:
        """When no file will have been written in place or vanished for STABLE (destroys may run then)."""
        return max((s.since + STABLE for s in self.states.values() if s.in_place), default=0.0)

    def waiting_for(self, now: float) -> list[str]:
        """The files not ready yet, for a log line."""
        return sorted(p for p, s in self.states.items() if s.ready_at() > now)

    def take(self, now: float) -> set[str] | None:
        """The changed paths to read (None: list every file), forgetting them; files settled long ago are forgotten too."""
        touched = None if self.everything else set(self.touched)
        self.touched.clear()
        self.everything = False
        self.states = {p: s for p, s in self.states.items() if max(s.ready_at(), s.since + STABLE) > now}
        return touched

    def give_back(self, touched: set[str] | None) -> None:
        """Paths taken for a read that was dropped (a file changed while it was read): read them next time."""
        if touched is None:
            self.everything = True
        else:
            self.touched |= touched


def _opened_by_creator(path: str) -> bool:
    """Whether a file just created is being written by its creator: a regular file of one link
    (open(O_CREAT)), not a symbolic or hard link to content that is already complete."""
    try:
        st = os.lstat(path)
    except OSError:
        return False  # gone already: its deletion event follows
    return stat.S_ISREG(st.st_mode) and st.st_nlink == 1
