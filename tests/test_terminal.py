"""Terminal escapes (issue 20, item 7): names, keys, values, type names, pin roots and paths reach a
terminal or a log line escaped, in every output: plan text and JSON, errors, `show` (YAML, JSON,
--usage), `kmesh map`, watch logs and /metrics."""

from __future__ import annotations

import json
import re
import subprocess
import urllib.request
from pathlib import Path

import pytest
import yaml

from conftest import LocalUser, run_cli
from kmesh_apply.metrics import PrometheusRecorder, start_server
from kmesh_apply.monitor import Health, MapUsage, Snapshot
from kmesh_apply.terminal import escape_quoted, label, printable, printable_lines, shown
from test_watch import Watch

# What a terminal acts on: ESC (CSI, OSC: title, clipboard, hyperlinks), BEL, C1 CSI, bidi override.
ACTING = ("\x1b", "\x07", "\x9b", "\u202e")
OSC = "\x1b]0;owned\x07"


def acts(text: str) -> bool:
    return any(c in text for c in ACTING)


def test_printable() -> None:
    assert printable("backends-web") == "backends-web"
    assert printable(f"a{OSC}b\n\u202ec\x9b\t") == "a\\x1b]0;owned\\x07b\\n\\u202ec\\x9b\\t"
    assert printable("fé 网 ✓") == "fé 网 ✓"
    assert printable_lines(f"one {OSC}\ntwo") == "one \\x1b]0;owned\\x07\ntwo"


def test_shown_is_bounded_and_never_fails() -> None:
    class Hostile:
        def __repr__(self) -> str:
            raise RuntimeError("no")

    deep: list = []
    for _ in range(5000):
        deep = [deep]
    assert shown(10 ** 100_000) == "<an integer of 332193 bits>"
    assert shown(2 ** 64) == "18446744073709551616"
    assert shown(deep) == "[[[[...]]]]"
    assert "..." in shown("x" * 10_000) and len(shown("x" * 10_000)) <= 60
    assert shown(Hostile()).startswith("<Hostile instance at 0x")
    assert shown(f"a{OSC}") == "'a\\x1b]0;owned\\x07'"
    assert label(f"10.0.0.0/8{OSC}") == "10.0.0.0/8\\x1b]0;owned\\x07" and label(7) == "7"


@pytest.mark.parametrize("text", [f"a{OSC}\u202e\x9b\u2028\U000e0001é", "plain", "网"])
def test_escape_quoted_keeps_the_meaning(text: str) -> None:
    as_json = escape_quoted(json.dumps({text: [text]}, ensure_ascii=False))
    assert as_json.isascii() or not acts(as_json)
    assert json.loads(as_json) == {text: [text]}
    as_yaml = escape_quoted(yaml.safe_dump({"k": text}, allow_unicode=True, default_style='"'), yaml=True)
    assert not acts(as_yaml) and yaml.safe_load(as_yaml) == {"k": text}


CHARS = """
inner_maps:
  names:
    type: hash
    key: u32
    value: char[32]
    max_entries: 4
    entries:
      1: "{value}"
"""


def test_values_reach_the_terminal_escaped(local_user: LocalUser, pin_root: Path) -> None:
    """A char[N] value another user wrote into a shared config: plan text, plan --json, show (YAML and
    JSON) escape it, and show's YAML still applies back to the same bytes."""
    root = ["--pin-root", str(pin_root)]
    first = local_user.write(local_user.home / "a.yaml", CHARS.format(value="plain").encode())
    assert run_cli("kmesh-apply", "apply", str(first), "--auto-approve", *root).returncode == 0
    hostile = local_user.write(local_user.home / "b.yaml", CHARS.format(value="\\e]0;owned\\a\\u202eX\\x9b").encode())
    plan = run_cli("kmesh-apply", "plan", str(hostile), *root)
    assert plan.returncode == 0 and not acts(plan.stdout), plan.stdout
    assert '~ 1: plain -> \\x1b]0;owned\\x07\\u202eX\\x9b' in plan.stdout, plan.stdout
    doc = json.loads(run_cli("kmesh-apply", "plan", str(hostile), "--json", *root).stdout)
    assert doc["changes"][0]["changed"][0]["new"] == "\x1b]0;owned\x07\u202eX\x9b"
    assert run_cli("kmesh-apply", "apply", str(hostile), "--auto-approve", *root).returncode == 0
    shown_yaml = run_cli("kmesh-apply", "show", *root).stdout
    shown_json = run_cli("kmesh-apply", "show", "--json", *root).stdout
    assert not acts(shown_yaml) and not acts(shown_json), shown_yaml + shown_json
    assert json.loads(shown_json)["maps"]["names"]["entries"] == {"1": "\x1b]0;owned\x07\u202eX\x9b"}
    again = local_user.home / "shown.yaml"
    again.write_text(shown_yaml)
    assert "No changes" in run_cli("kmesh-apply", "plan", str(again), *root).stdout


EVIL = f"evil{OSC}\nPlan: 0 to create, 0 to update, 0 to destroy."


@pytest.fixture
def evil_pin(pin_root: Path) -> Path:
    """A map pinned in the pin root under a name with escapes and a forged plan line, as another tool
    (a loader) may pin one. bpffs takes any name but one with a '.' or '/'... and a newline."""
    pin_root.mkdir()
    pin = pin_root / EVIL.replace(".", "")
    subprocess.run(["bpftool", "map", "create", str(pin), "type", "hash", "key", "4", "value", "4", "entries", "4",
                    "name", "evil"], check=True)
    return pin


def test_names_of_others_pins_reach_the_terminal_escaped(evil_pin: Path, pin_root: Path, tmp_path: Path) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text("inner_maps: {}\n")
    root = ["--pin-root", str(pin_root)]
    outputs = {
        "plan": run_cli("kmesh-apply", "plan", str(cfg), *root),
        "show": run_cli("kmesh-apply", "show", *root),
        "show --usage": run_cli("kmesh-apply", "show", "--usage", *root),
        "show --json": run_cli("kmesh-apply", "show", "--json", *root),
        "kmesh map list": run_cli("kmesh", "map", "list", *root),
    }
    for what, res in outputs.items():
        assert res.returncode == 0 and not acts(res.stdout + res.stderr), f"{what}: {res.stdout}{res.stderr}"
    plan_lines = outputs["plan"].stdout.splitlines()
    assert not [ln for ln in plan_lines if ln.startswith("Plan:")], "a forged plan line"
    assert "left alone): evil\\x1b]0;owned\\x07\\nPlan: 0 to create, 0 to update, 0 to destroy (hash, ID" \
        in outputs["plan"].stdout, outputs["plan"].stdout
    # /metrics leaves maps pinned by others out: label values are checked on a map of the tool's own so named.
    usage = [MapUsage(EVIL, "inner", "hash", 7, 0, 4, None)]
    with start_server("127.0.0.1:0", Snapshot(str(pin_root), usage, Health()), PrometheusRecorder(str(pin_root))) as s:
        text = urllib.request.urlopen(s.url + "/metrics", timeout=30).read().decode()
    assert not acts(text) and 'map="evil\\\\x1b]0;owned\\\\x07\\\\nPlan: 0 to create' in text


def test_watch_log_lines_are_escaped(pin_root: Path, tmp_path: Path) -> None:
    """A config file whose name carries escapes: the text log names it escaped, one event per line."""
    conf = tmp_path / "conf"
    conf.mkdir()
    (conf / f"a{OSC}\nb.yaml").write_text("inner_maps:\n  m: {type: hash, key: u32, value: u32, max_entries: 4}\n")
    w = Watch([conf], pin_root, "--log-format", "text")
    try:
        w.wait_for(lambda: any(" reconcile: " in line for line in w.raw), "the first apply")
    finally:
        w.stop()
    log = "".join(w.raw)
    assert not acts(log), log
    assert any("a\\x1b]0;owned\\x07" in line and " reconcile: " in line for line in w.raw), log
    # An event's further lines are indented: no line of a message can pass for an event of its own.
    assert all(re.match(r"\d{4}-\d\d-\d\dT", line) or line.startswith("  ") for line in w.raw), log
