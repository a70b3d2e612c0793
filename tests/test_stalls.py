"""A phase that stops moving is stopped, gives up its work and is tried again; a phase that
moves slowly but steadily, for longer than the stall limit, is left to finish.

Leases of 3 s and a stall limit of 3 s (``stall_minutes = 0.05``) keep the runs short."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest
from helpers import make_bag_zip

from glacier_sync.archive import process_tree
from glacier_sync.bag import bags
from glacier_sync.errors import Stalled
from glacier_sync.progress_watch import ProgressWatch
from glacier_sync.runner import Pipeline
from glacier_sync.settings import load_settings
from glacier_sync.transfer import ranged_download

pytestmark = pytest.mark.integration

KEY = "Archive0/00/W1NLM4700/W1NLM4700.bag.zip"
STALL = {"stall_minutes": 0.05, "claim_lease_minutes": 0.05}


def _restored(world, dirs) -> None:
    zip_path = make_bag_zip(dirs["bags"], "W1NLM4700")
    world.upload_archived(zip_path, KEY)
    world.restore(KEY)


def _quick(settings, **changes):
    return load_settings(**{**settings.model_dump(exclude_unset=True), **STALL, **changes})


def _alive(marker: str) -> list[int]:
    """Processes whose command line starts with ``marker`` (a zombie's is empty)."""
    found = []
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            if (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode().startswith(marker):
                found.append(int(entry.name))
        except OSError:
            continue
    return found


def _stalled_then_archived(settings, failed_phase: str, **changes) -> None:
    """One run with the stall limit (and ``changes``) ends with the phase stopped as stalled
    (transient: no attempt spent, not held, the claim released); a second run with
    ``settings`` archives the work."""
    pipeline = Pipeline(_quick(settings, **changes), run_id="airflow:stalled")
    started = time.monotonic()
    _, outcomes = pipeline.run_once()
    assert time.monotonic() - started < 60
    assert [o.ok for o in outcomes] == [False], [o.__dict__ for o in outcomes]
    row = pipeline.store.find(["W1NLM4700"])[0]
    assert row.failed_phase == failed_phase, row.summary()
    assert "made no progress for" in row.last_error and "stall_minutes = 0.05" in row.last_error
    assert (row.attempts, row.needs_attention, row.claimed_by) == (0, False, None), row.summary()
    again = Pipeline(settings, run_id="next")
    _, outcomes = again.run_once()
    assert [o.ok for o in outcomes] == [True], [o.__dict__ for o in outcomes]
    assert again.store.find(["W1NLM4700"])[0].state == "synced"


def test_a_sync_whose_processes_stop_moving_is_killed_whole_and_tried_again(world, dirs, settings):
    _restored(world, dirs)
    hang = dirs["data"] / "hang.sh"
    hang.write_text("#!/bin/bash\nsleep 301.25 &\nsleep 301.5\n")
    _stalled_then_archived(settings, "sync", sync_command=hang)
    assert _alive("sleep 301.") == [], "the script and what it started are killed"


def test_a_sync_that_moves_slowly_for_longer_than_the_limit_finishes(world, dirs, settings):
    """The script writes a line every 0.5 s for 6 s (twice the limit), then syncs: never
    stopped, archived in one run."""
    _restored(world, dirs)
    slow = dirs["data"] / "slow.sh"
    slow.write_text(
        "#!/bin/bash\nfor i in $(seq 12); do echo working; sleep 0.5; done\n"
        f'exec bash {settings.sync_command} "$@"\n'
    )
    pipeline = Pipeline(_quick(settings, sync_command=slow), run_id="airflow:slow")
    _, outcomes = pipeline.run_once()
    assert [o.ok for o in outcomes] == [True], [o.__dict__ for o in outcomes]
    row = pipeline.store.find(["W1NLM4700"])[0]
    assert (row.state, row.attempts) == ("synced", 0), row.summary()
    [done] = [h for h in row.history if h["event"] == "sync done"]
    assert done["seconds"] > 6, done  # the sync phase itself outlived the limit twice


def test_a_debag_that_stops_moving_is_stopped_and_leaves_nothing(
    world, dirs, settings, monkeypatch
):
    real = bags._extract_hashing
    calls = []

    def stuck_once(*args, **kwargs):
        calls.append(args[2])
        if len(calls) == 1:
            time.sleep(4.5)  # a hung disk: no chunk written for longer than the limit
        return real(*args, **kwargs)

    monkeypatch.setattr(bags, "_extract_hashing", stuck_once)
    _restored(world, dirs)
    pipeline = Pipeline(_quick(settings), run_id="airflow:stalled")
    _, outcomes = pipeline.run_once()
    assert [o.ok for o in outcomes] == [False]
    work_dir = pipeline.settings.work_dir
    assert sorted(p.name for p in work_dir.iterdir()) == [], "no staging, no work folder left"
    monkeypatch.setattr(bags, "_extract_hashing", real)
    row = pipeline.store.find(["W1NLM4700"])[0]
    assert (row.failed_phase, row.attempts, row.needs_attention) == ("debag", 0, False)
    assert "the debag made no progress for" in row.last_error
    assert [o.ok for o in Pipeline(settings, run_id="next").run_once()[1]] == [True]


def test_a_download_that_stops_moving_is_stopped_and_tried_again(
    world, dirs, settings, monkeypatch
):
    real = ranged_download._stream
    calls = []

    def stuck_once(*args, **kwargs):
        calls.append(1)
        if len(calls) == 1:
            time.sleep(4.5)  # a link that sends nothing, without a timeout of its own
        return real(*args, **kwargs)

    monkeypatch.setattr(ranged_download, "_stream", stuck_once)
    _restored(world, dirs)
    _stalled_then_archived(settings, "download")


def test_a_watch_stops_only_after_its_limit_without_a_tick():
    watch = ProgressWatch("work W1: the sync", 0.3)
    for _ in range(4):  # 0.4 s of steady ticks: never stopped
        time.sleep(0.1)
        watch.tick()
        assert not watch.stalled()
    time.sleep(0.35)
    assert watch.stalled() and watch.stopped.is_set()
    with pytest.raises(Stalled, match=r"work W1: the sync made no progress for 0 s"):
        watch.check()
    with pytest.raises(Stalled):
        watch.tick()
    never = ProgressWatch("x", None)
    never.last -= 10_000
    assert not never.stalled()


def test_kill_tree_reaches_what_the_script_started():
    script = subprocess.Popen(["bash", "-c", "sleep 302.25 & (sleep 302.5 & wait) & wait"])
    try:
        deadline = time.monotonic() + 10
        while len(process_tree.tree(script.pid)) < 4:  # bash, a subshell, two sleeps
            assert time.monotonic() < deadline, process_tree.tree(script.pid)
            time.sleep(0.05)
        sleeps = [p for p in process_tree.tree(script.pid) if p in _alive("sleep 302.")]
        assert len(sleeps) == 2
    finally:
        process_tree.kill_tree(script.pid)
    script.wait(10)
    deadline = time.monotonic() + 10
    while [p for p in sleeps if p in _alive("sleep 302.")]:
        assert time.monotonic() < deadline, _alive("sleep 302.")
        time.sleep(0.05)
