"""The config layer: load YAML and JSON files, validate them, and build the `Config` model.

    load_config(["mesh.yaml", "more.json", "dir/"])   # files or directories, merged
    load_config(inline="inner_maps: ...")      # YAML text, or an already-parsed mapping

Raises ConfigError with every problem of every file, each naming file, line, map and entry.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

from kmesh_apply.config.loader import INLINE, Source, config_files, parse_text, read_source, resolve
from kmesh_apply.config.model import Config
from kmesh_apply.config.writer import dump_text, dump_yaml
from kmesh_apply.entries import Entries
from kmesh_apply.errors import ConfigError, Diagnostic

if TYPE_CHECKING:
    from kmesh_apply.config.cache import Cache

__all__ = ["load_config", "schema_text", "dump_yaml", "dump_text", "Config"]


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
