"""Keep a work's claim alive while a phase runs: a heartbeat thread renews the short lease."""

from __future__ import annotations

import logging
import threading
from datetime import timedelta
from types import TracebackType

from glacier_sync.records.progress import ProgressStore

log = logging.getLogger(__name__)


class Heartbeat:
    """Renews ``run_id``'s lease on one row every third of the lease until the block ends.

    ``lost`` turns True when a renewal finds the claim taken over (the lease ran out while the
    database was unreachable, say); the phase then records nothing.
    """

    def __init__(
        self, store: ProgressStore, progress_id: int, run_id: str, lease: timedelta
    ) -> None:
        self.store, self.progress_id, self.run_id, self.lease = store, progress_id, run_id, lease
        self.interval = max(lease.total_seconds() / 3, 0.5)
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
            try:
                if not self.store.renew(self.progress_id, self.run_id, self.lease):
                    self.lost = True
                    log.error("row %s: claim of %s was taken over", self.progress_id, self.run_id)
                    return
            except Exception as exc:  # the database may be back before the lease runs out
                log.warning(
                    "row %s: lease renewal failed (%s); trying again", self.progress_id, exc
                )
