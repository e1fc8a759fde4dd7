"""`kmesh-apply watch`: keep a pin root equal to its config files for as long as it runs.

One loop, woken by whichever comes first: a burst of file changes (watchfiles, sync/events.py),
a time to look at the files again (sync/settle.py: a writer done, a vanished file gone for good),
a failed flush due again, a held destroy due (sync/guard.py), the drift timer, a watchdog ping,
or a signal. A pass reads the changed files only when every followed file is ready; a large read
runs in a thread of its own, so that a long parse never keeps the loop (and with it SIGTERM) or
the metrics thread waiting. A read is dropped, and made again once the files are ready, when a
file it read changed meanwhile or a writer holds it. Changes that arrive while an apply runs are
taken together by the next pass. Every drift check, and whenever changes may have been missed,
the files' stats are compared with those of their last read, and what differs is settled as if
reported.
"""

from __future__ import annotations

import gc
import signal
import threading
import time
from dataclasses import dataclass
from types import FrameType
from typing import Any, Sequence

from kmesh_apply.config.model import Config, resolve_pin_root
from kmesh_apply.errors import ConfigError, Diagnostic, KmeshError
from kmesh_apply.executor import ApplyReport
from kmesh_apply.metrics import MetricsServer, PrometheusRecorder, start_server
from kmesh_apply.plan.model import MapChange
from kmesh_apply.sync.files import ConfigFiles
from kmesh_apply.sync.guard import DEFAULT_MAX_DESTROY, FilesGuard, Hold
from kmesh_apply.sync.events import Batch, DirectoryEvents
from kmesh_apply.sync.log import Log
from kmesh_apply.sync.notify import Notifier
from kmesh_apply.sync.settle import GONE, MODIFIED, WRITER_QUIET, Settling
from kmesh_apply.sync.synchroniser import Synchroniser
from kmesh_apply.wording import count

SHOWN_CHANGES = 8  # maps named in one log line
THREAD_FROM_BYTES = 1 << 20  # files to read from this size on are read in a thread of their own
READ_WAIT = 0.02  # seconds between looks at a read running in its own thread


class _Wake:
    """What a signal asks for; set, it ends the wait for file events (`is_set`, asked by RustNotify).
    Plain flags: handlers run in the loop's thread, between any two of its bytecodes, so they take no lock."""

    def __init__(self) -> None:
        self.stop = False
        self.reread = False

    def on_signal(self, signum: int, frame: FrameType | None) -> None:
        if signum == signal.SIGHUP:
            self.reread = True
        else:
            self.stop = True

    def is_set(self) -> bool:
        return self.stop or self.reread


PAST = {"create": "created", "update": "updated", "replace": "replaced", "destroy": "destroyed", "recover": "recovered"}


def describe(changes: list[MapChange]) -> str:
    """'a updated, b created and 3 more' for a log line."""
    if not changes:
        return "no changes"
    shown = [f"{c.name} {PAST.get(c.action, c.action)}" for c in changes[:SHOWN_CHANGES]]
    more = f" and {len(changes) - SHOWN_CHANGES} more" if len(changes) > SHOWN_CHANGES else ""
    return ", ".join(shown) + more


def _names(names: Sequence[str]) -> str:
    return ", ".join(names[:SHOWN_CHANGES]) + (f" and {len(names) - SHOWN_CHANGES} more" if len(names) > SHOWN_CHANGES else "")


@dataclass
class _Read:
    """The outcome of reading the files in the reading thread: what `ConfigFiles.load` returned or raised."""

    loaded: tuple[Config, list[str]] | None = None
    error: ConfigError | None = None
    crash: BaseException | None = None
    done: bool = False


class Watcher:
    def __init__(self, paths: Sequence[str], pin_root: str | None, drift_interval: float, log: Log,
                 lock_timeout: float, notifier: Notifier | None = None, metrics_addr: str | None = None,
                 allow_replace_in_use: bool = False, max_destroy: int = DEFAULT_MAX_DESTROY):
        self.files = ConfigFiles(paths)
        self.settling = Settling(self.files.kind)
        self.guard = FilesGuard(self.settling, max_destroy)
        self.pin_root_flag = pin_root
        self.drift_interval = drift_interval
        self.log = log
        self.lock_timeout = lock_timeout
        self.metrics_addr = metrics_addr
        self.allow_replace_in_use = allow_replace_in_use
        self.notifier = notifier or Notifier()
        self.wake = _Wake()
        self.sync: Synchroniser | None = None
        self.server: MetricsServer | None = None
        self.abandoned = False  # a read was still running when the watcher stopped (see the CLI)
        self._events: DirectoryEvents | None = None
        self._everything = True  # the next pass re-reads every file (the first, and after SIGHUP)
        self._held_files: list[str] = []  # files writers hold open for long, as last logged
        self._next_ping = self._next_drift = 0.0
        self._held_logged: dict[str, Hold] = {}

    # ---- the loop ------------------------------------------------------------------------------

    def run(self) -> int:
        # yaml-rs (0.1.6) must be imported first by a thread that lives on: imported first by a reading
        # thread that then ends, it crashed the next thread to parse (SIGSEGV, 11 runs in 12).
        import yaml_rs  # noqa: F401

        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(signum, self.wake.on_signal)
        try:
            # watched before the first read, so that no change made meanwhile is missed
            with DirectoryEvents(self.files.directories()) as events:
                self._events = events
                self.settling.everything = True
                self._loop()
        finally:
            self.notifier.stopping()
            if self.server is not None and not self.abandoned:  # else the process ends now: the port with it
                self.server.close()  # (its thread would wait for the abandoned read's hold on the interpreter)
            if self.sync is not None:
                self.sync.close()
        self.log.event("stop", "stopped on a signal, with no apply left in flight")
        return 0

    def _loop(self) -> None:
        while not self.wake.stop:
            now = time.monotonic()
            self._ping(now)
            if self.wake.reread:
                self.wake.reread = False
                self.log.event("reread", "SIGHUP: reading every file and the whole pin root again"
                               + self._confirm_held())
                self._everything = self.settling.everything = True
            due = self._due()
            if due is not None and due <= now:
                self._pass()
            if self.sync is not None and not self.wake.stop:
                self._timers()
            self._take(self._wait(self._timeout()))

    def _ping(self, now: float) -> None:
        if self.notifier.watchdog_interval is not None and now >= self._next_ping:
            self.notifier.watchdog()
            self._next_ping = now + self.notifier.watchdog_interval

    def _due(self) -> float | None:
        """When to look at the changed files again, to read them if every followed file is ready then."""
        if not self.settling.pending():
            return None
        return self.settling.ready_at()

    def _timeout(self) -> float:
        assert self._events is not None
        now = time.monotonic()
        deadlines = [now + 60.0]
        due = self._due()
        if due is not None:
            deadlines.append(due)
        if self._events.lost:
            deadlines.append(now + GONE)
        if self.notifier.watchdog_interval is not None:
            deadlines.append(self._next_ping)
        if self.sync is not None:
            deadlines.append(self._next_drift)
            for wait in (self.sync.retry_in(), self.sync.released_in()):
                if wait is not None:
                    deadlines.append(now + wait)
        return max(min(deadlines) - now, 0.0)

    def _wait(self, timeout: float) -> Batch:
        """The file changes of the next burst, or none when a signal comes or `timeout` passes first."""
        assert self._events is not None
        if self.wake.stop:
            return Batch()
        if self.wake.reread:  # taken at the loop's top; RustNotify keeps what comes meanwhile (a wait it
            time.sleep(min(timeout, READ_WAIT))  # would end at once, dropping it: this is one read's wait)
            return Batch()
        return self._events.wait(timeout, self.wake)

    def _take(self, batch: Batch) -> None:
        """A burst's changes into the settling state; when changes may have been missed, the files
        whose stats differ from their last read too."""
        assert self._events is not None
        now = time.monotonic()
        for d in sorted(batch.lost):  # removed or renamed away: every file is listed again once it stayed gone
            self.settling.lost(now, d)
        fresh = batch.fresh
        if self._events.lost and self._events.rewatch():  # came back: every file is listed again
            self.settling.lost(now)
            fresh = True
        self.settling.observe(batch.changes, now)
        if fresh and not self.wake.stop:
            self._rescan(now)
        self._log_held_files(now)

    def _rescan(self, now: float) -> None:
        """The files whose stats differ from their last read, settled as if reported modified (or deleted:
        a look finds them gone): changes file events did not report are not missed."""
        self.settling.observe([(MODIFIED, path) for path in self.files.differing()], now)

    def _log_held_files(self, now: float) -> None:
        """One line when files stay held open by writers for long (nothing is read meanwhile), and again
        whenever which files those are changes."""
        held = self.settling.held(now, WRITER_QUIET)
        if held != self._held_files:
            self._held_files = held
            why = (f"not reading the files yet: {_names(held)} held open for writing by a process for more than "
                   f"{WRITER_QUIET:g} s") if held else None
            if why is not None:
                self.log.event("waiting", why, files=held)
            if self.sync is not None:
                self.sync.files_held(why)

    def _timers(self) -> None:
        assert self.sync is not None
        retry = self.sync.retry_in()
        if retry is not None and retry <= 0:
            self._flush("retry")
        released = self.sync.released_in()
        if released is not None and released <= 0:
            self._flush("stable")
        if time.monotonic() >= self._next_drift:
            self._rescan(time.monotonic())  # changes file events never reported (watchfiles drops a lost event's notice)
            self._verify()
            self._next_drift = time.monotonic() + self.drift_interval

    # ---- a pass: read the files, then apply them -------------------------------------------------

    def _pass(self) -> None:
        now = time.monotonic()
        self.settling.look(now)  # as the files are now: unchanged for long enough, no writer holding one
        if self.settling.ready_at() > now:
            return
        everything, self._everything = self._everything, False
        touched = self.settling.take(now)
        read = self._read(everything, touched)
        if read is None:
            self._everything |= everything
            return
        if everything and self.sync is not None:
            self._next_drift = time.monotonic()  # SIGHUP: the whole pin root too
        first = self.sync is None
        if first:
            self._start(read)
        if read.error is not None:
            self._reject(read.error)
        elif read.loaded is not None:
            config, changed = read.loaded
            self._apply(config, "start" if first else "files", changed)
        if first:
            self.notifier.ready(self._status())

    def _read(self, everything: bool, touched: set[str] | None) -> _Read | None:
        """Load the changed files; large ones in a thread, while this one keeps taking file changes,
        pinging the watchdog and answering signals (small ones take less time than handing them over
        would, on a loaded host). None when stopped meanwhile, or when a file it read changed while it
        read or a writer holds it (dropped: read again once the file is ready)."""
        snapshot = self.files.snapshot()
        read = _Read()

        def work() -> None:
            gc.disable()  # a large file's parse makes millions of objects, none of them cycles: the
            try:          # collector would walk them again and again, holding every thread up for seconds
                read.loaded = self.files.load(everything, touched)
            except ConfigError as e:
                read.error = e
            except BaseException as e:  # noqa: BLE001  (raised again in the loop's thread)
                read.crash = e
            finally:
                gc.enable()
                read.done = True

        if self.files.bytes_to_read(everything, touched) < THREAD_FROM_BYTES:
            work()
        else:
            thread = threading.Thread(target=work, name="kmesh-watch-read", daemon=True)
            thread.start()
            while not read.done:
                if self.wake.stop:
                    self.abandoned = True
                    return None
                self._take(self._wait(READ_WAIT))
                self._ping(time.monotonic())
            thread.join()
        if read.crash is not None:
            raise read.crash
        names = read.loaded[1] if read.loaded is not None else touched if touched is not None else list(self.files.files)
        if self.files.moved(names, self.settling.open_for_writing):
            self.files.restore(snapshot)
            self.settling.give_back(touched)
            return None
        return read

    def _start(self, read: _Read) -> None:
        """After the first read: the pin root it names, the synchroniser, the metrics endpoint."""
        root = resolve_pin_root(self.pin_root_flag, read.loaded[0] if read.loaded is not None else None)
        recorder = PrometheusRecorder(root) if self.metrics_addr is not None else None
        self.sync = Synchroniser(root, recorder=recorder, lock_timeout=self.lock_timeout,
                                 allow_replace_in_use=self.allow_replace_in_use, guard=self.guard)
        if self.metrics_addr is not None and recorder is not None:
            self.server = start_server(self.metrics_addr, self.sync, recorder)
        self._next_drift = time.monotonic() + self.drift_interval
        dirs = self.files.directories()
        url = self.server.url if self.server is not None else None
        self.log.event("start", f"watching {', '.join(dirs)} for pin root {root}" + (f", metrics at {url}" if url else ""),
                       pin_root=root, dirs=dirs, metrics=url)

    def _status(self) -> str:
        assert self.sync is not None
        health = self.sync.health()
        return "in sync" if health.ok else "; ".join(health.reasons)

    def _reject(self, e: ConfigError) -> None:
        self.log.event("config-error", f"configuration rejected, the last good state stays applied:\n{e}",
                       diagnostics=[str(d) for d in e.diagnostics])
        if self.sync is not None:
            self.sync.reject_config(e)
            self.notifier.status(self._status())

    def _apply(self, config: Config, trigger: str, files: list[str]) -> None:
        assert self.sync is not None
        root = resolve_pin_root(self.pin_root_flag, config)
        if root != self.sync.pin_root:
            self._reject(ConfigError([Diagnostic(f"pin_root is now {root}, but this watcher keeps {self.sync.pin_root}: "
                                                 "restart it to change pin roots", config.files[0] if config.files else "")]))
            return
        sync = self.sync
        self._attempt(trigger, lambda: sync.apply(config), files=files)

    def _flush(self, trigger: str) -> None:
        assert self.sync is not None
        self._attempt(trigger, self.sync.flush)

    def _confirm_held(self) -> str:
        """SIGHUP confirms the destroys held for --max-destroy (the maps held now)."""
        if self.sync is None:
            return ""
        waiting = sorted(n for n, h in self.sync.held().items() if h.until is None)
        self.guard.confirm(waiting)
        return f"; confirming the destroy of {_names(waiting)}" if waiting else ""

    def _verify(self) -> None:
        assert self.sync is not None
        start = time.monotonic()
        try:
            drift = self.sync.verify()
        except (KmeshError, OSError) as e:  # the watcher lives on; the next pass or check retries
            self.log.event("error", f"drift check failed ({e}); retrying", trigger="drift")
            return
        if drift:
            self.log.event("drift", f"corrected {count(len(drift), 'map')} changed by someone else: {describe(drift)} "
                                    f"in {(time.monotonic() - start) * 1000:.1f} ms",
                           maps=[c.name for c in drift], seconds=time.monotonic() - start)
        self._log_held()
        self.notifier.status(self._status())

    def _attempt(self, trigger: str, action: Any, files: list[str] | None = None) -> None:
        """Run one reconcile and log one line about it; a kernel error is logged and retried later."""
        assert self.sync is not None
        start = time.monotonic()
        try:
            report: ApplyReport = action()
        except (KmeshError, OSError) as e:  # logged; retried after the backoff
            retry = self.sync.retry_in()
            self.log.event("error", f"{e}\nretrying in {max(retry or 0, 0):.1f}s", trigger=trigger,
                           retry_in=retry)
            self.notifier.status(self._status())
            return
        seconds = time.monotonic() - start
        changes = self.sync.last_changes
        about = f" ({', '.join(files)})" if files else ""
        self.log.event("reconcile", f"{trigger}{about}: {describe(changes)}; {count(report.entries_written, 'entry', 'entries')} "
                                    f"written, {report.entries_deleted} deleted, {count(report.slots_set, 'slot')} set "
                                    f"in {seconds * 1000:.1f} ms",
                       trigger=trigger, files=files or [], maps=[f"{c.name}:{c.action}" for c in changes],
                       entries_written=report.entries_written, entries_deleted=report.entries_deleted,
                       slots_set=report.slots_set, seconds=seconds)
        self._log_held()
        self.notifier.status(self._status())

    def _log_held(self) -> None:
        """One line whenever the destroys the guard keeps change."""
        assert self.sync is not None
        held = self.sync.held()
        if held.keys() == self._held_logged.keys():
            return
        self._held_logged = held
        by_reason: dict[str, list[str]] = {}
        for name, hold in sorted(held.items()):
            by_reason.setdefault(hold.reason, []).append(name)
        for reason, names in by_reason.items():
            self.log.event("destroy-held", f"not destroying {_names(names)} yet: {reason}", maps=names, reason=reason)
