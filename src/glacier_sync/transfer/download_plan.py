"""The plan of one object's download: its ranges and the end-to-end check of its bytes.

The check is the strongest one S3's answer supports, decided from what S3 says, never from a
default (``check`` of the ``RangePlan``, a ``Check``):

- ``crc64nvme``, ``crc32c``, ``crc32``: a full-object CRC (``ChecksumType: FULL_OBJECT``, or no
  type on a single-part upload), combined from the ranges' CRCs; ranges of ``download_chunk_mb``.
- ``sha256``, ``sha1``: the checksum of a single-part object, hashed in order as ranges land.
- ``composite-<algorithm>``: the checksum of the parts' checksums (``COMPOSITE``, or a ``-N``
  suffix); each range holds whole parts of the upload's part size (``HEAD ?partNumber=1``), as
  many as fit in ``download_chunk_mb``, each part hashed on its own by the fetching thread; a
  part larger than that is fetched in several ranges, its CRC combined from theirs, its SHA
  hashed from disk once they are all in.
- ``etag-parts``: the multipart eTag from each part's MD5, ranges along the parts the same way.
- ``full-or-composite-<crc>``: a CRC S3 gives without a type for a multipart upload (moto):
  both readings are computed from the same ranges, the object passes when one matches. Used
  only where the eTag cannot decide (an encrypted object), else the eTag does.
- ``etag-md5``: the single-part eTag, the MD5 of the object, hashed in order as ranges land.
- ``none``: S3 offers nothing that can be checked (SSE-C or SSE-KMS without a checksum, a store
  without ``partNumber``): downloaded, said unchecked, and the bag manifests decide.

A part size that cannot be read (throttling, a 5xx, a timeout) fails the try as a
``TransferFault``: retried, never a quiet downgrade to a weaker check.
"""

from __future__ import annotations

import logging
import re
from typing import Any

from glacier_sync.errors import DownloadError, TransferFault
from glacier_sync.transfer.object_checks import CRC_BYTES, FULL_OBJECT, Check, checksum_of
from glacier_sync.transfer.range_journal import RangePlan

log = logging.getLogger(__name__)

MD5_ETAG = re.compile(r"^[0-9a-f]{32}$")
PARTS_ETAG = re.compile(r"^[0-9a-f]{32}-(\d+)$")
ENCRYPTED_WITH_KMS = ("aws:kms", "aws:kms:dsse")


class PartsUnknown(Exception):
    """The S3 store does not answer ``partNumber`` requests."""


def plan_download(
    s3: Any, head: dict[str, Any], bucket: str, key: str, version_id: str | None, part_mb: int
) -> RangePlan:
    """Choose the ranges and the end-to-end check for the object ``head`` describes."""
    etag = str(head.get("ETag", "")).strip('"')
    size = int(head.get("ContentLength", 0))
    chunk = max(1, part_mb * 1024 * 1024)
    base = {
        "bucket": bucket,
        "key": key,
        "version_id": version_id or "",
        "etag": etag,
        "size": size,
    }
    multipart = PARTS_ETAG.match(etag)
    checksum = checksum_of(head)
    parts = int(multipart.group(1)) if multipart else (checksum.parts if checksum else None)
    encrypted = head.get("ServerSideEncryption") in ENCRYPTED_WITH_KMS or bool(
        head.get("SSECustomerAlgorithm")
    )
    where = f"s3://{bucket}/{key}"
    if checksum:
        algorithm, value = checksum.algorithm, checksum.value
        kind = checksum.kind or ("" if parts else FULL_OBJECT)  # one part: nothing else it can be
        if kind == FULL_OBJECT:
            ranged = algorithm if algorithm in CRC_BYTES else "crc32"  # a SHA: hashed in order
            return RangePlan(
                **base, part_size=chunk, algorithm=ranged, check=Check(algorithm), expected=value
            )
        if not kind and multipart and not encrypted:
            log.info(
                "%s: its %s %s comes without a ChecksumType and may be composite (as moto "
                "answers): the multipart eTag is the check",
                where,
                algorithm.upper(),
                value,
            )
        elif parts:
            part_size = _upload_part_size(s3, bucket, key, version_id, parts)
            if part_size:
                ambiguous = not kind and algorithm in CRC_BYTES
                return RangePlan(
                    **base,
                    **_along_parts(part_size, chunk),
                    algorithm=algorithm,
                    check=Check.of_parts(algorithm, ambiguous),
                    expected=f"{value}-{parts}",
                )
            multipart = None  # no part sizes: its eTag cannot be checked either (asked once)
    if multipart and not encrypted:
        part_size = _upload_part_size(s3, bucket, key, version_id, int(multipart.group(1)))
        if part_size:
            return RangePlan(
                **base,
                **_along_parts(part_size, chunk),
                algorithm="md5",
                check=Check.ETAG_PARTS,
                expected=etag,
            )
    if MD5_ETAG.match(etag) and not encrypted:
        return RangePlan(
            **base, part_size=chunk, algorithm="crc32", check=Check.ETAG_MD5, expected=etag
        )
    return RangePlan(**base, part_size=chunk, algorithm="crc32", check=Check.NONE)


def _along_parts(part: int, chunk: int) -> dict[str, int]:
    """Ranges that line up with the upload's parts: as many whole parts a range as fit in the
    download's range size (boto3's 8 MiB parts make 64 MiB ranges by default: fewer requests,
    flushes and journal lines), or a part larger than it split in as many ranges as it takes
    (a crash then costs at most a range per thread, never a 5 GiB part)."""
    if part > chunk:
        return {"part_size": part, "ranges_per_part": -(-part // chunk)}
    per = chunk // part
    return {"part_size": part * per, "parts_per_range": per}


def part_size(
    s3: Any, bucket: str, key: str, version_id: str | None, number: int, count: int = 0
) -> int:
    """The size of part ``number`` of the object's ``count``-part upload (``HEAD ?partNumber=N``).

    A store that does not know ``partNumber`` (501; 400 while the same HEAD without it is
    answered; or an answer without the upload's ``PartsCount``) raises ``PartsUnknown``; any
    other failure (throttling, 5xx, a timeout, a 400 that every HEAD gets, as an expired token
    does: a HEAD's error has no code to tell them apart) is a TransferFault: the check could not
    be read, and the download is tried again rather than accepted unchecked."""
    extra = {"VersionId": version_id} if version_id else {}
    try:
        head = s3.head_object(Bucket=bucket, Key=key, PartNumber=number, **extra)
    except Exception as exc:
        response = getattr(exc, "response", None) or {}  # None on timeouts
        status = (response.get("ResponseMetadata") or {}).get("HTTPStatusCode")
        if status == 501 or (status == 400 and _plain_head_answers(s3, bucket, key, extra)):
            raise PartsUnknown(str(exc)) from exc
        if status == 403:  # not a fault of the link: spends an attempt, held when they run out
            raise DownloadError(
                f"s3://{bucket}/{key}: reading the size of part {number} of its upload was "
                f"refused ({exc}); the object's check needs it: give the credentials "
                "s3:GetObject on the key (the part's HEAD needs what a GET needs)"
            ) from exc
        raise TransferFault(
            f"s3://{bucket}/{key}: the size of part {number} of its upload could not be read "
            f"({exc}); the object's check needs it: tried again on the next run (a 400 for "
            "every HEAD: renew the credentials)"
        ) from exc
    if count and head.get("PartsCount") != count:  # a store that ignored partNumber
        raise PartsUnknown(
            f"the answer for part {number} says {head.get('PartsCount')} parts, the object {count}"
        )
    return int(head["ContentLength"])


def _plain_head_answers(s3: Any, bucket: str, key: str, extra: dict[str, str]) -> bool:
    """True when the object's HEAD without ``partNumber`` succeeds now: a 400 for the part's
    HEAD is then the store refusing ``partNumber``, not the request (expired credentials)."""
    try:
        s3.head_object(Bucket=bucket, Key=key, **extra)
    except Exception:  # noqa: BLE001 (any failure: the 400 is not the store's answer to partNumber)
        return False
    return True


def _upload_part_size(
    s3: Any, bucket: str, key: str, version_id: str | None, count: int
) -> int | None:
    """The first part's size of the object's multipart upload (the ranges follow it), or None
    when the store does not tell part sizes (then no part-wise check: said in the log)."""
    try:
        first = part_size(s3, bucket, key, version_id, 1, count)
    except PartsUnknown as exc:
        log.warning(
            "s3://%s/%s: the store does not tell the parts of an upload (%s); its multipart "
            "eTag cannot be checked, nor a composite checksum",
            bucket,
            key,
            exc,
        )
        return None
    if first == 0 and count == 1:
        return None  # an empty object: nothing to check part-wise
    if first <= 0:  # not a passing fault: spends an attempt, held when they run out
        raise DownloadError(
            f"s3://{bucket}/{key}: the store says part 1 of its {count}-part upload holds "
            f"{first} bytes, which no upload can have; the object's check needs its parts: "
            "check the object with `aws s3api head-object --part-number 1`"
        )
    return first
