"""kmesh-apply: declarative and imperative management of eBPF map-in-map state.

The seed's imperative API, the synchroniser and the error types are importable from here; they
load lazily so that `import kmesh_apply` (and every CLI's --help) stays cheap.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

_EXPORTS = {
    "MapInMapManager": "kmesh_apply.manager",
    "OuterMapConfig": "kmesh_apply.manager",
    "InnerMapConfig": "kmesh_apply.manager",
    "MapInMapInfo": "kmesh_apply.manager",
    "KmeshError": "kmesh_apply.errors",
    "ConfigError": "kmesh_apply.errors",
    "Diagnostic": "kmesh_apply.errors",
    "KernelError": "kmesh_apply.errors",
    "LockError": "kmesh_apply.errors",
    "StalePlanError": "kmesh_apply.errors",
    "ApplyError": "kmesh_apply.errors",
    "Synchroniser": "kmesh_apply.sync",
    "load_config": "kmesh_apply.config",
}
__all__ = list(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'kmesh_apply' has no attribute {name!r}")
    value = getattr(import_module(_EXPORTS[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
