"""A whole-object mismatch of a multipart object narrowed down to the parts at fault.

Each part's own value is read with ``HEAD ?partNumber=N`` and ``ChecksumMode=ENABLED``: the
part's checksum (S3 gives it for an upload with checksums), else the part's eTag where it is the
part's MD5 (moto, some S3-compatible stores). Each part is hashed again from disk and compared.
When every part's value could be read, the journal keeps the ranges of the parts that match and
drops those of the parts that do not: the next try fetches those parts only, not the whole
object. When any part's value cannot be read, nothing is narrowed (the whole object is fetched
again, as before); a failed HEAD here never turns a check off: the mismatch stands either way.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from itertools import accumulate
from pathlib import Path
from typing import Any

from glacier_sync.transfer.object_checks import new_hasher
from glacier_sync.transfer.range_journal import (
    RangePlan,
    fsync_dir,
    fsync_file,
    journal_path,
    read_journal,
)
from glacier_sync.transfer.whole_object import hash_span, part_count

log = logging.getLogger(__name__)

PART_CHECKSUMS = ("crc64nvme", "crc32c", "crc32", "sha256", "sha1")
_MD5_ETAG = re.compile(r"[0-9a-f]{32}")


class NotNarrowed(Exception):
    """The parts at fault cannot be told; the message says why."""


@dataclass(frozen=True)
class PartValue:
    """What the store says of one part: its size and the digest of its bytes."""

    size: int
    algorithm: str
    digest: bytes


def part_value(s3: Any, plan: RangePlan, number: int) -> PartValue:
    """Part ``number``'s size and own value; NotNarrowed when the store does not give them."""
    extra = {"VersionId": plan.version_id} if plan.version_id else {}
    try:
        head = s3.head_object(
            Bucket=plan.bucket, Key=plan.key, PartNumber=number, ChecksumMode="ENABLED", **extra
        )
    except Exception as exc:  # noqa: BLE001 - a failure here only means: not narrowed
        raise NotNarrowed(f"part {number}'s own value not read: {exc}") from exc
    size = int(head.get("ContentLength", -1))
    whole = plan.expected.partition("-")[0]
    for algorithm in PART_CHECKSUMS:
        raw = str(head.get(f"Checksum{algorithm.upper()}") or "")
        if raw and "-" not in raw and raw != whole:  # the part's own, not the object's value
            return PartValue(size, algorithm, base64.b64decode(raw))
    etag = str(head.get("ETag", "")).strip('"')
    if _MD5_ETAG.fullmatch(etag) and etag != plan.etag:  # the part's MD5, not the object's
        return PartValue(size, "md5", bytes.fromhex(etag))
    raise NotNarrowed(f"the store gives part {number} no value of its own")


def faulty_parts(
    s3: Any, plan: RangePlan, partial: Path, concurrency: int
) -> list[tuple[int, int, int]]:
    """``(part number, start, end)`` of each part whose bytes on disk differ from the part's
    own value; NotNarrowed when the object is not multipart or a part's value is not read."""
    count = part_count(plan)
    if count < 2:
        raise NotNarrowed("the object was not uploaded in parts")
    threads = max(1, min(concurrency, 8))
    with ThreadPoolExecutor(threads) as pool:
        values = list(pool.map(lambda n: part_value(s3, plan, n), range(1, count + 1)))
    starts = [0, *accumulate(v.size for v in values)]
    if starts[-1] != plan.size or any(v.size < 0 for v in values):
        raise NotNarrowed(f"the parts' sizes add up to {starts[-1]}, not {plan.size}")
    fd = os.open(partial, os.O_RDONLY)
    try:

        def differs(number: int) -> bool:
            value = values[number - 1]
            hasher = new_hasher(value.algorithm)
            hash_span(fd, starts[number - 1], starts[number], hasher)
            return hasher.digest() != value.digest

        numbers = range(1, count + 1)
        with ThreadPoolExecutor(threads) as pool:
            bad = [n for n, d in zip(numbers, pool.map(differs, numbers), strict=True) if d]
    finally:
        os.close(fd)
    return [(n, starts[n - 1], starts[n]) for n in bad]


def keep_good_parts(
    s3: Any, plan: RangePlan, partial: Path, concurrency: int, work_id: str
) -> bool:
    """After a whole-object mismatch: True when the parts at fault were found and only their
    ranges dropped from the journal (the rest is kept for the next try); False when nothing
    could be narrowed (the caller drops the whole file)."""
    where = f"s3://{plan.bucket}/{plan.key}"
    try:
        bad = faulty_parts(s3, plan, partial, concurrency)
        if not bad or len(bad) == part_count(plan):  # none, or all: nothing to narrow down
            return False
        _drop_ranges(plan, partial, bad, work_id, where)
    except Exception as exc:  # noqa: BLE001 - whatever failed, the whole file is fetched again
        log.warning(
            "work %s: %s: the parts at fault cannot be told (%s); the whole object is fetched "
            "again",
            work_id,
            where,
            exc,
        )
        return False
    return True


def _drop_ranges(
    plan: RangePlan, partial: Path, bad: list[tuple[int, int, int]], work_id: str, where: str
) -> None:
    """Rewrite the journal without the ranges that overlap a part at fault (atomically)."""
    journal = journal_path(partial)
    digests = read_journal(journal, plan) or {}

    def overlaps(index: int) -> bool:
        start, end = plan.bounds(index)
        return any(start < part_end and part_start < end for _, part_start, part_end in bad)

    kept = {i: d for i, d in digests.items() if not overlaps(i)}
    tmp = journal.with_name(journal.name + ".tmp")
    lines = [json.dumps(asdict(plan))] + [
        json.dumps({"i": i, "d": d}) for i, d in sorted(kept.items())
    ]
    tmp.write_text("\n".join(lines) + "\n", encoding="utf-8")
    fsync_file(tmp)
    os.replace(tmp, journal)
    fsync_dir(journal.parent)
    kept_bytes = sum(end - start for start, end in map(plan.bounds, kept))
    log.warning(
        "work %s: %s: part(s) %s of %d differ from their own values in S3; only their ranges "
        "are fetched again (%d bytes), the other %d bytes are kept",
        work_id,
        where,
        ", ".join(str(n) for n, _, _ in bad),
        part_count(plan),
        plan.size - kept_bytes,
        kept_bytes,
    )
