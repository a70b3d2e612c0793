"""Ask S3 to restore works from Glacier / Deep Archive, with one clear result per work.

Shared by ``glacier-sync request-restore`` and the ``restore_request_dag`` trigger form. Each
request is recorded as the row its ``ObjectRestore:Completed`` event will complete (keyed by
the version id in a versioned bucket, else the eTag), so one row follows a work from request to
archive.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from glacier_sync import aws
from glacier_sync.errors import ConfigError, DownloadError, is_transient
from glacier_sync.intake.events import work_id_from_key
from glacier_sync.records.progress import ProgressStore
from glacier_sync.settings import QueueSource, Settings

log = logging.getLogger(__name__)

REQUESTED = "requested"
IN_PROGRESS = "already in progress"
AVAILABLE = "already available"
NO_SUCH_KEY = "no such key"
NOT_IN_GLACIER = "not archived in Glacier"
UNKNOWN_WORK = "unknown work"
FAILED = "failed"
# Outcomes that recorded a row (the work is on its way); the others are bad input.
RECORDED = (REQUESTED, IN_PROGRESS, AVAILABLE)
GLACIER_CLASSES = ("GLACIER", "DEEP_ARCHIVE")
_EXPIRY = re.compile(r'expiry-date="([^"]+)"')


@dataclass(frozen=True)
class RequestResult:
    """What became of one requested item (a work id or a key)."""

    item: str
    outcome: str
    detail: str
    work_id: str | None = None
    key: str | None = None
    row_id: int | None = None

    def line(self) -> str:
        """One line for a log or a terminal."""
        name = self.work_id or self.item
        where = f" (row {self.row_id})" if self.row_id else ""
        return f"{name}: {self.outcome}{where}: {self.detail}"


def parse_items(text: str) -> list[str]:
    """Work ids or keys, one per line (blank lines and ``#`` comments skipped, duplicates
    dropped, order kept); commas and spaces separate too."""
    items: list[str] = []
    for line in text.splitlines():
        for item in re.split(r"[,\s]+", line.split("#", 1)[0].strip()):
            if item and item not in items:
                items.append(item)
    return items


def pick_queue(settings: Settings, name: str | None = None) -> QueueSource:
    """The queue entry giving region, profile and bucket (the first one by default)."""
    if not settings.queues:
        raise ConfigError(
            "no queue is configured: set `queues` (GLACIER_SYNC_QUEUES) to know the AWS region, "
            "profile and bucket"
        )
    for queue in settings.queues:
        if name is None or queue.name == name:
            return queue
    raise ConfigError(
        f"no queue named {name!r}; known: {', '.join(q.name for q in settings.queues)}"
    )


class RestoreRequester:
    """Requests restores for one queue entry's bucket and records them (``user``: who asked,
    named in each work's history)."""

    def __init__(
        self,
        settings: Settings,
        store: ProgressStore,
        clients: aws.ClientFactory | None = None,
        queue: QueueSource | None = None,
        bucket: str | None = None,
        user: str | None = None,
    ) -> None:
        self.settings, self.store, self.user = settings, store, user
        self.queue = queue or pick_queue(settings)
        self.bucket = bucket or self.queue.bucket
        if not self.bucket:
            raise ConfigError(
                f"no bucket known for queue {self.queue.name}: set `bucket` on the queue entry "
                "(or give --bucket)"
            )
        self.s3 = (clients or aws.ProfileClients(settings)).client("s3", self.queue)

    def request_all(self, items: list[str], tier: str, days: int) -> list[RequestResult]:
        """One result per item; a transient AWS failure is raised (the caller retries)."""
        return [self.request(item, tier, days) for item in items]

    def request(self, item: str, tier: str, days: int) -> RequestResult:
        """Ask for one work's restore (a work id known to the progress database, or a key)."""
        key = self._key_for(item)
        if key is None:
            return RequestResult(
                item,
                UNKNOWN_WORK,
                "the progress database knows no key for it; give its key instead (or "
                f"--key), e.g. Archive0/00/{item}/{item}.bag.zip",
            )
        try:
            work_id = work_id_from_key(key)
        except ValueError as exc:
            return RequestResult(item, NO_SUCH_KEY, str(exc), key=key)
        where = f"s3://{self.bucket}/{key}"
        try:
            return self._request_key(item, key, work_id, tier, days)
        except Exception as exc:
            if is_transient(exc) or not _is_aws_error(exc):
                raise
            return RequestResult(item, FAILED, f"{where}: {exc}", work_id, key)

    def _request_key(
        self, item: str, key: str, work_id: str, tier: str, days: int
    ) -> RequestResult:
        where = f"s3://{self.bucket}/{key}"
        head = self._head(key)
        if head is None:
            return RequestResult(item, NO_SUCH_KEY, f"{where} does not exist", work_id, key)
        storage = head.get("StorageClass") or "STANDARD"
        if storage not in GLACIER_CLASSES:
            return RequestResult(
                item,
                NOT_IN_GLACIER,
                f"{where} is in {storage}: nothing to restore, it can be read as it is",
                work_id,
                key,
            )
        outcome, until = self._restore(key, head, tier, days)
        row_id = self.store.record_restore_request(
            self.bucket,
            key,
            str(head.get("ETag", "")).strip('"'),
            work_id,
            self.queue.region,
            outcome,
            version_id=head.get("VersionId"),
            available_until=until,
            user=self.user,
        )
        detail = {
            "requested": f"{tier} restore of {where} for {days} days asked; its Completed event "
            "starts the pipeline",
            "in-progress": f"a restore of {where} is under way; its Completed event starts the "
            "pipeline",
            "available": f"{where} is restored already"
            + (f" until {until:%Y-%m-%d %H:%M} UTC" if until else "")
            + "; the next run processes it",
        }[outcome]
        row = self.store.get(row_id)
        if outcome == "available" and row.state == "synced":
            detail = (
                f"{where} is restored already and this version was archived "
                f"{row.synced_at:%Y-%m-%d %H:%M} UTC; nothing to do"
            )
        label = {"requested": REQUESTED, "in-progress": IN_PROGRESS, "available": AVAILABLE}
        return RequestResult(item, label[outcome], detail, work_id, key, row_id)

    def _key_for(self, item: str) -> str | None:
        if "/" in item or item.endswith(".zip"):
            return item
        rows = [r for r in self.store.find([item]) if r.source == "s3"]
        return rows[-1].object_key if rows else None

    def _head(self, key: str) -> dict[str, Any] | None:
        from botocore.exceptions import ClientError

        try:
            return self.s3.head_object(Bucket=self.bucket, Key=key)
        except ClientError as exc:
            if aws.error_code(exc) in ("404", "NoSuchKey", "NotFound"):
                return None
            raise

    def _restore(
        self, key: str, head: dict[str, Any], tier: str, days: int
    ) -> tuple[str, datetime | None]:
        """'requested', 'in-progress' or 'available', and until when a restored copy stays."""
        restore = head.get("Restore") or ""
        if 'ongoing-request="true"' in restore:
            return "in-progress", None
        if 'ongoing-request="false"' in restore:
            return "available", _expiry(restore)
        return aws.request_restore(self.s3, self.bucket, key, days, tier), None


def _is_aws_error(exc: BaseException) -> bool:
    """An S3 answer about this item (refused, not found, ...), not a bug of ours."""
    return isinstance(exc, DownloadError) or type(exc).__module__.startswith("botocore")


def _expiry(restore: str) -> datetime | None:
    """The ``expiry-date`` of an S3 ``Restore`` header (an HTTP date), naive UTC."""
    from email.utils import parsedate_to_datetime

    found = _EXPIRY.search(restore)
    if not found:
        return None
    try:
        parsed = parsedate_to_datetime(found.group(1))
    except (TypeError, ValueError):
        return None
    if parsed.tzinfo is not None:
        parsed = parsed.astimezone(UTC).replace(tzinfo=None)
    return parsed


def summary(results: list[RequestResult]) -> str:
    """``3 requested, 1 no such key`` (counts per outcome, in the order of first appearance)."""
    counts: dict[str, int] = {}
    for result in results:
        counts[result.outcome] = counts.get(result.outcome, 0) + 1
    return ", ".join(f"{n} {outcome}" for outcome, n in counts.items()) or "nothing requested"
