"""The config files `watch` follows: which changed, and the configuration they make now.

A change re-reads only the files whose content changed (stat first, then a content
hash: editors' atomic saves and Kubernetes' `..data` swaps change the inode, not
always the size or time). A changed file that holds only inner maps is validated
alone and merged into the last good configuration, keeping every other map's spec
object as it was (so the synchroniser sees at once what changed); whenever the merge
could differ from loading everything (an outer map or pin_root in the file, a name
defined twice, a map an outer map needs removed or made incompatible), every file is
loaded again with load_config, which also gives the located diagnostics.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

from kmesh_apply.config import load_config
from kmesh_apply.config.loader import Source, config_files, read_source, resolve
from kmesh_apply.config.model import Config, InnerMapSpec
from kmesh_apply.config.validate import build_config, incompatible
from kmesh_apply.errors import ConfigError, Diagnostic
from kmesh_apply.plan.planner import FIXED_PROPERTIES

CONFIG_SUFFIXES = (".yaml", ".yml")  # what config_files takes from a directory


@dataclass
class _File:
    stat: tuple[int, ...]
    digest: bytes
    inner: dict[str, InnerMapSpec] | None  # its maps, when it holds inner maps only (None: load everything)


def _stat(path: Path) -> tuple[int, ...]:
    st = os.stat(path)  # follows symlinks: a ConfigMap's file is a link through ..data
    return st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns


class ConfigFiles:
    """Tracks the files or directories given to `watch`; `load()` gives a new Config when they changed."""

    def __init__(self, paths: Sequence[str | os.PathLike]):
        self.paths = [Path(os.path.abspath(p)) for p in paths]  # as file events name them
        self.files: dict[str, _File] = {}
        self.config: Config | None = None  # the last good configuration

    def directories(self) -> list[str]:
        """What to watch: a directory itself, a file's directory (a watched file is lost at its first atomic save)."""
        dirs = [str(p if p.is_dir() else p.parent) for p in self.paths]
        return sorted(set(dirs))

    def _named(self, touched: Iterable[str] | None) -> set[str] | None:
        """The config files among the paths file events named, or None when every file must be
        listed and looked at: no events given, or one that could change more than its own file
        (a directory, or a link such as a ConfigMap's `..data`)."""
        if touched is None or not self.files:
            return None
        dirs = {str(p) for p in self.paths if p.is_dir()}
        args = {str(p) for p in self.paths}
        named = set()
        for path in touched:
            head, name = os.path.split(path)
            if name.startswith(".."):
                return None  # Kubernetes' ..data and its timestamped directories: every file may have moved
            if path in args or (head in dirs and os.path.splitext(name)[1] in CONFIG_SUFFIXES):
                if os.path.isdir(path):
                    return None
                named.add(path)
        return named

    def load(self, everything: bool = False, touched: Iterable[str] | None = None) -> tuple[Config, list[str]] | None:
        """(the new Config, the files that changed), or None when no file changed. `touched`: the
        paths file events named (other files are not looked at); `everything` re-reads every file.
        Raises ConfigError, and the last good configuration stays."""
        named = None if everything else self._named(touched)
        if named is None:
            found, problems = config_files(self.paths)
            if problems:
                raise ConfigError(problems)
            candidates, now = [str(p) for p in found], {}
        else:
            candidates, now = sorted(named), dict(self.files)
        changed: dict[str, Path] = {}
        for name in candidates:
            old = self.files.get(name)
            path = Path(name)
            try:
                stat = _stat(path)
                if old is not None and old.stat == stat and not everything:
                    now[name] = old
                    continue
                digest = hashlib.blake2b(path.read_bytes(), digest_size=16).digest()
            except FileNotFoundError:
                now.pop(name, None)  # removed since the event (or the listing)
                continue
            except OSError as e:
                raise ConfigError([Diagnostic(f"cannot read: {e.strerror}", name)]) from None
            if old is not None and old.digest == digest and not everything:
                now[name] = _File(stat, digest, old.inner)
                continue
            now[name] = _File(stat, digest, None)
            changed[name] = path
        gone = sorted(self.files.keys() - now.keys())
        if not changed and not gone and self.config is not None:
            self.files = now
            return None
        try:
            config = self._merge(now, changed, [self.files[n] for n in gone]) if self.config is not None else None
            if config is None:
                config = load_config(self.paths)
                self._split(config, now)
        except ConfigError:
            self.files = now  # remembered as changed (inner None): the fix is loaded in full
            raise
        self.files, self.config = now, config
        return config, sorted(changed) + gone

    def _merge(self, now: dict[str, _File], changed: dict[str, Path], removed: list[_File]) -> Config | None:
        """The last good config with the changed inner-map-only files swapped in; None when only
        loading everything gives the right answer."""
        assert self.config is not None
        if any(f.inner is None for f in removed):
            return None
        parts: dict[str, dict[str, InnerMapSpec]] = {}
        for name, path in changed.items():
            old = self.files.get(name)
            if old is not None and old.inner is None:
                return None
            src = read_source(path)
            if not isinstance(src, Source):
                raise ConfigError([src])
            if not isinstance(src.data, dict) or not set(src.data) <= {"inner_maps"}:
                return None
            problems: list = []
            part = build_config([src], problems)
            if problems:
                raise ConfigError(resolve(problems, {src.file: src}))
            parts[name] = part.inner_maps
        inner = dict(self.config.inner_maps)
        outer = self.config.outer_maps
        replaced = [*removed, *(self.files[file] for file in parts if file in self.files)]
        before = {n: inner[n] for f in replaced for n in (f.inner or {})}  # the maps those files held
        for n in before:
            del inner[n]
        for specs in parts.values():
            for n, spec in specs.items():
                if n in inner or n in outer:
                    return None  # defined twice: load_config names both places
                inner[n] = spec
        templates = {o.inner_map for o in outer.values()}
        held = {o.name: set(o.slots.values()) for o in outer.values()} if before else {}
        for n, old_spec in before.items():
            new = inner.get(n)
            held_by = [outer[o] for o, names in held.items() if n in names] if new is not old_spec else []
            if n in templates and (new is None or any(getattr(new, p) != getattr(old_spec, p) for p in FIXED_PROPERTIES)):
                return None
            if new is None and held_by:
                return None
            if new is not None and any(incompatible(inner[o.inner_map], new) for o in held_by):
                return None
        for name, specs in parts.items():
            now[name].inner = specs
        return Config(inner, dict(outer), self.config.pin_root, tuple(now))

    @staticmethod
    def _split(config: Config, now: dict[str, _File]) -> None:
        """After loading everything: which maps each file holds (files holding an outer map load in full)."""
        by_file: dict[str, dict[str, InnerMapSpec]] = {name: {} for name in now}
        for spec in config.inner_maps.values():
            by_file.setdefault(spec.location.file, {})[spec.name] = spec
        with_outer = {spec.location.file for spec in config.outer_maps.values()}
        for name, f in now.items():
            f.inner = None if name in with_outer else by_file.get(name, {})

