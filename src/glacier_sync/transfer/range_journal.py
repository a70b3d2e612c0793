"""The journal of a resumable download: which ranges of the ``.part`` file are on disk, verified.

One JSON line per record, appended and fsynced only after the range's bytes were flushed to the
``.part`` file: a header naming the object version and the range plan, then one line per finished
range with its digest. A torn last line (a kill mid-append) is ignored; a journal whose header
names another object, plan or format is not trusted at all.
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
from dataclasses import asdict, dataclass
from pathlib import Path

from glacier_sync.transfer.object_checks import CRC_BYTES, Check

JOURNAL_FORMAT = 2


@dataclass(frozen=True)
class RangePlan:
    """What a download of one object version fetches: ranges of ``part_size`` bytes, each hashed
    with ``algorithm``; ``check`` names the end-to-end check of the whole object. A range may
    hold ``parts_per_range`` whole parts of the upload (parts smaller than the download's range
    size): its digest is then each part's digest, one after the other. Or each part of
    ``part_size`` bytes is fetched in ``ranges_per_part`` ranges (parts larger than the range
    size), each range with its own ``range_algorithm`` digest."""

    bucket: str
    key: str
    version_id: str
    etag: str
    size: int
    part_size: int
    algorithm: str  # each range's digest: "md5", "sha1", "sha256", "crc32", "crc32c", "crc64nvme"
    check: Check  # the whole object's check (Check.NONE: unchecked)
    expected: str = ""  # what the check must find: the eTag, or S3's base64 checksum (with -N)
    format: int = JOURNAL_FORMAT
    parts_per_range: int = 1
    ranges_per_part: int = 1

    def __post_init__(self) -> None:
        """A check read back from a journal is a ``Check`` again (an unknown one: ValueError)."""
        object.__setattr__(self, "check", Check(self.check))

    @property
    def upload_part(self) -> int:
        """The upload's part size where the ranges follow the parts (else the range size)."""
        return self.part_size // self.parts_per_range

    @property
    def range_size(self) -> int:
        """The bytes of a range (the last of a part, or of the object, may be shorter)."""
        return -(-self.part_size // self.ranges_per_part)

    @property
    def parts_hashed_from_disk(self) -> bool:
        """Whether each part's MD5 or SHA is split over several ranges (it cannot be combined
        from theirs: the part is hashed from disk once all its ranges are in)."""
        return self.ranges_per_part > 1 and self.algorithm not in CRC_BYTES

    @property
    def range_algorithm(self) -> str:
        """Each range's digest: ``algorithm``, but a CRC32C where the parts are hashed from
        disk (it verifies the range on a resume)."""
        return "crc32c" if self.parts_hashed_from_disk else self.algorithm

    @property
    def parts(self) -> int:
        """How many parts of ``part_size`` bytes the object has (one for an empty object)."""
        return max(1, -(-self.size // self.part_size))

    @property
    def ranges(self) -> int:
        """How many ranges the object has (one for an empty object)."""
        last_part = self.size - (self.parts - 1) * self.part_size
        in_last = max(1, -(-last_part // self.range_size))
        return (self.parts - 1) * self.ranges_per_part + in_last

    def bounds(self, index: int) -> tuple[int, int]:
        """The first byte and the byte after the last of range ``index``."""
        part, within = divmod(index, self.ranges_per_part)
        part_start = part * self.part_size
        start = part_start + within * self.range_size
        return start, min(self.size, part_start + self.part_size, start + self.range_size)


def journal_path(partial: Path) -> Path:
    """The journal beside a ``.part`` file."""
    return partial.with_name(partial.name + ".journal")


IDENTITY = ("bucket", "key", "version_id", "etag", "size", "format")
ETAG_CHECKS = (Check.ETAG_PARTS, Check.ETAG_MD5)


def journaled_plan(path: Path, plan: RangePlan) -> RangePlan:
    """The plan the journal at ``path`` was started with, when it checks the same object version
    (same format) a way that still holds: the very same check with other ranges (an earlier
    release's range layout, or another ``download_chunk_mb``), or the object's eTag
    (``etag-parts``, ``etag-md5``) where a checksum is now preferred. Its verified ranges are
    then resumed rather than fetched again. Else ``plan``."""
    try:
        with path.open(encoding="utf-8") as journal:
            header = _header(journal.readline())
        wanted = asdict(plan)
        if header == wanted or any(header.get(k) != wanted[k] for k in IDENTITY):
            return plan
        same_check = all(header.get(k) == wanted[k] for k in ("check", "expected", "algorithm"))
        etag_check = header.get("check") in ETAG_CHECKS and header.get("expected") == plan.etag
        if not (same_check or etag_check) or header.get("check") == Check.NONE:
            return plan
        return RangePlan(**header)
    except (
        OSError,
        UnicodeDecodeError,
        json.JSONDecodeError,
        AttributeError,
        TypeError,
        ValueError,
    ):
        return plan


def _header(line: str) -> dict:
    """A journal's header, with the fields a journal of an earlier release lacks at their
    defaults (so it resumes unchanged)."""
    header = json.loads(line)
    if isinstance(header, dict):
        header.setdefault("parts_per_range", 1)
        header.setdefault("ranges_per_part", 1)
    return header


def read_journal(path: Path, plan: RangePlan) -> dict[int, str] | None:
    """The digests recorded for ``plan``; None when the journal is absent, unreadable or of
    another object, plan or format (then nothing in the ``.part`` file is trusted)."""
    try:
        lines = path.read_text(encoding="utf-8").split("\n")
    except (OSError, UnicodeDecodeError):
        return None
    try:
        header = _header(lines[0])
    except json.JSONDecodeError:
        return None
    if header != asdict(plan):
        return None
    digests: dict[int, str] = {}
    for line in lines[1:-1]:  # the last element follows the last newline: torn or empty
        try:
            entry = json.loads(line)
            index, digest = int(entry["i"]), str(entry["d"])
        except (json.JSONDecodeError, KeyError, TypeError, ValueError):
            continue
        if 0 <= index < plan.ranges:
            digests[index] = digest
    return digests


class RangeJournal:
    """Appends finished ranges durably (thread-safe)."""

    def __init__(self, path: Path, plan: RangePlan, fresh: bool) -> None:
        self.path = path
        self._lock = threading.Lock()
        if fresh:
            tmp = path.with_name(path.name + ".tmp")
            tmp.write_text(json.dumps(asdict(plan)) + "\n", encoding="utf-8")
            fsync_file(tmp)
            os.replace(tmp, path)
            fsync_dir(path.parent)
        else:
            _drop_torn_tail(path)
        self._file = path.open("a", encoding="utf-8")

    def record_many(self, ranges: list[tuple[int, str]]) -> None:
        """Append finished ranges with one ``fsync`` (their bytes already flushed)."""
        with self._lock:
            self._file.write("".join(json.dumps({"i": i, "d": d}) + "\n" for i, d in ranges))
            self._file.flush()
            os.fsync(self._file.fileno())

    def close(self) -> None:
        """Close the journal file."""
        self._file.close()


def _drop_torn_tail(path: Path) -> None:
    """Cut a last line that a crash left unfinished, so the next record starts a line of its
    own instead of being glued onto the fragment (and lost with it)."""
    with path.open("rb+") as journal:
        data = journal.read()
        whole = data.rfind(b"\n") + 1
        if whole != len(data):
            journal.truncate(whole)
            journal.flush()
            os.fsync(journal.fileno())


def fsync_file(path: Path) -> None:
    """Flush ``path``'s bytes to the disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(path: Path) -> None:
    """Make the renames in folder ``path`` durable (file systems that refuse it are let be)."""
    with contextlib.suppress(OSError):  # some file systems refuse it; the rename is atomic
        fsync_file(path)
