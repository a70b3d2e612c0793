"""One restored object downloaded into place: resumed from its verified ranges, checked end to end,
recorded beside the zip (``<name>.download.json``) before the zip gets its name; a download
already complete is recognised and skipped."""

from __future__ import annotations

import json
import logging
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from glacier_sync import faults
from glacier_sync.aws import error_code
from glacier_sync.errors import (
    DiskFull,
    DownloadError,
    ObjectUnavailable,
    RoomShortfall,
    is_disk_full,
)
from glacier_sync.transfer import download_plan, part_checks, ranged_download, whole_object
from glacier_sync.transfer.range_journal import fsync_dir, fsync_file, journal_path

log = logging.getLogger(__name__)


def _sidecar(target: Path) -> Path:
    return target.with_name(target.name + ".download.json")


def is_complete_download(target: Path, etag: str, size: int | None) -> bool:
    """True when ``target`` was fully downloaded earlier from the same object version."""
    meta_path = _sidecar(target)
    if not target.is_file() or not meta_path.is_file():
        return False
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return False
    on_disk = target.stat().st_size
    return meta.get("etag") == etag and meta.get("size") == on_disk and size in (None, on_disk)


def _write_record(target: Path, record: dict[str, Any]) -> None:
    """Write ``<name>.download.json`` through a temporary file (never left empty or half)."""
    path = _sidecar(target)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        tmp.write_text(json.dumps(record), encoding="utf-8")
        fsync_file(tmp)  # durable before its name says the download is complete
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def remove_partial_downloads(target: Path) -> None:
    """Delete the temporary files of download tries of ``target`` (the ``.part`` file, its
    journal, and the randomly suffixed names of older versions)."""
    if target.parent.is_dir():
        for path in target.parent.glob(f".{target.name}.part*"):
            path.unlink(missing_ok=True)


def remove_download(target: Path) -> None:
    """Delete a downloaded zip and its completion record."""
    for path in (target, _sidecar(target)):
        path.unlink(missing_ok=True)


def download_object(
    s3: Any,
    bucket: str,
    key: str,
    etag: str,
    target: Path,
    work_id: str,
    concurrency: int,
    chunk_mb: int,
    version_id: str | None = None,
    room: Callable[[int, int], None] | None = None,
    report: dict[str, Any] | None = None,
    progress: Callable[[], None] = lambda: None,
) -> bool:
    """Download ``s3://bucket/key`` to ``target``; return False when already complete there.

    The object is fetched in ranges into one temporary file (``.<name>.part``) with a journal
    of its verified ranges beside it (``.<name>.part.journal``): a killed or failed try is
    resumed by the next one, which fetches only what is missing (``ranged_download``). The whole
    object is checked against S3's checksum or eTag, then a completion record
    (``<name>.download.json``) is written and the file renamed: a re-run skips an identical
    download. Before any byte is fetched, ``room(bytes still to fetch, object size)`` checks
    the free space the work needs (by default: the rest of the zip in ``target``'s folder).
    ``report`` receives the whole-object check that passed (``check``: ``crc64nvme``,
    ``composite-crc32``, ``etag-parts``, ``etag-md5``, ... as ``download_plan`` lists them, or
    ``none``: unchecked, the bag manifests then being the only check) and the bytes ``reused``
    from an earlier try and ``fetched`` now. ``progress`` is called as bytes arrive (it may
    raise ``Stalled`` to stop the download).
    """
    from botocore.exceptions import ClientError

    extra = {"VersionId": version_id} if version_id else {}
    try:
        head = s3.head_object(Bucket=bucket, Key=key, ChecksumMode="ENABLED", **extra)
    except ClientError as exc:
        if error_code(exc) in ("404", "NoSuchKey", "NotFound"):
            raise ObjectUnavailable(
                f"work {work_id}: s3://{bucket}/{key} does not exist (deleted or renamed since the "
                "restore event); check the key, then `glacier-sync retry` or drop the event"
            ) from exc
        raise DownloadError(f"work {work_id}: cannot read s3://{bucket}/{key}: {exc}") from exc
    real_etag = str(head.get("ETag", "")).strip('"')
    size = int(head.get("ContentLength", 0))
    partial = target.with_name(f".{target.name}.part")
    if etag and real_etag and real_etag != etag:
        ranged_download.discard(partial)
        raise ObjectUnavailable(
            f"work {work_id}: s3://{bucket}/{key} changed since the restore event (eTag "
            f"{real_etag}, event says {etag}); request a new restore for the current version"
        )
    if is_complete_download(target, real_etag, size):
        whole_object.mismatch_note(partial).unlink(missing_ok=True)  # a kill left it behind
        return False
    storage = head.get("StorageClass")
    restore = head.get("Restore")
    if storage in ("GLACIER", "DEEP_ARCHIVE") and not (
        restore and 'ongoing-request="false"' in restore
    ):
        raise _not_restored(work_id, bucket, key, restore)
    target.parent.mkdir(parents=True, exist_ok=True)
    remove_download(target)  # an incomplete or other version's zip: make room, trust nothing
    for stale in target.parent.glob(f".{target.name}.part?*"):  # the random names of old tries
        if stale.name not in (partial.name + ".journal", partial.name + ".mismatch"):
            stale.unlink(missing_ok=True)
    try:
        plan = download_plan.plan_download(s3, head, bucket, key, version_id, chunk_mb)
        on_disk = partial.stat().st_size if partial.is_file() else 0
        still_to_fetch = size - min(on_disk, size)
        if room is None:
            _require_room(target.parent, still_to_fetch, work_id, bucket, key)
        else:
            room(still_to_fetch, size)
        fetched = ranged_download.fetch_ranges(s3, plan, partial, concurrency, work_id, progress)
        whole_object.mismatch_note(partial).unlink(missing_ok=True)  # passed: none in a row
        if report is not None:
            report.update(check=fetched.check, reused=fetched.reused, fetched=fetched.fetched)
        if fetched.reused:
            log.info(
                "work %s: resumed s3://%s/%s: %d bytes verified on disk, %d fetched",
                work_id,
                bucket,
                key,
                fetched.reused,
                fetched.fetched,
            )
        # The completion record first (atomically), then the zip under its real name: a record
        # without its zip, or a zip without its record, is never taken for a complete download.
        _write_record(target, {"bucket": bucket, "key": key, "etag": real_etag, "size": size})
        faults.checkpoint("download:recorded")
        os.replace(partial, target)
        fsync_dir(target.parent)  # both renames durable before the database says downloaded
        faults.checkpoint("download:renamed")
        journal_path(partial).unlink(missing_ok=True)
    except ClientError as exc:
        code = error_code(exc)
        if code in ("InvalidObjectState", "403"):
            raise _not_restored(work_id, bucket, key, restore) from exc
        if code in ("PreconditionFailed", "412"):
            ranged_download.discard(partial)
            raise ObjectUnavailable(
                f"work {work_id}: s3://{bucket}/{key} changed during the download (eTag "
                f"{real_etag} no longer matches); the partial file is dropped; request a new "
                "restore for the current version"
            ) from exc
        raise DownloadError(
            f"work {work_id}: download of s3://{bucket}/{key} failed: {exc}; it resumes from "
            "its verified ranges on the next try"
        ) from exc
    except whole_object.WholeObjectMismatch as mismatch:
        # The bytes at fault leave the journal before the mismatch is noted: killed between the
        # two, the next try fetches them again (a note ahead of the journal would make that try
        # reuse the same bytes and take them for a repeated mismatch, holding the work).
        narrowed = mismatch.plan is not None and part_checks.keep_good_parts(
            s3, mismatch.plan, partial, concurrency, work_id
        )
        if not narrowed:
            ranged_download.discard(partial, keep_note=True)
        try:
            whole_object.judge_mismatch(partial, mismatch, work_id)
        except whole_object.RepeatedMismatch:
            ranged_download.discard(partial)  # held: the operator's retry starts afresh
            raise
    except OSError as exc:
        if is_disk_full(exc):
            raise DiskFull(
                f"work {work_id}: no space left in {target.parent} while downloading "
                f"s3://{bucket}/{key} ({size} bytes); free space there, the download resumes "
                "on the next run"
            ) from exc
        raise
    return True


def _require_room(folder: Path, size: int, work_id: str, bucket: str, key: str) -> None:
    free = shutil.disk_usage(folder).free
    if size > free:
        raise RoomShortfall(
            f"work {work_id}: s3://{bucket}/{key} is {size} bytes but {folder} has only {free} "
            "free; free space there, the download is tried again on the next run"
        )


def _not_restored(work_id: str, bucket: str, key: str, restore: str | None) -> ObjectUnavailable:
    state = (
        "its restore is still in progress" if restore else "it is not restored or the copy expired"
    )
    return ObjectUnavailable(
        f"work {work_id}: s3://{bucket}/{key} cannot be read: {state} (InvalidObjectState). "
        f"Run `glacier-sync request-restore {work_id}` (or --key '{key}') and wait for the "
        "ObjectRestore:Completed event"
    )
