"""Event-driven runs under local-airflow.sh's real services, against the moto server.

The watcher (glacier_sync_airflow.watcher) runs in the triggerer and never takes a message; the
runs it starts poll, record and only then delete, as the scheduled DAG does. Nothing here
triggers a run by hand.
"""

from __future__ import annotations

import os
import signal
import time

import pytest
from demo_world import settings_env
from helpers import make_world
from test_local_airflow import alive, rows_by_work, run, running_services, seed

from glacier_sync.settings import DEFAULT_SYNC_COMMAND

pytestmark = pytest.mark.airflow
DAG = "sqs_event_dag"
MAX_PER_RUN = 5
EVENT_TO_ARCHIVE = 60  # seconds: the target of docs/performance.md (p95, services, 2 cores)
HEARTBEAT_TIMEOUT = 15  # seconds without a task's heartbeat before the scheduler fails it
LEASE_MINUTES = 0.1  # 6 s claims
SLOW_SYNC = """#!/bin/bash
# The archive's sync script, slowed down for the works named in {slow}/<work>: a line
# a second for as many seconds as the file says (a long copy that keeps moving), then the script.
work=$(basename "${{@: -1}}")
if [ -f "{slow}/$work" ]; then
    for ((i = 0; i < $(cat "{slow}/$work"); i++)); do echo "copying $work"; sleep 1; done
fi
exec "{script}" "$@"
"""


@pytest.fixture(scope="module")
def event_services(moto_endpoint, tmp_path_factory):
    """UI + scheduler + dag-processor + triggerer with the event-driven path on (the default)."""
    tmp = tmp_path_factory.mktemp("event-driven")
    world = make_world(moto_endpoint)
    data, archive = tmp / "data", tmp / "archive"
    archive.mkdir()
    settings = settings_env(world, data, archive)
    slow_sync = tmp / "slow-sync.sh"
    (tmp / "slow-syncs").mkdir()
    slow_sync.write_text(SLOW_SYNC.format(slow=tmp / "slow-syncs", script=DEFAULT_SYNC_COMMAND))
    slow_sync.chmod(0o755)
    settings.update(
        GLACIER_SYNC_SYNC_COMMAND=str(slow_sync),
        GLACIER_SYNC_CLAIM_LEASE_MINUTES=str(LEASE_MINUTES),
        AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT=str(HEARTBEAT_TIMEOUT),
        GLACIER_SYNC_EVENT_POLL_SECONDS="2",
        GLACIER_SYNC_EVENT_REFIRE_SECONDS="10",
        GLACIER_SYNC_MAX_MESSAGES_PER_RUN=str(MAX_PER_RUN),
        GLACIER_SYNC_SQS_WAIT_SECONDS="1",
        GLACIER_SYNC_TASK_RETRY_DELAY_SECONDS="3",
        GLACIER_SYNC_SQS_SCHEDULE="None",
    )
    settings.pop("GLACIER_SYNC_EVENT_DRIVEN", None)  # the default: on
    with running_services(tmp, settings) as (env, api):
        dag = api.wait_for_dag(DAG)
        assert dag["is_paused"] is False, "on by default: nobody unpauses it"
        yield {
            "api": api,
            "world": world,
            "data": data,
            "archive": archive,
            "env": env,
            "home": tmp / "airflow-home",
            "tmp": tmp,
        }


def _wait_synced(services, work_ids, timeout: float = 300) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        rows = rows_by_work(services)
        if all(w in rows and rows[w].state == "synced" for w in work_ids):
            return rows
        if time.monotonic() > deadline:
            states = {w: rows[w].state if w in rows else None for w in work_ids}
            runs = [(r["run_id"], r["state"]) for r in services["api"].runs(DAG)]
            raise AssertionError(f"not synced in {timeout} s: {states}; runs {runs}")
        time.sleep(1)


def _queue_empty(services) -> bool:
    sqs = services["world"].client("sqs")
    attributes = sqs.get_queue_attributes(
        QueueUrl=services["world"].queue_url,
        AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"],
    )["Attributes"]
    return all(int(v) == 0 for v in attributes.values())


def _archived_once(services, rows, work_ids) -> None:
    for work_id in work_ids:
        events = [h["event"] for h in rows[work_id].history]
        assert events.count("sync done") == 1, (work_id, events)
        parent = services["archive"] / "Archive5" / work_id[-2:]
        assert (parent / work_id / "images").is_dir()
        assert not [p.name for p in parent.iterdir() if p.name.startswith(".")], "no staging"


def test_an_event_starts_a_run_within_seconds(event_services):
    seed(event_services, ["W1EVT01"])
    sent = time.monotonic()
    rows = _wait_synced(event_services, ["W1EVT01"])
    took = time.monotonic() - sent
    print(f"event -> archive: {took:.1f} s")
    assert took < EVENT_TO_ARCHIVE, f"{took:.1f} s from the event to the archive"
    api = event_services["api"]
    runs = api.runs(DAG)
    assert runs and {r["run_type"] for r in runs} == {"asset_triggered"}, runs
    labels = {
        (t["task_id"], t["rendered_map_index"])
        for run in runs
        for t in api.task_instances(DAG, run["dag_run_id"])
        if t["map_index"] >= 0
    }
    assert ("sync_debagged", "W1EVT01") in labels, "each mapped instance is named by its work"
    _archived_once(event_services, rows, ["W1EVT01"])
    assert _queue_empty(event_services), "the run deleted the message once it was recorded"


def test_a_burst_is_gathered_into_a_few_bounded_runs(event_services):
    api = event_services["api"]
    before = len(api.runs(DAG))
    works = [f"W1BUR{i:03d}" for i in range(12)]
    seed(event_services, works)
    sent = time.monotonic()
    rows = _wait_synced(event_services, works)
    took = time.monotonic() - sent
    print(f"burst of {len(works)} -> archive: {took:.1f} s")
    assert took < 2 * EVENT_TO_ARCHIVE, f"{took:.1f} s from the burst to the last work archived"
    _archived_once(event_services, rows, works)
    runs = api.runs(DAG)[before:]
    # max_messages_per_run=5 -> at least 3 runs carry the 12 works; re-fires while messages
    # stay add at most a few that find the queue empty: never one run per event.
    assert 3 <= len(runs) <= 8, [(r["run_id"], r["state"]) for r in runs]
    assert all(r["state"] in ("success", "running", "queued") for r in runs), runs
    assert _queue_empty(event_services)
    # Works share mapped instances (batches); the UI's search of mapped instances finds each
    # work by its id, in the one instance that carried it.
    labels = []
    for work in works:
        found = [
            t
            for r in runs
            for t in api.mapped_matching(DAG, r["dag_run_id"], "sync_debagged", work)
        ]
        assert [t["state"] for t in found] == ["success"], (work, found)
        assert work in found[0]["rendered_map_index"].split()
        labels.append(found[0]["rendered_map_index"])
    assert max(len(label.split()) for label in labels) > 1, "batched, not one instance each"


def _kill9(home, name: str) -> None:
    pid = int((home / "run" / f"{name}.pid").read_text())
    os.killpg(pid, signal.SIGKILL)
    deadline = time.monotonic() + 30
    while alive(pid):
        assert time.monotonic() < deadline, f"{name} survived kill -9"
        time.sleep(0.2)


def test_a_sync_longer_than_heartbeat_timeouts_and_leases_keeps_its_one_try(event_services):
    """A sync that copies for 50 s (over three heartbeat timeouts, eight leases), moving all along:
    its claim is renewed, its task is not taken for dead, no second try starts beside it, and
    the work is archived once."""
    work, seconds = "W1SLOW01", 50
    (event_services["tmp"] / "slow-syncs" / work).write_text(str(seconds))
    seed(event_services, [work])
    rows = _wait_synced(event_services, [work], timeout=300 + seconds)
    _archived_once(event_services, rows, [work])
    done = [h for h in rows[work].history if h["event"] == "sync done"]
    assert done[0]["seconds"] >= seconds, done
    assert seconds > 3 * HEARTBEAT_TIMEOUT and seconds > 7 * LEASE_MINUTES * 60
    api = event_services["api"]
    syncs = [
        t
        for run in api.runs(DAG)
        for t in api.task_instances(DAG, run["dag_run_id"])
        if t["task_id"] == "sync_debagged" and t["rendered_map_index"] == work
    ]
    assert [(t["state"], t["try_number"]) for t in syncs] == [("success", 1)], syncs
    assert syncs[0]["duration"] >= seconds, syncs


def test_killed_triggerer_and_scheduler_lose_nothing(event_services):
    """kill -9 of the triggerer, then of the scheduler, while restore events wait: after a
    restart every work is archived once and every message deleted once recorded."""
    home, api = event_services["home"], event_services["api"]
    _kill9(home, "triggerer")
    before = len(api.runs(DAG))
    works = [f"W1KTR{i:03d}" for i in range(3)]
    seed(event_services, works)
    time.sleep(10)
    assert len(api.runs(DAG)) == before, "no watcher, no run"
    assert not _queue_empty(event_services), "the events wait in the queue, untouched"
    _kill9(home, "scheduler")
    restarted = run(event_services["env"], "-s", "-u")
    assert restarted.returncode == 0, restarted.stderr
    for name in ("triggerer", "scheduler"):
        pid = int((home / "run" / f"{name}.pid").read_text())
        assert alive(pid), f"{name} was started again:\n{restarted.stdout}"
    rows = _wait_synced(event_services, works)
    _archived_once(event_services, rows, works)
    assert _queue_empty(event_services)
