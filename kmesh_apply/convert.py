"""Entries converted from one layout to another, field by field (contract section 10).

A migration keeps a map's data across a change of its key or value type: every live entry is
read in the old layout and written in the new one. Conversion goes by field name, recursively:
structs by field, unions by member, arrays by index, enums by name, integers and bitfields by
value. A field new in the new layout takes its `defaults:` value (else zero); `renamed:` says
which old field a renamed one was. What cannot keep the data is refused, naming the entries: a
value that does not fit a narrowed field, two old keys that become one new key, more entries
than the new max_entries. A field the new layout no longer has is dropped: that is what
removing it means, and the plan says so.

Maps hold millions of entries as packed buffers (`entries.Entries`), so a pair of layouts is
compiled once into a `Converter` that works on whole columns: bytes that only move are copied
as strided slices (no Python code per entry), and only retyped fields are unpacked into
integers. Pure: it knows nothing of the kernel or of YAML files.
"""

from __future__ import annotations

import json
import re
import struct
from dataclasses import dataclass, field
from itertools import groupby
from typing import Any, Mapping, Sequence, Union

from kmesh_apply.config.codecs import CodecError, decode, encode, per_cpu_stride
from kmesh_apply.ctype import (Addr, Array, Bool, Bytes, Chars, CType, CUnion, Enum, Int, Raw, Struct,
                               copy_runs, records)
from kmesh_apply.entries import Entries
from kmesh_apply.errors import KmeshError
from kmesh_apply.wording import count

# A field path: names and array indexes, `addr.port` or `prio_endpoint_count[6]`. EVERY stands
# for every element of an array in the changes a plan shows ("backends[].weight added").
Path = tuple[Union[str, int], ...]
EVERY = -1
_PIECE_RE = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)((?:\[\d+\])*)")
PARTS = ("key", "value")
SHOWN = 3  # entries named per problem in a refusal


class LayoutError(KmeshError):
    """The old layout cannot become the new one as asked (a field changed into something else,
    a `defaults:` or `renamed:` path that names nothing): said before any entry is read."""


class MigrationRefused(KmeshError):
    """Entries that would lose data in the new layout; `problems` name them, one line each."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("the live entries cannot keep their data in the new layout:\n  " + "\n  ".join(problems))


def parse_path(text: str) -> Path:
    """`a.b[3].c` as ("a", "b", 3, "c")."""
    out: list[str | int] = []
    for piece in text.split(".") if isinstance(text, str) else [""]:
        m = _PIECE_RE.fullmatch(piece)
        if m is None:
            raise LayoutError(f"{text!r} is not a field path like addr.port or prio_endpoint_count[6]")
        out.append(m.group(1))
        out += [int(d) for d in re.findall(r"\d+", m.group(2))]
    return tuple(out)


def path_text(path: Path) -> str:
    return "".join(f"[{'' if p == EVERY else p}]" if isinstance(p, int) else f".{p}" for p in path).lstrip(".")


def type_text(t: CType, bits: int = 0) -> str:
    """A type as a plan names it: its spec when short (`u32`, `char[16]`, `u32:3`), else its kind."""
    if isinstance(t, Struct):
        return "a struct"
    if isinstance(t, CUnion):
        return "a union"
    if isinstance(t, Enum):
        return f"enum {t.base.name}" + (f":{bits}" if bits else "")
    if isinstance(t, Raw):
        return f"{t.size} bytes"
    if isinstance(t, Array) and not isinstance(t.spec(), str):
        return f"{type_text(t.elem)}[{t.length}]"
    return f"{t.spec()}:{bits}" if bits else str(t.spec())


# ---------------------------------------------------------------- what changed, for plans


@dataclass(frozen=True)
class LayoutChange:
    """One difference between two layouts of a key or a value."""

    kind: str  # added | removed | renamed | retyped | moved
    path: str  # in the new layout (the old one for `removed`)
    detail: str = ""  # "= 6", "from endpoint_count", "u32 -> u16", "offset 8 -> 4"

    def text(self) -> str:
        if self.kind == "renamed":
            return f"field {self.detail} renamed to {self.path}"
        said = f"field {self.path} {self.kind}" if self.path else self.kind  # the whole key or value retyped
        return said + (f" ({self.detail})" if self.detail else "")


@dataclass(frozen=True)
class LayoutDiff:
    """How a key's or value's layout changes: the field changes and the sizes."""

    part: str  # key | value
    changes: tuple[LayoutChange, ...]
    old_size: int
    new_size: int

    @property
    def changed(self) -> bool:
        return bool(self.changes) or self.old_size != self.new_size

    def text(self) -> str:
        """`value: field lb_strict_prio removed, 128 -> 124 bytes`."""
        items = [c.text() for c in self.changes]
        if self.old_size != self.new_size:
            items.append(f"{self.old_size} -> {count(self.new_size, 'byte')}")
        return f"{self.part}: {', '.join(items)}"


# ---------------------------------------------------------------- the compiled operations


@dataclass(frozen=True)
class _Node:
    """A type at its place in a record: byte offset, and for a bitfield its width and first bit."""

    type: CType
    offset: int
    path: Path
    bits: int = 0
    bit_offset: int = 0  # from the record's first bit

    def children(self) -> list[_Node]:
        t = self.type
        if isinstance(t, Struct):
            return [_Node(f.type, self.offset + f.offset, self.path + (f.name,), f.bits, 8 * self.offset + f.bit_offset)
                    for f in t.fields]
        if isinstance(t, Array):
            return [_Node(t.elem, self.offset + i * t.elem.size, self.path + (i,)) for i in range(t.length)]
        return []

    def child(self, part: str | int) -> _Node | None:
        t = self.type
        if isinstance(t, Struct) and isinstance(part, str):
            return next((c for c in self.children() if c.path[-1] == part), None)
        if isinstance(t, Array) and isinstance(part, int) and 0 <= part < t.length:
            return _Node(t.elem, self.offset + part * t.elem.size, self.path + (part,))
        return None


_INT_CODES = {1: "B", 2: "H", 4: "I", 8: "Q"}


@dataclass(frozen=True)
class _Slot:
    """Where integers lie in a record: `repeat` consecutive ones of `width` bytes (an array's
    elements), or one bitfield read from the `width` bytes that hold it."""

    offset: int
    width: int
    big_endian: bool
    signed: bool
    bits: int = 0  # a bitfield's width; 0 for whole integers
    shift: int = 0  # a bitfield's first bit within its bytes
    repeat: int = 1

    @staticmethod
    def of(node: _Node, repeat: int = 1) -> _Slot:
        t = node.type
        base = t.base if isinstance(t, Enum) else t
        signed = isinstance(base, Int) and base.signed
        if node.bits:
            first, last = node.bit_offset // 8, (node.bit_offset + node.bits - 1) // 8
            return _Slot(first, last - first + 1, False, signed, node.bits, node.bit_offset - 8 * first)
        return _Slot(node.offset, t.size, isinstance(base, Int) and base.big_endian, signed, repeat=repeat)

    def range(self, t: CType) -> tuple[int, int]:
        if isinstance(t, Bool) and not self.bits:
            return 0, 1
        bits = self.bits or 8 * self.width
        return (-(1 << (bits - 1)), (1 << (bits - 1)) - 1) if self.signed else (0, (1 << bits) - 1)

    def _format(self, n: int, signed: bool) -> str | None:
        code = _INT_CODES.get(self.width)
        if code is None:
            return None
        return f"{'>' if self.big_endian else '<'}{n * self.repeat}{code.lower() if signed else code}"

    def read(self, data: Any, stride: int, n: int) -> list[int]:
        col = _gather(data, stride, self.offset, self.width * self.repeat, n)
        fmt = self._format(n, self.signed and not self.bits)
        if fmt is not None:
            values = list(struct.unpack(fmt, col))
        else:
            w = self.width
            values = [int.from_bytes(col[i:i + w], "little") for i in range(0, len(col), w)]
        if not self.bits:
            return values
        shift, mask, sign = self.shift, (1 << self.bits) - 1, 1 << (self.bits - 1)
        values = [v >> shift & mask for v in values]
        if self.signed:
            values = [v - 2 * sign if v & sign else v for v in values]
        return values

    def write(self, out: bytearray, stride: int, n: int, values: list[int]) -> None:
        if self.bits:  # or the bits into the bytes that hold them (other bitfields share them)
            held = _Slot(self.offset, self.width, False, False).read(out, stride, n)
            shift, mask = self.shift, (1 << self.bits) - 1
            values = [h | (v & mask) << shift for h, v in zip(held, values)]
        fmt = self._format(n, self.signed and not self.bits)
        if fmt is not None:
            col = struct.pack(fmt, *values)
        else:
            col = b"".join(v.to_bytes(self.width, "little") for v in values)
        copy_runs(out, stride, col, self.width * self.repeat, ((0, self.offset, self.width * self.repeat),), n)


@dataclass(frozen=True)
class _Number:
    """An integer, enum, bool or bitfield converted by value (widened, narrowed, byte order, enum names)."""

    src: _Slot
    dst: _Slot
    path: Path
    what: str  # "u32 -> u16", for messages
    lo: int
    hi: int
    checked: bool  # some old values may not fit
    table: tuple[tuple[int, int | None], ...] = ()  # enum: old number -> new number (None: no such name now)


@dataclass(frozen=True)
class _ZeroCheck:
    """Old bytes the new layout has no room for (a narrowed array or string): they must be zero."""

    offset: int
    width: int
    path: Path
    what: str


@dataclass(frozen=True)
class _UnionOp:
    """A union whose members changed: each value converts as the first member that holds all its
    bytes and converts without loss (the member `show` names it by, unless that one would lose data)."""

    src: int
    src_size: int
    dst: int
    dst_size: int
    span: int  # bytes past the largest old member are tail padding
    members: tuple[tuple[str, int, Converter | None], ...]  # old member, its size, its conversion (None: removed)
    path: Path


@dataclass(frozen=True)
class Failure:
    """One record that cannot keep its data, and why."""

    index: int
    path: Path
    reason: str  # "does not fit u16 (0..65535)"
    value: str = ""  # what the record holds there, when that says more than the reason


@dataclass(frozen=True, eq=False)
class Converter:
    """One layout to another, compiled: a template record (zeros and defaults), byte runs to copy,
    and the fields converted by value."""

    old: CType
    new: CType
    template: bytes
    copies: tuple[tuple[int, int, int], ...]  # (old offset, new offset, width)
    numbers: tuple[_Number, ...]
    checks: tuple[_ZeroCheck, ...]
    unions: tuple[_UnionOp, ...]
    changes: tuple[LayoutChange, ...]
    injective: bool  # different old records always give different new ones (no key collision possible)

    @property
    def identity(self) -> bool:
        """Whether every record's bytes stay as they are."""
        return self.copies == ((0, 0, self.old.size),) and self.old.size == self.new.size and not (
            self.numbers or self.checks or self.unions)

    @property
    def lossless(self) -> bool:
        """Whether every record converts, whatever it holds (nothing is checked)."""
        return not (self.checks or self.unions or any(n.checked for n in self.numbers))

    def convert(self, data: Any, n: int, src_stride: int = 0, dst_stride: int = 0) -> tuple[Any, list[Failure]]:
        """`n` records of the old layout (each `src_stride` bytes apart, by default its size) in the
        new one, and the records that cannot keep their data (converted as far as they go)."""
        ss, ds = src_stride or self.old.size, dst_stride or self.new.size
        if self.identity and ss == ds:
            return data, []
        template = self.template.ljust(ds, b"\0")
        out = bytearray(ds * n) if not any(template) else bytearray(template) * n
        copy_runs(out, ds, data, ss, self.copies, n)
        failures: list[Failure] = []
        for number in self.numbers:
            failures += _convert_numbers(number, data, ss, out, ds, n)
        for union in self.unions:
            failures += _convert_unions(union, data, ss, out, ds, n)
        for check in self.checks:
            failures += _check_zero(check, data, ss, n)
        return out, failures


def _gather(data: Any, stride: int, offset: int, width: int, n: int) -> bytearray:
    """The `width` bytes at `offset` of every record, one after another."""
    col = bytearray(width * n)
    copy_runs(col, width, data, stride, ((offset, 0, width),), n)
    return col


def _convert_numbers(op: _Number, data: Any, ss: int, out: bytearray, ds: int, n: int) -> list[Failure]:
    values = op.src.read(data, ss, n)
    failures: list[Failure] = []
    if op.table:
        table = dict(op.table)
        names = [table.get(v, v) for v in values]
        if None in names:
            failures += _failures(op, [i for i, v in enumerate(names) if v is None], values,
                                  "enum values whose names the new enum lacks")
        values = [v if v is not None else 0 for v in names]
    if op.checked and values and (min(values) < op.lo or max(values) > op.hi):
        bad = [i for i, v in enumerate(values) if not op.lo <= v <= op.hi]
        failures += _failures(op, bad, values, f"values that do not fit {op.what.rpartition(' -> ')[2]} ({op.lo}..{op.hi})")
        for i in bad:
            values[i] = 0
    op.dst.write(out, ds, n, values)
    return failures


def _failures(op: _Number, bad: list[int], values: list[int], why: str) -> list[Failure]:
    r = op.src.repeat
    return [Failure(i // r, op.path + ((i % r,) if r > 1 else ()), why, str(values[i])) for i in bad]


def _convert_unions(op: _UnionOp, data: Any, ss: int, out: bytearray, ds: int, n: int) -> list[Failure]:
    col = _gather(data, ss, op.src, op.src_size, n)
    size, span = op.src_size, op.span
    converted = bytearray(op.dst_size * n)
    pending = list(range(n))
    first_failure: dict[int, Failure] = {}
    for name, msize, conv in op.members:
        zero = bytes(span - msize)
        holds = [i for i in pending if col[i * size + msize:i * size + span] == zero]
        if conv is None or not holds:
            continue
        sub = bytearray(msize * len(holds))
        for j, i in enumerate(holds):
            sub[j * msize:(j + 1) * msize] = col[i * size:i * size + msize]
        result, failures = conv.convert(sub, len(holds))
        failed = {f.index for f in failures}
        for f in failures:
            first_failure.setdefault(holds[f.index], Failure(holds[f.index], f.path, f.reason, f.value))
        nsize = conv.new.size
        for j, i in enumerate(holds):
            if j not in failed:
                converted[i * op.dst_size:i * op.dst_size + nsize] = result[j * nsize:(j + 1) * nsize]
        done = {i for j, i in enumerate(holds) if j not in failed}
        pending = [i for i in pending if i not in done]
    copy_runs(out, ds, converted, op.dst_size, ((0, op.dst, op.dst_size),), n)
    # what is still pending held only removed members (dropped, as a removed field is), or lost data
    return [first_failure[i] for i in pending if i in first_failure]


def _check_zero(check: _ZeroCheck, data: Any, ss: int, n: int) -> list[Failure]:
    col, w = _gather(data, ss, check.offset, check.width, n), check.width
    if col == bytes(len(col)):
        return []
    zero = bytes(w)
    return [Failure(i, check.path, check.what) for i in range(n) if col[i * w:(i + 1) * w] != zero]


# ---------------------------------------------------------------- compiling a pair of layouts


def _is_number(t: CType) -> bool:
    return isinstance(t, (Int, Enum, Bool))


def _is_bytes(t: CType) -> bool:
    return isinstance(t, (Bytes, Chars, Raw))


class _Compiler:
    """Walks the new layout, finding each field's old counterpart, and collects the operations."""

    def __init__(self, old: CType, new: CType, defaults: Mapping[Path, Any], renamed: Mapping[Path, Path],
                 old_base: Path = (), new_base: Path = ()):
        self.old_root, self.new_root = _Node(old, 0, old_base), _Node(new, 0, new_base)
        self.defaults, self.renamed = defaults, renamed
        # the paths with a default or rename at or (`inside`) below them: not copied whole
        self.inside = {k[:i] for k in (*defaults, *renamed) for i in range(len(k))}
        self.touched = self.inside | {*defaults, *renamed}
        self.template = bytearray(new.size)
        self.copies: list[tuple[int, int, int]] = []
        self.numbers: list[_Number] = []
        self.checks: list[_ZeroCheck] = []
        self.unions: list[_UnionOp] = []
        self.changes: list[tuple[str, Path, str]] = []  # kind, path, detail (see LayoutChange)
        self.consumed: set[Path] = set()
        self.used: set[Path] = set()

    def compile(self) -> Converter:
        self.fill(self.old_root, self.new_root)
        self._removed(self.old_root)
        changes = dict.fromkeys(LayoutChange(kind, path_text(path), detail) for kind, path, detail in self.changes)
        return Converter(self.old_root.type, self.new_root.type, bytes(self.template), _merged(self.copies, self),
                         tuple(self.numbers), tuple(self.checks), tuple(self.unions), tuple(changes), self._injective())

    def _injective(self) -> bool:
        """Whether every old byte (padding too) reaches the new record by a conversion that keeps
        values apart: then keys need no check for two becoming one (a million cost 0.3 s)."""
        carried: set[int] = set()
        for src, _, width in self.copies:
            carried.update(range(src, src + width))
        for n in self.numbers:
            if len({new for _, new in n.table}) < len(n.table):
                return False  # two enum names became one number
            carried.update(range(n.src.offset, n.src.offset + n.src.width * n.src.repeat))
        for c in self.checks:
            carried.update(range(c.offset, c.offset + c.width))
        return not self.unions and not any(kind == "removed" for kind, _, _ in self.changes) \
            and carried >= set(range(self.old_root.type.size))

    def change(self, kind: str, path: Path, detail: str = "") -> None:
        self.changes.append((kind, path, detail))

    # --- one node of the new layout

    def fill(self, src: _Node | None, dst: _Node, announced: bool = False) -> None:
        """Make `dst` from `src`, its old counterpart by name (None: it has none)."""
        p = dst.path
        if p in self.renamed:
            src = self._old(self.renamed[p])
            self.used.add(p)
            self.change("renamed", p, path_text(src.path))
        if src is None:
            self._new(dst, announced)
            return
        if p in self.defaults:
            raise LayoutError(f"defaults: {path_text(p)} is not a new field (the old layout has it); "
                              "defaults are for fields the old layout lacks")
        if not (isinstance(src.type, Struct) and isinstance(dst.type, Struct)):
            self.consumed.add(src.path)  # a struct's fields say for themselves whether they are kept
        self._convert(src, dst)

    def _old(self, path: Path) -> _Node:
        node: _Node | None = self.old_root
        base = len(self.old_root.path)
        if path[:base] != self.old_root.path:
            node = None
        for part in path[base:]:
            node = node.child(part) if node is not None else None
        if node is None:
            raise LayoutError(f"renamed: the old layout has no field {path_text(path)}"
                              + (" inside this union member" if base else ""))
        return node

    def _new(self, dst: _Node, announced: bool) -> None:
        """A field the old layout lacks: its default, else zero (the template's bytes)."""
        p = dst.path
        if p in self.defaults:
            self.used.add(p)
            self._constant(dst, self.defaults[p])
            if not announced:
                self.change("added", p, f"= {_shown(self.defaults[p])}")
            return
        if not announced:
            inside = [f"{path_text(k)} = {_shown(v)}" for k, v in self.defaults.items() if k[:len(p)] == p and k != p]
            self.change("added", p, ", ".join(inside))
        if isinstance(dst.type, CUnion) and any(k[:len(p)] == p and k != p for k in self.touched):
            raise LayoutError(f"{path_text(p)}: a new union takes no defaults or renames inside it")
        for child in dst.children():
            if child.path in self.touched:
                self.fill(None, child, announced=True)

    def _constant(self, dst: _Node, value: Any) -> None:
        try:
            data = encode(dst.type, value)
        except CodecError as e:
            raise LayoutError(f"defaults: {path_text(dst.path)}: {e}") from None
        if not dst.bits:
            self.template[dst.offset:dst.offset + len(data)] = data
            return
        slot = _Slot.of(dst)
        n = int.from_bytes(data, "little", signed=slot.signed)
        lo, hi = slot.range(dst.type)
        if not lo <= n <= hi:
            raise LayoutError(f"defaults: {path_text(dst.path)}: {n} does not fit a {dst.bits}-bit field ({lo}..{hi})")
        whole = int.from_bytes(self.template, "little") | (n & ((1 << dst.bits) - 1)) << dst.bit_offset
        self.template[:] = whole.to_bytes(len(self.template), "little")

    def _convert(self, src: _Node, dst: _Node) -> None:
        s, d = src.type, dst.type
        if s == d and not src.bits and not dst.bits and dst.path not in self.inside:
            self.copies.append((src.offset, dst.offset, d.size))
            self.consumed.add(src.path)
        elif isinstance(s, Raw) or isinstance(d, Raw):
            if s.size != d.size and not (_is_bytes(s) and _is_bytes(d)):
                which, typ = ("old", d) if isinstance(s, Raw) else ("new", s)
                raise LayoutError(f"{_where(dst.path)}{type_text(s)} cannot become {type_text(d)}: the {which} layout "
                                  f"is not known (only its size), so no field of {type_text(typ)} can be found in it")
            self._bytes(src, dst)
        elif _is_number(s) and _is_number(d):
            self._number(src, dst)
        elif isinstance(s, Struct) and isinstance(d, Struct):
            self._struct(src, dst)
        elif isinstance(s, Array) and isinstance(d, Array):
            self._array(src, dst)
        elif isinstance(s, CUnion) and isinstance(d, CUnion):
            self._union(src, dst)
        elif (_is_bytes(s) or isinstance(s, Addr)) and (_is_bytes(d) or isinstance(d, Addr)) and (
                not isinstance(s, Addr) and not isinstance(d, Addr) or s.size == d.size):
            self._bytes(src, dst)
        else:
            raise LayoutError(f"{_where(dst.path)}{type_text(s, src.bits)} cannot become {type_text(d, dst.bits)}: "
                              "no conversion keeps its data (rename the new field and give it a default, "
                              "or map another old field to it with renamed:)")

    def _bytes(self, src: _Node, dst: _Node) -> None:
        """Byte strings: the bytes kept, zeros after them; cut ones must be zero (a string that fits)."""
        s, d = src.type, dst.type
        kept = min(s.size, d.size)
        self.copies.append((src.offset, dst.offset, kept))
        if s.size > kept:
            self.checks.append(_ZeroCheck(src.offset + kept, s.size - kept, dst.path,
                                          f"data past the first {count(kept, 'byte')}, which {type_text(d)} has no room for"))
        if s.size != d.size or s != d and not isinstance(s, Raw) and not isinstance(d, Raw):
            self.change("retyped", dst.path, f"{type_text(s)} -> {type_text(d)}")  # unknown bytes of one size: kept

    def _number(self, src: _Node, dst: _Node, repeat: int = 1) -> None:
        s, d = src.type, dst.type
        ss, ds = _Slot.of(src, repeat), _Slot.of(dst, repeat)
        table = _enum_table(s, d) if isinstance(s, Enum) and isinstance(d, Enum) else ()
        slo, shi = ss.range(s) if not isinstance(s, Bool) or src.bits else (0, 255)
        lo, hi = ds.range(d)
        if table and all(old == new for old, new in table):
            table = ()
        targets = [new for _, new in table]
        checked = slo < lo or shi > hi or None in targets or any(not lo <= t <= hi for t in targets if t is not None)
        what = f"{type_text(s, src.bits)} -> {type_text(d, dst.bits)}"
        self.numbers.append(_Number(ss, ds, dst.path, what, lo, hi, checked, table))
        if (s, src.bits) != (d, dst.bits):
            self.change("retyped", dst.path + ((EVERY,) if repeat > 1 else ()),
                        _enum_change(s, d) if isinstance(s, Enum) and isinstance(d, Enum) else what)

    def _struct(self, src: _Node, dst: _Node) -> None:
        old = {c.path[-1]: c for c in src.children()}
        new = dst.children()
        copied = self._bitfield_groups(src, dst, old)
        order = []
        for child in new:
            name = child.path[-1]
            if name in copied:
                continue
            counterpart = old.get(name) if child.path not in self.renamed else None
            if counterpart is not None:
                order.append((list(old).index(name), child, counterpart))
            self.fill(counterpart, child)
        kept = _increasing(order)
        for i, (_, child, counterpart) in enumerate(order):
            if i not in kept:
                self.change("moved", child.path, f"offset {counterpart.offset - src.offset} -> {child.offset - dst.offset}")

    def _bitfield_groups(self, src: _Node, dst: _Node, old: dict[str | int, _Node]) -> set[str | int]:
        """Runs of bitfields that are the same in both layouts (names, widths, places within their
        bytes) and alone in those bytes are copied as bytes; the names of their fields."""
        copied: set[str | int] = set()
        for group in _bitfield_runs(dst.children()):
            names = [c.path[-1] for c in group]
            olds = [old.get(n) for n in names]
            if any(o is None or c.path in self.touched for o, c in zip(olds, group)):
                continue
            run = [o for o in olds if o is not None]
            if run not in _bitfield_runs(src.children()):
                continue  # the old bytes hold other fields too, or the fields are not all bitfields there
            first_new, first_old = group[0].bit_offset // 8 * 8, run[0].bit_offset // 8 * 8
            same = all((o.type, o.bits, o.bit_offset - first_old) == (c.type, c.bits, c.bit_offset - first_new)
                       for o, c in zip(run, group))
            width_old = (run[-1].bit_offset + run[-1].bits - first_old + 7) // 8
            width_new = (group[-1].bit_offset + group[-1].bits - first_new + 7) // 8
            if same and width_old == width_new:
                self.copies.append((first_old // 8, first_new // 8, width_new))
                self.consumed.update(o.path for o in run)
                copied.update(names)
        return copied

    def _array(self, src: _Node, dst: _Node) -> None:
        s, d = src.type, dst.type
        assert isinstance(s, Array) and isinstance(d, Array)
        kept = min(s.length, d.length)
        if s.length != d.length:
            self.change("retyped", dst.path, f"{type_text(s)} -> {type_text(d)}" if isinstance(s.spec(), str)
                        else f"{s.length} -> {count(d.length, 'element')}")
        plain = _is_number(s.elem) and _is_number(d.elem) and dst.path not in self.inside
        start = len(self.changes)
        if plain:  # every kept element converted by one operation
            self._number(_Node(s.elem, src.offset, dst.path), _Node(d.elem, dst.offset, dst.path), kept)
        else:
            src_elems, dst_elems = src.children(), dst.children()
            for i in range(kept):
                self.fill(src_elems[i], dst_elems[i])
            for child in dst_elems[kept:]:
                self.fill(None, child, announced=True)
        depth = len(dst.path)  # what one element's conversion found is said of every element
        self.changes[start:] = [(kind, path[:depth] + (EVERY,) + path[depth + 1:] if kind != "renamed" and len(path) > depth
                                 else path, detail) for kind, path, detail in self.changes[start:]]
        if s.length > kept:
            esize = s.elem.size
            self.checks.append(_ZeroCheck(src.offset + kept * esize, (s.length - kept) * esize, dst.path,
                                          f"data in elements past the first {kept}, which {type_text(d)} has no room for"))

    def _union(self, src: _Node, dst: _Node) -> None:
        s, d = src.type, dst.type
        assert isinstance(s, CUnion) and isinstance(d, CUnion)
        new_names = {f.name for f in d.fields}
        sources = {}  # old member -> new member
        for f in d.fields:
            p = dst.path + (f.name,)
            if p in self.renamed:
                old_path = self.renamed[p]
                if old_path[:-1] != src.path or not any(m.name == old_path[-1] for m in s.fields):
                    raise LayoutError(f"renamed: {path_text(p)} is a union member: it can only be renamed from a "
                                      f"member of the same union ({path_text(src.path)}.NAME)")
                self.used.add(p)
                sources[old_path[-1]] = f
                self.change("renamed", p, path_text(old_path))
        members: list[tuple[str, int, Converter | None]] = []
        for m in s.fields:
            target = sources.get(m.name) or (next(f for f in d.fields if f.name == m.name)
                                              if m.name in new_names and m.name not in {f.name for f in sources.values()}
                                              else None)
            if target is None:
                self.change("removed", src.path + (m.name,))
                members.append((m.name, m.type.size, None))
                continue
            where = dst.path + (target.name,)
            nested = _Compiler(m.type, target.type, _under(self.defaults, where),
                               {k: v for k, v in _under(self.renamed, where).items() if k != where},
                               src.path + (m.name,), where)
            conv = nested.compile()
            self.used |= nested.used
            self.changes += nested.changes
            members.append((m.name, m.type.size, conv))
        converted = {c.new for _, _, c in members if c is not None}
        for f in d.fields:
            if f.type not in converted and f.name not in {m.name for m in s.fields} and f not in sources.values():
                self.change("added", dst.path + (f.name,))
        span = max(f.type.size for f in s.fields)
        self.unions.append(_UnionOp(src.offset, s.size, dst.offset, d.size, span, tuple(members), dst.path))
        if s.size != d.size:
            self.change("retyped", dst.path, f"{count(s.size, 'byte')} -> {d.size}")

    # --- what the new layout dropped

    def _removed(self, node: _Node) -> None:
        """Report the old fields nothing was converted from, each at its highest level."""
        p = node.path
        if p in self.consumed:
            return
        if p != self.old_root.path and not any(c[:len(p)] == p for c in self.consumed):
            self.change("removed", p)
            return
        for child in node.children():
            self._removed(child)


def _under(mapping: Mapping[Path, Any], prefix: Path) -> dict[Path, Any]:
    return {k: v for k, v in mapping.items() if k[:len(prefix)] == prefix}


def _where(path: Path) -> str:
    return f"{path_text(path)}: " if path else ""


def _increasing(order: list[tuple[int, _Node, _Node]]) -> set[int]:
    """Positions in `order` of a longest run of old indexes in increasing order: the fields that kept
    their order; the others moved (a field that only shifts because another was added is not moved)."""
    best: list[list[int]] = []
    for i, (old_index, _, _) in enumerate(order):
        chains: list[list[int]] = [c for c in best if order[c[-1]][0] < old_index]
        best.append((max(chains, key=len) if chains else []) + [i])
    longest: list[int] = max(best, key=len) if best else []
    return set(longest)


def _bitfield_runs(nodes: list[_Node]) -> list[list[_Node]]:
    return [list(g) for is_bits, g in groupby(nodes, key=lambda c: bool(c.bits)) if is_bits]


def _merged(copies: list[tuple[int, int, int]], compiler: _Compiler) -> tuple[tuple[int, int, int], ...]:
    """Adjacent copies made one: runs that lie next to each other in both layouts, and across padding
    that is padding in both (its old bytes copied too: an identical layout is one copy)."""
    old_busy = _covered(compiler.old_root)
    new_busy = _covered(compiler.new_root)
    for n in compiler.numbers:
        new_busy |= set(range(n.dst.offset, n.dst.offset + n.dst.width * n.dst.repeat))
    for u in compiler.unions:
        new_busy |= set(range(u.dst, u.dst + u.dst_size))
    out: list[list[int]] = []
    for src, dst, width in sorted(copies, key=lambda c: c[1]):
        if out:
            psrc, pdst, pwidth = out[-1]
            gap = dst - (pdst + pwidth)
            if gap >= 0 and src - (psrc + pwidth) == gap and not any(
                    b in new_busy for b in range(pdst + pwidth, dst)) and not any(
                    b in old_busy for b in range(psrc + pwidth, src)):
                out[-1][2] = dst + width - pdst
                continue
        out.append([src, dst, width])
    if out:  # tail padding in both layouts goes with the last run
        src, dst, width = out[-1]
        old_tail, new_tail = compiler.old_root.type.size - src - width, compiler.new_root.type.size - dst - width
        if old_tail == new_tail > 0 and not any(b in old_busy for b in range(src + width, src + width + old_tail)) \
                and not any(b in new_busy for b in range(dst + width, dst + width + new_tail)):
            out[-1][2] += old_tail
    return tuple((s, d, w) for s, d, w in out)


def _covered(node: _Node) -> set[int]:
    """The bytes of a record that hold some field (not padding)."""
    t = node.type
    if isinstance(t, Struct) or isinstance(t, Array) and isinstance(t.elem, (Struct, CUnion, Array)):
        out: set[int] = set()
        for c in node.children():
            if c.bits:
                out |= set(range(c.bit_offset // 8, (c.bit_offset + c.bits + 7) // 8))
            else:
                out |= _covered(c)
        return out
    return set(range(node.offset, node.offset + t.size))


def _enum_table(s: Enum, d: Enum) -> tuple[tuple[int, int | None], ...]:
    """Each old number that has a name -> the new enum's number of that name (the first of its
    names the new enum has), None when the new enum has none of them."""
    new = dict(d.values)
    names: dict[int, list[str]] = {}
    for name, n in s.values:
        names.setdefault(n, []).append(name)
    return tuple((n, next((new[x] for x in ns if x in new), None)) for n, ns in names.items())


def _enum_change(s: Enum, d: Enum) -> str:
    old, new = dict(s.values), dict(d.values)
    parts = [f"{n} {old[n]} -> {new[n]}" for n in old if n in new and old[n] != new[n]]
    parts += [f"{n} removed" for n in old if n not in new] + [f"{n} added" for n in new if n not in old]
    if s.base != d.base:
        parts.insert(0, f"{s.base.name} -> {d.base.name}")
    return "enum " + ", ".join(parts)


def _shown(value: Any) -> str:
    """A value as YAML or JSON would write it (`true`, `[1, 2]`), strings (names, addresses) as they are."""
    return value if isinstance(value, str) else json.dumps(value, separators=(", ", ": "))


# ---------------------------------------------------------------- keys and values together


@dataclass(frozen=True, eq=False)
class Conversion:
    """How a map's entries change layout: its keys and its values."""

    key: Converter
    value: Converter
    diffs: tuple[LayoutDiff, ...] = field(default=())

    @property
    def changed(self) -> bool:
        return any(d.changed for d in self.diffs)

    @property
    def total(self) -> bool:
        """Whether any set of entries converts (then a plan need not convert them to know it)."""
        return self.key.lossless and self.value.lossless and self.key.injective

    def text(self) -> str:
        """The layout differences for a plan: `value: field lb_strict_prio removed, 128 -> 124 bytes`."""
        return "; ".join(d.text() for d in self.diffs if d.changed)

    def convert(self, entries: Entries, max_entries: int | None = None, *, cpus: int = 0,
                array: bool = False) -> Entries:
        """The entries in the new layout; raises MigrationRefused naming every entry that would lose
        data. `cpus`: a per-CPU map's values hold one padded value per CPU. `array`: an array map,
        whose entries past the new max_entries are dropped when they hold zeros."""
        n = len(entries)
        keys, key_failures = self.key.convert(entries.keys_buffer, n)
        if cpus:
            values, value_failures = self.value.convert(entries.values_buffer, n * cpus, per_cpu_stride(self.value.old),
                                                        per_cpu_stride(self.value.new))
            value_failures = [Failure(f.index // cpus, f.path, f.reason) for f in value_failures]
        else:
            values, value_failures = self.value.convert(entries.values_buffer, n)
        problems = _problems(self, entries, "key", key_failures) + _problems(self, entries, "value", value_failures)
        new = Entries(self.key.new.size, len(values) // n if n else (per_cpu_stride(self.value.new) * cpus if cpus
                                                                   else self.value.new.size), keys, values)
        if array and max_entries is not None:
            new, past = _cut_array(new, max_entries)
            problems += [f"entries past the new max_entries {max_entries} hold data: "
                         f"{_named(self, entries, past)}"] if past else []
        elif max_entries is not None and n > max_entries:
            problems.append(f"{count(n, 'entry', 'entries')} do not fit the new max_entries {max_entries}")
        if not self.key.injective and not problems:
            problems += _collisions(self, entries, new)
        if problems:
            raise MigrationRefused(problems)
        return new


def _problems(conv: Conversion, entries: Entries, part: str, failures: list[Failure]) -> list[str]:
    """One line per field and reason, naming the first entries."""
    out = []
    by_field: dict[tuple[Path, str], list[Failure]] = {}
    for f in failures:
        by_field.setdefault((f.path, f.reason), []).append(f)
    for (path, why), found in by_field.items():
        shown = [_key_text(conv, entries, f.index) + (f" ({f.value})" if f.value else "") for f in found[:SHOWN]]
        more = f" and {len(found) - SHOWN} more" if len(found) > SHOWN else ""
        where = f"{part} field {path_text(path)}" if path else part
        out.append(f"{where}: {why} in {count(len(found), 'entry', 'entries')}: {', '.join(shown)}{more}")
    return out


def _key_text(conv: Conversion, entries: Entries, index: int) -> str:
    ks = entries.key_size
    key = bytes(entries.keys_buffer[index * ks:(index + 1) * ks])
    try:
        return f"key {_shown(decode(conv.key.old, key))}"
    except CodecError:
        return f"key {key.hex()}"


def _named(conv: Conversion, entries: Entries, indexes: Sequence[int]) -> str:
    more = f" and {len(indexes) - SHOWN} more" if len(indexes) > SHOWN else ""
    return ", ".join(_key_text(conv, entries, i) for i in indexes[:SHOWN]) + more


def _collisions(conv: Conversion, entries: Entries, new: Entries) -> list[str]:
    """Old keys that became one new key (the new layout dropped or merged what told them apart)."""
    keys = list(records(new.keys_buffer, new.key_size))
    if len(set(keys)) == len(keys):
        return []
    first: dict[bytes, int] = {}
    pairs = []
    for i, k in enumerate(keys):
        j = first.setdefault(k, i)
        if j != i:
            pairs.append((j, i))
    shown = [f"{_key_text(conv, entries, a)} and {_key_text(conv, entries, b)}" for a, b in pairs[:SHOWN]]
    more = f" and {len(pairs) - SHOWN} more" if len(pairs) > SHOWN else ""
    return [f"old keys become one new key: {'; '.join(shown)}{more}"]


def _cut_array(entries: Entries, max_entries: int) -> tuple[Entries, list[int]]:
    """An array map's entries below the new max_entries; the positions of the ones past it that hold data."""
    ks, vs = entries.key_size, entries.value_size
    indexes = struct.unpack(f"<{len(entries)}I", entries.keys_buffer) if ks == 4 else ()
    past = [i for i, k in enumerate(indexes) if k >= max_entries]
    if not past:
        return entries, []
    zero = bytes(vs)
    values = entries.values_buffer
    held = [i for i in past if values[i * vs:(i + 1) * vs] != zero]
    keep = [i for i, k in enumerate(indexes) if k < max_entries]
    return Entries(ks, vs, b"".join(entries.keys_buffer[i * ks:(i + 1) * ks] for i in keep),
                   b"".join(values[i * vs:(i + 1) * vs] for i in keep)), held


def split_paths(mapping: Mapping[str, Any], new_key: CType, new_value: CType, what: str) -> dict[str, dict[Path, Any]]:
    """`defaults:` or `renamed:` paths (optionally `key.`/`value.` first) sorted to the key or the
    value: each must name a field of exactly one of them."""
    out: dict[str, dict[Path, Any]] = {"key": {}, "value": {}}
    roots = {"key": _Node(new_key, 0, ()), "value": _Node(new_value, 0, ())}
    for text, v in mapping.items():
        path = parse_path(text)
        found = [(part, path) for part in PARTS if _find(roots[part], path)]
        if path[0] in PARTS and len(path) > 1 and _find(roots[str(path[0])], path[1:]):
            found.append((str(path[0]), path[1:]))
        if not found:
            raise LayoutError(f"{what}: neither the new key nor the new value has a field {text}")
        if len(found) > 1:
            raise LayoutError(f"{what}: {text} names a field of both the key and the value: write key.{text} or value.{text}")
        part, path = found[0]
        out[part][path] = v
    return out


def _find(node: _Node | None, path: Path) -> bool:
    for part in path:
        if node is None:
            return False
        t = node.type
        if isinstance(t, CUnion) and isinstance(part, str):  # a union member, as a field of its own
            m = next((f for f in t.fields if f.name == part), None)
            node = _Node(m.type, node.offset, node.path + (part,)) if m is not None else None
            continue
        node = node.child(part)
    return node is not None


_compiled: dict[tuple[Any, ...], Conversion] = {}


def conversion(old_key: CType, new_key: CType, old_value: CType, new_value: CType,
               defaults: Mapping[str, Any] | None = None, renamed: Mapping[str, str] | None = None) -> Conversion:
    """The compiled conversion of entries from one key and value layout to another (compiled once
    per pair of layouts and options); raises LayoutError when the layouts cannot be converted."""
    defaults, renamed = defaults or {}, renamed or {}
    cache_key = (old_key, new_key, old_value, new_value, repr(sorted(defaults.items())), repr(sorted(renamed.items())))
    cached = _compiled.get(cache_key)
    if cached is not None:
        return cached
    by_part = split_paths(defaults, new_key, new_value, "defaults")
    moves = split_paths(renamed, new_key, new_value, "renamed")
    converters = []
    for part, old, new in (("key", old_key, new_key), ("value", old_value, new_value)):
        olds = {}
        for new_path, old_text in moves[part].items():
            old_path = parse_path(old_text)
            if old_path[0] == part and len(old_path) > 1 and not _find(_Node(old, 0, ()), old_path):
                old_path = old_path[1:]
            olds[new_path] = old_path
        compiler = _Compiler(old, new, by_part[part], olds)
        converter = compiler.compile()
        unused = [path_text(p) for p in (*by_part[part], *olds) if p not in compiler.used]
        if unused:
            raise LayoutError(f"defaults/renamed: {', '.join(unused)} in the {part} is not converted from an old "
                              f"field or is inside a field kept as it is")
        converters.append(converter)
    key, value = converters
    diffs = tuple(LayoutDiff(part, c.changes, c.old.size, c.new.size) for part, c in zip(PARTS, converters))
    result = _compiled[cache_key] = Conversion(key, value, diffs)
    return result
