"""Plans for people (Terraform-like text) and for machines (JSON); the plan itself stays data."""

from __future__ import annotations

import json
from dataclasses import asdict
from itertools import chain, islice
from typing import Any, Callable

from kmesh_apply.config.model import PERCPU_TYPES
from kmesh_apply.plan.model import MapChange, MapDef, Plan
from kmesh_apply.terminal import printable
from kmesh_apply.wording import count

SYMBOL = {"create": "+", "update": "~", "replace": "-/+", "destroy": "-", "recover": "*", "adopt": "<=",
          "migrate": "~", "rename": "~"}
VERB = {
    "create": "will be created",
    "update": "will be updated in place",
    "replace": "must be replaced",
    "destroy": "will be destroyed",
    "recover": "is recovered from an interrupted apply",
    "adopt": "will be adopted (managed by kmesh-apply from now on)",
    "migrate": "will be migrated",
    "rename": "will be renamed",
}
# An upgrade's review, per map (`_review`): what happens to each, in this order.
REVIEW = (("migrated", "migrate"), ("renamed", "rename"), ("created", "create"), ("replaced", "replace"),
          ("updated", "update"), ("adopted", "adopt"), ("destroyed", "destroy"))
COLOUR = {"+": "32", "~": "33", "-": "31", "-/+": "35", "*": "36", "<=": "36"}
UNMANAGED_SHOWN = 20  # unmanaged maps named in text before the rest is counted (--json lists them all)
FOLD_AFTER = 10  # entry lines shown per map before the rest is folded into a count
LINE_BUDGET = 200  # entry lines in a whole plan: past it, maps show counts only (--json has everything)


class _Reading:
    """How one change's entries read: keys and values as the user writes them. Old entries (removed, and
    the old side of a changed value) of a replaced map are read with its live properties: its key or
    value may be of another type and size than the new definition's."""

    def __init__(self, ch: MapChange) -> None:
        old = ch.old or ch.definition
        self.key = _decoder(ch.definition, "key")
        self.old_key = _decoder(old, "key")
        self.value = _decoder(ch.definition, "value") if ch.kind != "outer" else str
        self.old_value = _decoder(old, "value") if ch.kind != "outer" else str


def _decoder(d: MapDef | None, which: str) -> Callable[[bytes], Any]:
    """Turn stored bytes back into what the user writes, using the map's types when they are known."""
    if d is None:
        return lambda b: b.hex() if isinstance(b, bytes) else b
    from kmesh_apply.config import codecs, maptypes, references
    from kmesh_apply.ctype import type_or_raw

    typ = type_or_raw(getattr(d, f"{which}_type"), d.key_size if which == "key" else d.value_size)
    kind = maptypes.kind(d.type).entries if d.type in maptypes.KINDS else maptypes.DATA
    if which == "key" and not d.key_size:  # a queue's or bloom filter's value: its position, or itself
        return (lambda b: f"#{int.from_bytes(b, 'little')}") if kind == maptypes.LIST else (lambda b: None)
    if which == "value" and kind in maptypes.REFERENCES:
        return lambda b: references.decode(kind, b, lambda i: f"program {i}", references.interface_name)
    if which == "value":
        return codecs.value_decoder(typ, d.type in PERCPU_TYPES)
    return lambda b: codecs.decode(typ, b)


LARGE_VALUE = 200  # characters: a value longer than this shows what changed in it, not all of it
DIFFS_SHOWN = 5  # changed elements listed per entry in text


def _fmt(v: Any) -> str:
    return json.dumps(v, separators=(", ", ": ")) if isinstance(v, (dict, list)) else str(v)


def _leaves(v: Any) -> int:
    """How many scalar elements a decoded value holds."""
    if isinstance(v, list):
        return sum(map(_leaves, v))
    if isinstance(v, dict):
        return sum(map(_leaves, v.values()))
    return 1


def element_diff(old: Any, new: Any, path: str = "") -> list[tuple[str, Any, Any]]:
    """Where two decoded values differ: (path like `[5]` or `.addr.ip4`, old, new), deepest first
    where both have the same shape (list lengths, struct fields)."""
    if isinstance(old, list) and isinstance(new, list) and len(old) == len(new):
        return [d for i, (a, b) in enumerate(zip(old, new)) if a != b for d in element_diff(a, b, f"{path}[{i}]")]
    if isinstance(old, dict) and isinstance(new, dict) and old.keys() == new.keys():
        return [d for k in old if old[k] != new[k] for d in element_diff(old[k], new[k], f"{path}.{k}")]
    return [(path, old, new)]


def _large(*values: Any) -> bool:
    return any(isinstance(v, (list, dict)) and len(_fmt(v)) > LARGE_VALUE for v in values)


def _changed_text(old: Any, new: Any) -> str:
    if not _large(old, new):
        return f"{_fmt(old)} -> {_fmt(new)}"
    diff = element_diff(old, new)
    shown = ", ".join(f"{p or 'value'}: {_fmt(a)} -> {_fmt(b)}" for p, a, b in diff[:DIFFS_SHOWN])
    more = f", ... and {len(diff) - DIFFS_SHOWN} more" if len(diff) > DIFFS_SHOWN else ""
    return f"{len(diff)} of {_leaves(new)} elements changed: {shown}{more}"


def _value_text(v: Any) -> str:
    text = _fmt(v)
    if not _large(v):
        return text
    return f"{text[:LARGE_VALUE]}... ({_leaves(v)} elements)"


def _changed_json(key: Any, old: Any, new: Any) -> dict[str, Any]:
    """A changed entry for --json: old and new whole, or for large values the changed elements."""
    if not _large(old, new):
        return {"key": key, "old": old, "new": new}
    diff = element_diff(old, new)
    return {"key": key, "elements": _leaves(new),
            "changed_elements": [{"path": p, "old": a, "new": b} for p, a, b in diff]}


def _entry_lines(ch: MapChange, limit: int) -> tuple[list[str], int]:
    """The first `limit` entry changes, decoded; the rest only counted (decoding a million costs seconds)."""
    total = len(ch.added) + len(ch.changed) + len(ch.removed)
    if limit <= 0:  # the plan's budget is spent: no decoders to make (Kmesh's 5,000 maps)
        return [], total
    r = _Reading(ch)
    changes = chain((("+", r.key(k), _value_text(r.value(v))) for k, v in ch.added.items()),
                    (("~", r.key(k), _changed_text(r.old_value(o), r.value(n))) for k, (o, n) in ch.changed.items()),
                    (("-", r.old_key(k), _value_text(r.old_value(v))) for k, v in ch.removed.items()))
    out = [f"{sym} {text}" if key is None else f"{sym} {_fmt(key)}: {text}" for sym, key, text in islice(changes, limit)]
    return out, total - len(out)


def _paint(symbol: str, text: str, color: bool) -> str:
    """ANSI colour by change symbol; only ever asked for on a terminal."""
    return f"\x1b[{COLOUR[symbol]}m{text}\x1b[0m" if color and symbol in COLOUR else text


def _unmanaged_text(plan: Plan) -> list[str]:
    """The maps left alone, named (the first UNMANAGED_SHOWN) on one line."""
    if not plan.unmanaged:
        return []
    shown = ", ".join(u.describe() for u in plan.unmanaged[:UNMANAGED_SHOWN])
    more = f", and {len(plan.unmanaged) - UNMANAGED_SHOWN} more" if len(plan.unmanaged) > UNMANAGED_SHOWN else ""
    return [f"Unmanaged ({count(len(plan.unmanaged), 'map')} pinned here by others, left alone): {shown}{more}"]


def _migration_text(ch: MapChange) -> str:
    """`: 5,000 entries from "kmesh_service" (value: field lb_strict_prio removed, 136 -> 132 bytes)`."""
    m = ch.migration
    if m is None:
        return ""
    if m.renamed_only:
        return f' from "{m.source}" (the same map, its {count(m.entries, "entry", "entries")} kept)'
    source = f' from "{m.source}"' if m.source != ch.name else ""
    return f": {count(m.entries, 'entry', 'entries')}{source}" + (f" ({m.layout})" if m.layout else "")


def _review(plan: Plan) -> list[str]:
    """For an upgrade (a plan that migrates or renames): one line per fate, naming every map, so the
    whole of it is reviewed at a glance: migrated, renamed, created, ..., kept, unmanaged."""
    if not any(ch.action in ("migrate", "rename") for ch in plan.changes):
        return []
    out = ["Per map:"]
    for word, action in REVIEW:
        names = []
        for ch in plan.changes:
            if ch.action != action:
                continue
            m = ch.migration
            if m is not None and not m.renamed_only:
                names.append(f"{ch.name} ({count(m.entries, 'entry', 'entries')}"
                             + (f", from {m.source})" if m.source != ch.name else ")"))
            else:
                names.append(f"{ch.name} (from {m.source})" if m is not None else ch.name)
        if names:
            out.append(f"  {word:<10} {', '.join(names)}")
    if plan.kept:
        out.append(f"  {'kept':<10} {', '.join(plan.kept)}")
    if plan.unmanaged:
        out.append(f"  {'unmanaged':<10} {', '.join(u.name for u in plan.unmanaged)}")
    return out + [""]


def _title(ch: MapChange) -> str:
    """`inner map "x"`, `outer map "x"`, or for a plain map `map "x"`."""
    return f"{'' if ch.kind == 'plain' else ch.kind + ' '}map \"{ch.name}\""


def step_lines(plan: Plan, limit: int = LINE_BUDGET) -> list[str]:
    """The steps in the order they run, numbered; past `limit`, the rest counted by operation."""
    out = [f"  {i}. {s.describe()}" for i, s in enumerate(plan.steps[:limit], 1)]
    rest = plan.steps[limit:]
    if rest:
        ops: dict[str, int] = {}
        for s in rest:
            ops[s.op] = ops.get(s.op, 0) + 1
        out.append(f"  ... and {count(len(rest), 'more step')} ({', '.join(f'{n} {op}' for op, n in ops.items())})")
    return out


def render_text(plan: Plan, color: bool = False, steps: bool = False) -> str:
    """The plan as a reviewer reads it: one block per map, entry diffs folded, then the summary line;
    `steps`: also the steps that will run (a saved plan is shown so before it is applied).
    Every line is made printable before it is painted: names, keys and values (a char[N] value, a map
    someone else pinned) may hold what a terminal acts on, or line breaks that would forge lines."""
    if not plan.drift:
        lines = [f"Warning: {w}" for w in plan.warnings] + _unmanaged_text(plan) + [plan.summary()]
        return "".join(f"{printable(line)}\n" for line in lines)
    out: list[tuple[str, str]] = []  # (change symbol to paint by, or "", line)
    if plan.has_changes:
        out += [("", f"kmesh-apply will perform the following actions in {plan.pin_root}:"), ("", "")]
    budget = LINE_BUDGET
    for ch in plan.changes:
        sym = SYMBOL[ch.action]
        what = f"{_title(ch)} {VERB[ch.action]}"
        if ch.action == "update" and ch.swap:
            what = f"{_title(ch)} will be updated by swap (built aside, slots switched at once)"
        if ch.definition is not None and ch.action in ("create", "replace"):
            d = ch.definition
            what += f" ({d.type}, max_entries {d.max_entries})"
        what += _migration_text(ch)
        out.append((sym, f"  {sym} {what}"))
        if ch.adopted and ch.action != "adopt":
            out.append(("", "      # adopted: managed by kmesh-apply from now on"))
        if ch.manage_entries != "all" and ch.action in ("update", "adopt"):
            out.append(("", f"      # manage_entries: {ch.manage_entries}: entries the configuration does not name are "
                            "left alone"))
        out += [("", f"      # {r}") for r in ch.reasons]
        out += [("", f"      # held by {p}") for p in ch.holders]
        shown, folded = _entry_lines(ch, min(FOLD_AFTER, budget))
        budget -= len(shown)
        out += [(line[0], f"      {line}") for line in shown]
        if folded:
            out.append(("", f"        ... and {count(folded, 'more entry change')}" if shown
                        else f"      ({count(folded, 'entry change')})"))
        out.append(("", ""))
    out += [("", f"Warning: {w}") for w in plan.warnings]
    if plan.warnings:
        out.append(("", ""))
    if steps and plan.steps:
        out += [("", line) for line in ["Steps, in order:", *step_lines(plan), ""]]
    if plan.held_replaced:
        out.append(("", f"Drift in {plan.pin_root}: loaded programs still read maps it replaced or destroyed, until "
                        "they are reloaded or unloaded:"))
        out += [("", f"  ! {h.describe()}") for h in plan.held_replaced]
        out.append(("", ""))
    if plan.unmanaged:
        out += [("", line) for line in [*_unmanaged_text(plan), ""]]
    out += [("", line) for line in _review(plan)]
    out.append(("", plan.summary()))
    return "\n".join(_paint(sym, printable(line), color) for sym, line in out) + "\n"


def render_json(plan: Plan) -> dict[str, Any]:
    """Everything a CI job needs to post a summary: counts, per-map actions, decoded entry diffs, steps."""
    changes = []
    for ch in plan.changes:
        r = _Reading(ch)
        changes.append({
            "name": ch.name,
            "kind": ch.kind,
            "action": ch.action,
            "reasons": ch.reasons,
            "swap": ch.swap,
            "adopted": ch.adopted,
            "manage_entries": ch.manage_entries,
            "migration": asdict(ch.migration) if ch.migration is not None else None,
            "holders": [asdict(p) for p in ch.holders],
            "counts": {"added": len(ch.added), "changed": len(ch.changed), "removed": len(ch.removed)},
            "added": [{"key": r.key(k), "value": r.value(v)} for k, v in ch.added.items()],
            "changed": [_changed_json(r.key(k), r.old_value(o), r.value(n)) for k, (o, n) in ch.changed.items()],
            "removed": [{"key": r.old_key(k), "value": r.old_value(v)} for k, v in ch.removed.items()],
        })
    return {
        "format_version": 1,
        "pin_root": plan.pin_root,
        "has_changes": plan.has_changes,
        "drift": plan.drift,
        "counts": plan.counts,
        "summary": plan.summary(),
        "warnings": plan.warnings,
        "held_replaced": [asdict(h) for h in plan.held_replaced],
        "unmanaged": [asdict(u) for u in plan.unmanaged],
        "kept": plan.kept,
        "migrations": [{"map": ch.name, **asdict(ch.migration), "reasons": ch.reasons,
                        "holders": [asdict(p) for p in ch.holders]}
                       for ch in plan.changes if ch.migration is not None],
        "changes": changes,
        "steps": [{"op": s.op, "description": s.describe()} for s in plan.steps],
        "entry_checks": plan.entry_checks,
    }


def render_checks(plan: Plan) -> str:
    """How each large map's entries were compared with the kernel's (`plan -v`)."""
    return "".join(f"  {name}: {how}\n" for name, how in sorted(plan.entry_checks.items()))
