"""The config files `watch` follows: which changed, and the configuration they make now.

Only files that file changes name are looked at (stat, then the content: editors'
atomic saves and Kubernetes' `..data` swaps change the inode, not always the size or
time), and, when changes may have gone unreported, every file's stat (`differing`). Each file is known as one chunk of text per map (config/chunks.py, as the config
cache cuts it); a change is compared with the file's last content to find the bytes
edited, and when they lie within inner maps, just those maps are parsed and validated
and merged into the last good configuration, and every other map keeps its spec object
(so the synchroniser sees at once what changed). Whenever a merge could
differ from loading everything (an outer map or anything else outside the inner maps
changed, a name defined twice, a map an outer map needs removed or made incompatible,
a chunk with a problem), every file is loaded again with load_config, which also gives
the located diagnostics.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Callable, Iterable, Sequence

from kmesh_apply.config import load_config
from kmesh_apply.config.blocks import BlocksRefused, Partial, entries_body
from kmesh_apply.config.blocks import cut as cut_blocks
from kmesh_apply.config.chunks import Chunk, blank_out, inner_chunks, split
from kmesh_apply.config.loader import CONFIG_SUFFIXES, Source, config_files, parse_text
from kmesh_apply.config.model import Config, InnerMapSpec
from kmesh_apply.entries import Entries
from kmesh_apply.config.validate import build_config, incompatible
from kmesh_apply.errors import ConfigError, Diagnostic
from kmesh_apply.plan.planner import FIXED_PROPERTIES
from kmesh_apply.sync.settle import EVERYTHING, FILE

Span = tuple[str, int, int]  # an inner map's chunk: name, start and end byte in the file


@dataclass
class _File:
    stat: tuple[int, ...]
    raw: bytes  # its content when last read
    spans: list[Span] | None = None  # its inner maps' chunks in file order (None: unknown, load everything)
    outer: bool = True  # it defines an outer map (removing it needs a full load)


def _spans(raw: bytes, offset: int = 0) -> list[Span] | None:
    """The inner maps' chunks of a file's bytes (shifted by `offset`), or None when it cannot be cut."""
    chunks = split(raw)
    if chunks is None:
        return None
    return [(c.name, c.start + offset, c.end + offset) for c in chunks if c.section == "inner_maps"]


def _common(a: bytes, b: bytes, at: Callable[[bytes, int, int], bytes]) -> int:
    """How many bytes `a` and `b` share from one end (`at(x, i, j)`: the bytes i..j from that end),
    compared by blocks, then by halving (bytes compare with memcmp)."""
    n, lo, block = min(len(a), len(b)), 0, 1 << 16
    while lo + block <= n and at(a, lo, lo + block) == at(b, lo, lo + block):
        lo += block
    hi = min(lo + block, n)
    while lo < hi:  # a and b share lo bytes; find how many of the next hi - lo
        mid = (lo + hi + 1) // 2
        if at(a, lo, mid) == at(b, lo, mid):
            lo = mid
        else:
            hi = mid - 1
    return lo


def _edited(old: bytes, new: bytes) -> tuple[int, int, int]:
    """Where `new` differs from `old`: (start, end in old, end in new)."""
    head = _common(old, new, lambda x, i, j: x[i:j])
    room = min(len(old), len(new)) - head  # the shared tail may not overlap the shared head
    tail = min(_common(old, new, lambda x, i, j: x[len(x) - j:len(x) - i]), room)
    return head, len(old) - tail, len(new) - tail


def _stat(path: Path) -> tuple[int, ...]:
    st = os.stat(path)  # follows symlinks: a ConfigMap's file is a link through ..data
    return st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns


class ConfigFiles:
    """Tracks the files or directories given to `watch`; `load()` gives a new Config when they changed."""

    def __init__(self, paths: Sequence[str | os.PathLike]):
        self.paths = [Path(os.path.abspath(p)) for p in paths]  # as file events name them
        self.files: dict[str, _File] = {}
        self.config: Config | None = None  # the last good configuration
        self.shapes: set[bytes] = set()  # document shapes the JSON Schema accepted (validate.schema_problems)

    def directories(self) -> list[str]:
        """What to watch: a directory itself, a file's directory (a watched file is lost at its first atomic save)."""
        dirs = [str(p if p.is_dir() else p.parent) for p in self.paths]
        return sorted(set(dirs))

    def kind(self, path: str) -> str | None:
        """What a path file events name is to the watcher: FILE, a config file; EVERYTHING, a change
        that may move every file (Kubernetes' `..data` link and its timestamped directories); None,
        anything else (editors' swap and backup files)."""
        head, name = os.path.split(path)
        if name.startswith("..") and head in self.watched:
            return EVERYTHING
        args = self._args
        if path in args or (head in args and os.path.splitext(name)[1] in CONFIG_SUFFIXES):
            return FILE
        return None

    @cached_property
    def watched(self) -> set[str]:
        return set(self.directories())

    @cached_property
    def _args(self) -> set[str]:
        return {str(p) for p in self.paths}

    def _named(self, touched: Iterable[str] | None) -> set[str] | None:
        """The config files among the paths file events named, or None when every file must be
        listed and looked at: no events given, or one that could change more than its own file
        (a directory, or a link such as a ConfigMap's `..data`)."""
        if touched is None or not self.files:
            return None
        named = set()
        for path in touched:
            kind = self.kind(path)
            if kind == EVERYTHING or (kind == FILE and os.path.isdir(path)):
                return None
            if kind == FILE:
                named.add(path)
        return named

    def bytes_to_read(self, everything: bool, touched: Iterable[str] | None) -> int:
        """About how many bytes `load(everything, touched)` would read (their sizes now)."""
        named = None if everything else self._named(touched)
        paths = named if named is not None else [str(p) for p in config_files(self.paths)[0]]
        total = 0
        for path in paths:
            try:
                total += os.stat(path).st_size
            except OSError:
                pass  # gone: nothing to read
        return total

    def differing(self) -> set[str]:
        """The config files whose stat differs from their last read, new ones and vanished ones: what
        changes missed by file events would have named (a wait interrupted, a watch started afresh)."""
        found = {str(p) for p in config_files(self.paths)[0]}
        out = set(self.files.keys() - found)
        for name in found:
            old = self.files.get(name)
            try:
                if old is None or old.stat != _stat(Path(name)):
                    out.add(name)
            except OSError:
                out.add(name)
        return out

    def moved(self, names: Iterable[str], open_for_writing: Callable[[str], bool | None]) -> bool:
        """Whether one of the files just read changed since it was read, or a writer holds it now (the
        read may then have caught it half-written: it is dropped, and made again once the file is ready)."""
        for name in names:
            f = self.files.get(name)
            try:
                if f is not None and (f.stat != _stat(Path(name)) or open_for_writing(name)):
                    return True
            except OSError:
                return True  # gone since: its removal is a change of its own
        return False

    def snapshot(self) -> tuple[dict[str, _File], Config | None]:
        """What `load` changes, to `restore` when its result is dropped (a file changed while it was read)."""
        return self.files, self.config

    def restore(self, snapshot: tuple[dict[str, _File], Config | None]) -> None:
        self.files, self.config = snapshot

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
        changed: dict[str, bytes] = {}  # file -> its new content
        for name in candidates:
            old = self.files.get(name)
            path = Path(name)
            try:
                stat = _stat(path)
                if old is not None and old.stat == stat and not everything:
                    now[name] = old
                    continue
                raw = path.read_bytes()
            except FileNotFoundError:
                now.pop(name, None)  # removed since the event (or the listing)
                continue
            except OSError as e:
                raise ConfigError([Diagnostic(f"cannot read: {e.strerror}", name)]) from None
            if old is not None and old.raw == raw and not everything:
                now[name] = _File(stat, raw, old.spans, old.outer)
                continue
            now[name] = _File(stat, raw)
            changed[name] = raw
        gone = sorted(self.files.keys() - now.keys())
        if not changed and not gone and self.config is not None:
            self.files = now
            return None
        try:
            config = self._merge(now, changed, [self.files[n] for n in gone]) if self.config is not None else None
            if config is None:
                config = load_config(self.paths)
                self._describe(config, now, changed)
        except ConfigError:
            for name in changed:  # content the last good config does not hold: load it in full next time
                now[name].spans = None
            self.files = now
            raise
        self.files, self.config = now, config
        return config, sorted(changed) + gone

    def _merge(self, now: dict[str, _File], changed: dict[str, bytes], removed: list[_File]) -> Config | None:
        """The last good config with the changed inner maps swapped in; None when only loading
        everything gives the right answer."""
        assert self.config is not None
        if any(f.outer or f.spans is None for f in removed):
            return None
        replaced = {n for f in removed for n, _, _ in f.spans or ()}  # inner maps whose old spec goes
        specs: dict[str, InnerMapSpec] = {}
        for name, raw in changed.items():
            old = self.files.get(name)
            partial: dict[str, Partial] = {}
            if old is None:  # a new file: all of it, if it holds inner maps only
                text, spans = raw, _spans(raw)
                cut = spans
                if cut is None:
                    return None  # not cut (JSON, or not plain enough): loaded in full
            else:
                edit = self._edit(old, raw)
                if edit is None:
                    return None
                (a, b), spans, cut, gone, edited = edit
                replaced |= gone
                blank, partial = self._blocks(old, raw, edited, cut)
                text = b"inner_maps:\n" + blank_out(raw, blank, a, b)  # the touched maps, as a document
            src = parse_text(text.decode("utf-8", "replace"), name)
            if not isinstance(src, Source) or not isinstance(src.data, dict) or set(src.data) - {"inner_maps"}:
                return None
            src.partial = partial
            problems: list = []
            try:
                part = build_config([src], problems, self.shapes)
            except BlocksRefused:
                return None  # load everything: its blocks, or its whole maps, say what is wrong
            if problems or not specs.keys().isdisjoint(part.inner_maps):
                return None  # load everything, for diagnostics with the file's own line numbers
            if cut is None or {n for n, _, _ in cut} != set(part.inner_maps):
                return None  # the cut saw other maps than the parser
            specs.update(part.inner_maps)
            now[name].spans, now[name].outer = spans, old.outer if old is not None else False
        return self._swap(replaced, specs, tuple(now))

    @staticmethod
    def _edit(old: _File, raw: bytes) -> tuple[tuple[int, int], list[Span], list[Span], set[str], tuple[int, int, int]] | None:
        """For a known file: where the inner maps the edit touched lie in `raw`, the file's new spans,
        those of the touched maps, the names they had, and where the bytes differ (`_edited`). None
        when the edit reaches outside the inner maps."""
        if not old.spans or not old.raw:
            return None
        start, old_end, new_end = _edited(old.raw, raw)
        hit = [i for i, (_, a, b) in enumerate(old.spans) if a <= old_end and b >= start]
        if not hit or start < old.spans[hit[0]][1] or old_end > old.spans[hit[-1]][2]:
            return None  # outside every inner map: an outer map, pin_root, the section header...
        shift = len(raw) - len(old.raw)
        a, b = old.spans[hit[0]][1], old.spans[hit[-1]][2] + shift
        chunks = inner_chunks(raw, a, b)
        if not chunks:
            return None
        cut = [(c.name, c.start, c.end) for c in chunks]
        spans = old.spans[:hit[0]] + cut + [(n, s + shift, e + shift) for n, s, e in old.spans[hit[-1] + 1:]]
        return (a, b), spans, cut, {old.spans[i][0] for i in hit}, (start, old_end, new_end)

    def _blocks(self, old: _File, raw: bytes, edited: tuple[int, int, int],
                cut: list[Span]) -> tuple[list[Chunk], dict[str, Partial]]:
        """The entries of the large edited maps, to leave out of their text (where they lie in `raw`)
        and to assemble from blocks (config.blocks): only the blocks the edit touched are parsed, the
        others are sliced from the map's last good entries. A block is known by where it lies:
        before the edit, or after it (shifted), its bytes are the old file's (`edited`: where the
        bytes differ), so no block is hashed."""
        assert self.config is not None
        start, old_end, new_end = edited
        before = {n: (a, b) for n, a, b in old.spans or ()}
        partial, blank = {}, []
        for name, a, b in cut:
            spec = self.config.inner_maps.get(name)
            body = entries_body(raw, Chunk("inner_maps", name, a, b))
            if spec is None or name not in before or body is None or not isinstance(spec.entries, Entries):
                continue
            old_a, old_b = before[name]
            old_body = entries_body(old.raw, Chunk("inner_maps", name, old_a, old_b))
            if old_body is None or not old_body[0] <= start <= old_end <= old_b:
                continue  # the edit reaches its definition (or another map): parse it whole
            old_bounds = cut_blocks(old.raw, old_body[0], old_b)
            old_blocks = [(b"%d" % s, old.raw.count(b"\n", s, e)) for s, e in old_bounds]
            if sum(n for _, n in old_blocks) != len(spec.entries):
                continue  # its entries are not one a line in file order: parse it whole
            known, moved = set(old_bounds), new_end - old_end
            blocks = []
            for i, (s, e) in enumerate(cut_blocks(raw, body[0], b)):
                at = s if e <= start else s - moved if s >= new_end else -1
                same = at >= 0 and (at, at + e - s) in known
                blocks.append((b"%d" % at if same else b"new %d" % i, s, e))
            partial[name] = Partial(spec.entries.payload(), old_blocks, raw, blocks, body[1])
            blank.append(Chunk("inner_maps", name, body[0], b))
        return blank, partial

    def _swap(self, replaced: set[str], specs: dict[str, InnerMapSpec], files: tuple[str, ...]) -> Config | None:
        """The last good config with `replaced` inner maps removed and `specs` added, if that is
        what loading everything would give."""
        assert self.config is not None
        inner = dict(self.config.inner_maps)
        outer = self.config.outer_maps
        before = {n: inner.pop(n) for n in replaced if n in inner}
        for n, spec in specs.items():
            if n in inner or n in outer:
                return None  # defined twice: load_config names both places
            inner[n] = spec
        templates = {o.inner_map for o in outer.values()}
        held = {o.name: set(o.slots.values()) for o in outer.values()} if before else {}
        for n, old_spec in before.items():
            new = inner.get(n)
            held_by = [outer[o] for o, names in held.items() if n in names]
            if n in templates and (new is None or any(getattr(new, p) != getattr(old_spec, p) for p in FIXED_PROPERTIES)):
                return None
            if new is None and held_by:
                return None
            if new is not None and any(incompatible(inner[o.inner_map], new) for o in held_by):
                return None
        return Config(inner, dict(outer), self.config.pin_root, files)

    def _describe(self, config: Config, now: dict[str, _File], changed: dict[str, bytes]) -> None:
        """After loading everything: each file's map chunks, for the next change to be merged."""
        by_file: dict[str, set[str]] = {}
        for spec in config.inner_maps.values():
            by_file.setdefault(spec.location.file, set()).add(spec.name)
        with_outer = {spec.location.file for spec in config.outer_maps.values()}
        for name, f in now.items():
            f.outer = name in with_outer
            if name not in changed and f.spans is not None:
                continue
            spans = _spans(f.raw)
            ok = spans is not None and {n for n, _, _ in spans} == by_file.get(name, set())  # the cut saw what the parser saw
            f.spans = spans if ok else None
