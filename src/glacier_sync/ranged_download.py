"""Resumable, verified ranged download of one S3 object version into a ``.part`` file.

Ranges are fetched by a thread pool (``GET`` with ``Range`` and ``If-Match``), written in place
with ``pwrite`` through a fixed buffer per thread (memory stays bounded whatever the size),
flushed, and only then recorded in the journal beside the file (``range_journal``). A re-run
re-hashes the recorded ranges on disk, keeps those that still match and fetches the rest.

Before the file is renamed, the whole object is checked end to end where S3 makes it possible:
its full-object CRC32 (``ChecksumMode``; full-object only when S3 says so, or says nothing of a
single-part upload), else its multipart eTag recomputed from the MD5 of each part (the ranges
follow the first part's size, read with ``HEAD ?partNumber=1``; parts of unequal sizes are
hashed again from disk along their exact bounds), else its single-part eTag (the MD5 of the
object). A part size that cannot be read fails the try (it is retried, never skipped); an eTag
that is no MD5 (SSE-KMS, SSE-C) and a store without ``partNumber`` leave the bag manifests as
the only end-to-end check, and the log says so. A ranged answer that is not the range asked for
is refused before it is written.
"""

from __future__ import annotations

import base64
import contextlib
import functools
import hashlib
import logging
import os
import re
import threading
import zlib
from collections.abc import Callable
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from pathlib import Path
from typing import Any

from glacier_sync import faults
from glacier_sync.errors import DownloadError, PermanentError, TransferFault, TransientError
from glacier_sync.range_journal import RangeJournal, RangePlan, journal_path, read_journal

log = logging.getLogger(__name__)

BUFFER_BYTES = 1024 * 1024
_MD5_ETAG = re.compile(r"^[0-9a-f]{32}$")
_PARTS_ETAG = re.compile(r"^[0-9a-f]{32}-(\d+)$")


class WholeObjectMismatch(DownloadError):
    """Every range was fetched but the whole file differs from S3's checksum or eTag."""

    def __init__(self, message: str, check: str = "", got: str = "", expected: str = "") -> None:
        super().__init__(message)
        self.check, self.got, self.expected = check, got, expected


class UnconfirmedMismatch(WholeObjectMismatch, TransientError):
    """A first mismatch: a bad transfer as likely as a wrong expectation, so it is fetched again
    without spending an attempt (the same mismatch on the next fetch is RepeatedMismatch)."""


class RepeatedMismatch(WholeObjectMismatch, PermanentError):
    """Two whole fetches gave the same bytes, and both differ from what S3 says of the object:
    the expectation is wrong (or the object itself), not the transfer. Held for an operator."""


class _Stopped(Exception):
    """Another range failed: this one stops at its next buffer."""


def plan_download(
    s3: Any, head: dict[str, Any], bucket: str, key: str, version_id: str | None, part_mb: int
) -> RangePlan:
    """Choose the ranges and the end-to-end check for the object ``head`` describes."""
    etag = str(head.get("ETag", "")).strip('"')
    size = int(head.get("ContentLength", 0))
    part_size = max(1, part_mb * 1024 * 1024)
    base = {"bucket": bucket, "key": key, "version_id": version_id or "", "etag": etag}
    multipart = _PARTS_ETAG.match(etag)
    crc = head.get("ChecksumCRC32")
    if crc and "-" not in crc and _full_object(head.get("ChecksumType"), multipart is not None):
        return RangePlan(
            **base, size=size, part_size=part_size, algorithm="crc32", check="crc32", expected=crc
        )
    if crc and multipart and not head.get("ChecksumType"):
        log.info(
            "s3://%s/%s: its CRC32 %s comes without a ChecksumType and may be composite (the "
            "CRC of its parts' CRCs, as moto answers): the multipart eTag is the check",
            bucket,
            key,
            crc,
        )
    encrypted = head.get("ServerSideEncryption") in ("aws:kms", "aws:kms:dsse") or head.get(
        "SSECustomerAlgorithm"
    )
    if multipart and not encrypted:
        upload_part = _upload_part_size(s3, bucket, key, version_id, int(multipart.group(1)))
        if upload_part:
            return RangePlan(
                **base,
                size=size,
                part_size=upload_part,
                algorithm="md5",
                check="etag-parts",
                expected=etag,
            )
    if _MD5_ETAG.match(etag) and not encrypted:
        return RangePlan(
            **base,
            size=size,
            part_size=part_size,
            algorithm="crc32",
            check="etag-md5",
            expected=etag,
        )
    return RangePlan(**base, size=size, part_size=part_size, algorithm="crc32", check="none")


def _full_object(checksum_type: str | None, multipart: bool) -> bool:
    """Whether a checksum S3 gives is of the whole object: when S3 says so, or, when it says
    nothing (older S3-compatible stores, moto), only for a single-part upload, whose checksum
    can be nothing else. A multipart upload's may be composite: never taken on a default."""
    if checksum_type:
        return checksum_type == "FULL_OBJECT"
    return not multipart


def _part_head(
    s3: Any, bucket: str, key: str, version_id: str | None, number: int, count: int = 0
) -> int:
    """The size of part ``number`` of the object's ``count``-part upload (``HEAD ?partNumber=N``).

    A store that does not know ``partNumber`` (400 or 501, or an answer without the upload's
    ``PartsCount``) raises ``PartsUnknown``; any other failure (throttling, 5xx, a timeout) is a
    TransferFault: the check could not be read, and the download is tried again rather than
    accepted unchecked."""
    extra = {"VersionId": version_id} if version_id else {}
    try:
        head = s3.head_object(Bucket=bucket, Key=key, PartNumber=number, **extra)
    except Exception as exc:
        response = getattr(exc, "response", None) or {}  # None on timeouts
        status = (response.get("ResponseMetadata") or {}).get("HTTPStatusCode")
        if status in (400, 501):
            raise PartsUnknown(str(exc)) from exc
        raise TransferFault(
            f"s3://{bucket}/{key}: the size of part {number} of its upload could not be read "
            f"({exc}); the multipart eTag cannot be checked without it: tried again on the next "
            "run"
        ) from exc
    if count and head.get("PartsCount") != count:  # a store that ignored partNumber
        raise PartsUnknown(
            f"the answer for part {number} says {head.get('PartsCount')} parts, the eTag {count}"
        )
    return int(head["ContentLength"])


class PartsUnknown(Exception):
    """The S3 store does not answer ``partNumber`` requests."""


def _upload_part_size(
    s3: Any, bucket: str, key: str, version_id: str | None, count: int
) -> int | None:
    """The first part's size of the object's multipart upload (the ranges follow it), or None
    when the store does not tell part sizes (then no eTag check: said in the log)."""
    try:
        first = _part_head(s3, bucket, key, version_id, 1, count)
    except PartsUnknown as exc:
        log.warning(
            "s3://%s/%s: the store does not tell the parts of an upload (%s); its multipart "
            "eTag cannot be checked",
            bucket,
            key,
            exc,
        )
        return None
    return first if first > 0 else None


def fetch_ranges(
    s3: Any, plan: RangePlan, partial: Path, concurrency: int, work_id: str
) -> dict[str, int]:
    """Make ``partial`` a verified copy of the planned object; return byte counts
    (``reused``: verified on disk from an earlier try, ``fetched``: from S3 now)."""
    journal_file = journal_path(partial)
    digests = read_journal(journal_file, plan) if partial.is_file() else None
    if digests is None:
        partial.unlink(missing_ok=True)
        journal_file.unlink(missing_ok=True)
    good: dict[int, str] = {}
    try:
        return _fetch_into(s3, plan, partial, concurrency, work_id, digests, good)
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
) -> dict[str, int]:
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
        in_order = _InOrderMd5(fd, plan, set(good)) if plan.check == "etag-md5" else None
        try:
            missing = [i for i in range(plan.ranges) if i not in good]

            def finished(index: int, digest: str) -> None:
                journal.record(index, digest)
                if in_order:
                    in_order.add(index)

            _fetch_missing(s3, plan, fd, missing, concurrency, good, finished)
        except BaseException:
            if in_order:
                in_order.abort()  # the failure surfaces now, not after a pass over the file
            raise
        finally:
            journal.close()
        whole_md5 = in_order.finish() if in_order else None
        faults.checkpoint("download:ranges-done")
        _check_whole(
            plan, good, whole_md5, work_id, lambda: _etag_of_exact_parts(s3, plan, fd, concurrency)
        )
    finally:
        os.close(fd)
    kept = sum(_length(plan, i) for i in reused)
    return {"reused": kept, "fetched": plan.size - kept}


def discard(partial: Path) -> None:
    """Remove a ``.part`` file and its journal (a changed object, a failed whole-object check)."""
    partial.unlink(missing_ok=True)
    journal_path(partial).unlink(missing_ok=True)


def mismatch_note(partial: Path) -> Path:
    """Where the value of the last whole-object mismatch is kept, beside the ``.part`` file."""
    return partial.with_name(partial.name + ".mismatch")


def held_after_repeat(partial: Path, mismatch: WholeObjectMismatch, work_id: str) -> None:
    """Raise RepeatedMismatch when the previous full fetch ended in the very same mismatch (the
    same bytes twice: a transfer fault would not repeat itself); else note this one."""
    note = mismatch_note(partial)
    seen = f"{mismatch.check} {mismatch.got} {mismatch.expected}"
    try:
        before = note.read_text(encoding="utf-8").strip()
    except OSError:
        before = ""
    if before == seen:
        note.unlink(missing_ok=True)
        raise RepeatedMismatch(
            f"work {work_id}: two full downloads of {partial.name.removesuffix('.part')[1:]} "
            f"gave the same bytes, and both differ from what S3 says ({mismatch.check}: got "
            f"{mismatch.got} twice, S3 says {mismatch.expected}): the object or its checksum in "
            "S3 is wrong, not the transfer. Held: compare `aws s3api head-object --checksum-mode "
            "ENABLED` with the bag's manifests, fix or re-upload the object, then "
            f"`glacier-sync retry {work_id}`",
            mismatch.check,
            mismatch.got,
            mismatch.expected,
        ) from None  # permanent: no transient cause in its chain
    with contextlib.suppress(OSError):  # without the note, the next mismatch is a first again
        note.write_text(seen + "\n", encoding="utf-8")


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
            if exc.errno not in (95, 22):  # EOPNOTSUPP, EINVAL: file systems without it
                raise


def _hasher(algorithm: str) -> Callable[[], Any]:
    return hashlib.md5 if algorithm == "md5" else _Crc32


class _Crc32:
    """A hashlib-like CRC32."""

    def __init__(self) -> None:
        self.value = 0

    def update(self, data: Any) -> None:
        self.value = zlib.crc32(data, self.value)

    def hexdigest(self) -> str:
        return f"{self.value:08x}"


def _hash_on_disk(fd: int, plan: RangePlan, index: int) -> str:
    hasher = _hasher(plan.algorithm)()
    _update_from_disk(fd, plan, index, hasher)
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
    good: dict[int, str],
    record: Callable[[int, str], None],
) -> None:
    """Fetch every missing range; on the first failure stop the others and raise it."""
    if not missing:
        return
    stop = threading.Event()

    def one(index: int) -> None:
        digest = _fetch_range(s3, plan, fd, index, stop)
        os.fdatasync(fd)  # the bytes are on disk before the journal says so
        record(index, digest)
        good[index] = digest
        faults.checkpoint("download:range")

    with ThreadPoolExecutor(max(1, concurrency)) as pool:
        futures = [pool.submit(one, i) for i in missing]
        done, _ = wait(futures, return_when=FIRST_EXCEPTION)
        failed = [f for f in done if f.exception() is not None]
        if failed:
            stop.set()
            for future in futures:
                future.cancel()
            wait(futures)
            errors = [f.exception() for f in futures if not f.cancelled() and f.exception()]
            real = [e for e in errors if not isinstance(e, _Stopped)]
            raise (real or errors)[0]


def _fetch_range(s3: Any, plan: RangePlan, fd: int, index: int, stop: threading.Event) -> str:
    """Fetch range ``index`` into place and return its digest. A reset, a timeout, a short
    body, a 5xx or a SlowDown is retried with backoff from the byte it stopped at (the hash
    carries on), without stopping the other ranges; ``RANGE_ATTEMPTS`` failures in a row that
    moved it no further, or ``RANGE_MAX_REQUESTS`` requests in all, fail it as a TransferFault
    (the next run resumes it from its journal)."""
    start, end = plan.bounds(index)
    hasher = _hasher(plan.algorithm)()
    cursor = [start]  # the first byte not yet written and hashed
    failures = requests = 0
    while cursor[0] < end:
        if stop.is_set():
            raise _Stopped()
        before = cursor[0]
        requests += 1
        try:
            _stream(s3, plan, fd, cursor, end, hasher, stop)
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
        f"Content-Range {response.get('ContentRange')!r}: a proxy or store that ignores ranges; "
        "nothing of it was written, the download is tried again"
    )


class _InOrderMd5:
    """The MD5 of the whole file, hashed from disk behind the ranges as they complete in order
    (so a single-part eTag is checked without a pass of its own after the download)."""

    def __init__(self, fd: int, plan: RangePlan, done: set[int]) -> None:
        self._fd, self._plan, self._done = fd, plan, done
        self._hasher = hashlib.md5()
        self._ready = threading.Condition()
        self._closing = False
        self._digest: str | None = None
        self._error: OSError | None = None
        self._aborted = False
        self._thread = threading.Thread(target=self._run, name="in-order-md5", daemon=True)
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
        """The whole file's MD5, or None when a range is missing (the download failed); a
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
            _update_from_disk(self._fd, self._plan, index, self._hasher)
        self._digest = self._hasher.hexdigest()


def _check_whole(
    plan: RangePlan,
    good: dict[int, str],
    whole_md5: str | None,
    work_id: str,
    exact_parts: Callable[[], str],
) -> None:
    """Compare the whole file with what S3 says of the object; raise when they differ.

    A multipart eTag is first computed from the ranges (which follow the first part's size);
    when it differs, the upload's parts may be of unequal sizes (legal), so it is computed again
    from disk along their exact bounds (``exact_parts``) before the file is refused."""
    where = f"s3://{plan.bucket}/{plan.key}"
    if plan.check == "none":
        log.info(
            "work %s: %s gives no whole-object check (eTag %s); the bag manifests are the check",
            work_id,
            where,
            plan.etag or "absent",
        )
        return
    if plan.check == "etag-parts":
        joined = b"".join(bytes.fromhex(good[i]) for i in range(plan.ranges))
        got = f"{hashlib.md5(joined).hexdigest()}-{plan.ranges}"
        if got != plan.expected and _PARTS_ETAG.match(plan.expected):
            got = exact_parts()
    elif plan.check == "etag-md5":
        if whole_md5 is None:  # the check could not run: never a pass, never a mismatch
            raise TransferFault(f"work {work_id}: the MD5 of {where} could not be computed")
        got = whole_md5
    else:
        value = 0
        for index in range(plan.ranges):
            value = crc32_combine(value, int(good[index], 16), _length(plan, index))
        got = base64.b64encode(value.to_bytes(4, "big")).decode()
    expected = plan.expected
    if got != expected:
        raise UnconfirmedMismatch(
            f"work {work_id}: the download of {where} does not match the object ({plan.check}: "
            f"got {got}, S3 says {expected}); the partial file is dropped, the next try fetches "
            "it again",
            plan.check,
            got,
            expected,
        )


def _etag_of_exact_parts(s3: Any, plan: RangePlan, fd: int, concurrency: int) -> str:
    """The multipart eTag of the file on disk hashed along the upload's own part bounds, each
    part's size read with ``HEAD ?partNumber=N`` (parts may differ in size: 8, 6 and 8 MiB)."""
    parts = _PARTS_ETAG.match(plan.expected)
    count = int(parts.group(1)) if parts else 0
    version = plan.version_id or None

    def size_of(number: int) -> int:
        try:
            return _part_head(s3, plan.bucket, plan.key, version, number, count)
        except PartsUnknown as exc:
            raise TransferFault(
                f"s3://{plan.bucket}/{plan.key}: part {number}'s size could not be read ({exc})"
            ) from exc

    with ThreadPoolExecutor(max(1, min(concurrency, 8))) as pool:
        sizes = list(pool.map(size_of, range(1, count + 1)))
    if sum(sizes) != plan.size:
        raise TransferFault(
            f"s3://{plan.bucket}/{plan.key}: its {count} parts add up to {sum(sizes)} bytes, not "
            f"the object's {plan.size}: the store's answers disagree; tried again on the next run"
        )
    digests, offset = [], 0
    for size in sizes:
        hasher = hashlib.md5()
        _update_span(fd, offset, offset + size, hasher)
        digests.append(hasher.digest())
        offset += size
    return f"{hashlib.md5(b''.join(digests)).hexdigest()}-{count}"


def _update_from_disk(fd: int, plan: RangePlan, index: int, hasher: Any) -> None:
    _update_span(fd, *plan.bounds(index), hasher)


def _update_span(fd: int, start: int, end: int, hasher: Any) -> None:
    """Hash the file's bytes ``start`` to ``end`` (exclusive) through a fixed buffer."""
    buffer = bytearray(BUFFER_BYTES)
    view = memoryview(buffer)
    offset = start
    while offset < end:
        count = os.preadv(fd, [view[: min(BUFFER_BYTES, end - offset)]], offset)
        if count <= 0:
            break
        hasher.update(view[:count])
        offset += count


def _gf2_times(matrix: list[int], vector: int) -> int:
    total, row = 0, 0
    while vector:
        if vector & 1:
            total ^= matrix[row]
        vector >>= 1
        row += 1
    return total


def _gf2_square(matrix: list[int]) -> list[int]:
    return [_gf2_times(matrix, matrix[n]) for n in range(32)]


def crc32_combine(crc1: int, crc2: int, len2: int) -> int:
    """The CRC32 of A+B from CRC32(A), CRC32(B) and len(B) (zlib's crc32_combine): CRC32(A)
    shifted by len(B) zero bytes, one matrix product once the length's operator is known (the
    ranges of a download share one length, so it is computed once, not per range)."""
    if len2 <= 0:
        return crc1
    return _gf2_times(_zeros_operator(len2), crc1) ^ crc2


@functools.lru_cache(maxsize=64)
def _zeros_operator(length: int) -> list[int]:
    """The GF(2) matrix that appends ``length`` zero bytes to a CRC32 register."""
    operator = [0xEDB88320] + [1 << n for n in range(31)]  # appends one zero bit
    for _ in range(3):
        operator = _gf2_square(operator)  # one zero byte
    result = [1 << n for n in range(32)]  # the identity
    while length:
        if length & 1:
            result = [_gf2_times(operator, column) for column in result]
        length >>= 1
        if length:
            operator = _gf2_square(operator)
    return result
