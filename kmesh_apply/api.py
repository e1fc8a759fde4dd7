"""The in-process API behind `kmesh-apply`: what the CLI and the Ansible module call.

    cfg = load_config(["mesh.yaml"])            # or load_config(inline=...)
    root = resolve_pin_root(None, cfg)
    p = plan(cfg, root)                         # reads the live maps, changes nothing
    print(render_text(p)); p.counts             # {"create": 1, "update": 0, "destroy": 0}
    if p.has_changes: apply(p)                  # takes the pin root's lock, performs the steps

Every failure raises a `kmesh_apply.errors.KmeshError`.
"""

from __future__ import annotations

from kmesh_apply.config.model import Config, resolve_pin_root

__all__ = ["Config", "resolve_pin_root", "load_config", "plan", "plan_destroy", "apply", "render_text", "render_json", "show"]
