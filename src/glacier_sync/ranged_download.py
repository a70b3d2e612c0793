"""Resumable, verified ranged download of one S3 object version into a ``.part`` file.

Ranges are fetched by a thread pool (``GET`` with ``Range`` and ``If-Match``), written in place
with ``pwrite`` through a fixed buffer per thread (memory stays bounded whatever the size),
flushed, and only then recorded in the journal beside the file (``range_journal``). A re-run
re-hashes the recorded ranges on disk, keeps those that still match and fetches the rest.

Before the file is renamed, the whole object is checked end to end where S3 makes it possible:
its full-object CRC32 (``ChecksumMode``), else its multipart eTag recomputed from the MD5 of each
part (the ranges then follow the upload's own part size, read with ``HEAD ?partNumber=1``), else
its single-part eTag (the MD5 of the object). An eTag that is no MD5 (SSE-KMS, SSE-C) and an
unknown part size leave the bag manifests as the only end-to-end check, and the log says so.
"""

from __future__ import annotations

import base64
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
from glacier_sync.errors import DownloadError
from glacier_sync.range_journal import RangeJournal, RangePlan, journal_path, read_journal

log = logging.getLogger(__name__)

BUFFER_BYTES = 1024 * 1024
_MD5_ETAG = re.compile(r"^[0-9a-f]{32}$")
_PARTS_ETAG = re.compile(r"^[0-9a-f]{32}-(\d+)$")


class WholeObjectMismatch(DownloadError):
    """Every range was fetched but the whole file differs from S3's checksum or eTag."""


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
    crc = head.get("ChecksumCRC32")
    if crc and head.get("ChecksumType", "FULL_OBJECT") == "FULL_OBJECT" and "-" not in crc:
        return RangePlan(
            **base, size=size, part_size=part_size, algorithm="crc32", check="crc32", expected=crc
        )
    encrypted = head.get("ServerSideEncryption") in ("aws:kms", "aws:kms:dsse") or head.get(
        "SSECustomerAlgorithm"
    )
    parts = _PARTS_ETAG.match(etag)
    if parts and not encrypted:
        upload_part = _upload_part_size(s3, bucket, key, version_id, size, int(parts.group(1)))
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


def _upload_part_size(
    s3: Any, bucket: str, key: str, version_id: str | None, size: int, count: int
) -> int | None:
    """The part size of the object's multipart upload, or None when S3 does not tell it."""
    extra = {"VersionId": version_id} if version_id else {}
    try:
        first = int(s3.head_object(Bucket=bucket, Key=key, PartNumber=1, **extra)["ContentLength"])
    except Exception as exc:  # an S3 without partNumber support: no eTag check, said below
        log.info("s3://%s/%s: the upload's part size is unknown (%s)", bucket, key, exc)
        return None
    if first <= 0 or -(-size // first) != count:
        return None
    return first


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
        if not good:  # nothing verified: nothing worth keeping
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
        journal = RangeJournal(journal_file, plan, fresh=digests is None)
        in_order = _InOrderMd5(fd, plan, set(good)) if plan.check == "etag-md5" else None
        try:
            missing = [i for i in range(plan.ranges) if i not in good]

            def finished(index: int, digest: str) -> None:
                journal.record(index, digest)
                if in_order:
                    in_order.add(index)

            _fetch_missing(s3, plan, fd, missing, concurrency, good, finished)
        finally:
            journal.close()
            whole_md5 = in_order.finish() if in_order else None
        faults.checkpoint("download:ranges-done")
        _check_whole(plan, good, whole_md5, work_id)
    finally:
        os.close(fd)
    reused = sum(_length(plan, i) for i in (digests or {}) if i in good)
    return {"reused": reused, "fetched": plan.size - reused}


def discard(partial: Path) -> None:
    """Remove a ``.part`` file and its journal (a changed object, a failed whole-object check)."""
    partial.unlink(missing_ok=True)
    journal_path(partial).unlink(missing_ok=True)


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
    start, end = plan.bounds(index)
    hasher = _hasher(plan.algorithm)()
    if end == start:
        return hasher.hexdigest()
    extra: dict[str, Any] = {"VersionId": plan.version_id} if plan.version_id else {}
    if plan.etag:
        extra["IfMatch"] = f'"{plan.etag}"'
    response = s3.get_object(
        Bucket=plan.bucket, Key=plan.key, Range=f"bytes={start}-{end - 1}", **extra
    )
    body = response["Body"]
    buffer = bytearray(BUFFER_BYTES)
    view = memoryview(buffer)
    offset = start
    try:
        while offset < end:
            if stop.is_set():
                raise _Stopped()
            count = body.readinto(view[: min(BUFFER_BYTES, end - offset)])
            if not count:
                break
            written = 0
            while written < count:
                written += os.pwrite(fd, view[written:count], offset + written)
            hasher.update(view[:count])
            offset += count
            faults.checkpoint("download:chunk")
    finally:
        body.close()
    if offset != end:
        raise DownloadError(
            f"s3://{plan.bucket}/{plan.key}: range {start}-{end - 1} ended after "
            f"{offset - start} of {end - start} bytes; the download resumes on the next try"
        )
    return hasher.hexdigest()


class _InOrderMd5:
    """The MD5 of the whole file, hashed from disk behind the ranges as they complete in order
    (so a single-part eTag is checked without a pass of its own after the download)."""

    def __init__(self, fd: int, plan: RangePlan, done: set[int]) -> None:
        self._fd, self._plan, self._done = fd, plan, done
        self._hasher = hashlib.md5()
        self._ready = threading.Condition()
        self._closing = False
        self._digest: str | None = None
        self._thread = threading.Thread(target=self._run, name="in-order-md5", daemon=True)
        self._thread.start()

    def add(self, index: int) -> None:
        """Range ``index`` is on disk."""
        with self._ready:
            self._done.add(index)
            self._ready.notify()

    def finish(self) -> str | None:
        """The whole file's MD5, or None when a range is missing (the download failed)."""
        with self._ready:
            self._closing = True
            self._ready.notify()
        self._thread.join()
        return self._digest

    def _run(self) -> None:
        for index in range(self._plan.ranges):
            with self._ready:
                while index not in self._done and not self._closing:
                    self._ready.wait()
                if index not in self._done:
                    return
            _update_from_disk(self._fd, self._plan, index, self._hasher)
        self._digest = self._hasher.hexdigest()


def _check_whole(
    plan: RangePlan, good: dict[int, str], whole_md5: str | None, work_id: str
) -> None:
    """Compare the whole file with what S3 says of the object; raise when they differ."""
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
    elif plan.check == "etag-md5":
        got = whole_md5 or ""
    else:
        value = 0
        for index in range(plan.ranges):
            value = crc32_combine(value, int(good[index], 16), _length(plan, index))
        got = base64.b64encode(value.to_bytes(4, "big")).decode()
    expected = plan.expected
    if got != expected:
        raise WholeObjectMismatch(
            f"work {work_id}: the download of {where} does not match the object ({plan.check}: "
            f"got {got}, S3 says {expected}); the partial file is dropped, the next try fetches "
            "it again"
        )


def _update_from_disk(fd: int, plan: RangePlan, index: int, hasher: Any) -> None:
    start, end = plan.bounds(index)
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
    """The CRC32 of A+B from CRC32(A), CRC32(B) and len(B) (zlib's crc32_combine)."""
    if len2 <= 0:
        return crc1
    operator = [0xEDB88320] + [1 << n for n in range(31)]  # appends one zero bit
    for _ in range(3):
        operator = _gf2_square(operator)  # one zero byte
    while len2:
        if len2 & 1:
            crc1 = _gf2_times(operator, crc1)
        len2 >>= 1
        if len2:
            operator = _gf2_square(operator)
    return crc1 ^ crc2
