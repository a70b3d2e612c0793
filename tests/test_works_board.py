"""The Works view's data (glacier_sync.records.works_board) on a real SQLite progress database:
which works each section holds, why, what to do, the runs, the counts, the search, and a
retry from the view named in the work's history."""

from __future__ import annotations

from datetime import timedelta

import pytest

from glacier_sync.alerts.notices import run_link
from glacier_sync.records import works_board as works_board_module
from glacier_sync.records.claimants import airflow_run_id
from glacier_sync.records.models import utcnow
from glacier_sync.records.progress import ProgressStore
from glacier_sync.records.states import State
from glacier_sync.records.works_board import BoardRules, search_works, works_board

pytestmark = pytest.mark.integration
RULES = BoardRules(max_attempts=3, expiry_margin=timedelta(hours=24))


@pytest.fixture
def store(tmp_path):
    return ProgressStore(f"sqlite:///{tmp_path / 'progress.db'}")


def _work(store: ProgressStore, tmp_path, work: str) -> int:
    zip_path = tmp_path / f"{work}.bag.zip"
    zip_path.write_bytes(b"zip")
    row_id, _ = store.register_local(zip_path, f"Archive0/00/{work}/{work}.bag.zip", work)
    return row_id


def _held(store: ProgressStore, row_id: int, phase: str, error: str, run: str) -> int:
    """The row held for attention by ``run``'s ``phase`` (as a permanent failure records it)."""
    store.update_row(
        row_id,
        f"{phase} failed",
        state=State.FAILED,
        failed_phase=phase,
        last_error=error,
        needs_attention=True,
        failed_run=run,
        details={"run": run},
    )
    return row_id


def _sections(board: dict) -> dict[str, list[str]]:
    names = ("attention", "in_flight", "archived", "expiring")
    return {name: [w["work_id"] for w in board[name]] for name in names}


def test_each_work_is_where_an_operator_looks_for_it(store, tmp_path):
    _held(
        store,
        _work(store, tmp_path, "W1HELD"),
        "debag",
        "manifest-sha512.txt line 3: data/a.tif does not match",
        "airflow:manual__2026-12-07T09:00:00",
    )
    spent = _work(store, tmp_path, "W2SPENT")
    for _ in range(3):
        store.update_row(
            spent,
            "download failed",
            state=State.FAILED,
            failed_phase="download",
            last_error="404",
            count_attempt=True,
        )
    flying = _work(store, tmp_path, "W3FLYING")
    assert store.claim("asset_triggered__x", "local", 10, timedelta(minutes=5), 3, ids=[flying])
    done = _work(store, tmp_path, "W4DONE")
    fixity = {"files": 2, "bytes": 20, "algorithms": ["sha512"], "validated_at": "2026-12-07"}
    store.update_row(
        done, "debag done", state=State.DEBAGGED, fixity=fixity, details={"run": "scheduled__1"}
    )
    store.update_row(
        done,
        "sync done",
        state=State.SYNCED,
        synced_at=utcnow(),
        archive_path="/archive/Archive0/00/W4DONE",
        details={"run": "scheduled__1"},
    )
    expiring = _work(store, tmp_path, "W5EXPIRES")
    store.update_row(
        expiring, "restore completed", restore_expires_at=utcnow() + timedelta(hours=2)
    )

    board = works_board(store, RULES, utcnow())

    assert _sections(board) == {
        "attention": ["W2SPENT", "W1HELD"],
        "in_flight": ["W3FLYING"],
        "archived": ["W4DONE"],
        "expiring": ["W5EXPIRES"],
    }
    assert board["counts"]["failed"] == 2 and board["counts"]["synced"] == 1
    assert board["counts"]["held"] == 1 and board["counts"]["requested"] == 0
    held_entry = next(w for w in board["attention"] if w["work_id"] == "W1HELD")
    assert held_entry["phase"] == "debag" and held_entry["held"] is True
    assert "data/a.tif does not match" in held_entry["reason"]
    assert "then Retry (or `glacier-sync retry W1HELD`)" in held_entry["fix"]
    assert held_entry["runs"] == [
        {
            "claimant": "airflow:manual__2026-12-07T09:00:00",
            "dag_run_id": "manual__2026-12-07T09:00:00",
        }
    ]
    flying_entry = board["in_flight"][0]
    assert flying_entry["claimed_by"] == "asset_triggered__x" and flying_entry["age_seconds"] < 60
    assert flying_entry["retryable"] is False, "no Retry while a live run holds the work"
    assert held_entry["retryable"] is True
    archived = board["archived"][0]
    assert archived["archive_path"] == "/archive/Archive0/00/W4DONE"
    assert archived["fixity"]["algorithms"] == ["sha512"]
    assert archived["runs"] == [{"claimant": "scheduled__1", "dag_run_id": "scheduled__1"}]
    assert archived["retryable"] is False
    assert "request-restore W5EXPIRES" in board["expiring"][0]["expiry"]


def test_search_finds_a_work_by_part_of_its_id_in_any_case(store, tmp_path):
    for work in ("W1NLM4700", "W1NLM4701", "W22084", "W1_X%", "W1AXB"):
        _work(store, tmp_path, work)
    found = [w["work_id"] for w in search_works(store, "nlm47", RULES, utcnow())]
    assert sorted(found) == ["W1NLM4700", "W1NLM4701"]
    assert [w["work_id"] for w in search_works(store, "_x%", RULES, utcnow())] == ["W1_X%"]
    assert search_works(store, "W9", RULES, utcnow()) == []


def test_a_retry_from_the_view_names_its_user_and_empties_attention(store, tmp_path):
    held = _held(store, _work(store, tmp_path, "W1HELD"), "sync", "refused", "r1")
    assert store.reset_for_retry("W1HELD", by="olga") == [held]
    row = store.get(held)
    assert row.history[-1]["event"] == "retry requested by operator"
    assert row.history[-1]["user"] == "olga"
    assert works_board(store, RULES, utcnow())["attention"] == []


def test_only_an_airflow_claimant_names_a_dag_run():
    assert airflow_run_id("airflow:manual__2026-12-07T09:00:00+00:00") == (
        "manual__2026-12-07T09:00:00+00:00"
    )
    assert airflow_run_id("glacier-sync@host1:4242.99:abcd1234") is None
    assert airflow_run_id(None) is None
    assert run_link("http://ui:8080/", "airflow:scheduled__1") == (
        "http://ui:8080/dag_runs?run_id_pattern=scheduled__1"
    )
    assert run_link("http://ui:8080", "glacier-sync@host1:4242.99:abcd1234") is None


def test_a_dead_claim_is_not_in_flight_and_a_section_stays_bounded(store, tmp_path, monkeypatch):
    """A claim whose lease ran out is no work in flight (the next run takes it over); each
    section holds at most SECTION_LIMIT works while the counts hold them all."""
    monkeypatch.setattr(works_board_module, "SECTION_LIMIT", 3)
    dead = _work(store, tmp_path, "W1DEAD")
    assert store.claim("airflow:gone", "local", 10, timedelta(seconds=-1), 3, ids=[dead])
    for index in range(5):
        row = _work(store, tmp_path, f"W2HELD{index}")
        store.update_row(row, "debag failed", state=State.FAILED, needs_attention=True)
    board = works_board(store, RULES, utcnow())
    assert board["in_flight"] == []
    assert len(board["attention"]) == 3 and board["counts"]["held"] == 5
