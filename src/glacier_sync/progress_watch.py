"""Whether a running phase still makes progress: the phase ticks as bytes or files move; the
lease's heartbeat stops a phase that has not ticked for ``stall_minutes``.

A tick after the stop raises ``Stalled`` in the phase (in whichever thread ticks), so that a
stalled download, debag or sync ends as a transient failure and the work is tried again on the
next run rather than held by a process that no longer moves.
"""

from __future__ import annotations

import threading
import time

from glacier_sync.errors import Stalled


class ProgressWatch:
    """The time of a phase's last progress, and the stop a stall sets (``limit`` seconds
    without a tick; None: never stopped)."""

    def __init__(self, what: str, limit: float | None) -> None:
        self.what, self.limit = what, limit
        self.last = time.monotonic()
        self.stopped = threading.Event()
        self.reason = ""

    def tick(self) -> None:
        """Progress now; raise ``Stalled`` once the phase was stopped."""
        self.check()
        self.last = time.monotonic()

    def check(self) -> None:
        """No progress to tell: raise ``Stalled`` if the phase was stopped."""
        if self.stopped.is_set():
            raise Stalled(self.reason)

    def idle_seconds(self) -> float:
        return time.monotonic() - self.last

    def stalled(self) -> bool:
        """Whether the phase has gone ``limit`` seconds without progress; if so, stop it."""
        if self.stopped.is_set():
            return True
        idle = self.idle_seconds()
        if self.limit is None or idle < self.limit:
            return False
        self.reason = (
            f"{self.what} made no progress for {idle:.0f} s (stall_minutes = "
            f"{self.limit / 60:g}); stopped, tried again on the next run"
        )
        self.stopped.set()
        return True


def no_watch(what: str = "a phase") -> ProgressWatch:
    """A watch that never stops anything (callers outside a claimed phase)."""
    return ProgressWatch(what, None)
