"""The progress database on SQLite, PostgreSQL and MariaDB: schema, dedup, claims, retries."""

from __future__ import annotations

import json
import os
import threading
import uuid
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from glacier_sync.errors import (
    AttemptsExhausted,
    LostClaim,
    ProgressDatabaseError,
    WorkBusy,
    WorkNotFound,
)
from glacier_sync.events import parse_message_body
from glacier_sync.progress import ProgressStore, parse_event_time

SAMPLE = json.loads((Path(__file__).parent / "data" / "objectrestore-completed.json").read_text())


def _event(time="2026-10-02T04:31:07.112Z", etag="9b2c-88", key=None):
    body = json.loads(json.dumps(SAMPLE))
    record = body["Records"][0]
    record["eventTime"] = time
    record["s3"]["object"]["eTag"] = etag
    if key:
        record["s3"]["object"]["key"] = key
    return parse_message_body(json.dumps(body), ["ObjectRestore:Completed"]).records[0]


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


def _database_url(kind: str, tmp_path: Path) -> str:
    """A SQLite file in ``tmp_path``, or a fresh database on the local server."""
    return f"sqlite:///{tmp_path}/progress.sqlite" if kind == "sqlite" else _server_url(kind)


@pytest.fixture(params=["sqlite", "postgresql", "mariadb"])
def store(request, tmp_path) -> ProgressStore:
    store = ProgressStore(_database_url(request.param, tmp_path))
    yield store
    store.engine.dispose()


def test_head_revision_constant_matches_the_migrations():
    from alembic.config import Config
    from alembic.script import ScriptDirectory

    from glacier_sync.progress import HEAD_REVISION, MIGRATIONS

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    assert ScriptDirectory.from_config(config).get_current_head() == HEAD_REVISION


def test_migration_creates_table_and_is_repeatable(store):
    store.migrate()
    store.migrate()
    with store.engine.connect() as conn:
        version = conn.execute(text("SELECT version_num FROM glacier_sync_alembic_version"))
        assert version.scalar() == "0002"


@pytest.fixture(params=["sqlite", "postgresql", "mariadb"])
def old_url(request, tmp_path) -> str:
    """A database at revision 0001 holding one synced and one pending row."""
    from alembic import command
    from alembic.config import Config

    from glacier_sync.progress import MIGRATIONS

    url = _database_url(request.param, tmp_path)
    engine = create_engine(url)
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, "0001")
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
    assert store.current_revision() == "0002"
    rows = {row.work_id: row for row in store.find()}
    assert rows["W0"].state == "synced" and rows["W0"].cleaned_at is not None
    assert rows["W1"].state == "restored" and rows["W1"].cleaned_at is None
    assert store.needs_cleanup() == []
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
    pid, _ = store.record_event(_event(), "q", "m")
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


def test_unreachable_database_is_a_clear_error(tmp_path):
    with pytest.raises(ProgressDatabaseError) as info:
        ProgressStore("postgresql+psycopg2://glacier:topsecret@127.0.0.1:1/progress")
    message = str(info.value)
    assert "unreachable" in message and "127.0.0.1:1" in message
    assert "topsecret" not in message and "glacier:***@" in message


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
