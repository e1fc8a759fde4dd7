"""The kmesh.maps collection under a real ansible-playbook (three local hosts, each with its own pin root),
and the example CI drift job's steps run as a runner would run them."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import REPO, _unique_root, bpftool_json, pinned_maps

HOSTS = ("node1", "node2", "node3")
VENV_BIN = Path(sys.executable).parent
# ansible.posix (the role's mount module), which scripts/setup takes from the package index.
POSIX = Path(sys.prefix) / "share/ansible/collections"

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


def ansible(tool: str, *args: str, tmp_path: Path, collections: Path = REPO) -> subprocess.CompletedProcess:
    """Run an ansible-core command from the venv with every scratch directory under tmp_path."""
    env = dict(os.environ, ANSIBLE_COLLECTIONS_PATH=f"{collections}:{POSIX}", ANSIBLE_HOME=str(tmp_path / "home"),
               ANSIBLE_LOCAL_TEMP=str(tmp_path / "tmp"), ANSIBLE_REMOTE_TEMP=str(tmp_path / "remote-tmp"),
               ANSIBLE_NOCOLOR="1", ANSIBLE_DEPRECATION_WARNINGS="0")
    return subprocess.run([str(VENV_BIN / tool), *args], capture_output=True, text=True, env=env)


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The collection built with ansible-galaxy and installed into a scratch collections path (--offline:
    its dependency ansible.posix is found installed, not fetched)."""
    tmp = tmp_path_factory.mktemp("galaxy")
    built = ansible("ansible-galaxy", "collection", "build", str(REPO / "ansible_collections/kmesh/maps"),
                    "--output-path", str(tmp), tmp_path=tmp)
    assert built.returncode == 0, built.stdout + built.stderr
    target = tmp / "collections"
    done = ansible("ansible-galaxy", "collection", "install", str(tmp / "kmesh-maps-0.1.0.tar.gz"),
                   "-p", str(target), "--offline", tmp_path=tmp, collections=target)
    assert done.returncode == 0 and "'ansible.posix:" in done.stdout, done.stdout + done.stderr
    assert (target / "ansible_collections/kmesh/maps/plugins/modules/apply.py").is_file(), done.stdout + done.stderr
    return target


@pytest.fixture
def roots():
    """One fresh pin root per host, all removed afterwards even when the test fails."""
    with contextlib.ExitStack() as stack:
        yield {h: stack.enter_context(_unique_root(f"ansible-{h}")) for h in HOSTS}


@pytest.fixture
def play(tmp_path: Path, roots, installed: Path):
    """Run the playbook over the three hosts with the given configs; return each host's module result."""
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
        res = ansible("ansible-playbook", "-i", str(inventory), str(playbook), *extra, tmp_path=tmp_path,
                      collections=installed)
        assert "PLAY RECAP" in res.stdout, res.stdout + res.stderr
        return {h: json.loads((out / f"{h}.json").read_text()) for h in HOSTS}

    return run


def dump(root: Path, name: str) -> list:
    return bpftool_json("map", "dump", "pinned", str(root / name))


def backends(root: Path) -> dict[int, int]:
    """The inner map's entries as bpftool decodes them (from the BTF kmesh-apply attaches)."""
    return {e["formatted"]["key"]: e["formatted"]["value"] for e in dump(root, "backends")}


def test_playbook_converges_checks_and_destroys(play, roots, bpftool):
    first = play()
    for h in HOSTS:
        assert first[h]["changed"] is True and not first[h].get("failed"), first[h]
        assert first[h]["plan"] == {"adopt": 0, "migrate": 0, "rename": 0, "create": 2, "update": 0, "destroy": 0}
        assert bpftool("map", "show", "pinned", str(roots[h] / "backends"))["type"] == "hash"
        assert bpftool("map", "show", "pinned", str(roots[h] / "services"))["type"] == "array_of_maps"
        assert backends(roots[h]) == {1: 10, 2: 20}
        assert len(dump(roots[h], "services")) == 1

    second = play()
    assert all(second[h]["changed"] is False and second[h]["plan"] == {"adopt": 0, "migrate": 0, "rename": 0, "create": 0, "update": 0, "destroy": 0}
               for h in HOSTS), second

    before = {h: (dump(roots[h], "backends"), dump(roots[h], "services")) for h in HOSTS}
    edited = {h: CONFIG.format(value=11) for h in HOSTS}
    checked = play("--check", "--diff", configs_by_host=edited)
    for h in HOSTS:
        assert checked[h]["changed"] is True and checked[h]["plan"] == {"adopt": 0, "migrate": 0, "rename": 0, "create": 0, "update": 1, "destroy": 0}
        assert "~ 1: 10 -> 11" in checked[h]["diff"]["prepared"]
        assert "applied" not in checked[h]
    assert {h: (dump(roots[h], "backends"), dump(roots[h], "services")) for h in HOSTS} == before

    bad = dict(edited, node2=CONFIG.format(value=11).replace("max_entries: 16", "max_entries: 16\n    colour: red"))
    mixed = play(configs_by_host=bad)
    assert mixed["node2"]["failed"] is True
    assert "node2.yaml:8:" in mixed["node2"]["msg"] and "colour" in mixed["node2"]["msg"]
    for h in ("node1", "node3"):
        assert mixed[h]["changed"] is True and not mixed[h].get("failed"), mixed[h]
        assert mixed[h]["applied"]["entries_written"] == 1
        assert backends(roots[h]) == {1: 11, 2: 20}
    assert dump(roots["node2"], "backends") == before["node2"][0]

    gone = play("-e", "kmesh_state=absent", "--limit", "node1", configs_by_host=edited)
    assert gone["node1"]["changed"] is True and gone["node1"]["plan"]["destroy"] == 2
    assert not roots["node1"].exists()
    for h in ("node2", "node3"):
        assert {p.name for p in pinned_maps(roots[h])} == {"backends", "services"}


@pytest.mark.parametrize(("host", "maps", "outer"), [
    ("node1", {"backends-api", "backends-web", "counters", "routes", "services"}, "services"),
    ("node3", {"tenant-a", "tenant-b", "tenants"}, "tenants"),  # host_vars: the multi-file directory
])
def test_example_playbook_and_role(host: str, maps: set[str], outer: str, tmp_path: Path, pin_root: Path, bpftool):
    """examples/ansible as shipped, straight from the checkout (ANSIBLE_COLLECTIONS_PATH=<repository root>)."""
    cmd = ["-i", str(REPO / "examples/ansible/inventory.ini"), str(REPO / "examples/ansible/site.yml"),
           "--limit", host, "-e", f"ansible_python_interpreter={sys.executable}",
           "-e", f"mesh_pin_root={pin_root}", "-e", f"mesh_config_dir={tmp_path / 'etc'}"]
    first = ansible("ansible-playbook", *cmd, tmp_path=tmp_path)
    assert first.returncode == 0 and f"Plan: {len(maps)} to create" in first.stdout, first.stdout + first.stderr
    assert {p.name for p in pinned_maps(pin_root)} == maps
    assert bpftool("map", "show", "pinned", str(pin_root / outer))["type"].endswith("_of_maps")
    again = ansible("ansible-playbook", *cmd, tmp_path=tmp_path)
    assert again.returncode == 0 and "No changes" in again.stdout, again.stdout
    gone = ansible("ansible-playbook", *cmd, "-e", "mesh_state=absent", tmp_path=tmp_path)
    assert gone.returncode == 0 and not pin_root.exists(), gone.stdout


def test_missing_kmesh_apply_is_a_clear_failure(tmp_path: Path, pin_root: Path):
    """On a node whose interpreter lacks kmesh_apply (here: the system Python) the module says what to install."""
    res = ansible("ansible", "localhost", "-c", "local", "-e", "ansible_python_interpreter=/usr/bin/python3",
                  "-m", "kmesh.maps.apply", "-a", f"pin_root={pin_root} state=absent", tmp_path=tmp_path)
    assert res.returncode != 0
    assert "Failed to import the required Python library (kmesh-apply)" in res.stdout + res.stderr


def test_kernel_refusal_fails_with_what_was_applied(tmp_path: Path, pin_root: Path):
    """A map the kernel refuses (a per-CPU map placed on a NUMA node: EINVAL; a map too large for the machine is
    refused before apply, with the figures): the host fails with errno, the failed step and how to converge."""
    config = {"inner_maps": {"huge": {"type": "percpu_hash", "key": "u32", "value": "u32", "max_entries": 4,
                                      "flags": ["numa_node"]}}}
    res = ansible("ansible", "localhost", "-c", "local", "-e", f"ansible_python_interpreter={sys.executable}",
                  "-m", "kmesh.maps.apply", "-a", json.dumps({"pin_root": str(pin_root), "config": config}),
                  tmp_path=tmp_path)
    assert res.returncode != 0 and "FAILED" in res.stdout, res.stdout + res.stderr
    msg = json.loads(res.stdout.split("FAILED! => ", 1)[1])["msg"]
    assert "errno" in msg and "failed step: create percpu_hash map 'huge'" in msg and "applied 0 steps" in msg
    assert "Traceback" not in res.stdout + res.stderr


def ci_steps() -> dict[str, dict]:
    """The example drift job's steps, by name."""
    workflow = yaml.safe_load((REPO / "examples/ci/drift-check.yml").read_text())
    return {s["name"]: s for s in workflow["jobs"]["drift"]["steps"] if "name" in s}


def test_ci_drift_job_fails_on_drift_and_summarises(tmp_path: Path, pin_root: Path):
    """Run the workflow's shell steps in order, as a runner would, before and after an apply."""
    shutil.copytree(REPO / "examples/mesh", tmp_path / "maps")
    steps = ci_steps()

    def job() -> tuple[str, str, int]:
        """Run the job; return its log, its job summary and the exit code of the drift gate."""
        output, summary = tmp_path / "output", tmp_path / "summary.md"
        output.write_text("")
        summary.write_text("")
        env = dict(os.environ, PATH=f"{VENV_BIN}:{os.environ['PATH']}", KMESH_PIN_ROOT=str(pin_root),
                   GITHUB_OUTPUT=str(output), GITHUB_STEP_SUMMARY=str(summary))
        log, gate = "", 0
        for name in ("Validate the configuration (offline)", "Plan against the live maps", "Post a summary"):
            res = subprocess.run(["bash", "-e", "-c", steps[name]["run"]], cwd=tmp_path, env=env,
                                 capture_output=True, text=True)
            assert res.returncode == 0, (name, res.stdout, res.stderr)
            log += res.stdout
        if output.read_text().strip() == "exitcode=2":
            gate = subprocess.run(["bash", "-e", "-c", steps["Fail on drift"]["run"]], capture_output=True).returncode
        return log, summary.read_text(), gate

    log, summary, gate = job()
    assert gate == 1 and "Plan: 5 to create, 0 to update, 0 to destroy." in log and 'outer map "services" will be created' in log
    assert "| services | outer | create | 2 | 0 | 0 |" in summary

    assert subprocess.run([str(VENV_BIN / "kmesh-apply"), "apply", str(tmp_path / "maps"), "--auto-approve",
                           "--pin-root", str(pin_root)], capture_output=True).returncode == 0
    log, summary, gate = job()
    assert gate == 0 and "No changes" in summary and "| map |" not in summary
