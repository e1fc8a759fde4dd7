"""A cache of validated, encoded inner maps, keyed by a digest of each map's YAML text.

Why: a Kmesh-scale configuration holds 100,000 entries, and re-parsing and re-encoding
all of them on every run costs most of a one-service change. A map whose text (its
chunk, see `chunks`) was validated before is taken from here instead, and only the
maps whose text changed are parsed. Only maps that passed every check are stored,
so a hit can only reproduce a success; outer maps are never cached (their checks
depend on the inner maps).

The cache lives in `$KMESH_APPLY_CACHE_DIR`, else `$XDG_CACHE_HOME/kmesh-apply`, else
`~/.cache/kmesh-apply`; `KMESH_APPLY_CACHE_DIR=off` turns it off. It holds one pack
per config file (the maps of that file's last successful load, and how the file was cut) and at most
`KEEP_PACKS` of them; a file with no pack of its own looks in the newest pack, so a
copy of a config in another directory hits too. A pack is a marshal blob: it is
trusted like Python's own bytecode cache, so it is read only from a directory that
the current user owns and that no one else can write. A pack that cannot be read
is ignored; the cache never changes a result, only how fast it comes.
"""

from __future__ import annotations

import hashlib
import marshal
import os
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

from kmesh_apply.config.chunks import Chunk
from kmesh_apply.errors import KmeshError
from kmesh_apply.private import open_private_dir, write_private

CACHE_FORMAT = 5
KEEP_PACKS = 4
KEEP_SHAPES = 256
SHAPES_FILE = "schema-shapes"
# Pairs of (desired, live) entry fingerprints a plan found equal (see planner.make_plan).
EQUAL_FILE = "equal-entries"
KEEP_EQUAL = 256
# Digests of large maps' entries summed in the kernel (kernel.digest) under a key of this cache's
# own, by the entries' fingerprint: a later plan compares one number without hashing the config.
DIGESTS_FILE = "entry-digests"
KEEP_DIGESTS = 256
# Smaller files parse faster than a pack loads.
MIN_FILE_BYTES = 256 * 1024
OFF = "off"

# What a cached inner map carries: its definition without entries, and the encoded entries
# as `Entries` takes them: (key size, value size, packed keys, packed values).
Payload = tuple[dict[str, Any], tuple[int, int, bytes, bytes]]
# How an unchanged file is known without reading it (loader.read_source): the file's status
# (device, inode, size, modification and change times in ns) when those bytes were read, and the
# text left to parse once every inner map is taken from the pack (zlib).
Seen = tuple[tuple[int, int, int, int, int], bytes]
# A file's cut, kept in its pack so that an unchanged file is not cut and hashed again: the
# digest of the whole file, its chunks as (section, name, start, end), each inner map's digest,
# the blocks of the inner maps whose entries are cut into blocks (config.blocks), and how it was seen.
Layout = tuple[bytes, list[tuple[str, str, int, int]], dict[str, bytes], dict[str, list[tuple[bytes, int]]], Seen | None]


@dataclass
class Pack:
    """One pack as read: its maps stay encoded until some map is looked up with a hit, since a file
    whose maps all changed would otherwise decode them for nothing (0.3 s for a million entries)."""

    # How the pack's file was cut: for this very file (same bytes), or for the previous version of
    # its maps (config.blocks), which is sound for a copy of a config too (blocks go by digest).
    layout: Layout | None = None
    digests: frozenset[bytes] = frozenset()
    blob: bytes = b""  # marshal of {digest: Payload}

    def payloads(self, wanted: Iterable[bytes]) -> dict[bytes, Payload]:
        hits = [d for d in wanted if d in self.digests]
        if not hits:
            return {}
        try:
            maps = marshal.loads(self.blob)
        except (ValueError, EOFError, TypeError):
            return {}
        return {d: maps[d] for d in hits if d in maps} if isinstance(maps, dict) else {}


def cache_dir() -> Path | None:
    """The cache directory, or None when the cache is off."""
    env = os.environ.get("KMESH_APPLY_CACHE_DIR")
    if env:
        return None if env == OFF else Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "kmesh-apply"


def _salt(ncpus: int) -> bytes:
    """Anything besides a chunk's text that its outcome depends on: the code that checks and
    encodes it (its source, so an upgrade or a local edit never reuses stale bytes: every file of
    the config package, the JSON Schema included, the C type model and the packed entries) and the CPU count.
    Read as files, not imported: the modules that check a config sit above this one."""
    package = Path(__file__).parent
    h = hashlib.sha256(f"{CACHE_FORMAT}\0{ncpus}\0".encode())
    for file in sorted([*package.glob("*.py"), *package.glob("*.json")]) + [package.parent / "ctype.py", package.parent / "entries.py"]:
        h.update(file.name.encode() + b"\0")
        h.update(file.read_bytes())
    return h.digest()


class Cache:
    """The packs of one cache directory; every method degrades to a miss on any OS error."""

    def __init__(self, root: Path, ncpus: int):
        self.root = root
        self.salt = _salt(ncpus)
        self.min_bytes = MIN_FILE_BYTES
        self._shapes: list[bytes] = []  # as read, oldest first
        self._equal: list[tuple[bytes, bytes]] = []  # as read, oldest first
        self._digests: tuple[bytes, list[tuple[bytes, int, int]]] | None = None  # key, records (oldest first)

    @classmethod
    def open(cls, ncpus: int | None = None) -> Cache | None:
        """The cache of this user and host (`ncpus`: the possible CPUs, asked of the kernel when
        not given); None when it is off, or the CPU count or the sources cannot be read."""
        root = cache_dir()
        if root is None:
            return None
        try:
            if ncpus is None:
                from kmesh_apply.kernel.maps import possible_cpus

                ncpus = possible_cpus()
            return cls(root, ncpus)
        except (OSError, KmeshError):
            return None

    def digest(self, chunk: Chunk, text: bytes | memoryview) -> bytes:
        """A map's cache key: its section and exact text (UTF-8), salted with what else its outcome depends on
        (SHA-256: with the SHA instructions of current x86 CPUs, about twice as fast as BLAKE2b)."""
        h = hashlib.sha256(self.salt)
        h.update(chunk.section.encode() + b"\0")
        h.update(text)
        return h.digest()[:16]

    def _usable(self, create: bool = False) -> bool:
        """Only a directory of ours that no one else may write or swap (`private`): a pack is loaded
        as trusted data. `create`: made (mode 0700) when missing."""
        try:
            fd = open_private_dir(str(self.root.absolute()), create)
        except (KmeshError, OSError):
            return False
        if fd is None:
            return False
        os.close(fd)
        return True

    def _pack_path(self, file: str) -> Path:
        key = hashlib.blake2b(os.path.realpath(file).encode(), digest_size=12).hexdigest()
        return self.root / f"{key}.pack"

    def file_digest(self, data: bytes) -> bytes:
        """The key of a whole file's layout."""
        return hashlib.sha256(self.salt + b"file\0" + data).digest()[:16]

    def load(self, file: str) -> Pack:
        """The pack of `file`, else the newest other pack; empty when neither can be read (or is stale)."""
        if not self._usable():
            return Pack()
        own = self._pack_path(file)
        pack = self._read_pack(own)
        if pack is None:  # none of its own (or a stale one): the newest other pack
            others = sorted(set(self.root.glob("*.pack")) - {own}, key=_mtime, reverse=True)
            pack = self._read_pack(others[0]) if others else None
        return pack or Pack()

    def _read_pack(self, path: Path) -> Pack | None:
        content = self._read(path)
        if not (isinstance(content, tuple) and len(content) == 3 and isinstance(content[2], bytes)):
            return None
        layout, digests, blob = content
        return Pack(layout, frozenset(digests), blob)

    def save(self, file: str, maps: dict[bytes, Payload], layout: Layout) -> None:
        """Replace `file`'s pack and drop the oldest packs beyond KEEP_PACKS."""
        if self._write(self._pack_path(file), (layout, list(maps), marshal.dumps(maps))):
            packs = sorted(self.root.glob("*.pack"), key=_mtime, reverse=True)
            for old in packs[KEEP_PACKS:]:
                old.unlink(missing_ok=True)

    def known_shapes(self) -> set[bytes]:
        """Digests of document shapes the JSON Schema passed (see validate.schema_problems)."""
        shapes = self._read(self.root / SHAPES_FILE) if self._usable() else None
        self._shapes = shapes if isinstance(shapes, list) else []
        return set(self._shapes)

    def save_shapes(self, shapes: set[bytes]) -> None:
        """Add the shapes not known at `known_shapes`; the newest KEEP_SHAPES stay."""
        new = sorted(shapes.difference(self._shapes))
        if new:
            self._write(self.root / SHAPES_FILE, (self._shapes + new)[-KEEP_SHAPES:])

    def known_equal(self) -> set[tuple[bytes, bytes]]:
        """Fingerprint pairs of large maps' entries found equal by earlier plans."""
        pairs = self._read(self.root / EQUAL_FILE) if self._usable() else None
        self._equal = pairs if isinstance(pairs, list) else []
        return {tuple(p) for p in self._equal if isinstance(p, tuple) and len(p) == 2}  # type: ignore[misc]

    def save_equal(self, pairs: set[tuple[bytes, bytes]]) -> None:
        """Add the pairs not known at `known_equal`; the newest KEEP_EQUAL stay."""
        new = sorted(pairs.difference(self._equal))
        if new:
            self._write(self.root / EQUAL_FILE, (self._equal + new)[-KEEP_EQUAL:])

    def read_blob(self, name: str) -> Any:
        """What `write_blob` stored under `name` (a file name in the cache), or None."""
        return self._read(self.root / name) if self._usable() else None

    def write_blob(self, name: str, content: Any) -> None:
        """Store plain data (marshal-able) under `name`, atomically."""
        self._write(self.root / name, content)

    def entry_digests(self) -> tuple[tuple[int, int], dict[bytes, tuple[int, int]]] | None:
        """The SipHash key recorded digests are made with, and those digests by the fingerprint of the
        entries they describe (count, sum). The key is drawn once and kept only here: this directory
        is the user's own and no one else's (None when it is not, or cannot be made so)."""
        if not self._usable(create=True):
            return None
        content = self._read(self.root / DIGESTS_FILE)
        if isinstance(content, tuple) and len(content) == 2 and isinstance(content[0], bytes) and len(content[0]) == 16:
            key, records = content
        else:
            key, records = secrets.token_bytes(16), []
        self._digests = (key, [r for r in records if isinstance(r, tuple) and len(r) == 3])
        return (int.from_bytes(key[:8], "little"), int.from_bytes(key[8:], "little")), \
            {fp: (count, total) for fp, count, total in self._digests[1]}

    def save_digests(self, records: dict[bytes, tuple[int, int]]) -> None:
        """Add these digests (made with the key `entry_digests` gave); the newest KEEP_DIGESTS stay."""
        if self._digests is None or not records:
            return
        key, old = self._digests
        kept = [r for r in old if r[0] not in records] + [(fp, c, t) for fp, (c, t) in sorted(records.items())]
        self._write(self.root / DIGESTS_FILE, (key, kept[-KEEP_DIGESTS:]))

    def _read(self, path: Path) -> Any:
        """A blob's content, or None when it is missing, unreadable or from another salt."""
        try:
            fmt, salt, content = marshal.loads(path.read_bytes())
        except (OSError, ValueError, EOFError, TypeError):
            return None
        return content if fmt == CACHE_FORMAT and salt == self.salt else None

    def _write(self, path: Path, content: Any) -> bool:
        """Write atomically (a reader sees the old blob or the new one); False on any error."""
        if not self._usable(create=True):
            return False
        try:
            write_private(path, marshal.dumps((CACHE_FORMAT, self.salt, content)))
        except KmeshError:
            return False
        return True


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return 0.0
