"""Digests of a map's entries computed in the kernel (kernel/digest.py) against what the planner
computes from a config's entries (`Entries.hash_sum`, Python's SipHash-1-3 of each record), and the
plan that uses them: nothing copied out when they agree, the entries read when they do not, and the
path each large map took said in `plan --json` and `plan -v`."""

from __future__ import annotations

import json
import os
import random
import struct
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kmesh_apply import api
from kmesh_apply.config import load_config
from kmesh_apply.entries import HASH_SUM_FROM, Entries
from kmesh_apply.errors import KmeshError
from kmesh_apply.kernel import digest
from kmesh_apply.kernel.maps import Map
from kmesh_apply.kernel.progs import map_holders
from conftest import _unique_root, bpftool_json, run_cli

M64 = (1 << 64) - 1


def expected(entries: Entries, skip_zero: bool = False) -> digest.Digest:
    """What the planner computes from entries: Python's hashes of the records (key, then value)."""
    records = [k + v for k, v in entries.items() if not (skip_zero and not any(v))]
    return digest.Digest(len(records), sum(map(hash, records)) & M64)


@settings(max_examples=60, deadline=None)
@given(st.binary(max_size=40))
def test_the_reference_siphash_is_pythons_hash_of_bytes(data: bytes):
    key = digest.process_key()
    assert key is not None
    assert digest.siphash13(*key, data) == hash(data) & M64


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(st.sampled_from(["hash", "lru_hash", "array"]), st.integers(1, 24), st.integers(1, 40), st.data())
def test_a_maps_kernel_digest_is_the_sum_the_planner_computes(map_type: str, key_size: int, value_size: int, data):
    if map_type == "array":
        key_size = 4
    max_entries = 32
    keys = data.draw(st.lists(st.binary(min_size=key_size, max_size=key_size), unique=True, max_size=max_entries))
    if map_type == "array":
        keys = [struct.pack("<I", i) for i in data.draw(st.lists(st.integers(0, max_entries - 1), unique=True))]
    values = [data.draw(st.one_of(st.binary(min_size=value_size, max_size=value_size), st.just(bytes(value_size))))
              for _ in keys]
    with Map.create(map_type, key_size, value_size, max_entries) as m:
        if keys:
            m.update_batch(b"".join(keys), b"".join(values), len(keys))
        got = digest.map_digest(m)
        assert got == expected(m.items(), skip_zero=map_type == "array")
        assert got == expected(Entries(key_size, value_size, b"".join(keys), b"".join(values)), map_type == "array")
        other = (data.draw(st.integers(0, M64)), data.draw(st.integers(0, M64)))  # any key: a recorded digest's
        both = digest.map_digests(m, [digest.process_key(), other])
        counted = {k: v for k, v in zip(keys, values) if map_type != "array" or any(v)}
        assert both == [got, digest.of_records(other, counted)]


@pytest.mark.parametrize("outer_type", ["hash_of_maps", "array_of_maps"])
@pytest.mark.parametrize("inner_type", ["hash", "array"])
def test_the_inner_maps_of_an_outer_map_in_one_run(outer_type: str, inner_type: str):
    rng = random.Random(25)
    inners = []
    for i in range(40):
        m = Map.create(inner_type, 4, 12, 16)
        n = rng.randrange(0, 16)
        keys = rng.sample(range(16 if inner_type == "array" else 1 << 32), n)
        if n:
            m.update_batch(struct.pack(f"<{n}I", *keys), rng.randbytes(12 * n), n)
        inners.append(m)
    try:
        with Map.create(outer_type, 4, 4, 128, inner_map=inners[0]) as outer:
            slots = [struct.pack("<I", 2 * i + 1) for i in range(len(inners))]
            outer.update_slots(b"".join(slots), inners)
            missing = struct.pack("<I", 999 if outer_type == "hash_of_maps" else 127)
            found = digest.slot_digests(outer, [*slots, missing], inners[0].info)
            assert missing not in found
            assert found == {s: expected(m.items(), skip_zero=inner_type == "array") for s, m in zip(slots, inners)}
    finally:
        for m in inners:
            m.close()


def test_the_digest_program_is_gone_when_done():
    with Map.create("hash", 4, 8, 8) as m:
        m.update(b"\1\0\0\0", bytes(8))
        digest.map_digest(m)
        programs = bpftool_json("prog", "show") or []
        assert not [p for p in programs if p.get("name") == digest.PROG_NAME]
        assert map_holders([m.id]) == {}


def test_types_the_kernel_cannot_sum_are_refused_with_a_reason():
    with Map.create("percpu_hash", 4, 8, 8) as m:
        with pytest.raises(digest.DigestRefused, match="percpu_hash maps are read"):
            digest.map_digest(m)


# ---- plans ------------------------------------------------------------------------------------

N = HASH_SUM_FROM + 500


def _config(path: Path, entries: dict[int, int], map_type: str = "hash") -> Path:
    flags = "    flags: [no_prealloc]\n" if map_type == "lpm_trie" else ""
    key = "{lpm: ipv4}" if map_type == "lpm_trie" else "u32"
    lines = "".join(f"      {k}: {v}\n" for k, v in entries.items()) if map_type != "lpm_trie" else "".join(
        f"      - {{key: 10.{k >> 16 & 255}.{k >> 8 & 255}.{k & 255}/32, value: {v}}}\n" for k, v in entries.items())
    path.write_text(f"inner_maps:\n  big:\n    type: {map_type}\n    key: {key}\n    value: u64\n"
                    f"    max_entries: {2 * N}\n{flags}    entries:\n{lines}")
    return path


def _plan_json(path: Path, root: Path, env: dict[str, str] | None = None) -> tuple[int, dict]:
    out = run_cli("kmesh-apply", "plan", str(path), "--pin-root", str(root), "--json", "--detailed-exitcode", env=env)
    assert out.returncode in (0, 2), out.stderr
    return out.returncode, json.loads(out.stdout)


def test_a_no_op_plan_sums_a_large_map_in_the_kernel_and_reads_it_when_it_differs(tmp_path: Path, pin_root: Path):
    rng = random.Random(7)
    entries = {k: rng.getrandbits(64) for k in rng.sample(range(1 << 24), N)}
    path = _config(tmp_path / "big.yaml", entries)
    api.converge(load_config([path]), str(pin_root))
    rc, plan = _plan_json(path, pin_root)
    assert rc == 0 and plan["entry_checks"] == {"big": "kernel digest"}
    text = run_cli("kmesh-apply", "plan", str(path), "--pin-root", str(root := pin_root), "-v").stdout
    assert "big: kernel digest" in text
    # Someone else changes one entry: the digests differ, the map is read and the change planned.
    key = next(iter(entries))
    with Map.open_pinned(str(root / "big")) as m:
        m.update(struct.pack("<I", key), struct.pack("<Q", (entries[key] + 1) & M64))
    rc, plan = _plan_json(path, pin_root)
    assert rc == 2 and plan["entry_checks"] == {"big": "read: the kernel's digest differs from the configuration's"}
    assert plan["changes"][0]["counts"] == {"added": 0, "changed": 1, "removed": 0}
    # With PYTHONHASHSEED set Python's hashes are not secret: with no digest recorded under the
    # cache's own key, the entries are compared one by one.
    rc, plan = _plan_json(path, pin_root, env={"PYTHONHASHSEED": "0", "KMESH_APPLY_CACHE_DIR": str(tmp_path / "new")})
    assert rc == 2 and plan["entry_checks"]["big"].startswith("read: PYTHONHASHSEED is set")


def test_maps_the_kernel_cannot_sum_are_read(tmp_path: Path, pin_root: Path):
    rng = random.Random(8)
    entries = {k: rng.getrandbits(64) for k in rng.sample(range(1 << 24), N)}
    path = _config(tmp_path / "trie.yaml", entries, "lpm_trie")
    api.converge(load_config([path]), str(pin_root))
    rc, plan = _plan_json(path, pin_root)
    assert rc == 0 and plan["entry_checks"] == {"big": "read"}


# ---- watch's drift check ------------------------------------------------------------------------

WATCHED = """\
inner_maps:
  svc-a: {type: hash, key: u32, value: u64, max_entries: 16, entries: {1: 10, 2: 20}}
  svc-b: {type: hash, key: u32, value: u64, max_entries: 16, entries: {3: 30}}
  table: {type: array, key: u32, value: u32, max_entries: 8, entries: {1: 5}}
outer_maps:
  services: {type: hash_of_maps, key: u32, max_entries: 8, inner_map: svc-a, entries: {1: svc-a, 2: svc-b}}
"""


def test_a_drift_check_that_finds_nothing_reads_no_entries(tmp_path: Path, pin_root: Path):
    """The synchroniser's verify(): pins, slots and digests when all is as applied; a full read
    (and the correction) only for a difference, whichever kind."""
    from kmesh_apply.sync.synchroniser import Synchroniser

    rng = random.Random(9)
    big = {k: rng.getrandbits(64) for k in rng.sample(range(1 << 24), N)}
    (tmp_path / "watched.yaml").write_text(WATCHED)
    _config(tmp_path / "big.yaml", big)
    with Synchroniser(str(pin_root)) as sync:
        sync.apply(load_config([tmp_path]))
        full_reads = []
        read = sync._kernel.read
        sync._kernel.read = lambda: full_reads.append(1) or read()  # type: ignore[method-assign]

        def poke(name: str, key: bytes, value: bytes) -> None:
            with Map.open_pinned(str(pin_root / name)) as m:
                m.update(key, value)

        assert sync.verify() == [] and full_reads == []
        for name, key, value in (("svc-b", struct.pack("<I", 3), struct.pack("<Q", 31)),  # in a slot: one run
                                 ("big", struct.pack("<I", next(iter(big))), bytes(8)),  # large: its own run
                                 ("table", struct.pack("<I", 2), struct.pack("<I", 7))):  # small: read
            poke(name, key, value)
            assert [c.name for c in sync.verify()] == [name]
            assert sync.verify() == []
        with Map.open_pinned(str(pin_root / "svc-a")) as a, Map.open_pinned(str(pin_root / "services")) as outer:
            outer.update_slots(struct.pack("<I", 2), [a])  # a slot moved
        assert [c.name for c in sync.verify()] == ["services"]
        assert sync.verify() == []
        # Another map with the same entries pinned in svc-b's place: its ID tells, and the full read
        # finds a map kmesh-apply did not make (which it refuses to plan over).
        with Map.open_pinned(str(pin_root / "svc-b")) as old, Map.create("hash", 4, 8, 16) as twin:
            twin.update_batch(*(lambda e: (e.keys_buffer, e.values_buffer))(old.items()), 1)
            os.unlink(pin_root / "svc-b")
            twin.pin(str(pin_root / "svc-b"))
        with pytest.raises(KmeshError, match="does not manage it"):
            sync.verify()
        assert len(full_reads) == 5



def test_recorded_digests_spare_hashing_the_config(tmp_path: Path, pin_root: Path, monkeypatch: pytest.MonkeyPatch):
    """The first plan records the config's digest under the cache's key; the next compares it with
    the kernel's without hashing the config; a changed config is planned from its changed blocks,
    the map found holding the previous version by its recorded digest, and the new version's digest
    recorded from the old one and those blocks."""
    from conftest import private_block_cache

    from kmesh_apply import digests

    private_block_cache(tmp_path, monkeypatch, 4096)
    rng = random.Random(10)
    entries = {k: rng.getrandbits(64) for k in rng.sample(range(1 << 24), N)}
    path = _config(tmp_path / "big.yaml", entries)
    api.converge(load_config([path]), str(pin_root))
    first = api.plan(load_config([path]), str(pin_root))
    assert first.entry_checks == {"big": digests.KERNEL_DIGEST}

    hashed: list[int] = []
    real = Entries.hash_sum
    monkeypatch.setattr(Entries, "hash_sum", lambda self: hashed.append(len(self)) or real(self))
    again = api.plan(load_config([path]), str(pin_root))
    assert again.entry_checks == {"big": digests.KERNEL_DIGEST} and not again.has_changes
    assert not [n for n in hashed if n >= N]  # the config's million were not hashed

    key = next(iter(entries))
    entries[key] ^= 1
    changed = load_config([_config(path, entries)])
    assert changed.inner_maps["big"].entries.base is not None
    plan, report = api.converge(changed, str(pin_root))
    assert plan.entry_checks == {"big": digests.PREVIOUS_VERSION}
    assert report is not None and report.entries_written == 1 and list(plan.changes[0].changed) == [struct.pack("<I", key)]
    after = api.plan(load_config([path]), str(pin_root))
    assert after.entry_checks == {"big": digests.KERNEL_DIGEST} and not after.has_changes
    assert not [n for n in hashed if n >= N]


def test_a_plan_that_took_a_digest_is_saved_and_applied_as_any_other(tmp_path: Path, pin_root: Path,
                                                                     monkeypatch: pytest.MonkeyPatch):
    """A plan whose live side came from the kernel's digest (the previous version's entries, not read)
    is signed, read back and re-derived over a full read of the pin root like any other plan: the
    entries it stands for are the map's, so the fingerprints and the re-derived steps agree."""
    from conftest import private_block_cache

    from kmesh_apply import digests
    from kmesh_apply.plan.saved import load_plan, save_plan

    private_block_cache(tmp_path, monkeypatch, 4096)
    rng = random.Random(11)
    entries = {k: rng.getrandbits(64) for k in rng.sample(range(1 << 24), N)}
    path = _config(tmp_path / "big.yaml", entries)
    api.converge(load_config([path]), str(pin_root))
    api.plan(load_config([path]), str(pin_root))  # records the config's digest
    key = next(iter(entries))
    entries[key] ^= 1
    plan = api.plan(load_config([_config(path, entries)]), str(pin_root))
    assert plan.entry_checks == {"big": digests.PREVIOUS_VERSION}
    save_plan(plan, tmp_path / "saved.plan")
    report = api.apply(load_plan(tmp_path / "saved.plan"))
    assert report.entries_written == 1
    with Map.open_pinned(str(pin_root / "big")) as m:
        assert m.lookup(struct.pack("<I", key)) == struct.pack("<Q", entries[key])
