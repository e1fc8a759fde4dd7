"""`kmesh-apply watch` as a process on the real kernel: edits applied, a broken file holds the last
state, drift corrected within the interval, a ConfigMap `..data` swap followed, systemd told,
SIGTERM exits 0 with nothing staged, and a watcher killed mid-flush converges on restart."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Callable

from test_safety import big_config

from kmesh_apply.pinroot.reader import read_live

KMESH_APPLY = str(Path(sys.executable).parent / "kmesh-apply")
MESH = Path(__file__).resolve().parent.parent / "examples" / "mesh" / "mesh.yaml"
WAIT = 15.0  # seconds any one expectation may take on a loaded machine


class Watch:
    """A running watcher whose JSON log lines are collected as they come."""

    def __init__(self, paths: list[Path], root: Path, *extra: str, env: dict[str, str] | None = None,
                 prefix: list[str] | None = None):
        argv = [*(prefix or []), KMESH_APPLY, "watch", *map(str, paths), "--pin-root", str(root),
                "--log-format", "json", *extra]
        self.proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                                     env={**os.environ, **(env or {})})
        self.lines: list[dict] = []
        self.raw: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.raw.append(line)
            if line.startswith("{"):
                self.lines.append(json.loads(line))

    def events(self, kind: str) -> list[dict]:
        return [e for e in self.lines if e["event"] == kind]

    def wait_for(self, what: Callable[[], object], label: str) -> None:
        deadline = time.monotonic() + WAIT
        while not what():
            assert self.proc.poll() is None, f"watch exited early while waiting for {label}:\n{''.join(self.raw)}"
            assert time.monotonic() < deadline, f"timed out waiting for {label}:\n{''.join(self.raw)}"
            time.sleep(0.01)

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=WAIT)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()
            self._reader.join(timeout=WAIT)


def save(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.swp")
    tmp.write_text(text)
    os.replace(tmp, path)


def conf_dir(tmp_path: Path, name: str, text: str) -> Path:
    """A config directory holding one file."""
    conf = tmp_path / "conf"
    conf.mkdir()
    (conf / name).write_text(text)
    return conf


def poke_counter(root: Path, key: int, value: int) -> None:
    """An out-of-band write, as an operator would make it: bpftool on the `counters` array."""
    subprocess.run(["bpftool", "map", "update", "pinned", str(root / "counters"), "key", str(key), "0", "0", "0",
                    "value", str(value), "0", "0", "0", "0", "0", "0", "0"], check=True)


def value(root: Path, name: str, key: int) -> bytes | None:
    live = read_live(str(root)).maps.get(name)
    return None if live is None else live.entries.get(key.to_bytes(4, "little"))


def weight(root: Path) -> int | None:
    """The weight of backends-web entry 2 (an endpoint struct: ip, port, weight)."""
    raw = value(root, "backends-web", 2)
    return None if raw is None else int.from_bytes(raw[6:8], "little")


def test_edits_broken_files_drift_systemd_and_sigterm(pin_root: Path, tmp_path: Path):
    conf = conf_dir(tmp_path, "mesh.yaml", MESH.read_text())
    sock_path = tmp_path / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(sock_path))
    sock.settimeout(WAIT)
    w = Watch([conf], pin_root, "--drift-interval", "0.3",
              env={"NOTIFY_SOCKET": str(sock_path), "WATCHDOG_USEC": "200000"})
    try:
        messages: set[str] = set()
        while not {"READY=1", "WATCHDOG=1"} <= messages:  # pings start with the first read (it may be long)
            messages.add(sock.recv(4096).decode().split("\n")[0])
        assert weight(pin_root) == 50
        first = w.events("reconcile")[0]
        assert first["trigger"] == "start" and "services:create" in first["maps"]

        save(conf / "mesh.yaml", MESH.read_text().replace("weight: 50}", "weight: 51}"))
        w.wait_for(lambda: weight(pin_root) == 51, "an atomic save to be applied")

        (conf / "mesh.yaml").write_text(MESH.read_text().replace("weight: 50}", "weight: 52}") + "\n  oops: [\n")
        w.wait_for(lambda: w.events("config-error"), "the broken file to be reported")
        assert "mesh.yaml:" in w.events("config-error")[0]["diagnostics"][0]
        assert weight(pin_root) == 51, "a broken file changes nothing"

        save(conf / "mesh.yaml", MESH.read_text().replace("weight: 50}", "weight: 53}"))
        w.wait_for(lambda: weight(pin_root) == 53, "the fix to be applied")

        poke_counter(pin_root, 1, 9)
        w.wait_for(lambda: w.events("drift"), "the out-of-band update to be corrected")
        assert value(pin_root, "counters", 1) == bytes(8)
        assert w.events("drift")[0]["maps"] == ["counters"]
    finally:
        code = w.stop()
        sock.close()
    assert code == 0, "".join(w.raw)
    assert w.lines[-1]["event"] == "stop"
    assert not (pin_root / "_kmesh_staging").exists()


def test_a_configmap_data_swap_is_applied(pin_root: Path, tmp_path: Path):
    """Kubernetes mounts a ConfigMap as links through `..data`, which it swaps atomically."""
    vol = tmp_path / "configmap"
    first = vol / "..2026_01_01_00_00_00.1"
    first.mkdir(parents=True)
    (first / "mesh.yaml").write_text(MESH.read_text())
    (vol / "..data").symlink_to(first.name)
    (vol / "mesh.yaml").symlink_to("..data/mesh.yaml")
    w = Watch([vol], pin_root)
    try:
        w.wait_for(lambda: w.events("reconcile"), "the first apply")
        second = vol / "..2026_01_01_00_01_00.2"
        second.mkdir()
        (second / "mesh.yaml").write_text(MESH.read_text().replace("weight: 50}", "weight: 77}"))
        (vol / "..data_tmp").symlink_to(second.name)
        os.replace(vol / "..data_tmp", vol / "..data")
        shutil.rmtree(first)
        w.wait_for(lambda: weight(pin_root) == 77, "the swapped ConfigMap to be applied")
    finally:
        assert w.stop() == 0


def test_sigkill_mid_flush_then_restart_converges(pin_root: Path, tmp_path: Path):
    """Killed between switching the slots and moving the swapped maps into place (the first rename)."""
    conf = conf_dir(tmp_path, "services.yaml", big_config(6, 200, 1))
    w = Watch([conf], pin_root, env={"KMESH_APPLY_CACHE_DIR": "off"},  # the cache renames files too
              prefix=["strace", "-f", "-qq", "-o", "/dev/null", "-e", "inject=rename,renameat,renameat2:when=1:signal=KILL"])
    try:
        w.wait_for(lambda: w.events("reconcile"), "the first apply")
        save(conf / "services.yaml", big_config(6, 200, 9))  # every inner map swapped
        deadline = time.monotonic() + WAIT
        while w.proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)
    finally:
        w.stop()
    assert w.proc.returncode == -signal.SIGKILL and (pin_root / "_kmesh_staging").exists(), "the kill did not land mid-flush"
    again = Watch([conf], pin_root)
    try:
        again.wait_for(lambda: again.events("reconcile"), "the restart's apply")
    finally:
        assert again.stop() == 0
    plan = subprocess.run([KMESH_APPLY, "plan", str(conf), "--pin-root", str(pin_root), "--detailed-exitcode"],
                          capture_output=True, text=True)
    assert plan.returncode == 0, plan.stdout + plan.stderr
    assert not (pin_root / "_kmesh_staging").exists()


def test_sighup_rereads_files_and_the_pin_root(pin_root: Path, tmp_path: Path):
    conf = conf_dir(tmp_path, "mesh.yaml", MESH.read_text())
    w = Watch([conf], pin_root, "--drift-interval", "600")
    try:
        w.wait_for(lambda: w.events("reconcile"), "the first apply")
        poke_counter(pin_root, 2, 5)
        w.proc.send_signal(signal.SIGHUP)
        w.wait_for(lambda: w.events("drift"), "SIGHUP to find the out-of-band update")
        assert w.events("reread") and value(pin_root, "counters", 2) == bytes(8)
    finally:
        assert w.stop() == 0


def test_sigterm_during_an_apply_finishes_it(pin_root: Path, tmp_path: Path):
    conf = conf_dir(tmp_path, "services.yaml", big_config(20, 500, 1))
    w = Watch([conf], pin_root)
    try:
        w.wait_for(lambda: w.events("reconcile"), "the first apply")
        save(conf / "services.yaml", big_config(20, 500, 9))  # 20 maps swapped
        w.wait_for(lambda: (pin_root / "_kmesh_staging").exists() or len(w.events("reconcile")) > 1,
                   "the apply to start")
    finally:
        assert w.stop() == 0, "".join(w.raw)
    assert not (pin_root / "_kmesh_staging").exists()
    assert len(w.events("reconcile")) == 2, "the apply in flight was finished and logged"
    live = read_live(str(pin_root))
    assert all(m.entries[(0).to_bytes(4, "little")] == (9).to_bytes(8, "little") for n, m in live.maps.items()
               if n != "services")
