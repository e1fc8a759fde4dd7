"""Hostile input (issue 20, items 6, 8): files another local user wrote, as they would write them.
Each is one clear error naming the file (and the line where there is one), exit 1, no traceback,
and costs well under a second; nothing is applied."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Callable

import pytest

from conftest import LocalUser, run_cli, unprivileged_user
from kmesh_apply.config import load_config
from kmesh_apply.errors import ConfigError
from rawbtf import RawBtf, map_definition

BOUND = 1.0  # seconds of CPU a hostile input may cost


@pytest.fixture(scope="module")
def attacker() -> LocalUser:
    """The local user who wrote the files (one for the module: useradd is slow)."""
    with unprivileged_user() as user:
        yield user


def _bomb(levels: int = 9, width: int = 9) -> list[str]:
    """Nested anchors, each alias repeating the one before: width^levels values from a few hundred bytes."""
    lines = [f"a0: &a0 [{', '.join(['x'] * width)}]"]
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * width)}]" for i in range(1, levels + 1)]
    return lines


def _nested(depth: int, leaf: str = "u8") -> str:
    spec = json.dumps(leaf)
    for _ in range(depth):
        spec = f'{{"array": {spec}, "length": 1}}'
    return spec


def _json_map(**fields: str) -> str:
    body = {"type": '"hash"', "key": '"u32"', "value": '"u32"', "max_entries": "4", **fields}
    return '{"inner_maps": {"m": {' + ", ".join(f'"{k}": {v}' for k, v in body.items()) + "}}}"


BIG = "9" * 100_000
YAML_MAP = "inner_maps:\n  m: {{type: hash, key: u32, value: u32, max_entries: {max_entries}{extra}}}\n"

# name -> (file name, text, what the error says, line)
HOSTILE: dict[str, tuple[str, str, str, int]] = {
    # Item 6: finding the duplicate's line walked PyYAML's shared alias nodes 9^9 times (minutes).
    "alias bomb and a duplicate key": ("c.yaml", "z: {k: 1, k: 2}\n" + "\n".join(_bomb()) + "\n",
                                       "duplicate mapping key", 1),
    "alias bomb": ("c.yaml", "\n".join(_bomb()) + "\ninner_maps: {}\n", "aliases expand too far", 0),
    "aliases expanding into a million flags": (
        "c.yaml", "defs: &a0 [" + ", ".join(["no_prealloc"] * 5000) + "]\n"
        + YAML_MAP.format(max_entries=4, extra=", flags: [" + ", ".join(["*a0"] * 190) + "]"),
        "holds more than 10000 values", 3),
    # Item 8: JSON nested 255-1,023 deep reached orjson's writer (254 levels) and the schema's recursion.
    # (Past 1,000 levels PyYAML, which finds lines, gives up: the error names the file alone.)
    **{f"JSON nested {d} deep": ("c.json", _json_map(x="[" * d + "]" * d), "nested more than 128 levels",
                                 1 if d < 1000 else 0) for d in (255, 600, 1020)},
    "JSON nested 1,020 deep in an entry": ("c.json", _json_map(entries='{"1": ' + "[" * 1015 + "]" * 1015 + "}"),
                                           "expected an integer", 0),
    "JSON nested past orjson's limit": ("c.json", _json_map(x="[" * 2000 + "]" * 2000), "depth limit exceeded", 1),
    "YAML nested past yaml-rs's limit": ("c.yaml", "inner_maps: " + "[" * 5000 + "]" * 5000 + "\n",
                                         "nested too deeply", 1),
    "a type nested 40 deep": ("c.json", _json_map(value=_nested(40)), "types nest at most 32 levels", 1),
    # Integers of 10^5 digits: Python refuses to write one (4,300 digits) in a message.
    "max_entries of 10^5 digits": ("c.yaml", YAML_MAP.format(max_entries=BIG, extra=""), "an integer of 332193 bits", 2),
    "key_size of 10^5 digits": ("c.yaml", "inner_maps:\n  m: {type: hash, key_size: " + BIG
                                + ", value: u32, max_entries: 4}\n", "an integer of 332193 bits", 2),
    "a value of 10^5 digits": ("c.yaml", YAML_MAP.format(max_entries=4, extra=", entries: {1: " + BIG + "}"),
                               "got <an integer of 332193 bits>", 2),
    # Found by tests/test_fuzz.py: finding the problem's line compared str() of such a key.
    "a key of 10^5 digits": ("c.yaml", "a: {key: u32," + BIG + "}\ninner_maps: {}\n", "an integer of 332193 bits", 1),
    "a JSON key of 10^5 digits": ("c.json", _json_map(entries='{"' + BIG + '": 1}'),
                                  "expected an integer 0..4294967295 for u32", 0),
    "an array of 10^5-digit length": ("c.yaml", YAML_MAP.format(max_entries=4, extra="").replace(
        "value: u32", "value: 'u8[" + BIG + "]'"), "an array has at most 32 dimensions", 2),
    "an enum value of 10^5 digits": ("c.yaml", YAML_MAP.format(max_entries=4, extra="").replace(
        "value: u32", "value: {enum: u32, values: {A: " + BIG + "}}"), "an integer of 332193 bits", 2),
    # A NUL can be in no path; control characters in one are a trick.
    "a NUL in pin_root": ("c.yaml", 'pin_root: "/sys/fs/bpf/a\\0b"\ninner_maps: {}\n', "contains a NUL byte", 1),
    "a NUL in pin_root (JSON)": ("c.json", '{"pin_root": "/sys/fs/bpf/a\\u0000b", "inner_maps": {}}',
                                 "contains a NUL byte", 1),
    "escapes in pin_root": ("c.yaml", 'pin_root: "/sys/fs/bpf/a\\e]0;x\\a"\ninner_maps: {}\n',
                            "contains control characters", 1),
    # Item 7: a name ending in a newline passed the schema's `^...$` in Python's re.
    "a map name ending in a newline": ("c.yaml", 'inner_maps:\n  "m\\n": {type: hash, key: u32, value: u32, '
                                                 "max_entries: 4}\n", "is not a valid map name", 2),
    "a template name ending in a newline": (
        "c.yaml", YAML_MAP.format(max_entries=4, extra="") + 'outer_maps:\n  o: {type: array_of_maps, key: u32, '
        'max_entries: 4, inner_map: "m\\n"}\n', "'m\\n' is not a valid map name", 4),
    # Found by tests/atheris_fuzz.py: the schema's verdict on a map named `key` was taken for a type spec's.
    "a map named key that is text": ("c.yaml", "inner_maps:\n  key: 'bytes[4]'\n", "expected an object, got 'bytes[4]'", 2),
    # Found by tests/test_fuzz.py: yaml-rs raised TypeError for a key that is a mapping.
    "a mapping as a key": ("c.yaml", "? a: &a {type: hash, key: u32, value: u32, max_entries: 4}\ninner_maps:\n  x: *a\n",
                           "a mapping key that is itself a mapping", 0),
    "a field name ending in a newline": ("c.yaml", YAML_MAP.format(max_entries=4, extra="").replace(
        "value: u32", 'value: {struct: [{"f\\n": u32}]}'), "is not a C identifier", 2),
}


def _refused(cfg: Path, expect: str, line: int) -> str:
    """Load `cfg` in process (timed) and through the CLI (exit 1, one error, no traceback)."""
    start = time.process_time()  # CPU, not wall time: the machine is shared
    with pytest.raises(ConfigError) as e:
        load_config([cfg])
    assert time.process_time() - start < BOUND, f"{cfg.name} took {time.process_time() - start:.2f}s of CPU"
    res = run_cli("kmesh-apply", "validate", str(cfg))
    assert res.returncode == 1 and "Traceback" not in res.stderr and "internal error" not in res.stderr, res.stderr
    where = f"error: {cfg}:{line}:" if line else f"error: {cfg}:"
    assert res.stderr.startswith(where), res.stderr
    assert expect in res.stderr, res.stderr
    assert "\x1b" not in res.stderr and "\0" not in res.stderr
    assert len(res.stderr) < 2000, "the error quotes too much of the input"
    return str(e.value)


@pytest.mark.parametrize("case", HOSTILE)
def test_hostile_config(case: str, attacker: LocalUser) -> None:
    name, text, expect, line = HOSTILE[case]
    cfg = attacker.write(attacker.home / name, text.encode())
    assert len(text) < 250_000
    _refused(cfg, expect, line)


def test_pin_root_flag_with_a_line_break(tmp_path: Path) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text("inner_maps: {}\n")
    for env, argv in (({}, ["--pin-root", "/sys/fs/bpf/x\ny"]), ({"KMESH_PIN_ROOT": "/sys/fs/bpf/x\x1b[2J"}, [])):
        res = run_cli("kmesh-apply", "plan", str(cfg), *argv, env=env)
        assert res.returncode == 1 and "Traceback" not in res.stderr, res.stderr
        assert "contains control characters" in res.stderr and "\x1b" not in res.stderr, res.stderr
        assert len(res.stderr.splitlines()) == 1, res.stderr


# ---- BTF files no compiler writes: libbpf 1.1 accepts them all ------------------------------

def _doubling(union: bool) -> Callable[[RawBtf], None]:
    """A chain of structs (or unions) each holding two of the one before: 60 small types, 2^60 as a tree."""
    def build(b: RawBtf) -> None:
        b.int_("int", 4)
        for i in range(60):
            size = 4 if union else 4 * 2 ** min(i + 1, 20)
            b.struct(f"s{i}", size, [("a", i + 1, 0), ("b", i + 1, 0 if union else 32 * 2 ** min(i, 19))], union)
    return build


def _chain(b: RawBtf) -> None:
    b.int_("int", 4)
    for i in range(20_000):
        b.typedef(f"t{i}", i + 1)


def _cyclic_map(b: RawBtf) -> None:
    loop = b.typedef("loop", 1)
    map_definition(b, "mp", loop, loop)


def _empty_key_map(b: RawBtf) -> None:
    """A .maps declaration whose key is an empty struct: key_size 0, which no config may write (found by
    tests/test_fuzz.py: it reached the entries' packing as `0 key bytes are not whole records`)."""
    u32 = b.int_("unsigned int", 4)
    map_definition(b, "mp", b.struct("empty", 0, []), u32)


BTF_CASES: dict[str, tuple[Callable[[RawBtf], None], str, str]] = {
    "a typedef of itself": (lambda b: b.typedef("loop", 1) and None, "value: loop", "contain themselves"),
    "a struct holding an array of itself": (
        lambda b: (b.int_("int", 4), b.struct("s", 8, [("a", 1, 0), ("b", 3, 32)]), b.array(2, 1, 1)) and None,
        "value: struct s", "contain themselves"),
    "20,000 typedefs in a chain": (_chain, "value: t19999", "nest more than 128 steps"),
    "a member name that is no UTF-8": (
        lambda b: (b.int_("int", 4), b.struct("s", 4, [(b"\xff\xfe", 1, 0)])) and None, "value: struct s",
        "a name that is not UTF-8 text"),
    "a type name that is no UTF-8": (lambda b: (b.int_(b"\xffint", 4), b.typedef("t", 1)) and None, "value: t",
                                     "a name that is not UTF-8 text"),
    "a member name with escapes": (
        lambda b: (b.int_("int", 4), b.struct("s", 4, [("a\x1b]0;x\x07", 1, 0)])) and None, "value: struct s",
        "a member name 'a\\x1b]0;x\\x07' that is not a C identifier"),
    "structs doubling 60 times": (_doubling(False), "value: struct s59", "more than 10000 fields and elements"),
    "unions doubling 60 times": (_doubling(True), "value: union s59", "more than 10000 fields and elements"),
    "a .maps declaration behind a typedef cycle": (_cyclic_map, "object_map: mp", "contain themselves"),
    "a .maps declaration with an empty key": (_empty_key_map, "object_map: mp",
                                             "as its BTF declares it: inner_maps/m/key_size: 0 is less than the minimum"),
}


@pytest.mark.parametrize("case", BTF_CASES)
def test_hostile_btf(case: str, attacker: LocalUser) -> None:
    build, definition, expect = BTF_CASES[case]
    btf = RawBtf()
    build(btf)
    attacker.write(attacker.home / "types.btf", btf.bytes())
    fields = {"type": "hash", "key": "u32", "value": "u32", "max_entries": "4"}
    which, _, what = definition.partition(": ")
    fields[which] = f"'{what}'"
    if which == "object_map":
        fields = {"object_map": what}
    text = "btf: [types.btf]\ninner_maps:\n  m: {" + ", ".join(f"{k}: {v}" for k, v in fields.items()) + "}\n"
    cfg = attacker.write(attacker.home / "c.yaml", text.encode())
    assert expect in _refused(cfg, expect, 3)


# ---- item 8: no traceback escapes a command -------------------------------------------------

def test_key_type_change_on_a_map_with_entries(tmp_path: Path, pin_root: Path, bpftool) -> None:
    """u32 -> u64 keys (and u32 -> a 16-byte struct value): the old entries are read with the live map's
    types; decoding them with the new codec was `CodecError: expected 8 bytes, got 4` in plan and apply."""
    first, second, third = tmp_path / "a.yaml", tmp_path / "b.yaml", tmp_path / "c.yaml"
    first.write_text("inner_maps:\n  m: {type: hash, key: u32, value: u32, max_entries: 8, entries: {1: 2, 3: 4}}\n")
    second.write_text("inner_maps:\n  m: {type: hash, key: u64, value: u32, max_entries: 8, entries: {1: 2}}\n")
    third.write_text("inner_maps:\n  m: {type: hash, key: u64, value: {struct: [{a: u64}, {b: u64}]}, max_entries: 8,"
                     " entries: {1: {a: 1, b: 2}}}\n")
    root = ["--pin-root", str(pin_root)]
    assert run_cli("kmesh-apply", "apply", str(first), "--auto-approve", *root).returncode == 0
    plan = run_cli("kmesh-apply", "plan", str(second), *root)
    assert plan.returncode == 0, plan.stderr
    assert "# key_size 4 -> 8" in plan.stdout and "+ 1: 2" in plan.stdout and "- 3: 4" in plan.stdout, plan.stdout
    doc = json.loads(run_cli("kmesh-apply", "plan", str(second), "--json", *root).stdout)
    assert sorted(doc["changes"][0]["removed"], key=str) == [{"key": 1, "value": 2}, {"key": 3, "value": 4}]
    res = run_cli("kmesh-apply", "apply", str(second), "--auto-approve", *root)
    assert res.returncode == 0, res.stderr
    assert bpftool("map", "show", "pinned", str(pin_root / "m"))["bytes_key"] == 8
    plan = run_cli("kmesh-apply", "plan", str(third), *root)
    assert plan.returncode == 0 and '~ 1: 2 -> {"a": 1, "b": 2}' in plan.stdout, plan.stdout + plan.stderr
    assert run_cli("kmesh-apply", "apply", str(third), "--auto-approve", *root).returncode == 0


FAULT = """
import sys
import {module} as target
from kmesh_apply.cli import {cli}

def fault(*args, **kwargs):
    raise RuntimeError("a bug\\x1b]0;owned\\x07 here\\nsecond line")

target.{function} = fault
sys.argv = ["{name}", *sys.argv[1:]]
{cli}.main()
"""


@pytest.mark.parametrize("cli, name, module, function, argv", [
    ("apply_cli", "kmesh-apply", "kmesh_apply.api", "load_config", ["validate", "x.yaml"]),
    ("apply_cli", "kmesh-apply", "kmesh_apply.api", "show_yaml", ["show", "--pin-root", "/sys/fs/bpf/kmesh-nowhere"]),
    ("map_cli", "kmesh", "kmesh_apply.config.model", "resolve_pin_root", ["map", "info", "1"]),
])
def test_a_bug_is_one_line(tmp_path: Path, cli: str, name: str, module: str, function: str, argv: list[str]) -> None:
    """The top-level guard: an exception that is no KmeshError is `internal error, please report it:`
    and one line; the traceback (escaped) only with --debug or KMESH_APPLY_DEBUG=1."""
    import subprocess
    import sys

    script = tmp_path / "fault.py"
    script.write_text(FAULT.format(cli=cli, name=name, module=module, function=function))

    def run(*extra: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
        import os

        return subprocess.run([sys.executable, str(script), *extra, *argv], capture_output=True, text=True,
                               env={**os.environ, **(env or {})})

    res = run()
    assert res.returncode == 1, res.stderr
    assert res.stderr.startswith("error: internal error, please report it: RuntimeError: a bug\\x1b]0;owned\\x07 here\n")
    assert "Traceback" not in res.stderr and "second line" not in res.stderr and "\x1b" not in res.stderr
    assert f"{name} --debug" in res.stderr and "KMESH_APPLY_DEBUG=1" in res.stderr
    for debug in (run("--debug"), run(env={"KMESH_APPLY_DEBUG": "1"})):
        assert debug.returncode == 1
        assert "Traceback (most recent call last)" in debug.stderr and "in fault" in debug.stderr, debug.stderr
        assert "\x1b" not in debug.stderr


# ---- item 9: max_entries within the kernel's and the machine's limits ------------------------

CAPACITY = {
    "the issue's array of 4,294,967,295 x bytes[65535]": (
        "  m: {type: array, key: u32, value: 'bytes[65535]', max_entries: 4294967295}\n",
        "takes at least 256.0 TiB of kernel memory at creation, more than the kernel can allocate for one map"),
    "a hash map past 2^27 entries": (
        "  m: {type: hash, key: u32, value: u32, max_entries: 134217729, flags: [no_prealloc]}\n",
        "max_entries 134217729 is beyond the kernel's limit for hash maps, 134217728"),
    "an lpm_trie key of 300 bytes": (
        "  m: {type: lpm_trie, key_size: 300, value: u32, max_entries: 4, flags: [no_prealloc]}\n",
        "an lpm_trie key is 4 bytes of prefix length and 1 to 256 bytes of address, 5..260 bytes; got 300 bytes"),
}


@pytest.mark.parametrize("case", CAPACITY)
def test_validate_refuses_what_the_kernel_would(case: str, attacker: LocalUser) -> None:
    definition, expect = CAPACITY[case]
    cfg = attacker.write(attacker.home / "c.yaml", ("inner_maps:\n" + definition).encode())
    _refused(cfg, expect, 2)


def test_plan_refuses_more_memory_than_the_machine_has(attacker: LocalUser, pin_root: Path) -> None:
    """An array preallocates every value: one needing twice this machine's available memory is refused
    by plan and apply with the figures, before anything is created (validate, offline, cannot know)."""
    from kmesh_apply.capacity import available_memory

    room = available_memory()
    assert room is not None
    entries = 2 * room.bytes // 4096 + 1
    cfg = attacker.write(attacker.home / "c.yaml", f"inner_maps:\n  m: {{type: array, key: u32, value: 'bytes[4096]', "
                                                     f"max_entries: {entries}}}\n".encode())
    assert run_cli("kmesh-apply", "validate", str(cfg)).returncode == 0
    for argv in (["plan"], ["apply", "--auto-approve"]):
        res = run_cli("kmesh-apply", *argv, str(cfg), "--pin-root", str(pin_root))
        assert res.returncode == 1 and "Traceback" not in res.stderr, res.stderr
        assert "the maps this plan creates would take about" in res.stderr and "this machine has" in res.stderr
        assert "'m' " in res.stderr and "nothing was changed" in res.stderr, res.stderr
        assert not pin_root.exists() or not any(pin_root.iterdir())


@pytest.mark.parametrize("definition", [
    "{type: array, key: u32, value: u64, max_entries: 100000}",
    "{type: array, key: u32, value: 'bytes[100]', max_entries: 5000}",
    "{type: percpu_array, key: u32, value: u64, max_entries: 10000}",
    "{type: hash, key: u32, value: u64, max_entries: 100000}",
    "{type: hash, key: 'bytes[16]', value: 'bytes[100]', max_entries: 20000}",
    "{type: hash, key: u32, value: u64, max_entries: 100000, flags: [no_prealloc]}",
    "{type: lru_hash, key: u32, value: u64, max_entries: 30000}",
    "{type: percpu_hash, key: u32, value: u64, max_entries: 30000}",
])
def test_memory_figures_match_the_kernels(definition: str, tmp_path: Path, pin_root: Path, bpftool) -> None:
    """creation_bytes against what the kernel charges for the map it made (bpftool's bytes_memlock)."""
    from kmesh_apply.capacity import creation_bytes
    from kmesh_apply.kernel.maps import possible_cpus

    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"inner_maps:\n  m: {definition}\n")
    m = load_config([cfg]).inner_maps["m"]
    assert run_cli("kmesh-apply", "apply", str(cfg), "--auto-approve", "--pin-root", str(pin_root)).returncode == 0
    charged = bpftool("map", "show", "pinned", str(pin_root / "m"))["bytes_memlock"]
    figure = creation_bytes(m.type, m.key.size, m.value.size, m.max_entries, m.flags, 0, possible_cpus())
    assert figure is not None and abs(figure - charged) <= max(0.02 * charged, 4096), (figure, charged)
