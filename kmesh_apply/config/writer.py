"""YAML text written directly, byte for byte as `dump_yaml` writes it (PyYAML with show's quoting).

Why: `show` of Kmesh's 5,000 services took PyYAML 16 s for 100,000 struct values, and a
million-entry map a minute. Here each key or value type is compiled once into a writer of
whole records: one `struct.Struct` unpack per record, converters only for what is not a
plain little-endian integer (addresses, big-endian integers, names, strings), and one %
template that lays the record out as a flow mapping or sequence. Strings follow the same
rules as `dump_yaml`: quoted when a YAML 1.1 or 1.2 reader would take them for something
else (PyYAML's resolver, and `read_back_as_str`), or when an indicator forbids the plain
style where they stand (inside `{...}` a `:` does, in a block only a `:` at the end).
Strings outside the characters addresses, names and hex digits are made of are asked of
PyYAML itself, once each. `tests/test_show_writer.py` checks on generated types and
bytes that these writers and `dump_yaml` agree.
"""

from __future__ import annotations

import re
import socket
import struct
import sys
import uuid
from functools import cache, lru_cache, partial
from typing import Any, Callable, Iterable, Mapping, Optional, Sequence

from kmesh_apply.config import codecs
from kmesh_apply.ctype import Addr, Array, Bool, Bytes, Chars, CType, CUnion, Enum, Int, Lpm, Raw, Struct
from kmesh_apply.terminal import escape_quoted

# No line is ever folded: one entry, one line (PyYAML folds at its `width`).
WIDTH = sys.maxsize
# A block mapping's key of this many characters or more is written as `? key` (PyYAML counts
# the `!!str` tag it does not write, so a 122-character string is the longest simple key).
_SIMPLE_KEY = 128 - len("!!str")

# Plain-looking strings whose style these rules decide without PyYAML: no spaces, quotes,
# escapes or indicators other than ':', '-' and '.' (addresses, CIDRs, names, hex digits).
_SAFE = re.compile(r"[0-9A-Za-z_./:-]+")
_BOOL = {0: "false", 1: "true"}


# ---------------------------------------------------------------- the reference: PyYAML


class _Flow(dict):
    """A mapping written on one line: struct values and list-form entries read best that way."""


class _FlowList(list):
    """A list written on one line, as an array value: one entry, one line."""


def _flow(value: Any) -> Any:
    return _Flow(value) if isinstance(value, dict) else _FlowList(value) if isinstance(value, list) else value


def _flow_entries(doc: Mapping[str, Any], lines: dict[str, str] | None) -> dict[str, Any]:
    """The document as PyYAML should write it; with `lines`, integer-only entries are left out,
    each in `lines` under the placeholder written in its place (a token no config holds)."""
    out = dict(doc)
    for section in ("maps", "inner_maps", "outer_maps"):
        maps = {}
        for name, m in (doc.get(section) or {}).items():
            m = dict(m)
            entries = m.get("entries")
            if lines is not None and isinstance(entries, dict) and set(map(type, entries)) == {int} and \
                    set(map(type, entries.values())) == {int}:
                token = f"kmesh-apply-entries-{uuid.uuid4().hex}"
                lines[token] = "".join(map("      {}: {}\n".format, entries, entries.values()))
                m["entries"] = token
            elif isinstance(entries, dict):
                m["entries"] = {k: _flow(v) for k, v in entries.items()}
            elif isinstance(entries, list):
                m["entries"] = [_Flow(e) for e in entries]
            maps[name] = m
        if maps:
            out[section] = maps
    return out


# Plain scalars a YAML 1.2 reader (yaml-rs) may take for something other than a string: numbers
# (1e3, 0o17, 1_000, .5, hex digits like 14e00101), null, booleans, dates. PyYAML, which writes
# YAML 1.1, quotes what 1.1 resolves (yes, on, 1:20, ...) but not these. Strings matching this
# are asked of yaml-rs itself; addresses (10.0.0.1, 10.0.0.0/8) are known to stay strings.
_MAYBE_NOT_STR = re.compile(r"[-+.~0-9]|(?i:null|true|false)$")
_ADDRESS = re.compile(r"\d{1,3}(?:\.\d{1,3}){3}(?:/\d{1,3})?|[0-9A-Fa-f:]*:[0-9A-Fa-f:]*(?:/\d{1,3})?")


_HEX_DIGITS = re.compile(r"[0-9][0-9a-fA-F]*")  # bytes[N] values: often a number to a YAML reader


def read_back_as_str(text: str) -> bool:
    import yaml_rs

    if not _MAYBE_NOT_STR.match(text) or _ADDRESS.fullmatch(text):
        return True
    if _HEX_DIGITS.fullmatch(text):
        return False  # quoted without asking: cheaper, and right for every such string
    try:
        return yaml_rs.loads(f"- {text}\n", parse_datetime=True) == [text]
    except yaml_rs.YAMLDecodeError:
        return False


@cache
def _dumper() -> type:
    """PyYAML's SafeDumper with show's rules: every string a YAML 1.1 or 1.2 reader would resolve
    to something else is quoted, `_Flow` and `_FlowList` are written on one line."""
    import yaml

    class Dumper(yaml.SafeDumper):
        pass

    def represent_str(dumper: yaml.SafeDumper, text: str) -> yaml.Node:
        if not text.isprintable():  # line breaks YAML knows (\x85, \u2028) fold in plain or single-quoted text
            style: str | None = '"'
        else:
            style = None if read_back_as_str(text) else "'"
        return dumper.represent_scalar("tag:yaml.org,2002:str", text, style=style)

    Dumper.add_representer(str, represent_str)
    Dumper.add_representer(_Flow, lambda d, v: d.represent_mapping("tag:yaml.org,2002:map", v, flow_style=True))
    Dumper.add_representer(_FlowList, lambda d, v: d.represent_sequence("tag:yaml.org,2002:seq", v, flow_style=True))
    return Dumper


def dump_text(data: Any, flow: bool = False) -> str:
    """`data` as YAML with show's rules, never folded (`flow`: collections on one line); characters a
    terminal acts on that PyYAML leaves raw in double quotes (bidi overrides, separators) escaped."""
    import yaml

    text = yaml.dump(data, Dumper=_dumper(), sort_keys=False, width=WIDTH, allow_unicode=True, default_flow_style=flow)
    return escape_quoted(text, yaml=True)


def dump_yaml(doc: Mapping[str, Any]) -> str:
    """A config document as block YAML that load_config accepts back: every string that a YAML 1.1
    or 1.2 reader would resolve to something else is quoted, and each entry is one line (struct
    and array values in flow style). Entries that are integers on both sides, the bulk of a large
    map, are written as lines directly; everything else goes through PyYAML. This is the reference
    `show`'s own writer (`show.write_yaml`, `config.writer`) is tested against."""
    lines: dict[str, str] = {}
    text = dump_text(_flow_entries(doc, lines))
    if lines:  # one pass puts every map's lines in place of its placeholder
        text, found = _PLACEHOLDER.subn(lambda m: "    entries:\n" + lines[m.group(1)], text)
        if found != len(lines):  # not where a map's entries go: let PyYAML write them
            return dump_text(_flow_entries(doc, None))
    return text


_PLACEHOLDER = re.compile(r"^    entries: (kmesh-apply-entries-[0-9a-f]{32})\n", re.M)


# ---------------------------------------------------------------- strings, directly


@cache
def _resolver() -> Any:
    import yaml

    return yaml.resolver.Resolver()


def _resolves_to_str(text: str) -> bool:
    """Whether PyYAML's (YAML 1.1) resolver reads the plain text as a string: it only tries
    patterns for texts starting with one of a few characters (digits, signs, y, n, t, f, o...)."""
    import yaml

    resolver = _resolver()
    if text[:1] not in resolver.yaml_implicit_resolvers:
        return True
    return resolver.resolve(yaml.ScalarNode, text, (True, False)) == "tag:yaml.org,2002:str"


def scalar(text: str, flow: bool = False) -> str:
    """A string as `dump_yaml` writes it: in a block (a mapping's key or value) or in flow
    context (inside `{...}` or `[...]`)."""
    if _SAFE.fullmatch(text):
        if not (read_back_as_str(text) and _resolves_to_str(text)):
            return f"'{text}'"
        if text.startswith(("---", "...")) or text == "-":
            return f"'{text}'"
        if ":" in text and (flow or text.endswith(":")):
            return f"'{text}'"
        return text
    return _pyyaml_scalar(text, flow)


@lru_cache(maxsize=4096)
def _pyyaml_scalar(text: str, flow: bool) -> str:
    """What PyYAML writes for any other string (spaces, quotes, escapes): asked once per string."""
    if flow:
        return dump_text([text], flow=True)[1:-2]  # "[text]\n"
    return dump_text({"k": text})[3:-1]  # "k: text\n"


def key_scalar(text: str) -> str | None:
    """A string as a block mapping's key, or None when PyYAML writes it as a complex key (`? key`)."""
    if _SAFE.fullmatch(text) and len(text) < _SIMPLE_KEY:
        return scalar(text)
    return _pyyaml_key(text)


@lru_cache(maxsize=1024)
def _pyyaml_key(text: str) -> str | None:
    out = dump_text({text: 0})
    return None if out.startswith("? ") else out[:-len(": 0\n")]


def python_text(value: Any, flow: bool) -> str:
    """A decoded value (ints, bools, None, strings, lists and dicts of them) as `dump_yaml` writes
    an entry's value: a scalar in its context, collections in flow style."""
    if value is True:
        return "true"
    if value is False:
        return "false"
    if value is None:
        return "null"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        return scalar(value, flow)
    if isinstance(value, list):
        return "[" + ", ".join(python_text(v, True) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{_flow_key(k)}: {python_text(v, True)}" for k, v in value.items()) + "}"
    raise TypeError(f"no YAML text for {type(value).__name__}")


def _flow_key(key: Any) -> str:
    return python_text(key, True)


# ---------------------------------------------------------------- records of a type


Column = Callable[[Sequence[Any]], Iterable[Any]]  # one item of every record -> what the template takes


def _each(f: Callable[[Any], Any]) -> Column:
    return lambda column: map(f, column)


def _named_or_number(names: dict[int, str]) -> Column:
    """Enum and bool items: the name where there is one, else the number (in C: dict.get with a default)."""
    return lambda column: map(names.get, column, column)


class _Layout:
    """A type flattened into struct items: a format, converters for the items not written as they
    unpack (each converts a whole column of them), and the % template the items fill in."""

    def __init__(self) -> None:
        self.codes: list[str] = []
        self.convs: list[tuple[int, Column]] = []
        self.items = 0

    def item(self, code: str, conv: Column | None = None) -> str:
        if conv is not None:
            self.convs.append((self.items, conv))
        self.codes.append(code)
        self.items += 1
        return "%s"

    def pad(self, n: int) -> None:
        if n:
            self.codes.append(f"{n}x")


def _int_code(typ: Int | Raw) -> str:
    code = {1: "b", 2: "h", 4: "i", 8: "q"}[typ.size]
    return code if isinstance(typ, Int) and typ.signed else code.upper()


def _big_endian(typ: Int) -> Callable[[bytes], int]:
    return partial(int.from_bytes, byteorder="big", signed=typ.signed)


def _template(typ: CType, flow: bool, out: _Layout) -> str:
    """`typ`'s items added to `out`; returns its text with one %s per item."""
    if isinstance(typ, (Int, Raw)) and typ.size in (1, 2, 4, 8) and not (isinstance(typ, Int) and typ.big_endian):
        return out.item(_int_code(typ))
    if isinstance(typ, Int):
        return out.item(f"{typ.size}s", _each(_big_endian(typ)))
    if isinstance(typ, Bool):
        return out.item("B", _named_or_number(_BOOL))  # a byte other than 0 or 1: the number
    if isinstance(typ, Enum):
        names = {n: scalar(name, flow) for name, n in reversed(typ.values)}  # the first name of a number
        return out.item(_int_code(typ.base), _named_or_number(names))  # a host-order base (ctype)
    if isinstance(typ, Addr) and typ.family == "ipv4":
        return out.item("4s", _each(socket.inet_ntoa))  # digits and dots: always plain
    if isinstance(typ, Array):
        return "[" + ", ".join([_template(typ.elem, True, out) for _ in range(typ.length)]) + "]"
    if isinstance(typ, Struct) and not any(f.bits for f in typ.fields):
        parts, end = [], 0
        for f in typ.fields:
            out.pad(f.offset - end)
            parts.append(f"{_flow_key(f.name).replace('%', '%%')}: {_template(f.type, True, out)}")
            end = f.offset + f.type.size
        out.pad(typ.size - end)
        return "{" + ", ".join(parts) + "}"
    # Strings, and values whose shape depends on their bytes (unions, bitfields): decoded, then written.
    decode = codecs._decoder(typ)
    if isinstance(typ, (Addr, Chars, Bytes, Raw, Lpm)):
        return out.item(f"{typ.size}s", _each(lambda b: scalar(decode(b), flow)))
    return out.item(f"{typ.size}s", _each(lambda b: python_text(decode(b), flow)))


# Texts of the records at these byte offsets of a buffer (None: every record, in order).
ColumnWriter = Callable[[Any, Optional[Iterable[int]]], list[str]]


@lru_cache(maxsize=1024)
def column_writer(typ: CType, flow: bool = False) -> ColumnWriter:
    """A function writing records of `typ` as `dump_yaml` writes their decoded values: scalars in
    their context (`flow`: inside a flow collection), structs, unions and arrays as flow
    collections. The items of all records are unpacked, converted a column at a time and laid
    out by one % template, so a record costs a few C calls and no Python code of its own."""
    layout = _Layout()
    template = _template(typ, flow, layout)
    record = struct.Struct("<" + "".join(layout.codes))
    convs, fill = layout.convs, template.__mod__

    def write(buf: Any, offsets: Iterable[int] | None = None) -> list[str]:
        unpack = record.unpack_from
        rows = record.iter_unpack(buf) if offsets is None else [unpack(buf, o) for o in offsets]
        if not convs:
            return list(map(fill, rows))
        columns: list[Any] = list(zip(*rows))
        if not columns:
            return []
        for i, conv in convs:
            columns[i] = conv(columns[i])
        return list(map(fill, zip(*columns)))
    return write


def per_cpu_writer(typ: CType, ncpus: int, flow: bool = False) -> ColumnWriter:
    """Per-CPU value buffers (one padded value per CPU) as `dump_yaml` writes the decoded values:
    one value when every CPU holds the same bytes, else `{per_cpu: [...]}`."""
    stride, size = codecs.per_cpu_stride(typ), typ.size
    one, each = column_writer(typ, flow), column_writer(typ, True)

    def write(buf: Any, offsets: Iterable[int] | None = None) -> list[str]:
        out = []
        for off in range(0, len(buf), stride * ncpus) if offsets is None else offsets:
            first = buf[off:off + size]
            if all(buf[off + i * stride:off + i * stride + size] == first for i in range(1, ncpus)):
                out += one(buf, (off,))
            else:
                out.append("{per_cpu: [" + ", ".join(each(buf, range(off, off + stride * ncpus, stride))) + "]}")
        return out
    return write


def is_collection(typ: CType) -> bool:
    """Whether values of `typ` are written as collections (mappings and lists), not scalars."""
    return isinstance(typ, (Array, Struct, CUnion))


_DEFINITIONS: dict[tuple[str, int], str] = {}


def definition(doc: Mapping[str, Any], indent: int) -> str:
    """A small mapping (a map's type, key, value...) as `dump_yaml` writes it at `indent` spaces;
    the same few definitions recur across thousands of maps, so each is written once."""
    known = (repr(doc), indent)
    text = _DEFINITIONS.get(known)
    if text is None:
        pad = " " * indent
        text = _DEFINITIONS[known] = "".join(pad + line for line in dump_text(doc).splitlines(keepends=True))
    return text
