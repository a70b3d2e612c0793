"""The end-to-end check of a downloaded object against what S3 says of it (``download_plan``).

Every range is on disk and verified against its own digest; this compares the whole with the
object's checksum or eTag, from the ranges' digests where they line up with the upload's parts,
else from the file hashed again along the parts' exact bounds (parts may differ in size). A
first mismatch may be a bad transfer (``UnconfirmedMismatch``, fetched again); the same one on
the next full fetch is a wrong expectation (``RepeatedMismatch``, held for an operator).
"""

from __future__ import annotations

import errno
import logging
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from glacier_sync.errors import DownloadError, PermanentError, TransferFault, TransientError
from glacier_sync.transfer.download_plan import PartsUnknown, part_size
from glacier_sync.transfer.object_checks import (
    Check,
    b64,
    combined_crc,
    composite_value,
    full_object_value,
    multipart_etag,
    new_hasher,
)
from glacier_sync.transfer.range_journal import RangePlan, fsync_dir, fsync_file

log = logging.getLogger(__name__)

BUFFER_BYTES = 1024 * 1024


class WholeObjectMismatch(DownloadError):
    """Every range was fetched but the whole file differs from S3's checksum or eTag."""

    def __init__(
        self,
        message: str,
        check: str = "",
        got: str = "",
        expected: str = "",
        plan: RangePlan | None = None,
    ) -> None:
        super().__init__(message)
        self.check, self.got, self.expected = check, got, expected
        self.plan = plan  # the plan the file was fetched with (its journal's)


class UnconfirmedMismatch(WholeObjectMismatch, TransientError):
    """A first mismatch: a bad transfer as likely as a wrong expectation, so it is fetched again
    without spending an attempt (the same mismatch on the next fetch is RepeatedMismatch)."""


class RepeatedMismatch(WholeObjectMismatch, PermanentError):
    """Two whole fetches gave the same bytes, and both differ from what S3 says of the object:
    the expectation is wrong (or the object itself), not the transfer. Held for an operator."""


class MismatchesInARow(WholeObjectMismatch):
    """Fetch after fetch differs from S3's value, each time differently: a link or store that
    corrupts bytes. Fetched again, but each such try now spends one of the work's attempts, so
    a path that never delivers the object intact ends held, not refetched for ever."""


FREE_MISMATCHES = 2  # mismatches in a row fetched again without spending an attempt
NOTED_MISMATCHES = 8  # the note keeps the last ones only


def check_whole(
    plan: RangePlan,
    digests: list[str],
    whole: str | None,
    work_id: str,
    exact_parts: Callable[[str], list[bytes]],
) -> Check:
    """Compare the file with what S3 says of the object; return the check that passed.

    ``digests`` are the ranges' hex digests in order (each part's, for ranges of parts; for
    an MD5 or SHA of parts split over several ranges, the parts' hashed from disk),
    ``whole`` the in-order hex digest (None when it could not be computed),
    ``exact_parts(algorithm)`` the parts' binary digests hashed from disk along the upload's
    exact part bounds (asked only when the ranges' do not match)."""
    where = f"s3://{plan.bucket}/{plan.key}"
    check, expected = plan.check, plan.expected
    if check == Check.NONE:
        log.info(
            "work %s: %s gives no whole-object check (eTag %s); the bag manifests are the check",
            work_id,
            where,
            plan.etag or "absent",
        )
        return check
    digests = _per_part(plan, digests)
    part = plan.upload_part
    lengths = [min(part, plan.size - start) for start in range(0, plan.size, part)] or [0]
    if check.in_order_algorithm:
        if whole is None:  # the check could not run: never a pass, never a mismatch
            raise TransferFault(f"work {work_id}: the {check} of {where} could not be computed")
        got = whole if check == Check.ETAG_MD5 else b64(bytes.fromhex(whole))
    elif check.full_object_crc:
        got = full_object_value(check, digests, lengths)
    elif check == Check.ETAG_PARTS:
        got = _of_parts(multipart_etag, "md5", digests, expected, exact_parts)
    else:
        algorithm = plan.algorithm
        if check.ambiguous:
            full = full_object_value(algorithm, digests, lengths)
            if full == expected.partition("-")[0]:
                log.info("work %s: %s matches its %s as a full-object CRC", work_id, where, check)
                return Check(algorithm)
        else:
            full = ""

        def composite(parts: list[bytes]) -> str:
            return f"{composite_value(algorithm, parts)}-{len(parts)}"

        got = _of_parts(composite, algorithm, digests, expected, exact_parts)
        if got == expected:
            return Check.of_parts(algorithm)
        got = f"{got} (full object {full})" if full else got
    if got != expected:
        raise UnconfirmedMismatch(
            f"work {work_id}: the download of {where} does not match the object ({check}: "
            f"got {got}, S3 says {expected}); the next try fetches it again (only the parts at "
            "fault where the store gives each part's own value)",
            check,
            got,
            expected,
            plan,
        )
    return check


def _of_parts(
    value_of: Callable[[list[bytes]], str],
    algorithm: str,
    digests: list[str],
    expected: str,
    exact_parts: Callable[[str], list[bytes]],
) -> str:
    """A part-wise value (multipart eTag, composite checksum) from the ranges' part digests;
    when it differs, from the parts hashed again along their exact bounds (unequal parts)."""
    got = value_of([bytes.fromhex(d) for d in digests])
    return got if got == expected else value_of(exact_parts(algorithm))


def _per_part(plan: RangePlan, digests: list[str]) -> list[str]:
    """The ranges' digests one per part: a range of several parts records each part's, the
    CRCs of a part's ranges combine into the part's (a part's MD5 or SHA split over several
    ranges comes hashed from disk, one per part already)."""
    if plan.parts_hashed_from_disk:
        return digests
    if plan.ranges_per_part > 1:
        per, count = plan.ranges_per_part, plan.ranges
        groups = [range(first, min(first + per, count)) for first in range(0, count, per)]
        return [_combined(plan, group, digests) for group in groups]
    if plan.parts_per_range == 1:
        return digests
    width = len(new_hasher(plan.algorithm).hexdigest())
    return [d[i : i + width] for d in digests for i in range(0, len(d), width)]


def _combined(plan: RangePlan, indexes: range, digests: list[str]) -> str:
    """The hex CRC of consecutive ranges from theirs."""
    lengths = [end - start for start, end in map(plan.bounds, indexes)]
    return combined_crc(plan.algorithm, [digests[i] for i in indexes], lengths).hex()


def parts_on_disk(
    s3: Any, plan: RangePlan, fd: int, concurrency: int, algorithm: str
) -> list[bytes]:
    """The binary ``algorithm`` digests of the file on disk hashed along the upload's own part
    bounds, each part's size read with ``HEAD ?partNumber=N`` (parts may differ: 8, 6, 8 MiB)."""
    count = part_count(plan)
    version = plan.version_id or None

    def size_of(number: int) -> int:
        try:
            return part_size(s3, plan.bucket, plan.key, version, number, count)
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
        hasher = new_hasher(algorithm)
        hash_span(fd, offset, offset + size, hasher)
        digests.append(hasher.digest())
        offset += size
    return digests


def part_count(plan: RangePlan) -> int:
    """The upload's part count, from the eTag's ``-N`` or else the composite checksum's."""
    for text in (plan.etag, plan.expected):
        head, dash, count = text.rpartition("-")
        if dash and head and count.isdigit():
            return int(count)
    return 0


def hash_span(fd: int, start: int, end: int, hasher: Any) -> None:
    """Hash the file's bytes ``start`` to ``end`` (exclusive) through a fixed buffer."""
    buffer = bytearray(BUFFER_BYTES)
    view = memoryview(buffer)
    offset = start
    while offset < end:
        count = os.preadv(fd, [view[: min(BUFFER_BYTES, end - offset)]], offset)
        if count <= 0:  # the file was cut short under the download: an I/O error, said
            raise OSError(
                errno.EIO,
                f"the partial download ends at byte {offset}, before {end}: it was cut short "
                "while being checked",
            )
        hasher.update(view[:count])
        offset += count


def mismatch_note(partial: Path) -> Path:
    """Where the value of the last whole-object mismatch is kept, beside the ``.part`` file."""
    return partial.with_name(partial.name + ".mismatch")


def judge_mismatch(partial: Path, mismatch: WholeObjectMismatch, work_id: str) -> None:
    """Raise what a whole-object mismatch means, given the ones before it (noted durably beside
    the ``.part`` file, one line each, until a download passes):

    - ``RepeatedMismatch`` when an earlier full fetch ended in the very same mismatch (the same
      bytes twice: a transfer fault would not repeat itself): held for an operator;
    - ``MismatchesInARow`` when ``FREE_MISMATCHES`` fetches before it mismatched too, each
      differently (a link that corrupts bytes): fetched again, spending an attempt;
    - else the ``UnconfirmedMismatch`` itself: fetched again, no attempt spent."""
    note = mismatch_note(partial)
    seen = f"{mismatch.check} {mismatch.got} {mismatch.expected}"
    try:
        before = note.read_text(encoding="utf-8").split("\n")
    except (OSError, ValueError):  # none, or garbled: the mismatches start again
        before = []
    # Lines of another version of the object (its value differs) do not count.
    before = [line.strip() for line in before if line.strip().endswith(f" {mismatch.expected}")]
    where = partial.name.removesuffix(".part")[1:]
    if seen in before:
        note.unlink(missing_ok=True)
        raise RepeatedMismatch(
            f"work {work_id}: two downloads of {where} "
            f"gave the same bytes, and both differ from what S3 says ({mismatch.check}: got "
            f"{mismatch.got} twice, S3 says {mismatch.expected}): the object or its checksum in "
            "S3 is wrong, not the transfer. Held: compare `aws s3api head-object --checksum-mode "
            "ENABLED` with the bag's manifests, fix or re-upload the object, then "
            f"`glacier-sync retry {work_id}`",
            mismatch.check,
            mismatch.got,
            mismatch.expected,
        ) from None  # permanent: no transient cause in its chain
    _write_note(note, [*before, seen][-NOTED_MISMATCHES:])
    if len(before) >= FREE_MISMATCHES:
        raise MismatchesInARow(
            f"work {work_id}: {len(before) + 1} downloads in a row of {where} differ from what "
            f"S3 says, each differently (this one: {mismatch.check} got {mismatch.got}, S3 says "
            f"{mismatch.expected}): a link, proxy or store that corrupts bytes. Fetched again; "
            "from now on each try spends an attempt: check the network path to S3",
            mismatch.check,
            mismatch.got,
            mismatch.expected,
            mismatch.plan,
        ) from None  # not transient: it spends an attempt
    raise mismatch


def _write_note(note: Path, lines: list[str]) -> None:
    """The mismatches so far, durably (through a temporary file): a power cut never leaves a
    note that the bytes on disk contradict."""
    tmp = note.with_name(note.name + ".tmp")
    try:
        tmp.write_text("".join(f"{line}\n" for line in lines), encoding="utf-8")
        fsync_file(tmp)
        os.replace(tmp, note)
        fsync_dir(note.parent)
    except OSError as exc:  # without the note, the next mismatch is a first again
        log.warning("%s: the mismatch could not be noted (%s)", note, exc)
        tmp.unlink(missing_ok=True)
