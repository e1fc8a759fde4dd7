"""Issue 21: `watch` never destroys on a guess. Faults injected as an operator's node sees them (files
truncated and written with pauses, vim's rename-and-rewrite, empty saves, ConfigMap `..data` swaps,
JSON files, maps of every type appearing, a held map removed, a mass destroy, a 50 MB file), while a
poller thread reads every map common to the old and the new configuration, as a loader opening pins
would: none of them may ever vanish, and each must always hold one whole version of its entries."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time
from pathlib import Path
from typing import Callable, Iterator

import pytest
from conftest import run_cli
from foreign_maps import pin_foreign_maps
from test_holders import DIRECT_PROG, load  # noqa: F401 (load: a fixture)
from test_watch import KMESH_APPLY, Watch, conf_dir
from test_watch_integration import free_port, get

from kmesh_apply.errors import KernelError
from kmesh_apply.kernel.maps import Map
from kmesh_apply.sync.settle import SETTLE

MID_WRITE_PAUSE = 0.5  # seconds a writer holds the file open half-written (longer than SETTLE)
SERVICES = 12
ENTRIES = 40  # per service map: the file is about 30 KiB, written in chunks


def config(version: int, services: int = SERVICES, extra: str = "") -> str:
    """Service maps (each entry's value is the version) and, last in the file, the outer map holding them:
    a prefix of the file cut at a line is valid YAML that names fewer maps (what a half-written file gives)."""
    out = ["inner_maps:\n"]
    for i in range(services):
        out.append(f"  svc-{i}:\n    type: hash\n    key: u32\n    value: u64\n    max_entries: 64\n    entries:\n")
        out += [f"      {k}: {version}\n" for k in range(ENTRIES)]
    out.append(extra)
    out.append("outer_maps:\n  services:\n    type: hash_of_maps\n    key: u32\n    max_entries: 64\n"
               "    inner_map: svc-0\n    entries:\n")
    out += [f"      {i}: svc-{i}\n" for i in range(services)]
    return "".join(out)


class Poller:
    """Reads the maps named by `maps` as fast as it can, from its own thread; records every time one is
    missing, or holds anything but ENTRIES entries of one version."""

    def __init__(self, root: Path, maps: list[str]):
        self.root, self.maps = root, maps
        self.problems: list[str] = []
        self.reads = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            for name in self.maps:
                try:
                    with Map.open_pinned(str(self.root / name)) as m:
                        entries = m.items() if name != "services" else None
                        slots = len(m.slots()) if name == "services" else None
                except KernelError as e:
                    self.problems.append(f"{name} vanished ({e})")
                    continue
                if slots is not None and slots != SERVICES:
                    self.problems.append(f"services holds {slots} slots")
                if entries is not None:
                    versions = {int.from_bytes(v, "little") for v in entries.values()}
                    if len(entries) != ENTRIES or len(versions) != 1:
                        self.problems.append(f"{name} half-filled: {len(entries)} entries of versions {sorted(versions)}")
            self.reads += 1

    def stop(self) -> list[str]:
        self._stop.set()
        self._thread.join()
        assert self.reads > 10, "the poller hardly ran"
        return self.problems


def common_maps() -> list[str]:
    return [f"svc-{i}" for i in range(SERVICES)] + ["services"]


def version_in_kernel(root: Path) -> set[int]:
    out = set()
    for i in range(SERVICES):
        try:
            with Map.open_pinned(str(root / f"svc-{i}")) as m:
                out |= {int.from_bytes(v, "little") for v in m.items().values()}
        except KernelError:
            out.add(-1)
    return out


@pytest.fixture
def watched(pin_root: Path, tmp_path: Path) -> Iterator[tuple[Watch, Path, Poller]]:
    """A watcher on a directory holding config(1), applied, and a poller on its maps; both stopped after."""
    conf = conf_dir(tmp_path, "mesh.yaml", config(1))
    w = Watch([conf], pin_root, "--drift-interval", "600", "--metrics-addr", f"127.0.0.1:{free_port()}")
    try:
        w.wait_for(lambda: w.events("reconcile") and version_in_kernel(pin_root) == {1}, "the first apply")
        poller = Poller(pin_root, common_maps())
        try:
            yield w, conf / "mesh.yaml", poller
        finally:
            problems = poller.stop()
            assert not problems, problems[:10]
    finally:
        assert w.stop() == 0, "".join(w.raw)
    assert not [e for e in w.lines if e["event"] == "reconcile" and any(m.endswith(":destroy") for m in e["maps"])], \
        "a map was destroyed"


def metrics_url(w: Watch) -> str:
    w.wait_for(lambda: w.events("start"), "the start line")
    return w.events("start")[0]["metrics"]


def chunks(text: str, n: int) -> list[str]:
    """`text` in `n` parts cut at line ends."""
    lines = text.splitlines(keepends=True)
    step = -(-len(lines) // n)
    return ["".join(lines[i:i + step]) for i in range(0, len(lines), step)]


def one_writer_with_pauses(path: Path, text: str) -> None:
    """Truncate, then write in chunks 10-60 ms apart through one open file (a script's `echo >`)."""
    with open(path, "w") as f:
        for i, part in enumerate(chunks(text, 5)):
            f.write(part)
            f.flush()
            time.sleep(0.01 + 0.0125 * i)


def writers_with_pauses(path: Path, text: str) -> None:
    """`: > f`, then `cat part >> f` for each chunk, 10-60 ms apart: every write is closed."""
    path.write_text("")
    for i, part in enumerate(chunks(text, 5)):
        time.sleep(0.01 + 0.0125 * i)
        with open(path, "a") as f:
            f.write(part)


def vim_with_a_gap(path: Path, text: str) -> None:
    """vim's save with a backup: the file renamed to `file~`, 20 ms, a new file written, the backup removed."""
    backup = path.with_name(path.name + "~")
    os.replace(path, backup)
    time.sleep(0.02)
    with open(path, "w") as f:
        for part in chunks(text, 3):
            f.write(part)
            f.flush()
            time.sleep(0.005)
    backup.unlink()


@pytest.mark.parametrize("save", [one_writer_with_pauses, writers_with_pauses, vim_with_a_gap])
def test_a_file_is_applied_only_once_its_writer_is_done(watched, pin_root: Path, save: Callable[[Path, str], None]):
    w, path, _ = watched
    for version in range(2, 6):
        before = len(w.events("reconcile"))
        save(path, config(version))
        w.wait_for(lambda: version_in_kernel(pin_root) == {version}, f"version {version}")
        time.sleep(0.3)  # anything applied late would show now
        passes = w.events("reconcile")[before:]
        assert len(passes) == 1, [p["message"] for p in passes]  # one pass per save: no partial file applied
    assert not w.events("config-error"), "a half-written file was read"


def test_a_writer_holding_the_file_open_mid_write_is_waited_for(watched, pin_root: Path):
    """A writer that stops half-way for longer than SETTLE, the file still open: no event tells when it
    is done, the lease probe does. Nothing is read until it closes the file, then the whole file, once."""
    w, path, _ = watched
    assert MID_WRITE_PAUSE > SETTLE
    before = len(w.events("reconcile"))
    first, rest = chunks(config(2), 2)  # the first half is valid YAML that names fewer maps
    with open(path, "w") as f:
        f.write(first)
        f.flush()
        time.sleep(MID_WRITE_PAUSE)
        assert len(w.events("reconcile")) == before and version_in_kernel(pin_root) == {1}, "read while held"
        f.write(rest)
    w.wait_for(lambda: version_in_kernel(pin_root) == {2}, "version 2")
    time.sleep(0.3)  # anything applied late would show now
    assert len(w.events("reconcile")) == before + 1 and not w.events("config-error")


def test_a_writer_that_keeps_the_file_open_is_reported_by_health(watched, pin_root: Path):
    """A writer that stops half-way and keeps the file open stops every read (a pass waits for every
    followed file): once it has held the file for WRITER_QUIET, /healthz says which file and why; the
    state applied stays; once the file is closed, it is read and health is ok again."""
    w, path, _ = watched
    url = metrics_url(w)
    first, rest = chunks(config(2), 2)
    with open(path, "w") as f:
        f.write(first)
        f.flush()
        w.wait_for(lambda: get(f"{url}/healthz")[0] == 503, "health to report the held file")
        assert f"{path.name} held open for writing" in get(f"{url}/healthz")[1]
        assert version_in_kernel(pin_root) == {1}, "read while held"
        f.write(rest)
    w.wait_for(lambda: version_in_kernel(pin_root) == {2} and get(f"{url}/healthz")[0] == 200,
               "version 2, and health once the file is closed")


@pytest.mark.parametrize("text", ["", "# everything moved to other files\n# (not yet)\n"])
@pytest.mark.parametrize("in_place", [True, False])
def test_an_empty_save_is_a_configuration_error(watched, text: str, in_place: bool):
    w, path, _ = watched
    url = metrics_url(w)
    errors = counter(url, "kmesh_apply_config_errors_total")
    if in_place:
        path.write_text(text)
    else:
        (path.parent / ".swap").write_text(text)
        os.replace(path.parent / ".swap", path)
    w.wait_for(lambda: get(f"{url}/healthz")[0] == 503, "health to report the empty file")
    assert "holds no configuration" in get(f"{url}/healthz")[1]
    assert counter(url, "kmesh_apply_config_errors_total") == errors + 1
    path.write_text(config(7))
    w.wait_for(lambda: get(f"{url}/healthz")[0] == 200, "the fix")


def counter(url: str, name: str) -> float:
    for line in get(f"{url}/metrics")[1].splitlines():
        if line.startswith(name + "{"):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"no {name}")


def test_a_configmap_data_swap_keeps_every_map(pin_root: Path, tmp_path: Path):
    """kubelet's atomic writer: a new timestamped directory, a `..data_tmp` link renamed over `..data`."""
    vol = tmp_path / "configmap"
    vol.mkdir()

    def publish(version: int, n: int) -> None:
        target = vol / f"..2026_01_01_00_00_{n:02d}.{n}"
        target.mkdir()
        (target / "mesh.yaml").write_text(config(version))
        (target / "extra.json").write_text(json.dumps({"inner_maps": {"extra": {
            "type": "hash", "key": "u32", "value": "u64", "max_entries": 4, "entries": {"1": version}}}}))
        old = os.readlink(vol / "..data") if (vol / "..data").exists() else None
        (vol / "..data_tmp").symlink_to(target.name)
        os.replace(vol / "..data_tmp", vol / "..data")
        for name in ("mesh.yaml", "extra.json"):
            if not (vol / name).is_symlink():
                (vol / name).symlink_to(f"..data/{name}")
        if old is not None:
            for f in (vol / old).iterdir():
                f.unlink()
            (vol / old).rmdir()

    publish(1, 1)
    w = Watch([vol], pin_root, "--drift-interval", "600")
    try:
        w.wait_for(lambda: w.events("reconcile") and version_in_kernel(pin_root) == {1}, "the first apply")
        poller = Poller(pin_root, common_maps())
        for n in range(2, 6):
            publish(n, n)
            w.wait_for(lambda: version_in_kernel(pin_root) == {n}, f"swap {n}")
            with Map.open_pinned(str(pin_root / "extra")) as m:
                assert m.lookup((1).to_bytes(4, "little")) == n.to_bytes(8, "little")
        assert not poller.stop()
    finally:
        assert w.stop() == 0, "".join(w.raw)


def test_json_files_in_a_directory_are_followed(watched, pin_root: Path):
    w, path, _ = watched
    doc = {"inner_maps": {"from-json": {"type": "hash", "key": "u32", "value": "u64", "max_entries": 4, "entries": {"1": 1}}}}
    (path.parent / "more.json").write_text(json.dumps(doc))
    w.wait_for(lambda: (pin_root / "from-json").exists(), "the new JSON file")
    doc["inner_maps"]["from-json"]["entries"] = {"1": 2}
    (path.parent / ".tmp").write_text(json.dumps(doc))
    os.replace(path.parent / ".tmp", path.parent / "more.json")

    def value() -> bytes | None:
        with Map.open_pinned(str(pin_root / "from-json")) as m:
            return m.lookup((1).to_bytes(4, "little"))

    w.wait_for(lambda: value() == (2).to_bytes(8, "little"), "the edited JSON file")


def test_maps_of_every_type_appearing_do_not_stop_the_watcher(watched, pin_root: Path):
    w, path, _ = watched
    pin_foreign_maps(pin_root)
    w.proc.send_signal(signal.SIGHUP)  # reads the whole pin root again now
    w.wait_for(lambda: w.events("reread"), "the re-read")
    for version in (2, 3):
        one_writer_with_pauses(path, config(version))
        w.wait_for(lambda: version_in_kernel(pin_root) == {version}, f"version {version} beside maps of every type")
    assert not w.events("error"), [e["message"] for e in w.events("error")]


def test_a_held_map_removed_from_the_file_is_kept_and_reported(pin_root: Path, tmp_path: Path, load):
    conf = conf_dir(tmp_path, "mesh.yaml", config(1, extra=HELD_MAP))
    w = Watch([conf], pin_root, "--metrics-addr", f"127.0.0.1:{free_port()}")
    try:
        w.wait_for(lambda: (pin_root / "values").exists(), "the first apply")
        url = metrics_url(w)
        prog = load(DIRECT_PROG, "direct", {"values": pin_root / "values"})
        (conf / ".tmp").write_text(config(2))
        os.replace(conf / ".tmp", conf / "mesh.yaml")
        w.wait_for(lambda: w.events("error"), "the refusal")
        assert f'program {prog.id} "direct"' in w.events("error")[0]["message"]
        assert "the plan would destroy it" in w.events("error")[0]["message"]
        assert (pin_root / "values").exists() and get(f"{url}/healthz")[0] == 503
        assert version_in_kernel(pin_root) == {1}, "nothing of the refused pass was applied"
    finally:
        assert w.stop() == 0, "".join(w.raw)
    w = Watch([conf], pin_root, "--allow-replace-in-use", "--metrics-addr", f"127.0.0.1:{free_port()}")
    try:
        w.wait_for(lambda: not (pin_root / "values").exists(), "the destroy, allowed")
        status, body = get(f"{metrics_url(w)}/healthz")
        assert status == 503 and "the destroyed map 'values'" in body and f"program {prog.id}" in body
        res = run_cli("kmesh-apply", "plan", str(conf), "--detailed-exitcode", "--pin-root", str(pin_root))
        assert res.returncode == 2 and "the destroyed map 'values'" in res.stdout
    finally:
        assert w.stop() == 0, "".join(w.raw)


HELD_MAP = "  values:\n    type: hash\n    key: u32\n    value: u32\n    max_entries: 64\n    entries: {1: 1}\n"


def test_a_mass_destroy_waits_for_confirmation(pin_root: Path, tmp_path: Path):
    conf = conf_dir(tmp_path, "mesh.yaml", config(1))
    for name in ("few", "keep"):
        (conf / f"{name}.yaml").write_text(f"inner_maps:\n  {name}: {{type: hash, key: u32, value: u64, max_entries: 4}}\n")
    w = Watch([conf], pin_root, "--max-destroy", "5", "--metrics-addr", f"127.0.0.1:{free_port()}")
    try:
        w.wait_for(lambda: (pin_root / "few").exists(), "the first apply")
        url = metrics_url(w)
        removed = time.monotonic()
        (conf / "few.yaml").unlink()  # a file removed for good: its map goes, once the file stayed gone a while
        w.wait_for(lambda: not (pin_root / "few").exists(), "the removed file's map to go")
        assert time.monotonic() - removed >= 1.0
        removed = time.monotonic()
        (conf / "mesh.yaml").rename(conf / "mesh.yaml.bak")  # 13 maps would go: more than 5
        w.wait_for(lambda: w.events("destroy-held"), "the destroy to be held")
        held = w.events("destroy-held")[0]
        assert len(held["maps"]) == SERVICES + 1 and "--max-destroy 5" in held["reason"] and "SIGHUP" in held["reason"]
        status, body = get(f"{url}/healthz")
        assert status == 503 and "13 maps would be destroyed" in body
        assert version_in_kernel(pin_root) == {1} and (pin_root / "services").exists()
        w.proc.send_signal(signal.SIGHUP)  # the operator confirms
        w.wait_for(lambda: not (pin_root / "services").exists(), "the confirmed destroy")
        assert time.monotonic() - removed > 1.0 and (pin_root / "keep").exists()
        w.wait_for(lambda: get(f"{url}/healthz")[0] == 200, "health once done")
    finally:
        assert w.stop() == 0, "".join(w.raw)


def test_leftover_maps_beyond_the_limit_are_held_at_start(pin_root: Path, tmp_path: Path):
    conf = conf_dir(tmp_path, "mesh.yaml", config(1))
    res = run_cli("kmesh-apply", "apply", str(conf), "--auto-approve", "--pin-root", str(pin_root))
    assert res.returncode == 0, res.stderr
    (conf / "mesh.yaml").write_text("inner_maps:\n  other: {type: hash, key: u32, value: u64, max_entries: 4}\n")
    w = Watch([conf], pin_root)  # another directory, or a wrong one: restarting must not wipe the pin root
    try:
        w.wait_for(lambda: w.events("destroy-held"), "the destroy to be held")
        assert (pin_root / "other").exists() and version_in_kernel(pin_root) == {1}
    finally:
        assert w.stop() == 0, "".join(w.raw)
    w = Watch([conf], pin_root, "--max-destroy", "100")  # restarted with a larger limit: confirmed
    try:
        w.wait_for(lambda: not (pin_root / "services").exists(), "the destroy")
    finally:
        assert w.stop() == 0, "".join(w.raw)


# ---- a 50 MB file ----------------------------------------------------------------------------------

BIG_ENTRIES = 1_250_000


def big_config(first: int) -> str:
    lines = [f"      {4_000_000_000 - i}: {18_000_000_000_000_000_000 - i * 7919}\n" for i in range(BIG_ENTRIES)]
    lines[0] = f"      4000000000: {first}\n"
    return ("inner_maps:\n  big:\n    type: hash\n    key: u32\n    value: u64\n"
            f"    max_entries: {BIG_ENTRIES + 1000}\n    flags: [no_prealloc]\n    entries:\n" + "".join(lines))


def peak_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise AssertionError("no VmHWM")


def test_a_50_mb_file(pin_root: Path, tmp_path: Path, bpf_scratch: Path):
    """Parsed block by block as `apply` does (peak within 2x the CLI's), and a long parse never keeps
    /healthz or SIGTERM waiting more than a second or so."""
    text = big_config(1)
    assert len(text) > 48_000_000
    conf = conf_dir(tmp_path, "big.yaml", text)
    other = bpf_scratch / "cli-root"
    cli = subprocess.Popen([KMESH_APPLY, "apply", str(conf), "--auto-approve", "--pin-root", str(other)],
                           env={**os.environ, "KMESH_APPLY_CACHE_DIR": str(tmp_path / "cli-cache")},
                           stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    cli_peak = 0
    while cli.poll() is None:  # its own peak (the getrusage of children counts the test's memory forked with it)
        try:
            if "kmesh-apply" in Path(f"/proc/{cli.pid}/cmdline").read_text():
                cli_peak = max(cli_peak, peak_kib(cli.pid))
        except (OSError, AssertionError):
            pass
        time.sleep(0.005)
    assert cli.returncode == 0, cli.stderr.read() if cli.stderr else ""
    w = Watch([conf], pin_root, "--metrics-addr", f"127.0.0.1:{free_port()}",
              env={"KMESH_APPLY_CACHE_DIR": str(tmp_path / "watch-cache")})
    try:
        deadline = time.monotonic() + 120
        while not w.events("reconcile") and time.monotonic() < deadline:
            assert w.proc.poll() is None, "".join(w.raw)
            time.sleep(0.05)
        url = metrics_url(w)
        slowest = [0.0]
        stop = threading.Event()

        def probe() -> None:
            while not stop.is_set():
                t = time.monotonic()
                get(f"{url}/healthz")
                slowest[0] = max(slowest[0], time.monotonic() - t)
                time.sleep(0.02)

        prober = threading.Thread(target=probe, daemon=True)
        prober.start()
        (conf / ".tmp").write_text(big_config(2))  # one entry changed
        os.replace(conf / ".tmp", conf / "big.yaml")
        deadline = time.monotonic() + 120  # two 50 MB loads on a shared, loaded machine
        while len(w.events("reconcile")) < 2 and not w.events("config-error") and time.monotonic() < deadline:
            assert w.proc.poll() is None, "".join(w.raw)
            time.sleep(0.05)
        stop.set()
        prober.join()
        assert "big updated; 1 entry written" in w.events("reconcile")[1]["message"]
        assert slowest[0] < 1.0, f"/healthz took {slowest[0]:.2f} s during the parse"
        assert peak_kib(w.proc.pid) < 2 * cli_peak, (peak_kib(w.proc.pid), cli_peak)

    finally:
        assert w.stop() == 0, "".join(w.raw)
        run_cli("kmesh-apply", "destroy", "--auto-approve", "--pin-root", str(other))
    (conf / ".tmp").write_text(big_config(3))
    os.replace(conf / ".tmp", conf / "big.yaml")
    w = Watch([conf], pin_root, env={"KMESH_APPLY_CACHE_DIR": str(tmp_path / "cold-cache")})  # a cold read: seconds
    try:
        time.sleep(1.0)
        assert not w.events("start"), "the read was not long enough to test SIGTERM during it"
        asked = time.monotonic()
        w.proc.send_signal(signal.SIGTERM)
        code = w.proc.wait(timeout=30)
        assert code == 0 and time.monotonic() - asked < 1.0, f"SIGTERM took {time.monotonic() - asked:.1f} s"
        w.wait_for(lambda: w.events("stop"), "the stop line")
        assert not w.events("reconcile"), "nothing applied from the abandoned read"
    finally:
        w.stop()
