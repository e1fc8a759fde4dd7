"""The in-process API behind `kmesh-apply`: what the CLI and the Ansible module call.

    cfg = load_config(["mesh.yaml"])            # or load_config(inline=...)
    root = resolve_pin_root(None, cfg)
    p = plan(cfg, root)                         # reads the live maps, changes nothing
    print(render_text(p)); p.counts             # {"create": 1, "update": 0, "destroy": 0}
    if p.has_changes: apply(p)                  # takes the pin root's lock, re-checks, performs the steps

Every failure raises a `kmesh_apply.errors.KmeshError`.
"""

from __future__ import annotations

from typing import Any, Callable

from kmesh_apply.config import load_config
from kmesh_apply.config.model import Config, resolve_pin_root
from kmesh_apply.errors import StalePlanError
from kmesh_apply.executor import ApplyReport, Executor
from kmesh_apply.pinroot import PinRootLock
from kmesh_apply.plan.model import Plan, Step
from kmesh_apply.plan.planner import destroy_plan, make_plan
from kmesh_apply.plan.render import render_json, render_text
from kmesh_apply.reader import read_live
from kmesh_apply.state import LiveState
from kmesh_apply.show import show_document

__all__ = ["Config", "Plan", "ApplyReport", "resolve_pin_root", "load_config", "plan", "plan_destroy", "apply",
           "converge", "render_text", "render_json", "show", "DEFAULT_LOCK_TIMEOUT"]

DEFAULT_LOCK_TIMEOUT = 10.0


def plan(config: Config, pin_root: str) -> Plan:
    """What `apply` would do to make `pin_root` match `config` (no lock: plans are read-only)."""
    return _plan(config, read_live(pin_root))


def _plan(config: Config, live: LiveState) -> Plan:
    """make_plan, remembering in the config cache which large maps it found equal to their config,
    so that the next plan of the same entries compares two fingerprints instead of every entry."""
    from kmesh_apply.config.cache import Cache
    from kmesh_apply.plan.planner import REMEMBER_FROM_ENTRIES

    large = any(len(m.entries) >= REMEMBER_FROM_ENTRIES for m in config.inner_maps.values())
    cache = Cache.open() if large else None
    p = make_plan(config, live, cache.known_equal() if cache is not None else frozenset())
    if cache is not None and p.verified:
        cache.save_equal(p.verified)
    return p


def plan_destroy(pin_root: str) -> Plan:
    """What `destroy` would remove."""
    return destroy_plan(read_live(pin_root))


def apply(plan: Plan, *, lock_timeout: float = DEFAULT_LOCK_TIMEOUT,
          on_step: Callable[[Step], None] | None = None) -> ApplyReport:
    """Perform a plan made earlier (maybe saved), refusing it if the live state moved since."""
    with PinRootLock(plan.pin_root, lock_timeout):
        moved = plan.moved_since(read_live(plan.pin_root))
        if moved:
            raise StalePlanError(f"the plan is stale: since it was made, {'; '.join(moved)}. "
                                 "Make a new plan and review it.")
        return Executor(plan.pin_root, on_step).run(plan)


def converge(config: Config | None, pin_root: str, *, confirm: Callable[[Plan], bool] = lambda p: True,
             lock_timeout: float = DEFAULT_LOCK_TIMEOUT,
             on_step: Callable[[Step], None] | None = None) -> tuple[Plan, ApplyReport | None]:
    """Plan and apply under one lock (config None: destroy). `confirm` sees the plan; False applies nothing."""
    with PinRootLock(pin_root, lock_timeout):
        live = read_live(pin_root)
        p = _plan(config, live) if config is not None else destroy_plan(live)
        if not p.has_changes or not confirm(p):
            return p, None
        return p, Executor(pin_root, on_step).run(p)


def show(pin_root: str) -> dict[str, Any]:
    """The live state of `pin_root` as a config document that `apply` accepts and plans clean."""
    return show_document(read_live(pin_root))
