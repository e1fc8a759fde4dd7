"""The deployment examples: Kubernetes manifests valid for the API server's schemas, the ConfigMap's
config valid for kmesh-apply, and the systemd unit accepted by systemd-analyze."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import kubernetes_validate
import yaml

from conftest import require_tool
from kmesh_apply import load_config

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
K8S_VERSION = "1.30.0"


def manifests() -> list[dict]:
    return [doc for f in sorted((EXAMPLES / "kubernetes").glob("*.yaml"))
            for doc in yaml.safe_load_all(f.read_text()) if doc]


def test_kubernetes_manifests_are_valid():
    docs = manifests()
    assert {d["kind"] for d in docs} == {"Namespace", "ConfigMap", "DaemonSet"}
    for doc in docs:
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


def test_the_daemonset_watches_the_configmap_it_mounts():
    by_kind = {d["kind"]: d for d in manifests()}
    pod = by_kind["DaemonSet"]["spec"]["template"]["spec"]
    container = pod["containers"][0]
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["config"]["configMap"]["name"] == by_kind["ConfigMap"]["metadata"]["name"]
    assert container["args"][:2] == ["watch", mounts["config"]]
    assert volumes["bpffs"]["hostPath"]["path"] == mounts["bpffs"] == "/sys/fs/bpf"
    assert "BPF" in container["securityContext"]["capabilities"]["add"]
    for text in by_kind["ConfigMap"]["data"].values():
        load_config(inline=text)


def test_the_systemd_unit_is_accepted(tmp_path: Path):
    unit = (EXAMPLES / "systemd" / "kmesh-apply-watch.service").read_text()
    assert "Type=notify" in unit and "ExecReload=/bin/kill -HUP $MAINPID" in unit
    # ExecStart runs the kmesh-apply that the unit's own install steps put in place.
    (venv,) = re.findall(r"^#\s+python3 -m venv (\S+)", unit, re.M)
    assert f"{venv}/bin/pip install " in unit
    (exe,) = re.findall(r"^ExecStart=(\S+)", unit, re.M)
    assert exe == f"{venv}/bin/kmesh-apply"
    require_tool("systemd-analyze")
    local = tmp_path / "kmesh-apply-watch.service"
    local.write_text(unit.replace(exe, str(Path(sys.executable).parent / "kmesh-apply")))
    res = subprocess.run(["systemd-analyze", "verify", str(local)], capture_output=True, text=True)
    assert res.returncode == 0 and "kmesh-apply-watch.service" not in res.stderr, res.stderr
