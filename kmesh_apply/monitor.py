"""The seam between what changes maps (the synchroniser, a CLI run) and what watches it
(Prometheus metrics, `/healthz`, `show --usage`, logs).

The synchroniser reports what it does to an injected `Recorder` (a no-op by default),
and exposes its cache and status through `MetricsSource`; the metrics layer is one
adapter over these two, computed at scrape time. Neither side imports the other.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

from kmesh_apply.config.model import NEARLY_FULL, can_fill, used_entries
from kmesh_apply.state import LiveState
from kmesh_apply.terminal import printable
from kmesh_apply.wording import count, human_bytes

# Outcomes of one reconcile pass, the label values of kmesh_apply_reconciles_total.
OUTCOMES = ("success", "noop", "error")
# The kind of a map pinned in the pin root by someone else (others: "inner", "outer").
UNMANAGED = "unmanaged"


@dataclass(frozen=True)
class MapUsage:
    """How full one map is, and what it costs the kernel."""

    name: str
    kind: str  # "inner" (any map that is not an outer map) | "outer" | UNMANAGED
    type: str
    id: int
    entries: int | None  # entries present; for an outer map, slots that hold an inner map; None: unreadable
    max_entries: int
    memlock_bytes: int | None  # the kernel's own figure (fdinfo `memlock:`), None when not read
    programs: tuple[str, ...] = ()  # the loaded programs holding the map, as `ID:name`

    @property
    def fill(self) -> float:
        """entries / max_entries, 0..1 (0 when the entries cannot be read). For an array: the share of its
        indexes holding a non-zero value."""
        return self.entries / self.max_entries if self.max_entries and self.entries else 0.0

    @property
    def can_fill(self) -> bool:
        """Whether inserts can fail for want of room (arrays cannot fill up: every index exists)."""
        return can_fill(self.type)

    @property
    def nearly_full(self) -> bool:
        return self.can_fill and self.fill >= NEARLY_FULL


@dataclass
class Health:
    """Whether the pin root is being kept equal to its configuration; `reasons` say why not
    (the last apply failed, the configuration is broken, drift could not be corrected)."""

    ok: bool = True
    reasons: list[str] = field(default_factory=list)
    last_success: float | None = None  # time.time() of the last reconcile whose outcome was success or noop


class Recorder(Protocol):
    """Told of every reconcile as it happens (counters and histograms live behind it)."""

    def reconcile(self, outcome: str, seconds: float) -> None:
        """One reconcile pass ended with `outcome` (one of OUTCOMES) after `seconds`."""

    def drift(self, differences: int) -> None:
        """A check of the kernel found `differences` (> 0) made by someone else, before they are
        corrected; the apply that corrects them is reported through `reconcile` afterwards."""

    def config_error(self) -> None:
        """The configuration could not be loaded or failed validation."""


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


@dataclass
class Snapshot:
    """A MetricsSource over data taken once: a CLI run's final state, or a test's."""

    pin_root: str
    maps: list[MapUsage] = field(default_factory=list)
    status: Health = field(default_factory=Health)

    def usage(self) -> list[MapUsage]:
        return self.maps

    def health(self) -> Health:
        return self.status


def map_usage(live: LiveState) -> list[MapUsage]:
    """Usage of every map of a live state (the unmanaged ones of kind UNMANAGED), fullest first."""
    out = []
    for managed, maps in ((True, live.maps), (False, live.unmanaged)):
        for name, m in maps.items():
            entries = len(m.slots) if m.is_outer else None if m.unreadable else used_entries(m.type, m.entries)
            programs = tuple(f"{p.id}:{p.name}" for p in live.holders.get(m.id, ()))
            kind = UNMANAGED if not managed else "outer" if m.is_outer else "inner"
            out.append(MapUsage(name, kind, m.type, m.id, entries, m.max_entries, m.memlock, programs))
    return sorted(out, key=lambda u: (-u.fill, u.name))


def managed_usage(usage: list[MapUsage]) -> list[MapUsage]:
    """The usage of the maps the tool manages (what `show --usage` lists without --all)."""
    return [u for u in usage if u.kind != UNMANAGED]


def usage_json(usage: list[MapUsage]) -> list[dict[str, Any]]:
    """`show --usage --json`: one object per map, fill as a ratio 0..1 (`can_fill`: false for arrays)."""
    return [{**asdict(u), "fill": round(u.fill, 6), "can_fill": u.can_fill} for u in usage]


USAGE_COLUMNS = ("map", "kind", "type", "entries", "max_entries", "fill", "memlock", "programs")


def usage_rows(usage: list[MapUsage]) -> list[tuple[str, ...]]:
    """The cells of `show --usage`, fullest first; a nearly full map's fill is marked with `!` (never an array's).
    Names are made printable: a map someone else pinned in the pin root is named by them."""
    return [(printable(u.name), u.kind, u.type, "-" if u.entries is None else str(u.entries), str(u.max_entries),
             "-" if u.entries is None else f"{u.fill * 100:.1f}%{' !' if u.nearly_full else ''}",
             human_bytes(u.memlock_bytes),
             printable(", ".join(u.programs)) or "-")
            for u in usage]


def usage_total(usage: list[MapUsage]) -> str:
    memlock = sum(u.memlock_bytes or 0 for u in usage)
    entries = sum(u.entries or 0 for u in usage if u.kind == "inner")
    return f"{count(len(usage), 'map')}, {count(entries, 'entry', 'entries')} in inner maps, {human_bytes(memlock)} memlock"


def usage_text(usage: list[MapUsage]) -> str:
    """`show --usage` as plain aligned text (for pipes and logs)."""
    rows = [USAGE_COLUMNS, *usage_rows(usage)]
    widths = [max(len(r[i]) for r in rows) for i in range(len(USAGE_COLUMNS))]
    right = {3, 4, 5, 6}
    lines = ["  ".join(c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths))).rstrip()
             for r in rows]
    return "\n".join(lines + [usage_total(usage)]) + "\n"
