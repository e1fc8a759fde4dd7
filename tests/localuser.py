"""An unprivileged local user made for one test, to play another user of a shared node.

The user is made with useradd under a unique name and removed with userdel afterwards, even when
the test fails. Its steps run with setpriv (a real uid/gid switch, no supplementary groups, no
capabilities) and the system's tools: the attacker needs none of this checkout's virtualenv.
"""

from __future__ import annotations

import contextlib
import pwd
import subprocess
import uuid
from dataclasses import dataclass, field
from typing import Iterator


@dataclass
class LocalUser:
    name: str
    uid: int
    gid: int
    started: list[subprocess.Popen] = field(default_factory=list)

    def _argv(self, script: str) -> list[str]:
        return ["setpriv", f"--reuid={self.uid}", f"--regid={self.gid}", "--clear-groups", "--inh-caps=-all",
                "--", "sh", "-c", script]

    def run(self, script: str, check: bool = True) -> subprocess.CompletedProcess:
        """Run a shell script as this user (cwd /: it may not enter the test's directories)."""
        res = subprocess.run(self._argv(script), capture_output=True, text=True, cwd="/", timeout=60)
        if check and res.returncode != 0:
            raise AssertionError(f"as {self.name}: {script!r} failed ({res.returncode}): {res.stderr}")
        return res

    def start(self, script: str) -> subprocess.Popen:
        """Start a shell script as this user in the background; stopped when the user is removed."""
        proc = subprocess.Popen(self._argv(script), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd="/")
        self.started.append(proc)
        return proc


@contextlib.contextmanager
def local_user() -> Iterator[LocalUser]:
    name = f"kmt{uuid.uuid4().hex[:10]}"
    subprocess.run(["useradd", "--no-create-home", "--user-group", "--shell", "/usr/sbin/nologin", name],
                   check=True, capture_output=True)
    try:
        entry = pwd.getpwnam(name)
        user = LocalUser(name, entry.pw_uid, entry.pw_gid)
        try:
            yield user
        finally:
            for proc in user.started:
                proc.kill()
                proc.wait()
    finally:
        subprocess.run(["userdel", "--force", name], capture_output=True)
