"""systemd's notify protocol (Type=notify, WatchdogSec=), spoken without a systemd library:
datagrams of `KEY=value` lines sent to the socket named by $NOTIFY_SOCKET."""

from __future__ import annotations

import os
import socket


NEEDED_WAIT = 1.0  # seconds READY=1 and STOPPING=1 may wait for room: systemd acts on them


class Notifier:
    """Tells systemd when the watcher is ready, alive and stopping; does nothing outside systemd."""

    def __init__(self, environ: dict[str, str] | None = None):
        env = os.environ if environ is None else environ
        address = env.get("NOTIFY_SOCKET", "")
        self.address = "\0" + address[1:] if address.startswith("@") else address  # '@': an abstract socket
        usec = env.get("WATCHDOG_USEC", "")
        pid = env.get("WATCHDOG_PID", "")
        mine = not pid or pid == str(os.getpid())
        # Ping twice per period, as sd_watchdog_enabled(3) advises.
        self.watchdog_interval = int(usec) / 2e6 if usec.isdigit() and int(usec) > 0 and mine else None

    def send(self, *lines: str, wait: float = 0.0) -> None:
        """Send, waiting at most `wait` seconds for room in the receiver's queue (10 datagrams by
        default): a busy or absent reader never stops the watcher; a ping or status it misses is
        followed by the next one."""
        if not self.address:
            return
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as s:
            s.settimeout(wait)
            try:
                s.sendto("\n".join(lines).encode(), self.address)
            except OSError:
                pass  # systemd gone (or a stale variable), or its queue full: nothing to tell

    def ready(self, status: str) -> None:
        self.send("READY=1", f"STATUS={status}", wait=NEEDED_WAIT)

    def watchdog(self) -> None:
        self.send("WATCHDOG=1")

    def status(self, status: str) -> None:
        self.send(f"STATUS={status}")

    def stopping(self) -> None:
        self.send("STOPPING=1", wait=NEEDED_WAIT)
