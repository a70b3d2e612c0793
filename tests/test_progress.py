"""The progress database on SQLite, PostgreSQL and MariaDB: schema, dedup, claims, retries."""

from __future__ import annotations

import dataclasses
import json
import os
import threading
import uuid
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import create_engine, inspect, text

from glacier_sync.errors import (
    AttemptsExhausted,
    ConfigError,
    LostClaim,
    ProgressDatabaseError,
    UnknownRevision,
    WorkBusy,
    WorkNotFound,
    is_transient,
)
from glacier_sync.intake.events import parse_message_body
from glacier_sync.records.models import utcnow
from glacier_sync.records.progress import (
    HEAD_REVISION,
    ProgressStore,
    expiry_note,
    known_revisions,
    parse_event_time,
)

SAMPLE = json.loads((Path(__file__).parent / "data" / "objectrestore-completed.json").read_text())


def _event(time="2026-10-02T04:31:07.112Z", etag="9b2c-88", key=None):
    body = json.loads(json.dumps(SAMPLE))
    record = body["Records"][0]
    record["eventTime"] = time
    record["s3"]["object"]["eTag"] = etag
    if key:
        record["s3"]["object"]["key"] = key
    return parse_message_body(json.dumps(body), ["ObjectRestore:Completed"]).records[0]


def _no_expiry(record):
    """The sample event without its restored copy's expiry (2026-10-16, long past)."""
    return dataclasses.replace(record, expiry_time=None)


def _server_url(kind: str) -> str:
    """A fresh database on the local server, or skip (fail in CI) when the server is absent."""
    name = f"gs_test_{uuid.uuid4().hex[:10]}"
    admin = {
        "postgresql": "postgresql+psycopg2://postgres@127.0.0.1:5432/postgres",
        "mariadb": "mysql+pymysql://root@127.0.0.1:3306/",
    }[kind]
    try:
        engine = create_engine(admin, isolation_level="AUTOCOMMIT")
        with engine.connect() as conn:
            conn.execute(text(f"CREATE DATABASE {name}"))
        engine.dispose()
    except Exception as exc:  # the server is not there
        reason = f"{kind} server on 127.0.0.1 not reachable: {exc}"
        if os.environ.get("CI"):
            pytest.fail(reason + " (CI must run the database tests)")
        pytest.skip(reason)
    if kind == "postgresql":
        return f"postgresql+psycopg2://postgres@127.0.0.1:5432/{name}"
    return f"mysql+pymysql://root@127.0.0.1:3306/{name}?charset=utf8mb4"


# SQLite in-process; the servers on 127.0.0.1 are the `services` tier.
DATABASES = [
    pytest.param("sqlite", marks=pytest.mark.integration),
    pytest.param("postgresql", marks=pytest.mark.services),
    pytest.param("mariadb", marks=pytest.mark.services),
]


def _database_url(kind: str, tmp_path: Path) -> str:
    """A SQLite file in ``tmp_path``, or a fresh database on the local server."""
    return f"sqlite:///{tmp_path}/progress.sqlite" if kind == "sqlite" else _server_url(kind)


@pytest.fixture(params=DATABASES)
def store(request, tmp_path) -> ProgressStore:
    store = ProgressStore(_database_url(request.param, tmp_path))
    yield store
    store.engine.dispose()


@pytest.mark.unit
def test_head_revision_constant_matches_the_migrations():
    from alembic.config import Config
    from alembic.script import ScriptDirectory

    from glacier_sync.records.progress import HEAD_REVISION, MIGRATIONS

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    scripts = ScriptDirectory.from_config(config)
    assert scripts.get_current_head() == HEAD_REVISION
    walked = [script.revision for script in scripts.walk_revisions()]
    assert known_revisions() == tuple(reversed(walked)), "the files, read without Alembic"
    assert known_revisions()[-1] == HEAD_REVISION


def test_migration_creates_table_and_is_repeatable(store):
    store.migrate()
    store.migrate()
    with store.engine.connect() as conn:
        version = conn.execute(text("SELECT version_num FROM glacier_sync_alembic_version"))
        assert version.scalar() == HEAD_REVISION == "0004"


def test_model_and_migrations_agree(store):
    """Autogenerate finds nothing to add or drop: models.py and migrations/ describe one schema."""
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    from glacier_sync.records.models import Base

    with store.engine.connect() as conn:
        context = MigrationContext.configure(conn, opts={"version_table": VERSION_TABLE})
        assert compare_metadata(context, Base.metadata) == []


VERSION_TABLE = "glacier_sync_alembic_version"
INDEX = "ix_glacier_sync_progress_state_cleaned_at"


def _migrate_to(connection, revision: str) -> None:
    """Alembic's upgrade to ``revision`` on ``connection`` (as an older image would leave it)."""
    from alembic import command
    from alembic.config import Config

    from glacier_sync.records.progress import MIGRATIONS

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.attributes["connection"] = connection
    command.upgrade(config, revision)


def _set_revision(url: str, revision: str) -> None:
    """Write ``revision`` into the version table, as a newer glacier-sync would have."""
    engine = create_engine(url)
    with engine.begin() as conn:
        conn.execute(text(f"UPDATE {VERSION_TABLE} SET version_num = :r"), {"r": revision})
    engine.dispose()


def _indexes(store: ProgressStore) -> dict[str, list[str]]:
    """The progress table's indexes as the database reports them: name -> columns."""
    indexes = inspect(store.engine).get_indexes("glacier_sync_progress")
    return {index["name"]: index["column_names"] for index in indexes}


@pytest.fixture(params=DATABASES)
def old_url(request, tmp_path) -> str:
    """A database at revision 0001 holding one synced and one pending row."""
    url = _database_url(request.param, tmp_path)
    engine = create_engine(url)
    with engine.begin() as connection:
        _migrate_to(connection, "0001")
        for i, state in enumerate(("synced", "restored")):
            connection.execute(
                text(
                    "INSERT INTO glacier_sync_progress (dedup_key, work_id, source, bucket, "
                    "object_key, state, attempts, history, synced_at, created_at, updated_at) "
                    "VALUES (:k, :w, 's3', 'b', :key, :state, 0, '[]', :at, :at, :at)"
                ),
                {
                    "k": f"k{i}",
                    "w": f"W{i}",
                    "key": f"W{i}.bag.zip",
                    "state": state,
                    "at": "2026-11-01 00:00:00",
                },
            )
    engine.dispose()
    return url


def test_upgrade_from_0001_keeps_rows_and_marks_old_syncs_cleaned(old_url):
    store = ProgressStore(old_url)
    assert store.current_revision() == "0004"
    rows = {row.work_id: row for row in store.find()}
    assert rows["W0"].state == "synced" and rows["W0"].cleaned_at is not None
    assert rows["W1"].state == "restored" and rows["W1"].cleaned_at is None
    assert store.needs_cleanup() == []
    store.engine.dispose()


ROWS_0002 = [  # (work, state, cleaned_at): synced and cleaned, synced not cleaned, pending
    ("W0", "synced", "2026-11-01 01:00:00"),
    ("W1", "synced", None),
    ("W2", "restored", None),
]


@pytest.fixture(params=DATABASES)
def url_0002(request, tmp_path) -> str:
    """A database at revision 0002 (the previous image's) with rows and their history."""
    url = _database_url(request.param, tmp_path)
    engine = create_engine(url)
    with engine.begin() as connection:
        _migrate_to(connection, "0002")
        for i, (work, state, cleaned) in enumerate(ROWS_0002):
            history = json.dumps([{"at": "2026-11-01T00:00:00", "event": f"event of {work}"}])
            connection.execute(
                text(
                    "INSERT INTO glacier_sync_progress (dedup_key, work_id, source, bucket, "
                    "object_key, state, attempts, history, synced_at, cleaned_at, created_at, "
                    "updated_at) VALUES (:k, :w, 's3', 'b', :key, :state, 1, :history, :at, "
                    ":cleaned, :at, :at)"
                ),
                {
                    "k": f"k{i}",
                    "w": work,
                    "key": f"{work}.bag.zip",
                    "state": state,
                    "history": history,
                    "cleaned": cleaned,
                    "at": "2026-11-01 00:00:00",
                },
            )
    engine.dispose()
    return url


def _rows_as_0002_wrote_them(store: ProgressStore) -> list[tuple]:
    """The rows' 0002 columns, read in SQL (the model has columns a downgraded table lacks)."""
    with store.engine.connect() as conn:
        rows = conn.execute(
            text("SELECT work_id, state, cleaned_at FROM glacier_sync_progress ORDER BY id")
        ).all()
    return [
        (work, state, cleaned and f"{_as_datetime(cleaned):%Y-%m-%d %H:%M:%S}")
        for work, state, cleaned in rows
    ]


def _as_datetime(value) -> datetime:
    """SQLite hands a DATETIME back as text in raw SQL."""
    return value if isinstance(value, datetime) else datetime.fromisoformat(str(value))


def test_upgrade_from_0002_keeps_rows_and_history_and_creates_the_index(url_0002):
    store = ProgressStore(url_0002)
    assert store.current_revision() == "0004"
    assert _indexes(store)[INDEX] == ["state", "cleaned_at"]
    assert _rows_as_0002_wrote_them(store) == ROWS_0002
    assert [row.history[0]["event"] for row in store.find()] == [
        "event of W0",
        "event of W1",
        "event of W2",
    ]
    assert [row.work_id for row in store.needs_cleanup()] == ["W1"]
    if store.url.startswith("sqlite"):  # the planner picks it for the clean-up check
        with store.engine.connect() as conn:
            plan = conn.exec_driver_sql(
                "EXPLAIN QUERY PLAN SELECT id FROM glacier_sync_progress "
                "WHERE state = 'synced' AND cleaned_at IS NULL ORDER BY id"
            ).fetchall()
        assert INDEX in " ".join(str(step) for step in plan)
    store.engine.dispose()


def test_downgrade_to_0002_drops_the_index_and_keeps_rows(url_0002):
    store = ProgressStore(url_0002)
    assert store.downgrade("0002") == "0004"
    assert store.current_revision() == "0002"
    assert INDEX not in _indexes(store)
    assert "ix_glacier_sync_progress_state" in _indexes(store), "0001's indexes stay"
    assert _rows_as_0002_wrote_them(store) == ROWS_0002
    assert store.downgrade("0002") == "0002", "already there: nothing to do"
    store.engine.dispose()
    again = ProgressStore(url_0002)  # the newer image opens it: upgraded again
    assert again.current_revision() == "0004" and INDEX in _indexes(again)
    again.engine.dispose()


def test_downgrade_refuses_unknown_and_forward_revisions(store):
    with pytest.raises(ConfigError, match="unknown revision '0009': this glacier-sync knows 0001"):
        store.downgrade("0009")
    store.downgrade("0002")
    with pytest.raises(ConfigError, match="at revision 0002, older than 0003: `glacier-sync db up"):
        store.downgrade("0003")
    assert store.current_revision() == "0002"


@pytest.mark.parametrize("auto_migrate", [True, False])
def test_a_database_newer_than_this_code_is_refused_untouched(store, auto_migrate):
    store.record_event(_event(), "q", "m")
    _set_revision(store.url, "0005")
    with pytest.raises(UnknownRevision) as info:
        ProgressStore(store.url, auto_migrate=auto_migrate)
    message = str(info.value)
    assert message.startswith("progress database ") and "\n" not in message
    assert "is at revision 0005, newer than this glacier-sync (0004): deploy the newer image " in (
        message
    )
    assert "run `glacier-sync db downgrade 0004` with it before rolling back" in message
    assert isinstance(info.value, ConfigError) and not is_transient(info.value)
    with pytest.raises(UnknownRevision):
        store.migrate()
    with pytest.raises(UnknownRevision):
        store.downgrade("0002")
    assert store.current_revision() == "0005", "nothing migrated"
    assert INDEX in _indexes(store) and len(store.find()) == 1


def test_a_revision_of_another_lineage_is_refused_too(store):
    _set_revision(store.url, "ab12cd")
    with pytest.raises(UnknownRevision, match="revision ab12cd, which this glacier-sync .newest"):
        ProgressStore(store.url)
    assert store.current_revision() == "ab12cd"


@pytest.mark.services
def test_the_newer_revision_error_masks_the_password():
    url = _server_url("postgresql").replace("postgres@", "postgres:topsecret@")
    store = ProgressStore(url)
    _set_revision(url, "0005")
    with pytest.raises(UnknownRevision) as info:
        ProgressStore(url)
    assert "topsecret" not in str(info.value) and "postgres:***@" in str(info.value)
    store.engine.dispose()


def test_record_event_new_duplicate_and_reopened(store):
    pid, outcome = store.record_event(_event(), "tbrc", "m1")
    assert outcome == "new"
    row = store.get(pid)
    assert (row.work_id, row.state, row.bucket) == (
        "W2KG209837",
        "restored",
        "glacier.staging.example.org",
    )
    assert row.size == 734003200
    assert store.record_event(_event(), "tbrc", "m2") == (pid, "duplicate")
    assert [h["event"] for h in store.get(pid).history] == ["restore completed", "duplicate event"]
    store.update_row(pid, "sync done", release=True, state="synced")
    assert store.record_event(_event(), "tbrc", "m3") == (pid, "duplicate")
    pid2, outcome = store.record_event(_event(time="2026-12-01T00:00:00Z"), "tbrc", "m4")
    assert (pid2, outcome) == (pid, "reopened")
    assert store.get(pid).state == "restored"
    other, outcome = store.record_event(_event(etag="ffff"), "tbrc", "m5")
    assert other != pid and outcome == "new"


def test_large_sizes_and_unicode_keys(store):
    pid, _ = store.record_event(_event(key="Archive0/00/W1+%E0%BD%96/W1.bag.zip"), "q", "m")
    assert store.get(pid).object_key == "Archive0/00/W1 བ/W1.bag.zip"
    store.update_row(pid, "x", size=17 * 1024**3)
    assert store.get(pid).size == 17 * 1024**3


HOUR = timedelta(hours=1)


def test_claims_are_exclusive_and_spend_no_attempt(store):
    ids = [store.record_event(_event(etag=f"e{i}"), "q", f"m{i}")[0] for i in range(6)]
    results: dict[str, list[int]] = {}

    def claim(run):
        results[run] = store.claim(run, "s3", limit=10, lease=HOUR, max_attempts=3)

    threads = [threading.Thread(target=claim, args=(f"run{i}",)) for i in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    claimed = [pid for got in results.values() for pid in got]
    assert sorted(claimed) == ids, "every row claimed exactly once"
    assert all(store.get(pid).attempts == 0 for pid in ids), "a claim is not a failure"
    assert store.claim("late", "s3", 10, HOUR, 3) == []
    assert store.claim("local-run", "local", 10, HOUR, 3) == []
    owner = next(run for run, got in results.items() if ids[0] in got)
    assert store.claim(owner, "s3", 1, HOUR, 3, ids=[ids[0]]) == [ids[0]], "renews its own"


def test_failed_rows_come_back_until_max_attempts_then_retry_resets(store):
    pid, _ = store.record_event(_event(), "q", "m")
    for attempt in range(1, 3):
        assert store.claim(f"run{attempt}", "s3", 10, HOUR, 2) == [pid]
        store.update_row(
            pid,
            "debag failed",
            release=True,
            owner=f"run{attempt}",
            count_attempt=True,
            state="failed",
            failed_phase="debag",
            last_error="bad",
        )
        assert store.get(pid).attempts == attempt
    assert store.claim("run3", "s3", 10, HOUR, 2) == [], "attempts exhausted"
    with pytest.raises(AttemptsExhausted, match="glacier-sync retry W2KG209837"):
        store.acquire(pid, "run3", HOUR, 2)
    assert [r.id for r in store.stuck(timedelta(hours=1), 2)] == [pid]
    assert store.reset_for_retry("W2KG209837") == [pid]
    assert store.claim("run4", "s3", 10, HOUR, 2) == [pid]
    with pytest.raises(WorkNotFound, match="no unsynced row"):
        store.reset_for_retry("W0NONE")


def test_expired_claims_can_be_taken_over(store):
    pid, _ = store.record_event(_no_expiry(_event()), "q", "m")
    assert store.claim("dead-run", "s3", 10, lease=HOUR, max_attempts=5) == [pid]
    with pytest.raises(WorkBusy, match="being processed by dead-run"):
        store.acquire(pid, "next-run", HOUR, 5)
    assert store.stuck(timedelta(hours=1), 5) == [], "a live claim is not stuck"
    store.update_row(pid, "lease", claimed_until=store.get(pid).claimed_until - timedelta(hours=2))
    assert [r.claimed_by for r in store.stuck(timedelta(hours=1), 5)] == ["dead-run"]
    assert store.claim("next-run", "s3", 10, HOUR, 5) == [pid]
    row = store.get(pid)
    assert row.claimed_by == "next-run" and row.attempts == 0
    assert row.history[-1]["event"] == "claim taken over"
    assert row.history[-1]["previous"] == "dead-run"
    with pytest.raises(LostClaim, match="taken over by next-run"):
        store.update_row(pid, "debag done", owner="dead-run", state="debagged")
    assert store.get(pid).state == "restored", "the dead run's late write is refused"


def test_renew_and_release_only_touch_ones_own_claim(store):
    pid, _ = store.record_event(_event(), "q", "m")
    assert store.claim("a", "s3", 1, timedelta(seconds=30), 3) == [pid]
    first = store.get(pid).claimed_until
    assert store.renew(pid, "a", HOUR) and store.get(pid).claimed_until > first
    assert not store.renew(pid, "b", HOUR)
    store.release(pid, "b")
    assert store.get(pid).claimed_by == "a"
    store.release(pid, "a")
    assert store.get(pid).claimed_by is None


def test_acquire_leaves_a_synced_row_alone(store):
    pid, _ = store.record_event(_event(), "q", "m")
    store.update_row(pid, "sync done", state="synced")
    row = store.acquire(pid, "late-run", HOUR, 3)
    assert row.state == "synced" and row.claimed_by is None
    assert [r.id for r in store.needs_cleanup()] == [pid]
    store.update_row(pid, "cleaned", cleaned_at=row.updated_at)
    assert store.needs_cleanup() == []


def test_restore_request_then_completed_event(store):
    pid = store.record_restore_request(
        "glacier.staging.example.org",
        "Archive1/37/W2KG209837/W2KG209837.bag.zip",
        "9b2c-88",
        "W2KG209837",
        "us-east-1",
        "requested",
    )
    assert store.get(pid).state == "requested"
    assert store.claim("r", "s3", 10, HOUR, 3) == [], "a requested restore is not work yet"
    assert store.record_event(_event(), "q", "m") == (pid, "new")
    assert store.get(pid).restore_requested_at is not None


def test_local_registration(store, tmp_path):
    zip_path = tmp_path / "W1.bag.zip"
    zip_path.write_bytes(b"zip")
    pid, outcome = store.register_local(zip_path, "W1.bag.zip", "W1")
    assert outcome == "new"
    assert store.register_local(zip_path, "W1.bag.zip", "W1") == (pid, "duplicate")
    assert str(zip_path.resolve()) in store.known_local_paths()
    assert store.claim("r", "local", 10, HOUR, 3) == [pid]


@pytest.mark.integration
def test_unreachable_database_is_a_clear_error(tmp_path):
    with pytest.raises(ProgressDatabaseError) as info:
        ProgressStore("postgresql+psycopg2://glacier:topsecret@127.0.0.1:1/progress")
    message = str(info.value)
    assert "unreachable" in message and "127.0.0.1:1" in message
    assert "topsecret" not in message and "glacier:***@" in message


@pytest.mark.unit
def test_event_time_parsing():
    assert parse_event_time("2026-10-02T04:31:07.112Z").isoformat() == "2026-10-02T04:31:07.112000"
    assert parse_event_time("2026-10-02T06:31:07+02:00").hour == 4
    assert parse_event_time("yesterday") is None and parse_event_time(None) is None


def test_unknown_state_is_refused(store):
    pid, _ = store.record_event(_event(), "q", "m")
    with pytest.raises(ValueError, match="unknown state 'done'"):
        store.update_row(pid, "x", state="done")
    assert store.get(pid).state == "restored"


def test_two_rows_of_one_work_are_never_held_by_two_runs(store):
    """The work folder and the archive target are the work's: one claimant per work."""
    first, _ = store.record_event(_event(etag="v1"), "q", "m1")
    second, _ = store.record_event(_event(etag="v2"), "q", "m2")
    assert store.claim("run-a", "s3", 1, HOUR, 3, ids=[first]) == [first]
    assert store.claim("run-b", "s3", 10, HOUR, 3) == [], "the work is held by run-a"
    with pytest.raises(WorkBusy):
        store.acquire(second, "run-b", HOUR, 3)
    assert store.claim("run-a", "s3", 10, HOUR, 3) == [first, second], "its own run may"
    store.release(first, "run-a")
    store.release(second, "run-a")
    assert store.claim("run-b", "s3", 1, HOUR, 3, ids=[second]) == [second]


def test_a_late_write_of_a_dead_claimant_is_a_lost_claim_even_after_the_sync(store):
    pid, _ = store.record_event(_event(), "q", "m")
    assert store.claim("dead-run", "s3", 1, timedelta(seconds=-1), 3) == [pid]
    assert store.claim("next-run", "s3", 1, HOUR, 3) == [pid]
    store.update_row(pid, "sync done", owner="next-run", state="synced")
    with pytest.raises(LostClaim, match="taken over by next-run"):
        store.update_row(pid, "debag failed", owner="dead-run", state="failed")


def test_mark_cleaned_only_for_the_sync_that_was_cleaned(store):
    pid, _ = store.record_event(_event(), "q", "m")
    store.update_row(pid, "sync done", state="synced", synced_at=parse_event_time("2026-11-01"))
    stale = store.get(pid)
    store.record_event(_event(time="2026-12-01T00:00:00Z"), "q", "m2")  # reopened
    assert not store.mark_cleaned(pid, stale.synced_at), "the reopened row is not cleaned"
    assert store.get(pid).cleaned_at is None


def test_upgrade_from_0003_adds_expiry_fixity_and_attention_and_downgrade_drops_them(url_0002):
    """0004 on rows written before it: nothing held, no expiry, no evidence; down and up again."""
    store = ProgressStore(url_0002)
    rows = store.find()
    assert [(r.needs_attention, r.restore_expires_at, r.fixity, r.failed_run) for r in rows] == [
        (False, None, None, None)
    ] * len(ROWS_0002)
    assert store.downgrade("0003") == "0004"
    with store.engine.connect() as conn:
        columns = {c["name"] for c in inspect(conn).get_columns("glacier_sync_progress")}
    assert not columns & {"restore_expires_at", "fixity", "needs_attention", "failed_run"}
    assert _rows_as_0002_wrote_them(store) == ROWS_0002
    store.engine.dispose()
    again = ProgressStore(url_0002)
    assert again.current_revision() == "0004"
    assert _rows_as_0002_wrote_them(again) == ROWS_0002
    again.engine.dispose()


def test_the_restored_copy_expiry_is_recorded_orders_claims_and_flags_stuck_works(store):
    """Works that expire first are claimed first; an undownloaded work whose copy expires within
    the margin (or has expired) is stuck; a downloaded one is not (its zip is on disk)."""
    soon = dataclasses.replace(
        _event(key="Archive0/01/W1SOON/W1SOON.bag.zip"),
        expiry_time=(utcnow() + timedelta(hours=5)).isoformat() + "Z",
    )
    late = dataclasses.replace(
        _event(key="Archive0/02/W1LATE/W1LATE.bag.zip"),
        expiry_time=(utcnow() + timedelta(days=6)).isoformat() + "Z",
    )
    unknown = _no_expiry(_event(key="Archive0/03/W1NONE/W1NONE.bag.zip"))
    ids = {}
    for record in (unknown, late, soon):
        ids[record.work_id], _ = store.record_event(record, "q", "m")
    assert store.get(ids["W1SOON"]).restore_expires_at is not None
    claimed = store.claim("run", "s3", 10, HOUR, 3)
    assert claimed == [ids["W1SOON"], ids["W1LATE"], ids["W1NONE"]]
    for pid in claimed:
        store.release(pid, "run")
    stuck = store.stuck(timedelta(days=30), 3, expiry_margin=timedelta(hours=24))
    assert [r.work_id for r in stuck] == ["W1SOON"]
    note = expiry_note(stuck[0])
    assert note.startswith("restored copy expires ") and "request-restore W1SOON" in note
    store.update_row(ids["W1SOON"], "download done", state="downloaded", downloaded_at=utcnow())
    assert store.stuck(timedelta(days=30), 3, expiry_margin=timedelta(hours=24)) == []


def _machine_clock_off_by(monkeypatch, offset: timedelta) -> None:
    """Every glacier_sync module's ``utcnow`` runs ``offset`` off (a machine with a bad clock)."""
    import sys

    from glacier_sync.records import models

    real = models.utcnow
    for name, module in list(sys.modules.items()):
        if name.startswith("glacier_sync") and getattr(module, "utcnow", None) is real:
            monkeypatch.setattr(module, "utcnow", lambda: real() + offset)


@pytest.mark.parametrize(
    "kind",
    [
        pytest.param("postgresql", marks=pytest.mark.services),
        pytest.param("mariadb", marks=pytest.mark.services),
    ],
)
def test_leases_are_written_and_judged_by_the_database_clock(kind, monkeypatch):
    """A run on a machine whose clock is 10 minutes slow writes a lease that is live by the
    server's clock, which a run on a right clock respects (by its own clock, the lease would
    have run out before it was written, and the work been taken over from a live run)."""
    store = ProgressStore(_server_url(kind))
    try:
        assert abs(store.clock() - utcnow()) < timedelta(seconds=5), "the server's clock"
        pid, _ = store.record_event(_no_expiry(_event()), "q", "m")
        lease = timedelta(minutes=5)
        _machine_clock_off_by(monkeypatch, -timedelta(minutes=10))
        assert store.claim("slow-run", "s3", 10, lease=lease, max_attempts=3) == [pid]
        monkeypatch.undo()
        assert store.get(pid).claimed_until > store.clock() + timedelta(minutes=4)
        assert store.claim("right-run", "s3", 10, lease=lease, max_attempts=3) == []
        with pytest.raises(WorkBusy, match="being processed by slow-run"):
            store.acquire(pid, "right-run", lease, 3)
        assert store.stuck(timedelta(hours=1), 3) == [], "a live claim is not stuck"
        _machine_clock_off_by(monkeypatch, -timedelta(minutes=10))
        assert store.renew(pid, "slow-run", lease)
        monkeypatch.undo()
        assert store.get(pid).claimed_until > store.clock() + timedelta(minutes=4)
        # A run whose clock is fast sees the live claim live too.
        _machine_clock_off_by(monkeypatch, timedelta(minutes=10))
        assert store.claim("fast-run", "s3", 10, lease=lease, max_attempts=3) == []
    finally:
        store.engine.dispose()
