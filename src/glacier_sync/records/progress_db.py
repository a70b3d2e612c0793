"""The progress database itself: its connection (SQLite set up for several writers, or a
server), its schema's Alembic revision (migrated forward, taken back, a newer one refused), a
session committed or rolled back whole, and one row by id. The other ``progress_*`` modules
build on it; ``progress.ProgressStore`` joins them."""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from functools import cache
from pathlib import Path

from sqlalchemy import create_engine, event, text
from sqlalchemy.exc import IntegrityError, OperationalError, SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from glacier_sync.errors import ConfigError, ProgressDatabaseError, UnknownRevision, WorkNotFound
from glacier_sync.records.models import Progress, utcnow
from glacier_sync.settings import mask_url

MIGRATIONS = Path(__file__).parents[1] / "migrations"  # glacier_sync/migrations
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


# UTC now by a database server's own clock (naive, microseconds), per SQLAlchemy dialect.
CLOCK_SQL = {
    "postgresql": "SELECT CAST(clock_timestamp() AT TIME ZONE 'UTC' AS timestamp(6))",
    "mysql": "SELECT UTC_TIMESTAMP(6)",
    "mariadb": "SELECT UTC_TIMESTAMP(6)",
}


class ProgressDatabase:
    """A connection to the progress database at the schema this code knows; every write is its
    own committed transaction."""

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

    def clock(self, session: Session | None = None) -> datetime:
        """UTC now by the database server's clock: every lease is written and judged by it,
        so runs on machines whose clocks disagree never take a live claim for a dead one.
        SQLite has no server: its clock is this machine's."""
        sql = CLOCK_SQL.get(self.engine.dialect.name)
        if sql is None:
            return utcnow()
        if session is not None:
            value = session.execute(text(sql)).scalar_one()
        else:
            with self.engine.connect() as connection:
                value = connection.execute(text(sql)).scalar_one()
        if isinstance(value, str):  # a driver that returns text
            value = datetime.fromisoformat(value)
        return value.replace(tzinfo=None)

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

    def get(self, progress_id: int) -> Progress:
        """One row (detached), or WorkNotFound."""
        with self.session() as session:
            row = session.get(Progress, progress_id)
            if row is None:
                raise WorkNotFound(f"no progress row with id {progress_id}")
            return row


def _reason(exc: BaseException) -> str:
    orig = getattr(exc, "orig", None)
    text = str(orig or exc).strip().splitlines()
    return text[0] if text else type(exc).__name__
