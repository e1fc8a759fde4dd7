"""The kmesh.maps collection under a real ansible-playbook: three local hosts, each with its own pin root."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO, _unique_root

HOSTS = ("node1", "node2", "node3")

CONFIG = """
inner_maps:
  backends:
    type: hash
    key: u32
    value: u64
    max_entries: 16
    entries:
      1: {value}
      2: 20
outer_maps:
  services:
    type: array_of_maps
    key: u32
    max_entries: 4
    inner_map: backends
    entries:
      0: backends
"""

PLAYBOOK = """
- hosts: all
  gather_facts: false
  tasks:
    - name: apply
      kmesh.maps.apply:
        src: "{{ config_dir }}/{{ inventory_hostname }}.yaml"
        pin_root: "{{ pin_root }}"
        state: "{{ kmesh_state | default('present') }}"
      register: result
      ignore_errors: true
    - name: keep the result for the test
      ansible.builtin.copy:
        content: "{{ result | to_json }}"
        dest: "{{ out_dir }}/{{ inventory_hostname }}.json"
      check_mode: false
"""


@pytest.fixture
def roots():
    with contextlib.ExitStack() as stack:
        yield {h: stack.enter_context(_unique_root(f"ansible-{h}")) for h in HOSTS}


@pytest.fixture
def play(tmp_path: Path, roots):
    configs = tmp_path / "configs"
    configs.mkdir()
    out = tmp_path / "out"
    out.mkdir()
    inventory = tmp_path / "inventory.ini"
    inventory.write_text("[nodes]\n" + "".join(f"{h} pin_root={roots[h]}\n" for h in HOSTS)
                         + f"[nodes:vars]\nansible_connection=local\nansible_python_interpreter={sys.executable}\n"
                         + f"config_dir={configs}\nout_dir={out}\n")
    playbook = tmp_path / "play.yml"
    playbook.write_text(PLAYBOOK)

    def run(*extra: str, configs_by_host: dict[str, str] | None = None) -> dict[str, dict]:
        for h in HOSTS:
            (configs / f"{h}.yaml").write_text((configs_by_host or {}).get(h, CONFIG.format(value=10)))
        env = dict(os.environ, ANSIBLE_COLLECTIONS_PATH=str(REPO), ANSIBLE_LOCAL_TEMP=str(tmp_path / "tmp"),
                   ANSIBLE_HOME=str(tmp_path / "home"), ANSIBLE_NOCOLOR="1", ANSIBLE_DEPRECATION_WARNINGS="0")
        res = subprocess.run([str(Path(sys.executable).parent / "ansible-playbook"), "-i", str(inventory),
                              str(playbook), *extra], capture_output=True, text=True, env=env)
        assert "PLAY RECAP" in res.stdout, res.stdout + res.stderr
        return {h: json.loads((out / f"{h}.json").read_text()) for h in HOSTS}

    return run


def dump(root: Path, name: str) -> list:
    out = subprocess.run(["bpftool", "-j", "map", "dump", "pinned", str(root / name)], check=True,
                         capture_output=True, text=True).stdout
    return json.loads(out)


def test_playbook_converges_checks_and_destroys(play, roots):
    first = play()
    for h in HOSTS:
        assert first[h]["changed"] is True and not first[h].get("failed"), first[h]
        assert first[h]["plan"] == {"create": 2, "update": 0, "destroy": 0}
        assert {p.name for p in roots[h].iterdir()} == {"backends", "services"}
        assert len(dump(roots[h], "backends")) == 2

    second = play()
    assert all(second[h]["changed"] is False for h in HOSTS), second

    before = {h: dump(roots[h], "backends") for h in HOSTS}
    edited = {h: CONFIG.format(value=11) for h in HOSTS}
    checked = play("--check", "--diff", configs_by_host=edited)
    for h in HOSTS:
        assert checked[h]["changed"] is True and checked[h]["plan"] == {"create": 0, "update": 1, "destroy": 0}
        assert "~ 1: 10 -> 11" in checked[h]["diff"]["prepared"]
        assert "applied" not in checked[h]
    assert {h: dump(roots[h], "backends") for h in HOSTS} == before  # check mode changed nothing

    bad = dict(edited, node2=CONFIG.format(value=11).replace("max_entries: 16", "max_entries: 16\n    colour: red"))
    mixed = play(configs_by_host=bad)
    assert mixed["node2"]["failed"] is True
    assert "node2.yaml:8:" in mixed["node2"]["msg"] and "colour" in mixed["node2"]["msg"]
    assert mixed["node1"]["changed"] is True and not mixed["node1"].get("failed")
    assert mixed["node3"]["changed"] is True and not mixed["node3"].get("failed")
    assert dump(roots["node2"], "backends") == before["node2"]

    gone = play("-e", "kmesh_state=absent", "--limit", "node1", configs_by_host=edited)
    assert gone["node1"]["changed"] is True and gone["node1"]["plan"]["destroy"] == 2
    assert list(roots["node1"].iterdir()) == []
    assert {p.name for p in roots["node3"].iterdir()} == {"backends", "services"}


def test_example_playbook_and_role(tmp_path: Path, pin_root: Path, bpftool):
    env = dict(os.environ, ANSIBLE_COLLECTIONS_PATH=str(REPO), ANSIBLE_LOCAL_TEMP=str(tmp_path / "tmp"),
               ANSIBLE_HOME=str(tmp_path / "home"), ANSIBLE_NOCOLOR="1")
    cmd = [str(Path(sys.executable).parent / "ansible-playbook"), "-i", str(REPO / "examples/ansible/inventory.ini"),
           str(REPO / "examples/ansible/site.yml"), "--limit", "node1", "-e", f"ansible_python_interpreter={sys.executable}",
           "-e", f"kmesh_pin_root={pin_root}", "-e", f"kmesh_config_dir={tmp_path / 'etc'}"]
    first = subprocess.run(cmd, capture_output=True, text=True, env=env)
    assert first.returncode == 0 and "Plan: 5 to create" in first.stdout, first.stdout + first.stderr
    assert {p.name for p in pin_root.iterdir()} == {"backends-api", "backends-web", "counters", "routes", "services"}
    again = subprocess.run(cmd, capture_output=True, text=True, env=env)
    assert again.returncode == 0 and "No changes" in again.stdout, again.stdout
    gone = subprocess.run(cmd + ["-e", "kmesh_state=absent"], capture_output=True, text=True, env=env)
    assert gone.returncode == 0 and list(pin_root.iterdir()) == []


def test_missing_kmesh_apply_is_a_clear_failure(tmp_path: Path):
    """On a node whose interpreter lacks kmesh_apply (here: the system Python) the module says what to install."""
    if not Path("/usr/bin/python3").exists():
        pytest.skip("no system Python to stand for a bare node")
    env = dict(os.environ, ANSIBLE_COLLECTIONS_PATH=str(REPO), ANSIBLE_LOCAL_TEMP=str(tmp_path / "tmp"),
               ANSIBLE_HOME=str(tmp_path / "home"), ANSIBLE_NOCOLOR="1")
    res = subprocess.run([str(Path(sys.executable).parent / "ansible"), "localhost", "-c", "local", "-e",
                          "ansible_python_interpreter=/usr/bin/python3", "-m", "kmesh.maps.apply", "-a",
                          "pin_root=/sys/fs/bpf/kmesh-absent-node state=absent"], capture_output=True, text=True, env=env)
    assert res.returncode != 0
    assert "Failed to import the required Python library (kmesh-apply)" in res.stdout + res.stderr
