"""The collection and the example playbook pass the linter Ansible users run, at its strictest profile."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from conftest import REPO
from test_ansible import POSIX


def test_ansible_lint_production_profile(tmp_path: Path):
    """One run over both (the linter's start-up is most of its time). --offline: nothing is fetched;
    the collections path holds kmesh.maps (the checkout) and ansible.posix (from scripts/setup)."""
    env = dict(os.environ, ANSIBLE_COLLECTIONS_PATH=f"{REPO}:{POSIX}", ANSIBLE_HOME=str(tmp_path / "home"),
               XDG_CACHE_HOME=str(tmp_path / "cache"), NO_COLOR="1")
    res = subprocess.run([str(Path(sys.executable).parent / "ansible-lint"), "--profile", "production", "--offline",
                          "--nocolor", "ansible_collections/kmesh/maps", "examples/ansible"],
                         cwd=REPO, capture_output=True, text=True, env=env)
    out = res.stdout + res.stderr
    assert res.returncode == 0 and "Profile 'production' was required, and it passed." in out, out
    assert "galaxy.yml" not in out and "roles/mesh" not in out  # no finding anywhere
