"""A map's entries summed in the kernel: one number per map instead of every entry copied out.

Why: a drift check (a no-op `plan`, `watch`'s drift interval) used to copy every entry out of
the kernel and hash it in Python (a million entries: 0.45 s of batch lookups alone). Here a
small BPF program, generated below as instructions for the map's key and value sizes and
loaded through libbpf, walks the map with `bpf_for_each_map_elem` and adds up a SipHash-1-3
of every entry (its key bytes, then its value bytes) and counts them. It is a
`BPFPROG_TYPE_SYSCALL` program run once with `BPF_PROG_TEST_RUN`: map-element iterators
(`iter/bpf_map_elem`) are refused on the kernels this tool meets (see kernel-facts).

The sum is `Entries.hash_sum`'s, the one the planner already compares large maps by: Python's
own hash of bytes is SipHash-1-3 under a key drawn at random for each process, so the program
is handed that key (in its context, at run time: it is never written into the program, a map
or a file), and the desired side's sum is Python's `hash` of the config's records. A false
"equal" therefore has the chance the planner's comparison already has, about 2**-64, that no
map content can aim at. Where that key cannot be read and checked (another Python, or
`PYTHONHASHSEED` set), or the kernel refuses the program, or the map's type cannot be walked
(per-CPU maps: the walk sees one CPU's values; LPM tries, queues...), callers read the entries
as before and say so.

Two programs: one for a map on its own (its fd in the program), and one for every inner map
an outer map holds (`bpf_loop` over its slot keys, given in an array map; each slot's inner
map looked up and walked; results in another array map), so thousands of small inner maps
cost one load and one run. An array's all-zero values are not counted: a config names only
the indexes it sets, and the rest hold zeroes.
"""

from __future__ import annotations

import ctypes
import errno as E
import os
import struct
from dataclasses import dataclass
from functools import cache
from typing import Iterable, Mapping, NamedTuple, Sequence

from kmesh_apply.entries import Entries

from kmesh_apply.kernel import libbpf as L
from kmesh_apply.kernel.failure import fail
from kmesh_apply.kernel.maps import ARRAY_TYPES, UPDATE_ANY, Map, MapInfo

PROG_NAME = "kmesh_digest"  # loaded programs of this name are the tool's own, for a moment (kernel.progs)
PROG_TYPE_SYSCALL = 31
_F_SLEEPABLE = 1 << 4  # syscall programs must be sleepable
# Map types whose elements bpf_for_each_map_elem walks with every value as user space reads it.
WALKED_TYPES = frozenset({"hash", "lru_hash", "array"})
_M64 = (1 << 64) - 1


class Digest(NamedTuple):
    """Entries counted (an array's: those whose value is not all zero) and their hashes' sum mod 2**64."""

    entries: int
    sum: int


class DigestRefused(Exception):
    """No kernel digest for this map here; the message says why (for `plan -v` and `--json`)."""


Key = tuple[int, int]  # SipHash's (k0, k1)


def unavailable(info: MapInfo) -> str | None:
    """Why a map's digest cannot be computed in the kernel (None: it can be tried)."""
    if info.type not in WALKED_TYPES:
        return f"{info.type} maps are read, not summed in the kernel"
    return _refused.get(_Shape(info.type, info.key_size, info.value_size, False, 1).kind())


def map_digest(m: Map) -> Digest:
    """The digest of one map's entries under this process's key (what `Entries.hash_sum` sums to),
    computed in the kernel; DigestRefused when it cannot be."""
    key = process_key()
    if key is None:
        raise DigestRefused(no_key_reason())
    return map_digests(m, [key])[0]


def map_digests(m: Map, keys: Sequence[Key]) -> list[Digest]:
    """The digests of one map's entries under each of these keys, from one walk of the map (so each
    describes the very same entries, even while someone writes the map)."""
    info = m.info
    reason = unavailable(info)
    if reason is not None:
        raise DigestRefused(reason)
    shape = _Shape(info.type, info.key_size, info.value_size, False, len(keys))
    prog = _load(shape, _single_map(shape, m.fd))
    try:
        ctx = _run(prog, _context(keys, bytes(8 * len(keys) + 8)))
    finally:
        os.close(prog)
    *sums, count = struct.unpack_from(f"<{len(keys) + 1}Q", ctx, 32 * len(keys))
    return [Digest(count, total) for total in sums]


def slot_digests(outer: Map, keys: Sequence[bytes], inner: MapInfo) -> dict[bytes, Digest]:
    """The digest under this process's key of the inner map in each of these slots of `outer` (all
    of `inner`'s type and sizes, as the outer map's template makes them), in one program run; a
    slot found empty during the run is left out. DigestRefused when it cannot be computed."""
    reason = unavailable(inner) or (None if process_key() is not None else no_key_reason())
    if reason is not None:
        raise DigestRefused(reason)
    if not keys:
        return {}
    key = process_key()
    assert key is not None
    shape = _Shape(inner.type, inner.key_size, inner.value_size, True, 1)
    with Map.create("array", 4, outer.info.key_size, len(keys), name="kmesh_dg_keys") as slots, \
            Map.create("array", 4, 24, len(keys), name="kmesh_dg_sums") as results:
        slots.update_batch(struct.pack(f"<{len(keys)}I", *range(len(keys))), b"".join(keys), len(keys), UPDATE_ANY)
        prog = _load(shape, _outer_maps(shape, outer.fd, slots.fd, results.fd))
        try:
            _run(prog, _context([key], struct.pack("<Q", len(keys))))
        finally:
            os.close(prog)
        sums = results.items()
    out = {}
    for index, record in sums.items():
        total, count, present = struct.unpack("<QQQ", record)
        if present:
            out[keys[int.from_bytes(index, "little")]] = Digest(count, total)
    return out


def of_entries(entries: Mapping[bytes, bytes], array: bool = False) -> Digest:
    """The digest the kernel computes under this process's key for a map holding `entries`:
    Python's hashes of the records (key, then value) added up, as `Entries.hash_sum` does; an
    array's all-zero values left out."""
    if isinstance(entries, Entries) and not array:
        return Digest(len(entries), entries.hash_sum() & _M64)
    records = [k + v for k, v in entries.items() if not array or any(v)]
    return Digest(len(records), sum(map(hash, records)) & _M64)


def of_records(key: Key, entries: Mapping[bytes, bytes]) -> Digest:
    """The digest under any key of a few entries, hashed here (pure Python: about 10 us a record)."""
    return Digest(len(entries), sum(siphash13(*key, k + v) for k, v in entries.items()) & _M64)


def moved(digest: Digest, added: Digest, taken: Digest) -> Digest:
    """The digest of entries with those of `added` put in and those of `taken` taken out."""
    return Digest(digest.entries + added.entries - taken.entries, (digest.sum + added.sum - taken.sum) & _M64)


# ---------------------------------------------------------------- the process's SipHash key


@cache
def process_key() -> tuple[int, int] | None:
    """Python's key for hashing bytes (k0, k1), checked against a SipHash-1-3 written here on a few
    strings; None where it cannot be read or is not secret (PYTHONHASHSEED set)."""
    if os.environ.get("PYTHONHASHSEED", "random") != "random":
        return None
    import sys

    if sys.hash_info.algorithm != "siphash13" or sys.hash_info.cutoff != 0:
        return None
    try:
        secret = (ctypes.c_uint8 * 24).in_dll(ctypes.pythonapi, "_Py_HashSecret")
    except (ValueError, AttributeError):
        return None
    k0, k1 = struct.unpack_from("<QQ", bytes(secret))
    for sample in (b"kmesh", bytes(range(12)), b"\xff" * 17, b"0123456789abcdef"):
        if siphash13(k0, k1, sample) != hash(sample) & _M64:
            return None
    return k0, k1


def no_key_reason() -> str:
    if os.environ.get("PYTHONHASHSEED", "random") != "random":
        return "PYTHONHASHSEED is set, so hashes are not secret: entries are compared one by one"
    return "this Python's bytes hash is not SipHash-1-3 under a key it can read: entries are read"


_IV = (0x736F6D6570736575, 0x646F72616E646F6D, 0x6C7967656E657261, 0x7465646279746573)


def siphash13(k0: int, k1: int, data: bytes) -> int:
    """SipHash-1-3 of `data`, as Python hashes bytes (CPython takes -1 as -2, and b"" as 0); the
    reference the generated program and its tests are checked against."""
    if not data:
        return 0
    v0, v1, v2, v3 = k0 ^ _IV[0], k1 ^ _IV[1], k0 ^ _IV[2], k1 ^ _IV[3]

    def rounds(n: int) -> None:
        nonlocal v0, v1, v2, v3
        for _ in range(n):
            v0 = (v0 + v1) & _M64
            v1 = _rotl(v1, 13) ^ v0
            v0 = _rotl(v0, 32)
            v2 = (v2 + v3) & _M64
            v3 = _rotl(v3, 16) ^ v2
            v0 = (v0 + v3) & _M64
            v3 = _rotl(v3, 21) ^ v0
            v2 = (v2 + v1) & _M64
            v1 = _rotl(v1, 17) ^ v2
            v2 = _rotl(v2, 32)

    full = len(data) // 8 * 8
    for i in range(0, full, 8):
        m = int.from_bytes(data[i:i + 8], "little")
        v3 ^= m
        rounds(1)
        v0 ^= m
    m = (len(data) & 0xFF) << 56 | int.from_bytes(data[full:], "little")
    v3 ^= m
    rounds(1)
    v0 ^= m
    v2 ^= 0xFF
    rounds(3)
    h = v0 ^ v1 ^ v2 ^ v3
    return _M64 - 1 if h == _M64 else h


def _rotl(x: int, b: int) -> int:
    return ((x << b) | (x >> (64 - b))) & _M64


def _context(keys: Sequence[Key], rest: bytes) -> bytes:
    """The program's context: SipHash's state after each key (32 bytes a key), then `rest`."""
    return b"".join(struct.pack("<4Q", k0 ^ _IV[0], k1 ^ _IV[1], k0 ^ _IV[2], k1 ^ _IV[3]) for k0, k1 in keys) + rest


# ---------------------------------------------------------------- instructions


# struct bpf_insn: code, dst_reg:4 | src_reg:4, off, imm
_INSN = struct.Struct("<BBhi")
R0, R1, R2, R3, R4, R5, R6, R7, R8, R9, R10 = range(11)
_ALU64, _JMP, _LDX, _STX, _ST = 0x07, 0x05, 0x01, 0x03, 0x02
_SIZE = {8: 0x18, 4: 0x00, 2: 0x08, 1: 0x10}
_MEM = 0x60
_ADD, _OR, _LSH, _RSH, _XOR, _MOV = 0x00, 0x40, 0x60, 0x70, 0xA0, 0xB0
_K, _X = 0x00, 0x08
_JEQ, _JNE = 0x10, 0x50
_PSEUDO_MAP_FD, _PSEUDO_FUNC = 1, 4
_HELPER_MAP_LOOKUP, _HELPER_FOR_EACH, _HELPER_LOOP = 1, 164, 181


class _Asm:
    """A list of BPF instructions with forward jumps to labels and calls to subprograms."""

    def __init__(self) -> None:
        self.insns: list[list[int]] = []  # [code, regs, off, imm]
        self.labels: dict[str, int] = {}
        self.jumps: list[tuple[int, str]] = []
        self.funcs: list[tuple[int, str]] = []
        self.starts: list[tuple[str, int]] = [("main", 0)]  # (function label, first instruction)

    def emit(self, code: int, dst: int = 0, src: int = 0, off: int = 0, imm: int = 0) -> None:
        self.insns.append([code, src << 4 | dst, off, imm])

    def alu(self, op: int, dst: int, src: int | None = None, imm: int = 0) -> None:
        self.emit(_ALU64 | op | (_X if src is not None else _K), dst, src or 0, 0, imm)

    def ldx(self, size: int, dst: int, src: int, off: int) -> None:
        self.emit(_LDX | _MEM | _SIZE[size], dst, src, off)

    def stx(self, size: int, dst: int, off: int, src: int) -> None:
        self.emit(_STX | _MEM | _SIZE[size], dst, src, off)

    def st(self, size: int, dst: int, off: int, imm: int) -> None:
        self.emit(_ST | _MEM | _SIZE[size], dst, 0, off, imm)

    def ld64(self, dst: int, value: int, src: int = 0) -> None:
        """ld_imm64 (two instructions): a constant, a map fd (src=_PSEUDO_MAP_FD) or a function."""
        value &= _M64
        self.emit(0x18, dst, src, 0, _s32(value & 0xFFFFFFFF))
        self.emit(0, 0, 0, 0, _s32(value >> 32))

    def func(self, dst: int, label: str) -> None:
        self.funcs.append((len(self.insns), label))
        self.ld64(dst, 0, _PSEUDO_FUNC)

    def jump(self, op: int, dst: int, imm: int, label: str) -> None:
        self.jumps.append((len(self.insns), label))
        self.emit(_JMP | op | _K, dst, 0, 0, imm)

    def call(self, helper: int) -> None:
        self.emit(_JMP | 0x80, imm=helper)

    def exit(self, value: int = 0) -> None:
        self.alu(_MOV, R0, imm=value)
        self.emit(_JMP | 0x90)

    def label(self, name: str) -> None:
        self.labels[name] = len(self.insns)

    def function(self, name: str) -> None:
        """A subprogram starts here (a callback): labelled, and described in the program's BTF."""
        self.starts.append((name, len(self.insns)))
        self.label(name)

    def code(self) -> bytes:
        for at, name in self.jumps:
            self.insns[at][2] = self.labels[name] - at - 1
        for at, name in self.funcs:
            self.insns[at][3] = self.labels[name] - at - 1
        return b"".join(_INSN.pack(*insn) for insn in self.insns)


def _s32(v: int) -> int:
    return v - (1 << 32) if v & 0x80000000 else v


@dataclass(frozen=True)
class _Shape:
    """What a program's instructions depend on: the walked maps' type and sizes, whether it walks
    the inner maps of an outer map, and how many keys it hashes each entry under.

    Its sums, on the main program's stack: SipHash's state after each key (4 words a key), then
    the sum under each key, then the count of entries (`size` bytes in all)."""

    type: str
    key_size: int
    value_size: int
    outer: bool
    keys: int

    def kind(self) -> str:
        return f"{self.type} {self.key_size}+{self.value_size}{' in slots' if self.outer else ''}"

    @property
    def size(self) -> int:
        return 40 * self.keys + 8

    def total(self, i: int) -> int:
        """Offset of the sum under key i."""
        return 32 * self.keys + 8 * i

    @property
    def count(self) -> int:
        return 40 * self.keys


def _pieces(start: int, end: int) -> Iterable[tuple[int, int]]:
    """(offset, size) loads covering [start, end) of a key or value, each aligned to its size."""
    off = start
    while off < end:
        size = next(s for s in (8, 4, 2, 1) if off % s == 0 and off + s <= end)
        yield off, size
        off += size


def _sip_round(a: _Asm, v0: int, v1: int, v2: int, v3: int) -> None:
    def rotl(r: int, b: int) -> None:
        a.alu(_MOV, R0, r)
        a.alu(_LSH, r, imm=b)
        a.alu(_RSH, R0, imm=64 - b)
        a.alu(_OR, r, R0)

    a.alu(_ADD, v0, v1)
    rotl(v1, 13)
    a.alu(_XOR, v1, v0)
    rotl(v0, 32)
    a.alu(_ADD, v2, v3)
    rotl(v3, 16)
    a.alu(_XOR, v3, v2)
    a.alu(_ADD, v0, v3)
    rotl(v3, 21)
    a.alu(_XOR, v3, v0)
    a.alu(_ADD, v2, v1)
    rotl(v1, 17)
    a.alu(_XOR, v1, v2)
    rotl(v2, 32)


def _entry_callback(a: _Asm, shape: _Shape) -> None:
    """callback(map, key, value, sums): adds SipHash-1-3 of key || value under each key to its sum,
    and 1 to the count (an array's all-zero values are skipped)."""
    ks, vs = shape.key_size, shape.value_size
    a.function("entry")
    if shape.type in ARRAY_TYPES:  # an all-zero value is an index the config does not name
        for i, (off, size) in enumerate(_pieces(0, vs)):
            a.ldx(size, R0, R3, off)
            a.alu(_MOV if i == 0 else _OR, R5, R0)
        a.jump(_JEQ, R5, 0, "entry_done")
    for k in range(shape.keys):
        _hash(a, ks, vs, 32 * k, shape.total(k), f"entry_add_{k}")
    a.ldx(8, R5, R4, shape.count)
    a.alu(_ADD, R5, imm=1)
    a.stx(8, R4, shape.count, R5)
    a.label("entry_done")
    a.exit(0)


def _hash(a: _Asm, ks: int, vs: int, state: int, total: int, label: str) -> None:
    """SipHash-1-3 of key (R2) || value (R3) from the state at R4+state, added to the sum at R4+total."""
    v0, v1, v2, v3 = R6, R7, R8, R9
    for i, v in enumerate((v0, v1, v2, v3)):
        a.ldx(8, v, R4, state + 8 * i)
    length = ks + vs
    for word in range(length // 8 + 1):
        lo, hi = 8 * word, min(8 * word + 8, length)
        first = True
        for src, base, start, end in ((R2, 0, lo, min(hi, ks)), (R3, ks, max(lo, ks), hi)):
            for off, size in _pieces(start - base, end - base) if start < end else ():
                a.ldx(size, R0, src, off)
                shift = 8 * (base + off - lo)
                if shift:
                    a.alu(_LSH, R0, imm=shift)
                a.alu(_MOV if first else _OR, R5, R0)
                first = False
        if word == length // 8:  # the last block carries the length in its top byte
            a.ld64(R0, (length & 0xFF) << 56)
            a.alu(_MOV if first else _OR, R5, R0)
        a.alu(_XOR, v3, R5)
        _sip_round(a, v0, v1, v2, v3)
        a.alu(_XOR, v0, R5)
    a.alu(_XOR, v2, imm=0xFF)
    for _ in range(3):
        _sip_round(a, v0, v1, v2, v3)
    a.alu(_XOR, v0, v1)
    a.alu(_XOR, v0, v2)
    a.alu(_XOR, v0, v3)
    a.jump(_JNE, v0, -1, label)  # CPython never returns -1 as a hash: -2 instead
    a.alu(_MOV, v0, imm=-2)
    a.label(label)
    a.ldx(8, R5, R4, total)
    a.alu(_ADD, R5, v0)
    a.stx(8, R4, total, R5)


def _copy_state(a: _Asm, shape: _Shape) -> None:
    """The context's SipHash states (R6) into the sums on the stack, sums and count zeroed."""
    base = -shape.size
    for i in range(4 * shape.keys):
        a.ldx(8, R1, R6, 8 * i)
        a.stx(8, R10, base + 8 * i, R1)
    for i in range(4 * shape.keys, shape.size // 8):
        a.st(8, R10, base + 8 * i, 0)


def _sums_pointer(a: _Asm, shape: _Shape, dst: int) -> None:
    a.alu(_MOV, dst, R10)
    a.alu(_ADD, dst, imm=-shape.size)


def _single_map(shape: _Shape, map_fd: int) -> _Asm:
    """for_each over the map; the sums and the count copied back into the context, after the states."""
    a = _Asm()
    a.alu(_MOV, R6, R1)
    _copy_state(a, shape)
    a.ld64(R1, map_fd, _PSEUDO_MAP_FD)
    a.func(R2, "entry")
    _sums_pointer(a, shape, R3)
    a.alu(_MOV, R4, imm=0)
    a.call(_HELPER_FOR_EACH)
    for off in range(shape.total(0), shape.size, 8):
        a.ldx(8, R1, R10, -shape.size + off)
        a.stx(8, R6, off, R1)
    a.exit(0)
    _entry_callback(a, shape)
    return a


def _outer_maps(shape: _Shape, outer_fd: int, keys_fd: int, results_fd: int) -> _Asm:
    """bpf_loop over the slot keys in `keys_fd` (array: index -> key; how many: the context's word
    after the states); each slot's inner map walked, its [sums..., count, 1] written to `results_fd`
    (array: index -> 8 * keys + 16 bytes)."""
    a = _Asm()
    a.alu(_MOV, R6, R1)
    _copy_state(a, shape)
    a.ldx(8, R1, R6, 32 * shape.keys)  # how many slots
    a.func(R2, "slot")
    _sums_pointer(a, shape, R3)
    a.alu(_MOV, R4, imm=0)
    a.call(_HELPER_LOOP)
    a.exit(0)
    a.function("slot")  # slot(index, sums)
    a.alu(_MOV, R6, R2)
    a.stx(4, R10, -4, R1)
    a.ld64(R1, keys_fd, _PSEUDO_MAP_FD)
    a.alu(_MOV, R2, R10)
    a.alu(_ADD, R2, imm=-4)
    a.call(_HELPER_MAP_LOOKUP)
    a.jump(_JEQ, R0, 0, "slot_done")
    a.alu(_MOV, R2, R0)
    a.ld64(R1, outer_fd, _PSEUDO_MAP_FD)
    a.call(_HELPER_MAP_LOOKUP)
    a.jump(_JEQ, R0, 0, "slot_done")
    a.alu(_MOV, R7, R0)
    for off in range(shape.total(0), shape.size, 8):
        a.st(8, R6, off, 0)
    a.alu(_MOV, R1, R7)
    a.func(R2, "entry")
    a.alu(_MOV, R3, R6)
    a.alu(_MOV, R4, imm=0)
    a.call(_HELPER_FOR_EACH)
    a.ld64(R1, results_fd, _PSEUDO_MAP_FD)
    a.alu(_MOV, R2, R10)
    a.alu(_ADD, R2, imm=-4)
    a.call(_HELPER_MAP_LOOKUP)
    a.jump(_JEQ, R0, 0, "slot_done")
    for i, off in enumerate(range(shape.total(0), shape.size, 8)):
        a.ldx(8, R1, R6, off)
        a.stx(8, R0, 8 * i, R1)
    a.st(8, R0, shape.size - shape.total(0), 1)
    a.label("slot_done")
    a.exit(0)
    _entry_callback(a, shape)
    return a


# ---------------------------------------------------------------- loading and running

# Kinds of program (type and sizes) this process saw the kernel refuse, with why: not tried again.
_refused: dict[str, str] = {}
_LOG_SIZE = 1 << 16


# The subprograms, by label, with their parameters: the kernel wants BTF for each of them.
_FUNCS = {"main": ("ctx",), "entry": ("map", "key", "value", "sums"), "slot": ("index", "sums")}


@cache
def _func_btf() -> tuple[int, dict[str, int]]:
    """A BTF object describing the programs' functions (loaded once a process): its fd, and the
    type id of each function by label."""
    btf = L.btf__new_empty()
    if not btf:
        raise fail("create BTF", "the digest program's functions", L.last_errno())
    ids = {}
    word = L.btf__add_int(btf, b"long", 8, 1)  # every parameter and return value: a 64-bit register
    for label, params in _FUNCS.items():
        proto = L.btf__add_func_proto(btf, word)
        for param in params:
            L.btf__add_func_param(btf, param.encode(), word)
        ids[label] = L.btf__add_func(btf, (PROG_NAME if label == "main" else label).encode(), 0, proto)  # static
    if min(word, *ids.values()) < 0:
        raise fail("build BTF", "the digest program's functions", -min(word, *ids.values()))
    ret = L.btf__load_into_kernel(btf)
    if ret < 0:
        raise fail("load BTF", "the digest program's functions", -ret)
    return L.btf__fd(btf), ids


def _load(shape: _Shape, asm: _Asm) -> int:
    """Load the program; its fd. DigestRefused (and remembered for this kind) when the kernel refuses it."""
    code = asm.code()
    btf_fd, ids = _func_btf()
    info = (ctypes.c_uint32 * 2 * len(asm.starts))(*((ctypes.c_uint32 * 2)(at, ids[label]) for label, at in asm.starts))
    opts = L.ProgLoadOpts(sz=ctypes.sizeof(L.ProgLoadOpts), prog_flags=_F_SLEEPABLE, prog_btf_fd=btf_fd,
                          func_info=ctypes.cast(info, ctypes.c_void_p), func_info_cnt=len(asm.starts),
                          func_info_rec_size=8)
    fd = L.bpf_prog_load(PROG_TYPE_SYSCALL, PROG_NAME.encode(), b"GPL", code, len(code) // 8, ctypes.byref(opts))
    if fd >= 0:
        return fd
    log = ctypes.create_string_buffer(_LOG_SIZE)  # loaded again only to say why
    opts.log_level, opts.log_size, opts.log_buf = 1, _LOG_SIZE, ctypes.cast(log, ctypes.c_void_p)
    again = L.bpf_prog_load(PROG_TYPE_SYSCALL, PROG_NAME.encode(), b"GPL", code, len(code) // 8, ctypes.byref(opts))
    if again >= 0:
        return again
    lines = [ln for ln in log.value.decode(errors="replace").splitlines() if ln.strip()]
    why = f"the kernel refused the digest program ({E.errorcode.get(-fd, -fd)}" + (f": {lines[-1]}" if lines else "") + ")"
    _refused[shape.kind()] = why
    raise DigestRefused(why)


def _run(prog: int, ctx: bytes) -> bytes:
    buf = ctypes.create_string_buffer(ctx, len(ctx))
    opts = L.TestRunOpts(sz=ctypes.sizeof(L.TestRunOpts), ctx_in=ctypes.cast(buf, ctypes.c_void_p), ctx_size_in=len(ctx))
    ret = L.bpf_prog_test_run_opts(prog, ctypes.byref(opts))
    if ret < 0:
        raise fail("run the digest program", PROG_NAME, -ret)
    return buf.raw
