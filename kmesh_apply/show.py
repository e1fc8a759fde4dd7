"""Live state -> a config document (the inverse of loading), for `kmesh-apply show`.

Types come from the BTF each map carries, so values print as the user wrote
them, formats included (written back under `formats:`). Outer maps cannot carry
BTF: their key type and template are the ones kmesh-apply recorded when it
created them (pinroot.records); without a record keys print by size (`u32` for
4-byte keys, else `key_size`) and the template is the inner map in the lowest
slot. Maps kmesh-apply does not manage are left out, unless asked for (`all_maps`).
Entries are in key order (by their bytes where the keys do not compare, e.g. structs).

`show_document` builds the document (for `--json` and the API); `write_yaml` writes
the same document's YAML, byte for byte what `dump_yaml` makes of it, map by map and
a block of entries at a time, straight from the packed entries (config.writer).
"""

from __future__ import annotations

from array import array
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from kmesh_apply.config import codecs, maptypes, references, writer
from kmesh_apply.config.model import ARRAY_TYPES, PERCPU_TYPES
from kmesh_apply.ctype import (CType, Int, Raw, TypeSpecError, apply_format, format_path, formats_of, parse_type,
                               records, type_or_raw, unformatted)
from kmesh_apply.entries import packed
from kmesh_apply.kernel.maps import PROGRAM_OFFSET
from kmesh_apply.state import LiveMap, LiveState
from kmesh_apply.wording import a


def _type_fields(doc: dict[str, Any], types: dict[str, CType]) -> None:
    """The key and value types (or their sizes), their formats written under `formats:` as a config
    gives them (when applying those to both gives back exactly these types; else spelled inline)."""
    formats = _formats(types)
    for which, typ in types.items():
        spec = (unformatted(typ) if formats else typ).spec()
        if spec is None:
            doc[f"{which}_size"] = typ.size
        else:
            doc[which] = spec
    if formats:
        doc["formats"] = formats


def _formats(types: dict[str, CType]) -> dict[str, Any]:
    """The `formats:` that turn the plain key and value into these, or {} when none (or none does)."""
    formats: dict[str, Any] = {}
    for typ in types.values():
        for path, spec in formats_of(typ).items():
            if formats.setdefault(path, spec) != spec:
                return {}
    again = {which: unformatted(typ) for which, typ in types.items()}
    for path, spec in formats.items():
        for which, typ in again.items():
            try:
                again[which] = apply_format(typ, format_path(path), parse_type(spec))
            except KeyError:
                pass  # not a path of this one
            except TypeSpecError:
                return {}  # a config would refuse the path here
    return formats if again == types else {}


def _order(keys: Sequence[Any], raw: Sequence[bytes]) -> list[int]:
    """Positions in key order; by the keys' bytes where the decoded keys do not compare."""
    try:
        return sorted(range(len(keys)), key=keys.__getitem__)
    except TypeError:
        return sorted(range(len(keys)), key=raw.__getitem__)


def _entries(keys: list[Any], values: list[Any], raw: Sequence[bytes]) -> Any:
    """Mapping form when every key is a scalar, else the list form; in key order."""
    order = _order(keys, raw)
    if set(map(type, keys)) <= {int, bool, str}:
        return {keys[i]: values[i] for i in order}
    return [{"key": keys[i], "value": values[i]} for i in order]


def _inner_head(m: LiveMap) -> tuple[CType, CType, dict[str, Any], str]:
    """A map that is in no outer slot's place: its key and value types, its definition (all but its
    entries: type and sizes always) and what its entries are (config.maptypes)."""
    key = type_or_raw(m.key_type, m.key_size)
    value = type_or_raw(m.value_type, m.value_size)
    doc: dict[str, Any] = {"type": m.type}
    _type_fields(doc, {which: typ for which, typ, size in (("key", key, m.key_size), ("value", value, m.value_size))
                       if size})  # ringbufs, queues and stacks have no key, ringbufs no value either
    doc["max_entries"] = m.max_entries
    if m.flags:
        doc["flags"] = list(m.flags)
    kind = maptypes.kind(m.type).entries if m.type in maptypes.KINDS else maptypes.NONE
    return key, value, doc, kind


def _no_entries(m: LiveMap, kind: str) -> bool:
    """Entries that are not the config's to give, or that user space cannot read (a ringbuf has
    neither key nor value; a queue's values cannot be read; a sockhash's are sockets)."""
    return bool(m.unreadable) or kind in (maptypes.NONE, maptypes.LIST, maptypes.SET)


def _shown(m: LiveMap, value_size: int) -> range | list[int]:
    """The positions of the entries shown: all, but an array's all-zero values (unnamed slots)."""
    values = packed(m.entries)[1]
    if m.type not in ARRAY_TYPES:
        return range(len(values) // value_size)
    return [i for i, v in enumerate(records(values, value_size)) if v.count(0) != value_size]


def _inner(m: LiveMap, programs: Mapping[int, str], warn: Callable[[str], None]) -> dict[str, Any]:
    """A map that is in no outer slot's place: its definition, and its entries when they are the
    config's to give and user space can read them."""
    key, value, doc, kind = _inner_head(m)
    if _no_entries(m, kind):
        return doc
    if kind in maptypes.REFERENCES:
        return _with_targets(doc, m, key, kind, programs, warn)
    key_bytes, value_bytes = packed(m.entries)
    if not key_bytes:
        return doc
    if m.type in ARRAY_TYPES or m.type in PERCPU_TYPES:
        decode = codecs.value_decoder(value, m.type in PERCPU_TYPES)
        vs = len(value_bytes) // (len(key_bytes) // key.size)
        shown = _shown(m, vs)
        raw = [bytes(key_bytes[i * key.size:(i + 1) * key.size]) for i in shown]
        keys = [codecs.decode(key, k) for k in raw]
        values = [decode(bytes(value_bytes[i * vs:(i + 1) * vs])) for i in shown]
    else:  # decoded a column at a time: a million entries in a second, not ten
        keys, values = codecs.decode_column(key, key_bytes), codecs.decode_column(value, value_bytes)
        raw = list(records(key_bytes, key.size))
    if keys:
        doc["entries"] = _entries(keys, values, raw)
    return doc


def _with_targets(doc: dict[str, Any], m: LiveMap, key: CType, kind: str, programs: Mapping[int, str],
                  warn: Callable[[str], None]) -> dict[str, Any]:
    """A prog_array's, devmap's or cpumap's entries, programs by the path they are pinned at (by ID, with
    a warning, when they are pinned nowhere) and interfaces by name."""
    entries, raw = {}, []
    for k, v in m.entries.items():
        shown = references.decode(kind, v, lambda i: programs.get(i, i), references.interface_name)
        entries[codecs.decode(key, k)] = shown
        raw.append(bytes(k))
        prog = shown.get("program") if isinstance(shown, dict) else shown if kind == maptypes.PROGRAMS else None
        if isinstance(prog, int):
            warn(f"map '{m.name}' entry {codecs.decode(key, k)}: program {prog} is pinned nowhere in bpffs, so it "
                 "is written by its ID, which a reload of the program changes; pin it and name it by its path")
    if entries:
        doc["entries"] = _entries(list(entries), list(entries.values()), raw)
    return doc


def _outer_head(m: LiveMap, template: str | None) -> tuple[CType, dict[str, Any]]:
    """An outer map's key type and definition. The key type is the one kmesh-apply recorded (None:
    not recorded, e.g. a map made by another tool: then u32 for 4-byte keys, else raw bytes);
    `template` the inner map it was made with."""
    key = type_or_raw(m.key_type, m.key_size)
    if isinstance(key, Raw) and m.key_size == 4:
        key = parse_type("u32")
    doc: dict[str, Any] = {"type": m.type}
    _type_fields(doc, {"key": key})
    doc["max_entries"] = m.max_entries
    if m.flags:
        doc["flags"] = list(m.flags)
    doc["inner_map"] = template
    return key, doc


def _slot_entries(m: LiveMap, key: CType, names: dict[int, str]) -> Any:
    slots = [(k, names[i]) for k, i in m.slots.items() if i in names]
    return _entries([codecs.decode(key, k) for k, _ in slots], [n for _, n in slots], [k for k, _ in slots]) if slots else None


def _outer(m: LiveMap, names: dict[int, str], template: str | None) -> dict[str, Any]:
    key, doc = _outer_head(m, template)
    entries = _slot_entries(m, key, names)
    if entries is not None:
        doc["entries"] = entries
    return doc


def _templates(live: LiveState, maps: dict[str, LiveMap], names: dict[int, str]) -> dict[str, str | None]:
    """Each outer map's template: the one recorded when kmesh-apply created it, if that inner map is
    still there and fits the slots; else the inner map in its lowest slot; else any inner map."""
    by_name = {n: m for n, m in maps.items() if not m.is_outer}
    out: dict[str, str | None] = {}
    for name, m in maps.items():
        if not m.is_outer:
            continue
        recorded = live.layouts[name].template if name in live.layouts else None
        held = [names[i] for _, i in sorted(m.slots.items()) if i in names]
        if recorded in by_name and all(_fits(by_name[recorded], by_name[h]) for h in held):
            out[name] = recorded
        else:
            out[name] = held[0] if held else min(by_name, default=None)
    return out


def _fits(template: LiveMap, inner: LiveMap) -> bool:
    props = ["type", "key_size", "value_size", "flags"]
    if template.type in ARRAY_TYPES and "inner_map" not in template.flags:
        props.append("max_entries")
    return all(getattr(template, p) == getattr(inner, p) for p in props)


class _Sections:
    """Which maps a document shows and under which section: plain maps (in no outer slot, no outer
    map's template) under `maps:`, the others under `inner_maps:` and `outer_maps:`; the unmanaged
    ones only when asked for (`all_maps`), marked `adopt: true`; maps of a type a config cannot
    declare left out, with a warning."""

    def __init__(self, live: LiveState, all_maps: bool, warn: Callable[[str], None]):
        maps = dict(live.maps)
        if all_maps:
            maps.update(live.unmanaged)
        self.adopted = set(live.unmanaged) if all_maps else set()
        self.names = {m.id: n for n, m in maps.items() if not m.is_outer}
        self.templates = _templates(live, maps, self.names)
        in_slots = {self.names[i] for m in maps.values() if m.is_outer for i in m.slots.values() if i in self.names}
        self.sections: dict[str, list[tuple[str, LiveMap]]] = {"maps": [], "inner_maps": [], "outer_maps": []}
        for n, m in sorted(maps.items()):
            if not m.is_outer and m.type not in maptypes.KINDS:  # someone's struct_ops, or a type newer than this tool
                warn(f"map '{n}' is {a(m.type)} map, which a config cannot declare: left out")
                continue
            if m.is_outer:
                section = "outer_maps"
            else:
                section = "inner_maps" if n in in_slots or n in self.templates.values() else "maps"
            self.sections[section].append((n, m))


def show_document(live: LiveState, all_maps: bool = False, programs: Mapping[int, str] | None = None,
                  warn: Callable[[str], None] = lambda message: None) -> dict[str, Any]:
    """The managed maps as a config document (see `_Sections`). `programs` gives the paths the
    programs in prog_array, devmap and cpumap entries are pinned at (`referenced_programs` says
    which), `warn` hears of those that are not."""
    shown = _Sections(live, all_maps, warn)
    doc: dict[str, Any] = {"pin_root": live.pin_root}
    for section, maps in shown.sections.items():
        bodies = {}
        for n, m in maps:
            body = _outer(m, shown.names, shown.templates[n]) if m.is_outer else _inner(m, programs or {}, warn)
            if n in shown.adopted:
                body["adopt"] = True
            bodies[n] = body
        if bodies:
            doc[section] = bodies
    return doc


def referenced_programs(live: LiveState) -> set[int]:
    """The IDs of the programs that prog_array, devmap and cpumap entries hold (ask where they are pinned)."""
    out: set[int] = set()
    for m in [*live.maps.values(), *live.unmanaged.values()]:
        offset = PROGRAM_OFFSET.get(m.type)
        if offset is not None and not m.unreadable:
            out.update(int.from_bytes(v[offset:offset + 4], "little") for v in m.entries.values() if len(v) >= offset + 4)
    return out - {0}


# ---------------------------------------------------------------- YAML, written as it goes

Write = Callable[[str], object]
_BLOCK = 4096  # entries written at a time
_ENTRY = " " * 6
_INT_ENTRY = _ENTRY + "%d: %s\n"
_ITEM = "    - "  # a list-form entry: PyYAML does not indent a list under its key


def write_yaml(live: LiveState, write: Write, all_maps: bool = False, programs: Mapping[int, str] | None = None,
               warn: Callable[[str], None] = lambda message: None) -> None:
    """`dump_yaml(show_document(live, all_maps, programs, warn))`, byte for byte, without building
    the document: each map is written as it comes, its entries a block at a time straight from
    their packed bytes (K's 100,000 struct values in a fraction of a second, where PyYAML took 16 s)."""
    _YamlWriter(live, write, _Sections(live, all_maps, warn), programs or {}, warn).run()


class _YamlWriter:
    """Writes one pin root's maps. Small hash maps with integer keys and the same definition
    (Kmesh's 5,000 services) are written together: their values' texts made in one call, so
    that a map of 20 entries costs a few C calls rather than its own pass of each writer."""

    def __init__(self, live: LiveState, write: Write, shown: _Sections, programs: Mapping[int, str],
                 warn: Callable[[str], None]) -> None:
        self.live, self.write, self.shown, self.programs, self.warn = live, write, shown, programs, warn
        # Definitions by the identity of the type specs the reader shares between maps (kept alive here).
        self.heads: dict[tuple[Any, ...], tuple[CType, CType, str, str, Any]] = {}
        # Maps waiting to be written together: (name line and definition, map, what follows its entries).
        self.pending: list[tuple[str, LiveMap, str]] = []
        self.pending_entries = 0

    def run(self) -> None:
        self.write(f"pin_root: {writer.python_text(self.live.pin_root, False)}\n")
        for section, maps in self.shown.sections.items():
            if maps:
                self.write(f"{section}:\n")
            for name, m in maps:
                tail = "    adopt: true\n" if name in self.shown.adopted else ""
                (self.outer if m.is_outer else self.inner)(section, name, m, tail)
            self.flush()

    def head(self, m: LiveMap) -> tuple[CType, CType, str, str]:
        known = (m.type, m.key_size, m.value_size, m.max_entries, m.flags, id(m.key_type), id(m.value_type))
        found = self.heads.get(known)
        if found is None:
            key, value, doc, kind = _inner_head(m)
            found = self.heads[known] = (key, value, _head(doc), kind, (m.key_type, m.value_type))
        return found[0], found[1], found[2], found[3]

    def inner(self, section: str, name: str, m: LiveMap, tail: str) -> None:
        line = writer.key_scalar(name)
        key, value, head, kind = self.head(m)
        if line is None or kind in maptypes.REFERENCES and not _no_entries(m, kind):
            # A name that is no simple key (over 122 characters), or entries naming programs or
            # interfaces (a few): the whole map by dump_yaml.
            self.flush()
            body = _inner(m, self.programs, self.warn)
            if tail:
                body["adopt"] = True
            self.write(writer.dump_yaml({section: {name: body}}).split("\n", 1)[1])
            return
        text = f"  {line}:\n{head}"
        if _no_entries(m, kind) or m.type in ARRAY_TYPES or m.type in PERCPU_TYPES or not _small_int_keys(key, m):
            self.flush()
            self.write(text)
            if not _no_entries(m, kind):
                self.entries(m, key, value)
            self.write(tail)
            return
        if self.pending and self.head(self.pending[0][1])[:2] != (key, value) or self.pending_entries >= _BLOCK:
            self.flush()
        self.pending.append((text, m, tail))
        self.pending_entries += len(m.entries)

    def flush(self) -> None:
        """Write the pending small maps: their values' texts and keys made for all of them at once."""
        if not self.pending:
            return
        key, value, _, _ = self.head(self.pending[0][1])
        key_bytes = b"".join(packed(m.entries)[0] for _, m, _ in self.pending)
        texts = writer.column_writer(value)(b"".join(packed(m.entries)[1] for _, m, _ in self.pending), None)
        keys = codecs.decode_column(key, key_bytes)
        out, start = [], 0
        for text, m, tail in self.pending:
            end = start + len(m.entries)
            out.append(text)
            if end > start:
                out.append("    entries:\n")
                out += map(_INT_ENTRY.__mod__, sorted(zip(keys[start:end], texts[start:end])))
            out.append(tail)
            start = end
        self.write("".join(out))
        self.pending.clear()
        self.pending_entries = 0

    def entries(self, m: LiveMap, key: CType, value: CType) -> None:
        """One map's entries, a block at a time, in key order."""
        key_bytes, value_bytes = packed(m.entries)
        if m.unreadable or not key_bytes:
            return
        count = len(key_bytes) // key.size
        vs = len(value_bytes) // count
        shown = _shown(m, vs)
        if not shown:
            return
        if m.type in PERCPU_TYPES:
            ncpus = vs // codecs.per_cpu_stride(value)
            block, flow = writer.per_cpu_writer(value, ncpus), writer.per_cpu_writer(value, ncpus, True)
        else:
            block, flow = writer.column_writer(value), writer.column_writer(value, True)
        write, ks = self.write, key.size
        write("    entries:\n")
        if codecs.is_int(key):
            order, shift = _key_order(key, key_bytes, shown)
            mask = (1 << shift) - 1
            if m.type not in PERCPU_TYPES and codecs.is_int(value):
                values = codecs.int_array(value, value_bytes)  # read by position: no unpacking per entry
                for start in range(0, len(order), _BLOCK):
                    write("".join([f"{_ENTRY}{c >> shift}: {values[c & mask]}\n" for c in order[start:start + _BLOCK]]))
                return
            for start in range(0, len(order), _BLOCK):
                part = order[start:start + _BLOCK]
                texts = block(value_bytes, [(c & mask) * vs for c in part])
                write("".join(map(_INT_ENTRY.__mod__, zip([c >> shift for c in part], texts))))
            return
        keys = codecs.decode_column(key, key_bytes)
        if len(shown) != count:
            keys = [keys[i] for i in shown]
        positions = list(shown)
        ordered = [positions[j] for j in _order(keys, [bytes(key_bytes[i * ks:(i + 1) * ks]) for i in positions])]
        by_position = dict(zip(positions, keys))
        for start in range(0, len(ordered), _BLOCK):
            part = ordered[start:start + _BLOCK]
            if writer.is_collection(key):
                pairs = zip(writer.column_writer(key, True)(key_bytes, [i * ks for i in part]),
                            flow(value_bytes, [i * vs for i in part]))
                write("".join(f"{_ITEM}{{key: {k}, value: {v}}}\n" for k, v in pairs))
            else:
                texts = block(value_bytes, [i * vs for i in part])
                write("".join(_python_entry(by_position[i], text, written=True) for i, text in zip(part, texts)))

    def outer(self, section: str, name: str, m: LiveMap, tail: str) -> None:
        names, template = self.shown.names, self.shown.templates[name]
        line = writer.key_scalar(name)
        if line is None:
            body = _outer(m, names, template)
            if tail:
                body["adopt"] = True
            self.write(writer.dump_yaml({section: {name: body}}).split("\n", 1)[1])
            return
        key, doc = _outer_head(m, template)
        inner_map = doc.pop("inner_map")
        self.write(f"  {line}:\n{_head(doc)}    inner_map: {writer.python_text(inner_map, False)}\n")
        entries = _slot_entries(m, key, names)
        if entries is not None:
            self.write("    entries:\n" + _python_entries(entries))
        self.write(tail)


def _small_int_keys(key: CType, m: LiveMap) -> bool:
    return codecs.is_int(key) and len(m.entries) < _BLOCK


def _key_order(key: Int | Raw, key_bytes: bytes | bytearray, shown: range | list[int]) -> tuple[list[int], int]:
    """The shown positions in key order, each as one int `key << shift | position`, and the shift.
    Where that fits in 53 bits (keys of up to 4 bytes, up to 2 million entries) the ints are
    sorted as floats, which CPython compares without leaving C: a million in 0.2 s, not 0.5."""
    keys = codecs.int_array(key, key_bytes)
    shift = max(1, (len(keys) - 1).bit_length())
    if 8 * key.size + shift > 53:
        shift = 32
        order = [keys[i] << shift | i for i in shown]
        order.sort()
        return order, shift
    exact = array("d", (keys[i] << shift | i for i in shown))
    del keys
    floats = exact.tolist()
    del exact
    floats.sort()
    return list(map(int, floats)), shift


def _head(doc: dict[str, Any]) -> str:
    """A map's definition: the parts thousands of maps share are written by PyYAML once."""
    flags = doc.pop("flags", None)
    text = writer.definition({k: v for k, v in doc.items() if k != "max_entries"}, 4)
    text += f"    max_entries: {doc['max_entries']}\n"
    return text + (writer.definition({"flags": flags}, 4) if flags else "")


def _python_entries(entries: dict[Any, Any] | list[dict[str, Any]]) -> str:
    """Decoded entries (mapping or list form) as `dump_yaml` writes them."""
    if isinstance(entries, dict):
        return "".join(_python_entry(k, v) for k, v in entries.items())
    return "".join(f"{_ITEM}{writer.python_text(e, True)}\n" for e in entries)


def _python_entry(key: Any, value: Any, written: bool = False) -> str:
    """One mapping-form entry line: a scalar key and its value (`written`: already as text)."""
    text = value if written else writer.python_text(value, False)
    if isinstance(key, str):
        shown = writer.key_scalar(key)
        if shown is None:
            return f"{_ENTRY}? {writer.scalar(key)}\n{_ENTRY}: {text}\n"
        return f"{_ENTRY}{shown}: {text}\n"
    return f"{_ENTRY}{writer.python_text(key, False)}: {text}\n"
