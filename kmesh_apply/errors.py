"""The tool's own exception types.

Every failure a user can cause or meet is one of these; the CLIs print them as
one clear message and exit 1, and anything else is a bug (a traceback).
"""

from __future__ import annotations

from kmesh_apply.wording import count

from dataclasses import dataclass


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

    def __str__(self) -> str:
        where = self.file or "<config>"
        if self.line:
            where += f":{self.line}"
        about = ""
        if self.map:
            about = f" map '{self.map}'"
            if self.entry:
                about += f" entry {self.entry}"
            about += ":"
        return f"{where}:{about} {self.message}"


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
