"""The file events `watch` starts from: watchfiles' RustNotify on the followed directories.

Each wait gives the changes of one burst as a set of (added | modified | deleted, path): RustNotify
returns STEP after the burst's last event, DEBOUNCE after its first at most. The set has no order
and nothing for a writer closing a file; sync/settle.py decides from it and from the file system
as it is. Directories are watched, not files (a watched file is lost at its first atomic save),
and not recursively. A directory removed or renamed away is reported as deleted and is not watched
again when it comes back (its watch would even follow it elsewhere), so the watch is started afresh
then; changes made meanwhile are not reported, which `Batch.fresh` says.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from typing import Protocol, Sequence

# the Rust watcher itself: watchfiles.watch() has no timeout per wait
from watchfiles._rust_notify import RustNotify, WatchfilesRustInternalError

from kmesh_apply.sync.settle import DELETED

DEBOUNCE_MS = 50  # a burst is handed over at most this long after its first event
STEP_MS = 2  # ... and this long after its last one (a rename's two events, a directory's many); also how
             # often RustNotify wakes while it waits (idle, well under 1% of a core)
NOTHING_WATCHED_STEP = 0.05  # seconds between looks for a directory to come back, when none exists


class Interrupt(Protocol):
    def is_set(self) -> bool:
        """True when a wait must end now (a signal asked for something); RustNotify then drops the burst it was taking."""


@dataclass
class Batch:
    changes: set[tuple[int, str]] = field(default_factory=set)
    fresh: bool = False  # changes may have been missed (a wait interrupted, the watch started afresh): look at every file
    lost: set[str] = field(default_factory=set)  # watched directories that went away in this batch


class DirectoryEvents:
    """The followed directories' changes, wait by wait; `lost`: directories not watched now (gone)."""

    def __init__(self, directories: Sequence[str]):
        self.directories = list(directories)
        self.lost: set[str] = set()
        self._notify: RustNotify | None = None
        self._watching: list[str] = []
        self._start()

    def _start(self) -> None:
        """Watch every directory that exists now."""
        self.close()
        present = [d for d in self.directories if os.path.isdir(d)]
        while present:
            try:
                self._notify = RustNotify(present, False, False, 0, False, False)
                break
            except FileNotFoundError:  # one went away meanwhile
                present = [d for d in present if os.path.isdir(d)]
        self._watching = present
        self.lost = set(self.directories) - set(present)

    def wait(self, timeout: float, interrupt: Interrupt) -> Batch:
        """The next burst's changes, or none when `timeout` seconds pass first or `interrupt` is set."""
        if self._notify is None:  # nothing to watch: wait for a directory to come back
            end = time.monotonic() + timeout
            while not interrupt.is_set() and time.monotonic() < end:
                time.sleep(min(NOTHING_WATCHED_STEP, max(end - time.monotonic(), 0.0)))
            return Batch()
        try:
            got = self._notify.watch(DEBOUNCE_MS, STEP_MS, max(1, int(timeout * 1000 + 0.999)), interrupt)
        except WatchfilesRustInternalError:  # its watching thread failed (notify's error): changes were missed
            self._start()
            return Batch(fresh=True)
        if not isinstance(got, set):  # "timeout", or "stop"/"signal": then the burst being taken was dropped
            return Batch(fresh=got != "timeout")
        lost = {d for d in self._watching if (DELETED, d) in got}
        if lost:
            self._start()
            return Batch(got, fresh=True, lost=lost)
        return Batch(got)

    def rewatch(self) -> bool:
        """Watch again the directories that came back (True: started afresh, changes meanwhile were missed)."""
        if not any(os.path.isdir(d) for d in self.lost):
            return False
        self._start()
        return True

    def close(self) -> None:
        if self._notify is not None:
            self._notify.close()
            self._notify = None

    def __enter__(self) -> "DirectoryEvents":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
