"""The progress database: one row per restored object, every phase recorded, claims per run."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import create_engine, event, or_, select, text, update
from sqlalchemy.exc import IntegrityError, OperationalError, SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from glacier_sync.errors import ProgressDatabaseError, WorkNotFound
from glacier_sync.events import RestoreEvent, dedup_key
from glacier_sync.models import STATES, Progress, utcnow
from glacier_sync.settings import mask_url

log = logging.getLogger(__name__)

PENDING_STATES = ("restored", "downloaded", "debagged", "failed")
MIGRATIONS = Path(__file__).parent / "migrations"
VERSION_TABLE = "glacier_sync_alembic_version"
HEAD_REVISION = "0001"  # the newest file in migrations/versions (a test keeps them in step)


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


def _engine(url: str):
    if url.startswith("sqlite"):
        path = url.split("///", 1)[-1]
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"timeout": 60})

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn, _record) -> None:
            cursor = dbapi_conn.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA busy_timeout=60000")
            cursor.close()

        return engine
    return create_engine(url, pool_pre_ping=True, pool_recycle=3600)


class ProgressStore:
    """Reads and writes progress rows; every write is its own committed transaction."""

    def __init__(self, url: str, auto_migrate: bool = True) -> None:
        self.url = url
        try:
            self.engine = _engine(url)
            with self.engine.connect():
                pass
        except (SQLAlchemyError, ImportError, ValueError) as exc:
            raise ProgressDatabaseError(
                f"progress database {mask_url(url)} is unreachable: {_reason(exc)}. Check that the "
                "server runs and that progress_db_url (or the file in progress_db_url_file) is "
                "right"
            ) from None
        self.sessions = sessionmaker(self.engine, expire_on_commit=False)
        if auto_migrate:
            self.migrate()

    def migrate(self) -> None:
        """Bring the schema to the newest Alembic revision (safe when several run at once)."""
        if self._is_current():
            return
        from alembic import command
        from alembic.config import Config

        config = Config()
        config.set_main_option("script_location", str(MIGRATIONS))
        try:
            with self.engine.begin() as connection:
                config.attributes["connection"] = connection
                command.upgrade(config, "head")
        except (OperationalError, IntegrityError) as exc:
            if not self._is_current():
                raise ProgressDatabaseError(
                    f"migrating progress database {mask_url(self.url)} failed: {_reason(exc)}"
                ) from None

    def _is_current(self) -> bool:
        return self.current_revision() == HEAD_REVISION

    def current_revision(self) -> str | None:
        """The schema revision recorded in the database (None before the first migration)."""
        try:
            with self.engine.connect() as connection:
                return connection.execute(text(f"SELECT version_num FROM {VERSION_TABLE}")).scalar()
        except SQLAlchemyError:
            return None

    @contextmanager
    def session(self) -> Iterator[Session]:
        """A session committed on success and rolled back on error."""
        with self.sessions() as session:
            try:
                yield session
                session.commit()
            except OperationalError as exc:
                session.rollback()
                raise ProgressDatabaseError(
                    f"progress database {mask_url(self.url)}: {_reason(exc)}"
                ) from None
            except Exception:
                session.rollback()
                raise

    def record_event(self, record: RestoreEvent, queue_name: str | None, message_id: str):
        """Store a restore event; return (row id, 'new' | 'duplicate' | 'reopened')."""
        when = parse_event_time(record.event_time) or utcnow()
        details = {
            "message_id": message_id,
            "event_name": record.event_name,
            "event_time": record.event_time,
            "queue": queue_name,
        }
        with self.session() as session:
            row = session.scalar(select(Progress).where(Progress.dedup_key == record.dedup_key))
            if row is None:
                row = Progress(
                    dedup_key=record.dedup_key,
                    work_id=record.work_id,
                    source="s3",
                    queue_name=queue_name,
                    region=record.region,
                    bucket=record.bucket,
                    object_key=record.key,
                    etag=record.etag,
                    version_id=record.version_id,
                    size=record.size,
                    state="restored",
                    restore_completed_at=when,
                    attempts=0,
                    history=[],
                )
                row.add_history("restore completed", **details)
                session.add(row)
                try:
                    session.flush()
                except IntegrityError:
                    session.rollback()
                    return self._duplicate(record, details)
                return row.id, "new"
            return self._merge_existing(session, row, when, details)

    def _duplicate(self, record: RestoreEvent, details: dict[str, Any]):
        with self.session() as session:
            row = session.scalar(select(Progress).where(Progress.dedup_key == record.dedup_key))
            row.add_history("duplicate event", **details)
            return row.id, "duplicate"

    @staticmethod
    def _merge_existing(session: Session, row: Progress, when: datetime, details: dict[str, Any]):
        if row.state == "requested":
            row.state, row.restore_completed_at = "restored", when
            row.add_history("restore completed", **details)
            return row.id, "new"
        newer = row.restore_completed_at is None or when > row.restore_completed_at
        if row.state == "synced" and newer:
            row.state, row.restore_completed_at, row.attempts = "restored", when, 0
            row.downloaded_at = row.debagged_at = None
            row.failed_phase = row.last_error = None
            row.add_history("restored again after an earlier sync", **details)
            return row.id, "reopened"
        row.add_history("duplicate event", **details)
        return row.id, "duplicate"

    def record_restore_request(
        self, bucket: str, key: str, etag: str, work_id: str, region: str | None, outcome: str
    ) -> int:
        """Record that a restore was requested (the row waits for its Completed event)."""
        with self.session() as session:
            dkey = dedup_key(bucket, key, etag)
            row = session.scalar(select(Progress).where(Progress.dedup_key == dkey))
            if row is None:
                row = Progress(
                    dedup_key=dkey,
                    work_id=work_id,
                    source="s3",
                    bucket=bucket,
                    region=region,
                    object_key=key,
                    etag=etag,
                    state="requested",
                    attempts=0,
                    history=[],
                )
                session.add(row)
            row.restore_requested_at = utcnow()
            row.add_history("restore requested", outcome=outcome)
            session.flush()
            return row.id

    def register_local(self, zip_path: Path, key: str, work_id: str) -> tuple[int, str]:
        """Register a bag zip found on disk; return (row id, 'new' | 'duplicate')."""
        stat = zip_path.stat()
        etag = f"local-{stat.st_size}-{stat.st_mtime_ns}"
        dkey = dedup_key("", str(zip_path.resolve()), etag)
        with self.session() as session:
            row = session.scalar(select(Progress).where(Progress.dedup_key == dkey))
            if row is not None:
                return row.id, "duplicate"
            row = Progress(
                dedup_key=dkey,
                work_id=work_id,
                source="local",
                bucket="",
                object_key=key,
                etag=etag,
                size=stat.st_size,
                local_path=str(zip_path.resolve()),
                state="restored",
                restore_completed_at=utcnow(),
                attempts=0,
                history=[],
            )
            row.add_history("found on disk", path=str(zip_path))
            session.add(row)
            session.flush()
            return row.id, "new"

    def known_local_paths(self) -> set[str]:
        """Every local zip path a row already refers to, resolved (as ``register_local`` stores
        them), so a download under a relative or symlinked data root is still recognised."""
        with self.session() as session:
            paths = session.scalars(
                select(Progress.local_path).where(Progress.local_path.is_not(None))
            )
            return {str(Path(path).resolve()) for path in paths}

    def claim(
        self,
        run_id: str,
        source: str,
        limit: int,
        lease_minutes: int,
        max_attempts: int,
        ids: list[int] | None = None,
    ) -> list[int]:
        """Atomically claim up to ``limit`` pending rows for ``run_id``; count an attempt each."""
        now = utcnow()
        free = or_(Progress.claimed_until.is_(None), Progress.claimed_until < now)
        query = (
            select(Progress.id)
            .where(
                Progress.source == source,
                Progress.state.in_(PENDING_STATES),
                Progress.attempts < max_attempts,
                free,
            )
            .order_by(Progress.id)
        )
        if ids is not None:
            query = query.where(Progress.id.in_(ids))
        claimed: list[int] = []
        with self.session() as session:
            candidates = list(session.scalars(query.limit(limit * 4 + 10)))
        for pid in candidates:
            if len(claimed) >= limit:
                break
            with self.session() as session:
                result = session.execute(
                    update(Progress)
                    .where(Progress.id == pid, free)
                    .values(
                        claimed_by=run_id,
                        claimed_until=now + timedelta(minutes=lease_minutes),
                        attempts=Progress.attempts + 1,
                        updated_at=utcnow(),
                    )
                )
                if result.rowcount == 1:
                    claimed.append(pid)
        return claimed

    def get(self, pid: int) -> Progress:
        """One row (detached), or WorkNotFound."""
        with self.session() as session:
            row = session.get(Progress, pid)
            if row is None:
                raise WorkNotFound(f"no progress row with id {pid}")
            return row

    def update_row(self, pid: int, event: str, release: bool = False, **fields: Any) -> Progress:
        """Set fields, append a history event and optionally release the claim."""
        details = fields.pop("details", {})
        if "state" in fields and fields["state"] not in STATES:
            raise ValueError(f"unknown state {fields['state']!r}; one of {', '.join(STATES)}")
        with self.session() as session:
            row = session.get(Progress, pid)
            if row is None:
                raise WorkNotFound(f"no progress row with id {pid}")
            for name, value in fields.items():
                setattr(row, name, value)
            if release:
                row.claimed_by = row.claimed_until = None
            row.add_history(event, **details)
            return row

    def find(self, work_ids: list[str] | None = None) -> list[Progress]:
        """Rows of the named works (all rows when none is named), newest last."""
        query = select(Progress).order_by(Progress.id)
        if work_ids:
            query = query.where(Progress.work_id.in_(work_ids))
        with self.session() as session:
            return list(session.scalars(query))

    def stuck(self, older_than: timedelta, max_attempts: int) -> list[Progress]:
        """Unsynced rows untouched for ``older_than``, or failed past their attempts."""
        cutoff = utcnow() - older_than
        query = (
            select(Progress)
            .where(
                Progress.state != "synced",
                or_(
                    Progress.updated_at < cutoff,
                    (Progress.state == "failed") & (Progress.attempts >= max_attempts),
                ),
            )
            .order_by(Progress.id)
        )
        with self.session() as session:
            return list(session.scalars(query))

    def reset_for_retry(self, work_id: str) -> list[int]:
        """Make a work's unsynced rows eligible again (attempts 0, claim released)."""
        with self.session() as session:
            rows = list(
                session.scalars(
                    select(Progress).where(
                        Progress.work_id == work_id, Progress.state.in_(PENDING_STATES)
                    )
                )
            )
            if not rows:
                raise WorkNotFound(
                    f"work {work_id} has no unsynced row in the progress database; "
                    "see `glacier-sync status` for its state"
                )
            for row in rows:
                row.attempts, row.claimed_by, row.claimed_until = 0, None, None
                row.add_history("retry requested by operator")
            return [row.id for row in rows]


def _reason(exc: BaseException) -> str:
    orig = getattr(exc, "orig", None)
    text = str(orig or exc).strip().splitlines()
    return text[0] if text else type(exc).__name__
