"""`show`'s own YAML writer (show.write_yaml, config.writer) against the reference, `dump_yaml` of
`show_document` (PyYAML with show's quoting rules): the same bytes for any types and any bytes.
Pure: the live states are built by hand; tests/test_type_roundtrip.py shows real maps."""

from __future__ import annotations

import io
import struct

import yaml
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from kmesh_apply.config import dump_text, dump_yaml
from kmesh_apply.config import writer
from kmesh_apply.ctype import TypeSpecError, parse_type
from kmesh_apply.entries import Entries
from kmesh_apply.show import show_document, write_yaml
from kmesh_apply.state import LiveMap, LiveState

# ---- strings --------------------------------------------------------------------------------

WORDS = ["yes", "no", "on", "off", "true", "False", "null", "~", "1e3", "0o17", "0x1f", "1_000", ".5", "12:30",
         "2001-12-14", "---", "...", "-", ":", "::1", "fd00::1", "10.0.0.1", "10.0.0.0/8", "02:00:00:00:00:01",
         "1:2:3:4:5:6:7:8", "14e00101", "deadbeef", "<<", "=", "#x", "a#b", "a #b", "k_in_0000", ""]
texts = st.one_of(st.sampled_from(WORDS), st.text(alphabet=st.sampled_from(list("0123456789abcdefxyAEN_./:-+ #'\"\\,[]{}?!&*%@`|>\t\n\x85é\x00\u202e\u2028\x9b")), max_size=14),
                  st.lists(st.sampled_from(WORDS), min_size=2, max_size=3).map("".join),
                  st.integers(115, 135).map(lambda n: "a" * n))


@settings(max_examples=600, deadline=None)
@given(texts)
def test_strings_are_written_as_pyyaml_writes_them(text: str):
    assert f"k: {writer.scalar(text)}\n" == dump_text({"k": text})
    assert f"[{writer.scalar(text, True)}]\n" == dump_text([text], flow=True)
    key = writer.key_scalar(text)
    assert (f"{key}: 0\n" if key is not None else f"? {writer.scalar(text)}\n: 0\n") == dump_text({text: 0})


# ---- types and their bytes -----------------------------------------------------------------

NAMES = st.sampled_from(["a", "ip", "port", "yes", "null", "x1", "per_cpu", "key", "value", "_"])
SCALARS = st.sampled_from(["u8", "u16", "u32", "u64", "i8", "i16", "i32", "i64", "be16", "be32", "be64", "bool",
                           "ipv4", "ipv6", "mac", "bytes[3]", "bytes[8]", "char[4]", "char[7]", "u16[3]",
                           {"lpm": "ipv4"}, {"lpm": "ipv6"}, {"type": "u32", "format": "ipv4"},
                           {"type": "u32", "format": "be16"}, {"type": "u64", "format": "mac"}])
ENUMS = st.builds(lambda base, names: {"enum": base, "values": {n.upper(): i for i, n in enumerate(names)}},
                  st.sampled_from(["u8", "u32", "i16"]), st.lists(NAMES, unique=True, max_size=3))


def _members(children: st.SearchStrategy) -> st.SearchStrategy:
    return st.lists(st.tuples(NAMES, children), min_size=1, max_size=4, unique_by=lambda m: m[0]).map(
        lambda ms: [{n: t} for n, t in ms])


specs = st.recursive(
    st.one_of(SCALARS, ENUMS),
    lambda children: st.one_of(
        st.builds(lambda m, p: {"struct": m, "packed": p}, _members(children), st.booleans()),
        st.builds(lambda m: {"struct": m}, _members(st.sampled_from(["u8:3", "u16:5", "u32:1", "bool:1", "u8"]))),
        st.builds(lambda m: {"union": m}, _members(children)),
        st.builds(lambda t, n: {"array": t, "length": n}, children, st.integers(1, 3))),
    max_leaves=6)


def _type(spec):
    try:
        return parse_type(spec)
    except TypeSpecError:
        assume(False)


@st.composite
def live_maps(draw) -> LiveMap:
    map_type = draw(st.sampled_from(["hash", "hash", "array", "percpu_hash", "lru_hash"]))
    key = parse_type("u32") if map_type == "array" else _type(draw(st.one_of(SCALARS, ENUMS, specs)))
    value = _type(draw(specs))
    ncpus = draw(st.integers(1, 3)) if map_type == "percpu_hash" else 1
    value_size = (value.size + 7) // 8 * 8 * ncpus if ncpus > 1 or map_type == "percpu_hash" else value.size
    keys = draw(st.lists(st.binary(min_size=key.size, max_size=key.size), unique=True, max_size=12))
    values = []
    for _ in keys:
        one = draw(st.one_of(st.binary(min_size=value.size, max_size=value.size), st.just(bytes(value.size))))
        if map_type == "percpu_hash":
            stride = (value.size + 7) // 8 * 8
            same = draw(st.booleans())
            per_cpu = [one if same else draw(st.binary(min_size=value.size, max_size=value.size)) for _ in range(ncpus)]
            one = b"".join(v.ljust(stride, b"\0") for v in per_cpu)
        values.append(one)
    name = draw(st.one_of(st.sampled_from(["backends", "yes", "123", "k-1", "null"]), st.just("m" * 130)))
    return LiveMap(name, draw(st.integers(1, 10**6)), map_type, key.size, value_size, draw(st.integers(16, 64)),
                   draw(st.sampled_from([(), ("no_prealloc",)])), key.spec(), value.spec(),
                   Entries(key.size, value_size, b"".join(keys), b"".join(values)))


def _written(live: LiveState) -> str:
    out = io.StringIO()
    write_yaml(live, out.write)
    return out.getvalue()


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
@given(st.lists(live_maps(), max_size=3, unique_by=lambda m: m.name), st.booleans())
def test_show_writes_what_dump_yaml_writes(maps: list[LiveMap], outer: bool):
    live = LiveState("/sys/fs/bpf/test", {m.name: m for m in maps})
    if outer and maps:
        ids = {m.id for m in maps}
        assume(len(ids) == len(maps))
        live.maps["services"] = LiveMap("services", 0, "hash_of_maps", 4, 4, 8, (),
                                        slots={struct.pack("<I", i): m.id for i, m in enumerate(maps)})
    assert _written(live) == dump_yaml(show_document(live))


def test_many_small_maps_are_written_together_as_each_alone():
    """Kmesh's shape: thousands of small hash maps of one definition (written in groups)."""
    value = parse_type({"struct": [{"ip": "ipv4"}, {"port": "be16"}, {"weight": "u16"}]})
    live = LiveState("/sys/fs/bpf/x")
    for i in range(300):
        n = i % 23
        keys = b"".join(struct.pack("<I", (k * 7919 + i) % 1000) for k in range(n))
        values = b"".join(struct.pack("<4s2sH", bytes((10, i % 256, k, 1)), struct.pack(">H", 80 + k), k) for k in range(n))
        live.maps[f"svc-{i:03d}"] = LiveMap(f"svc-{i:03d}", i + 1, "hash", 4, 8, 32, (), "u32", value.spec(),
                                             Entries(4, 8, keys, values))
    assert _written(live) == dump_yaml(show_document(live))


def test_a_large_map_of_integers_in_key_order():
    """A million-entry map's path (keys and positions sorted as one number) on both sides of the
    53 bits a float holds exactly: 4-byte keys and 8-byte keys, signed and unsigned."""
    for key, count in (("u32", 5000), ("i32", 5000), ("u64", 3000), ("i64", 3000), ("be32", 2000)):
        typ = parse_type(key)
        fmt = {"u32": "<I", "i32": "<i", "u64": "<Q", "i64": "<q", "be32": ">I"}[key]
        lo, hi = (-(1 << (8 * typ.size - 1)), (1 << (8 * typ.size - 1)) - 1) if key.startswith("i") else (0, (1 << 8 * typ.size) - 1)
        step = (hi - lo) // count
        keys = b"".join(struct.pack(fmt, lo + (k * 7919 % count) * step) for k in range(count))
        values = b"".join(struct.pack("<Q", k * 11) for k in range(count))
        live = LiveState("/p", {"big": LiveMap("big", 1, "hash", typ.size, 8, count, (), key, "u64",
                                                Entries(typ.size, 8, keys, values))})
        text = _written(live)
        assert text == dump_yaml(show_document(live))
        entries = yaml.safe_load(text)["maps"]["big"]["entries"]
        assert list(entries) == sorted(entries)


def test_maps_whose_entries_cannot_be_read():
    """A ringbuf (no key, no value) and a queue (values that only pop): their definitions alone."""
    live = LiveState("/p", {
        "events": LiveMap("events", 1, "ringbuf", 0, 0, 4096, (), unreadable="a ring buffer"),
        "pending": LiveMap("pending", 2, "queue", 0, 4, 16, (), None, "u32", unreadable="values only pop"),
        "seen": LiveMap("seen", 3, "bloom_filter", 0, 8, 64, (), unreadable="a bloom filter")})
    assert _written(live) == dump_yaml(show_document(live))


def test_maps_naming_programs_and_types_no_config_declares():
    """A prog_array's entries by the paths its programs are pinned at (one pinned nowhere: by its
    ID, with a warning), and someone's struct_ops left out with a warning: as show_document does."""
    live = LiveState("/p", {
        "tails": LiveMap("tails", 1, "prog_array", 4, 4, 4, (), "u32", "u32",
                         Entries(4, 4, struct.pack("<2I", 0, 1), struct.pack("<2I", 71, 72))),
        "ops": LiveMap("ops", 2, "struct_ops", 4, 64, 1, ())})
    programs = {71: "/sys/fs/bpf/progs/handler"}
    said: list[str] = []
    out = io.StringIO()
    write_yaml(live, out.write, programs=programs, warn=said.append)
    heard: list[str] = []
    assert out.getvalue() == dump_yaml(show_document(live, programs=programs, warn=heard.append))
    assert said == heard and len(said) == 2
