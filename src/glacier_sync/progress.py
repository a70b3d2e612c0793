"""The progress database: one row per restored object, every phase recorded, claims per run."""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from functools import cache
from pathlib import Path
from typing import Any

from sqlalchemy import create_engine, event, or_, select, text, update
from sqlalchemy.exc import IntegrityError, OperationalError, SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from glacier_sync import faults
from glacier_sync.claimants import is_dead_local_run, local_run_prefix
from glacier_sync.errors import (
    AttemptsExhausted,
    ConfigError,
    GlacierSyncError,
    LostClaim,
    NeedsAttention,
    ProgressDatabaseError,
    UnknownRevision,
    WorkBusy,
    WorkNotFound,
)
from glacier_sync.events import RestoreEvent, dedup_key
from glacier_sync.models import Progress, utcnow
from glacier_sync.settings import mask_url
from glacier_sync.states import PENDING, State, check_move

log = logging.getLogger(__name__)

MIGRATIONS = Path(__file__).parent / "migrations"
VERSION_TABLE = "glacier_sync_alembic_version"
HEAD_REVISION = "0004"  # the newest file in migrations/versions (a test keeps them in step)


@cache
def known_revisions() -> tuple[str, ...]:
    """The revisions of the files in migrations/versions, oldest first, read without Alembic.

    Follows each file's ``down_revision`` from the first revision; a database at a revision
    outside this list was migrated by a newer glacier-sync.
    """
    parents: dict[str, str | None] = {}
    for path in (MIGRATIONS / "versions").glob("*.py"):
        source = path.read_text(encoding="utf-8")
        revision = re.search(r"^revision = [\"']([^\"']+)[\"']", source, re.MULTILINE)
        if revision is None:
            continue
        down = re.search(r"^down_revision = [\"']([^\"']+)[\"']", source, re.MULTILINE)
        parents[revision.group(1)] = down.group(1) if down else None
    children = {parent: child for child, parent in parents.items()}
    chain, current = [], children.get(None)
    while current is not None:
        chain.append(current)
        current = children.get(current)
    return tuple(chain)


def require_known(revision: str) -> str:
    """``revision`` when this glacier-sync has its migration file; ConfigError otherwise."""
    known = known_revisions()
    if revision not in known:
        raise ConfigError(
            f"unknown revision {revision!r}: this glacier-sync knows {', '.join(known)} "
            "(see `glacier-sync db current`)"
        )
    return revision


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
            dbapi_conn.isolation_level = None  # transactions begin in _sqlite_begin
            cursor = dbapi_conn.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA busy_timeout=60000")
            cursor.close()

        @event.listens_for(engine, "begin")
        def _sqlite_begin(connection) -> None:
            # Take the write lock at the start: a read-then-write transaction (a claim, an
            # update beside a heartbeat) then waits its turn instead of failing as stale.
            connection.exec_driver_sql("BEGIN IMMEDIATE")

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
        else:
            self.check_revision()

    def migrate(self) -> None:
        """Bring the schema to the newest Alembic revision (safe when several run at once).

        When the database is current this is one query (Alembic is not even imported); a
        database at a revision newer than this code knows raises UnknownRevision, untouched.
        """
        if self._is_current():
            return
        self._alembic("upgrade", HEAD_REVISION)

    def downgrade(self, revision: str) -> str | None:
        """Take the schema back to ``revision`` (so an older glacier-sync can run on it); return
        the revision the database was at."""
        require_known(revision)
        current = self.check_revision()
        known = known_revisions()
        if current is None:
            raise ConfigError(
                f"progress database {mask_url(self.url)} has no revision yet: nothing to downgrade"
            )
        if known.index(current) < known.index(revision):
            raise ConfigError(
                f"progress database {mask_url(self.url)} is at revision {current}, older than "
                f"{revision}: `glacier-sync db upgrade` migrates it forward"
            )
        if current != revision:
            self._alembic("downgrade", revision)
        return current

    def _alembic(self, action: str, revision: str) -> None:
        """Run Alembic's upgrade or downgrade to ``revision`` on this database."""
        from alembic import command
        from alembic.config import Config
        from alembic.util import CommandError

        config = Config()
        config.set_main_option("script_location", str(MIGRATIONS))
        try:
            with self.engine.begin() as connection:
                config.attributes["connection"] = connection
                getattr(command, action)(config, revision)
        except (OperationalError, IntegrityError, CommandError) as exc:
            # Another process may have done the same upgrade at the same moment.
            if action != "upgrade" or not self._is_current():
                raise ProgressDatabaseError(
                    f"{action} of progress database {mask_url(self.url)} to revision {revision} "
                    f"failed: {_reason(exc)}"
                ) from None

    def _is_current(self) -> bool:
        return self.check_revision() == HEAD_REVISION

    def check_revision(self) -> str | None:
        """The database's revision (None before the first migration); UnknownRevision when it
        is one this glacier-sync has no migration file for (a newer image migrated it)."""
        current = self.current_revision()
        if current is None or current in known_revisions():
            return current
        head = known_revisions()[-1]
        if current.isdigit() and head.isdigit() and int(current) > int(head):
            raise UnknownRevision(
                f"progress database {mask_url(self.url)} is at revision {current}, newer than "
                f"this glacier-sync ({head}): deploy the newer image again, or run "
                f"`glacier-sync db downgrade {head}` with it before rolling back"
            )
        raise UnknownRevision(
            f"progress database {mask_url(self.url)} is at revision {current}, which this "
            f"glacier-sync (newest {head}) does not know: deploy the image that migrated it, or "
            f"run `glacier-sync db downgrade {head}` with that image"
        )

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
                return row.id, "new"
            if expires is not None and (row.restore_expires_at or expires) <= expires:
                row.restore_expires_at = expires  # the newest restore's copy lasts longest
            return self._merge_existing(session, row, record, when, details)

    def _duplicate(self, record: RestoreEvent, details: dict[str, Any]):
        with self.session() as session:
            row = _by_key(session, record.dedup_key)
            row.add_history("duplicate event", **details)
            return row.id, "duplicate"

    @staticmethod
    def _merge_existing(
        session: Session,
        row: Progress,
        record: RestoreEvent,
        when: datetime,
        details: dict[str, Any],
    ):
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
            return row.id, "new"
        newer = row.restore_completed_at is None or when > row.restore_completed_at
        if row.state == State.SYNCED and newer:
            row.state, row.restore_completed_at, row.attempts = State.RESTORED, when, 0
            row.downloaded_at = row.debagged_at = row.cleaned_at = None
            row.failed_phase = row.last_error = None
            row.add_history("restored again after an earlier sync", **details)
            return row.id, "reopened"
        if row.needs_attention and newer:  # restored again: the hold (an expired copy, say) ends
            row.restore_completed_at, row.attempts = when, 0
            row.needs_attention, row.failed_run = False, None
            row.add_history("restored again; the work is tried again", **details)
            return row.id, "reopened"
        row.add_history("duplicate event", **details)
        return row.id, "duplicate"

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
    ) -> int:
        """Record a restore request, keyed as its Completed event will be (the version id in a
        versioned bucket, else the eTag). The row waits for that event (``requested``); a copy
        that is ``available`` already gets no new event, so its row is ``restored`` at once."""
        available = outcome == "available"
        with self.session() as session:
            dkey = dedup_key(bucket, key, version_id or etag)
            event = ("restore requested", {"outcome": outcome})
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

    def register_local(self, zip_path: Path, key: str, work_id: str) -> tuple[int, str]:
        """Register a bag zip found on disk; return (row id, 'new' | 'duplicate')."""
        stat = zip_path.stat()
        etag = f"local-{stat.st_size}-{stat.st_mtime_ns}"
        dkey = dedup_key("", str(zip_path.resolve()), etag)
        with self.session() as session:
            row = _by_key(session, dkey)
            if row is not None:
                return row.id, "duplicate"
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
        lease: timedelta,
        max_attempts: int,
        ids: list[int] | None = None,
        exclude: set[int] | frozenset[int] = frozenset(),
    ) -> list[int]:
        """Claim up to ``limit`` pending rows of ``source`` for ``run_id`` (oldest first).

        A row is free when unclaimed, claimed by ``run_id`` itself, or when its claimant's lease
        ran out (a dead run: the take-over is written to the row's history). Claiming spends no
        attempt; a recorded failure does.
        """
        now = utcnow()
        local = Progress.claimed_by.startswith(local_run_prefix(), autoescape=True)
        query = (
            select(Progress.id, Progress.claimed_by, Progress.claimed_until)
            .where(
                Progress.source == source,
                Progress.state.in_(PENDING),
                or_(_claimable(run_id, now, max_attempts), local),
            )
            # The works whose restored copy expires first go first (no expiry known: last).
            .order_by(
                Progress.restore_expires_at.is_(None), Progress.restore_expires_at, Progress.id
            )
        )
        if ids is not None:
            query = query.where(Progress.id.in_(ids))
        if exclude:
            query = query.where(Progress.id.not_in(exclude))
        with self.session() as session:
            candidates = list(session.execute(query.limit(limit * 4 + 10)))
        claimed: list[int] = []
        for pid, owner, until in candidates:
            if len(claimed) >= limit:
                break
            live_other = owner not in (None, run_id) and until is not None and until >= now
            if live_other and not is_dead_local_run(owner):
                continue
            if self._try_claim(pid, run_id, lease, max_attempts, owner if live_other else None):
                claimed.append(pid)
        return claimed

    def _try_claim(
        self,
        pid: int,
        run_id: str,
        lease: timedelta,
        max_attempts: int,
        dead_owner: str | None = None,
    ) -> bool:
        """Take the row when it is pending and free for ``run_id`` (or held by ``dead_owner``, a
        run of this host whose process is gone), and no other row of the same work is held.

        The rows of the work are locked first (``FOR UPDATE``; SQLite: ``BEGIN IMMEDIATE``), so
        two runs never hold two rows of one work: the work folder and the archive target are
        the work's, not the row's.
        """
        now = utcnow()
        with self.session() as session:
            first = session.get(Progress, pid)
            if first is None or first.state not in PENDING:
                return False
            siblings = session.scalars(
                select(Progress)
                .where(Progress.work_id == first.work_id)
                .with_for_update()
                .execution_options(populate_existing=True)
            ).all()
            row = next(r for r in siblings if r.id == pid)
            if row.state not in PENDING:
                return False
            free = row.claimed_until is None or row.claimed_until < now
            mine = row.claimed_by == run_id
            dead = dead_owner is not None and row.claimed_by == dead_owner
            # A permanent failure is held for an operator: only the run that recorded it may
            # try again (its failed task cleared in the UI), whatever its attempts.
            retried_by_its_run = row.needs_attention and row.failed_run == run_id
            if row.needs_attention and not (mine or retried_by_its_run):
                return False
            if not (
                mine or ((free or dead) and (row.attempts < max_attempts or retried_by_its_run))
            ):
                return False
            if any(_held_by_another(other, run_id, now) for other in siblings if other is not row):
                return False
            previous = row.claimed_by
            row.claimed_by, row.claimed_until, row.updated_at = run_id, now + lease, now
            if previous and previous != run_id:
                reason = "its process is gone" if dead else "its lease ran out"
                row.add_history("claim taken over", previous=previous, reason=reason)
            return True

    def acquire(self, pid: int, run_id: str, lease: timedelta, max_attempts: int) -> Progress:
        """Claim (or renew) one row for a phase; return it, or say why it cannot be taken.

        A synced row is returned unclaimed: its phases have nothing left to do.
        """
        if self._try_claim(pid, run_id, lease, max_attempts):
            return self.get(pid)
        row = self.get(pid)
        if is_dead_local_run(row.claimed_by) and self._try_claim(
            pid, run_id, lease, max_attempts, row.claimed_by
        ):
            return self.get(pid)
        if row.state == State.SYNCED:
            return row
        if row.state not in PENDING:
            raise GlacierSyncError(
                f"work {row.work_id} (row {pid}) is {row.state}; it has no phase to run yet"
            )
        if row.claimed_by and row.claimed_until and row.claimed_until >= utcnow():
            raise WorkBusy(
                f"work {row.work_id} (row {pid}) is being processed by {row.claimed_by} (lease "
                f"until {row.claimed_until:%Y-%m-%d %H:%M:%S} UTC); it is tried again later"
            )
        if self.work_is_held(row.work_id, run_id):
            raise WorkBusy(
                f"work {row.work_id} (row {pid}) is being processed by another run (through "
                "another row of the same work); it is tried again later"
            )
        if row.needs_attention:
            raise NeedsAttention(
                f"work {row.work_id} (row {pid}) failed permanently in {row.failed_run} "
                f"({row.failed_phase}: {row.last_error}); fix the cause, then "
                f"`glacier-sync retry {row.work_id}` or clear that run's failed task in the UI"
            )
        raise AttemptsExhausted(
            f"work {row.work_id} (row {pid}) failed {row.attempts} times ({row.failed_phase}: "
            f"{row.last_error}); fix the cause, then `glacier-sync retry {row.work_id}`"
        )

    def renew(self, pid: int, run_id: str, lease: timedelta) -> bool:
        """Extend ``run_id``'s lease on a row; False when the claim is no longer ours."""
        with self.session() as session:
            result = session.execute(
                update(Progress)
                .where(Progress.id == pid, Progress.claimed_by == run_id)
                .values(claimed_until=utcnow() + lease)
                .execution_options(synchronize_session=False)
            )
            return result.rowcount == 1

    def release(self, pid: int, run_id: str) -> None:
        """Drop ``run_id``'s claim on a row (nothing when another run holds it)."""
        with self.session() as session:
            session.execute(
                update(Progress)
                .where(Progress.id == pid, Progress.claimed_by == run_id)
                .values(claimed_by=None, claimed_until=None)
                .execution_options(synchronize_session=False)
            )

    def get(self, pid: int) -> Progress:
        """One row (detached), or WorkNotFound."""
        with self.session() as session:
            row = session.get(Progress, pid)
            if row is None:
                raise WorkNotFound(f"no progress row with id {pid}")
            return row

    def update_row(
        self,
        pid: int,
        event: str,
        release: bool = False,
        owner: str | None = None,
        count_attempt: bool = False,
        **fields: Any,
    ) -> Progress:
        """Set fields, append a history event and optionally release the claim.

        With ``owner``, the write happens only while ``owner`` holds the row's claim (LostClaim
        otherwise); ``count_attempt`` adds one to the row's attempts.
        """
        details = fields.pop("details", {})
        with self.session() as session:
            row = session.get(Progress, pid, with_for_update=True)
            if row is None:
                raise WorkNotFound(f"no progress row with id {pid}")
            if owner is not None and row.claimed_by != owner:
                raise LostClaim(
                    f"work {row.work_id} (row {pid}): the claim of {owner} was taken over by "
                    f"{row.claimed_by or 'nobody'} (its lease ran out); {event!r} is not recorded"
                )
            if "state" in fields:
                fields["state"] = check_move(row.state, fields["state"])
            for name, value in fields.items():
                setattr(row, name, value)
            if count_attempt:
                row.attempts += 1
            if release:
                row.claimed_by = row.claimed_until = None
            row.add_history(event, **details)
            faults.checkpoint("progress:before-commit")
            return row

    def find(self, work_ids: list[str] | None = None) -> list[Progress]:
        """Rows of the named works (all rows when none is named), newest last."""
        query = select(Progress).order_by(Progress.id)
        if work_ids:
            query = query.where(Progress.work_id.in_(work_ids))
        with self.session() as session:
            return list(session.scalars(query))

    def stuck(
        self,
        older_than: timedelta,
        max_attempts: int,
        expiry_margin: timedelta = timedelta(hours=24),
    ) -> list[Progress]:
        """Unsynced rows untouched for ``older_than``, failed past their attempts or for good,
        held by a dead claimant (a claim whose lease ran out), or whose restored copy expires
        within ``expiry_margin`` (or expired)."""
        now = utcnow()
        query = select(Progress).where(Progress.state != State.SYNCED).order_by(Progress.id)
        with self.session() as session:
            rows = list(session.scalars(query))
        return [
            row
            for row in rows
            if _stuck(row, now, older_than, max_attempts) or expires_soon(row, now, expiry_margin)
        ]

    def mark_cleaned(self, pid: int, synced_at: datetime | None) -> bool:
        """Record the clean-up of the sync at ``synced_at``; False when the row moved on (a
        newer restore reopened it) or another run recorded it first."""
        with self.session() as session:
            row = session.get(Progress, pid, with_for_update=True)
            if row is None or row.state != State.SYNCED or row.cleaned_at is not None:
                return False
            if row.synced_at != synced_at:
                return False
            row.cleaned_at = utcnow()
            row.add_history("cleaned")
            return True

    def work_is_held(self, work_id: str, run_id: str) -> bool:
        """True when a row of ``work_id`` is held by a live claim of another run."""
        now = utcnow()
        with self.session() as session:
            rows = session.scalars(select(Progress).where(Progress.work_id == work_id))
            return any(_held_by_another(row, run_id, now) for row in rows)

    def needs_cleanup(self, limit: int = 100) -> list[Progress]:
        """Synced rows whose local files were not (all) removed yet: a crash cut the clean-up."""
        query = (
            select(Progress)
            .where(Progress.state == State.SYNCED, Progress.cleaned_at.is_(None))
            .order_by(Progress.id)
            .limit(limit)
        )
        with self.session() as session:
            return list(session.scalars(query))

    def reset_for_retry(self, work_id: str) -> list[int]:
        """Make a work's unsynced rows eligible again (attempts 0, an expired claim released;
        a live claim is left to its run)."""
        with self.session() as session:
            rows = list(
                session.scalars(
                    select(Progress)
                    .where(Progress.work_id == work_id, Progress.state.in_(PENDING))
                    .with_for_update()
                )
            )
            if not rows:
                raise WorkNotFound(
                    f"work {work_id} has no unsynced row in the progress database; "
                    "see `glacier-sync status` for its state"
                )
            now = utcnow()
            for row in rows:
                row.attempts = 0
                row.needs_attention, row.failed_run = False, None
                if row.claimed_until is None or row.claimed_until < now:
                    row.claimed_by = row.claimed_until = None
                row.add_history("retry requested by operator")
            return [row.id for row in rows]


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


def expires_soon(row: Progress, now: datetime, margin: timedelta) -> bool:
    """The row is not archived yet and its restored copy expires within ``margin`` (or has):
    once S3 deletes the copy, the download fails until a new restore."""
    expires = row.restore_expires_at
    return (
        expires is not None
        and row.state not in (State.SYNCED, State.REQUESTED)
        and row.downloaded_at is None
        and expires <= now + margin
    )


def expiry_note(row: Progress) -> str:
    """One line: when the work's restored copy expires, and what to do."""
    expires = row.restore_expires_at
    past = expires is not None and expires <= utcnow()
    return (
        f"restored copy {'expired' if past else 'expires'} {expires:%Y-%m-%d %H:%M} UTC, before "
        f"the work is archived: {'request a new restore' if past else 'process it first, or'} "
        f"`glacier-sync request-restore {row.work_id}`"
        + ("" if past else " again after it expires")
    )


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


def _stuck(row: Progress, now: datetime, older_than: timedelta, max_attempts: int) -> bool:
    """The row needs attention: untouched too long, out of attempts, failed permanently, or its
    claimant is dead."""
    return (
        row.updated_at < now - older_than
        or (row.state == State.FAILED and row.attempts >= max_attempts)
        or row.needs_attention
        or (row.claimed_until is not None and row.claimed_until < now)
        or is_dead_local_run(row.claimed_by)
    )


def _held_by_another(row: Progress, run_id: str, now: datetime) -> bool:
    """The row is held by a live claim of another run."""
    live = row.claimed_until is not None and row.claimed_until >= now
    return live and row.claimed_by != run_id and not is_dead_local_run(row.claimed_by)


def _claimable(run_id: str, now: datetime, max_attempts: int):
    """SQL condition: the row is ``run_id``'s, or free (no live claim) with attempts left and
    not held for an operator (a permanent failure; only the run that recorded it may retry)."""
    free = or_(Progress.claimed_until.is_(None), Progress.claimed_until < now)
    not_held = or_(Progress.needs_attention.is_(False), Progress.failed_run == run_id)
    return or_(Progress.claimed_by == run_id, free & not_held & (Progress.attempts < max_attempts))


def _reason(exc: BaseException) -> str:
    orig = getattr(exc, "orig", None)
    text = str(orig or exc).strip().splitlines()
    return text[0] if text else type(exc).__name__
