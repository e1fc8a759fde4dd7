"""The watcher's log: one line per event, as text for people or JSON for collectors."""

from __future__ import annotations

import json
import sys
import time
from typing import Any, TextIO

from kmesh_apply.terminal import printable_lines

LOG_FORMATS = ("text", "json")


class Log:
    def __init__(self, fmt: str = "text", stream: TextIO | None = None):
        self.fmt = fmt
        self.stream = stream or sys.stderr

    def event(self, event: str, message: str, **fields: Any) -> None:
        """`event` names what happened (reconcile, config-error, drift, ...); `message` says it for people."""
        now = time.time()
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now)) + f".{int(now * 1000) % 1000:03d}Z"
        if self.fmt == "json":  # ensure_ascii: every character past ASCII is escaped
            line = json.dumps({"time": stamp, "event": event, "message": message, **fields}, default=str)
        else:  # names, paths and values in a message may come from others' files and pins: made printable,
            # and the message's further lines indented, so that none of them passes for an event of its own
            line = f"{stamp} {event}: {printable_lines(message)}".replace("\n", "\n  ")
        print(line, file=self.stream, flush=True)
