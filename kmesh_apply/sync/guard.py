"""The destroy guard of `watch` (issue 21): maps are never destroyed on a guess.

A pass that would destroy maps because files changed, not because an operator asked:
- runs those destroys only once the files are stable: none written in place, held open by a
  writer, or vanished, for settle.STABLE seconds (a file truncated and half written, or moved
  away for a moment, names fewer maps than it will);
- runs at most `--max-destroy` of them at once: more is what an emptied directory, a lost
  ConfigMap key or a wrong path looks like, so they are held, /healthz answers 503 and the log
  asks an operator to confirm with SIGHUP (which confirms the maps held then), or to restart
  with a larger --max-destroy.
Everything else in the pass is applied; held maps stay as they are (and pinned) meanwhile.
The synchroniser asks its guard about every plan it makes (sync/synchroniser.py).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Collection, Protocol

from kmesh_apply.sync.settle import STABLE, Settling
from kmesh_apply.wording import count

# Routine edits destroy a service's maps, one or a few at a time; an emptied file, directory or
# ConfigMap destroys all of them (hundreds or thousands at Kmesh scale). 10 lets the former through.
DEFAULT_MAX_DESTROY = 10


@dataclass(frozen=True)
class Hold:
    """Why a map a plan would destroy is kept for now, and until when."""

    reason: str
    until: float | None  # time.monotonic() when it may go; None: when an operator confirms


class DestroyGuard(Protocol):
    def hold(self, doomed: Collection[str]) -> dict[str, Hold]:
        """Of the maps a plan would destroy, those to keep for now, and why."""


class FilesGuard:
    """The watcher's guard: stable files, and at most `max_destroy` destroys without confirmation."""

    def __init__(self, settling: Settling, max_destroy: int):
        self.settling = settling
        self.max_destroy = max_destroy
        self.confirmed: set[str] = set()  # maps an operator confirmed (SIGHUP) while they were held

    def confirm(self, names: Collection[str]) -> None:
        self.confirmed |= set(names)

    def hold(self, doomed: Collection[str]) -> dict[str, Hold]:
        self.confirmed &= set(doomed)  # a confirmation is for the maps held then, while they are doomed
        if not doomed:
            return {}
        now, stable = time.monotonic(), self.settling.stable_at()
        if stable > now:
            reason = (f"destroyed once no watched file has been written in place, held open by a writer or vanished "
                      f"for {STABLE:g} s ({stable - now:.1f} s from now)")
            return dict.fromkeys(doomed, Hold(reason, stable))
        unconfirmed = [n for n in doomed if n not in self.confirmed]
        if len(unconfirmed) > self.max_destroy:
            reason = (f"{count(len(unconfirmed), 'map')} would be destroyed because files changed, more than "
                      f"--max-destroy {self.max_destroy}: send SIGHUP (systemctl reload) to confirm, or restart "
                      "with a larger --max-destroy")
            return dict.fromkeys(unconfirmed, Hold(reason, None))
        return {}
