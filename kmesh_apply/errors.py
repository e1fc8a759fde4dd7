"""The tool's own exception types.

Every failure a user can cause or meet is one of these; the CLIs print them as
one clear message and exit 1, and anything else is a bug (a traceback).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from kmesh_apply.terminal import label, printable
from kmesh_apply.wording import count

# What a map may be called (the schema's propertyNames): bpffs refuses dots, and a name is one path
# component. Whole names only (fullmatch): a pattern ending in `$` lets a trailing newline through.
MAP_NAME = re.compile(r"[A-Za-z0-9_-]+")


class KmeshError(Exception):
    """Base of every error the tool reports to a user instead of a traceback."""


@dataclass(frozen=True)
class Diagnostic:
    """One problem found in a configuration, located as precisely as we can.

    `map` and `entry` name what the problem is about; `file`/`line` say where
    the user wrote it (line is 1-based, 0 when unknown).
    """

    message: str
    file: str = ""
    line: int = 0
    map: str = ""
    entry: str = ""
    kind: str = ""  # what is wrong, in the tool's own words only (never a value from the config): see `summary`

    def _where(self) -> str:
        where = printable(self.file or "<config>")
        return f"{where}:{self.line}" if self.line else where

    def __str__(self) -> str:
        about = ""
        if self.map:
            about = f" map '{printable(self.map)}'"
            if self.entry:
                about += f" entry {printable(self.entry)}"
            about += ":"
        return f"{self._where()}:{about} {printable(self.message)}"

    @property
    def summary(self) -> str:
        """Where the problem is and its kind, quoting nothing from the config but a valid map name:
        for `/healthz`, which whoever reaches the metrics port reads (a value may be a secret)."""
        about = f" map '{self.map}':" if MAP_NAME.fullmatch(self.map) else ""
        return f"{self._where()}:{about} {self.kind or 'invalid configuration'}"


class ConfigError(KmeshError):
    """The configuration is invalid; carries every problem found, not just the first."""

    def __init__(self, diagnostics: list[Diagnostic]):
        self.diagnostics = list(diagnostics)
        super().__init__("\n".join(str(d) for d in self.diagnostics))


class KernelError(KmeshError):
    """A bpf operation failed: names the operation, the map and errno, and what to do."""

    def __init__(self, op: str, target: str, errno: int, hint: str = ""):
        import os

        self.op = op
        self.target = target
        self.errno = errno
        self.hint = hint
        text = f"{op} on {target} failed: {os.strerror(errno)} (errno {errno})"
        if hint:
            text += f"; {hint}"
        super().__init__(text)


class LockError(KmeshError):
    """Another run holds the pin root's lock for longer than we were willing to wait."""


class PlanError(KmeshError):
    """The configuration cannot be planned against this pin root (a map someone else owns, a change
    that would lose entries the tool does not own); carries every such problem, not just the first."""

    def __init__(self, problems: list[str]):
        self.problems = list(problems)
        head = "cannot plan this configuration against the pin root (nothing was changed):"
        super().__init__("\n".join([head, *(f"  {p}" for p in self.problems)]))


class StalePlanError(KmeshError):
    """A saved plan no longer matches the live state it was made against."""


class ApplyError(KmeshError):
    """An apply stopped part-way; says which steps were applied and which were not."""

    def __init__(self, cause: KmeshError, applied: list[str], not_applied: list[str]):
        self.cause = cause
        self.applied = applied
        self.not_applied = not_applied
        lines = [str(cause)]
        if not_applied:
            lines.append(f"failed step: {not_applied[0]}")
        lines.append(f"applied {count(len(applied), 'step')} before the failure" + (":" if applied else "."))
        lines += [f"  done: {s}" for s in applied]
        if not_applied:
            lines.append(f"not applied ({count(len(not_applied), 'step')}):")
            lines += [f"  skipped: {s}" for s in not_applied]
        lines.append("Fix the cause and run apply again: it converges from here.")
        super().__init__("\n".join(lines))


class ReplaceInUseError(KmeshError):
    """A plan would replace maps that loaded programs hold, and replacing them was not allowed."""


# Set (to anything but 0) to see the traceback of an internal error; `--debug` sets it.
DEBUG_ENV = "KMESH_APPLY_DEBUG"


def debugging() -> bool:
    import os

    return os.environ.get(DEBUG_ENV, "0") not in ("", "0")


def internal_error(e: BaseException) -> str:
    """The one line a user sees for a bug (an exception that is no KmeshError): what it was, never a
    traceback, which may hold config values and is noise to an operator (see `debugging`)."""
    try:
        text = str(e).strip().splitlines()[0] if str(e).strip() else ""
    except Exception:  # noqa: BLE001  (an exception whose own str fails)
        text = ""
    return f"internal error, please report it: {type(e).__name__}" + (f": {label(text, 200)}" if text else "")
