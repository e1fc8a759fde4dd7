"""`kmesh-apply watch`: keep a pin root equal to its config files for as long as it runs.

One loop, woken by whichever comes first: a change in a watched directory (grouped by
watchfiles: it answers about 2-4 ms after the last event of a burst, at most 50 ms after
the first), a failed flush due again, the drift timer, a watchdog ping, or a signal.
Changes that arrive while an apply runs are taken together by the next pass.
"""

from __future__ import annotations

import signal
import threading
import time
from types import FrameType
from typing import Sequence

from kmesh_apply.config.model import resolve_pin_root
from kmesh_apply.errors import ConfigError, Diagnostic, KmeshError
from kmesh_apply.executor import ApplyReport
from kmesh_apply.metrics import PrometheusRecorder, start_server
from kmesh_apply.plan.model import MapChange
from kmesh_apply.sync.files import ConfigFiles
from kmesh_apply.sync.log import Log
from kmesh_apply.sync.notify import Notifier
from kmesh_apply.sync.synchroniser import Synchroniser
from kmesh_apply.wording import count

DEBOUNCE_MS = 50  # a burst is applied at most this long after its first event
STEP_MS = 2  # ... and this long after its last one (idle, the wake-ups cost about 1% of a core)
SHOWN_CHANGES = 8  # maps named in one log line


class _Wake:
    """What interrupts waiting for file events: a signal asked to stop or to re-read everything."""

    def __init__(self) -> None:
        self.stop = threading.Event()
        self.reread = threading.Event()

    def is_set(self) -> bool:
        return self.stop.is_set() or self.reread.is_set()

    def on_signal(self, signum: int, frame: FrameType | None) -> None:
        (self.reread if signum == signal.SIGHUP else self.stop).set()


PAST = {"create": "created", "update": "updated", "replace": "replaced", "destroy": "destroyed", "recover": "recovered"}


def describe(changes: list[MapChange]) -> str:
    """'a updated, b created and 3 more' for a log line."""
    if not changes:
        return "no changes"
    shown = [f"{c.name} {PAST.get(c.action, c.action)}" for c in changes[:SHOWN_CHANGES]]
    more = f" and {len(changes) - SHOWN_CHANGES} more" if len(changes) > SHOWN_CHANGES else ""
    return ", ".join(shown) + more


class Watcher:
    def __init__(self, paths: Sequence[str], pin_root: str | None, drift_interval: float, log: Log,
                 lock_timeout: float, notifier: Notifier | None = None, metrics_addr: str | None = None,
                 allow_replace_in_use: bool = False):
        self.files = ConfigFiles(paths)
        self.pin_root_flag = pin_root
        self.drift_interval = drift_interval
        self.log = log
        self.lock_timeout = lock_timeout
        self.metrics_addr = metrics_addr
        self.allow_replace_in_use = allow_replace_in_use
        self.notifier = notifier or Notifier()
        self.wake = _Wake()
        self.sync: Synchroniser | None = None

    def run(self) -> int:
        from watchfiles._rust_notify import RustNotify

        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(signum, self.wake.on_signal)
        dirs = self.files.directories()
        # Watch before the first load, so that a change made meanwhile is not missed.
        with RustNotify(dirs, False, False, 50, False, False) as notify:
            try:
                first, broken = self.files.load(everything=True), None
            except ConfigError as e:
                first, broken = None, e
            root = resolve_pin_root(self.pin_root_flag, self.files.config)
            addr = self.metrics_addr
            recorder = PrometheusRecorder(root) if addr is not None else None
            self.sync = Synchroniser(root, recorder=recorder, lock_timeout=self.lock_timeout,
                                     allow_replace_in_use=self.allow_replace_in_use)
            try:
                server = start_server(addr, self.sync, recorder) if addr is not None and recorder is not None else None
            except BaseException:
                self.sync.close()
                raise
            self.log.event("start", f"watching {', '.join(dirs)} for pin root {root}"
                                    + (f", metrics at {server.url}" if server is not None else ""),
                           pin_root=root, dirs=dirs, metrics=server.url if server is not None else None)
            if broken is not None:
                self._reject(broken)  # nothing applied; the fix is applied when it arrives
            if first is not None:
                self._apply(first[0], "start", first[1])
            self.notifier.ready(self._status())
            next_drift = time.monotonic() + self.drift_interval
            next_ping = time.monotonic()
            while not self.wake.stop.is_set():
                now = time.monotonic()
                if self.notifier.watchdog_interval is not None and now >= next_ping:
                    self.notifier.watchdog()
                    next_ping = now + self.notifier.watchdog_interval
                deadlines = [next_drift, next_ping if self.notifier.watchdog_interval is not None else next_drift]
                retry = self.sync.retry_in()
                if retry is not None:
                    deadlines.append(now + retry)
                timeout_ms = max(1, int((min(deadlines) - now) * 1000))
                events = notify.watch(DEBOUNCE_MS, STEP_MS, timeout_ms, self.wake)
                if self.wake.stop.is_set():
                    break
                if self.wake.reread.is_set():
                    self.wake.reread.clear()
                    self.log.event("reread", "SIGHUP: reading every file and the whole pin root again")
                    self._reconcile_files(everything=True)
                    next_drift = time.monotonic()
                elif isinstance(events, set) and events:
                    self._reconcile_files(touched={path for _, path in events})
                retry = self.sync.retry_in()
                if retry is not None and retry <= 0:
                    self._flush("retry")
                if time.monotonic() >= next_drift:
                    self._verify()
                    next_drift = time.monotonic() + self.drift_interval
        self.notifier.stopping()
        if server is not None:
            server.close()
        self.sync.close()
        self.log.event("stop", "stopped on a signal, with no apply left in flight")
        return 0

    def _status(self) -> str:
        assert self.sync is not None
        health = self.sync.health()
        return "in sync" if health.ok else "; ".join(health.reasons)

    def _load(self, everything: bool = False, touched: set[str] | None = None) -> tuple | None:
        try:
            return self.files.load(everything, touched)
        except ConfigError as e:
            self._reject(e)
            return None

    def _reject(self, e: ConfigError) -> None:
        self.log.event("config-error", f"configuration rejected, the last good state stays applied:\n{e}",
                       diagnostics=[str(d) for d in e.diagnostics])
        if self.sync is not None:
            self.sync.reject_config(e)

    def _reconcile_files(self, everything: bool = False, touched: set[str] | None = None) -> None:
        assert self.sync is not None
        loaded = self._load(everything, touched)
        if loaded is None:
            return
        config, changed_files = loaded
        root = resolve_pin_root(self.pin_root_flag, config)
        if root != self.sync.pin_root:
            self._reject(ConfigError([Diagnostic(f"pin_root is now {root}, but this watcher keeps {self.sync.pin_root}: "
                                                 "restart it to change pin roots", config.files[0] if config.files else "")]))
            return
        self._apply(config, "files", changed_files)

    def _apply(self, config, trigger: str, files: list[str]) -> None:  # noqa: ANN001
        assert self.sync is not None
        self._attempt(trigger, lambda: self.sync.apply(config), files=files)  # type: ignore[union-attr]

    def _flush(self, trigger: str) -> None:
        assert self.sync is not None
        self._attempt(trigger, self.sync.flush)

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
        self.notifier.status(self._status())

    def _attempt(self, trigger: str, action, files: list[str] | None = None) -> None:  # noqa: ANN001
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
        self.notifier.status(self._status())
