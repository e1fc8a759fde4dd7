"""The in-process API behind `kmesh-apply`: what the CLI and the Ansible module call.

    cfg = load_config(["mesh.yaml"])            # or load_config(inline=...)
    root = resolve_pin_root(None, cfg)
    p = plan(cfg, root)                         # reads the live maps, changes nothing
    print(render_text(p)); p.counts             # {"create": 1, "update": 0, "destroy": 0}
    if p.has_changes: apply(p)                  # takes the pin root's lock, re-checks, performs the steps

Every failure raises a `kmesh_apply.errors.KmeshError`.
"""

from __future__ import annotations

import contextlib
import os
import queue
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable

from kmesh_apply.capacity import check_memory, plan_needs
from kmesh_apply.config import load_config
from kmesh_apply.config.model import Config, resolve_pin_root
from kmesh_apply.digests import DigestCheck
from kmesh_apply.entries import HASH_SUM_FROM, Entries
from kmesh_apply.errors import ReplaceInUseError, StalePlanError
from kmesh_apply.executor import ApplyReport, Executor
from kmesh_apply.kernel.maps import Map, possible_cpus
from kmesh_apply.kernel.progs import program_pins
from kmesh_apply.monitor import MapUsage, map_usage
from kmesh_apply.pinroot.guard import PinRoot, PinRootLock
from kmesh_apply.plan.model import Plan, RemovePin, Step, check_steps
from kmesh_apply.plan.planner import REMEMBER_FROM_ENTRIES, destroy_plan, make_plan
from kmesh_apply.plan.recheck import rederive
from kmesh_apply.plan.render import render_json, render_text
from kmesh_apply.pinroot.reader import read_live
from kmesh_apply.pinroot.records import Ownership
from kmesh_apply.pinroot.replaced import record_replaced
from kmesh_apply.resolve import prepare
from kmesh_apply.show import referenced_programs, show_document, write_yaml
from kmesh_apply.state import LiveState

if TYPE_CHECKING:
    from kmesh_apply.config.cache import Cache

__all__ = ["Config", "Plan", "ApplyReport", "resolve_pin_root", "load_config", "plan", "plan_with_usage", "plan_destroy",
           "apply", "converge", "perform", "render_text", "render_json", "show", "show_yaml", "usage", "DEFAULT_LOCK_TIMEOUT"]

DEFAULT_LOCK_TIMEOUT = 10.0


def plan(config: Config, pin_root: str) -> Plan:
    """What `apply` would do to make `pin_root` match `config` (no lock: plans are read-only)."""
    remembered = _Remembered.of(config)
    return _plan(config, remembered.read_live(config, pin_root), remembered)


@dataclass
class _Remembered:
    """The pairs of (desired, live) fingerprints of large maps that earlier plans found equal, kept
    in the config cache so that the next plan of the same entries compares two fingerprints
    instead of every entry; and the digests of large maps' entries (digests.DigestCheck)."""

    cache: Cache | None
    known_equal: set[tuple[bytes, bytes]]
    digests: DigestCheck | None = None

    @classmethod
    def of(cls, config: Config) -> _Remembered:
        from kmesh_apply.config.cache import Cache

        large = any(len(m.entries) >= REMEMBER_FROM_ENTRIES for m in config.inner_maps.values())
        cache = Cache.open() if large else None
        return cls(cache, cache.known_equal() if cache is not None else set())

    def read_live(self, config: Config, pin_root: str, memlock: bool = False) -> LiveState:
        """read_live, sparing the entries of large maps where it can: a hash map whose entries the
        kernel sums (kernel.digest) to the config's digest is not read at all (which also beats a
        remembered pair of fingerprints: that needs the live map read to fingerprint it). Meanwhile
        another thread works out the hash sums the comparisons need (0.2 s a side for a million
        entries): the desired entries' where no digest is recorded, then the live entries' batch
        by batch as the lookups bring them, for the maps that are read. Digest runs and lookups
        leave the GIL free, so on a second core the sums cost next to no time."""
        wanted = {name: spec.entries for name, spec in config.inner_maps.items()
                  if isinstance(spec.entries, Entries) and len(spec.entries) >= HASH_SUM_FROM
                  and os.path.exists(os.path.join(pin_root, name))}
        if not wanted:
            return read_live(pin_root, memlock=memlock)
        check = self.digests = DigestCheck(self.cache, wanted, self.known_equal)
        hashed = check.unrecorded()
        summed = {name: threading.Event() for name in hashed}
        check.wait = lambda name: summed[name].wait() if name in summed else None
        parts: queue.SimpleQueue[tuple[str, Entries] | None] = queue.SimpleQueue()
        sums: dict[str, int] = {}
        done: list[bool] = []  # the live sums are used only if every part was summed

        def work() -> None:
            for name, entries in hashed.items():
                entries.hash_sum()
                summed[name].set()
            while (item := parts.get()) is not None:
                sums[item[0]] = sums.get(item[0], 0) + item[1].hash_sum()
            done.append(True)

        def observe(name: str) -> Callable[[Entries], None] | None:
            return (lambda part: parts.put((name, part))) if name in wanted else None

        thread = threading.Thread(target=work, name="kmesh-hash-sums", daemon=True)
        thread.start()
        try:
            state = read_live(pin_root, memlock=memlock, observe=observe, known=check)
        finally:
            parts.put(None)
            thread.join()
        for name, total in sums.items() if done else ():
            live = state.maps.get(name)
            if live is not None and isinstance(live.entries, Entries):
                live.entries.remember_hash_sum(total)
        for name in wanted:
            check.checks.setdefault(name, "read")
        return state


def _plan(config: Config, live: LiveState, remembered: _Remembered | None = None) -> Plan:
    """make_plan, remembering in the config cache which large maps it found equal to their config,
    and the digests of entries worked out meanwhile."""
    remembered = remembered or _Remembered.of(config)
    p = make_plan(prepare(config, live), live, known_equal=remembered.known_equal)
    if remembered.digests is not None:
        p.entry_checks = remembered.digests.checks
        remembered.digests.save()
    _check_memory(p)
    if remembered.cache is not None and p.verified:
        remembered.cache.save_equal(p.verified)
    return p


def plan_with_usage(config: Config, pin_root: str) -> tuple[Plan, list[MapUsage]]:
    """`plan`, and the usage of the maps it was made against, from one read of the pin root."""
    remembered = _Remembered.of(config)
    live = remembered.read_live(config, pin_root, memlock=True)
    return _plan(config, live, remembered), map_usage(live)


def plan_destroy(pin_root: str) -> Plan:
    """What `destroy` would remove."""
    return destroy_plan(read_live(pin_root))


def apply(plan: Plan, *, lock_timeout: float = DEFAULT_LOCK_TIMEOUT, allow_replace_in_use: bool = False,
          on_step: Callable[[Step], None] | None = None, on_checked: Callable[[Plan], None] | None = None) -> ApplyReport:
    """Perform a plan made earlier, refusing it if the live state moved since, or if it replaces maps
    that loaded programs hold now (unless `allow_replace_in_use`). A plan read back from a file
    (`plan.saved.load_plan`) is data to check: re-derived from its changes over the live state, and
    refused unless its steps are exactly those (`plan.recheck`); the re-derived plan is what runs.
    `on_checked` sees the plan that will run once every check has passed, before anything changes
    (the CLI shows it then: a refused plan is not shown as if it would be done)."""
    with PinRootLock(plan.pin_root, lock_timeout):
        live = read_live(plan.pin_root)
        moved = plan.moved_since(live)
        if moved:
            raise StalePlanError(f"the plan is stale: since it was made, {'; '.join(moved)}. "
                                 "Make a new plan and review it.")
        if plan.base is None:
            plan = rederive(plan, live)
        held = _refuse_in_use(plan, live, allow_replace_in_use)
        if on_checked is not None:
            on_checked(plan)
        return _execute(plan, live, held, on_step)


def converge(config: Config | None, pin_root: str, *, confirm: Callable[[Plan], bool] = lambda p: True,
             lock_timeout: float = DEFAULT_LOCK_TIMEOUT, allow_replace_in_use: bool = False,
             on_step: Callable[[Step], None] | None = None) -> tuple[Plan, ApplyReport | None]:
    """Plan and apply under one lock (config None: destroy). `confirm` sees the plan; False applies nothing.
    A plan that replaces maps loaded programs hold is refused before `confirm`, unless `allow_replace_in_use`."""
    with PinRootLock(pin_root, lock_timeout):
        if config is not None:
            remembered = _Remembered.of(config)
            live = remembered.read_live(config, pin_root)
            p = _plan(config, live, remembered)
        else:
            live = read_live(pin_root)
            p = destroy_plan(live)
        if not p.has_changes:
            root = PinRoot.open(pin_root)
            if root is not None:
                with root:
                    record_replaced(root, live, {})  # prune what programs let go of
                    keep_records(root, live)
            report = None
        else:
            held = _refuse_in_use(p, live, allow_replace_in_use)
            if not confirm(p):
                return p, None
            report = _execute(p, live, held, on_step)
        if config is None and report is None:
            _remove_if_empty(pin_root)  # a destroy with nothing to remove: the pin root itself may still go
        return p, report


def keep_records(root: PinRoot, live: LiveState) -> None:
    """What an apply with nothing to change still does to the tool's records: a pin root of an
    earlier version gets its ownership record, and maps that vanished are pruned from it."""
    ownership = Ownership(root, live)
    ownership.begin()
    ownership.finish()


def _remove_if_empty(pin_root: str) -> None:
    """After maps were removed: the pin root goes too, unless someone else's maps (or records still needed)
    are in it."""
    try:
        os.rmdir(pin_root)
    except OSError:
        pass


def perform(plan: Plan, live: LiveState, *, allow_replace_in_use: bool = False,
            on_step: Callable[[Step], None] | None = None, handles: dict[str, Map] | None = None,
            root: PinRoot | None = None) -> ApplyReport:
    """Run `plan`'s steps; `live` is the state read under the pin root's lock, which the caller holds.
    Refuses (ReplaceInUseError, nothing changed) to replace or swap a map that loaded programs hold,
    unless `allow_replace_in_use`; then it first records the maps it replaces, so that plans report
    drift while the programs still hold them. `handles`, `root`: the caller's open maps and pin root,
    kept open (the synchroniser's)."""
    return _execute(plan, live, _refuse_in_use(plan, live, allow_replace_in_use), on_step, handles, root)


def _execute(plan: Plan, live: LiveState, held: dict[int, str], on_step: Callable[[Step], None] | None,
             handles: dict[str, Map] | None = None, root: PinRoot | None = None) -> ApplyReport:
    """Check the machine has the memory the new maps take, record the held maps about to be replaced
    (first: a killed apply forgets nothing), then run the steps."""
    check_steps(plan.steps)  # before anything is made
    _check_memory(plan)
    with contextlib.ExitStack() as stack:
        if root is None:
            root = stack.enter_context(PinRoot.make(plan.pin_root))
        record_replaced(root, live, held)
        report = Executor(root, live, on_step, handles=handles).run(plan)
    if any(isinstance(s, RemovePin) and s.pin == s.map for s in plan.steps):
        _remove_if_empty(plan.pin_root)
    return report


def _check_memory(plan: Plan) -> None:
    """Refuse a plan whose new maps would take more memory than this machine has (capacity.check_memory)."""
    check_memory(plan_needs(plan, possible_cpus()))


def _refuse_in_use(plan: Plan, live: LiveState, allow: bool) -> dict[int, str]:
    """The maps the plan would move another map over, or destroy, while programs hold them (ID -> pin name)."""
    held = {i: name for i, name in plan.displaced(live).items() if live.holders.get(i)}
    if held and not allow:
        destroyed = {c.name for c in plan.changes if c.action == "destroy"}
        lines = [f"  '{name}' (map ID {i}) is held by {', '.join(map(str, live.holders[i]))}: the plan would "
                 f"{'destroy' if name in destroyed else 'replace'} it" for i, name in held.items()]
        raise ReplaceInUseError(
            "refusing to replace or destroy maps that loaded BPF programs hold: they would go on reading the old "
            "maps.\n" + "\n".join(lines) + "\nNothing was changed. Reload or unload those programs first, or pass "
            "--allow-replace-in-use (Ansible: allow_replace_in_use: true) to go ahead anyway; "
            "`plan --detailed-exitcode` then reports drift until the programs let go of the old maps.")
    return held


def show(pin_root: str, all_maps: bool = False, warn: Callable[[str], None] = lambda message: None) -> dict[str, Any]:
    """The managed maps of `pin_root` as a config document that `apply` accepts and plans clean;
    `all_maps`: the unmanaged ones too, with `adopt: true`; `warn` hears what it cannot give back as
    a config would (a program pinned nowhere, named by its ID)."""
    live = read_live(pin_root, holders=False)
    return show_document(live, all_maps, _program_paths(live), warn)


def show_yaml(pin_root: str, write: Callable[[str], object], all_maps: bool = False,
              warn: Callable[[str], None] = lambda message: None) -> None:
    """`show` as YAML text, handed to `write` a piece at a time (the same text as
    `dump_yaml(show(pin_root, all_maps))`, without building the document)."""
    live = read_live(pin_root, holders=False)
    write_yaml(live, write, all_maps, _program_paths(live), warn)


def _program_paths(live: LiveState) -> dict[int, str]:
    """Where the programs that prog_array, devmap and cpumap entries hold are pinned."""
    wanted = referenced_programs(live)
    return program_pins(wanted) if wanted else {}


def usage(pin_root: str) -> list[MapUsage]:
    """How full each map of `pin_root` is and what it costs the kernel, fullest first."""
    return map_usage(read_live(pin_root, memlock=True))
