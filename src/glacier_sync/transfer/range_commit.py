"""Finished ranges made durable in batches, by one thread, so no fetching thread waits on the disk.

A fetching thread hands over a range once its bytes are written (``pwrite``) and hashed. The
committer takes every range handed over since its last round, flushes the file once
(``fdatasync``: their bytes are on disk), then appends their journal lines with one ``fsync``,
and only then calls ``durable`` for each (the range counts as verified from then on). Bytes
first, then their record: a kill or a power loss at any instant leaves no journal line ahead of
its bytes. A disk error stops the fetching threads (``stop``) and is raised by ``close``.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable

from glacier_sync.transfer.range_journal import RangeJournal


class RangeCommitter:
    """Flushes the file and journals finished ranges, a batch at a time, in its own thread."""

    def __init__(
        self,
        fd: int,
        journal: RangeJournal,
        durable: Callable[[int, str], None],
        stop: threading.Event,
    ) -> None:
        self._fd, self._journal, self._durable, self._stop = fd, journal, durable, stop
        self._waiting: list[tuple[int, str]] = []
        self._ready = threading.Condition()
        self._closing = False
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="range-commit", daemon=True)
        self._thread.start()

    def add(self, index: int, digest: str) -> None:
        """Range ``index`` is written and hashed: make it durable, then journal it."""
        with self._ready:
            self._waiting.append((index, digest))
            self._ready.notify()

    def close(self, raise_error: bool = True) -> None:
        """Commit what was handed over, stop the thread, and raise its error, if any."""
        with self._ready:
            self._closing = True
            self._ready.notify()
        self._thread.join()
        if raise_error and self.error is not None:
            raise self.error

    def _run(self) -> None:
        while True:
            with self._ready:
                while not self._waiting and not self._closing:
                    self._ready.wait()
                batch, self._waiting = self._waiting, []
            if not batch:
                return
            try:
                os.fdatasync(self._fd)  # the bytes are on disk before the journal says so
                self._journal.record_many(batch)
                for index, digest in batch:
                    self._durable(index, digest)
            except BaseException as exc:  # a disk error: the fetching stops, close() raises it
                self.error = exc
                self._stop.set()
                return
