"""Per-map status as plain data, and when to try a failed flush again.

The API, the logs, `/healthz` and the metrics all read the same `MapStatus` values.
"""

from __future__ import annotations

from dataclasses import dataclass

# A failed flush is tried again after 100 ms, doubling up to a minute (as Cilium's reconciler does).
BACKOFF_MIN = 0.1
BACKOFF_MAX = 60.0

APPLIED, PENDING, FAILED, HELD = "applied", "pending", "failed", "held"  # held: a destroy the guard keeps for now


@dataclass(frozen=True)
class MapStatus:
    """Where one map of the desired state stands: applied, pending (not flushed yet) or failed; or
    a map the desired state no longer names that the destroy guard keeps for now (held, `error` says why)."""

    state: str
    error: str | None = None
    attempts: int = 0  # failed flushes in a row that included this map
    since: float = 0.0  # time.time() of the last change of state


def backoff(attempts: int) -> float:
    """Seconds to wait before attempt `attempts + 1`."""
    return min(BACKOFF_MIN * 2 ** max(attempts - 1, 0), BACKOFF_MAX)
