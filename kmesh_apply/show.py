"""Live state -> a config document (the inverse of loading), for `kmesh-apply show`.

Types come from the BTF each map carries, so values print as the user wrote
them, formats included (written back under `formats:`). Outer maps cannot carry
BTF: their key type and template are the ones kmesh-apply recorded when it
created them (pinroot.records); without a record keys print by size (`u32` for
4-byte keys, else `key_size`) and the template is the inner map in the lowest
slot. Maps kmesh-apply does not manage are left out, unless asked for (`all_maps`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from operator import itemgetter
from typing import Any

from kmesh_apply.config import codecs, maptypes, references
from kmesh_apply.config.model import ARRAY_TYPES, PERCPU_TYPES
from kmesh_apply.ctype import (CType, Raw, TypeSpecError, apply_format, format_path, formats_of, parse_type, type_or_raw,
                               unformatted)
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


def _entries(keys: list[Any], values: list[Any]) -> Any:
    """Mapping form when every key is a scalar, else the list form; in key order where keys compare."""
    pairs = list(zip(keys, values))
    try:
        pairs.sort(key=itemgetter(0))
    except TypeError:
        pass
    if set(map(type, keys)) <= {int, bool, str}:
        return dict(pairs)
    return [{"key": k, "value": v} for k, v in pairs]


def _inner(m: LiveMap, programs: Mapping[int, str], warn: Callable[[str], None]) -> dict[str, Any]:
    """A map that is in no outer slot's place: its type and sizes always, its entries when they are the
    config's to give and user space can read them (a ringbuf has neither key nor value; a queue's
    values cannot be read; a sockhash's are sockets)."""
    key = type_or_raw(m.key_type, m.key_size)
    value = type_or_raw(m.value_type, m.value_size)
    doc: dict[str, Any] = {"type": m.type}
    _type_fields(doc, {which: typ for which, typ, size in (("key", key, m.key_size), ("value", value, m.value_size))
                       if size})  # ringbufs, queues and stacks have no key, ringbufs no value either
    doc["max_entries"] = m.max_entries
    if m.flags:
        doc["flags"] = list(m.flags)
    kind = maptypes.kind(m.type).entries if m.type in maptypes.KINDS else maptypes.NONE
    if m.unreadable or kind in (maptypes.NONE, maptypes.LIST, maptypes.SET):
        return doc
    if kind in maptypes.REFERENCES:
        return _with_targets(doc, m, key, kind, programs, warn)
    if m.type in ARRAY_TYPES or m.type in PERCPU_TYPES:
        decode = codecs.value_decoder(value, m.type in PERCPU_TYPES)
        items = list(m.entries.items())
        if m.type in ARRAY_TYPES:
            items = [(k, v) for k, v in items if v.count(0) != len(v)]  # unnamed array slots are zero
        keys = [codecs.decode(key, k) for k, _ in items]
        values = [decode(v) for _, v in items]
    else:  # decoded a column at a time: a million entries in a second, not ten
        key_bytes, value_bytes = packed(m.entries)
        keys, values = codecs.decode_column(key, key_bytes), codecs.decode_column(value, value_bytes)
    if keys:
        doc["entries"] = _entries(keys, values)
    return doc


def _with_targets(doc: dict[str, Any], m: LiveMap, key: CType, kind: str, programs: Mapping[int, str],
                  warn: Callable[[str], None]) -> dict[str, Any]:
    """A prog_array's, devmap's or cpumap's entries, programs by the path they are pinned at (by ID, with
    a warning, when they are pinned nowhere) and interfaces by name."""
    entries = {}
    for k, v in m.entries.items():
        shown = references.decode(kind, v, lambda i: programs.get(i, i), references.interface_name)
        entries[codecs.decode(key, k)] = shown
        prog = shown.get("program") if isinstance(shown, dict) else shown if kind == maptypes.PROGRAMS else None
        if isinstance(prog, int):
            warn(f"map '{m.name}' entry {codecs.decode(key, k)}: program {prog} is pinned nowhere in bpffs, so it "
                 "is written by its ID, which a reload of the program changes; pin it and name it by its path")
    if entries:
        doc["entries"] = _entries(list(entries), list(entries.values()))
    return doc


def _outer(m: LiveMap, names: dict[int, str], template: str | None) -> dict[str, Any]:
    """The key type is the one kmesh-apply recorded (None: not recorded, e.g. a map made by another
    tool: then u32 for 4-byte keys, else raw bytes); `template` the inner map it was made with."""
    key = type_or_raw(m.key_type, m.key_size)
    if isinstance(key, Raw) and m.key_size == 4:
        key = parse_type("u32")
    doc: dict[str, Any] = {"type": m.type}
    _type_fields(doc, {"key": key})
    doc["max_entries"] = m.max_entries
    if m.flags:
        doc["flags"] = list(m.flags)
    doc["inner_map"] = template
    slots = [(codecs.decode(key, k), names[i]) for k, i in m.slots.items() if i in names]
    if slots:
        doc["entries"] = _entries([k for k, _ in slots], [name for _, name in slots])
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


def show_document(live: LiveState, all_maps: bool = False, programs: Mapping[int, str] | None = None,
                  warn: Callable[[str], None] = lambda message: None) -> dict[str, Any]:
    """The managed maps as a config document: plain maps (in no outer slot, no outer map's template)
    under `maps:`, the others under `inner_maps:` and `outer_maps:`. `all_maps`: the unmanaged ones
    too, marked `adopt: true` (the document then takes them over when applied). `programs` gives the
    paths the programs in prog_array, devmap and cpumap entries are pinned at (`referenced_programs`
    says which), `warn` hears of those that are not."""
    maps = dict(live.maps)
    if all_maps:
        maps.update(live.unmanaged)
    names = {m.id: n for n, m in maps.items() if not m.is_outer}
    templates = _templates(live, maps, names)
    in_slots = {names[i] for m in maps.values() if m.is_outer for i in m.slots.values() if i in names}
    doc: dict[str, Any] = {"pin_root": live.pin_root}
    sections: dict[str, dict[str, Any]] = {"maps": {}, "inner_maps": {}, "outer_maps": {}}
    for n, m in sorted(maps.items()):
        if not m.is_outer and m.type not in maptypes.KINDS:  # someone's struct_ops, or a type newer than this tool
            warn(f"map '{n}' is {a(m.type)} map, which a config cannot declare: left out")
            continue
        if m.is_outer:
            section, body = "outer_maps", _outer(m, names, templates[n])
        else:
            section = "inner_maps" if n in in_slots or n in templates.values() else "maps"
            body = _inner(m, programs or {}, warn)
        if n in live.unmanaged:
            body["adopt"] = True
        sections[section][n] = body
    doc.update((section, body) for section, body in sections.items() if body)
    return doc


def referenced_programs(live: LiveState) -> set[int]:
    """The IDs of the programs that prog_array, devmap and cpumap entries hold (ask where they are pinned)."""
    out: set[int] = set()
    for m in [*live.maps.values(), *live.unmanaged.values()]:
        offset = PROGRAM_OFFSET.get(m.type)
        if offset is not None and not m.unreadable:
            out.update(int.from_bytes(v[offset:offset + 4], "little") for v in m.entries.values() if len(v) >= offset + 4)
    return out - {0}
