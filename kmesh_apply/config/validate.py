"""From parsed documents to a `Config`: the JSON Schema for structure, then the semantic
rules the schema cannot say (types, sizes, entries, slots, the kernel's template rules).

Every problem of every file is collected before anything is reported, and each
names its map and entry; lines are filled in afterwards (see loader.resolve).
"""

from __future__ import annotations

import difflib
import hashlib
import json
import re
from collections.abc import Mapping, MutableMapping
from dataclasses import replace
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from kmesh_apply.capacity import offline_problem
from kmesh_apply.config import codecs, maptypes, references
from kmesh_apply.config.blocks import BlocksRefused, Partial
from kmesh_apply.config.chunks import CACHED_SECTIONS
from kmesh_apply.config.loader import INLINE, Problem, Source, parse_text
from kmesh_apply.config.maptypes import CPUS, DATA, LIST, NONE, SET
from kmesh_apply.config.model import (
    ARRAY_TYPES,
    INNER_SECTION,
    OUTER_TYPES,
    OUTER_ALIASES,
    PERCPU_TYPES,
    PLAIN_SECTION,
    Config,
    InnerMapSpec,
    Location,
    Management,
    MigrateSpec,
    OuterMapSpec,
    pin_root_problem,
)
from kmesh_apply.ctype import (CType, Formatted, Int, Lpm, Raw, TypeSpecError, apply_format, format_path, missing_step,
                               parse_type, records, spec_text)
from kmesh_apply.entries import Entries
from kmesh_apply.errors import MAP_NAME
from kmesh_apply.state import RESERVED_NAMES
from kmesh_apply.terminal import label, shown
from kmesh_apply.wording import a, count, verb

if TYPE_CHECKING:
    from kmesh_apply.config.cache import Cache
    from kmesh_apply.kernel.btf import NamedTypes

SCHEMA_FILE = Path(__file__).with_name("config-v1.schema.json")
# The config's sections of maps, in the order they are checked (outer maps need the others).
MAP_SECTIONS = (INNER_SECTION, PLAIN_SECTION, "outer_maps")
MAX_PROBLEMS_PER_MAP = 20
# A file emptied or truncated by mistake (`: > file`, a half-written save, a ConfigMap key left
# empty) reads as "no maps": refused, so that it never destroys every map it named.
EMPTY_FILE = ("the file holds no configuration (nothing but comments, blank lines or null): refused, so that a "
              "file emptied by mistake never destroys maps; to mean no maps, write `inner_maps: {}`")
# An object key of a JSON config that spells a decimal integer is that integer where the key type is numeric.
_DECIMAL = re.compile(r"-?[0-9]{1,30}").fullmatch  # longer: no key type takes it; left as text for its codec to refuse
_DECIMAL_CHARS = re.compile(r"[-0-9\n]*").fullmatch


def _numeric(key: CType) -> bool:
    """Whether the key type takes integers: u8..i64, be16..be64, and key_size 1, 2, 4 or 8 (or a
    field formatted as one of those)."""
    if isinstance(key, Formatted):
        return _numeric(key.shown)
    return isinstance(key, Int) or (isinstance(key, Raw) and key.size in (1, 2, 4, 8))


def _integers(keys: list[Any]) -> list[Any]:
    """Each key that spells a decimal integer as that integer; the others as they are. The usual JSON
    map, all decimal text, takes one int() per key after one regex over them all has ruled out what
    int() alone would also take (' 3', '+3', '3_0'): 1 us a key less than matching each."""
    try:
        if _DECIMAL_CHARS("\n".join(keys)):
            return list(map(int, keys))
    except (TypeError, ValueError):  # a key that is not text (a mapping handed over), or '3-', '', '--1'
        pass
    return [int(k) if isinstance(k, str) and _DECIMAL(k) else k for k in keys]
_SPEC_WORDS = ("struct", "union", "array", "length", "enum", "values", "packed", "lpm")


@cache
def schema() -> dict[str, Any]:
    return json.loads(SCHEMA_FILE.read_text())


def schema_problems(src: Source, known_valid: set[bytes] | None = None) -> list[Problem]:
    """Structure problems, by the JSON Schema.

    Entries are left to the type-aware checks (jsonschema per entry is too slow), and
    maps with identical definitions (thousands, at Kmesh scale) are validated once:
    their problems are the same, reported for each name. `known_valid` holds digests
    of the documents' shapes (their definitions without names or entries) that passed
    before; a shape found there is not validated again, and one that passes is added.
    """
    data = src.data
    if data is None:
        return [Problem(src.file, (), EMPTY_FILE, kind="holds no configuration")]
    if not isinstance(data, dict):
        return [Problem(src.file, (), "a config file is a mapping with pin_root, inner_maps and outer_maps, "
                        f"got {type(data).__name__}", kind="not a mapping")]
    out = []
    shallow = {k: v for k, v in data.items() if k not in MAP_SECTIONS or not isinstance(v, dict)}
    for path, reason in _out_of_bounds(shallow):
        out.append(Problem(src.file, path, reason, kind="beyond the tool's limits"))
    if out:
        return out  # nothing below may walk it
    shapes: dict[str, list[str]] = {}
    sharing: dict[tuple[str, Any], list[Any]] = {}  # (section, representative name) -> every name with that definition
    for section in MAP_SECTIONS:
        maps = data.get(section)
        if not isinstance(maps, dict):
            continue
        seen: dict[str, Any] = {}
        for name, m in maps.items():
            if isinstance(name, str) and not MAP_NAME.fullmatch(name):
                out.append(Problem(src.file, (section, name), f"{shown(name)} is not a valid map name: use letters, digits, "
                                   "'_' and '-' (bpffs refuses dots; no '/')", label(name), kind="invalid map name"))
            d = {k: v for k, v in m.items() if k != "entries"} if isinstance(m, dict) else m
            bad = _out_of_bounds(d)
            for path, reason in bad:
                out.append(Problem(src.file, (section, name, *path), reason, label(name), kind="beyond the tool's limits"))
            if not bad:
                rep = seen.setdefault(_shape(d), name)
                sharing.setdefault((section, rep), []).append(name)
        shallow[section] = {rep: {k: v for k, v in maps[rep].items() if k != "entries"} if isinstance(maps[rep], dict) else maps[rep]
                            for rep in seen.values()}
        # The document's shape includes the maps taken from the cache (they are in the file), so a
        # run that reuses more or fewer of them still recognises a shape validated before.
        reused = {_shape(src.reused[n][0]) for n in src.order(section) if n in src.reused}
        shapes[section] = sorted(set(seen) | reused)
    shape = _shape_digest(shallow, shapes)
    if known_valid is not None and shape in known_valid:
        return out
    found = len(out)
    errors = list(_validator().iter_errors(shallow))
    misspelt = _misspelt(errors)
    for err in errors:
        if _explained_by_a_misspelling(err, misspelt):
            continue  # `max_entires` is reported once, as an unknown key with a suggestion, not also as missing
        path = tuple(err.absolute_path)
        if "propertyNames" in err.schema_path:
            continue  # names are checked above, for every map
        if err.validator == "additionalProperties" and isinstance(err.instance, dict):
            extra = [k for k in err.instance if k not in err.schema.get("properties", {})]
            path += tuple(extra[:1])  # point at the unknown key itself
        if len(path) > 2 and path[-1] in ("key", "value") and err.validator != "additionalProperties":
            continue  # type specs get parse_type's clearer message (not a map named key or value)
        names = sharing.get(path[:2], [path[1]]) if len(path) > 1 else [""]
        for name in names:
            out.append(Problem(src.file, (*path[:1], name, *path[2:]) if name != "" else path, _schema_message(err),
                               label(name), kind=_schema_kind(err)))
    if known_valid is not None and shape is not None and len(out) == found:
        known_valid.add(shape)
    return out


# Containers nested in each other outside `entries` (a map definition, its type specs, the top level):
# a struct nested in a struct takes three. Walks of the definitions (the schema, shapes) stay well
# inside Python's recursion limit. Entries are walked along their map's type (ctype.MAX_TYPE_DEPTH).
MAX_NESTING = 128
# Values in one definition (a struct's fields and a type's enum names included): a tiny file of
# aliases could otherwise hand the schema a million flags.
MAX_DEFINITION_VALUES = 10_000
# Integers in definitions: far beyond any field's range, yet short enough to write in a message.
MAX_INT_BITS = 256


def _out_of_bounds(doc: Any) -> list[tuple[tuple[Any, ...], str]]:
    """(path, reason) of the first part of a definition no check may walk: nested deeper than
    MAX_NESTING, more than MAX_DEFINITION_VALUES values, or an integer too long to write (Python
    refuses to convert one of 4,300 digits)."""
    stack: list[tuple[Any, tuple[Any, ...]]] = [(doc, ())]
    walked = 0
    while stack:
        node, path = stack.pop()
        walked += 1
        if walked > MAX_DEFINITION_VALUES:
            return [((), f"holds more than {MAX_DEFINITION_VALUES} values outside its entries: a definition needs "
                         "far fewer (aliases expanding?)")]
        if len(path) > MAX_NESTING:
            return [(path[:MAX_NESTING], f"nested more than {MAX_NESTING} levels deep: a definition needs far fewer")]
        if isinstance(node, dict):
            stack.extend((v, (*path, k)) for k, v in node.items())
            stack.extend((k, (*path, k)) for k in node if isinstance(k, int))
        elif isinstance(node, list):
            stack.extend((v, (*path, i)) for i, v in enumerate(node))
        elif isinstance(node, int) and node.bit_length() > MAX_INT_BITS:
            return [(path, f"an integer of {node.bit_length()} bits: no field takes more than 64")]
    return []


@cache
def _validator() -> Any:
    """The schema's validator, with `pattern` as JSON Schema means it (ECMA-262: `$` is the end of the
    text; Python's `$` also matches before a final newline, which would let 'name\\n' through)."""
    import jsonschema
    from jsonschema import Draft202012Validator

    def pattern(validator: Any, pattern: str, instance: Any, schema: Any) -> Any:
        if validator.is_type(instance, "string"):
            m = re.search(pattern, instance)
            if m is None or (pattern.endswith("$") and m.end() != len(instance)):
                yield jsonschema.ValidationError(f"{shown(instance)} does not match {pattern!r}")

    return jsonschema.validators.extend(Draft202012Validator, {"pattern": pattern})(schema())


def _shape(definition: Any) -> str:
    """A map definition as text, equal for equal definitions (keys that JSON cannot sort keep their order)."""
    try:
        return json.dumps(definition, sort_keys=True, default=repr)
    except TypeError:
        return repr(definition)


def _shape_digest(shallow: dict[str, Any], shapes: dict[str, list[str]]) -> bytes | None:
    """What the schema's verdict on a document depends on: its top level and its distinct map
    definitions (None for a top level JSON cannot sort, e.g. keys that are not strings)."""
    top = {k: v for k, v in shallow.items() if k not in shapes}
    try:
        text = json.dumps([top, shapes], sort_keys=True, default=repr)
    except (TypeError, ValueError):
        return None
    return hashlib.blake2b(text.encode(), digest_size=16).digest()


def _misspelt(errors: list[Any]) -> dict[tuple[Any, ...], dict[str, str]]:
    """For each mapping with unknown keys: {unknown key: the allowed key it is a misspelling of}."""
    out: dict[tuple[Any, ...], dict[str, str]] = {}
    for err in errors:
        if err.validator == "additionalProperties" and isinstance(err.instance, dict):
            allowed = [k for k in err.schema.get("properties", {}) if k not in err.instance]
            for key in err.instance:
                if isinstance(key, str) and key not in err.schema.get("properties", {}):
                    close = difflib.get_close_matches(key, allowed, n=1, cutoff=0.75)
                    if close:
                        out.setdefault(tuple(err.absolute_path), {})[key] = close[0]
    return out


def _missing(err: Any) -> set[str]:
    """The keys a `required` (or an anyOf of `required`s, the map's first choice) finds missing."""
    if err.validator == "required":
        return {k for k in err.validator_value if k not in err.instance}
    if err.validator == "anyOf" and isinstance(err.instance, dict) and err.validator_value and \
            set(err.validator_value[0]) == {"required"}:
        return {k for k in err.validator_value[0]["required"] if k not in err.instance}
    return set()


def _explained_by_a_misspelling(err: Any, misspelt: dict[tuple[Any, ...], dict[str, str]]) -> bool:
    missing = _missing(err)
    return bool(missing) and missing <= set(misspelt.get(tuple(err.absolute_path), {}).values())


_SCHEMA_KINDS = {"additionalProperties": "unknown key", "required": "missing key", "type": "wrong type",
                 "enum": "not one of the allowed values", "pattern": "invalid name", "minimum": "out of range",
                 "maximum": "out of range", "minLength": "empty", "minItems": "too few items",
                 "uniqueItems": "an item is repeated", "minProperties": "too few keys", "maxProperties": "too many keys"}


@cache
def _schema_words() -> frozenset[str]:
    """Every property name the schema knows: the only config keys a summary may quote."""
    words: set[str] = set()
    stack: list[Any] = [schema()]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            words.update(node.get("properties", {}) if isinstance(node.get("properties"), dict) else ())
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)
    return frozenset(words)


def _schema_kind(err: Any) -> str:
    """What is wrong, quoting no value: the field (a word of the schema) and the rule it breaks."""
    what = _SCHEMA_KINDS.get(err.validator, "not valid by the schema")
    field = next((p for p in reversed(err.absolute_path) if isinstance(p, str) and p in _schema_words()), None)
    return f"{field}: {what}" if field and err.validator != "additionalProperties" else what


def _schema_message(err: Any) -> str:
    where = "/".join(label(p) for p in err.absolute_path) or "the top level"
    if len(err.absolute_path) == 2 and err.absolute_path[0] in MAP_SECTIONS:
        where = "the map"
    if err.validator == "additionalProperties":
        allowed = sorted(err.schema.get("properties", {}))
        extra = sorted((k for k in err.instance if k not in allowed), key=label) if isinstance(err.instance, dict) else []
        guess = _misspelt([err]).get(tuple(err.absolute_path), {})
        hint = "".join(f" (did you mean '{guess[e]}'?)" for e in extra[:1] if e in guess)
        more = f" and {len(extra) - 3} more" if len(extra) > 3 else ""
        return (f"unknown key {', '.join(shown(e) for e in extra[:3])}{more} in {where}{hint}: "
                f"expected one of {', '.join(allowed)}")
    if err.validator == "anyOf" and _missing(err):
        choices = [" and ".join(branch["required"]) for branch in err.validator_value]
        return f"{where} needs {' (or '.join(choices)}{')' * (len(choices) - 1)}"
    if err.validator == "pattern" and err.validator_value == "^[A-Za-z0-9_-]+$":
        return f"{shown(err.instance)} is not a valid map name: use letters, digits, '_' and '-' (bpffs refuses dots; no '/')"
    if err.validator == "propertyNames":
        return f"{shown(err.instance)} is not a valid map name"
    if err.validator == "enum":
        return f"{where}: {shown(err.instance)} is not one of {', '.join(map(str, err.validator_value))}"
    if err.validator == "type":
        return f"{where}: expected {' or '.join(map(a, _list(err.validator_value)))}, got {shown(err.instance)}"
    return f"{where}: {label(err.message, 200)}"


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


class _MapChecker:
    """Checks and builds one map, collecting problems with their paths."""

    def __init__(self, src: Source, section: str, name: str, raw: dict[str, Any], problems: list[Problem],
                 named: Mapping[str, CType] | None = None):
        self.src, self.section, self.name, self.raw, self.problems = src, section, name, raw, problems
        self.base = (section, name)
        self.distinct_keys = False  # entries given as a mapping, see columns()
        self.named = named

    def problem(self, message: str, *path: Any, entry: str = "", kind: str = "") -> None:
        """`kind`: what is wrong, quoting no value (see Diagnostic.kind); by default the field it is in
        (the first element of `path`, always a word of the config's own)."""
        kind = kind or (f"{path[0]}: invalid" if path and isinstance(path[0], str) else "invalid map definition")
        self.problems.append(Problem(self.src.file, self.base + path, message, self.name, entry, kind))

    def ctype(self, which: str) -> CType | None:
        has_type, has_size = which in self.raw, f"{which}_size" in self.raw
        if has_type == has_size:
            self.problem(f"give exactly one of '{which}' (a type) and '{which}_size' (raw bytes)", which if has_type else ())
            return None
        if has_size:
            return Raw(self.raw[f"{which}_size"])
        try:
            return parse_type(self.raw[which], self.named)
        except TypeSpecError as e:
            fields = [p for p in e.path if isinstance(p, str) and p not in _SPEC_WORDS]
            where = f"{which} field '{'.'.join(fields)}'" if fields else which
            self.problem(f"{where}: {e}", which, *e.path)
            return None

    def management(self) -> Management:
        """`adopt:` and `manage_entries:` (their types are the schema's business)."""
        manage = Management(self.raw.get("adopt", False), self.raw.get("manage_entries", "all"))
        if manage.entries == "none" and self.raw.get("entries") is not None:
            self.problem("manage_entries: none declares only the map, its entries belong to someone else: remove "
                         "entries:, or use manage_entries: listed to manage the entries given here", "entries")
        return manage

    def formats(self, **types: CType | None) -> dict[str, CType | None]:
        """The key (and value) with the map's `formats:` applied, each path to whichever it leads into
        (both, if both have it); a path that leads nowhere, or a format that cannot read its field, is
        a problem. A type that did not parse (None, reported already) is passed over."""
        for path, spec in (self.raw.get("formats") or {}).items():
            try:
                steps, shown = format_path(path), parse_type(spec, self.named)
            except TypeSpecError as e:
                self.problem(f"formats: {path}: {e}", "formats", path)
                continue
            found = False
            for which, typ in types.items():
                if typ is None:
                    continue
                try:
                    types[which] = apply_format(typ, steps, shown)
                except KeyError:
                    continue
                except TypeSpecError as e:
                    self.problem(f"formats: {path} in the {which}: {e}", "formats", path)
                found = True
            if not found and None not in types.values():
                self.problem("formats: " + "; ".join(missing_step(steps[0], f"the {which}", t)
                                                     for which, t in types.items() if t is not None), "formats", path)
        return types

    def sized(self, which: str, has: bool) -> CType | None:
        """`ctype`, for a map type that has a key (or value); Raw(0) for one that has none, unless the
        declaration gives one anyway (the type's rules then say it has none)."""
        if has or which in self.raw or f"{which}_size" in self.raw:
            return self.ctype(which)
        return Raw(0)

    def other_entries(self, kind: maptypes.MapKind, key: CType, value: CType, max_entries: int,
                      ncpus: Callable[[], int]) -> MutableMapping[bytes, Any]:
        """The entries of a map whose entries are not key -> value data (see config.maptypes): a queue's
        values by position, a bloom filter's by value, references as `Target`s, none for the rest."""
        given = self.raw.get("entries")
        if kind.entries == NONE:
            if given:
                self.problem(f"the entries of {a(self.raw['type'])} map are {kind.holds}: declare the map "
                             "without entries", "entries")
            return {}
        if kind.entries in (LIST, SET):
            if given is None:
                return {}
            if not isinstance(given, list):
                self.problem(f"{a(self.raw['type'])} map's entries are a list of values"
                             f"{', in the order they are pushed' if kind.entries == LIST else ''}", "entries")
                return {}
            if len(given) > max_entries:
                self.problem(f"{len(given)} values do not fit max_entries {max_entries}", "entries")
                return {}
            encoded = self.encode_all(list(range(len(given))), given, lambda i: ("entries", i), Raw(4), value)
            if kind.entries == LIST or not encoded:
                return Entries.of(encoded, 4, value.size)
            values = list(encoded.values())
            twice = next((i for i, v in enumerate(values) if v in values[:i]), None)
            if twice is not None:
                self.problem(f"value {given[twice]!r} is given twice", "entries", twice, entry=f"#{twice}")
                return {}
            return Entries.of(dict(zip(values, values)), value.size, value.size)
        keys, values, path = self.columns(key)
        if len(keys) > max_entries:
            self.problem(f"{len(keys)} entries do not fit max_entries {max_entries}", "entries")
            return {}
        out = self.encode_all(keys, values, path, key, None, references.parser(kind.entries, value.size))
        if self.raw["type"] in maptypes.INDEXED:
            self.check_indexes(out, keys, path, max_entries, "index")
        if kind.entries == CPUS:
            self.check_indexes(out, keys, path, ncpus(), "CPU")
        return out

    def migration(self, key: CType, value: CType) -> MigrateSpec | None:
        """`migrate:`: the old types (named ones from `migrate.btf` only), and paths of `defaults` and
        `renamed` that name fields of the new key or value; with both old types given, the whole
        conversion is compiled now, so a layout that cannot convert is reported before any plan."""
        raw = self.raw.get("migrate")
        if raw is None:
            return None
        before = len(self.problems)
        source = raw.get("from")
        if source == self.name:
            self.problem("migrate.from names this map itself: give the name the map had before", "migrate", "from")
        elif source in RESERVED_NAMES:
            self.problem(f"migrate.from: '{source}' is reserved for kmesh-apply's own use", "migrate", "from")
        old: dict[str, CType | None] = {"key": None, "value": None}
        with _migration_types(self, raw.get("btf") or []) as named:
            for which in old:
                if which in raw:
                    try:
                        old[which] = parse_type(raw[which], named)
                    except TypeSpecError as e:
                        where = "" if named else " (named C types need their files under migrate.btf)"
                        self.problem(f"migrate.{which}: {e}{where}", "migrate", which, *e.path)
        spec = MigrateSpec(source, old["key"], old["value"], raw.get("defaults") or {}, raw.get("renamed") or {})
        from kmesh_apply.convert import LayoutError, conversion, split_paths

        for what, mapping in (("defaults", spec.defaults), ("renamed", spec.renamed)):
            try:
                split_paths(mapping, key, value, f"migrate.{what}")
            except LayoutError as e:
                self.problem(str(e), "migrate", what)
        if len(self.problems) == before and old["key"] is not None and old["value"] is not None:
            try:
                conversion(old["key"], key, old["value"], value, spec.defaults, spec.renamed)
            except LayoutError as e:
                self.problem(f"migrate: {e}", "migrate")
        return spec if len(self.problems) == before else None

    def columns(self, key: CType) -> tuple[list[Any], list[Any], Callable[[int], tuple[Any, ...]]]:
        """Entries as a key column, a value column and where entry i was written, whether given
        as a mapping or as a list of {key, value} (columns, not rows: a million tuples cost seconds)."""
        entries = self.raw.get("entries")
        if entries is None:
            return [], [], lambda i: ("entries",)
        if self.src.owned:
            del self.raw["entries"]  # the columns hold what is needed: a million entries' table is 40 MB
        if isinstance(entries, dict):
            keys = list(entries)
            if self.src.text_keys and _numeric(key):
                keys = _integers(keys)  # "3" and "03" are one key now: leave them to the duplicate check
            else:
                self.distinct_keys = True  # a mapping's keys are distinct (the parser refuses repeats)
            return keys, list(entries.values()), lambda i: ("entries", keys[i])
        keys, values, where = [], [], []
        for i, item in enumerate(entries):
            if not isinstance(item, dict) or set(item) != {"key", "value"}:
                self.problem("a list entry is a mapping with exactly 'key' and 'value'", "entries", i, entry=f"#{i}")
                continue
            keys.append(item["key"])
            values.append(item["value"])
            where.append(i)
        return keys, values, lambda i: ("entries", where[i])

    def encode_all(self, keys: list[Any], values: list[Any], path: Callable[[int], tuple[Any, ...]], key: CType,
                   value: CType | None, value_encoder: Callable[[Any], Any] | None = None) -> MutableMapping[bytes, Any]:
        """Encode keys and values by whole columns (codecs.encode_column) when every one is in its
        plain form, straight into packed `Entries`; otherwise entry by entry, reporting every bad
        entry (up to a limit). `value_encoder` overrides `value`'s codec."""
        key_blob = codecs.encode_column(key, keys)
        value_blob = codecs.encode_column(value, values) if value is not None and value_encoder is None else None
        enc_keys: list[bytes] | None = None
        out: MutableMapping[bytes, Any]
        if key_blob is not None and value_blob is not None:
            out = Entries(key.size, value.size, key_blob, value_blob)  # type: ignore[union-attr]
            # Distinct integers of a mapping encode to distinct keys; anything else is counted.
            plain_ints = isinstance(key, (Int, Raw)) and key.size in (1, 2, 4, 8)  # else hex strings may repeat a key
            unique = len(keys) if self.distinct_keys and plain_ints else len(set(out))
        else:
            key_enc = codecs.encoder(key)
            val_enc = value_encoder or codecs.encoder(value)  # type: ignore[arg-type]
            enc_keys, enc_vals, reported = [], [], 0
            for i, (k, v) in enumerate(zip(keys, values)):
                try:
                    enc_keys.append(key_enc(k))
                    enc_vals.append(val_enc(v))
                except codecs.CodecError as e:
                    what = "value" if len(enc_keys) > len(enc_vals) else "key"
                    del enc_keys[len(enc_vals):]
                    reported += self._entry_problem(reported, f"{what}: {e}", path(i), k,
                                                    f"entries: a {what} does not fit its type")
            if reported:
                return {}
            out = dict(zip(enc_keys, enc_vals))
            unique = len(out)
        if unique != len(keys):
            seen: set[bytes] = set()
            for i, ek in enumerate(enc_keys if enc_keys is not None else records(key_blob, key.size)):  # type: ignore[arg-type]
                if ek in seen:
                    self.problem(f"key {label(keys[i])} is given twice (after encoding)", *path(i), entry=label(keys[i]))
                    break
                seen.add(ek)
            return {}
        return out

    def check_indexes(self, encoded: Mapping[bytes, Any], keys: list[Any], path: Callable[[int], tuple[Any, ...]],
                      max_entries: int, what: str) -> None:
        """Array keys are indexes below max_entries (encoded keys keep the order of `keys`)."""
        if len(encoded) != len(keys):
            return  # duplicates were reported; positions no longer line up
        for i, ek in enumerate(encoded):
            if int.from_bytes(ek, "little") >= max_entries:
                self.problem(f"{what} {label(keys[i])} is out of range: max_entries is {max_entries} "
                             f"(indexes 0..{max_entries - 1})", *path(i), entry=label(keys[i]))
                return

    def _entry_problem(self, reported: int, message: str, path: tuple[Any, ...], key: Any, kind: str) -> int:
        if reported < MAX_PROBLEMS_PER_MAP:
            self.problem(message, *path, entry=label(key), kind=kind)
        elif reported == MAX_PROBLEMS_PER_MAP:
            self.problem("more bad entries follow; fix the ones above first", "entries")
        return 1


def check_inner(src: Source, name: str, raw: dict[str, Any], problems: list[Problem], ncpus: Callable[[], int],
                cached: Entries | None = None, partial: Partial | None = None,
                named: Mapping[str, CType] | None = None, section: str = INNER_SECTION) -> InnerMapSpec | None:
    """An inner or plain map (`section`) from its definition; `cached` holds its entries already
    encoded (see config.cache), `partial` assembles them from blocks (config.blocks; raises
    BlocksRefused when it cannot); `named`: the C types of the config's BTF files."""
    c = _MapChecker(src, section, name, raw, problems, named)
    before = len(problems)
    type_ = raw["type"]
    if type_ in maptypes.REFUSED:
        c.problem(f"{type_} cannot be declared: {maptypes.REFUSED[type_]}", "type")
        return None
    kind = maptypes.kind(type_)
    typed = c.formats(key=c.sized("key", kind.key != "none"), value=c.sized("value", kind.value != "none"))
    key, value = typed["key"], typed["value"]
    flags = tuple(sorted(raw.get("flags") or ()))
    manage = c.management()
    if kind.entries == NONE and manage.entries != "none":
        if "manage_entries" in raw:
            c.problem(f"the entries of {a(type_)} map are {kind.holds}: its manage_entries is none", "manage_entries")
        manage = replace(manage, entries="none")
    migrate = c.migration(key, value) if key is not None and value is not None else None
    max_entries = raw["max_entries"]
    given = {which: t.size if t is not None and (which in raw or f"{which}_size" in raw) else None
             for which, t in (("key", key), ("value", value))}
    for message, about in maptypes.rule_problems(type_, given["key"], given["value"], max_entries, flags):
        c.problem(message, next((k for k in (about, f"{about}_size") if k in raw), "type"))
    if type_ == "lpm_trie" and key is not None and not isinstance(key, (Lpm, Raw)):
        c.problem("an lpm_trie key is {lpm: ipv4} or {lpm: ipv6} (or key_size: N for raw bytes)", "key")
    if len(problems) > before or key is None or value is None:
        return None
    too_large = offline_problem(type_, key.size, value.size, max_entries, flags)
    if too_large is not None:
        c.problem(too_large, "max_entries", kind="max_entries: beyond the kernel's limits")
        return None
    if kind.entries != DATA and cached is not None:  # a queue's or bloom filter's values, as packed before
        return InnerMapSpec(name, type_, key, value, max_entries, flags, cached, Location(src.file, 0),
                            raw.get("update", "swap"), section, manage)
    if kind.entries != DATA:
        if partial is not None:
            raw["entries"] = partial.parse_whole()
        entries = c.other_entries(kind, key, value, max_entries, ncpus)
        if len(problems) > before:
            return None
        return InnerMapSpec(name, type_, key, value, max_entries, flags, entries, Location(src.file, 0),
                            raw.get("update", "swap"), section, manage)
    if partial is not None and cached is None:
        if type_ in ARRAY_TYPES or type_ in PERCPU_TYPES:
            raw["entries"] = partial.parse_whole()  # index ranges and per-CPU forms are checked value by value
        else:
            cached = partial.assemble(key, value, max_entries)
    if cached is not None:
        return InnerMapSpec(name, type_, key, value, max_entries, flags, cached, Location(src.file, 0),
                            raw.get("update", "swap"), section, manage, migrate)
    keys, values, path = c.columns(key)
    if len(problems) > before:
        return None
    if len(keys) > max_entries:
        c.problem(f"{count(len(keys), 'entry', 'entries')} {verb(len(keys), 'does', 'do')} not fit max_entries {max_entries}", "entries")
        return None
    if type_ in PERCPU_TYPES:
        n = ncpus()
        value_size = codecs.per_cpu_stride(value) * n
        entries = Entries.of(c.encode_all(keys, values, path, key, None, lambda v: codecs.encode_per_cpu(value, v, n)),
                             key.size, value_size)
    else:
        entries = Entries.of(c.encode_all(keys, values, path, key, value), key.size, value.size)
    if type_ in ARRAY_TYPES:
        c.check_indexes(entries, keys, path, max_entries, "array index")
    if len(problems) > before:
        return None
    return InnerMapSpec(name, type_, key, value, max_entries, flags, entries, Location(src.file, 0),
                        raw.get("update", "swap"), section, manage, migrate)


def check_outer(src: Source, name: str, raw: dict[str, Any], problems: list[Problem],
                inner: dict[str, InnerMapSpec], inner_raw: set[str], outer_names: set[str],
                named: Mapping[str, CType] | None = None) -> OuterMapSpec | None:
    """An outer map from its definition; `inner` holds the inner and plain maps checked so far,
    `inner_raw` the names of every one declared (good or not)."""
    c = _MapChecker(src, "outer_maps", name, raw, problems, named)
    before = len(problems)
    type_ = OUTER_ALIASES.get(raw["type"], raw["type"])
    if "value" in raw or "value_size" in raw:
        c.problem("an outer map's values are inner maps: give no value type", "value" if "value" in raw else "value_size")
    key = c.formats(key=c.ctype("key"))["key"]
    manage = c.management()
    flags = tuple(sorted(raw.get("flags") or ()))
    for message in maptypes.flag_problems(type_, flags):
        c.problem(message, "flags")
    max_entries = raw["max_entries"]
    if type_ == "array_of_maps" and key is not None and key.size != 4:
        c.problem(f"an array_of_maps key is a 4-byte index (u32), got {count(key.size, 'byte')}", "key")
    template_name = raw["inner_map"]
    template = inner.get(template_name)
    if template is not None and template.section == PLAIN_SECTION:
        c.problem(f"inner_map '{template_name}' is declared under maps: (plain maps, in no outer map); "
                  "declare it under inner_maps", "inner_map")
        template = None
    elif template is None:
        if template_name in outer_names:
            c.problem(f"inner_map '{template_name}' is an outer map: an outer map cannot be an inner map", "inner_map")
        elif template_name not in inner_raw:
            c.problem(f"inner_map '{template_name}' is not defined under inner_maps", "inner_map")
    if template is not None and template.type not in maptypes.SLOT_TYPES:
        c.problem(f"inner_map '{template_name}' is {a(template.type)} map: an outer map's slots hold "
                  f"{', '.join(maptypes.SLOT_TYPES)} maps", "inner_map")
    too_large = offline_problem(type_, key.size, 4, max_entries, flags) if key is not None else None
    if too_large is not None:
        c.problem(too_large, "max_entries", kind="max_entries: beyond the kernel's limits")
    keys, values, path = c.columns(key) if key is not None else ([], [], lambda i: ("entries",))
    if len(keys) > max_entries:
        c.problem(f"{count(len(keys), 'slot')} {verb(len(keys), 'does', 'do')} not fit max_entries {max_entries}", "entries")
    if len(problems) > before or key is None or template is None:
        return None
    for i, (k, v) in enumerate(zip(keys, values)):
        slot = label(k)
        if not isinstance(v, str):
            c.problem(f"slot {slot}: expected the name of an inner map, got {shown(v)}", *path(i), entry=slot)
            continue
        if v in inner and inner[v].section == PLAIN_SECTION:
            c.problem(f"slot {k}: '{v}' is declared under maps: (plain maps, in no outer map); declare it under "
                      "inner_maps", *path(i), entry=str(k))
            continue
        if v not in inner:
            if v in outer_names:
                c.problem(f"slot {slot}: '{v}' is an outer map; a slot holds an inner map", *path(i), entry=slot)
            elif v not in inner_raw:
                c.problem(f"slot {slot}: {shown(v)} is not defined under inner_maps", *path(i), entry=slot)
            continue
        for reason in incompatible(template, inner[v]):
            c.problem(f"slot {slot}: inner map '{v}' is incompatible with the template '{template_name}': {reason} "
                      "(the kernel refuses it)", *path(i), entry=slot)
    if len(problems) > before:
        return None
    slots = dict(c.encode_all(keys, values, path, key, None, lambda v: v))
    if type_ == "array_of_maps":
        c.check_indexes(slots, keys, path, max_entries, "slot index")
    if len(problems) > before:
        return None
    return OuterMapSpec(name, type_, key, max_entries, flags, template_name, slots, Location(src.file, 0), manage)


def incompatible(template: InnerMapSpec, inner: InnerMapSpec) -> list[str]:
    """The kernel's rule for an inner map in a slot (kernel-facts: type, sizes, flags; arrays also max_entries)."""
    out = []
    for prop in ("type", "key_size", "value_size", "flags"):
        a, b = getattr(template, prop), getattr(inner, prop)
        if a != b:
            out.append(f"{prop} {b} differs from the template's {a}")
    if template.type in ARRAY_TYPES and "inner_map" not in template.flags and template.max_entries != inner.max_entries:
        out.append(f"max_entries {inner.max_entries} differs from the template's {template.max_entries} "
                   "(array maps must match unless both carry flag inner_map)")
    return out


def build_config(sources: list[Source], problems: list[Problem], known_valid: set[bytes] | None = None) -> Config:
    """Merge documents into one Config, appending every problem found to `problems`
    (`known_valid`: see schema_problems)."""
    from kmesh_apply.kernel.maps import possible_cpus

    cfg = Config(files=tuple(s.file for s in sources))
    defined: dict[str, tuple[str, str]] = {}  # name -> (file, section)
    raw_maps: dict[str, list[tuple[Source, str, dict[str, Any]]]] = {section: [] for section in MAP_SECTIONS}
    for src in _parse_whole_if_btf(sources, problems):
        found = schema_problems(src, known_valid)
        problems += found
        if found or not isinstance(src.data, dict):
            continue
        root = src.data.get("pin_root")
        bad_root = pin_root_problem(root) if root is not None else None
        if bad_root is not None:
            problems.append(Problem(src.file, ("pin_root",), bad_root, kind="pin_root: invalid path"))
        elif root is not None:
            if cfg.pin_root is not None and cfg.pin_root != root:
                problems.append(Problem(src.file, ("pin_root",), f"pin_root {root} differs from {cfg.pin_root} given in "
                                        "another file", kind="pin_root: differs between files"))
            cfg.pin_root = root
        for section, into in raw_maps.items():
            for name, raw in _definitions(src, section):
                if not isinstance(name, str):
                    problems.append(Problem(src.file, (section, name), f"map name {shown(name)} is not a string: quote it",
                                            label(name), kind="map name not a string"))
                    continue
                if name in RESERVED_NAMES:
                    problems.append(Problem(src.file, (section, name), f"the name '{name}' is reserved for kmesh-apply's "
                                            "own use", name, kind="reserved map name"))
                    continue
                if name in defined:
                    other_file, other_section = defined[name]
                    problems.append(Problem(src.file, (section, name),
                                            f"'{name}' is defined again (first in {other_file} under {other_section}): "
                                            "maps, inner maps and outer maps share one namespace", name,
                                            kind="map defined twice"))
                    continue
                defined[name] = (src.file, section)
                into.append((src, name, raw))
    inner_names = {n for section in (INNER_SECTION, PLAIN_SECTION) for _, n, _ in raw_maps[section]}
    outer_names = {n for _, n, _ in raw_maps["outer_maps"]}
    before = len(problems)
    with _named_types(sources, problems) as named:
        if len(problems) > before:
            return cfg  # the maps' types come from these files: their errors would only echo this one
        raw_maps = {section: _with_object_maps(maps, section, named, problems) for section, maps in raw_maps.items()}
        for section in (INNER_SECTION, PLAIN_SECTION):
            for src, name, raw in raw_maps[section]:
                reused = src.reused.get(name)
                inner_spec = check_inner(src, name, raw, problems, possible_cpus, Entries(*reused[1]) if reused else None,
                                         src.partial.get(name), named, section)
                if inner_spec is not None:
                    cfg.inner_maps[name] = inner_spec
        for src, name, raw in raw_maps["outer_maps"]:
            outer_spec = check_outer(src, name, raw, problems, cfg.inner_maps, inner_names, outer_names, named)
            if outer_spec is not None:
                cfg.outer_maps[name] = outer_spec
    _check_sources(cfg, defined, problems)
    return cfg


def _check_sources(cfg: Config, defined: Mapping[str, tuple[str, str]], problems: list[Problem]) -> None:
    """A map's `migrate.from` names a map the configuration no longer declares, and no other map's."""
    taken: dict[str, str] = {}
    for spec in cfg.inner_maps.values():
        source = spec.migrate.source if spec.migrate is not None else None
        if source is None:
            continue
        where = (spec.section, spec.name, "migrate", "from")
        if source in defined:
            problems.append(Problem(spec.location.file, where, f"migrate.from: '{source}' is declared in this "
                                    "configuration too: a map migrated from is the one the configuration no longer "
                                    "names (drop its declaration, or pick the right name)", spec.name))
        elif source in taken:
            problems.append(Problem(spec.location.file, where, f"migrate.from: '{source}' is migrated to "
                                    f"'{taken[source]}' already: one map cannot become two", spec.name))
        else:
            taken[source] = spec.name


def _with_object_maps(maps: list[tuple[Source, str, dict[str, Any]]], section: str, named: NamedTypes,
                      problems: list[Problem]) -> list[tuple[Source, str, dict[str, Any]]]:
    """Definitions with `object_map: X` completed from map X of a BPF object's `.maps` section;
    what the config gives itself wins."""
    out = []
    for src, name, raw in maps:
        wanted = raw.get("object_map")
        if wanted is None:
            out.append((src, name, raw))
            continue
        try:
            declared = named.map_definition(wanted)
        except TypeSpecError as e:
            problems.append(Problem(src.file, (section, name, "object_map"), f"object_map: {e}", name,
                                    kind="object_map: unusable BTF"))
            continue
        if declared is None:
            where = ", ".join(named.searched) if named else "no BPF object (name one under btf:)"
            problems.append(Problem(src.file, (section, name, "object_map"),
                                    f"object_map: no map '{wanted}' in the .maps section of {where}", name))
            continue
        found, obj = declared
        contradicted = False
        for which in ("key", "value"):  # a type or a size given here replaces both of the object's
            if which in raw or f"{which}_size" in raw:
                mine, theirs = _size_of(raw, which, named), _size_of(found, which, named)
                outer_value = section == "outer_maps" and which == "value"  # refused below, whatever its size
                if mine is not None and theirs is not None and mine != theirs and not outer_value:
                    given = f"{which} {spec_text(raw[which])} ({count(mine, 'byte')})" if which in raw else \
                        f"{which}_size {mine}"
                    problems.append(Problem(src.file, (section, name, which if which in raw else f"{which}_size"),
                                            f"{given} contradicts map '{wanted}' in {obj}, whose {which}s are "
                                            f"{count(theirs, 'byte')}: a {which} written beside object_map must have "
                                            "the object's size (its loader would refuse the map)", name))
                    contradicted = True
                found.pop(which, None)
                found.pop(f"{which}_size", None)
        if contradicted:
            continue
        merged = {**found, **{k: v for k, v in raw.items() if k != "object_map"}}
        if section == "outer_maps":
            merged.pop("value", None)
            merged.pop("value_size", None)
        if merged.get("type") in maptypes.KINDS and maptypes.kind(merged["type"]).max_entries == "zero":
            merged.setdefault("max_entries", 0)  # a storage map declares none: libbpf creates it with 0
        missing = [k for k in ("type", "max_entries") if k not in merged]
        kinds = (*OUTER_TYPES, *OUTER_ALIASES) if section == "outer_maps" else (*maptypes.KINDS, *maptypes.REFUSED)
        if not missing and merged["type"] not in kinds:
            where = ("declare it under outer_maps" if merged["type"] in OUTER_TYPES else
                     "declare it under inner_maps" if merged["type"] in maptypes.KINDS else "kmesh-apply does not know it")
            problems.append(Problem(src.file, (section, name, "object_map"),
                                    f"object_map: '{wanted}' is {a(merged['type'])} map: {where}", name))
            continue
        if missing:
            problems.append(Problem(src.file, (section, name, "object_map"),
                                    f"object_map: '{wanted}' declares no {' or '.join(missing)}: give it here", name))
            continue
        # What the object declares passes the schema like what a config writes (sizes of 0, a max_entries
        # past 32 bits...); its types are left to parse_type, which bounds them.
        as_declared = {k: "u8" if k in ("key", "value") else v for k, v in merged.items() if k != "entries"}
        wrong = next(iter(_validator().iter_errors({section: {name: as_declared}})), None)
        if wrong is not None:
            problems.append(Problem(src.file, (section, name, "object_map"),
                                    f"object_map: '{wanted}' as its BTF declares it: {_schema_message(wrong)}", name,
                                    kind="object_map: declaration out of bounds"))
            continue
        out.append((src, name, merged))
    return out


def _size_of(definition: Mapping[str, Any], which: str, named: Mapping[str, CType]) -> int | None:
    """The size of a definition's key or value (a type or `*_size`); None when it gives neither or
    its type does not parse (that is reported where the type is checked)."""
    if f"{which}_size" in definition:
        size = definition[f"{which}_size"]
        return size if type(size) is int else None
    if which not in definition:
        return None
    try:
        return parse_type(definition[which], named).size
    except TypeSpecError:
        return None


def _parse_whole_if_btf(sources: list[Source], problems: list[Problem]) -> list[Source]:
    """With BTF files named anywhere, no map is taken from the config cache: the types they name
    serve every file of the configuration, so an entry's layout depends on those files, not only
    on its text (and a file that names none may still use their types). Returns the sources to
    check; one whose file changed since it was read is a problem instead."""
    if not any(isinstance(src.data, dict) and src.data.get("btf") for src in sources):
        return sources
    kept = []
    for src in sources:
        if not (src.reused or src.partial):
            kept.append(src)
            continue
        text = src.full_text()
        full = parse_text(text, src.file) if text is not None else None
        if isinstance(full, Source):
            src.data, src.reused, src.partial = full.data, {}, {}
            kept.append(src)
        else:
            problems.append(Problem(src.file, (), "the file changed while it was being read: run the command again",
                                    kind="changed while read"))
    return kept


def _named_types(sources: list[Source], problems: list[Problem]) -> NamedTypes:
    """The C types of the BTF files and C headers the documents name under `btf:` (paths relative
    to each file), shared by the whole configuration."""
    from kmesh_apply.config.cache import Cache
    from kmesh_apply.config.headers import HeaderError
    from kmesh_apply.kernel.btf import BtfFileError, NamedTypes

    named = NamedTypes()
    cache: list[Cache | None] = []  # opened for the first header
    for src in sources:
        items = src.data.get("btf") if isinstance(src.data, dict) else None
        if not isinstance(items, list):
            continue
        base = Path(src.file).parent if src.file != INLINE else Path.cwd()
        for i, item in enumerate(items):
            try:
                _add_btf(named, item, base, cache)
            except (BtfFileError, HeaderError) as e:
                problems.append(Problem(src.file, ("btf", i), f"btf: {e}", kind="btf: unusable file"))
    _type_formats(sources, named, problems)
    return named


def _add_btf(named: NamedTypes, item: Any, base: Path, cache: list[Cache | None]) -> None:
    """One item of a `btf:` list (a BPF object or raw BTF file, or C to compile with clang, relative to
    `base`) into `named`; `cache` holds the config cache once a header has opened it."""
    from kmesh_apply.config.cache import Cache
    from kmesh_apply.config.headers import Header, compile_btf, is_c

    if is_c(item):
        if not cache:
            cache.append(Cache.open())
        header = Header.from_item(item, base)
        btf, clang = compile_btf(header, cache[0])
        named.add_raw(btf, header.describe(clang))
    elif isinstance(item, str):
        named.add(str(base / item))


def _type_formats(sources: list[Source], named: NamedTypes, problems: list[Problem]) -> None:
    """The top-level `formats:` of named types ({type name: {path: format}}), checked against each type
    as its file declares it; the paths that apply are given to `named`, which applies them wherever
    the type is used."""
    found: dict[str, list[Any]] = {}
    for src in sources:
        by_type = src.data.get("formats") if isinstance(src.data, dict) else None
        for type_name, paths in (by_type or {}).items():
            where = ("formats", type_name)
            try:
                plain = named[type_name] if named else None
            except KeyError:
                plain = None
            except TypeSpecError as e:
                problems.append(Problem(src.file, where, f"formats: {type_name}: {e}"))
                continue
            if plain is None:
                searched = ", ".join(named.searched) or "no file: formats of named types need a top-level btf: list"
                problems.append(Problem(src.file, where, f"formats: no type '{type_name}' in {searched}"))
                continue
            for path, spec in paths.items():
                try:
                    steps, shown = format_path(path), parse_type(spec, named)
                    apply_format(plain, steps, shown)
                except KeyError as e:
                    problems.append(Problem(src.file, (*where, path),
                                            f"formats: {missing_step(e.args[0], type_name, plain)}"))
                except TypeSpecError as e:
                    problems.append(Problem(src.file, (*where, path), f"formats: {type_name}: {path}: {e}"))
                else:
                    found.setdefault(type_name, []).append((steps, shown))
    if found:
        named.set_formats(found)


def _migration_types(c: _MapChecker, paths: list[Any]) -> NamedTypes:
    """The C types of the files under a map's `migrate.btf` (relative to its file)."""
    from kmesh_apply.config.cache import Cache
    from kmesh_apply.config.headers import HeaderError
    from kmesh_apply.kernel.btf import BtfFileError, NamedTypes

    named = NamedTypes()
    base = Path(c.src.file).parent if c.src.file != INLINE else Path.cwd()
    cache: list[Cache | None] = []
    for i, item in enumerate(paths):
        try:
            _add_btf(named, item, base, cache)
        except (BtfFileError, HeaderError) as e:
            c.problem(f"migrate.btf: {e}", "migrate", "btf", i)
    return named


def _definitions(src: Source, section: str) -> list[tuple[Any, Any]]:
    """A section's (name, definition) pairs in file order, the maps taken from the cache included."""
    parsed = src.data.get(section) or {}
    if section not in CACHED_SECTIONS or not src.reused:
        return list(parsed.items())
    cut = src.order(section)
    listed = set(cut)
    order = [n for n in cut if n in src.reused or n in parsed] + [n for n in parsed if n not in listed]
    return [(n, src.reused[n][0] if n in src.reused else parsed[n]) for n in order]
