"""Hashes read back from disk behind a download's ranges, while the other ranges are fetched.

``InOrderHash``: the whole file's MD5 or SHA in byte order (a single-part eTag or checksum),
each range hashed as soon as the ranges before it are in, so no pass of its own follows.

``PartHashes``: each upload part's MD5 or SHA, once all the ranges it was split into are in. A
part larger than the download's range size is fetched in several ranges (a crash then costs a
range, not a part), but an MD5 or a SHA cannot be combined from pieces the way a CRC can. So the
ranges carry a CRC32C of their own (to verify them on a resume), and the part is read back
from disk (the page cache, as a rule) and hashed as soon as its last range is durable, while the
other ranges are still being fetched. A resumed download hashes its parts already complete on
disk the same way. A read error is reported as itself, never taken for a mismatch.
"""

from __future__ import annotations

import threading
from concurrent.futures import Future, ThreadPoolExecutor

from glacier_sync.errors import DownloadError
from glacier_sync.transfer.object_checks import new_hasher
from glacier_sync.transfer.range_journal import RangePlan
from glacier_sync.transfer.whole_object import hash_span


class PartHashes:
    """The parts' hex digests of ``plan.algorithm``, each hashed by a small pool of threads as
    soon as every range of the part is on disk (``add``), in whatever order the parts complete."""

    def __init__(self, fd: int, plan: RangePlan, done: set[int], threads: int) -> None:
        self._fd, self._plan = fd, plan
        self._lock = threading.Lock()
        self._pool = ThreadPoolExecutor(max(1, threads), thread_name_prefix="part-hash")
        self._hashed: dict[int, Future[str]] = {}
        self._left: dict[int, set[int]] = {}
        for index in range(plan.ranges):
            self._left.setdefault(index // plan.ranges_per_part, set()).add(index)
        for index in done:
            self.add(index)

    def add(self, index: int) -> None:
        """Range ``index`` is durable on disk; its part is hashed once it is the last one."""
        part = index // self._plan.ranges_per_part
        with self._lock:
            left = self._left[part]
            left.discard(index)
            if left or part in self._hashed:
                return
            self._hashed[part] = self._pool.submit(self._hash, part)

    def abort(self) -> None:
        """Stop (the download failed): parts not yet begun are not hashed."""
        self._pool.shutdown(wait=True, cancel_futures=True)

    def finish(self) -> list[str]:
        """Every part's hex digest, in order (every range must be in); a DownloadError when
        reading the file back failed (the verified ranges are kept)."""
        self._pool.shutdown(wait=True)
        missing = sorted(set(self._left) - set(self._hashed))
        if missing:
            raise RuntimeError(f"parts {missing} of {self._plan.key} were never completed")
        try:
            return [self._hashed[part].result() for part in sorted(self._hashed)]
        except OSError as exc:
            raise DownloadError(
                f"reading {self._plan.key} back from disk to hash its parts failed ({exc}); "
                "the verified ranges are kept and the next try checks it again"
            ) from exc

    def _hash(self, part: int) -> str:
        first = part * self._plan.ranges_per_part
        last = min(first + self._plan.ranges_per_part, self._plan.ranges) - 1
        hasher = new_hasher(self._plan.algorithm)
        hash_span(self._fd, self._plan.bounds(first)[0], self._plan.bounds(last)[1], hasher)
        return hasher.hexdigest()


class InOrderHash:
    """The hash of the whole file, read from disk behind the ranges as they complete in order
    (so a single-part eTag or SHA is checked without a pass of its own after the download)."""

    def __init__(self, fd: int, plan: RangePlan, done: set[int], algorithm: str) -> None:
        self._fd, self._plan, self._done = fd, plan, done
        self._hasher = new_hasher(algorithm)
        self._ready = threading.Condition()
        self._closing = False
        self._digest: str | None = None
        self._error: OSError | None = None
        self._aborted = False
        self._thread = threading.Thread(target=self._run, name="in-order-hash", daemon=True)
        self._thread.start()

    def add(self, index: int) -> None:
        """Range ``index`` is on disk."""
        with self._ready:
            self._done.add(index)
            self._ready.notify()

    def abort(self) -> None:
        """Stop hashing (the download failed): the thread ends at its next range."""
        with self._ready:
            self._closing = self._aborted = True
            self._ready.notify()
        self._thread.join()

    def finish(self) -> str | None:
        """The whole file's hex digest, or None when a range is missing (the download failed); a
        DownloadError when reading the file back failed (the verified ranges are kept)."""
        with self._ready:
            self._closing = True
            self._ready.notify()
        self._thread.join()
        if self._error is not None:
            raise DownloadError(
                f"reading {self._plan.key} back from disk to hash it failed ({self._error}); "
                "the verified ranges are kept and the next try checks it again"
            ) from self._error
        return self._digest

    def _run(self) -> None:
        try:
            self._hash_in_order()
        except OSError as exc:  # a disk error: reported by finish(), not taken for a mismatch
            self._error = exc

    def _hash_in_order(self) -> None:
        for index in range(self._plan.ranges):
            with self._ready:
                while index not in self._done and not self._closing:
                    self._ready.wait()
                if index not in self._done or self._aborted:
                    return
            hash_span(self._fd, *self._plan.bounds(index), self._hasher)
        self._digest = self._hasher.hexdigest()
