"""AWS access: sessions per named profile, SQS polling, S3 downloads and restore requests."""

from __future__ import annotations

import json
import logging
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from glacier_sync import faults
from glacier_sync.credentials import profile_credentials, read_credentials
from glacier_sync.errors import DiskFull, DownloadError, ObjectUnavailable, is_disk_full
from glacier_sync.transfer import download_plan, ranged_download, whole_object
from glacier_sync.transfer.range_journal import fsync_dir, fsync_file, journal_path

if TYPE_CHECKING:
    import boto3

    from glacier_sync.settings import QueueSource, Settings

log = logging.getLogger(__name__)


class ClientFactory(Protocol):
    """Gives boto3 clients for one queue entry (a profile session, or an Airflow hook's)."""

    def client(self, service: str, queue: QueueSource) -> Any: ...


def profile_session(settings: Settings, profile: str | None, region: str) -> boto3.Session:
    """A boto3 session for ``profile``: from the credentials secret file when present.

    The file is INI with one section per profile (``aws_access_key_id``,
    ``aws_secret_access_key``, optional ``aws_session_token`` and ``region_name``). Without the
    file (or with an empty one), boto3's normal chain (environment, ``~/.aws``, instance role)
    is used.
    """
    import boto3

    path = settings.aws_credentials_file
    if not path.is_file() or path.stat().st_size == 0:
        return boto3.Session(profile_name=profile, region_name=region)
    values = profile_credentials(read_credentials(path), path, profile)
    return boto3.Session(
        aws_access_key_id=values["aws_access_key_id"],
        aws_secret_access_key=values["aws_secret_access_key"],
        aws_session_token=values.get("aws_session_token") or None,
        region_name=values.get("region_name") or region,
    )


class ProfileClients:
    """Clients from named profiles (the way to work outside Airflow)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._cache: dict[tuple[str, str | None, str], Any] = {}

    def client(self, service: str, queue: QueueSource) -> Any:
        """A cached boto3 client for ``service`` in the queue's region and profile."""
        key = (service, queue.profile, queue.region)
        if key not in self._cache:
            session = profile_session(self.settings, queue.profile, queue.region)
            self._cache[key] = session.client(
                service, region_name=queue.region, endpoint_url=self.settings.aws_endpoint_url
            )
        return self._cache[key]


@dataclass(frozen=True)
class SqsMessage:
    """One received message with the queue it came from."""

    queue: QueueSource
    message_id: str
    receipt_handle: str
    body: str
    receive_count: int


def receive_messages(sqs: Any, queue: QueueSource, limit: int, wait: int, visibility: int):
    """Long-poll ``queue`` until ``limit`` messages are received or the queue is empty."""
    received: list[SqsMessage] = []
    seen: set[str] = set()
    while len(received) < limit:
        response = sqs.receive_message(
            QueueUrl=queue.queue_url,
            MaxNumberOfMessages=min(10, limit - len(received)),
            WaitTimeSeconds=wait if not received else 0,
            VisibilityTimeout=visibility,
            AttributeNames=["ApproximateReceiveCount"],
        )
        batch = [m for m in response.get("Messages", []) if m["MessageId"] not in seen]
        if not batch:
            break
        for msg in batch:
            seen.add(msg["MessageId"])
            count = int(msg.get("Attributes", {}).get("ApproximateReceiveCount", "1"))
            received.append(
                SqsMessage(queue, msg["MessageId"], msg["ReceiptHandle"], msg["Body"], count)
            )
    return received


def delete_message(sqs: Any, message: SqsMessage) -> bool:
    """Delete a message whose records are safely recorded; False when SQS refused.

    A refused delete (expired receipt handle) is harmless: the message comes back and its
    records are recognised as duplicates.
    """
    from botocore.exceptions import ClientError

    try:
        sqs.delete_message(QueueUrl=message.queue.queue_url, ReceiptHandle=message.receipt_handle)
    except ClientError as exc:
        log.warning(
            "queue %s: message %s not deleted (%s); it will come back as a duplicate",
            message.queue.name,
            message.message_id,
            exc,
        )
        return False
    return True


def error_code(exc: Exception) -> str:
    """The AWS error code of a botocore ClientError ("" for anything else)."""
    return str(getattr(exc, "response", {}).get("Error", {}).get("Code", ""))


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
    from an earlier try and ``fetched`` now.
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
        fetched = ranged_download.fetch_ranges(s3, plan, partial, concurrency, work_id)
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
        whole_object.mismatch_note(partial).unlink(missing_ok=True)
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
        ranged_download.discard(partial)
        whole_object.held_after_repeat(partial, mismatch, work_id)
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
        raise DiskFull(
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


def request_restore(s3: Any, bucket: str, key: str, days: int, tier: str) -> str:
    """Ask S3 to restore an archived object; return 'requested', 'in-progress' or 'available'."""
    from botocore.exceptions import ClientError

    try:
        response = s3.restore_object(
            Bucket=bucket,
            Key=key,
            RestoreRequest={"Days": days, "GlacierJobParameters": {"Tier": tier}},
        )
    except ClientError as exc:
        code = error_code(exc)
        if code == "RestoreAlreadyInProgress":
            return "in-progress"
        if code in ("NoSuchKey", "404"):
            raise DownloadError(f"s3://{bucket}/{key} does not exist; check the key") from exc
        raise DownloadError(f"restore request for s3://{bucket}/{key} failed: {exc}") from exc
    status = response["ResponseMetadata"]["HTTPStatusCode"]
    return "available" if status == 200 else "requested"
