"""Restore events, restore requests and zips found on disk, each recorded as the row of its
object version: a duplicate merges into its row, a newer restore of a synced work reopens it,
an event completes the row its request made."""

from __future__ import annotations

from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from glacier_sync.intake.events import RestoreEvent, dedup_key
from glacier_sync.records.models import Progress, utcnow
from glacier_sync.records.progress_db import ProgressDatabase
from glacier_sync.records.states import State


class Recorded(StrEnum):
    """What recording an event, a request or a zip found on disk did to its work's row."""

    NEW = "new"  # a new row, or a request's row completed by its event
    DUPLICATE = "duplicate"  # the same object version again: merged into its row
    REOPENED = "reopened"  # a newer restore of a synced or held work: it runs again


class EventIntake(ProgressDatabase):
    """Records what enters the pipeline: events, requests, local zips."""

    def record_event(
        self, record: RestoreEvent, queue_name: str | None, message_id: str
    ) -> tuple[int, Recorded]:
        """Store a restore event; return its row's id and what recording it did."""
        when = parse_event_time(record.event_time) or utcnow()
        details = {
            "message_id": message_id,
            "event_name": record.event_name,
            "event_time": record.event_time,
            "queue": queue_name,
        }
        expires = parse_event_time(record.expiry_time)
        with self.session() as session:
            row = _by_key(session, record.dedup_key, lock=True)
            if row is None:
                row = _requested_twin(session, record)
            if row is None:
                try:
                    row = _new_row(
                        session,
                        record.dedup_key,
                        record.work_id,
                        record.key,
                        State.RESTORED,
                        ("restore completed", details),
                        queue_name=queue_name,
                        region=record.region,
                        bucket=record.bucket,
                        etag=record.etag,
                        version_id=record.version_id,
                        size=record.size,
                        restore_completed_at=when,
                        restore_expires_at=expires,
                    )
                except IntegrityError:  # another run recorded the same object a moment ago
                    session.rollback()
                    return self._duplicate(record, details)
                return row.id, Recorded.NEW
            if expires is not None and (row.restore_expires_at or expires) <= expires:
                row.restore_expires_at = expires  # the newest restore's copy lasts longest
            return self._merge_existing(session, row, record, when, details)

    def _duplicate(self, record: RestoreEvent, details: dict[str, Any]) -> tuple[int, Recorded]:
        with self.session() as session:
            row = _by_key(session, record.dedup_key)
            row.add_history("duplicate event", **details)
            return row.id, Recorded.DUPLICATE

    @staticmethod
    def _merge_existing(
        session: Session,
        row: Progress,
        record: RestoreEvent,
        when: datetime,
        details: dict[str, Any],
    ) -> tuple[int, Recorded]:
        if row.state == State.REQUESTED:
            # The request's row becomes the event's (one row per work from request to archive),
            # keyed as the event is, so that its duplicates find it.
            row.dedup_key, row.state, row.restore_completed_at = (
                record.dedup_key,
                State.RESTORED,
                when,
            )
            row.etag = record.etag or row.etag
            row.version_id = record.version_id or row.version_id
            row.size = record.size if record.size is not None else row.size
            row.queue_name = details.get("queue") or row.queue_name
            row.add_history("restore completed", **details)
            return row.id, Recorded.NEW
        newer = row.restore_completed_at is None or when > row.restore_completed_at
        if row.state == State.SYNCED and newer:
            row.state, row.restore_completed_at, row.attempts = State.RESTORED, when, 0
            row.downloaded_at = row.debagged_at = row.cleaned_at = None
            row.failed_phase = row.last_error = None
            row.add_history("restored again after an earlier sync", **details)
            return row.id, Recorded.REOPENED
        if row.needs_attention and newer:  # restored again: the hold (an expired copy, say) ends
            row.restore_completed_at, row.attempts = when, 0
            row.needs_attention, row.failed_run = False, None
            row.add_history("restored again; the work is tried again", **details)
            return row.id, Recorded.REOPENED
        row.add_history("duplicate event", **details)
        return row.id, Recorded.DUPLICATE

    def record_restore_request(
        self,
        bucket: str,
        key: str,
        etag: str,
        work_id: str,
        region: str | None,
        outcome: str,
        version_id: str | None = None,
        available_until: datetime | None = None,
        user: str | None = None,
    ) -> int:
        """Record a restore request, keyed as its Completed event will be (the version id in a
        versioned bucket, else the eTag). The row waits for that event (``requested``); a copy
        that is ``available`` already gets no new event, so its row is ``restored`` at once.
        ``user`` (who asked, from the UI) is named in the history."""
        available = outcome == "available"
        with self.session() as session:
            dkey = dedup_key(bucket, key, version_id or etag)
            asked = {"outcome": outcome, **({"user": user} if user else {})}
            event = ("restore requested", asked)
            row = _by_key(session, dkey, lock=True)
            if row is None:
                row = _new_row(
                    session,
                    dkey,
                    work_id,
                    key,
                    State.RESTORED if available else State.REQUESTED,
                    event,
                    bucket=bucket,
                    region=region,
                    etag=etag,
                    version_id=version_id,
                    restore_requested_at=utcnow(),
                    restore_completed_at=utcnow() if available else None,
                    restore_expires_at=available_until,
                )
            else:
                row.restore_requested_at = utcnow()
                if available and row.state == State.REQUESTED:
                    row.state, row.restore_completed_at = State.RESTORED, utcnow()
                if available_until is not None:
                    row.restore_expires_at = available_until
                row.add_history(event[0], **event[1])
            return row.id

    def register_local(self, zip_path: Path, key: str, work_id: str) -> tuple[int, Recorded]:
        """Register a bag zip found on disk; return its row's id and ``NEW`` or ``DUPLICATE``."""
        stat = zip_path.stat()
        etag = f"local-{stat.st_size}-{stat.st_mtime_ns}"
        dkey = dedup_key("", str(zip_path.resolve()), etag)
        with self.session() as session:
            row = _by_key(session, dkey)
            if row is not None:
                return row.id, Recorded.DUPLICATE
            row = _new_row(
                session,
                dkey,
                work_id,
                key,
                State.RESTORED,
                ("found on disk", {"path": str(zip_path)}),
                source="local",
                bucket="",
                etag=etag,
                size=stat.st_size,
                local_path=str(zip_path.resolve()),
                restore_completed_at=utcnow(),
            )
            return row.id, Recorded.NEW

    def known_local_paths(self) -> set[str]:
        """Every local zip path a row already refers to, resolved (as ``register_local`` stores
        them), so a download under a relative or symlinked data root is still recognised."""
        with self.session() as session:
            paths = session.scalars(
                select(Progress.local_path).where(Progress.local_path.is_not(None))
            )
            return {str(Path(path).resolve()) for path in paths}


def parse_event_time(value: str | None) -> datetime | None:
    """``2026-10-02T04:31:07.112Z`` -> naive UTC datetime (None when absent or unreadable)."""
    if not value:
        return None
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    if parsed.tzinfo is not None:
        parsed = parsed.astimezone(UTC).replace(tzinfo=None)
    return parsed


def _by_key(session: Session, dkey: str, lock: bool = False) -> Progress | None:
    """The row of one object version (its dedup key), or None; ``lock``: FOR UPDATE."""
    query = select(Progress).where(Progress.dedup_key == dkey)
    return session.scalar(query.with_for_update() if lock else query)


def _new_row(
    session: Session,
    dkey: str,
    work_id: str,
    object_key: str,
    state: State,
    event: tuple[str, dict[str, Any]],
    **fields: Any,
) -> Progress:
    """Insert a new row (S3 source unless ``fields`` say otherwise) with its first event."""
    fields.setdefault("source", "s3")
    row = Progress(
        dedup_key=dkey,
        work_id=work_id,
        object_key=object_key,
        state=state,
        attempts=0,
        history=[],
        **fields,
    )
    row.add_history(event[0], **event[1])
    session.add(row)
    session.flush()
    return row


def _requested_twin(session: Session, record: RestoreEvent) -> Progress | None:
    """The ``requested`` row of the event's object when it was keyed otherwise (a request
    recorded by the version id, an event without one, as moto sends; or the reverse)."""
    query = (
        select(Progress)
        .where(
            Progress.bucket == record.bucket,
            Progress.object_key == record.key,
            Progress.state == State.REQUESTED,
        )
        .order_by(Progress.id)
        .with_for_update()
    )
    for row in session.scalars(query):
        same_version = record.version_id and row.version_id == record.version_id
        if same_version or (record.etag and row.etag == record.etag):
            return row
    return None
