"""What the synchroniser asks of the kernel, as a small protocol (read maps, run a plan).

The real side is the pin root's reader and executor, with map handles kept open from
one flush to the next and the pin root's lock held for the synchroniser's lifetime;
tests pass a PinRootKernel of their own that removes a pin at a chosen step.
"""

from __future__ import annotations

from typing import Callable, Iterable, Protocol

from kmesh_apply.api import perform
from kmesh_apply.errors import KmeshError
from kmesh_apply.executor import ApplyReport
from kmesh_apply.kernel.maps import Map
from kmesh_apply.kernel.progs import Program, map_holders
from kmesh_apply.pinroot.drift import Seen, unchanged
from kmesh_apply.pinroot.guard import PinRoot, PinRootLock
from kmesh_apply.plan.model import Plan, Step
from kmesh_apply.pinroot.reader import read_live, read_map
from kmesh_apply.state import LiveMap, LiveState


class Kernel(Protocol):
    def read(self) -> LiveState:
        """Every map of the pin root, with memlock (a full read: the cache starts over from it)."""

    def run(self, plan: Plan, live: LiveState, on_step: Callable[[Step], None]) -> ApplyReport:
        """Perform a plan made against `live`, calling `on_step` after each step; raises ApplyError
        naming what was and was not applied, or ReplaceInUseError (nothing applied) when it would
        replace maps that loaded programs hold and that is not allowed."""

    def holders(self, map_ids: Iterable[int]) -> dict[int, tuple[Program, ...]]:
        """The loaded programs holding these maps now (programs come and go between full reads)."""

    def unchanged(self, state: LiveState) -> bool:
        """Whether the pin root still holds exactly `state` (cheaply: one number per map where the
        kernel can sum entries); False when in doubt, and the caller reads it in full."""

    def read_map(self, pin: str, entries: bool = True) -> LiveMap:
        """One map `run` has just created or filled (called from `on_step`), with memlock. `entries=False`
        for a map just created: the steps that fill it are replayed on it (its entries read back would
        cost as long as writing them, and replaying a million onto them an index of a million keys)."""

    def memlock(self, pin: str) -> int | None:
        """What the map at `pin` costs the kernel now (it changes with entries for no_prealloc maps)."""

    def close(self) -> None: ...


class PinRootKernel:
    """The pin root itself: locked while the synchroniser lives, so no other apply changes it unseen."""

    def __init__(self, pin_root: str, lock_timeout: float, allow_replace_in_use: bool = False):
        self.pin_root = pin_root
        self.allow_replace_in_use = allow_replace_in_use
        self.lock = PinRootLock(pin_root, lock_timeout).__enter__()
        self.handles: dict[str, Map] = {}
        self._root: PinRoot | None = None
        self.seen: Seen = {}  # pins whose map IDs the drift check has seen (pinroot.drift)

    @property
    def root(self) -> PinRoot:
        """The pin root, opened (and made) once and kept open until the next full read."""
        if self._root is None:
            self._root = PinRoot.make(self.pin_root)
        return self._root

    def read(self) -> LiveState:
        self._drop_handles()  # pins may have been replaced behind our back: reopen them when next needed
        try:
            return read_live(self.pin_root, memlock=True)
        except OSError as e:
            raise KmeshError(f"cannot read pin root {self.pin_root}: {e.strerror or e}") from None

    def run(self, plan: Plan, live: LiveState, on_step: Callable[[Step], None]) -> ApplyReport:
        try:
            return perform(plan, live, allow_replace_in_use=self.allow_replace_in_use, on_step=on_step,
                           handles=self.handles, root=self.root)
        except BaseException:
            self._drop_handles()
            raise

    def unchanged(self, state: LiveState) -> bool:
        return unchanged(state, self.seen)

    def read_map(self, pin: str, entries: bool = True) -> LiveMap:
        return read_map(self.root, pin, memlock=True, entries=entries)

    def holders(self, map_ids: Iterable[int]) -> dict[int, tuple[Program, ...]]:
        return map_holders(map_ids)

    def memlock(self, pin: str) -> int | None:
        m = self.handles.get(pin)
        if m is None:
            m = self.handles[pin] = self.root.open_map(pin)
        return m.memlock()

    def _drop_handles(self) -> None:
        for m in self.handles.values():
            m.close()
        self.handles.clear()
        if self._root is not None:
            self._root.close()
            self._root = None

    def close(self) -> None:
        self._drop_handles()
        if self.lock.fd >= 0:
            self.lock.__exit__(None, None, None)
