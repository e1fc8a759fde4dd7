"""The config layer: load YAML and JSON files, validate them, and build the `Config` model.

    load_config(["mesh.yaml", "more.json", "dir/"])   # files or directories, merged
    load_config(inline="inner_maps: ...")      # YAML text, or an already-parsed mapping

Raises ConfigError with every problem of every file, each naming file, line, map and entry.
"""

from __future__ import annotations

import os
import re
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

from kmesh_apply.config.loader import INLINE, Source, config_files, parse_text, read_source, resolve
from kmesh_apply.config.model import Config
from kmesh_apply.entries import Entries
from kmesh_apply.errors import ConfigError, Diagnostic
from kmesh_apply.terminal import escape_quoted

if TYPE_CHECKING:
    from kmesh_apply.config.cache import Cache

__all__ = ["load_config", "schema_text", "dump_yaml", "Config"]


def load_config(paths: Sequence[str | os.PathLike] = (), *, inline: str | Mapping[str, Any] | None = None,
                use_cache: bool = True) -> Config:
    """Files (or directories of them) or inline YAML, validated and encoded. Large files reuse the
    maps whose text is unchanged since an earlier load (config.cache); `use_cache=False` parses all."""
    from kmesh_apply.config.blocks import BlocksRefused
    from kmesh_apply.config.cache import Cache
    from kmesh_apply.config.validate import build_config

    diagnostics: list[Diagnostic] = []
    sources: list[Source] = []
    cache = None
    if inline is not None:
        if isinstance(inline, str):
            parsed = parse_text(inline, INLINE)
        elif isinstance(inline, Mapping):
            # Keys may be text: a mapping handed over often went through JSON (Ansible's module arguments do).
            parsed = Source(INLINE, None, dict(inline), owned=False, text_keys=True)
        else:
            parsed = Diagnostic(f"an inline config is a mapping or YAML text, not {type(inline).__name__}", INLINE)
        (sources if isinstance(parsed, Source) else diagnostics).append(parsed)  # type: ignore[arg-type]
    else:
        files, diagnostics = config_files(paths)
        if not files and not diagnostics:
            diagnostics.append(Diagnostic("no configuration given: name files or directories"))
        cache = Cache.open() if use_cache else None
        for f in files:
            parsed = read_source(f, cache)
            (sources if isinstance(parsed, Source) else diagnostics).append(parsed)  # type: ignore[arg-type]
    problems: list = []
    shapes = cache.known_shapes() if cache is not None else None
    try:
        config = build_config(sources, problems, shapes)
    except BlocksRefused:  # a changed block needs the whole map parsed: read the files again, whole maps only
        files, sources, problems = [Path(s.file) for s in sources], [], []
        for f in files:
            parsed = read_source(f, cache, blocks=False)
            (sources if isinstance(parsed, Source) else diagnostics).append(parsed)  # type: ignore[arg-type]
        config = build_config(sources, problems, shapes)
    diagnostics += resolve(problems, {s.file: s for s in sources})
    if diagnostics:
        raise ConfigError(diagnostics)
    if cache is not None and shapes is not None:
        _store(cache, sources, config)
        cache.save_shapes(shapes)
    return config


def _store(cache: Cache, sources: list[Source], config: Config) -> None:
    """Keep every plain and inner map of a cut file, and the cut, for the next load (unless the cache holds them already)."""
    from kmesh_apply.config.chunks import CACHED_SECTIONS

    for src in sources:
        if src.layout is None or src.layout_stored or not isinstance(src.data, dict):
            continue  # (a file of no document holds no map to keep)
        parsed = {name: m for section in CACHED_SECTIONS for name, m in (src.data.get(section) or {}).items()}
        if set(parsed) != set(src.digests) - set(src.reused):
            continue  # the parser saw other maps than the cut: never store what the cut got wrong
        maps = {}
        for name, digest in src.digests.items():
            spec = config.inner_maps.get(name)
            if name in src.reused:
                maps[digest] = src.reused[name]
            elif spec is not None and isinstance(spec.entries, Entries):  # as check_inner packs them
                definition = {k: v for k, v in parsed[name].items() if k != "entries"}
                maps[digest] = (definition, spec.entries.payload())
        whole, cut, digests, blocks, seen = src.layout
        # A map's blocks are kept only when they hold its entries one a line, in order.
        kept = {n: b for n, b in blocks.items() if n in config.inner_maps and sum(c for _, c in b) == len(config.inner_maps[n].entries)}
        cache.save(src.file, maps, (whole, cut, digests, kept, seen))


def schema_text() -> str:
    """The JSON Schema of the configuration (draft 2020-12), as shipped in schemas/."""
    from kmesh_apply.config.validate import SCHEMA_FILE

    return SCHEMA_FILE.read_text()


class _Flow(dict):
    """A mapping written on one line: struct values and list-form entries read best that way."""


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
                m["entries"] = {k: _Flow(v) if isinstance(v, dict) else v for k, v in entries.items()}
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


def _read_back_as_str(text: str) -> bool:
    import yaml_rs

    if not _MAYBE_NOT_STR.match(text) or _ADDRESS.fullmatch(text):
        return True
    if _HEX_DIGITS.fullmatch(text):
        return False  # quoted without asking: cheaper, and right for every such string
    try:
        return yaml_rs.loads(f"- {text}\n", parse_datetime=True) == [text]
    except yaml_rs.YAMLDecodeError:
        return False


def dump_yaml(doc: Mapping[str, Any]) -> str:
    """A config document as block YAML that load_config accepts back: every string that a YAML 1.1
    or 1.2 reader would resolve to something else is quoted. Entries that are integers on both
    sides, the bulk of a large map, are written as lines directly (PyYAML takes a minute for a
    million of them); everything else goes through PyYAML."""
    import yaml

    class Dumper(yaml.SafeDumper):
        pass

    def represent_str(dumper: yaml.SafeDumper, text: str) -> yaml.Node:
        if not text.isprintable():  # line breaks YAML knows (\x85, \u2028) fold in plain or single-quoted text
            style: str | None = '"'
        else:
            style = None if _read_back_as_str(text) else "'"
        return dumper.represent_scalar("tag:yaml.org,2002:str", text, style=style)

    Dumper.add_representer(str, represent_str)
    Dumper.add_representer(_Flow, lambda d, v: d.represent_mapping("tag:yaml.org,2002:map", v, flow_style=True))
    lines: dict[str, str] = {}
    text = yaml.dump(_flow_entries(doc, lines), Dumper=Dumper, sort_keys=False, width=120, allow_unicode=True)
    if lines:  # one pass puts every map's lines in place of its placeholder
        text, found = _PLACEHOLDER.subn(lambda m: "    entries:\n" + lines[m.group(1)], text)
        if found != len(lines):  # not where a map's entries go: let PyYAML write them
            text = yaml.dump(_flow_entries(doc, None), Dumper=Dumper, sort_keys=False, width=120, allow_unicode=True)
    return escape_quoted(text, yaml=True)  # PyYAML leaves bidi overrides and separators raw in double quotes


_PLACEHOLDER = re.compile(r"^    entries: (kmesh-apply-entries-[0-9a-f]{32})\n", re.M)
