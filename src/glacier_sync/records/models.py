"""SQLAlchemy 2 model of the progress database (schema managed by Alembic migrations)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import JSON, BigInteger, Boolean, DateTime, Index, Integer, String, Text, false
from sqlalchemy.dialects import mysql
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from glacier_sync.records.states import State

# Microsecond timestamps everywhere (MySQL/MariaDB DATETIME drops them unless fsp=6).
Timestamp = DateTime().with_variant(mysql.DATETIME(fsp=6), "mysql", "mariadb")


def utcnow() -> datetime:
    """Naive UTC now: every time in the progress database is UTC."""
    return datetime.now(UTC).replace(tzinfo=None)


class Base(DeclarativeBase):
    """Declarative base of the progress tables."""


class Progress(Base):
    """One restored object (one version of one bag zip) on its way to the archive."""

    __tablename__ = "glacier_sync_progress"
    # Revision 0003: the clean-up check (state = 'synced' AND cleaned_at IS NULL) seeks, not scans.
    __table_args__ = (Index("ix_glacier_sync_progress_state_cleaned_at", "state", "cleaned_at"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    dedup_key: Mapped[str] = mapped_column(String(64), unique=True)
    work_id: Mapped[str] = mapped_column(String(128), index=True)
    source: Mapped[str] = mapped_column(String(16), default="s3")
    queue_name: Mapped[str | None] = mapped_column(String(128))
    region: Mapped[str | None] = mapped_column(String(32))
    bucket: Mapped[str] = mapped_column(String(255))
    object_key: Mapped[str] = mapped_column(Text)
    etag: Mapped[str | None] = mapped_column(String(128))
    version_id: Mapped[str | None] = mapped_column(String(1024))
    size: Mapped[int | None] = mapped_column(BigInteger)
    local_path: Mapped[str | None] = mapped_column(Text)
    state: Mapped[str] = mapped_column(String(16), default=State.RESTORED, index=True)
    failed_phase: Mapped[str | None] = mapped_column(String(16))
    restore_requested_at: Mapped[datetime | None] = mapped_column(Timestamp)
    restore_completed_at: Mapped[datetime | None] = mapped_column(Timestamp)
    downloaded_at: Mapped[datetime | None] = mapped_column(Timestamp)
    debagged_at: Mapped[datetime | None] = mapped_column(Timestamp)
    synced_at: Mapped[datetime | None] = mapped_column(Timestamp)
    cleaned_at: Mapped[datetime | None] = mapped_column(Timestamp)
    archive_path: Mapped[str | None] = mapped_column(Text)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    last_error: Mapped[str | None] = mapped_column(Text)
    history: Mapped[list[dict[str, Any]]] = mapped_column(JSON, default=list)
    # Revision 0004: when S3 deletes the restored copy, what debag proved, and a permanent
    # failure held for an operator (only ``failed_run``'s own cleared task may try it again).
    restore_expires_at: Mapped[datetime | None] = mapped_column(Timestamp)
    fixity: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    needs_attention: Mapped[bool] = mapped_column(
        Boolean, default=False, server_default=false(), nullable=False
    )
    failed_run: Mapped[str | None] = mapped_column(String(255))
    claimed_by: Mapped[str | None] = mapped_column(String(255))
    claimed_until: Mapped[datetime | None] = mapped_column(Timestamp)
    created_at: Mapped[datetime] = mapped_column(Timestamp, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(Timestamp, default=utcnow, onupdate=utcnow)

    def add_history(self, event: str, **details: Any) -> None:
        """Append an event to the JSON history (a new list, so the change is tracked)."""
        entry = {"at": utcnow().isoformat(timespec="seconds"), "event": event}
        entry.update({k: v for k, v in details.items() if v is not None})
        self.history = [*(self.history or []), entry]

    def summary(self) -> dict[str, Any]:
        """Plain data for status output."""

        def iso(value: datetime | None) -> str | None:
            return value.isoformat(timespec="seconds") if value else None

        return {
            "id": self.id,
            "work_id": self.work_id,
            "state": self.state,
            "failed_phase": self.failed_phase,
            "bucket": self.bucket,
            "key": self.object_key,
            "etag": self.etag,
            "attempts": self.attempts,
            "last_error": self.last_error,
            "needs_attention": self.needs_attention,
            "restore_requested_at": iso(self.restore_requested_at),
            "restore_completed_at": iso(self.restore_completed_at),
            "restore_expires_at": iso(self.restore_expires_at),
            "downloaded_at": iso(self.downloaded_at),
            "debagged_at": iso(self.debagged_at),
            "synced_at": iso(self.synced_at),
            "cleaned_at": iso(self.cleaned_at),
            "archive_path": self.archive_path,
            "fixity": self.fixity,
            "claimed_by": self.claimed_by,
            "claimed_until": iso(self.claimed_until),
            "updated_at": iso(self.updated_at),
        }
