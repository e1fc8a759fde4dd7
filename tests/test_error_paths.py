"""Error paths no other test reached (issue 26 item 7): each names what is wrong and where, as one
clear message, and changes nothing."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import pinned_maps, run_cli
from kmesh_apply.config import load_config
from kmesh_apply.config.loader import read_source
from kmesh_apply.ctype import TypeSpecError, parse_type
from kmesh_apply.errors import ConfigError, KmeshError
from kmesh_apply.pinroot.guard import PinRoot

SMALL = "inner_maps:\n  m: {type: hash, key: u32, value: u64, max_entries: 4, entries: {1: 2}}\n"


def one_diagnostic(paths: list[Path]) -> str:
    with pytest.raises(ConfigError) as err:
        load_config(paths, use_cache=False)
    (d,) = err.value.diagnostics
    return f"{d.file}: {d.message}"


def test_a_missing_file(tmp_path: Path) -> None:
    assert one_diagnostic([tmp_path / "nope.yaml"]) == f"{tmp_path}/nope.yaml: no such file or directory"


def test_a_directory_without_configs(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("not a config")
    assert one_diagnostic([tmp_path]) == f"{tmp_path}: the directory holds no *.yaml, *.yml or *.json files"


def test_a_file_that_is_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "latin1.yaml"
    path.write_bytes(SMALL.replace("m:", "caf\xe9:").encode("latin-1"))
    assert one_diagnostic([path]) == f"{path}: not UTF-8 text (invalid continuation byte at byte 17)"


def test_an_unreadable_file(tmp_path: Path) -> None:
    """Root without CAP_DAC_OVERRIDE cannot read a file of mode 000: the CLI says so and exits 1; a file
    that opens but fails to read (here /proc/self/mem at offset 0: EIO) is a diagnostic of the loader."""
    path = tmp_path / "secret.yaml"
    path.write_text(SMALL)
    path.chmod(0)
    exe = Path(sys.executable).parent / "kmesh-apply"
    res = subprocess.run(["setpriv", "--inh-caps=-all", "--bounding-set=-all", str(exe), "validate", str(path)],
                         capture_output=True, text=True)
    assert res.returncode == 1 and f"Path '{path}' is not readable" in res.stderr, res.stderr
    assert str(read_source(Path("/proc/self/mem"))) == "/proc/self/mem: cannot read: Input/output error"


@pytest.mark.parametrize("spec, message", [
    ("u32[0]", "'u32[0]': an array needs at least one element"),
    ({"struct": []}, "a struct is a non-empty list of {field: type} mappings"),
    ({"struct": "x"}, "a struct is a non-empty list of {field: type} mappings"),
    ({"union": []}, "a union is a non-empty list of {field: type} mappings"),
    ({"struct": [{"a": "u8"}, {"a": "u8"}]}, "struct field 'a' is defined twice"),
    ({"struct": [{"a": "u8", "b": "u8"}]}, "each struct field is a mapping of one field name to its type"),
    ({"enum": "be16"}, "an enum's base is a host-order integer type (u8..u64, i8..i64), got 'be16'"),
    ({"enum": "u8", "values": {"A": 300}}, "enum value A: expected an integer 0..255 for u8, got 300"),
    ({"array": "u8", "length": 0}, "an array's length is a positive integer up to 65536, got 0"),
    ({"lpm": "mac"}, "lpm family must be ipv4 or ipv6, got 'mac'"),
    ({"struct": [{"a": "u8:9"}]}, "field 'a': a bitfield is a host-order integer type with a width of 1..8 bits"),
    ({"struct": [{"a": "u8:0"}]}, "field 'a': a bitfield is a host-order integer type with a width of 1..8 bits"),
    (7, "a type is a name or a mapping, got 7"),
    ({"bogus": 1}, "unknown type {bogus: 1}: a mapping type is {lpm: ...}"),
    ({"type": "u32", "format": "ipv6"}, "format ipv6 is 16 bytes but the field's u32 is 4"),
    ("u24", "unknown type 'u24': did you mean 'u64'?"),
])
def test_type_spec_errors(spec: object, message: str) -> None:
    with pytest.raises(TypeSpecError) as err:
        parse_type(spec)
    assert str(err.value).startswith(message), str(err.value)


def test_pin_roots_refused_before_anything_is_touched(bpf_scratch: Path) -> None:
    with pytest.raises(KmeshError, match="pin root 'relative/root' must be an absolute path"):
        PinRoot.make("relative/root")
    with pytest.raises(KmeshError, match=r"must not contain '\.\.'"):
        PinRoot.make(f"{bpf_scratch}/a/../b")
    assert not (bpf_scratch / "b").exists()


def test_a_pin_root_that_is_a_map(pin_root: Path, tmp_path: Path) -> None:
    """A pin root path where a map is pinned is not a directory: refused, the map left alone."""
    cfg = tmp_path / "c.yaml"
    cfg.write_text(SMALL)
    assert run_cli("kmesh-apply", "apply", str(cfg), "--auto-approve", "--pin-root", str(pin_root)).returncode == 0
    target = pin_root / "m"
    with pytest.raises(KmeshError, match=re.escape(f"pin root {target}: {target} exists and is not a directory")):
        PinRoot.make(str(target))
    res = run_cli("kmesh-apply", "apply", str(cfg), "--auto-approve", "--pin-root", str(target))
    assert res.returncode == 1 and "exists and is not a directory" in res.stderr and "Traceback" not in res.stderr
    assert [p.name for p in pinned_maps(pin_root)] == ["m"]


@pytest.mark.parametrize("content, why", [
    ("", "empty"),  # an emptied file never destroys maps (refused as holding no configuration)
    ("{not json", "not JSON"), ('{"format": 99}', "another format"), ("[]", "not an object"),
])
def test_a_bad_saved_plan_is_refused(tmp_path: Path, pin_root: Path, content: str, why: str) -> None:
    saved = tmp_path / "bad.plan"
    saved.write_text(content)
    res = run_cli("kmesh-apply", "apply", str(saved), "--pin-root", str(pin_root))
    assert res.returncode == 1 and "Traceback" not in res.stderr, (why, res.stderr)
    assert str(saved) in res.stderr and res.stderr.startswith("error: "), (why, res.stderr)
    assert not pin_root.exists() or pinned_maps(pin_root) == [], why


def test_a_directory_given_as_a_saved_plan_is_a_config(tmp_path: Path, pin_root: Path) -> None:
    os.mkdir(tmp_path / "empty")
    res = run_cli("kmesh-apply", "plan", str(tmp_path / "empty"), "--pin-root", str(pin_root))
    assert res.returncode == 1 and "the directory holds no *.yaml, *.yml or *.json files" in res.stderr


def test_the_guard_never_follows_a_link_in_the_pin_root(pin_root: Path, bpf_scratch: Path, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """In-process, so that mutation testing sees it (the attack tests run the CLI): a link in the pin root,
    even to a real map, is refused by every way in; `lexists` looks in the pin root, not in the current
    directory; a missing pin root is not made by `open`; a closed PinRoot keeps no descriptor.
    (Planted: follow_symlinks=True in _entry, dir_fd dropped in lexists, create=True in open: each fails.)"""
    from kmesh_apply.kernel.maps import Map

    elsewhere = bpf_scratch / "elsewhere"
    elsewhere.mkdir()
    with Map.create("hash", 4, 4, 4, name="theirs") as m:
        m.pin(str(elsewhere / "theirs"))
    assert PinRoot.open(str(pin_root)) is None and not pin_root.exists()
    root = PinRoot.make(str(pin_root))
    try:
        os.symlink(elsewhere / "theirs", pin_root / "m")
        monkeypatch.chdir(tmp_path)  # nothing named "m" here
        assert root.lexists("m")
        for way_in in (lambda: root.open_map("m"), lambda: root.unlink("m"), lambda: root.replace("m", "n")):
            with pytest.raises(KmeshError, match="is a symlink"):
                way_in()
        assert (elsewhere / "theirs").exists() and os.path.islink(pin_root / "m") and not (pin_root / "n").exists()
    finally:
        root.close()
    assert root.fd == -1
