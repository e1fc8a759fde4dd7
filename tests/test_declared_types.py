"""Every declarable map type, by bpftool's name: the kernel's rules checked at validate time (one
clear error each), a config of every type applied, planned clean and given back by `show`; each
type's entries as they are meant (a queue's values pushed in order, a bloom filter that only
grows, a prog_array of pinned programs, a devmap of interfaces, a cpumap of queues); and maps
declared as a Kmesh-like object declares them, reused by its real programs when they load."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
from bpfprog import run_pinned
from conftest import run_cli
from foreign_maps import drain
from typed_object import MAPS, build, load_all

from kmesh_apply import Synchroniser
from kmesh_apply.errors import ConfigError
from kmesh_apply.kernel.maps import Map
from kmesh_apply.kernel.names import MAP_TYPES
from kmesh_apply.pinroot.reader import read_live

EVERY_TYPE = """\
maps:
  events:   {type: ringbuf, max_entries: 4096}
  uevents:  {type: user_ringbuf, max_entries: 8192}
  pending:  {type: queue, value: u32, max_entries: 16, entries: [11, 22, 33]}
  lifo:     {type: stack, value: u64, max_entries: 4, entries: [1, 2]}
  seen:     {type: bloom_filter, value: u32, max_entries: 64, entries: [5, 6, 7]}
  tails:    {type: prog_array, key: u32, value: u32, max_entries: 4}
  ports:    {type: devmap, key: u32, value: u32, max_entries: 4, entries: {0: lo}}
  ports2:   {type: devmap_hash, key: u32, value_size: 8, max_entries: 4, entries: {7: {interface: 1}}}
  cpus:     {type: cpumap, key: u32, value_size: 8, max_entries: 2, entries: {0: 192, 1: {queue_size: 64}}}
  xsks:     {type: xskmap, key: u32, value: u32, max_entries: 4}
  socks:    {type: sockhash, key: {struct: [{ip: ipv4}, {port: be16}]}, value: u64, max_entries: 16}
  socks2:   {type: sockmap, key: u32, value: u32, max_entries: 16}
  reuse:    {type: reuseport_sockarray, key: u32, value: u64, max_entries: 4}
  perf:     {type: perf_event_array, key: u32, value: u32, max_entries: 2}
  cgarr:    {type: cgroup_array, key: u32, value: u32, max_entries: 2}
  stacks:   {type: stack_trace, key: u32, value_size: 64, max_entries: 16}
  cgst:     {type: cgroup_storage, key: u64, value: u64, max_entries: 0}
  pcgst:    {type: percpu_cgroup_storage, key_size: 16, value: u32, max_entries: 0}
  sk_state: {type: sk_storage, key: i32, value: u64, max_entries: 0, flags: [no_prealloc]}
  ino:      {type: inode_storage, key: i32, value: u64, max_entries: 0, flags: [no_prealloc, clone]}
  tsk:      {type: task_storage, key: i32, value: u32, max_entries: 0, flags: [no_prealloc]}
  cgrp:     {type: cgrp_storage, key: i32, value: u32, max_entries: 0, flags: [no_prealloc]}
  heap:     {type: arena, max_entries: 4, flags: [mmapable]}
  plain:    {type: hash, key: u32, value: u32, max_entries: 4, entries: {1: 2}}
"""


def kmesh_apply(*argv: str, root: Path, check: int | None = 0) -> subprocess.CompletedProcess:
    res = run_cli("kmesh-apply", *argv, "--pin-root", str(root))
    if check is not None:
        assert res.returncode == check, res.stdout + res.stderr
    assert "Traceback" not in res.stderr, res.stderr
    return res


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_a_config_of_every_type_applies_plans_clean_and_round_trips(pin_root: Path, tmp_path: Path, bpftool):
    config = write(tmp_path / "every.yaml", EVERY_TYPE)
    kmesh_apply("apply", "--auto-approve", str(config), root=pin_root)
    kmesh_apply("plan", "--detailed-exitcode", str(config), root=pin_root)
    for name, m in read_live(str(pin_root)).maps.items():
        shown = bpftool("map", "show", "pinned", str(pin_root / name))
        assert shown["id"] == m.id and shown["type"] in (m.type, MAP_TYPES[m.type])
    assert bpftool("map", "show", "pinned", str(pin_root / "sk_state"))["flags"] == 1  # no_prealloc
    assert bpftool("map", "show", "pinned", str(pin_root / "events"))["bytes_key"] == 0
    cpus = {int(e["key"][0], 16): e["value"] for e in bpftool("map", "dump", "pinned", str(pin_root / "cpus"))}
    assert cpus[0][:4] == ["0xc0", "0x00", "0x00", "0x00"] and cpus[1][:4] == ["0x40", "0x00", "0x00", "0x00"]
    with Map.open_pinned(str(pin_root / "seen")) as seen:
        assert all(seen.may_hold(v.to_bytes(4, "little")) for v in (5, 6, 7))

    shown = write(tmp_path / "shown.yaml", kmesh_apply("show", root=pin_root).stdout)
    kmesh_apply("plan", "--detailed-exitcode", str(shown), root=pin_root)
    doc = json.loads(kmesh_apply("show", "--json", root=pin_root).stdout)["maps"]
    assert doc["events"] == {"type": "ringbuf", "max_entries": 4096}
    assert doc["ports"]["entries"] == {"0": "lo"} and doc["ports2"]["entries"] == {"7": "lo"}
    assert doc["cpus"]["entries"] == {"0": 192, "1": 64}
    assert "entries" not in doc["pending"], "a queue's values cannot be read without popping them"
    assert drain(pin_root, "pending") == [11, 22, 33]
    assert kmesh_apply("plan", "--detailed-exitcode", str(config), root=pin_root).returncode == 0, \
        "a queue emptied by its readers is not drift"


RULES = {
    "ringbuf size": ("{type: ringbuf, max_entries: 4000}", "power of two and a multiple of the page size"),
    "ringbuf key": ("{type: ringbuf, key: u32, max_entries: 4096}", "a ringbuf map has no key"),
    "queue key": ("{type: queue, key: u32, value: u32, max_entries: 2}", "a queue map has no key"),
    "queue entries": ("{type: queue, value: u32, max_entries: 4, entries: {1: 2}}", "entries are a list of values"),
    "queue too many": ("{type: stack, value: u32, max_entries: 2, entries: [1, 2, 3]}", "3 values do not fit max_entries 2"),
    "bloom twice": ("{type: bloom_filter, value: u32, max_entries: 8, entries: [1, 1]}", "value 1 is given twice"),
    "prog_array value": ("{type: prog_array, key: u32, value: u64, max_entries: 4}", "prog_array map's value is 4 bytes"),
    "prog_array path": ("{type: prog_array, key: u32, value: u32, max_entries: 4, entries: {1: here}}",
                        "expected the path of a pinned program"),
    "prog_array index": ("{type: prog_array, key: u32, value: u32, max_entries: 4, entries: {4: /sys/fs/bpf/p}}",
                         "index 4 is out of range"),
    "devmap program": ("{type: devmap, key: u32, value: u32, max_entries: 4, entries: {0: {interface: lo, program: /p}}}",
                       "a program needs the 8-byte value"),
    "devmap flag": ("{type: devmap, key: u32, value: u32, max_entries: 4, flags: [rdonly_prog]}",
                    "the kernel sets rdonly_prog on every devmap itself"),
    "cpumap queue": ("{type: cpumap, key: u32, value: u32, max_entries: 2, entries: {0: 0}}", "expected a queue size"),
    "cpumap cpu": ("{type: cpumap, key: u32, value: u32, max_entries: 9999, entries: {9998: 8}}", "CPU 9998 is out of range"),
    "sockhash value": ("{type: sockhash, key: u32, value: u16, max_entries: 4}", "value is 4 bytes or 8 bytes"),
    "sockhash entries": ("{type: sockhash, key: u32, value: u32, max_entries: 4, entries: {1: 2}}",
                         "declare the map without entries"),
    "sk_storage size": ("{type: sk_storage, key: i32, value: u64, max_entries: 4, flags: [no_prealloc]}",
                        "max_entries must be 0 for a sk_storage map"),
    "sk_storage flags": ("{type: sk_storage, key: i32, value: u64, max_entries: 0}", "needs flags: [no_prealloc]"),
    "cgroup_storage key": ("{type: cgroup_storage, key: u32, value: u32, max_entries: 0}", "key is 8 bytes or 16 bytes"),
    "arena flags": ("{type: arena, max_entries: 4}", "an arena map needs flags: [mmapable]"),
    "arena value": ("{type: arena, value: u32, max_entries: 4, flags: [mmapable]}", "an arena map has no value"),
    "stack_trace value": ("{type: stack_trace, key: u32, value_size: 12, max_entries: 4}", "whole number of u64 addresses"),
    "hash size": ("{type: hash, key: u32, value: u32, max_entries: 0}", "max_entries must be at least 1"),
    "sockhash owner": ("{type: sockhash, key: u32, value: u32, max_entries: 4, manage_entries: all}",
                       "its manage_entries is none"),
    "struct_ops": ("{type: struct_ops, key: u32, value_size: 64, max_entries: 1}", "struct_ops cannot be declared"),
    "no value": ("{type: queue, max_entries: 4}", "give exactly one of 'value'"),
}


@pytest.mark.parametrize("rule", sorted(RULES))
def test_each_kernel_rule_is_one_clear_error(tmp_path: Path, rule: str):
    definition, expected = RULES[rule]
    config = write(tmp_path / "c.yaml", f"maps:\n  ok: {{type: hash, key: u32, value: u32, max_entries: 1}}\n"
                                        f"  bad: {definition}\n")
    res = run_cli("kmesh-apply", "validate", str(config))
    assert res.returncode == 1
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {config}:3: map 'bad'"), res.stderr
    assert expected in lines[0], res.stderr


def test_a_bloom_filter_only_grows_and_says_so(pin_root: Path, tmp_path: Path):
    base = "maps:\n  seen: {type: bloom_filter, value: u32, max_entries: 64, entries: %s}\n"
    kmesh_apply("apply", "--auto-approve", str(write(tmp_path / "a.yaml", base % "[5, 6]")), root=pin_root)
    grown = write(tmp_path / "b.yaml", base % "[5, 6, 7]")
    plan = kmesh_apply("plan", "--detailed-exitcode", str(grown), root=pin_root, check=2).stdout
    assert "+ 7" in plan and "+ 5" not in plan and "only grows" in plan
    kmesh_apply("apply", "--auto-approve", str(grown), root=pin_root)
    kmesh_apply("plan", "--detailed-exitcode", str(grown), root=pin_root)
    shrunk = write(tmp_path / "c.yaml", base % "[5]")
    kmesh_apply("plan", "--detailed-exitcode", str(shrunk), root=pin_root)  # nothing to do: it cannot shrink
    with Map.open_pinned(str(pin_root / "seen")) as seen:
        assert seen.may_hold((7).to_bytes(4, "little"))


def test_a_queue_gets_its_values_when_created_only(pin_root: Path, tmp_path: Path, bpftool):
    base = "maps:\n  q: {type: queue, value: u32, max_entries: %d, entries: [11, 22, 33]}\n"
    kmesh_apply("apply", "--auto-approve", str(write(tmp_path / "a.yaml", base % 8)), root=pin_root)
    first = bpftool("map", "dequeue", "pinned", str(pin_root / "q"))
    assert int(first["value"][0], 16) == 11
    kmesh_apply("plan", "--detailed-exitcode", str(tmp_path / "a.yaml"), root=pin_root)  # popped: not drift
    bigger = write(tmp_path / "b.yaml", base % 16)
    plan = kmesh_apply("plan", str(bigger), root=pin_root).stdout
    assert "must be replaced" in plan and "starts with the config's values" in plan
    kmesh_apply("apply", "--auto-approve", str(bigger), root=pin_root)
    assert drain(pin_root, "q") == [11, 22, 33]


@pytest.fixture
def typed(tmp_path: Path, pin_root: Path, bpf_scratch: Path):
    """The Kmesh-like object built, its maps applied by object_map, its programs loaded reusing them."""
    obj = build(tmp_path)
    config = write(tmp_path / "typed.yaml", "btf: [typed.bpf.o]\nmaps:\n" + "".join(
        f"  {m}: {{object_map: {m}}}\n" for m in MAPS))
    kmesh_apply("apply", "--auto-approve", str(config), root=pin_root)
    progs = bpf_scratch / "progs"
    res = load_all(obj, progs, {m: pin_root / m for m in MAPS})
    assert res.returncode == 0, res.stderr
    return obj, config, progs


def test_a_kmesh_like_object_loads_reusing_every_map(pin_root: Path, typed, bpftool):
    _, config, progs = typed
    pinned = {bpftool("map", "show", "pinned", str(pin_root / m))["id"] for m in MAPS}
    used = set()
    for prog in progs.iterdir():
        used |= set(bpftool("prog", "show", "pinned", str(prog)).get("map_ids", []))
    assert used == pinned, "every program reuses the pinned maps, and every pinned map is used"
    kmesh_apply("plan", "--detailed-exitcode", str(config), root=pin_root)


def test_program_entries_resolve_run_and_follow_a_reload(pin_root: Path, tmp_path: Path, typed, bpf_scratch: Path):
    obj, _, progs = typed
    text = ("btf: [typed.bpf.o]\nmaps:\n" + "".join(f"  {m}: {{object_map: {m}}}\n" for m in MAPS
                                                        if m not in ("km_tails", "km_ports", "km_cpus", "km_pending", "km_seen"))
            + f"  km_tails: {{object_map: km_tails, entries: {{0: {progs}/handler}}}}\n"
            + f"  km_ports: {{object_map: km_ports, entries: {{0: {{interface: lo, program: {progs}/on_port}}}}}}\n"
            + f"  km_cpus: {{object_map: km_cpus, entries: {{0: {{queue_size: 128, program: {progs}/on_cpu}}}}}}\n"
            + "  km_pending: {object_map: km_pending, entries: [11, 22]}\n"
            + "  km_seen: {object_map: km_seen, entries: [5]}\n")
    config = write(tmp_path / "typed.yaml", text)
    plan = kmesh_apply("plan", str(config), root=pin_root).stdout
    assert "must be replaced" not in plan, plan
    kmesh_apply("apply", "--auto-approve", str(config), root=pin_root)
    kmesh_apply("plan", "--detailed-exitcode", str(config), root=pin_root)
    assert run_pinned(progs / "entry") == 7, "the queue was empty when the programs loaded"
    # the queue and the bloom filter are only written when created: replace them by hand to fill them
    for name in ("km_pending", "km_seen"):
        os.unlink(pin_root / name)
    # ... but then the loaded program still holds the old ones: reload it reusing the new maps
    kmesh_apply("apply", "--auto-approve", str(config), root=pin_root)
    again = bpf_scratch / "again"
    assert load_all(obj, again, {m: pin_root / m for m in MAPS}).returncode == 0
    assert run_pinned(again / "entry") == 42, "popped 11, found 5, tail-called handler through km_tails"

    doc = json.loads(kmesh_apply("show", "--json", root=pin_root).stdout)["maps"]
    assert doc["km_tails"]["entries"] == {"0": f"{progs}/handler"}
    assert doc["km_ports"]["entries"] == {"0": {"interface": "lo", "program": f"{progs}/on_port"}}
    assert doc["km_cpus"]["entries"] == {"0": {"queue_size": 128, "program": f"{progs}/on_cpu"}}

    # the handler is reloaded and pinned again at the same path: its new ID is drift, and apply follows it
    with Map.open_pinned(str(pin_root / "km_tails")) as tails:
        before = tails.lookup(bytes(4))
    os.replace(again / "handler", progs / "handler")
    plan = kmesh_apply("plan", "--detailed-exitcode", str(config), root=pin_root, check=2).stdout
    assert "~ 0: program" in plan
    kmesh_apply("apply", "--auto-approve", str(config), root=pin_root)
    with Map.open_pinned(str(pin_root / "km_tails")) as tails:
        assert tails.lookup(bytes(4)) != before
    kmesh_apply("plan", "--detailed-exitcode", str(config), root=pin_root)

    # a program pinned nowhere is given back by its ID, with a warning, and plans clean that way
    os.unlink(progs / "handler")
    shown = kmesh_apply("show", root=pin_root)
    assert "warning: map 'km_tails' entry 0: program" in shown.stderr and "pinned nowhere" in shown.stderr
    shown_file = write(tmp_path / "shown.yaml", shown.stdout)
    kmesh_apply("plan", "--detailed-exitcode", str(shown_file), root=pin_root)


def test_what_an_entry_names_must_exist(pin_root: Path, tmp_path: Path, bpf_scratch: Path):
    base = "maps:\n  m: {type: %s, key: u32, value: u32, max_entries: 4, entries: {0: %s}}\n"
    missing = write(tmp_path / "a.yaml", base % ("prog_array", bpf_scratch / "nothing"))
    res = kmesh_apply("plan", str(missing), root=pin_root, check=1)
    assert f"map 'm' entry 0: open pinned program on {bpf_scratch}/nothing failed" in res.stderr
    assert "load and pin the program first" in res.stderr
    no_iface = write(tmp_path / "b.yaml", base % ("devmap", "no-such-if0"))
    res = kmesh_apply("plan", str(no_iface), root=pin_root, check=1)
    assert "map 'm' entry 0: no network interface named 'no-such-if0' on this host" in res.stderr
    assert not pin_root.exists(), "nothing was created"


def test_synchroniser_puts_programs_and_refuses_puts_on_queues(pin_root: Path, typed):
    _, config, progs = typed
    from kmesh_apply.config import load_config

    with Synchroniser(str(pin_root)) as sync:
        sync.apply(load_config([str(config)]))
        sync.put("km_tails", {1: str(progs / "handler")})
        sync.flush()
        assert sync.verify() == []
        with pytest.raises(ConfigError, match="put does not apply to a queue map"):
            sync.put("km_pending", {0: 1})
        with pytest.raises(ConfigError, match="sockets"):
            sync.put("km_socket", {0: 1})
    with Map.open_pinned(str(pin_root / "km_tails")) as tails:
        assert tails.lookup((1).to_bytes(4, "little")) is not None


def test_the_config_cache_keeps_every_types_entries(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    import yaml

    from kmesh_apply.config import cache, load_config

    monkeypatch.setenv("KMESH_APPLY_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(cache, "MIN_FILE_BYTES", 0)
    block = yaml.safe_dump(yaml.safe_load(EVERY_TYPE), default_flow_style=False, sort_keys=False)
    config = write(tmp_path / "every.yaml", block)  # block style: the cache cuts it map by map
    first = load_config([str(config)])
    again = load_config([str(config)])  # from the cache
    assert {n: dict(s.entries) for n, s in again.inner_maps.items()} == \
        {n: dict(s.entries) for n, s in first.inner_maps.items()}
    assert list(again.inner_maps["pending"].entries.values()) == [v.to_bytes(4, "little") for v in (11, 22, 33)]
