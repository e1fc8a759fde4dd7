"""Entries that name something outside the map: a prog_array's programs, a devmap's network
interfaces (and programs), a cpumap's queues (and programs).

A config names a program by the path it is pinned at (or by its kernel ID) and an interface by
name (or index); the kernel stores IDs and indexes, which change when a program is reloaded or
an interface re-created. So entries stay `Target`s, as the config wrote them, until a plan is
made: `resolve.py` turns them into the bytes a lookup gives back, against the system as it is
then. Parsing here is offline (`validate` needs no kernel); `decode` turns a lookup's bytes back
into what a config writes, for `show`.
"""

from __future__ import annotations

import re
import socket
from dataclasses import dataclass
from typing import Any, Callable

from kmesh_apply.config.codecs import CodecError
from kmesh_apply.config.maptypes import CPUS, DEVICES, PROGRAMS

_IFNAME = re.compile(r"[^/\s:]{1,15}").fullmatch  # the kernel's dev_valid_name, roughly
_U32 = 1 << 32
# A cpumap queue at or above this size is refused by ptr_ring_init as too large to allocate.
MAX_QUEUE_SIZE = 1 << 24


@dataclass(frozen=True)
class Target:
    """What one entry names: a program (a pinned path or an ID), a network interface (a name or an
    index), a CPU's queue size. Only the fields its map type has are set."""

    program: str | int | None = None
    interface: str | int | None = None
    queue_size: int | None = None


def _program(value: Any) -> str | int:
    if isinstance(value, int) and not isinstance(value, bool) and 0 < value < _U32:
        return value
    if isinstance(value, str) and value.startswith("/") and "\0" not in value:
        return value
    raise CodecError(f"expected the path of a pinned program (/sys/fs/bpf/...) or a program ID, got {value!r:.60}")


def _interface(value: Any) -> str | int:
    if isinstance(value, int) and not isinstance(value, bool) and 0 < value < _U32:
        return value
    if isinstance(value, str) and _IFNAME(value) and value not in (".", ".."):
        return value
    raise CodecError(f"expected a network interface name (up to 15 characters) or index, got {value!r:.60}")


def _queue_size(value: Any) -> int:
    if isinstance(value, int) and not isinstance(value, bool) and 0 < value < MAX_QUEUE_SIZE:
        return value
    raise CodecError(f"expected a queue size 1..{MAX_QUEUE_SIZE - 1} (packets queued for the CPU), got {value!r:.60}")


def _fields(value: dict[Any, Any], main: str, value_size: int) -> Any:
    """A {main: X, program: P} mapping's parts, checked."""
    unknown = sorted(set(map(str, value)) - {main, "program"})
    if unknown or main not in value:
        raise CodecError(f"expected {{{main}: ..., program: ...}} ({main} required), got {value!r:.60}")
    if "program" in value and value_size < 8:
        raise CodecError("a program needs the 8-byte value (value_size: 8); this map's value is its first 4 bytes only")
    return value[main], value.get("program")


# What the first 4 bytes of a devmap's or cpumap's value are, and how a config writes them.
_FIRST: dict[str, tuple[str, Callable[[Any], Any]]] = {DEVICES: ("interface", _interface), CPUS: ("queue_size", _queue_size)}


def parser(entries: str, value_size: int) -> Callable[[Any], Target]:
    """The function turning one entry's value, as a config writes it, into a Target (CodecError if it is not one)."""
    if entries == PROGRAMS:
        return lambda v: Target(program=_program(v))
    if entries not in _FIRST:
        raise ValueError(f"entries of kind {entries} name nothing outside the map")
    field, parse = _FIRST[entries]

    def parsed(v: Any) -> Target:
        prog = None
        if isinstance(v, dict):
            v, prog = _fields(v, field, value_size)
        return Target(program=None if prog is None else _program(prog), **{field: parse(v)})
    return parsed


def encode(target: Target, value_size: int, program_id: Callable[[str | int], int],
           ifindex: Callable[[str | int], int]) -> bytes:
    """The bytes a lookup of this entry gives back, with programs and interfaces resolved by the callables."""
    if target.interface is not None:
        first = ifindex(target.interface)
    elif target.queue_size is not None:
        first = target.queue_size
    else:
        return program_id(target.program).to_bytes(4, "little")  # type: ignore[arg-type]
    out = first.to_bytes(4, "little")
    if value_size >= 8:
        out += (program_id(target.program) if target.program is not None else 0).to_bytes(4, "little")
    return out


def decode(entries: str, data: bytes, program: Callable[[int], str | int],
           interfaces: Callable[[int], str | None]) -> Any:
    """What a config writes for an entry a lookup gave back: programs as `program` names them by ID
    (show: by the path they are pinned at), interfaces by name where they exist (else their index)."""
    first = int.from_bytes(data[:4], "little")
    if entries == PROGRAMS:
        return program(first)
    prog_id = int.from_bytes(data[4:8], "little") if len(data) >= 8 else 0
    main = (interfaces(first) or first) if entries == DEVICES else first
    if not prog_id:
        return main
    return {"interface" if entries == DEVICES else "queue_size": main, "program": program(prog_id)}


def interface_name(ifindex: int) -> str | None:
    """The name of the network interface of this index, None when there is none."""
    try:
        return socket.if_indextoname(ifindex)
    except OSError:
        return None
