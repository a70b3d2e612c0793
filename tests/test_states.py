"""A work's states and the allowed moves (glacier_sync.records.states), enforced by the store."""

from __future__ import annotations

import pytest

from glacier_sync.records.states import PENDING, TRANSITIONS, State, check_move

pytestmark = pytest.mark.unit


def test_every_state_has_its_moves_and_only_unfinished_work_is_pending():
    assert set(TRANSITIONS) == set(State)
    assert {State.RESTORED, State.DOWNLOADED, State.DEBAGGED, State.FAILED} == PENDING


@pytest.mark.parametrize(
    ("current", "new"),
    [
        ("requested", "restored"),
        ("restored", "downloaded"),
        ("downloaded", "debagged"),
        ("debagged", "synced"),
        ("debagged", "failed"),
        ("failed", "downloaded"),
        ("failed", "synced"),
        ("synced", "restored"),
    ],
)
def test_allowed_moves(current, new):
    assert check_move(current, new) == State(new)


@pytest.mark.parametrize(
    ("current", "new", "message"),
    [
        ("synced", "failed", "a work that is synced cannot become failed"),
        ("synced", "debagged", "a work that is synced cannot become debagged"),
        ("requested", "downloaded", "a work that is requested cannot become downloaded"),
        ("failed", "requested", "a work that is failed cannot become requested"),
        ("restored", "done", "unknown state 'done'; one of requested, restored"),
    ],
)
def test_refused_moves(current, new, message):
    with pytest.raises(ValueError, match=message):
        check_move(current, new)


def test_the_store_refuses_a_refused_move(tmp_path):
    from glacier_sync.records.progress import ProgressStore

    store = ProgressStore(f"sqlite:///{tmp_path}/p.sqlite")
    zip_path = tmp_path / "W1.bag.zip"
    zip_path.write_bytes(b"zip")
    pid, _ = store.register_local(zip_path, "W1.bag.zip", "W1")
    store.update_row(pid, "sync done", state=State.SYNCED)
    with pytest.raises(ValueError, match="synced cannot become failed"):
        store.update_row(pid, "sync failed", state=State.FAILED)
    assert store.get(pid).state == State.SYNCED
