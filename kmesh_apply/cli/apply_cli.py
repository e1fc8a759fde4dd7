"""`kmesh-apply`: validate, plan, apply, show, destroy, watch, schema.

Heavy modules (yaml, jsonschema, libbpf bindings) are imported inside the
commands so that `--help` stays instant.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Iterator, Optional

import typer

from kmesh_apply.cli.common import PinRootNoFileOption, PinRootOption, fail, json_text, make_app, run, say
from kmesh_apply.wording import count

if TYPE_CHECKING:
    from rich.progress import Progress, TaskID

    from kmesh_apply.metrics import RunMetrics
    from kmesh_apply.monitor import MapUsage
    from kmesh_apply.plan.model import Plan

app = make_app("kmesh-apply", "Declarative manager for eBPF map-in-map state: plan and apply YAML against the "
                              "pinned maps of a pin root.")

Files = Annotated[list[Path], typer.Argument(help="Config files (YAML or JSON), or directories of *.yaml/*.yml/*.json, merged.",
                                             show_default=False)]
AutoApprove = Annotated[bool, typer.Option("--auto-approve", help="Do not ask for confirmation.")]
LockTimeout = Annotated[float, typer.Option("--lock-timeout", help="Seconds to wait for another apply on the same pin root.")]
JsonOut = Annotated[bool, typer.Option("--json", help="Print JSON instead of text.")]
MetricsFile = Annotated[Optional[Path], typer.Option(
    "--metrics-file", help="Also write the run's metrics to this file (Prometheus text format, for node_exporter's "
                           "textfile collector), atomically; counters continue from the file's previous run.",
    show_default=False)]
AllowReplaceInUse = Annotated[bool, typer.Option(
    "--allow-replace-in-use", help="Replace or destroy maps even while loaded BPF programs hold them (they keep the "
                                   "old maps until reloaded; plan reports that as drift).")]


def _colour() -> bool:
    return sys.stdout.isatty() and "NO_COLOR" not in os.environ


def _load(files: list[Path], pin_root: Optional[str]):
    from kmesh_apply import api

    cfg = api.load_config(files)
    return cfg, api.resolve_pin_root(pin_root, cfg)


class _Progress:
    """A rich progress bar on stderr for long applies on a terminal; does nothing otherwise."""

    def __init__(self) -> None:
        self.bar: Progress | None = None
        self.task: TaskID | None = None

    def start(self, plan: "Plan") -> None:
        work = sum(len(getattr(s, "put", ())) + len(getattr(s, "set", ())) for s in plan.steps)
        if not sys.stderr.isatty() or work < 50_000:
            return
        from rich.console import Console
        from rich.progress import Progress

        bar = self.bar = Progress(console=Console(stderr=True), transient=True)
        self.task = bar.add_task("applying", total=len(plan.steps))
        bar.start()

    def tick(self, step: object) -> None:
        if self.bar is not None and self.task is not None:
            self.bar.advance(self.task)

    def stop(self) -> None:
        if self.bar is not None:
            self.bar.stop()


def _confirm(auto_approve: bool, action: str):
    def ask(plan: "Plan") -> bool:
        from kmesh_apply.plan.render import render_text

        typer.echo(render_text(plan, color=_colour()), nl=False)
        if auto_approve:
            return True
        if not sys.stdin.isatty():
            fail(f"refusing to {action} without confirmation: stdin is not a terminal; pass --auto-approve")
        answer = typer.prompt(f"\nDo you want to {action}? Only 'yes' will be accepted to approve", default="",
                              show_default=False)
        if answer.strip() != "yes":
            typer.echo(f"{action.capitalize()} cancelled.")
            return False
        return True

    return ask


def _report(plan: "Plan", report, action: str = "apply") -> None:
    c = plan.counts
    first = "".join(f"{c[k]} {word}, " for k, word in (("migrate", "migrated"), ("rename", "renamed")) if c[k])
    typer.echo(f"\n{action.capitalize()} complete! Maps: {first}{c['create']} created, {c['update']} updated, "
               f"{c['destroy']} destroyed ({count(report.entries_written, 'entry', 'entries')} written, "
               f"{report.entries_deleted} deleted, {count(report.slots_set, 'slot')} set in {report.seconds:.2f}s).")
    for m in report.migrations:
        typer.echo(f"Migrated '{m.map}': {count(m.entries, 'entry', 'entries')}, then "
                   f"{count(m.caught_up, 'entry', 'entries')} written meanwhile; writes to the old map in the last "
                   f"{m.window_seconds * 1000:.1f} ms before the switch were not carried over.")


@contextlib.contextmanager
def _metrics(path: Optional[Path], pin_root: Optional[str], reconciling: bool) -> Iterator[Optional["RunMetrics"]]:
    """With --metrics-file, write the run's metrics however the run ends (errors included)."""
    if path is None:
        yield None
        return
    from kmesh_apply import api
    from kmesh_apply.metrics import RunMetrics

    run = RunMetrics(path, api.resolve_pin_root(pin_root), reconciling)
    try:
        yield run
    except BaseException as e:
        run.finish(e, api.usage)
        raise
    run.finish(None, api.usage)


def _converge(cfg, pin_root: str, auto_approve: bool, lock_timeout: float, action: str,
              allow_replace_in_use: bool = False):
    """Plan, confirm and apply; the apply's report, or None when nothing was applied."""
    from kmesh_apply import api

    ask = _confirm(auto_approve, action)
    progress = _Progress()

    def confirm(plan: "Plan") -> bool:
        if not ask(plan):
            return False
        progress.start(plan)
        return True

    try:
        plan, report = api.converge(cfg, pin_root, confirm=confirm, lock_timeout=lock_timeout,
                                    allow_replace_in_use=allow_replace_in_use, on_step=progress.tick)
    finally:
        progress.stop()
    if report is not None:
        _report(plan, report, action)
    elif not plan.has_changes:
        typer.echo(api.render_text(plan), nl=False)
    return report


@app.command()
def validate(files: Files, pin_root: PinRootOption = None) -> None:
    """Check config files offline (schema and semantics); the kernel is not touched."""
    from kmesh_apply.config.model import PLAIN_SECTION

    cfg, _ = _load(files, pin_root)
    entries = sum(len(m.entries) for m in cfg.inner_maps.values()) + sum(len(m.slots) for m in cfg.outer_maps.values())
    plain = sum(1 for m in cfg.inner_maps.values() if m.section == PLAIN_SECTION)
    maps = f"{count(plain, 'map')}, " if plain else ""
    typer.echo(f"Configuration valid: {maps}{count(len(cfg.inner_maps) - plain, 'inner map')}, "
               f"{count(len(cfg.outer_maps), 'outer map')}, {count(entries, 'entry', 'entries')}.")


@app.command()
def plan(
    files: Files,
    pin_root: PinRootOption = None,
    detailed_exitcode: Annotated[bool, typer.Option("--detailed-exitcode", help="Exit 0 for no changes, 2 for changes "
                                                   "or programs still holding replaced or destroyed maps, 1 for errors.")] = False,
    json_out: JsonOut = False,
    out: Annotated[Optional[Path], typer.Option("--out", help="Save the plan to this file, for `apply PLAN`.")] = None,
    metrics_file: MetricsFile = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Also say how the entries of large maps were compared "
                                                                  "with the kernel's: summed in the kernel, or read.")] = False,
) -> None:
    """Show what apply would change in the pin root (read-only)."""
    from kmesh_apply import api

    with _metrics(metrics_file, pin_root, reconciling=False) as run:
        cfg, root = _load(files, pin_root)
        if run:
            run.pin_root = root
            p, run.usage = api.plan_with_usage(cfg, root)
            run.drift = len(p.changes) + len(p.held_replaced)
        else:
            p = api.plan(cfg, root)
    if out is not None:
        from kmesh_apply.plan.saved import save_plan

        save_plan(p, out)
    if json_out:
        typer.echo(json_text(api.render_json(p)))
    else:
        typer.echo(api.render_text(p, color=_colour()), nl=False)
        if verbose and p.entry_checks:
            from kmesh_apply.plan.render import render_checks

            typer.echo("\nEntries of large maps compared with the kernel's:\n" + render_checks(p), nl=False)
        if out is not None:
            say(f"\nSaved the plan to {out}; apply it exactly with: kmesh-apply apply {out}")
    if detailed_exitcode and p.drift:
        raise typer.Exit(2)


def _saved_plan(files: list[Path]) -> Optional["Plan"]:
    """The saved plan if the single argument is one, else None. A saved plan starts with its format
    (Plan.to_saved), so a JSON config is not parsed here for nothing; a file that starts like one is
    read as one (signature, bounds, every field: `plan.saved`), and any fault in it is an error."""
    if len(files) != 1 or not files[0].is_file():
        return None
    from kmesh_apply.plan.saved import is_saved_plan, load_plan

    with open(files[0], "rb") as f:
        if not is_saved_plan(f.read(64)):
            return None
    return load_plan(files[0])


@app.command()
def apply(
    files: Annotated[list[Path], typer.Argument(help="Config files or directories, or one saved plan (from plan --out).", show_default=False)],
    pin_root: PinRootOption = None,
    auto_approve: AutoApprove = False,
    lock_timeout: LockTimeout = 10.0,
    metrics_file: MetricsFile = None,
    allow_replace_in_use: AllowReplaceInUse = False,
) -> None:
    """Make the pin root match the configuration (or perform a saved plan, if it is not stale)."""
    with _metrics(metrics_file, pin_root, reconciling=True) as run:
        if _apply(files, pin_root, auto_approve, lock_timeout, allow_replace_in_use, run) and run:
            run.outcome = "success"


def _apply(files: list[Path], pin_root: Optional[str], auto_approve: bool, lock_timeout: float,
           allow_replace_in_use: bool, run: Optional["RunMetrics"]) -> bool:
    """`apply`'s work; True if it changed something."""
    from kmesh_apply import api

    saved = _saved_plan(files)
    if saved is not None:
        if pin_root and os.path.abspath(pin_root) != os.path.abspath(saved.pin_root):
            fail(f"the saved plan is for pin root {saved.pin_root}, not {pin_root}")
        if run:
            run.pin_root = saved.pin_root
        progress = _Progress()

        def checked(plan: "Plan") -> None:
            """The plan that will run, steps and all, once it passed every check."""
            typer.echo(api.render_text(plan, color=_colour(), steps=True), nl=False)
            progress.start(plan)

        try:
            report = api.apply(saved, lock_timeout=lock_timeout, allow_replace_in_use=allow_replace_in_use,
                               on_step=progress.tick, on_checked=checked)
        finally:
            progress.stop()
        _report(saved, report)
        return saved.has_changes
    cfg, root = _load(files, pin_root)
    if run:
        run.pin_root = root
    return _converge(cfg, root, auto_approve, lock_timeout, "apply", allow_replace_in_use) is not None


@app.command()
def destroy(pin_root: PinRootNoFileOption = None, auto_approve: AutoApprove = False, lock_timeout: LockTimeout = 10.0,
            allow_replace_in_use: AllowReplaceInUse = False) -> None:
    """Remove every map kmesh-apply manages in the pin root (and the pin root, if nothing else is left in it);
    a map a loaded program holds only with --allow-replace-in-use."""
    from kmesh_apply import api

    _converge(None, api.resolve_pin_root(pin_root), auto_approve, lock_timeout, "destroy", allow_replace_in_use)


@app.command()
def show(
    pin_root: PinRootNoFileOption = None,
    json_out: JsonOut = False,
    usage: Annotated[bool, typer.Option("--usage", help="Instead of the config: how full each map is (entries / "
                                                        "max_entries) and its memlock, fullest first.")] = False,
    all_maps: Annotated[bool, typer.Option("--all", help="Also the maps pinned there by others, which kmesh-apply "
                                                         "does not manage (in the config: with adopt: true).")] = False,
) -> None:
    """Print the managed maps as a config that apply accepts (or, with --usage, how full each map is)."""
    from kmesh_apply import api
    from kmesh_apply.monitor import managed_usage

    root = api.resolve_pin_root(pin_root)
    if usage:
        found = api.usage(root)
        _show_usage(root, found if all_maps else managed_usage(found), json_out)
        return
    warn = lambda message: typer.echo(f"warning: {message}", err=True)  # noqa: E731
    if json_out:
        typer.echo(json_text(api.show(root, all_maps, warn=warn)))
        return
    api.show_yaml(root, sys.stdout.write, all_maps, warn=warn)


def _show_usage(root: str, usage: list["MapUsage"], json_out: bool) -> None:
    """JSON, a rich table on a terminal wide enough for it, else plain aligned text (names are never
    cut short); nearly full maps stand out."""
    from kmesh_apply import monitor

    if json_out:
        typer.echo(json_text({"pin_root": root, "maps": monitor.usage_json(usage)}))
        return
    rows = monitor.usage_rows(usage)
    if sys.stdout.isatty():
        from rich.console import Console
        from rich.table import Table
        from rich.text import Text

        from kmesh_apply.terminal import printable

        console = Console()
        # Each cell is padded by a space on either side and followed by a border.
        natural = 1 + sum(3 + max(len(r[i]) for r in [monitor.USAGE_COLUMNS, *rows]) for i in range(len(rows[0]))) \
            if rows else 0
        if natural <= console.width:
            # Text, not str: rich reads markup ([link=...], [bold]) in a str, and names come from others.
            table = Table(title=Text(f"Map usage in {printable(root)}"), caption=monitor.usage_total(usage))
            for i, column in enumerate(monitor.USAGE_COLUMNS):
                table.add_column(column, justify="right" if 3 <= i <= 6 else "left", no_wrap=True)
            for u, cells in zip(usage, rows):
                table.add_row(*map(Text, cells), style="bold red" if u.nearly_full else None)
            console.print(table)
            return
    typer.echo(monitor.usage_text(usage), nl=False)


@app.command()
def watch(
    paths: Annotated[list[Path], typer.Argument(help="Config files or directories to follow (directories are watched).",
                                                show_default=False)],
    pin_root: PinRootOption = None,
    drift_interval: Annotated[float, typer.Option("--drift-interval", min=0.01,
                                                  help="Seconds between checks of the kernel for changes made by "
                                                       "anyone else (corrected).")] = 60.0,
    log_format: Annotated[str, typer.Option("--log-format", help="text, or json for log collectors.")] = "text",
    lock_timeout: LockTimeout = 10.0,
    metrics_addr: Annotated[Optional[str], typer.Option(
        "--metrics-addr", help="Serve Prometheus metrics at http://HOST:PORT/metrics and health at /healthz.",
        show_default=False)] = None,
    allow_replace_in_use: AllowReplaceInUse = False,
    max_destroy: Annotated[int, typer.Option(
        "--max-destroy", min=0, help="Destroy at most this many maps at once because files changed; more are held "
                                     "(/healthz 503) until confirmed by SIGHUP, or a restart with a larger limit.")] = 10,
) -> None:
    """Keep the pin root equal to the files for as long as it runs (SIGTERM/SIGINT: stop, SIGHUP: re-read all,
    and confirm the destroys held for --max-destroy)."""
    from kmesh_apply.sync.log import LOG_FORMATS, Log
    from kmesh_apply.sync.watch import Watcher

    if log_format not in LOG_FORMATS:
        fail(f"--log-format must be one of {', '.join(LOG_FORMATS)}, not {log_format!r}")
    missing = [str(p) for p in paths if not p.exists()]
    if missing:
        fail(f"no such file or directory: {', '.join(missing)}")
    if metrics_addr is not None:
        from kmesh_apply.metrics import parse_address

        parse_address(metrics_addr)  # a bad address is refused before anything is applied
    watcher = Watcher([str(p) for p in paths], pin_root, drift_interval, Log(log_format), lock_timeout,
                      metrics_addr=metrics_addr, allow_replace_in_use=allow_replace_in_use, max_destroy=max_destroy)
    code = watcher.run()
    if watcher.abandoned:  # a read still runs in its thread: nothing of it is kept, so do not wait for it
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    raise typer.Exit(code)


@app.command()
def schema(pin_root: Annotated[Optional[str], typer.Option(
        "--pin-root", help="Taken, as by every command, and not needed: the schema is the same for every pin root.",
        show_default=False)] = None) -> None:
    """Print the JSON Schema of the config (for editors: yaml-language-server)."""
    from kmesh_apply.config import schema_text

    typer.echo(schema_text(), nl=False)


def main() -> None:
    run(app)
