"""The seam between what changes maps (the synchroniser, a CLI run) and what watches it
(Prometheus metrics, `/healthz`, `show --usage`, logs).

The synchroniser reports what it does to an injected `Recorder` (a no-op by default),
and exposes its cache and status through `MetricsSource`; the metrics layer is one
adapter over these two, computed at scrape time. Neither side imports the other.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from kmesh_apply.config.model import ARRAY_TYPES
from kmesh_apply.state import LiveState

# Outcomes of one reconcile pass, the label values of kmesh_apply_reconciles_total.
OUTCOMES = ("success", "noop", "error")


@dataclass(frozen=True)
class MapUsage:
    """How full one map is, and what it costs the kernel."""

    name: str
    kind: str  # "inner" | "outer"
    type: str
    id: int
    entries: int  # entries present; for an outer map, slots that hold an inner map
    max_entries: int
    memlock_bytes: int | None  # the kernel's own figure (fdinfo `memlock:`), None when not read

    @property
    def fill(self) -> float:
        """entries / max_entries, 0..1."""
        return self.entries / self.max_entries if self.max_entries else 0.0


@dataclass
class Health:
    """Whether the pin root is being kept equal to its configuration; `reasons` say why not."""

    ok: bool = True
    reasons: list[str] = field(default_factory=list)
    last_success: float | None = None  # time.time() of the last successful reconcile


class Recorder(Protocol):
    """Told of every reconcile as it happens (counters and histograms live behind it)."""

    def reconcile(self, outcome: str, seconds: float) -> None: ...

    def drift(self, differences: int) -> None: ...

    def config_error(self) -> None: ...


class NoopRecorder:
    """The default recorder: records nothing."""

    def reconcile(self, outcome: str, seconds: float) -> None:
        pass

    def drift(self, differences: int) -> None:
        pass

    def config_error(self) -> None:
        pass


class MetricsSource(Protocol):
    """What a scrape reads: the maps as the synchroniser's cache holds them, and its health."""

    pin_root: str

    def usage(self) -> list[MapUsage]: ...

    def health(self) -> Health: ...


def map_usage(live: LiveState) -> list[MapUsage]:
    """Usage of every map of a live state, fullest first. An array's indexes all exist, so its
    entries are the indexes holding a non-zero value (the config's rule for unnamed indexes)."""
    out = []
    for name, m in live.maps.items():
        if m.is_outer:
            entries = len(m.slots)
        elif m.type in ARRAY_TYPES:
            entries = sum(1 for v in m.entries.values() if v.count(0) != len(v))
        else:
            entries = len(m.entries)
        out.append(MapUsage(name, "outer" if m.is_outer else "inner", m.type, m.id, entries, m.max_entries, m.memlock))
    return sorted(out, key=lambda u: (-u.fill, u.name))
