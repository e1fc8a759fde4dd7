"""Prometheus metrics (contract section 7): a recorder of reconciles, the families a scrape
computes from a `MetricsSource`, an HTTP endpoint (`/metrics`, `/healthz`) and the
textfile a CLI run leaves for node_exporter.

A scrape never walks maps: it formats what the source already holds. The per-map
families are written directly rather than through prometheus_client's generic writer,
which is 13x slower on the 20,000 samples of 5,000 maps (bench/scrape.py).
"""

from __future__ import annotations

import logging
import threading
import time
from bisect import bisect_left
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

from prometheus_client import generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.utils import floatToGoString

from kmesh_apply.errors import ConfigError, KmeshError
from kmesh_apply.monitor import OUTCOMES, UNMANAGED, Health, MapUsage, MetricsSource, Snapshot
from kmesh_apply.terminal import printable, shown
from kmesh_apply.private import write_private

# Reconcile durations: from a no-op pass on a small pin root to a large first apply.
BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
RECONCILES = "kmesh_apply_reconciles"
DURATION = "kmesh_apply_reconcile_duration_seconds"
DRIFT_EVENTS = "kmesh_apply_drift_events"
DRIFT_DIFFERENCES = "kmesh_apply_drift_differences"
CONFIG_ERRORS = "kmesh_apply_config_errors"
LAST_DRIFT = "kmesh_apply_last_drift_timestamp_seconds"
LAST_SUCCESS = "kmesh_apply_last_success_timestamp_seconds"


class PrometheusRecorder:
    """A `monitor.Recorder` that is also a prometheus_client collector: counters of reconciles
    by outcome, their durations, drift found and configuration errors, for one pin root.
    With a `registry` it registers itself there; start_server and write_textfile need none."""

    def __init__(self, pin_root: str, registry: Any = None) -> None:
        self.pin_root = pin_root
        self._lock = threading.Lock()
        self._reconciles = dict.fromkeys(OUTCOMES, 0.0)
        self._buckets = [0.0] * (len(BUCKETS) + 1)  # per bucket, not cumulative; the last is +Inf
        self._duration_sum = 0.0
        self._drift_events = 0.0
        self._drift_differences = 0.0
        self._config_errors = 0.0
        self._last_drift: float | None = None
        if registry is not None:
            registry.register(self)

    def reconcile(self, outcome: str, seconds: float) -> None:
        if outcome not in OUTCOMES:
            raise ValueError(f"reconcile outcome {outcome!r} is not one of {', '.join(OUTCOMES)}")
        with self._lock:
            self._reconciles[outcome] += 1
            self._buckets[bisect_left(BUCKETS, seconds)] += 1
            self._duration_sum += seconds

    def drift(self, differences: int) -> None:
        if differences <= 0:
            return
        with self._lock:
            self._drift_events += 1
            self._drift_differences += differences
            self._last_drift = time.time()

    def config_error(self) -> None:
        with self._lock:
            self._config_errors += 1

    def restore(self, samples: dict[tuple[str, str], float]) -> None:
        """Continue the counters of an earlier run (see `read_textfile`), so they only ever grow."""
        with self._lock:
            for outcome in OUTCOMES:
                self._reconciles[outcome] = samples.get((RECONCILES + "_total", outcome), 0.0)
            below = 0.0
            for i, le in enumerate([*map(floatToGoString, BUCKETS), "+Inf"]):
                cumulative = samples.get((DURATION + "_bucket", le), below)
                self._buckets[i], below = max(cumulative - below, 0.0), cumulative
            self._duration_sum = samples.get((DURATION + "_sum", ""), 0.0)
            self._drift_events = samples.get((DRIFT_EVENTS + "_total", ""), 0.0)
            self._drift_differences = samples.get((DRIFT_DIFFERENCES + "_total", ""), 0.0)
            self._config_errors = samples.get((CONFIG_ERRORS + "_total", ""), 0.0)
            self._last_drift = samples.get((LAST_DRIFT, ""))

    def collect(self) -> Iterator[Metric]:
        root = [self.pin_root]
        with self._lock:
            reconciles = CounterMetricFamily(RECONCILES, "Reconcile passes (applies), by outcome.",
                                             labels=["pin_root", "outcome"])
            for outcome, n in self._reconciles.items():
                reconciles.add_metric([*root, outcome], n)
            duration = HistogramMetricFamily(DURATION, "Wall time of reconcile passes.", labels=["pin_root"])
            cumulative, buckets = 0.0, []
            for le, n in zip([*map(floatToGoString, BUCKETS), "+Inf"], self._buckets):
                cumulative += n
                buckets.append((le, cumulative))
            duration.add_metric(root, buckets, self._duration_sum)
            families: list[Metric] = [reconciles, duration]
            for name, doc, value in (
                (DRIFT_EVENTS, "Checks of the kernel that found maps changed by someone else.", self._drift_events),
                (DRIFT_DIFFERENCES, "Differences those checks found.", self._drift_differences),
                (CONFIG_ERRORS, "Configurations that could not be loaded or failed validation.", self._config_errors),
            ):
                counter = CounterMetricFamily(name, doc, labels=["pin_root"])
                counter.add_metric(root, value)
                families.append(counter)
            if self._last_drift is not None:
                last_drift = GaugeMetricFamily(LAST_DRIFT, "When drift was last found (Unix time).", labels=["pin_root"])
                last_drift.add_metric(root, self._last_drift)
                families.append(last_drift)
        yield from families


# ---- the families a scrape computes from a MetricsSource ----------------------------------


def _escape(value: str) -> str:
    """A label value as the text format writes it; made printable first (a map someone else pinned is
    named by them, and /metrics is read in terminals too)."""
    value = printable(value)
    if "\\" in value or '"' in value:
        return value.replace("\\", r"\\").replace('"', r"\"")
    return value


def _family(out: list[str], name: str, doc: str, samples: list[str]) -> None:
    out.append(f"# HELP {name} {doc}\n# TYPE {name} gauge\n")
    out.extend(samples)


def map_families(root: str, usage: list[MapUsage]) -> bytes:
    """The per-map gauges of the managed maps; `root` is the pin_root label, already escaped."""
    usage = [u for u in usage if u.kind != UNMANAGED]
    labels = [f'{{map="{_escape(u.name)}",pin_root="{root}"}} ' for u in usage]
    out: list[str] = []
    _family(out, "kmesh_apply_map_entries", "Entries a map holds (outer maps: slots holding an inner map; "
            "arrays: indexes holding a non-zero value; none for maps whose entries cannot be read).",
            [f"kmesh_apply_map_entries{lab}{u.entries}\n" for lab, u in zip(labels, usage) if u.entries is not None])
    _family(out, "kmesh_apply_map_max_entries", "A map's max_entries.",
            [f"kmesh_apply_map_max_entries{lab}{u.max_entries}\n" for lab, u in zip(labels, usage)])
    _family(out, "kmesh_apply_map_fill_ratio", "entries / max_entries, 0 to 1 (not for arrays, which cannot fill up).",
            [f"kmesh_apply_map_fill_ratio{lab}{u.fill!r}\n" for lab, u in zip(labels, usage)
             if u.entries is not None and u.can_fill])
    _family(out, "kmesh_apply_map_memlock_bytes", "Bytes the kernel charges for a map (bpftool's bytes_memlock).",
            [f"kmesh_apply_map_memlock_bytes{lab}{u.memlock_bytes}\n" for lab, u in zip(labels, usage)
             if u.memlock_bytes is not None])
    return "".join(out).encode()


def pin_root_families(root: str, usage: list[MapUsage], health: Health) -> bytes:
    """The gauges of the whole pin root: totals (of the managed maps), health, last success."""
    label = f'pin_root="{root}"'
    unmanaged = sum(1 for u in usage if u.kind == UNMANAGED)
    usage = [u for u in usage if u.kind != UNMANAGED]
    outer = [u for u in usage if u.kind == "outer"]
    out: list[str] = []
    _family(out, "kmesh_apply_maps", "Maps pinned in the pin root, by kind (unmanaged: pinned there by others, "
                                     "left alone).",
            [f'kmesh_apply_maps{{kind="inner",{label}}} {len(usage) - len(outer)}\n',
             f'kmesh_apply_maps{{kind="outer",{label}}} {len(outer)}\n',
             f'kmesh_apply_maps{{kind="unmanaged",{label}}} {unmanaged}\n'])
    totals = (
        ("kmesh_apply_entries", "Entries of all inner maps of the pin root (of those whose entries can be read).",
         sum(u.entries or 0 for u in usage) - sum(u.entries or 0 for u in outer)),
        ("kmesh_apply_outer_slots_used", "Slots of all outer maps that hold an inner map.", sum(u.entries or 0 for u in outer)),
        ("kmesh_apply_outer_slots_max", "Slots all outer maps can hold (their max_entries).",
         sum(u.max_entries for u in outer)),
        ("kmesh_apply_memlock_bytes", "Bytes the kernel charges for all maps of the pin root.",
         sum(u.memlock_bytes or 0 for u in usage)),
        ("kmesh_apply_healthy", "1 while the pin root is kept equal to its configuration, else 0 (see /healthz).",
         int(health.ok)),
    )
    for name, doc, value in totals:
        _family(out, name, doc, [f"{name}{{{label}}} {value}\n"])
    if health.last_success is not None:
        _family(out, LAST_SUCCESS, "When a reconcile last succeeded (Unix time).",
                [f"{LAST_SUCCESS}{{{label}}} {health.last_success!r}\n"])
    return "".join(out).encode()


class Scrape:
    """Formats the scrapes of one source and recorder. The per-map families are kept and reused
    while the source's usage is unchanged, the common case between two scrapes: comparing
    5,000 maps' usage costs a fraction of formatting them again."""

    def __init__(self, source: MetricsSource, recorder: PrometheusRecorder) -> None:
        self.source = source
        self.recorder = recorder
        self._lock = threading.Lock()
        self._usage: list[MapUsage] | None = None
        self._maps = b""

    def __call__(self) -> bytes:
        usage = self.source.usage()
        health = self.source.health()
        root = _escape(self.source.pin_root)
        with self._lock:
            if usage != self._usage:
                self._maps = map_families(root, usage)
                self._usage = list(usage)
            maps = self._maps
        return generate_latest(self.recorder) + maps + pin_root_families(root, usage, health)  # type: ignore[arg-type]


# ---- node_exporter's textfile collector ---------------------------------------------------


def write_textfile(path: Path, source: MetricsSource, recorder: PrometheusRecorder) -> None:
    """Write a scrape to `path` atomically: aside in the same directory (a name the collector
    skips: it starts with a dot), then rename(2) over it, so node_exporter never reads half a file;
    mode 0600, never through a link (`private.write_private`)."""
    write_private(path, Scrape(source, recorder)())


# Families a run continues from the file the previous run left.
_CARRIED = (RECONCILES, DURATION, DRIFT_EVENTS, DRIFT_DIFFERENCES, CONFIG_ERRORS, LAST_DRIFT, LAST_SUCCESS)


def read_textfile(path: Path, pin_root: str) -> dict[tuple[str, str], float]:
    """The samples of `pin_root`'s counters and timestamps in a file written earlier, keyed by
    (sample name, outcome or le); empty if there is none or it is unreadable (counters restart)."""
    try:
        text = path.read_text()
    except (FileNotFoundError, UnicodeDecodeError):
        return {}
    wanted = "".join(line + "\n" for line in text.splitlines() if line.startswith(_CARRIED))
    out = {}
    try:
        for family in text_string_to_metric_families(wanted):
            for s in family.samples:
                if s.labels.get("pin_root") == pin_root:
                    out[(s.name, s.labels.get("outcome") or s.labels.get("le") or "")] = s.value
    except ValueError:
        return {}
    return out


@dataclass
class RunMetrics:
    """What one CLI run (`plan`, `apply`) writes with --metrics-file. The command fills in what
    it learns; `finish` writes the file, continuing the counters the previous run left there."""

    path: Path
    pin_root: str  # until the configuration names its own
    reconciling: bool  # apply: the run is a reconcile; plan: it only looks for drift
    started: float = field(default_factory=time.monotonic)
    outcome: str = "noop"  # apply: "success" once it changed something
    drift: int = 0  # plan: maps that differ from the configuration
    usage: list[MapUsage] | None = None  # plan: the maps as it read them

    def __post_init__(self) -> None:
        if not self.path.parent.is_dir():
            raise KmeshError(f"--metrics-file {self.path}: {self.path.parent} is not a directory")

    def finish(self, error: BaseException | None, read_usage: Callable[[str], list[MapUsage]]) -> None:
        """Write the run's metrics; `read_usage` reads the pin root's maps when the run has not."""
        previous = read_textfile(self.path, self.pin_root)
        recorder = PrometheusRecorder(self.pin_root)
        recorder.restore(previous)
        last_success = previous.get((LAST_SUCCESS, ""))
        if isinstance(error, ConfigError):
            recorder.config_error()
        if self.reconciling:
            recorder.reconcile("error" if error else self.outcome, time.monotonic() - self.started)
            if error is None:
                last_success = time.time()
        recorder.drift(self.drift)
        reasons = [str(error).splitlines()[0] if str(error) else type(error).__name__] if error else []
        try:
            maps = self.usage if self.usage is not None else read_usage(self.pin_root)
        except (KmeshError, OSError) as e:
            maps = []
            reasons.append(f"cannot read the pin root: {e}")
        try:
            write_textfile(self.path, Snapshot(self.pin_root, maps, Health(not reasons, reasons, last_success)), recorder)
        except KmeshError as e:
            raise KmeshError(f"--metrics-file: {e}") from None


# ---- the HTTP endpoint --------------------------------------------------------------------
#
# Served by waitress: one thread reads and writes every connection (no thread per client), a small
# pool runs the handler, and the limits below bound what any peer of the port can hold. A peer that
# holds every connection slot makes scrapes wait for its connections to time out; it cannot exhaust
# the watcher's threads, memory or file descriptors.

THREADS = 2  # handlers: a scrape formats bytes the source already holds
CONNECTION_LIMIT = 64  # open connections; Prometheus keeps one per scraper
HEADER_LIMIT = 8192  # bytes of request line and headers (a scrape sends a few hundred)
IDLE_TIMEOUT = 10  # seconds a connection may stay open with no request (Prometheus reconnects)
READ_TIMEOUT = 5  # seconds a request may take to arrive in full, however slowly it trickles in


def parse_address(addr: str) -> tuple[str, int]:
    """HOST:PORT ([::1]:9464 for IPv6; an empty host means every interface) -> (host, port)."""
    host, sep, port = addr.rpartition(":")
    if not sep or not port.isdigit() or int(port) > 65535:
        raise KmeshError(f"metrics address {shown(addr)}: expected HOST:PORT, e.g. 127.0.0.1:9464 or [::1]:9464")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    return host or "0.0.0.0", int(port)


def healthz_text(health: Health) -> str:
    """`/healthz`'s body: `ok`, or each reason on a line (reasons quote no config value: see
    Diagnostic.summary), made printable."""
    return "ok\n" if health.ok else "".join(f"{printable(r)}\n" for r in health.reasons or ["unhealthy"])


class _App:
    """The WSGI application: GET (or HEAD) /metrics and /healthz."""

    def __init__(self, source: MetricsSource, recorder: PrometheusRecorder) -> None:
        self.source = source
        self.scrape = Scrape(source, recorder)

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
        path, method = environ.get("PATH_INFO", ""), environ.get("REQUEST_METHOD", "")
        if method not in ("GET", "HEAD"):
            status, body, kind = "405 Method Not Allowed", b"GET /metrics or /healthz\n", _TEXT
        elif path == "/metrics":
            status, body, kind = "200 OK", self.scrape(), CONTENT_TYPE
        elif path == "/healthz":
            health = self.source.health()
            status, body, kind = "200 OK" if health.ok else "503 Service Unavailable", healthz_text(health).encode(), _TEXT
        else:
            status, body, kind = "404 Not Found", b"not found: try /metrics or /healthz\n", _TEXT
        headers = [("Content-Type", kind), ("Content-Length", str(len(body)))]
        if method == "GET" and status.startswith("405"):
            headers.append(("Allow", "GET, HEAD"))
        start_response(status, headers)
        return [body] if method == "GET" else []


_TEXT = "text/plain; charset=utf-8"


def _waitress_server() -> type:
    """waitress's TCP server and channel, taught READ_TIMEOUT: waitress closes a connection idle for
    IDLE_TIMEOUT, but a client that sends a byte now and then is never idle (slowloris)."""
    from waitress.channel import HTTPChannel
    from waitress.server import TcpWSGIServer

    class Channel(HTTPChannel):  # type: ignore[misc]
        reading_since: float | None = None  # when the first byte of a request not yet read in full came

        def received(self, data: bytes) -> bool:
            if data and self.request is None and self.reading_since is None:
                self.reading_since = time.monotonic()
            done = super().received(data)
            if self.request is None:  # every request that arrived is read in full
                self.reading_since = None
            return bool(done)

    class Server(TcpWSGIServer):  # type: ignore[misc]
        channel_class = Channel

        def maintenance(self, now: float) -> None:
            super().maintenance(now)
            cutoff = time.monotonic() - READ_TIMEOUT
            for channel in list(self.active_channels.values()):
                if channel.reading_since is not None and channel.reading_since < cutoff:
                    channel.will_close = True

    return Server


class MetricsServer:
    """A running endpoint; `address` is where it listens (the real port when 0 was asked)."""

    def __init__(self, host: str, port: int, app: _App) -> None:
        from waitress.adjustments import Adjustments
        from waitress.task import ThreadedTaskDispatcher

        logging.getLogger("waitress").addHandler(logging.NullHandler())  # not Python's last resort: stderr
        server_class = _waitress_server()
        adj = Adjustments(host=host, port=port, threads=THREADS, connection_limit=CONNECTION_LIMIT,
                          max_request_header_size=HEADER_LIMIT, max_request_body_size=0, channel_timeout=IDLE_TIMEOUT,
                          cleanup_interval=1, backlog=CONNECTION_LIMIT, asyncore_use_poll=True, ident="kmesh-apply",
                          expose_tracebacks=False)
        self._map: dict[int, Any] = {}
        dispatcher = ThreadedTaskDispatcher()
        dispatcher.set_thread_count(THREADS)
        self._server = server_class(app, self._map, dispatcher=dispatcher, adj=adj, sockinfo=adj.listen[0])
        self.address: tuple[str, int] = (str(self._server.effective_host), int(self._server.effective_port))
        self._thread = threading.Thread(target=self._server.run, name="kmesh-apply-metrics", daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        host, port = self.address
        return f"http://{f'[{host}]' if ':' in host else host}:{port}"

    def close(self) -> None:
        """Stop serving, drop every connection and release the port."""
        from waitress import wasyncore

        self._server.task_dispatcher.shutdown()
        # Closed by the loop's own thread, woken for it: from here it would sleep out its poll timeout.
        self._server.trigger.pull_trigger(lambda: wasyncore.close_all(self._map))
        self._thread.join()

    def __enter__(self) -> "MetricsServer":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def start_server(addr: str, source: MetricsSource, recorder: PrometheusRecorder) -> MetricsServer:
    """Serve /metrics and /healthz on HOST:PORT from a background thread."""
    host, port = parse_address(addr)
    try:
        return MetricsServer(host, port, _App(source, recorder))
    except OSError as e:
        raise KmeshError(f"cannot serve metrics on {addr}: {e.strerror or e}") from e
