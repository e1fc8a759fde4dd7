"""Saved plans (`plan --out`, `apply PLAN`): data to check, never a program (contract section 11).

A saved plan is JSON (`Plan.to_saved`) signed with HMAC-SHA256 under a key only the user who
runs the tool can read, made on first use: /var/lib/kmesh-apply/plan-key (mode 0600, in a
directory of mode 0700), or the file `$KMESH_APPLY_PLAN_KEY` names. The signature covers every
byte before it, so a plan edited by hand, or written by anyone but this host's kmesh-apply, is
refused before it is even parsed. Reading is bounded (a regular file of at most
MAX_PLAN_BYTES), and decoding is strict: every field of every change and step must be what
`to_saved` writes, or the plan is one clear error naming where. `apply` then re-derives the
steps from the changes under the pin root's lock (`recheck`), and the executor refuses any pin
outside the pin root: three walls, each enough against a forged file alone.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import re
import secrets
import stat
from collections.abc import Callable
from dataclasses import fields
from typing import Any, NoReturn

from kmesh_apply.config.maptypes import KINDS, OUTER_FLAGS
from kmesh_apply.config.model import MANAGE_ENTRIES
from kmesh_apply.ctype import TypeSpecError, parse_type
from kmesh_apply.errors import KmeshError
from kmesh_apply.kernel.names import MAP_FLAGS
from kmesh_apply.kernel.progs import Program
from kmesh_apply.plan.model import (
    PLAN_FORMAT,
    STEP_TYPES,
    CatchUp,
    CreateMap,
    HeldReplaced,
    MapChange,
    MapDef,
    MigrateEntries,
    Migration,
    MovePin,
    Plan,
    RecordMap,
    RemovePin,
    SetSlots,
    Step,
    Unmanaged,
    WriteEntries,
    check_steps,
)
from kmesh_apply.private import check_owned, open_private_dir, write_private
from kmesh_apply.terminal import printable

PLAN_KEY_ENV = "KMESH_APPLY_PLAN_KEY"
DEFAULT_PLAN_KEY = "/var/lib/kmesh-apply/plan-key"
KEY_BYTES = 32
MAX_PLAN_BYTES = 1 << 30  # a plan that fills a map of about ten million entries
# A map definition names a type the tool can declare and flags the kernel knows: what the planner and the
# executor meet is never new to them.
MAP_TYPES = (*KINDS, *OUTER_FLAGS)
FLAGS = tuple(MAP_FLAGS)
MAX_DEPTH = 32  # nesting of a type spec (structs of arrays of structs...) or of a migration's default value
_CONTEXT = b"kmesh-apply saved plan\0"
_SIGNATURE = re.compile(rb', "signature": "hmac-sha256:([0-9a-f]{64})"\}\n?\Z')
_SIGNATURE_BYTES = len(b', "signature": "hmac-sha256:"}\n') + 64
_MAGIC = re.compile(rb'\s*\{\s*"format"\s*:')
_HEX = re.compile(r"(?:[0-9a-f]{2})*").fullmatch


def is_saved_plan(head: bytes) -> bool:
    """Whether a file starting with `head` is a saved plan (it starts with its format), not a config."""
    return _MAGIC.match(head) is not None


# ---- the key ---------------------------------------------------------------------------------


def _key_path() -> str:
    return os.path.abspath(os.environ.get(PLAN_KEY_ENV) or DEFAULT_PLAN_KEY)


def plan_key(create: bool) -> bytes:
    """The key plans are signed with: read from a private file (a directory and file of ours that
    no one else can write or read), made on first use when `create`."""
    path = _key_path()
    folder, name = os.path.split(path)
    try:
        dir_fd = open_private_dir(folder, create)
    except KmeshError as e:
        raise KmeshError(f"the plan-signing key {path}: {e} (or set {PLAN_KEY_ENV} to a file of your own)") from None
    if dir_fd is None:
        raise _no_key(path)
    try:
        try:
            fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd)
        except FileNotFoundError:
            if not create:
                raise _no_key(path) from None
            write_private(path, secrets.token_bytes(KEY_BYTES), replace=False)
            fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd)
        except OSError as e:
            raise KmeshError(f"cannot read the plan-signing key {path}: {e.strerror}") from None
        with os.fdopen(fd, "rb") as f:
            st = os.fstat(f.fileno())
            check_owned(st, path, "plan-signing key")
            if not stat.S_ISREG(st.st_mode) or st.st_mode & 0o077:
                raise KmeshError(f"the plan-signing key {path} must be a file only its owner can read (mode 0600): "
                                 f"anyone who reads it can forge plans; remove it (a new one is made) or chmod 600 {path}")
            key = f.read(KEY_BYTES + 1)
    finally:
        os.close(dir_fd)
    if len(key) != KEY_BYTES:
        raise KmeshError(f"the plan-signing key {path} is not {KEY_BYTES} bytes; remove it (a new one is made) "
                         "and make fresh plans")
    return key


def _no_key(path: str) -> KmeshError:
    return KmeshError(f"there is no plan-signing key at {path}, so no saved plan can be checked: plans are signed "
                      "with the key of the host and user that made them. Make a fresh plan here with: "
                      "kmesh-apply plan CONFIG --out PLAN")


def signature(key: bytes, body: bytes) -> str:
    return hmac.new(key, _CONTEXT + body, hashlib.sha256).hexdigest()


def signed(body: bytes, key: bytes) -> bytes:
    """A plan's JSON text (one object) with its signature added as the object's last member."""
    if not body.endswith(b"}"):
        raise ValueError("a saved plan is one JSON object")
    return body[:-1] + b', "signature": "hmac-sha256:' + signature(key, body).encode() + b'"}\n'


# ---- writing and reading ------------------------------------------------------------------------


def save_plan(plan: Plan, path: str | os.PathLike[str]) -> None:
    """Write `plan` to `path`, signed (mode 0600, aside and renamed into place, never through a link)."""
    body = json.dumps(plan.to_saved()).encode()
    write_private(path, signed(body, plan_key(create=True)))


def load_plan(path: str | os.PathLike[str]) -> Plan:
    """The plan saved at `path`, once its size, its signature and then every field are checked."""
    path = os.fspath(path)
    data = _read_bounded(path)
    m = _SIGNATURE.search(data, max(0, len(data) - _SIGNATURE_BYTES - 1))
    if m is None:
        _refuse(path, "it carries no kmesh-apply signature. Plans are signed when `plan --out` writes them; "
                      "make a fresh plan with: kmesh-apply plan CONFIG --out PLAN")
    body = data[:m.start()] + b"}"
    if not hmac.compare_digest(m.group(1).decode(), signature(plan_key(create=False), body)):
        _refuse(path, "its signature does not match: it was changed since kmesh-apply wrote it, or was written "
                      "on another host or by another user. Make a fresh plan with: kmesh-apply plan CONFIG --out PLAN")
    try:
        doc = json.loads(body)
    except RecursionError:
        _refuse(path, "it is nested too deeply")
    except ValueError as e:
        _refuse(path, f"it is not valid JSON: {e}")
    return decode(doc, path)


def decode(doc: Any, path: str = "the saved plan") -> Plan:
    """A saved plan's JSON document (`Plan.to_saved`) as a `Plan`, every field checked."""
    return _Decoder(path).plan(doc)


def _refuse(path: str, why: str) -> NoReturn:
    raise KmeshError(f"{printable(path)}: not a usable saved plan: {why}")


def _read_bounded(path: str) -> bytes:
    """The file's bytes: a regular file (not a FIFO or a device that never ends) of bounded size."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as e:
        raise KmeshError(f"cannot read the saved plan {path}: {e.strerror}") from None
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            _refuse(path, "it is not a regular file")
        if st.st_size > MAX_PLAN_BYTES:
            _refuse(path, f"it is larger than {MAX_PLAN_BYTES >> 20} MiB")
        data = f.read(MAX_PLAN_BYTES + 1)
    if len(data) > MAX_PLAN_BYTES:
        _refuse(path, f"it is larger than {MAX_PLAN_BYTES >> 20} MiB")
    return data


# ---- decoding ------------------------------------------------------------------------------------


class _Decoder:
    """Turns a saved plan's JSON back into a `Plan`, accepting exactly what `Plan.to_saved` writes:
    the first field that is not what it must be is the error, named by where it is."""

    def __init__(self, path: str):
        self.path = path

    def fail(self, where: str, expected: str) -> NoReturn:
        _refuse(self.path, f"{where}: expected {expected}")

    def obj(self, raw: Any, where: str, keys: set[str], optional: set[str] = set()) -> dict[str, Any]:
        if not isinstance(raw, dict):
            self.fail(where, "an object")
        extra = set(raw) - keys - optional
        missing = keys - set(raw)
        if extra or missing:
            self.fail(where, f"the fields {', '.join(sorted(keys | optional))}"
                      + (f" (unknown: {', '.join(sorted(map(str, extra))[:5])})" if extra else "")
                      + (f" (missing: {', '.join(sorted(missing))})" if missing else ""))
        return raw

    def text(self, raw: Any, where: str) -> str:
        if not isinstance(raw, str) or "\0" in raw:
            self.fail(where, "a string")
        return raw

    def maybe_text(self, raw: Any, where: str) -> str | None:
        return None if raw is None else self.text(raw, where)

    def number(self, raw: Any, where: str, most: int = 2**32 - 1) -> int:
        if not isinstance(raw, int) or isinstance(raw, bool) or not 0 <= raw <= most:
            self.fail(where, f"an integer from 0 to {most}")
        return raw

    def choice(self, raw: Any, where: str, choices: tuple[str, ...], what: str | None = None) -> str:
        if not isinstance(raw, str) or raw not in choices:
            self.fail(where, what or " or ".join(choices))
        return raw

    def flag(self, raw: Any, where: str) -> bool:
        if not isinstance(raw, bool):
            self.fail(where, "true or false")
        return raw

    def texts(self, raw: Any, where: str) -> list[str]:
        if not isinstance(raw, list):
            self.fail(where, "a list")
        return [self.text(v, f"{where}[{i}]") for i, v in enumerate(raw)]

    def blob(self, raw: Any, where: str) -> bytes:
        """Bytes, written as {"hex": "..."}."""
        if not isinstance(raw, dict) or len(raw) != 1 or not isinstance(raw.get("hex"), str):
            self.fail(where, 'bytes as {"hex": "..."}')
        return self.hex(raw["hex"], where)

    def hex(self, text: str, where: str) -> bytes:
        if not _HEX(text):
            self.fail(where, "bytes as lower-case hex digits")
        return bytes.fromhex(text)

    def blobs(self, raw: Any, where: str) -> list[bytes]:
        if not isinstance(raw, list):
            self.fail(where, "a list")
        return [self.blob(v, f"{where}[{i}]") for i, v in enumerate(raw)]

    def keyed(self, raw: Any, where: str, value: Callable[[Any, str], Any]) -> dict[bytes, Any]:
        """A mapping of bytes keys (written "0x...") to values."""
        if not isinstance(raw, dict):
            self.fail(where, "an object")
        out = {}
        for k, v in raw.items():
            if not k.startswith("0x"):
                self.fail(f"{where}: key {k[:40]!r}", 'bytes as "0x..."')
            out[self.hex(k[2:], f"{where}: key {k[:40]!r}")] = value(v, f"{where}[{k[:40]}]")
        return out

    def shallow(self, raw: Any, where: str) -> Any:
        """Free-form JSON (a type spec, a default value, a layout difference), nested at most MAX_DEPTH deep."""
        stack = [(raw, 1)]
        while stack:
            node, depth = stack.pop()
            if depth > MAX_DEPTH:
                self.fail(where, f"a value nested at most {MAX_DEPTH} deep")
            if isinstance(node, dict):
                stack += [(v, depth + 1) for v in node.values()]
            elif isinstance(node, list):
                stack += [(v, depth + 1) for v in node]
        return raw

    def type_spec(self, raw: Any, where: str, size: int | None = None) -> Any:
        """A key or value type spec (contract section 2), parsed here so the executor never meets a bad one;
        of `size` bytes when given."""
        if raw is None:
            return None
        try:
            parsed = parse_type(self.shallow(raw, where))
        except (TypeSpecError, RecursionError, TypeError, ValueError):
            self.fail(where, "a type")
        if size is not None and parsed.size != size:
            self.fail(where, f"a type of {size} bytes (it is {parsed.size})")
        return raw

    def definition(self, raw: Any, where: str) -> MapDef:
        names = {f.name for f in fields(MapDef)}
        raw = self.obj(raw, where, names)
        key_size = self.number(raw["key_size"], f"{where}.key_size")
        value_size = self.number(raw["value_size"], f"{where}.value_size")
        map_type = self.choice(raw["type"], f"{where}.type", MAP_TYPES, "a map type kmesh-apply declares")
        flags = tuple(self.choice(f, f"{where}.flags[{i}]", FLAGS, "a map flag")
                      for i, f in enumerate(self.texts(raw["flags"], f"{where}.flags")))
        return MapDef(self.text(raw["name"], f"{where}.name"), map_type, key_size, value_size,
                      self.number(raw["max_entries"], f"{where}.max_entries"), flags,
                      self.type_spec(raw["key_type"], f"{where}.key_type", key_size),
                      self.type_spec(raw["value_type"], f"{where}.value_type", value_size),
                      self.maybe_text(raw["inner_map"], f"{where}.inner_map"))

    def maybe_definition(self, raw: Any, where: str) -> MapDef | None:
        return None if raw is None else self.definition(raw, where)

    def program(self, raw: Any, where: str) -> Program:
        raw = self.obj(raw, where, {f.name for f in fields(Program)})
        return Program(self.number(raw["id"], f"{where}.id"), self.text(raw["name"], f"{where}.name"),
                       self.text(raw["type"], f"{where}.type"), tuple(self.texts(raw["attached"], f"{where}.attached")))

    def programs(self, raw: Any, where: str) -> list[Program]:
        if not isinstance(raw, list):
            self.fail(where, "a list")
        return [self.program(v, f"{where}[{i}]") for i, v in enumerate(raw)]

    def change(self, raw: Any, where: str) -> MapChange:
        raw = self.obj(raw, where, {f.name for f in fields(MapChange)})
        kind = self.choice(raw["kind"], f"{where}.kind", ("inner", "outer", "plain"))
        action = self.choice(raw["action"], f"{where}.action", ("create", "update", "replace", "destroy", "recover",
                                                                 "adopt", "migrate", "rename"))
        value = self.text if kind == "outer" else self.blob

        def pair(v: Any, at: str) -> tuple[Any, Any]:
            if not isinstance(v, list) or len(v) != 2:
                self.fail(at, "[old, new]")
            return value(v[0], at), value(v[1], at)

        return MapChange(self.text(raw["name"], f"{where}.name"), action, kind,
                         self.maybe_definition(raw["definition"], f"{where}.definition"),
                         self.texts(raw["reasons"], f"{where}.reasons"),
                         self.keyed(raw["added"], f"{where}.added", value),
                         self.keyed(raw["changed"], f"{where}.changed", pair),
                         self.keyed(raw["removed"], f"{where}.removed", value),
                         self.flag(raw["swap"], f"{where}.swap"), self.programs(raw["holders"], f"{where}.holders"),
                         self.flag(raw["adopted"], f"{where}.adopted"),
                         self.choice(raw["manage_entries"], f"{where}.manage_entries", MANAGE_ENTRIES),
                         None if raw["migration"] is None else self.migration(raw["migration"], f"{where}.migration"),
                         self.maybe_definition(raw["old"], f"{where}.old"))

    def migration(self, raw: Any, where: str) -> Migration:
        raw = self.obj(raw, where, {f.name for f in fields(Migration)})
        diffs = raw["diffs"]
        if not isinstance(diffs, list) or not all(isinstance(d, dict) for d in diffs):
            self.fail(f"{where}.diffs", "a list of objects")
        return Migration(self.text(raw["source"], f"{where}.source"), self.number(raw["entries"], f"{where}.entries"),
                         self.text(raw["layout"], f"{where}.layout"), self.shallow(diffs, f"{where}.diffs"),
                         self.flag(raw["renamed_only"], f"{where}.renamed_only"))

    def step(self, raw: Any, where: str) -> Step:
        if not isinstance(raw, dict) or not isinstance(raw.get("op"), str) or raw["op"] not in STEP_TYPES:
            self.fail(where, f"a step (an object whose op is one of {', '.join(STEP_TYPES)})")
        cls = STEP_TYPES[raw["op"]]
        raw = self.obj(raw, where, {f.name for f in fields(cls)})
        t = self.text
        if cls is CreateMap:
            return CreateMap(self.definition(raw["map"], f"{where}.map"), t(raw["pin"], f"{where}.pin"),
                             self.maybe_text(raw["template"], f"{where}.template"))
        if cls is WriteEntries:
            return WriteEntries(t(raw["map"], f"{where}.map"), t(raw["pin"], f"{where}.pin"),
                                self.keyed(raw["put"], f"{where}.put", self.blob), self.blobs(raw["delete"], f"{where}.delete"))
        if cls is SetSlots:
            return SetSlots(t(raw["map"], f"{where}.map"), t(raw["pin"], f"{where}.pin"),
                            self.keyed(raw["set"], f"{where}.set", t), self.blobs(raw["clear"], f"{where}.clear"))
        if cls is MovePin:
            return MovePin(t(raw["map"], f"{where}.map"), t(raw["src"], f"{where}.src"), t(raw["dst"], f"{where}.dst"))
        if cls is MigrateEntries:
            defaults, renamed = raw["defaults"], raw["renamed"]
            if not isinstance(defaults, dict):
                self.fail(f"{where}.defaults", "an object")
            if not isinstance(renamed, dict):
                self.fail(f"{where}.renamed", "an object")
            old_key, old_value, new_key, new_value = (self.type_spec(raw[k], f"{where}.{k}")
                                                      for k in ("old_key", "old_value", "new_key", "new_value"))
            return MigrateEntries(t(raw["map"], f"{where}.map"), t(raw["src"], f"{where}.src"), t(raw["pin"], f"{where}.pin"),
                                  self.number(raw["id"], f"{where}.id"), old_key, old_value, new_key, new_value,
                                  self.shallow(defaults, f"{where}.defaults"),
                                  {k: t(v, f"{where}.renamed[{k[:40]!r}]") for k, v in renamed.items()},
                                  self.keyed(raw["put"], f"{where}.put", self.blob), self.blobs(raw["delete"], f"{where}.delete"))
        if cls is CatchUp:
            return CatchUp(t(raw["map"], f"{where}.map"), t(raw["src"], f"{where}.src"), t(raw["pin"], f"{where}.pin"))
        if cls is RecordMap:
            return RecordMap(t(raw["map"], f"{where}.map"), t(raw["pin"], f"{where}.pin"),
                             self.number(raw["id"], f"{where}.id"), self.flag(raw["adopt"], f"{where}.adopt"),
                             self.maybe_definition(raw["layout"], f"{where}.layout"))
        assert cls is RemovePin
        return RemovePin(t(raw["map"], f"{where}.map"), t(raw["pin"], f"{where}.pin"))

    def plan(self, raw: Any) -> Plan:
        raw = self.obj(raw, "the plan", {"format", "pin_root", "fingerprint", "warnings", "held_replaced", "unmanaged",
                                         "kept", "scopes", "changes", "steps"})
        if raw["format"] != PLAN_FORMAT or isinstance(raw["format"], bool):
            _refuse(self.path, f"its format is {str(raw['format'])[:20]}, and this kmesh-apply reads format {PLAN_FORMAT}: "
                               "make a fresh plan")
        fingerprint = raw["fingerprint"]
        if not isinstance(fingerprint, dict):
            self.fail("fingerprint", "an object")
        for name, digest in fingerprint.items():
            self.text(digest, f"fingerprint[{name[:40]!r}]")
        held = raw["held_replaced"]
        if not isinstance(held, list):
            self.fail("held_replaced", "a list")
        for name in ("changes", "steps", "unmanaged"):
            if not isinstance(raw[name], list):
                self.fail(name, "a list")
        plan = Plan(
            self.text(raw["pin_root"], "pin_root"),
            [self.change(c, f"changes[{i}]") for i, c in enumerate(raw["changes"])],
            [self.step(s, f"steps[{i}]") for i, s in enumerate(raw["steps"])],
            self.texts(raw["warnings"], "warnings"),
            [self._held(h, f"held_replaced[{i}]") for i, h in enumerate(held)],
            [self._unmanaged(u, f"unmanaged[{i}]") for i, u in enumerate(raw["unmanaged"])],
            self.texts(raw["kept"], "kept"),
            self._scopes(raw["scopes"]),
            saved_fingerprint=fingerprint,
        )
        try:
            check_steps(plan.steps)
        except KmeshError as e:
            _refuse(self.path, str(e))
        return plan

    def _unmanaged(self, raw: Any, where: str) -> Unmanaged:
        raw = self.obj(raw, where, {f.name for f in fields(Unmanaged)})
        return Unmanaged(self.text(raw["name"], f"{where}.name"), self.text(raw["type"], f"{where}.type"),
                         self.number(raw["id"], f"{where}.id"))

    def _scopes(self, raw: Any) -> dict[str, frozenset[bytes] | None]:
        """The entries the plan depends on per map: null for all of them, else a list of keys in hex."""
        if not isinstance(raw, dict):
            self.fail("scopes", "an object")
        out: dict[str, frozenset[bytes] | None] = {}
        for name, keys in raw.items():
            if keys is None:
                out[name] = None
            elif isinstance(keys, list):
                out[name] = frozenset(self.hex(self.text(k, f"scopes[{name[:40]!r}]"), f"scopes[{name[:40]!r}]")
                                      for k in keys)
            else:
                self.fail(f"scopes[{name[:40]!r}]", "null or a list of keys")
        return out

    def _held(self, raw: Any, where: str) -> HeldReplaced:
        raw = self.obj(raw, where, {f.name for f in fields(HeldReplaced)})
        return HeldReplaced(self.text(raw["name"], f"{where}.name"), self.number(raw["id"], f"{where}.id"),
                            self.programs(raw["programs"], f"{where}.programs"),
                            self.flag(raw["destroyed"], f"{where}.destroyed"))
