"""Keep a work's claim alive while a phase runs and moves: a heartbeat thread renews the short
lease, and gives it up when the phase's ``ProgressWatch`` says it stalled."""

from __future__ import annotations

import logging
import threading
from datetime import timedelta
from types import TracebackType

from glacier_sync.progress_watch import ProgressWatch
from glacier_sync.records.progress import ProgressStore

log = logging.getLogger(__name__)


class Heartbeat:
    """Renews ``run_id``'s lease on one row every third of the lease until the block ends.

    ``lost`` turns True when a renewal finds the claim taken over (the lease ran out while the
    database was unreachable, say); the phase then records nothing. When ``watch`` finds the
    phase stalled, the watch is stopped (the phase's next tick raises ``Stalled``) and the lease
    is no longer renewed: a phase that cannot even be stopped loses its claim when the lease
    runs out, and another run may take the work.
    """

    def __init__(
        self,
        store: ProgressStore,
        progress_id: int,
        run_id: str,
        lease: timedelta,
        watch: ProgressWatch | None = None,
    ) -> None:
        self.store, self.progress_id, self.run_id, self.lease = store, progress_id, run_id, lease
        self.watch = watch
        self.interval = max(lease.total_seconds() / 3, 0.5)
        if watch is not None and watch.limit is not None:
            self.interval = min(self.interval, max(watch.limit / 4, 0.5))
        self.lost = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"lease-{progress_id}", daemon=True)

    def __enter__(self) -> Heartbeat:
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            if self.watch is not None and self.watch.stalled():
                log.error("row %s: %s", self.progress_id, self.watch.reason)
                return
            try:
                if not self.store.renew(self.progress_id, self.run_id, self.lease):
                    self.lost = True
                    log.error("row %s: claim of %s was taken over", self.progress_id, self.run_id)
                    return
            except Exception as exc:  # the database may be back before the lease runs out
                log.warning(
                    "row %s: lease renewal failed (%s); trying again", self.progress_id, exc
                )
