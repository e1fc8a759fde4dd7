"""`kmesh map ...`: the founding design's imperative commands over kernel map IDs.

    kmesh map create-inner --type=hash --key-size=4 --value-size=8 --max-entries=1000
    kmesh map create-outer --type=array --inner-map=<inner-map-id> --max-entries=100
    kmesh map update-outer <outer-map-id> --key=1 --inner-map=<inner-map-id>
    kmesh map update-inner <inner-map-id> --key=100 --value=200
    kmesh map lookup <outer-map-id> --outer-key=1 --inner-key=100

Keys and values are integers (decimal or 0x hex, stored little-endian in the
map's key/value size) or, with --key-hex/--value-hex, raw bytes. The libbpf
binding is imported inside the commands so that --help stays instant.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict
from typing import TYPE_CHECKING, Annotated, Any, Optional

import typer

from kmesh_apply.cli.common import PinRootNoFileOption, make_app, run, say
from kmesh_apply.errors import KmeshError
from kmesh_apply.terminal import printable

if TYPE_CHECKING:
    from kmesh_apply.kernel.maps import Map
    from kmesh_apply.kernel.progs import Program
    from kmesh_apply.manager import MapInMapManager

app = make_app("kmesh", "Imperative tools for eBPF map-in-map state (see also kmesh-apply).")
map_app = typer.Typer(
    help="Create, fill and inspect outer and inner maps by kernel map ID.",
    no_args_is_help=True,
    rich_markup_mode=None,
)
app.add_typer(map_app, name="map")

MapId = Annotated[str, typer.Argument(help="Kernel map ID (as `bpftool map show` prints it).", show_default=False)]
Json = Annotated[bool, typer.Option("--json", help="Print JSON.")]
Flags = Annotated[Optional[list[str]], typer.Option("--flags", help="Map flags by name, comma-separated or repeated (e.g. no_prealloc).")]
Name = Annotated[str, typer.Option("--name", help="Kernel object name (at most 15 of A-Z a-z 0-9 _ .).")]
MaxEntries = Annotated[int, typer.Option("--max-entries", help="Maximum number of entries (slots for an outer map).")]


def _opt(flag: str, help: str) -> Any:
    return typer.Option(flag, help=help, show_default=False)


KeyOpt = Annotated[Optional[str], _opt("--key", "Key as an integer (decimal or 0x hex).")]
KeyHexOpt = Annotated[Optional[str], _opt("--key-hex", "Key as raw bytes in hex, exactly key_size bytes.")]


def _number(text: str, what: str) -> int:
    try:
        return int(text, 0)
    except ValueError:
        raise KmeshError(f"{what}: '{text}' is not an integer (decimal, or hex with 0x)") from None


def _map_id(text: str) -> int:
    n = _number(text, "map ID")
    if not 0 < n < 1 << 32:
        raise KmeshError(f"map ID {n} is out of range (kernel map IDs are 1..4294967295)")
    return n


def _key(value: Optional[str], hex_value: Optional[str], flag: str) -> int | bytes:
    """The --X / --X-hex pair as an int or bytes (exactly one must be given)."""
    if (value is None) == (hex_value is None):
        raise KmeshError(f"give exactly one of --{flag}, --{flag}-hex")
    if value is not None:
        return _number(value, f"--{flag}")
    assert hex_value is not None  # exactly one of the two, checked above
    text = hex_value.removeprefix("0x").replace(":", "").replace(" ", "")
    try:
        return bytes.fromhex(text)
    except ValueError:
        raise KmeshError(f"--{flag}-hex: '{hex_value}' is not hex bytes (e.g. 0a000001)") from None


def _flags(values: Optional[list[str]]) -> tuple[str, ...]:
    return tuple(f.strip() for v in values or () for f in v.split(",") if f.strip())


def _manager(pin_root: Optional[str]) -> MapInMapManager:
    from kmesh_apply.config.model import resolve_pin_root
    from kmesh_apply.manager import MapInMapManager

    return MapInMapManager(resolve_pin_root(pin_root))


def _value_json(value: bytes, value_size: int, per_cpu: bool) -> Any:
    """A value as an integer (1, 2, 4 or 8 bytes) or hex; per-CPU values as a list, one per CPU."""
    if per_cpu:
        stride = (value_size + 7) // 8 * 8
        return [_value_json(value[i:i + value_size], value_size, False) for i in range(0, len(value), stride)]
    return int.from_bytes(value, "little") if value_size in (1, 2, 4, 8) else value.hex()


# --- creating ---------------------------------------------------------------------------


@map_app.command("create-inner")
def create_inner(
    type: Annotated[str, typer.Option("--type", help="hash | array | lru_hash | percpu_hash | percpu_array | lru_percpu_hash | lpm_trie")],
    key_size: Annotated[int, typer.Option("--key-size", help="Key size in bytes.")],
    value_size: Annotated[int, typer.Option("--value-size", help="Value size in bytes.")],
    max_entries: MaxEntries,
    flags: Flags = None,
    name: Name = "",
    pin_root: PinRootNoFileOption = None,
) -> None:
    """Create an inner map, pin it as <pin root>/inner-<id> and print its kernel ID."""
    from kmesh_apply.manager import InnerMapConfig

    with _manager(pin_root) as mgr:
        print(mgr.create_inner_map(InnerMapConfig(type, key_size, value_size, max_entries, _flags(flags), name)))


@map_app.command("create-outer")
def create_outer(
    type: Annotated[str, typer.Option("--type", help="array | hash (or array_of_maps | hash_of_maps)")],
    inner_map: Annotated[str, typer.Option("--inner-map", help="ID of the template inner map: slots take maps like it.")],
    max_entries: MaxEntries,
    key_size: Annotated[int, typer.Option("--key-size", help="Slot key size in bytes (4 for array).")] = 4,
    flags: Flags = None,
    name: Name = "",
    pin_root: PinRootNoFileOption = None,
) -> None:
    """Create an outer map, pin it as <pin root>/outer-<id> and print its kernel ID."""
    from kmesh_apply.manager import OuterMapConfig

    with _manager(pin_root) as mgr:
        config = OuterMapConfig(type, key_size, None, max_entries, inner_map_id=_map_id(inner_map), flags=_flags(flags), name=name)
        print(mgr.create_outer_map(config))


# --- writing ----------------------------------------------------------------------------


@map_app.command("update-outer")
def update_outer(
    outer_map: MapId,
    inner_map: Annotated[str, typer.Option("--inner-map", help="ID of the inner map to put in the slot.")],
    key: KeyOpt = None,
    key_hex: KeyHexOpt = None,
    pin_root: PinRootNoFileOption = None,
) -> None:
    """Put an inner map in a slot of an outer map."""
    with _manager(pin_root) as mgr:
        mgr.update_outer_element(_map_id(outer_map), _key(key, key_hex, "key"), _map_id(inner_map))


@map_app.command("update-inner")
def update_inner(
    inner_map: MapId,
    key: KeyOpt = None,
    key_hex: KeyHexOpt = None,
    value: Annotated[Optional[str], _opt("--value", "Value as an integer (decimal or 0x hex).")] = None,
    value_hex: Annotated[Optional[str], _opt("--value-hex", "Value as raw bytes in hex.")] = None,
    pin_root: PinRootNoFileOption = None,
) -> None:
    """Write one entry of an inner map (a per-CPU map gets the value on every CPU)."""
    with _manager(pin_root) as mgr:
        mgr.update_inner_element(_map_id(inner_map), _key(key, key_hex, "key"), _key(value, value_hex, "value"))


@map_app.command("delete-outer")
def delete_outer(outer_map: MapId, key: KeyOpt = None, key_hex: KeyHexOpt = None, pin_root: PinRootNoFileOption = None) -> None:
    """Empty a slot of an outer map."""
    with _manager(pin_root) as mgr:
        k = _key(key, key_hex, "key")
        if not mgr.delete_outer_element(_map_id(outer_map), k):
            raise KmeshError(f"slot {key or key_hex} of outer map {outer_map} is already empty")


@map_app.command("delete-inner")
def delete_inner(inner_map: MapId, key: KeyOpt = None, key_hex: KeyHexOpt = None, pin_root: PinRootNoFileOption = None) -> None:
    """Delete one entry of an inner map."""
    with _manager(pin_root) as mgr:
        if not mgr.delete_inner_element(_map_id(inner_map), _key(key, key_hex, "key")):
            raise KmeshError(f"inner map {inner_map} has no key {key or key_hex}")


# --- reading ----------------------------------------------------------------------------


@map_app.command("lookup")
def lookup(
    outer_map: MapId,
    outer_key: Annotated[Optional[str], _opt("--outer-key", "Slot key as an integer.")] = None,
    outer_key_hex: Annotated[Optional[str], _opt("--outer-key-hex", "Slot key as hex bytes.")] = None,
    inner_key: Annotated[Optional[str], _opt("--inner-key", "Key in the inner map as an integer.")] = None,
    inner_key_hex: Annotated[Optional[str], _opt("--inner-key-hex", "Key in the inner map as hex bytes.")] = None,
    as_json: Json = False,
    pin_root: PinRootNoFileOption = None,
) -> None:
    """Look a key up in the inner map that sits in a slot of an outer map."""
    from kmesh_apply.kernel.maps import PERCPU_TYPES

    okey, ikey = _key(outer_key, outer_key_hex, "outer-key"), _key(inner_key, inner_key_hex, "inner-key")
    with _manager(pin_root) as mgr:
        oid = _map_id(outer_map)
        inner_id = mgr.lookup_slot(oid, okey)
        if inner_id is None:
            raise KmeshError(f"slot {outer_key or outer_key_hex} of outer map {oid} is empty")
        value = mgr.lookup_inner_element(inner_id, ikey)
        if value is None:
            raise KmeshError(f"inner map {inner_id} (in slot {outer_key or outer_key_hex}) has no key {inner_key or inner_key_hex}")
        inner = mgr.map(inner_id).info
        shown = _value_json(value, inner.value_size, inner.type in PERCPU_TYPES)
    if as_json:
        print(json.dumps({"outer_map": oid, "inner_map": inner_id, "value": shown, "value_hex": value.hex()}))
    elif isinstance(shown, list):
        say("\n".join(f"cpu{i}: {v}" for i, v in enumerate(shown)))
    else:
        say(shown)


def _pins(root: str) -> dict[int, str]:
    """Kernel map ID -> pin path, for every map pinned under root."""
    from kmesh_apply.kernel.maps import Map

    found: dict[int, str] = {}
    for path in _pinned_paths(root):
        try:
            with Map.open_pinned(path) as m:
                found.setdefault(m.id, path)
        except KmeshError:
            continue
    return found


def _pinned_paths(root: str) -> list[str]:
    """Every pin under root, except kmesh-apply's own records."""
    from kmesh_apply.state import RECORD_NAMES

    return sorted(os.path.join(d, f) for d, _, files in os.walk(root) for f in files
                  if os.path.relpath(os.path.join(d, f), root).split(os.sep)[0] not in RECORD_NAMES)


def _describe(m: Map, pin: str | None, holders: tuple[Program, ...]) -> dict[str, Any]:
    from kmesh_apply.kernel.maps import OUTER_TYPES

    info = m.info
    out: dict[str, Any] = {
        "id": info.id, "type": info.type, "name": info.name, "key_size": info.key_size,
        "value_size": info.value_size, "max_entries": info.max_entries, "flags": list(info.flags),
    }
    if info.type in OUTER_TYPES:
        slots = m.slots()
        out["entries"] = len(slots)
        out["slots"] = {str(int.from_bytes(k, "little")): v for k, v in sorted(slots.items(), key=lambda kv: int.from_bytes(kv[0], "little"))}
    elif m.unreadable():
        out["entries"] = None
        out["unreadable"] = m.unreadable()
    else:
        out["entries"] = len(m.items())
        for what, typ in (("key_type", m.key_type()), ("value_type", m.value_type())):
            if typ is not None and typ.spec() is not None:
                out[what] = typ.spec()
    out["memlock"] = m.memlock()
    out["pinned"] = pin
    out["programs"] = [asdict(p) for p in holders]  # loaded programs holding this very map (not via a slot)
    return out


@map_app.command("info")
def info(map_id: MapId, as_json: Json = False, pin_root: PinRootNoFileOption = None) -> None:
    """Describe a map: type, sizes, flags, entries in use, memory, and an outer map's slots."""
    from kmesh_apply.config.model import resolve_pin_root
    from kmesh_apply.kernel.progs import Program, map_holders

    with _manager(pin_root) as mgr:
        m = mgr.map(_map_id(map_id))
        root = resolve_pin_root(pin_root)
        desc = _describe(m, _pins(root).get(m.id) if os.path.isdir(root) else None, map_holders([m.id]).get(m.id, ()))
    if as_json:
        print(json.dumps(desc))
        return
    for k, v in desc.items():
        if k == "slots":
            say("slots:" + ("" if v else " none"))
            for slot, inner in v.items():
                say(f"  {slot}: inner map {inner}")
        elif k == "flags":
            say(f"flags: {', '.join(v) or 'none'}")
        elif k == "memlock" and v is not None:
            say(f"memlock: {v} bytes")
        elif k == "programs":
            say("held by programs:" + ("" if v else " none"))
            for p in v:
                say(f"  {Program.from_dict(p)}")
        elif v is not None and v != "":
            say(f"{k}: {json.dumps(v) if isinstance(v, (dict, list)) else v}")


@map_app.command("list")
def list_maps(as_json: Json = False, pin_root: PinRootNoFileOption = None) -> None:
    """List the maps pinned under the pin root."""
    from kmesh_apply.config.model import resolve_pin_root
    from kmesh_apply.kernel.maps import Map
    from kmesh_apply.kernel.progs import map_holders

    root = resolve_pin_root(pin_root)
    if not os.path.isdir(root):
        raise KmeshError(f"pin root {root} does not exist (nothing has been pinned there)")
    opened: list[tuple[str, Map | KmeshError]] = []
    for path in _pinned_paths(root):
        try:
            opened.append((path, Map.open_pinned(path)))
        except KmeshError as e:  # a program or link pinned beside the maps: say so, keep listing
            opened.append((path, e))
    holders = map_holders(m.id for _, m in opened if not isinstance(m, KmeshError))  # one walk for every map
    rows: list[dict[str, Any]] = []
    for path, m in opened:
        row: dict[str, Any]
        if isinstance(m, KmeshError):
            row = {"id": None, "type": f"({m.hint or m})" if hasattr(m, "hint") else str(m), "key_size": None,
                   "value_size": None, "max_entries": None, "entries": None, "programs": []}
        else:
            with m:
                row = _describe(m, path, holders.get(m.id, ()))
        row["pin"] = os.path.relpath(path, root)
        rows.append(row)
    if as_json:
        print(json.dumps(rows))
        return
    header: tuple[str, ...] = ("PIN", "ID", "TYPE", "KEY", "VALUE", "MAX", "ENTRIES", "PROGRAMS")
    table: list[tuple[str, ...]] = [header] + [
        tuple("-" if r[k] is None else printable(str(r[k]))
              for k in ("pin", "id", "type", "key_size", "value_size", "max_entries", "entries"))
        + (printable(",".join(f"{p['id']}:{p['name']}" for p in r["programs"])) or "-",)
        for r in rows]
    widths = [max(len(line[i]) for line in table) for i in range(len(header))]
    for line in table:
        say("  ".join(cell.ljust(w) for cell, w in zip(line, widths)).rstrip())


def main() -> None:
    run(app)
