"""Trust, the file-system side (issue 20 items 1-4, contract section 11): no other local user, forged
file or swapped path can make the tool act outside its pin root or for someone else.

Each attack is played by an unprivileged user made for the test (conftest's `unprivileged_user`); root then runs the
tool as an operator would, and the test checks that it refuses in one line and that nothing it
must not touch was touched (files compared byte for byte, maps with bpftool).
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import time
import uuid
from pathlib import Path

import pytest

from conftest import BPFFS, LocalUser, bpftool_json, run_cli, unprivileged_user

from kmesh_apply.errors import KmeshError
from kmesh_apply.kernel.maps import Map
from kmesh_apply.plan.saved import load_plan, plan_key, signed

CONFIG = """
inner_maps:
  backends:
    type: hash
    key: u32
    value: u32
    max_entries: 16
    entries: {entries}
  spare:
    type: array
    key: u32
    value: u32
    max_entries: 4
outer_maps:
  services:
    type: hash_of_maps
    key: u16
    max_entries: 4
    inner_map: backends
    entries:
      1: backends
"""


def config(tmp_path: Path, name: str = "c.yaml", entries: str = "{1: 10, 2: 20}") -> Path:
    path = tmp_path / name
    path.write_text(CONFIG.format(entries=entries))
    return path


def cli(*args: str, check: int | None = 0, umask: int | None = None) -> subprocess.CompletedProcess:
    if umask is None:
        res = run_cli("kmesh-apply", *args)
    else:
        exe = Path(os.environ.get("VIRTUAL_ENV", Path(__file__).parent.parent / ".venv")) / "bin" / "kmesh-apply"
        res = subprocess.run(["sh", "-c", f'umask {umask:03o}; exec "$@"', "sh", str(exe), *args],
                             capture_output=True, text=True)
    assert "Traceback" not in res.stderr, res.stderr
    if check is not None:
        assert res.returncode == check, f"exit {res.returncode}\n{res.stdout}\n{res.stderr}"
    return res


def dump(pin: Path) -> list:
    """A pinned map's entries as bpftool, the independent client, shows them."""
    return bpftool_json("map", "dump", "pinned", str(pin))


def listing(root: Path) -> dict[str, tuple[int, int]]:
    """Every entry under a directory: path -> (mode, inode), links not followed."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            st = os.lstat(os.path.join(dirpath, name))
            out[os.path.relpath(os.path.join(dirpath, name), root)] = (st.st_mode, st.st_ino)
    return out


@pytest.fixture
def precious(tmp_path: Path) -> Path:
    """A file of root's that no run may change or remove."""
    path = tmp_path / "precious.txt"
    path.write_text("root's own data\n")
    return path


def sh(user: LocalUser, script: str, check: bool = True) -> subprocess.CompletedProcess:
    """A shell script run as `user`, from / (the test's own directories are root's alone)."""
    res = subprocess.run(user.argv("sh", "-c", script), capture_output=True, text=True, cwd="/", timeout=60)
    assert not check or res.returncode == 0, f"as {user.name}: {script!r}: {res.stderr}"
    return res


# ---- item 1: a saved plan is data to check --------------------------------------------------


def test_a_forged_plan_from_another_user_is_refused_unread(tmp_path: Path, pin_root: Path, precious: Path):
    """The issue's plan: remove a file outside the pin root, shown as a plan with no changes."""
    cli("apply", str(config(tmp_path)), "--auto-approve", "--pin-root", str(pin_root))
    before = dump(pin_root / "backends")
    with unprivileged_user() as mallory:
        d = mallory.home
        forged = {"format": 1, "pin_root": str(pin_root), "fingerprint": {}, "changes": [],
                  "steps": [{"op": "remove", "map": "x", "pin": str(precious)},
                            {"op": "remove", "map": "backends", "pin": "backends"}]}
        sh(mallory, f"cat > {d}/plan.json <<'EOF'\n{json.dumps(forged)}\nEOF")
        res = cli("apply", f"{d}/plan.json", check=1)
    assert "carries no kmesh-apply signature" in res.stderr and "kmesh-apply plan CONFIG --out" in res.stderr
    assert "Apply complete" not in res.stdout
    assert precious.read_text() == "root's own data\n"
    assert dump(pin_root / "backends") == before


def resign(path: Path, edit) -> None:
    """Edit a saved plan's JSON and sign it again with the host's key: what a forger who stole the key
    (or a bug in the tool) could produce; the walls behind the signature must still hold."""
    text = path.read_bytes()
    doc = json.loads(text)
    del doc["signature"]
    edit(doc)
    path.write_bytes(signed(json.dumps(doc).encode(), plan_key(create=False)))


def _step(doc: dict, op: str) -> dict:
    return next(s for s in doc["steps"] if s["op"] == op)


FORGERIES = {
    "absolute pin": (lambda d, p, o: _step(d, "write").update(pin=str(p)), "touches what no plan may"),
    "pin in another pin root": (lambda d, p, o: _step(d, "write").update(pin=f"../{o.name}/backends"),
                                "touches what no plan may"),
    "dot-dot in the staging directory": (lambda d, p, o: _step(d, "write").update(pin="_kmesh_staging/../../x"),
                                         "touches what no plan may"),
    "a record of the tool": (lambda d, p, o: d["steps"].append({"op": "remove", "map": "r", "pin": "_kmesh_replaced"}),
                             "touches what no plan may"),
    "an extra step": (lambda d, p, o: d["steps"].append({"op": "remove", "map": "spare", "pin": "spare"}),
                      "is not one its changes need"),
    "a move onto another map": (lambda d, p, o: d["steps"].append({"op": "move", "map": "spare", "src": "spare",
                                                                    "dst": "backends"}),
                                "is not one its changes need"),
    "a dropped step": (lambda d, p, o: d["steps"].pop(), "lacks the step"),
    "an edited entry": (lambda d, p, o: _step(d, "write")["put"].update({"0x01000000": {"hex": "63000000"}}),
                        "is not one its changes need"),
    "changes that hide what the steps do": (lambda d, p, o: d.update(changes=[]), "is not one its changes need"),
    "steps that do not do what the changes say": (lambda d, p, o: d.update(steps=[]), "lacks the step"),
    "a step of another op": (lambda d, p, o: _step(d, "write").update(op="remove"), "expected the fields"),
}


@pytest.mark.parametrize("forgery", FORGERIES)
def test_a_resigned_forgery_is_refused_by_the_walls_behind_the_signature(tmp_path: Path, pin_root: Path, precious: Path,
                                                                         bpf_scratch: Path, forgery: str):
    other = bpf_scratch / "other"
    for root in (pin_root, other):
        cli("apply", str(config(tmp_path)), "--auto-approve", "--pin-root", str(root))
    saved = tmp_path / "p.plan"
    cli("plan", str(config(tmp_path, "d.yaml", "{1: 11, 3: 30}")), "--out", str(saved), "--pin-root", str(pin_root))
    edit, expected = FORGERIES[forgery]
    resign(saved, lambda doc: edit(doc, precious, other))
    ours, theirs = listing(pin_root), listing(other)
    maps = {root: dump(root / "backends") for root in (pin_root, other)}
    res = cli("apply", str(saved), check=1)
    assert expected in res.stderr and len(res.stderr.splitlines()) == 1, res.stderr
    assert "Apply complete" not in res.stdout
    assert listing(pin_root) == ours and listing(other) == theirs
    assert {root: dump(root / "backends") for root in (pin_root, other)} == maps
    assert precious.read_text() == "root's own data\n"


def test_an_honest_saved_plan_still_applies_and_shows_its_steps(tmp_path: Path, pin_root: Path):
    cli("apply", str(config(tmp_path)), "--auto-approve", "--pin-root", str(pin_root))
    saved = tmp_path / "p.plan"
    changed = config(tmp_path, "d.yaml", "{1: 11, 3: 30}")
    cli("plan", str(changed), "--out", str(saved), "--pin-root", str(pin_root))
    assert stat.S_IMODE(saved.stat().st_mode) == 0o600
    res = cli("apply", str(saved))
    assert "Steps, in order:\n  1. create hash map 'backends' at _kmesh_staging/backends\n" in res.stdout
    assert "4. move _kmesh_staging/backends into place as backends\n" in res.stdout
    assert "Apply complete!" in res.stdout
    assert cli("plan", str(changed), "--detailed-exitcode", "--pin-root", str(pin_root)).returncode == 0


def test_saved_plans_of_renames_and_migrations_still_apply(tmp_path: Path, pin_root: Path):
    """`migrate.from` and a layout change are re-derived like any other change (the plan's moves and
    first passes say what the configuration's `migrate:` was)."""
    old, new = tmp_path / "old.yaml", tmp_path / "new.yaml"
    old.write_text("maps:\n  stats-v1: {type: hash, key: u32, value: u32, max_entries: 8, manage_entries: listed, "
                   "entries: {1: 10}}\n")
    new.write_text("maps:\n  stats: {type: hash, key: u32, value: u64, max_entries: 8, manage_entries: listed, "
                   "entries: {1: 11}, migrate: {from: stats-v1}}\n")
    cli("apply", str(old), "--auto-approve", "--pin-root", str(pin_root))
    with Map.open_pinned(str(pin_root / "stats-v1")) as m:
        m.update((7).to_bytes(4, "little"), (70).to_bytes(4, "little"))  # a daemon's entry
    saved = tmp_path / "p.plan"
    cli("plan", str(new), "--out", str(saved), "--pin-root", str(pin_root), check=None)
    res = cli("apply", str(saved))
    assert "migrate" in res.stdout and "Apply complete!" in res.stdout, res.stdout
    with Map.open_pinned(str(pin_root / "stats")) as m:
        assert {int.from_bytes(k, "little"): int.from_bytes(v, "little") for k, v in m.items().items()} == {1: 11, 7: 70}
    assert not (pin_root / "stats-v1").exists()


def _deep(n: int) -> bytes:
    return b"[" * n + b"]" * n


def _with_steps(steps: bytes) -> bytes:
    """An empty plan's saved form, with these steps."""
    from kmesh_apply.plan.model import Plan

    return json.dumps(Plan("/sys/fs/bpf/x").to_saved()).encode().replace(b'"steps": []', b'"steps": [' + steps + b"]")


@pytest.mark.parametrize("body, expected", [
    (b'{"format": 1, "pin_root": ' + _deep(100_000) + b"}", "nested too deeply"),
    (b'{"format": 1, "pin_root": "/sys/fs/bpf/x", "x": ' + b"9" * 100_000 + b"}", "not valid JSON"),
    (b'{"format": 1, "pin_root": "/sys/fs/bpf/\xff"}', "not valid JSON"),
    (_with_steps(b'{"op": "create", "map": ' + _deep(30) + b', "pin": "m", "template": null}'),
     "steps[0].map: expected an object"),
    (_with_steps(b'{"op": "write", "map": "m", "pin": "m", "put": {"0x0z": {"hex": "00"}}, "delete": []}'),
     "expected bytes as lower-case hex digits"),
])
def test_a_malformed_saved_plan_is_one_clear_error_within_a_second(tmp_path: Path, body: bytes, expected: str):
    path = tmp_path / "bad.plan"
    path.write_bytes(signed(body, plan_key(create=True)))
    start = time.monotonic()
    with pytest.raises(KmeshError, match="not a usable saved plan") as e:
        load_plan(path)
    assert time.monotonic() - start < 1.0
    assert expected in str(e.value) and "\n" not in str(e.value)
    res = cli("apply", str(path), check=1)
    assert expected in res.stderr


def test_a_saved_plan_that_never_ends_is_refused(tmp_path: Path):
    fifo = tmp_path / "fifo.plan"
    os.mkfifo(fifo)
    with pytest.raises(KmeshError, match="not a regular file"):
        load_plan(fifo)
    huge = tmp_path / "huge.plan"
    with open(huge, "wb") as f:
        f.write(b'{"format": 1')
        f.truncate(3 << 30)  # sparse
    start = time.monotonic()
    res = cli("apply", str(huge), check=1)
    assert "larger than" in res.stderr and time.monotonic() - start < 5


def test_the_executor_refuses_pins_outside_the_pin_root_for_every_caller(pin_root: Path, precious: Path):
    """The last wall: whoever builds the plan (the synchroniser, the API), the executor checks every pin."""
    from kmesh_apply import api
    from kmesh_apply.plan.model import MovePin, Plan, RemovePin, WriteEntries
    from kmesh_apply.state import LiveState

    for step in (RemovePin("x", str(precious)), RemovePin("x", "../x"), MovePin("x", "a", "/tmp/x"),
                 WriteEntries("x", "_kmesh_staging/a/b"), RemovePin("x", "_kmesh_keys"), RemovePin("x", ""),
                 RemovePin("x\0", "x"), RemovePin("x", "."), MovePin("x", "_kmesh_replaced", "a")):
        with pytest.raises(KmeshError, match="touches what no plan may"):
            api.perform(Plan(str(pin_root), steps=[step]), LiveState(str(pin_root)))
    assert precious.exists() and not pin_root.exists()


# ---- item 2: pin roots no one else can steer ------------------------------------------------


def test_a_pin_root_another_user_made_is_refused(tmp_path: Path, pin_root: Path, bpf_scratch: Path):
    """The issue's attack: a predictable pin root pre-made by a user, with a link into another pin root."""
    victim = bpf_scratch / "victim"
    cli("apply", str(config(tmp_path)), "--auto-approve", "--pin-root", str(victim))
    before = dump(victim / "backends")
    with unprivileged_user() as mallory:
        sh(mallory, f"mkdir {pin_root} && ln -s {victim}/backends {pin_root}/backends")
        changed = config(tmp_path, "d.yaml", "{1: 99}")
        for args in (["apply", str(changed), "--auto-approve"], ["plan", str(changed)], ["destroy", "--auto-approve"],
                     ["show"]):
            res = cli(*args, "--pin-root", str(pin_root), check=1)
            assert f"belongs to {mallory.name} (uid {mallory.uid}), not to root (uid 0)" in res.stderr, res.stderr
            assert len(res.stderr.splitlines()) == 1
        assert os.path.islink(pin_root / "backends")
    assert dump(victim / "backends") == before


def test_a_link_in_a_pin_root_is_refused(tmp_path: Path, pin_root: Path, bpf_scratch: Path):
    victim = bpf_scratch / "victim"
    cli("apply", str(config(tmp_path)), "--auto-approve", "--pin-root", str(victim))
    before = dump(victim / "backends")
    pin_root.mkdir(mode=0o700)
    os.symlink(victim / "backends", pin_root / "backends")
    res = cli("apply", str(config(tmp_path, "d.yaml", "{1: 99}")), "--auto-approve", "--pin-root", str(pin_root), check=1)
    assert f"{pin_root}/backends is a symlink" in res.stderr and f"rm {pin_root}/backends" in res.stderr
    assert dump(victim / "backends") == before


def test_a_refusal_names_what_it_found_escaped(tmp_path: Path, pin_root: Path):
    """A name in a pin root may be someone else's choice: the refusal naming it forges no line and sends
    the terminal nothing it would act on."""
    pin_root.mkdir(mode=0o700)
    os.symlink("/etc/hostname", pin_root / "evil\nerror: all is well\x1b]0;pwned\x07")
    res = cli("plan", str(config(tmp_path)), "--pin-root", str(pin_root), check=1)
    assert len(res.stderr.splitlines()) == 1 and "\x1b" not in res.stderr and "\\x1b" in res.stderr, res.stderr
    assert "evil\\nerror: all is well" in res.stderr


def test_a_pin_root_others_can_write_is_refused(tmp_path: Path, pin_root: Path, bpf_scratch: Path):
    """A pin root an earlier version made under umask 000: another user drops a link in it."""
    victim = bpf_scratch / "victim"
    cli("apply", str(config(tmp_path)), "--auto-approve", "--pin-root", str(victim))
    before = dump(victim / "backends")
    pin_root.mkdir()
    pin_root.chmod(0o777)
    with unprivileged_user() as mallory:
        sh(mallory, f"ln -s {victim}/backends {pin_root}/backends")
        res = cli("apply", str(config(tmp_path, "d.yaml", "{1: 99}")), "--auto-approve", "--pin-root", str(pin_root),
                  check=1)
    assert "is writable by other users (mode 0777)" in res.stderr and f"chmod go-w {pin_root}" in res.stderr
    assert dump(victim / "backends") == before


def test_a_parent_another_user_could_swap_is_refused(tmp_path: Path, pin_root: Path):
    with unprivileged_user() as mallory:
        sh(mallory, f"mkdir {pin_root}")
        res = cli("apply", str(config(tmp_path)), "--auto-approve", "--pin-root", str(pin_root / "kmesh"), check=1)
        assert f"{pin_root} belongs to {mallory.name}" in res.stderr and "could swap" in res.stderr
        assert list(pin_root.iterdir()) == []


def test_pins_are_reached_through_the_pin_roots_descriptor(tmp_path: Path, pin_root: Path, bpf_scratch: Path):
    """Swapping the pin root's path for a link once it is open redirects nothing: every access is
    relative to the directory that was checked."""
    from kmesh_apply.pinroot.guard import PinRoot

    victim = bpf_scratch / "victim"
    cli("apply", str(config(tmp_path)), "--auto-approve", "--pin-root", str(victim))
    cli("apply", str(config(tmp_path)), "--auto-approve", "--pin-root", str(pin_root))
    moved = BPFFS / f"{pin_root.name}-moved"
    with PinRoot.open(str(pin_root)) as root:
        os.rename(pin_root, moved)
        os.symlink(victim, pin_root)
        try:
            assert root.unlink("spare")
            with root.open_map("backends") as m:
                assert m.id == bpftool_json("map", "show", "pinned", str(moved / "backends"))["id"]
        finally:
            os.unlink(pin_root)
            os.rename(moved, pin_root)
    assert (victim / "spare").exists() and not (pin_root / "spare").exists()


def test_directories_and_files_get_their_modes_whatever_the_umask(tmp_path: Path, pin_root: Path):
    cfg = config(tmp_path)
    saved, metrics = tmp_path / "p.plan", tmp_path / "m.prom"
    cli("plan", str(cfg), "--out", str(saved), "--metrics-file", str(metrics), "--pin-root", str(pin_root), umask=0)
    cli("apply", str(saved), umask=0)
    cli("apply", str(config(tmp_path, "d.yaml", "{1: 11}")), "--auto-approve", "--pin-root", str(pin_root), umask=0)
    assert stat.S_IMODE(pin_root.stat().st_mode) == 0o700
    assert stat.S_IMODE((pin_root / "_kmesh_layouts").stat().st_mode) == 0o700  # the layout of `services`
    for f in (saved, metrics):
        assert stat.S_IMODE(f.stat().st_mode) == 0o600
    for pin in pin_root.iterdir():
        assert not pin.stat().st_mode & 0o022


# ---- item 3: files it writes ------------------------------------------------------------------


def test_files_are_never_written_through_a_link_or_into_another_users_file(tmp_path: Path, pin_root: Path,
                                                                            precious: Path):
    cfg = config(tmp_path)
    cli("apply", str(cfg), "--auto-approve", "--pin-root", str(pin_root))
    with unprivileged_user() as mallory:
        link, theirs = (Path("/tmp") / f"kmt-{uuid.uuid4().hex[:12]}.{ext}" for ext in ("plan", "prom"))
        try:
            sh(mallory, f"ln -s {precious} {link} && touch {theirs} && chmod 666 {theirs}")
            for option, path in (("--out", link), ("--metrics-file", link), ("--out", theirs), ("--metrics-file", theirs)):
                res = cli("plan", str(cfg), option, str(path), "--pin-root", str(pin_root), check=1)
                assert f"refusing to write {path}: it belongs to {mallory.name}" in res.stderr, res.stderr
            assert precious.read_text() == "root's own data\n"
            st = theirs.stat()
            assert (st.st_uid, st.st_size) == (mallory.uid, 0)
        finally:
            link.unlink(missing_ok=True)
            theirs.unlink(missing_ok=True)


def test_a_link_of_ours_is_replaced_not_followed(tmp_path: Path, pin_root: Path, precious: Path):
    cfg = config(tmp_path)
    out = tmp_path / "p.plan"
    os.symlink(precious, out)
    cli("plan", str(cfg), "--out", str(out), "--pin-root", str(pin_root))
    assert not out.is_symlink() and precious.read_text() == "root's own data\n"
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []


# ---- item 4: the lock -------------------------------------------------------------------------


def test_an_unprivileged_user_cannot_hold_the_lock(tmp_path: Path, pin_root: Path):
    cfg = config(tmp_path)
    cli("apply", str(cfg), "--auto-approve", "--pin-root", str(pin_root))
    pin_root.chmod(0o755)  # readable by others, as a pin root of an earlier version was: still not theirs to lock
    with unprivileged_user() as mallory:
        holder = mallory.start("flock", str(pin_root), "sleep", "60")
        lock_dir = sh(mallory, "ls /run/kmesh-apply/locks", check=False)
        assert lock_dir.returncode != 0 and "Permission denied" in lock_dir.stderr
        time.sleep(0.3)
        assert holder.poll() is None, holder.stderr.read() if holder.stderr else ""
        cli("apply", str(config(tmp_path, "d.yaml", "{1: 11}")), "--auto-approve", "--lock-timeout", "1",
            "--pin-root", str(pin_root))
        cli("destroy", "--auto-approve", "--lock-timeout", "1", "--pin-root", str(pin_root))


def test_a_watch_holds_the_lock_even_when_its_pin_root_is_made_again(tmp_path: Path, pin_root: Path):
    cfg = config(tmp_path)
    exe = Path(os.environ.get("VIRTUAL_ENV", Path(__file__).parent.parent / ".venv")) / "bin" / "kmesh-apply"
    watch = subprocess.Popen([str(exe), "watch", str(cfg), "--pin-root", str(pin_root), "--drift-interval", "3600"],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 30
        while not (pin_root / "services").exists():
            assert watch.poll() is None and time.monotonic() < deadline, watch.communicate()
            time.sleep(0.1)
        for pin in sorted(pin_root.rglob("*"), key=lambda p: -len(p.parts)):
            pin.rmdir() if pin.is_dir() else pin.unlink()
        pin_root.rmdir()
        pin_root.mkdir(mode=0o700)
        res = cli("apply", str(cfg), "--auto-approve", "--lock-timeout", "0.5", "--pin-root", str(pin_root), check=1)
        assert f"is locked by process {watch.pid} (kmesh-apply)" in res.stderr, res.stderr
    finally:
        watch.terminate()
        watch.communicate(timeout=30)
