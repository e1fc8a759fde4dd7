"""Which changes of a map are migrations, and what a migration plans (contract section 10).

A map whose fixed properties or key/value layout change is normally replaced by a new map filled
with the configuration's entries. When the configuration does not give all of its entries
(`manage_entries: listed | none`), a new map would lose the ones a daemon or programs wrote: the
change is a migration instead. A new map is built aside, every live entry is converted from the old
layout to the new one (`convert`), a second pass just before the switch carries what was written
meanwhile, and the new map takes the old one's place like any map built aside (outer slots switched
in one batch; a plain map's pin renamed over the old one). `migrate.from` first moves a map pinned
under its previous name to its new one; alone, that is the whole change (a rename keeps the map).

The old layout comes from the live map's BTF, else from the tool's record of the layout it applied,
else from `migrate.key`/`migrate.value`; a size alone is raw bytes (kept as they are when the size
stays). Everything here is pure: the planner hands it live maps and configuration specs.
"""

from __future__ import annotations

from dataclasses import asdict

from kmesh_apply.config.codecs import per_cpu_stride
from kmesh_apply.config.model import ARRAY_TYPES, PERCPU_TYPES, InnerMapSpec
from kmesh_apply.convert import Conversion, LayoutError, MigrationRefused, conversion
from kmesh_apply.ctype import CType, TypeSpecError, parse_type, type_or_raw
from kmesh_apply.entries import Entries
from kmesh_apply.plan.model import CatchUp, MapDef, MigrateEntries, Migration, Step
from kmesh_apply.state import LiveMap
from kmesh_apply.wording import count


def wanted(spec: InnerMapSpec) -> bool:
    """Whether a change of this map's fixed properties must keep its live entries: they are not all
    the configuration's."""
    return not spec.manage.all_entries


def old_types(spec: InnerMapSpec, have: LiveMap) -> tuple[CType, CType, list[str]]:
    """The live map's key and value types: its BTF or recorded layout, else `migrate.key`/`value`, else
    raw bytes of its sizes; and warnings about `migrate:` types the map's own types overrule."""
    out, warnings = [], []
    for which, size in (("key", have.key_size), ("value", have.value_size)):
        live_spec = getattr(have, f"{which}_type")
        given = getattr(spec.migrate, which, None) if spec.migrate is not None else None
        if live_spec is not None:
            try:
                typ = parse_type(live_spec)
            except TypeSpecError:
                typ = None
            if typ is not None:
                if given is not None and given != typ:
                    warnings.append(f"map '{spec.name}': migrate.{which} is not used: the live map carries its own "
                                    f"{which} type (BTF or kmesh-apply's record), which is what its entries hold")
                out.append(typ)
                continue
        if given is not None and given.size != size and not (which == "value" and have.type in PERCPU_TYPES):
            raise LayoutError(f"migrate.{which} is {count(given.size, 'byte')}, the live map's {which} is "
                              f"{count(size, 'byte')}: it is not the type of what the map holds")
        out.append(given if given is not None else type_or_raw(None, size))
    return out[0], out[1], warnings


def conversion_for(spec: InnerMapSpec, have: LiveMap) -> tuple[Conversion, list[str]]:
    """The compiled conversion of `have`'s entries to the layout `spec` declares (LayoutError if none).
    A map already in that layout converts as it is: `defaults:` and `renamed:` were for the migration
    that brought it there."""
    old_key, old_value, warnings = old_types(spec, have)
    m = spec.migrate
    if m is None or (old_key, old_value) == (spec.key, spec.value):
        return conversion(old_key, spec.key, old_value, spec.value), warnings
    return conversion(old_key, spec.key, old_value, spec.value, m.defaults, m.renamed), warnings


def count_entries(conv: Conversion, spec: InnerMapSpec, have: LiveMap) -> int:
    """How many live entries the new map will hold; raises MigrationRefused, naming the entries that
    cannot keep their data. Entries are converted only when some could be refused."""
    fits = spec.max_entries >= have.max_entries or spec.type not in ARRAY_TYPES and len(have.entries) <= spec.max_entries
    if conv.total and fits:
        return len(have.entries)
    entries = have.entries if isinstance(have.entries, Entries) else Entries.of(
        have.entries, have.key_size, len(next(iter(have.entries.values()), b"")) or have.value_size)
    cpus = entries.value_size // per_cpu_stride(conv.value.old) if have.type in PERCPU_TYPES else 0
    return len(conv.convert(entries, spec.max_entries, cpus=cpus, array=spec.type in ARRAY_TYPES))


def summary(conv: Conversion, source: str, entries: int) -> Migration:
    return Migration(source, entries, conv.text(), [asdict(d) for d in conv.diffs if d.changed])


def steps(spec: InnerMapSpec, want: MapDef, have: LiveMap, pin: str, conv: Conversion) -> tuple[list[Step], CatchUp]:
    """The steps that fill the map built aside at `pin` (after its CreateMap), and its second pass."""
    m = spec.migrate
    listed = spec.entries if spec.manage.entries == "listed" else {}
    first = MigrateEntries(spec.name, spec.name, pin, have.id, conv.key.old.spec(), conv.value.old.spec(), want.key_type,
                           want.value_type, dict(m.defaults) if m else {}, dict(m.renamed) if m else {},
                           listed, sorted(spec.manage.absent))
    return [first], CatchUp(spec.name, spec.name, pin)


def refused(name: str, error: LayoutError | MigrationRefused) -> str:
    """A planning problem: the map cannot be migrated, and why (the entries are named)."""
    if isinstance(error, MigrationRefused):
        return f"map '{name}': cannot migrate its entries: " + "; ".join(error.problems)
    return f"map '{name}': cannot migrate its entries: {error}"
