#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: kmesh-apply developers
# Apache License 2.0 (see https://www.apache.org/licenses/LICENSE-2.0); a module of a non-GPL collection,
# so tests/sanity/ignore-*.txt waives ansible-test's GPLv3 header check for it.

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
---
module: apply
short_description: Make a node's pinned eBPF map-in-map state match a kmesh-apply configuration
version_added: "0.1.0"
description:
  - Plans the configuration against the maps pinned under the pin root (read through bpf syscalls)
    and performs the minimal, batched steps, as C(kmesh-apply apply) does.
  - The configuration is the whole truth for the maps kmesh-apply manages in its pin root (those it created or
    adopted); a managed map it does not name is destroyed; maps pinned there by others are left alone.
  - Runs in-process through the kmesh_apply Python API; kmesh-apply must be installed for the node's Python interpreter.
options:
  src:
    description:
      - Path on the managed node of a config file, or of a directory of C(*.yaml)/C(*.yml) files that are merged.
      - Exactly one of O(src) and O(config) is required when O(state=present).
      - With O(state=absent) a configuration is optional and only supplies its C(pin_root).
    type: path
  config:
    description:
      - The configuration inline, as a mapping or as YAML text.
    type: raw
  pin_root:
    description:
      - The bpffs directory holding the maps, as C(--pin-root).
      - Defaults to E(KMESH_PIN_ROOT), then the configuration's C(pin_root), then C(/sys/fs/bpf/kmesh).
    type: str
  state:
    description:
      - V(present) applies the configuration; V(absent) destroys every map kmesh-apply manages in the pin root
        (the pin root of O(src) or O(config) when one is given and O(pin_root) is not), and the pin root when
        nothing else is left in it.
    type: str
    choices: [present, absent]
    default: present
  lock_timeout:
    description:
      - Seconds to wait for another apply on the same pin root.
    type: float
    default: 10.0
  allow_replace_in_use:
    description:
      - Replace or destroy maps even while loaded BPF programs hold them, as C(--allow-replace-in-use).
      - Without it the module fails, changing nothing, when the plan would replace or destroy a map a loaded program holds
        (the program would keep reading the old map). With it, later plans report drift (RV(drift)) until those
        programs are reloaded or unloaded.
    type: bool
    default: false
attributes:
  check_mode:
    support: full
    description: Plans only; nothing is applied.
  diff_mode:
    support: full
    description: Returns the plan's text.
requirements:
  - kmesh-apply (the Python package) for the node's Python interpreter
  - root on the managed node (bpf syscalls)
author:
  - kmesh-apply developers (@kmesh-apply)
"""

EXAMPLES = r"""
- name: Deploy the service-mesh maps
  kmesh.maps.apply:
    src: /etc/kmesh/mesh.yaml

- name: Inline configuration into its own pin root
  kmesh.maps.apply:
    pin_root: /sys/fs/bpf/tenant-a
    config:
      inner_maps:
        backends:
          type: hash
          key: u32
          value: u64
          max_entries: 1024
          entries: {1: 100, 2: 200}

- name: What would change (check mode shows the plan with --diff)
  kmesh.maps.apply:
    src: /etc/kmesh/mesh.yaml
  check_mode: true
  diff: true

- name: Remove every map of a pin root
  kmesh.maps.apply:
    pin_root: /sys/fs/bpf/tenant-a
    state: absent
"""

RETURN = r"""
plan:
  description: The plan's counts of maps, Terraform style (a replaced map counts as one created and one destroyed;
    adopt counts the maps taken over from whoever pinned them).
  returned: always
  type: dict
  sample: {"adopt": 0, "migrate": 0, "rename": 0, "create": 2, "update": 1, "destroy": 0}
summary:
  description: The plan's closing line.
  returned: always
  type: str
  sample: "Plan: 2 to create, 1 to update, 0 to destroy."
plan_text:
  description: The plan as C(kmesh-apply plan) prints it.
  returned: always
  type: str
drift:
  description: The pin root differs from the configuration, or loaded programs still hold maps it replaced
    (C(kmesh-apply plan --detailed-exitcode) would exit 2). Checked before applying.
  returned: always
  type: bool
changes:
  description: Per map, its name, kind (inner or outer), action, entry counts and the loaded programs holding it,
    from C(kmesh-apply plan --json).
  returned: always
  type: list
  elements: dict
pin_root:
  description: The pin root that was planned or applied.
  returned: always
  type: str
applied:
  description: What the apply did (steps, entries written and deleted, slots set, seconds); absent in check mode.
  returned: when changed and not in check mode
  type: dict
"""

import traceback

from ansible.module_utils.basic import AnsibleModule, missing_required_lib

try:
    from kmesh_apply import api
    from kmesh_apply.errors import KmeshError, internal_error
except ImportError:
    HAS_KMESH_APPLY = False
    IMPORT_ERROR = traceback.format_exc()
else:
    HAS_KMESH_APPLY = True
    IMPORT_ERROR = None


def _changes(plan_json):
    """The per-map summary a play needs, without the (possibly huge) entry lists."""
    return [
        {"name": c["name"], "kind": c["kind"], "action": c["action"], "reasons": c["reasons"], "counts": c["counts"],
         "holders": c["holders"]}
        for c in plan_json["changes"]
    ]


def _load(params):
    """The configuration given by src or config, or None; with state=absent it only names the pin root,
    so that destroying with the same arguments as applying removes the same maps."""
    if params["src"]:
        return api.load_config([params["src"]])
    if params["config"] is not None:
        return api.load_config(inline=params["config"])
    return None


def run_module():
    module = AnsibleModule(
        argument_spec=dict(
            src=dict(type="path"),
            config=dict(type="raw"),
            pin_root=dict(type="str"),
            state=dict(type="str", default="present", choices=["present", "absent"]),
            lock_timeout=dict(type="float", default=10.0),
            allow_replace_in_use=dict(type="bool", default=False),
        ),
        mutually_exclusive=[["src", "config"]],
        required_if=[["state", "present", ["src", "config"], True]],
        supports_check_mode=True,
    )
    if not HAS_KMESH_APPLY:
        module.fail_json(msg=missing_required_lib("kmesh-apply", reason="to manage eBPF maps; install it for "
                                                  "the interpreter in ansible_python_interpreter"),
                         exception=IMPORT_ERROR)
    p = module.params
    if p["config"] is not None and not isinstance(p["config"], (dict, str)):
        module.fail_json(msg="config must be a mapping or YAML text, not a %s" % type(p["config"]).__name__)
    try:
        config = _load(p)
        pin_root = api.resolve_pin_root(p["pin_root"], config)
        plan = api.plan(config, pin_root) if p["state"] == "present" else api.plan_destroy(pin_root)
        text = api.render_text(plan)
        result = dict(
            changed=plan.has_changes,
            drift=plan.drift,
            plan=plan.counts,
            summary=plan.summary(),
            plan_text=text,
            changes=_changes(api.render_json(plan)),
            pin_root=pin_root,
        )
        if module._diff:
            result["diff"] = {"prepared": text}
        if plan.has_changes and not module.check_mode:
            report = api.apply(plan, lock_timeout=p["lock_timeout"], allow_replace_in_use=p["allow_replace_in_use"])
            result["applied"] = dict(steps=report.steps, entries_written=report.entries_written,
                                     entries_deleted=report.entries_deleted, slots_set=report.slots_set,
                                     seconds=round(report.seconds, 3))
    except KmeshError as e:
        module.fail_json(msg=str(e))
    except OSError as e:
        module.fail_json(msg="%s%s" % (e.filename + ": " if e.filename else "", e.strerror or e))
    except Exception as e:  # a bug: one line; the traceback only with -vvv, as Ansible shows `exception`
        module.fail_json(msg=internal_error(e), exception=traceback.format_exc())
    module.exit_json(**result)


def main():
    run_module()


if __name__ == "__main__":
    main()
