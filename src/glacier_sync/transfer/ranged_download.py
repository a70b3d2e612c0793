"""Resumable, verified ranged download of one S3 object version into a ``.part`` file.

Ranges (``download_plan``) are fetched by a thread pool (``GET`` with ``Range`` and
``If-Match``), written in place with ``pwrite`` through a fixed buffer per thread (memory stays
bounded whatever the size), each retried on its own from the byte it reached, flushed, and only
then recorded in the journal beside the file (``range_journal``). A re-run re-hashes the
recorded ranges on disk, keeps those that still match and fetches the rest. A ranged answer
that is not the range asked for is refused before it is written. Before the file is renamed the
whole object is checked against S3's checksum or eTag (``whole_object``); a check that needs the
whole file in byte order (an MD5 or SHA of a single-part object) hashes it from disk behind the
ranges as they land, not in a pass of its own afterwards.
"""

from __future__ import annotations

import errno
import logging
import os
import threading
from collections.abc import Callable
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from glacier_sync import faults
from glacier_sync.errors import TransferFault
from glacier_sync.transfer.disk_hashes import InOrderHash, PartHashes
from glacier_sync.transfer.object_checks import Check, new_hasher
from glacier_sync.transfer.range_commit import RangeCommitter
from glacier_sync.transfer.range_journal import (
    RangeJournal,
    RangePlan,
    fsync_dir,
    journal_path,
    journaled_plan,
    read_journal,
)
from glacier_sync.transfer.whole_object import check_whole, hash_span, mismatch_note, parts_on_disk

log = logging.getLogger(__name__)

BUFFER_BYTES = 1024 * 1024


@dataclass(frozen=True)
class Fetched:
    """What a download did: the whole-object check that passed (``Check.NONE``: unchecked), the
    bytes ``reused`` (verified on disk from an earlier try) and ``fetched`` (from S3 now)."""

    check: Check
    reused: int
    fetched: int


class _Stopped(Exception):
    """Another range failed: this one stops at its next buffer."""


def fetch_ranges(
    s3: Any,
    plan: RangePlan,
    partial: Path,
    concurrency: int,
    work_id: str,
    progress: Callable[[], None] = lambda: None,
) -> Fetched:
    """Make ``partial`` a verified copy of the planned object (or of the plan its journal was
    started with, when that one checks the same object version another valid way).
    ``progress`` is called after every buffer written (it may raise to stop the download)."""
    journal_file = journal_path(partial)
    digests = None
    if partial.is_file():
        started = journaled_plan(journal_file, plan)
        if started != plan:
            log.info(
                "work %s: %s resumes with the plan its journal was started with (%s in ranges "
                "of %d bytes; now %s in ranges of %d would be chosen)",
                work_id,
                partial.name,
                started.check,
                started.range_size,
                plan.check,
                plan.range_size,
            )
            plan = started
        digests = read_journal(journal_file, plan)
    if digests is None:
        partial.unlink(missing_ok=True)
        journal_file.unlink(missing_ok=True)
    good: dict[int, str] = {}
    try:
        return _fetch_into(s3, plan, partial, concurrency, work_id, digests, good, progress)
    except BaseException:
        if not good and not digests:  # nothing verified nor journaled: nothing worth keeping
            discard(partial)
        raise
    finally:
        journal_file.with_name(journal_file.name + ".tmp").unlink(missing_ok=True)


def _fetch_into(
    s3: Any,
    plan: RangePlan,
    partial: Path,
    concurrency: int,
    work_id: str,
    digests: dict[int, str] | None,
    good: dict[int, str],
    progress: Callable[[], None],
) -> Fetched:
    journal_file = journal_path(partial)
    fd = os.open(partial, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        _reserve(fd, plan.size)
        good.update(_verify_on_disk(fd, plan, digests or {}, concurrency))
        if digests and len(good) < len(digests):
            log.warning(
                "work %s: %d recorded range(s) of %s no longer match on disk; fetched again",
                work_id,
                len(digests) - len(good),
                partial.name,
            )
        reused = set(good)
        journal = RangeJournal(journal_file, plan, fresh=digests is None)
        algorithm = plan.check.in_order_algorithm
        in_order = InOrderHash(fd, plan, set(good), algorithm) if algorithm else None
        parts = (
            PartHashes(fd, plan, set(good), concurrency) if plan.parts_hashed_from_disk else None
        )
        try:
            missing = [i for i in range(plan.ranges) if i not in good]

            def durable(index: int, digest: str) -> None:
                good[index] = digest
                for behind in (in_order, parts):
                    if behind:
                        behind.add(index)
                faults.checkpoint("download:range")

            _fetch_missing(s3, plan, fd, missing, concurrency, journal, durable, progress)
        except BaseException:
            for behind in (in_order, parts):  # the failure surfaces now, not after a pass
                if behind:
                    behind.abort()
            raise
        finally:
            journal.close()
        whole = in_order.finish() if in_order else None
        digests = parts.finish() if parts else [good[i] for i in range(plan.ranges)]
        faults.checkpoint("download:ranges-done")
        passed = check_whole(
            plan,
            digests,
            whole,
            work_id,
            lambda algorithm: parts_on_disk(s3, plan, fd, concurrency, algorithm),
        )
    finally:
        os.close(fd)
    kept = sum(_length(plan, i) for i in reused)
    return Fetched(passed, kept, plan.size - kept)


def discard(partial: Path, keep_note: bool = False) -> None:
    """Remove a ``.part`` file, its journal and (unless ``keep_note``: a whole-object mismatch
    about to be noted) the note of earlier mismatches (a changed object, a held work)."""
    partial.unlink(missing_ok=True)
    journal_path(partial).unlink(missing_ok=True)
    if not keep_note:
        mismatch_note(partial).unlink(missing_ok=True)
    fsync_dir(partial.parent)  # gone for good before a mismatch is noted beside them


def _length(plan: RangePlan, index: int) -> int:
    start, end = plan.bounds(index)
    return end - start


def _reserve(fd: int, size: int) -> None:
    """Give the file its full size and reserve the blocks (a full disk fails here, not at 90 %)."""
    if os.fstat(fd).st_size != size:
        os.ftruncate(fd, size)
    if size and hasattr(os, "posix_fallocate"):
        try:
            os.posix_fallocate(fd, 0, size)
        except OSError as exc:
            if exc.errno not in (errno.EOPNOTSUPP, errno.EINVAL):  # file systems without it
                raise


def range_hasher(plan: RangePlan) -> Any:
    """The hasher of one range of ``plan``: its digest, or each of its parts' digests."""
    if plan.parts_per_range == 1:
        return new_hasher(plan.range_algorithm)
    return _PartsHasher(plan.algorithm, plan.upload_part)


class _PartsHasher:
    """The digests of consecutive parts of ``part`` bytes fed in order (a range of whole
    parts): their hex digests one after the other, the last part's however short."""

    def __init__(self, algorithm: str, part: int) -> None:
        self._algorithm, self._part = algorithm, part
        self._hasher, self._left = new_hasher(algorithm), part
        self._done: list[str] = []

    def update(self, data: Any) -> None:
        view = memoryview(data)
        while len(view):
            take = min(self._left, len(view))
            self._hasher.update(view[:take])
            self._left -= take
            view = view[take:]
            if not self._left:
                self._done.append(self._hasher.hexdigest())
                self._hasher, self._left = new_hasher(self._algorithm), self._part

    def hexdigest(self) -> str:
        tail = [self._hasher.hexdigest()] if self._left != self._part else []
        return "".join(self._done + tail)


def _hash_on_disk(fd: int, plan: RangePlan, index: int) -> str:
    hasher = range_hasher(plan)
    hash_span(fd, *plan.bounds(index), hasher)
    return hasher.hexdigest()


def _verify_on_disk(
    fd: int, plan: RangePlan, digests: dict[int, str], concurrency: int
) -> dict[int, str]:
    """The recorded ranges whose bytes on disk still hash to their recorded digest."""
    if not digests:
        return {}
    indexes = sorted(digests)
    with ThreadPoolExecutor(max(1, min(concurrency, 4))) as pool:
        found = list(pool.map(lambda i: _hash_on_disk(fd, plan, i), indexes))
    return {i: d for i, d in zip(indexes, found, strict=True) if d == digests[i]}


def _fetch_missing(
    s3: Any,
    plan: RangePlan,
    fd: int,
    missing: list[int],
    concurrency: int,
    journal: RangeJournal,
    durable: Callable[[int, str], None],
    progress: Callable[[], None],
) -> None:
    """Fetch every missing range, each made durable and journaled by one committer in batches;
    on the first failure stop the others, journal what was verified, and raise it."""
    if not missing:
        return
    stop = threading.Event()
    committer = RangeCommitter(fd, journal, durable, stop)

    def one(index: int) -> None:
        committer.add(index, _fetch_range(s3, plan, fd, index, stop, progress))

    try:
        with ThreadPoolExecutor(max(1, concurrency)) as pool:
            futures = [pool.submit(one, i) for i in missing]

            def halt() -> None:
                stop.set()
                for future in futures:
                    future.cancel()

            try:
                done, _ = wait(futures, return_when=FIRST_EXCEPTION)
            except BaseException:  # interrupted (SIGTERM, Ctrl-C): the ranges stop now
                halt()
                raise
            failed = [f for f in done if f.exception() is not None]
            if failed:
                halt()
                wait(futures)
                errors = [f.exception() for f in futures if not f.cancelled() and f.exception()]
                real = [e for e in errors if not isinstance(e, _Stopped)]
                raise (real or errors)[0]
    except BaseException:
        committer.close(raise_error=False)  # what was verified is journaled all the same
        if committer.error is not None:
            raise committer.error from None  # the disk's error, not the ranges it stopped
        raise
    committer.close()


def _fetch_range(
    s3: Any,
    plan: RangePlan,
    fd: int,
    index: int,
    stop: threading.Event,
    progress: Callable[[], None],
) -> str:
    """Fetch range ``index`` into place and return its digest. A reset, a timeout, a short
    body, a 5xx or a SlowDown is retried with backoff from the byte it stopped at (the hash
    carries on), without stopping the other ranges; ``RANGE_ATTEMPTS`` failures in a row that
    moved it no further, or ``RANGE_MAX_REQUESTS`` requests in all, fail it as a TransferFault
    (the next run resumes it from its journal)."""
    start, end = plan.bounds(index)
    hasher = range_hasher(plan)
    cursor = [start]  # the first byte not yet written and hashed
    failures = requests = 0
    while cursor[0] < end:
        if stop.is_set():
            raise _Stopped()
        before = cursor[0]
        requests += 1
        try:
            _stream(s3, plan, fd, cursor, end, hasher, stop, progress)
        except Exception as exc:
            failures = 1 if cursor[0] > before else failures + 1
            if not _worth_retrying(exc):
                raise
            if failures >= RANGE_ATTEMPTS or requests >= RANGE_MAX_REQUESTS:
                raise TransferFault(
                    f"s3://{plan.bucket}/{plan.key}: range {start}-{end - 1} failed {requests} "
                    f"time(s), at byte {cursor[0]} ({exc}); the next run resumes it"
                ) from exc
            pause = min(RETRY_MAX_SECONDS, RETRY_BASE_SECONDS * 2 ** (failures - 1))
            log.warning(
                "s3://%s/%s: range %d-%d stopped at byte %d (%s); retrying in %.1f s (%d of %d)",
                plan.bucket,
                plan.key,
                start,
                end - 1,
                cursor[0],
                exc,
                pause,
                failures,
                RANGE_ATTEMPTS - 1,
            )
            if stop.wait(pause):
                raise _Stopped() from exc
    return hasher.hexdigest()


RANGE_ATTEMPTS = 5
RETRY_BASE_SECONDS = 0.5
RETRY_MAX_SECONDS = 8.0
RANGE_MAX_REQUESTS = 100  # even with progress between failures, a range gives up here
_RETRIED_CODES = {
    "SlowDown",
    "Throttling",
    "ThrottlingException",
    "RequestTimeout",
    "TooManyRequests",
    "ServiceUnavailable",
    "InternalError",
}


class _ShortBody(TransferFault):
    """The server closed a range's body before its last byte."""


def _worth_retrying(exc: BaseException) -> bool:
    """A fault of the network or of the store (worth another request), not of the object, the
    request or the disk."""
    from botocore.exceptions import (
        ClientError,
        HTTPClientError,
        IncompleteReadError,
        ResponseStreamingError,
    )
    from botocore.exceptions import ConnectionError as BotocoreConnectionError
    from urllib3.exceptions import HTTPError as Urllib3Error

    if isinstance(exc, ClientError):
        error = exc.response.get("Error", {})
        status = (exc.response.get("ResponseMetadata") or {}).get("HTTPStatusCode") or 0
        if status == 501:  # not implemented: asking again changes nothing
            return False
        return status >= 500 or status == 429 or error.get("Code") in _RETRIED_CODES
    transient = (
        _ShortBody,
        ConnectionError,  # the builtin one: resets, refused, aborted
        TimeoutError,
        Urllib3Error,
        BotocoreConnectionError,  # endpoint, connect timeout, proxy
        HTTPClientError,  # read timeout, connection closed
        IncompleteReadError,
        ResponseStreamingError,
    )
    return isinstance(exc, transient)


def _stream(
    s3: Any,
    plan: RangePlan,
    fd: int,
    cursor: list[int],
    end: int,
    hasher: Any,
    stop: threading.Event,
    progress: Callable[[], None],
) -> None:
    """One GET of bytes ``cursor[0]`` to ``end`` written in place and hashed; ``cursor[0]``
    follows every buffer written, so a failure leaves it where the next request starts."""
    extra: dict[str, Any] = {"VersionId": plan.version_id} if plan.version_id else {}
    if plan.etag:
        extra["IfMatch"] = f'"{plan.etag}"'
    begin = cursor[0]
    response = s3.get_object(
        Bucket=plan.bucket, Key=plan.key, Range=f"bytes={begin}-{end - 1}", **extra
    )
    body = response["Body"]
    buffer = bytearray(BUFFER_BYTES)
    view = memoryview(buffer)
    try:
        _require_the_range(plan, response, begin, end)
        while cursor[0] < end:
            if stop.is_set():
                raise _Stopped()
            count = body.readinto(view[: min(BUFFER_BYTES, end - cursor[0])])
            if not count:
                raise _ShortBody(
                    f"s3://{plan.bucket}/{plan.key}: the answer for bytes {begin}-{end - 1} "
                    f"ended after {cursor[0] - begin} bytes"
                )
            written = 0
            while written < count:
                written += os.pwrite(fd, view[written:count], cursor[0] + written)
            hasher.update(view[:count])
            cursor[0] += count
            progress()
            faults.checkpoint("download:chunk")
    finally:
        body.close()


def _require_the_range(plan: RangePlan, response: dict[str, Any], start: int, end: int) -> None:
    """Refuse an answer that is not the range asked for: a server or proxy that ignores
    ``Range`` sends the whole object (200), whose first bytes would land at the range's offset."""
    status = response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    whole = start == 0 and end == plan.size
    wanted = f"bytes {start}-{end - 1}/{plan.size}"
    if status == 206 and response.get("ContentRange") == wanted:
        return
    if status == 200 and whole and int(response.get("ContentLength", -1)) == plan.size:
        return  # the range was the whole object: the same bytes
    raise TransferFault(
        f"s3://{plan.bucket}/{plan.key}: asked for {wanted}, the server answered {status} with "
        f"Content-Range {response.get('ContentRange')!r}: a proxy or store that ignores or "
        "shifts ranges; nothing of it was written, the download is tried again"
    )
