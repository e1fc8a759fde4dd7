"""What both command lines offer a shell: --version from the installed package, and completion."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from importlib.metadata import version
from pathlib import Path

import pytest

from conftest import REPO, run_cli

TOOLS = ("kmesh-apply", "kmesh")


@pytest.mark.parametrize("tool", TOOLS)
def test_version_is_the_installed_packages(tool: str):
    res = run_cli(tool, "--version")
    assert res.returncode == 0, res.stderr
    declared = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
    assert res.stdout == f"{tool} {version('kmesh-apply')}\n" == f"{tool} {declared}\n"


def test_version_loads_nothing_heavy():
    """--version reads package metadata only: no libbpf, YAML or JSON Schema (speed is measured in bench/)."""
    code = ("import sys\nfrom kmesh_apply.cli import apply_cli\nsys.argv = ['kmesh-apply', '--version']\n"
            "try:\n    apply_cli.main()\nexcept SystemExit:\n    pass\n"
            "print(sorted(m for m in ('ctypes', 'yaml', 'yaml_rs', 'jsonschema', 'orjson') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.splitlines() == [f"kmesh-apply {version('kmesh-apply')}", "[]"]


def complete(tool: str, words: str) -> list[str]:
    """What bash completion offers for the last word of `words`, asked the way the installed script asks."""
    var = f"_{tool.replace('-', '_').upper()}_COMPLETE"
    parts = words.split(" ")
    res = run_cli(tool, env={var: "complete_bash", "COMP_WORDS": words, "COMP_CWORD": str(len(parts) - 1)})
    assert res.returncode == 0, res.stderr
    return res.stdout.split()


def test_completion_offers_commands_and_options():
    assert complete("kmesh-apply", "kmesh-apply pl") == ["plan"]
    assert complete("kmesh-apply", "kmesh-apply plan --det") == ["--detailed-exitcode"]
    assert complete("kmesh", "kmesh map create-") == ["create-inner", "create-outer"]


@pytest.mark.parametrize("tool", TOOLS)
def test_install_completion_for_bash(tool: str, tmp_path: Path):
    res = run_cli(tool, "--install-completion", "bash", env={"HOME": str(tmp_path)})
    assert res.returncode == 0, res.stderr
    script = tmp_path / ".bash_completions" / f"{tool}.sh"
    assert f"source '{script}'" in (tmp_path / ".bashrc").read_text()
    assert f"complete -o default -F _{tool.replace('-', '_')}_completion {tool}" in script.read_text()
    shown = run_cli(tool, "--show-completion", "bash")
    assert shown.returncode == 0 and shown.stdout.strip() == script.read_text().strip()


@pytest.mark.parametrize("shell, first_line", [("bash", "_kmesh_apply_completion() {"), ("zsh", "#compdef kmesh-apply"),
                                               ("fish", "complete --command kmesh-apply")])
def test_show_completion_prints_the_named_shell_s_script(shell: str, first_line: str):
    """Whatever shell the command runs from (here: none detected, or the test's), the named one's script."""
    res = run_cli("kmesh-apply", "--show-completion", shell, env={"SHELL": "/bin/bash"})
    assert res.returncode == 0 and res.stdout.startswith(first_line), res.stdout[:200] + res.stderr


def test_show_completion_refuses_what_is_not_a_shell():
    res = run_cli("kmesh-apply", "--show-completion", "tcsh")
    assert res.returncode == 1 and "'tcsh' is not a shell: expected one of bash, zsh, fish" in res.stderr


@pytest.mark.parametrize("argv, default", [
    (("kmesh-apply", "show"), "/sys/fs/bpf/kmesh"), (("kmesh-apply", "destroy"), "/sys/fs/bpf/kmesh"),
    (("kmesh", "map", "info"), "/sys/fs/bpf/kmesh"), (("kmesh", "map", "create-inner"), "/sys/fs/bpf/kmesh"),
    (("kmesh-apply", "plan"), "the file's pin_root"), (("kmesh-apply", "watch"), "the file's pin_root"),
])
def test_pin_root_help_names_the_file_only_where_there_is_one(argv: tuple[str, ...], default: str):
    lines = run_cli(*argv, "--help").stdout.splitlines()
    start = next(i for i, ln in enumerate(lines) if "--pin-root" in ln)
    end = next(i for i in range(start + 1, len(lines)) if not lines[i].startswith("     "))
    text = " ".join(ln.strip() for ln in lines[start:end])
    assert default in text and ("pin_root" in text) == (default != "/sys/fs/bpf/kmesh"), text


@pytest.mark.parametrize("tool, commands", [
    ("kmesh-apply", ("validate", "plan", "apply", "show", "destroy", "schema", "watch")),
    ("kmesh", ("map create-inner", "map create-outer", "map update-outer", "map update-inner", "map lookup", "map info")),
])
def test_every_command_takes_pin_root(tool: str, commands: tuple[str, ...]):
    for command in commands:
        res = run_cli(tool, *command.split(), "--help")
        assert "--pin-root" in res.stdout, (command, res.stdout)
    schema = run_cli("kmesh-apply", "schema", "--pin-root", "/sys/fs/bpf/elsewhere")
    assert schema.returncode == 0 and schema.stdout == run_cli("kmesh-apply", "schema").stdout
