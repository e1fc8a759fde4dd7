"""The kmesh.maps.apply module called in-process with ansible-core's test helper: argument rules, inline YAML
text, check and diff modes, and state=absent with a config that names its own pin root (real kernel)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import Any

import pytest

from conftest import REPO
from test_holders import load  # noqa: F401 (a fixture: programs loaded for the test, unloaded after)

from ansible.module_utils import testing  # ansible-core 2.19+ (pyproject's floor): patch_module_args

CONFIG = """
pin_root: {root}
inner_maps:
  backends:
    type: hash
    key: u32
    value: u64
    max_entries: 16
    entries: {{1: 10, 2: 20}}
outer_maps:
  services:
    type: array_of_maps
    key: u32
    max_entries: 4
    inner_map: backends
    entries: {{0: backends}}
"""


def _load_module():
    """The module file as ansible ships it to a node (imported by path: ansible_collections is no package here)."""
    path = REPO / "ansible_collections/kmesh/maps/plugins/modules/apply.py"
    spec = importlib.util.spec_from_file_location("kmesh_maps_apply", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


APPLY = _load_module()


@pytest.fixture
def run(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch):
    """Call the module's main with the given arguments; return its JSON result (exit_json and fail_json exit)."""
    monkeypatch.delenv("KMESH_PIN_ROOT", raising=False)

    def call(**args: Any) -> dict[str, Any]:
        with testing.patch_module_args(args), pytest.raises(SystemExit):
            APPLY.main()
        return json.loads(capsys.readouterr().out)

    return call


@pytest.mark.parametrize(("args", "message"), [
    ({"src": "/nonexistent.yaml", "config": {}}, "mutually exclusive"),
    ({}, "state is present but any of the following are missing: src, config"),
    ({"config": [1, 2]}, "config must be a mapping or YAML text, not a list"),
])
def test_argument_rules(run, args: dict[str, Any], message: str):
    result = run(**args)
    assert result["failed"] is True and message in result["msg"], result


def test_inline_yaml_text_applies_once(run, pin_root: Path, bpftool):
    first = run(config=CONFIG.format(root=pin_root))
    assert first["changed"] is True and first["plan"] == {"adopt": 0, "migrate": 0, "rename": 0, "create": 2, "update": 0, "destroy": 0}, first
    assert first["pin_root"] == str(pin_root) and first["applied"]["slots_set"] == 1
    assert bpftool("map", "show", "pinned", str(pin_root / "services"))["type"] == "array_of_maps"
    again = run(config=CONFIG.format(root=pin_root))
    assert again["changed"] is False and "applied" not in again and "No changes" in again["summary"]


def test_check_and_diff_modes_apply_nothing(run, pin_root: Path):
    result = run(config=CONFIG.format(root=pin_root), _ansible_check_mode=True, _ansible_diff=True)
    assert result["changed"] is True and "applied" not in result
    assert 'outer map "services" will be created' in result["diff"]["prepared"]
    assert result["summary"] == "Plan: 2 to create, 0 to update, 0 to destroy."
    assert not pin_root.exists() or list(pin_root.iterdir()) == []


def test_absent_with_src_destroys_the_pin_root_the_config_names(run, pin_root: Path, tmp_path: Path):
    src = tmp_path / "mesh.yaml"
    src.write_text(CONFIG.format(root=pin_root))
    assert run(src=str(src))["changed"] is True
    gone = run(src=str(src), state="absent")
    assert gone["changed"] is True and gone["pin_root"] == str(pin_root) and gone["plan"]["destroy"] == 2
    assert not pin_root.exists()


def test_bad_inline_config_names_map_and_key(run, pin_root: Path):
    result = run(pin_root=str(pin_root), config={"inner_maps": {"backends": {"type": "hash", "key": "u32",
                                                                             "value": "u64", "max_entries": 4,
                                                                             "colour": "red"}}})
    assert result["failed"] is True and "backends" in result["msg"] and "colour" in result["msg"], result
    assert "Traceback" not in result["msg"] and not pin_root.exists()


def test_replacing_a_map_a_program_holds_needs_allow_replace_in_use(run, load, pin_root: Path, bpftool):
    from test_safety import SUM_PROG

    run(config=CONFIG.format(root=pin_root))
    prog = load(SUM_PROG, "sum", {"outer": pin_root / "services"})
    before = bpftool("map", "show", "pinned", str(pin_root / "services"))["id"]
    bigger = CONFIG.format(root=pin_root).replace("max_entries: 4", "max_entries: 8")
    refused = run(config=bigger)
    assert refused["failed"] is True and f'held by program {prog.id} "sum"' in refused["msg"], refused
    assert "allow_replace_in_use: true" in refused["msg"]
    assert bpftool("map", "show", "pinned", str(pin_root / "services"))["id"] == before
    forced = run(config=bigger, allow_replace_in_use=True)
    assert forced["changed"] is True and forced["changes"][0]["holders"][0]["id"] == prog.id, forced
    again = run(config=bigger)
    assert again["changed"] is False and again["drift"] is True and "still held" in again["plan_text"]


def test_a_bug_is_one_line_with_the_traceback_for_vvv(run, pin_root: Path, monkeypatch: pytest.MonkeyPatch):
    """An exception that is no KmeshError fails the task with one line; the traceback goes to `exception`,
    which Ansible keeps only when asked for tracebacks (-vvv, ANSIBLE_DISPLAY_TRACEBACK)."""
    def fault(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError("a bug\nsecond line")

    monkeypatch.setattr(APPLY.api, "plan", fault)
    result = run(config=CONFIG.format(root=pin_root))
    assert result["failed"] is True and result["msg"] == "internal error, please report it: RuntimeError: a bug", result
    if "exception" in result:  # kept when tracebacks are asked for
        assert "in fault" in str(result["exception"])
    assert not pin_root.exists()
