"""A failed bpf call as a KernelError, with what the user can do about its errno.

Below maps and BTF alike, so that both report failures the same way without importing each other.
"""

from __future__ import annotations

import errno as E

from kmesh_apply.errors import KernelError

ENOTSUPP = 524  # kernel-internal "operation not supported", returned by bpf() as is

HINTS = {
    E.EPERM: "run as root (CAP_BPF and CAP_SYS_ADMIN), and check the memlock limit (ulimit -l)",
    E.EACCES: "run as root (CAP_BPF and CAP_SYS_ADMIN); the map may also be read-only",
    E.E2BIG: "the map is full (max_entries reached) or the index is beyond max_entries",
    ENOTSUPP: "this map type does not support the operation",
    E.EOPNOTSUPP: "this map type does not support the operation",
}


def fail(op: str, target: str, err: int, hint: str = "") -> KernelError:
    """The KernelError for a failed call, with the generic hint for errno when none is given."""
    return KernelError(op, target, err, hint or HINTS.get(err, ""))
