"""Reading config files: size limits, YAML and JSON parsing, and where in a file a problem is.

Parsing uses yaml-rs (a Rust YAML 1.2 parser): on a 200,000-entry file it is
about 27x faster than PyYAML's libyaml loader (bench/yaml_loaders.py), it refuses
duplicate keys, and it bounds alias expansion and nesting. It keeps no line
numbers for values, so when validation finds a problem we compose that file once
more with PyYAML, which does, and look the problem's path up there. Valid
configs never pay for line numbers.

`.json` files are parsed with orjson (about 3x faster than yaml-rs per entry). JSON object
keys are always strings, so such a Source says so (`text_keys`) and validation reads a key
that spells a decimal integer as that integer where the key type is numeric. JSON is YAML
too, so the same PyYAML composition finds the line of a problem.
"""

from __future__ import annotations

import hashlib
import os
import re
import threading
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable

from kmesh_apply.config.chunks import CACHED_SECTIONS, Chunk, blank_out, split
from kmesh_apply.errors import Diagnostic

if TYPE_CHECKING:
    from kmesh_apply.config.blocks import Partial
    from kmesh_apply.config.cache import Cache, Layout, Pack, Payload

MAX_FILE_BYTES = 1 << 30
INLINE = "<inline>"
# Below this much YAML, parsing is too short to hide an import behind.
WARM_IMPORTS_CHARS = 256 * 1024


@dataclass
class Source:
    """One parsed document and the text it came from (for locating problems later).

    With the cache, `data` holds only the maps whose text changed; `reused` holds the
    inner maps taken from the cache, and `layout` how the file was cut (to store it
    back after a good load; `layout_stored`: the cache already holds this very file).
    A large file's text is not kept (38 MB for a million entries): `full_text` reads it
    again when a problem needs its line.
    """

    file: str
    text: str | None
    data: Any
    owned: bool = True  # False for a caller's mapping: validation then never modifies `data`
    reused: dict[str, Payload] = field(default_factory=dict)
    partial: dict[str, Partial] = field(default_factory=dict)  # changed maps whose entries come from blocks
    layout: Layout | None = None
    layout_stored: bool = False
    text_keys: bool = False  # mapping keys may be strings that stand for integers (JSON objects)
    reread: Callable[[], str | None] | None = None  # the text again, None if the file changed since

    def order(self, section: str) -> list[str]:
        """Every map name of a section of a cut file, in file order."""
        return [name for s, name, _, _ in self.layout[1] if s == section] if self.layout else []

    @property
    def digests(self) -> dict[str, bytes]:
        """Each plain and inner map's chunk digest, for a cut file."""
        return self.layout[2] if self.layout else {}

    def full_text(self) -> str | None:
        """The whole text of the document, as parsed; None when it is gone (the file changed since)."""
        return self.reread() if self.text is None and self.reread is not None else self.text


@dataclass
class Problem:
    """A diagnostic whose line is not known yet: `path` leads to it inside `file`'s document."""

    file: str
    path: tuple[Any, ...]
    message: str
    map: str = ""
    entry: str = ""
    kind: str = ""  # see Diagnostic.kind


CONFIG_SUFFIXES = (".yaml", ".yml", ".json")


def config_files(paths: Iterable[str | os.PathLike]) -> tuple[list[Path], list[Diagnostic]]:
    """Expand directories to their *.yaml/*.yml/*.json files (sorted); missing paths are diagnostics."""
    files: list[Path] = []
    problems: list[Diagnostic] = []
    for p in map(Path, paths):
        if p.is_dir():
            found = sorted(f for f in p.iterdir() if f.suffix in CONFIG_SUFFIXES and f.is_file())
            if not found:
                problems.append(Diagnostic("the directory holds no *.yaml, *.yml or *.json files", str(p)))
            files += found
        elif p.is_file():
            files.append(p)
        else:
            problems.append(Diagnostic("no such file or directory", str(p)))
    return files, problems


def read_source(path: Path, cache: Cache | None = None, blocks: bool = True) -> Source | Diagnostic:
    """A file parsed; with the cache, only its changed maps are parsed (and with `blocks`, only
    the changed blocks of a large map's entries), and a file unchanged since its last load is
    not even read (`_known`)."""
    file = str(path)
    reuse: _Reuse | None = None
    try:
        settled_before = time.time_ns() - SETTLED_NS
        with path.open("rb") as f:
            status = os.fstat(f.fileno())
            if status.st_size > MAX_FILE_BYTES:
                return Diagnostic(f"file too large: {status.st_size / 2**30:.1f} GiB (the limit is {MAX_FILE_BYTES >> 30} GiB)",
                                  file, kind="file too large")
            large = path.suffix != ".json" and status.st_size >= (cache.min_bytes if cache is not None else MIN_BLOCKS_BYTES)
            pack = cache.load(file) if cache is not None and large else None
            seen = _status_key(status) if max(status.st_mtime_ns, status.st_ctime_ns) < settled_before else None
            if cache is not None and pack is not None and seen is not None and blocks:
                known = _known(file, pack, seen, cache)
                if known is not None:
                    return known
            raw = f.read()
        if large and (pack is not None or blocks):  # checked without a decoded copy: only the rest is decoded
            _check_utf8(raw)
            reuse = _reuse(raw, file, cache, pack, blocks, seen) if cache is not None and pack is not None else \
                _blocks_only(raw, path)
        text = raw.decode("utf-8") if reuse is None or reuse.reduced is None else None
    except UnicodeDecodeError as e:
        return Diagnostic(f"not UTF-8 text ({e.reason} at byte {e.start})", file, kind="not UTF-8 text")
    except OSError as e:
        return Diagnostic(f"cannot read: {e.strerror}", file, kind="cannot read")
    halves = _halves(raw, text, reuse) if text is not None and path.suffix != ".json" else None
    del raw  # not needed past this point: 38 MB for a million entries, at the peak of the load
    if reuse is None:
        assert text is not None
        return parse_json(text, file) if path.suffix == ".json" else parse_text(text, file, halves)
    rest = reuse.reduced if reuse.reduced is not None else text  # the text with reused maps blanked out
    assert rest is not None
    src = parse_text(rest, file, halves if reuse.reduced is None else None)
    if isinstance(src, Source):
        reuse.fill(src, text)
    return src


# Without the config cache, files from this size have their large maps parsed block by block all
# the same (the cache's own threshold otherwise).
MIN_BLOCKS_BYTES = 256 * 1024


def _blocks_only(raw: bytes, path: Path) -> _Reuse | None:
    """Without the cache: the large inner maps of a file that can be cut, parsed block by block
    (config.blocks) so that their entries never exist as one parsed dict; None when nothing is cut."""
    from kmesh_apply.config.blocks import Partial, cut, entries_body

    chunks = split(raw)
    partial: dict[str, Partial] = {}
    blank = []
    for c in chunks or ():
        body = entries_body(raw, c) if c.section in CACHED_SECTIONS else None
        if body is not None:
            blocks = [(i.to_bytes(4, "little"), s, e) for i, (s, e) in enumerate(cut(raw, body[0], c.end))]
            partial[c.name] = Partial(None, [], raw, blocks, body[1])
            blank.append(Chunk(c.section, c.name, body[0], c.end))
    if not partial:
        return None
    whole = hashlib.sha256(raw).digest()
    return _Reuse(blank_out(raw, blank).decode(), {}, partial, None, False,
                  _rereader(path, lambda again: hashlib.sha256(again).digest() == whole))


# A file whose times are this much older than the moment it is read cannot change without its
# status changing too (file times tick at most this coarsely), so its status identifies its bytes.
SETTLED_NS = 2_000_000_000


def _status_key(status: os.stat_result) -> tuple[int, int, int, int, int]:
    return status.st_dev, status.st_ino, status.st_size, status.st_mtime_ns, status.st_ctime_ns


def _check_utf8(raw: bytes) -> None:
    """Raise UnicodeDecodeError unless `raw` is UTF-8, without holding a decoded copy of it."""
    import codecs

    decoder = codecs.getincrementaldecoder("utf-8")()
    view = memoryview(raw)
    step = 1 << 20
    for start in range(0, len(raw), step):
        try:
            decoder.decode(view[start:start + step])
        except UnicodeDecodeError as e:
            raise UnicodeDecodeError(e.encoding, raw, start + e.start, start + e.end, e.reason) from None
    decoder.decode(b"", final=True)


def _rereader(path: Path, same: Callable[[bytes], bool]) -> Callable[[], str | None]:
    """The file's text read again, if its bytes are still those that were parsed (`same` says)."""

    def reread() -> str | None:
        try:
            raw = path.read_bytes()
            return raw.decode("utf-8") if same(raw) else None
        except (OSError, UnicodeDecodeError):
            return None

    return reread


def _cache_rereader(path: Path, layout: Layout, cache: Cache) -> Callable[[], str | None]:
    return _rereader(path, lambda raw: cache.file_digest(raw) == layout[0])


def _known(file: str, pack: Pack, seen: tuple[int, int, int, int, int], cache: Cache) -> Source | None:
    """A file whose status is the one its pack recorded, with every inner map in the pack: only the
    text around the inner maps is parsed, and the file is not read (B's 38 MB: 0.2 s of reading,
    hashing and decoding). None when anything differs: the caller reads the file."""
    layout = pack.layout
    if layout is None or layout[4] is None or layout[4][0] != seen:
        return None
    inner = [name for section, name, _, _ in layout[1] if section in CACHED_SECTIONS]
    digests = layout[2]
    payloads = pack.payloads([digests[name] for name in inner])
    if any(digests[name] not in payloads for name in inner):
        return None
    try:
        reduced = zlib.decompress(layout[4][1]).decode("utf-8")
    except (zlib.error, UnicodeDecodeError):
        return None
    src = parse_text(reduced, file)
    if not isinstance(src, Source) or not isinstance(src.data, dict) or "btf" in src.data:
        return None  # the full read reports it with its line, or parses BTF-typed maps whole
    _Reuse(None, {name: payloads[digests[name]] for name in inner}, {}, layout, True,
           _cache_rereader(Path(file), layout, cache)).fill(src)
    return src


@dataclass
class _Reuse:
    """What the cache gives one file: maps to reuse, and the text left to parse."""

    reduced: str | None  # the text with reused maps blanked out (None: nothing reused)
    reused: dict[str, Payload]
    partial: dict[str, Partial]
    layout: Layout | None  # None without the cache
    layout_stored: bool
    reread: Callable[[], str | None]

    def fill(self, src: Source, text: str | None = None) -> None:
        """Give the parsed rest of the file what came from the cache; the whole `text` is kept only
        when it was decoded anyway, else read again if a problem needs a line."""
        for section in CACHED_SECTIONS if self.reused and isinstance(src.data, dict) else ():
            if src.data.get(section, {}) is None:
                src.data[section] = {}  # every map of the section came from the cache
        src.text, src.reread = text, self.reread
        src.reused, src.layout, src.layout_stored = self.reused, self.layout, self.layout_stored
        src.partial = self.partial


def _reuse(raw: bytes, file: str, cache: Cache, pack: Pack, blocks: bool,
           seen: tuple[int, int, int, int, int] | None) -> _Reuse | None:
    """Cut the file into map chunks (or take the cut stored for this very file) and look them up;
    None when it cannot be cut. A changed inner map whose previous version this file's pack
    holds is cut into blocks (config.blocks), and only its changed blocks are left to parse.
    `seen`: the file's status, when settled enough to know the file by next time."""
    from kmesh_apply.config.blocks import Partial, block_digests, entries_body

    whole = cache.file_digest(raw)
    stored = pack.layout is not None and pack.layout[0] == whole
    if stored:
        _, cut, digests, map_blocks, was_seen = pack.layout  # type: ignore[misc]
        chunks = [Chunk(*c) for c in cut]
    else:
        cut_now = split(raw)
        if cut_now is None:
            return None
        chunks, was_seen = cut_now, None
        view = memoryview(raw)
        digests = {c.name: cache.digest(c, view[c.start:c.end]) for c in chunks if c.section in CACHED_SECTIONS}
        map_blocks = {}
    inner = [c for c in chunks if c.section in CACHED_SECTIONS]
    _, _, before, blocks_before, _ = pack.layout or (None, None, {}, {}, None)
    payloads = pack.payloads([digests[c.name] for c in inner] + [before[c.name] for c in inner if c.name in before])
    reused = {c.name: payloads[digests[c.name]] for c in inner if digests[c.name] in payloads}
    hit = [c for c in inner if c.name in reused]
    blank = list(hit)
    partial: dict[str, Partial] = {}
    for c in inner:
        if stored or (c.name in reused and before.get(c.name) == digests[c.name]):
            if c.name in blocks_before:
                map_blocks[c.name] = blocks_before[c.name]
            continue
        body = entries_body(raw, c) if c.name not in reused else None
        if body is None:
            continue
        cut_blocks = block_digests(cache.salt, raw, c, body[0])
        if blocks:
            # Parsed block by block: a block the previous version holds is sliced from its entries,
            # and a map with none (new, or wholly changed) never exists as one parsed dict.
            previous = payloads.get(before.get(c.name, b""))
            known = {d for d, _ in blocks_before.get(c.name, ())}
            if previous is None or not any(d in known for d, _, _ in cut_blocks):
                previous = None
            part = partial[c.name] = Partial(previous[1] if previous else None,
                                             blocks_before[c.name] if previous else [], raw, cut_blocks, body[1])
            map_blocks[c.name] = part.counts  # filled in as the blocks are assembled
            blank.append(Chunk(c.section, c.name, body[0], c.end))  # the definition is parsed, the entries are not
        else:
            map_blocks[c.name] = [(d, raw.count(b"\n", s, e)) for d, s, e in cut_blocks]
    reduced = blank_out(raw, blank).decode() if blank else None
    if seen is not None and (was_seen is None or was_seen[0] != seen):
        # What `_known` parses next time, when every inner map comes from the pack: the rest of the file.
        was_seen, stored = (seen, zlib.compress(blank_out(raw, inner), 1)), False
    layout = (whole, [(c.section, c.name, c.start, c.end) for c in chunks], digests, map_blocks, was_seen)
    return _Reuse(reduced, reused, partial, layout, stored and len(hit) == len(inner),
                  _cache_rereader(Path(file), layout, cache))


# From this size, a file whose inner maps can be cut apart is parsed as two documents at once.
PARALLEL_CHARS = 1 << 20


def _halves(raw: bytes, text: str, reuse: _Reuse | None) -> tuple[int, int] | None:
    """Where the first half of a large file's inner maps lies in its text (start, end), for
    `parse_text` to parse them beside the rest; None for a file that is small, not ASCII (byte
    offsets are then no text offsets) or not plain enough to cut."""
    if len(text) < PARALLEL_CHARS or not raw.isascii():
        return None
    cut = [Chunk(*c) for c in reuse.layout[1]] if reuse is not None and reuse.layout is not None else split(raw)
    inner = [c for c in cut or () if c.section == "inner_maps"]
    if len(inner) < 2:
        return None
    half = inner[:len(inner) // 2]
    return half[0].start, half[-1].end


def parse_text(text: str, file: str, halves: tuple[int, int] | None = None) -> Source | Diagnostic:
    """Parse YAML text; a syntax error, a duplicate key or an alias bomb is a diagnostic. `halves`:
    where the first half of the file's inner maps lies (`_halves`): those are parsed as a document
    of their own on another core, beside the rest (yaml-rs parses without holding the GIL: a
    Kmesh-scale file in about half the time on two cores); anything unusual parses it whole."""
    import yaml_rs

    limits = yaml_rs.AliasLimits(max_alias_expansions_per_anchor=10_000, max_replay_stack_depth=64,
                                 max_total_replayed_events=1_000_000)
    if halves is not None:
        data = _parse_halves(text, halves, limits)
        if data is not None:
            return Source(file, text, data)
    # Blank lines (the maps a cache load leaves out) parse in no time: only the rest is worth warming for.
    warming = _warm_imports() if len(text) - text.count("\n") >= WARM_IMPORTS_CHARS else None
    try:
        data = yaml_rs.loads(text, parse_datetime=False, alias_limits=limits)
    except yaml_rs.YAMLDecodeError as e:
        msg = str(e)
        m = re.search(r"line (\d+)", msg)
        line = int(m.group(1)) if m else 0
        first = msg.splitlines()[0]
        detail = [ln.strip() for ln in msg.splitlines()[1:] if ln.strip() and not ln.strip().startswith(("|", "^")) and "|" not in ln]
        if first.startswith("duplicate mapping key"):
            line = duplicate_key_line(text)
            return Diagnostic(f"{first}: a key may appear once in a mapping", file, line, kind="duplicate key")
        if "alias" in first:
            return Diagnostic(f"{first}: aliases expand too far (a YAML alias bomb?)", file, line, kind="alias bomb")
        if "recursion limit exceeded" in msg:
            return Diagnostic("invalid YAML: nested too deeply (more than 255 levels)", file, line, kind="invalid YAML")
        return Diagnostic("invalid YAML: " + "; ".join([re.sub(r"\s*at line \d+, column \d+", "", first), *detail]), file,
                          line, kind="invalid YAML")
    except RecursionError:
        return Diagnostic("invalid YAML: nested too deeply", file, kind="invalid YAML")
    except TypeError:  # yaml-rs builds a dict of every mapping: a key that is a mapping or a list cannot be one
        return Diagnostic("invalid YAML: a mapping key that is itself a mapping or a list (keys are scalars here)",
                          file, kind="invalid YAML")
    finally:
        if warming is not None:
            warming.join()
    return Source(file, text, data)


def _parse_halves(text: str, halves: tuple[int, int], limits: Any) -> Any | None:
    """The document, parsed as two at once: the first half of the inner maps under an `inner_maps:`
    of their own, and the rest of the file with those lines blank (so its line numbers hold).
    None on any error, a map name in both, or a shape other than plain mappings: the caller then
    parses the whole text, which reports errors with their lines."""
    import yaml_rs

    start, end = halves
    first = "inner_maps:\n" + text[start:end]
    rest = text[:start] + "\n" * text.count("\n", start, end) + text[end:]
    parsed: list[Any] = []

    def parse_first() -> None:
        try:
            parsed.append(yaml_rs.loads(first, parse_datetime=False, alias_limits=limits))
        except (yaml_rs.YAMLDecodeError, RecursionError, TypeError):
            pass

    thread = threading.Thread(target=parse_first, name="kmesh-parse-half")
    thread.start()
    warming = _warm_imports()
    try:
        data = yaml_rs.loads(rest, parse_datetime=False, alias_limits=limits)
    except (yaml_rs.YAMLDecodeError, RecursionError, TypeError):  # what parse_text reports, with its line
        return None
    finally:
        thread.join()
        warming.join()
    head = parsed[0] if parsed else None
    if not (isinstance(data, dict) and isinstance(head, dict) and list(head) == ["inner_maps"]
            and isinstance(head["inner_maps"], dict) and isinstance(data.get("inner_maps"), dict)):
        return None
    later = data["inner_maps"]
    if not head["inner_maps"].keys().isdisjoint(later):
        return None  # a name defined twice: the whole parse reports it, with its line
    data["inner_maps"] = {**head["inner_maps"], **later}  # in file order: the first half came first
    return data


def parse_json(text: str, file: str) -> Source | Diagnostic:
    """Parse JSON text with orjson; a syntax error or a key given twice in one object is a diagnostic."""
    import orjson

    try:
        data = orjson.loads(text)
    except orjson.JSONDecodeError as e:
        return Diagnostic(f"invalid JSON: {e.msg} (column {e.colno})", file, e.lineno, kind="invalid JSON")
    if _repeats_a_key(text, data):  # orjson keeps the last of repeated keys, silently
        return Diagnostic("duplicate key: a key may appear once in an object", file, duplicate_key_line(text),
                          kind="duplicate key")
    return Source(file, text, data, text_keys=True)


def _repeats_a_key(text: str, data: Any) -> bool:
    """Whether the text holds more object keys than the parsed data. Outside strings, a colon follows
    each key and nothing else; a text without a backslash has strings exactly as orjson's compact dump
    of the data writes them (15 ms for 200,000 entries), so the two count the same colons unless a
    key was repeated. With escapes, count the keys by tokenizing the text and walking the data."""
    import orjson

    if "\\" not in text:
        try:
            return text.count(":") != orjson.dumps(data).count(b":")
        except TypeError:  # nested beyond orjson's 254 levels for writing (it reads 1,024): count the keys
            pass
    return sum(1 for m in _JSON_STRING.finditer(text) if m.group(1)) != _key_count(data)


_JSON_STRING = re.compile(r'"(?:[^"\\]|\\.)*"([ \t\r\n]*:)?')


def _key_count(data: Any) -> int:
    """How many keys the parsed objects hold, all the way down."""
    count, stack = 0, [data]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            count += len(node)
            stack.extend(v for v in node.values() if isinstance(v, (dict, list)))
        elif isinstance(node, list):
            stack.extend(v for v in node if isinstance(v, (dict, list)))
    return count


def _warm_imports() -> threading.Thread:
    """Import jsonschema (about 45 ms), which validation needs next, on another core while
    yaml-rs parses: it parses without holding the GIL. Started only around the parse, as
    anything else that drops the GIL meanwhile (hashing, I/O) would wait to get it back."""

    def warm() -> None:
        try:
            import jsonschema  # noqa: F401
        except Exception:  # noqa: BLE001  (reported where it is really imported)
            pass

    thread = threading.Thread(target=warm, name="kmesh-warm-imports", daemon=True)
    thread.start()
    return thread


# ---- locating problems (error path only) -----------------------------------------------


def _compose(text: str) -> Any:
    import yaml

    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    try:
        return yaml.compose(text, Loader=loader)
    except (yaml.YAMLError, RecursionError):
        return None


def duplicate_key_line(text: str) -> int:
    """The line of the second occurrence of a repeated key (PyYAML keeps duplicates as nodes). Linear in
    the text: an alias bomb of nine nested anchors is walked once per anchor, not 9^9 times."""
    import yaml

    root = _compose(text)
    stack = [root] if root is not None else []
    walked: set[int] = set()  # an alias is the very node it names: walk each once, not once per path to it
    while stack:
        node = stack.pop()
        if id(node) in walked:
            continue
        walked.add(id(node))
        if isinstance(node, yaml.MappingNode):
            seen: set[str] = set()
            for k, v in node.value:
                key = getattr(k, "value", None)
                if isinstance(key, str):
                    if key in seen:
                        return k.start_mark.line + 1
                    seen.add(key)
                stack.append(v)
        elif isinstance(node, yaml.SequenceNode):
            stack.extend(node.value)
    return 0


def _same_key(scalar: str, want: Any) -> bool:
    if isinstance(want, int) and not isinstance(want, bool):  # (str() of an int of 4,300 digits raises)
        try:
            return int(scalar.replace("_", ""), 0) == want or scalar == str(want)
        except ValueError:
            return False
    return scalar == str(want)


def locate(root: Any, path: tuple[Any, ...]) -> int:
    """The 1-based line `path` leads to in a composed document (the deepest node reached)."""
    import yaml

    node, line = root, (root.start_mark.line + 1 if root is not None else 0)
    for step in path:
        if isinstance(node, yaml.MappingNode):
            for k, v in node.value:
                if isinstance(k, yaml.ScalarNode) and _same_key(k.value, step):
                    node, line = v, k.start_mark.line + 1
                    break
            else:
                return line
        elif isinstance(node, yaml.SequenceNode) and isinstance(step, int) and 0 <= step < len(node.value):
            node = node.value[step]
            line = node.start_mark.line + 1
        else:
            return line
    return line


def resolve(problems: list[Problem], sources: dict[str, Source]) -> list[Diagnostic]:
    """Turn problems into diagnostics with lines, composing each affected file once."""
    roots: dict[str, Any] = {}
    out = []
    for p in problems:
        src = sources.get(p.file)
        line = 0
        if src is not None and p.file not in roots:
            text = src.full_text()
            roots[p.file] = _compose(text) if text is not None else None
        if src is not None and roots[p.file] is not None:
            line = locate(roots[p.file], p.path)
        out.append(Diagnostic(p.message, p.file, line, p.map, p.entry, p.kind))
    return out
