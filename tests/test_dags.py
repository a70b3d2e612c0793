"""The Airflow DAGs, run for real with dag.test() on a SQLite metadata database."""

from __future__ import annotations

import json
import subprocess

import pytest
from airflow_helpers import (
    DAGS,
    airflow_env,
    dag_test,
    dagbag,
    last_run,
    migrate,
    stop,
    wait_for_task_state,
)
from helpers import DEFAULT_FILES, VENV_BIN, glacier_env, make_bag_dir, make_bag_zip, zip_dir

from glacier_sync.progress import ProgressStore

pytestmark = pytest.mark.airflow


@pytest.fixture(scope="session")
def airflow_home(tmp_path_factory):
    home = tmp_path_factory.mktemp("airflow-home")
    migrate(home)
    return home


def _restore(world, dirs, work_id, key, zip_path=None):
    zip_path = zip_path or make_bag_zip(dirs["bags"], work_id)
    world.upload_archived(zip_path, key)
    world.restore(key)


def _rows(dirs):
    store = ProgressStore(f"sqlite:///{dirs['data']}/progress.sqlite")
    return {r.work_id: r for r in store.find()}


def test_dagbag_imports_every_dag_without_errors(airflow_home, world, dirs):
    result = dagbag(airflow_home, glacier_env(world, dirs["data"], dirs["archive"]))
    assert result["errors"] == {}
    assert result["dags"] == ["down_scheduled_dag", "sqs_event_dag", "sqs_scheduled_dag"]


def test_invalid_settings_fail_the_dag_import_with_the_fix(airflow_home, world, dirs):
    env = glacier_env(world, dirs["data"], dirs["archive"], GLACIER_SYNC_MAX_ACTIVE_RUNS="0")
    result = dagbag(airflow_home, env)
    assert set(result["errors"]) == {
        str(DAGS / "sqs_scheduled_dag.py"),
        str(DAGS / "sqs_event_dag.py"),
        str(DAGS / "down_scheduled_dag.py"),
    }
    message = next(iter(result["errors"].values()))
    assert "max_active_runs" in message and "GLACIER_SYNC_MAX_ACTIVE_RUNS" in message


def test_sqs_dag_carries_restored_works_to_the_archive(airflow_home, world, dirs):
    _restore(world, dirs, "W1NLM4700", "Archive0/00/W1NLM4700/W1NLM4700.bag.zip")
    _restore(world, dirs, "W2KG209837", "Archive1/37/W2KG209837/W2KG209837.bag.zip")
    proc = dag_test(
        airflow_home, "sqs_scheduled_dag.py", glacier_env(world, dirs["data"], dirs["archive"])
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    state, tasks = last_run(airflow_home, "sqs_scheduled_dag")
    assert state == "success"
    assert [tasks[("sync_debagged", i)] for i in (0, 1)] == ["success", "success"]
    for folder in ("Archive0/00/W1NLM4700", "Archive1/37/W2KG209837"):
        for rel, content in DEFAULT_FILES.items():
            assert (dirs["archive"] / folder / rel).read_bytes() == content
    rows = _rows(dirs)
    assert {r.state for r in rows.values()} == {"synced"}
    assert all(r.claimed_by is None for r in rows.values()), "claims released"
    assert world.queue_count() == 0


def test_sqs_dag_through_an_airflow_aws_connection(airflow_home, world, dirs):
    _restore(world, dirs, "W1CONN", "Archive0/05/W1CONN/W1CONN.bag.zip")
    env = glacier_env(world, dirs["data"], dirs["archive"])
    env["GLACIER_SYNC_QUEUES"] = json.dumps([world.queue_entry(aws_conn_id="archive_aws")])
    env.pop("GLACIER_SYNC_AWS_ENDPOINT_URL")
    env["AIRFLOW_CONN_ARCHIVE_AWS"] = json.dumps(
        {
            "conn_type": "aws",
            "login": "testing",
            "password": "testing",
            "extra": {"endpoint_url": world.endpoint, "region_name": "us-east-1"},
        }
    )
    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        env.pop(key)  # only the connection carries credentials
    proc = dag_test(airflow_home, "sqs_scheduled_dag.py", env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert last_run(airflow_home, "sqs_scheduled_dag")[0] == "success"
    assert (dirs["archive"] / "Archive0" / "05" / "W1CONN" / "images").is_dir()


def test_a_failing_work_does_not_fail_its_siblings(airflow_home, world, dirs):
    bad_dir = make_bag_dir(dirs["bags"], "W1BAD")
    (bad_dir / "data" / "archive" / "notes.txt").write_bytes(b"scanned 2027\n")
    _restore(
        world,
        dirs,
        "W1BAD",
        "Archive0/07/W1BAD/W1BAD.bag.zip",
        zip_dir(bad_dir, dirs["bags"] / "W1BAD.bag.zip"),
    )
    _restore(world, dirs, "W1GOOD", "Archive0/08/W1GOOD/W1GOOD.bag.zip")
    # Task retries on (as by default): a bad bag is a permanent failure, tried once.
    env = glacier_env(
        world,
        dirs["data"],
        dirs["archive"],
        GLACIER_SYNC_TASK_RETRIES=2,
        GLACIER_SYNC_TASK_RETRY_DELAY_SECONDS=1,
    )
    dag_test(airflow_home, "sqs_scheduled_dag.py", env)
    state, tasks = last_run(airflow_home, "sqs_scheduled_dag")
    assert state == "failed"
    rows = _rows(dirs)
    assert rows["W1GOOD"].state == "synced" and rows["W1BAD"].state == "failed"
    assert "notes.txt: sha512 mismatch" in rows["W1BAD"].last_error
    assert rows["W1BAD"].attempts == 1, "failed once: no Airflow retry of a bad bag"
    assert rows["W1BAD"].claimed_by is None, "released for an operator's retry"
    debag_states = sorted(s for (t, _), s in tasks.items() if t == "debag_downloads")
    sync_states = sorted(s for (t, _), s in tasks.items() if t == "sync_debagged")
    assert debag_states == ["failed", "success"]
    assert sync_states == ["success", "upstream_failed"]
    assert (dirs["archive"] / "Archive0" / "08" / "W1GOOD" / "images").is_dir()
    assert not (dirs["archive"] / "Archive0" / "07").exists()
    assert (dirs["data"] / "incoming" / "Archive0/07/W1BAD/W1BAD.bag.zip").is_file()
    assert rows["W1BAD"].needs_attention and rows["W1BAD"].failed_run.startswith("airflow:")

    # The next run delivers a new work and leaves the held one alone: it ends in success.
    _restore(world, dirs, "W1NEXT", "Archive0/09/W1NEXT/W1NEXT.bag.zip")
    dag_test(airflow_home, "sqs_scheduled_dag.py", env)
    state, tasks = last_run(airflow_home, "sqs_scheduled_dag")
    assert state == "success", tasks
    assert sorted(s for (t, _), s in tasks.items() if t == "debag_downloads") == ["success"]
    rows = _rows(dirs)
    assert rows["W1NEXT"].state == "synced" and rows["W1BAD"].attempts == 1


def test_poll_task_is_up_for_retry_on_an_empty_queue(airflow_home, world, dirs):
    env = glacier_env(
        world,
        dirs["data"],
        dirs["archive"],
        GLACIER_SYNC_POLL_RETRIES=3,
        GLACIER_SYNC_POLL_RETRY_DELAY_SECONDS=600,
    )
    proc = subprocess.Popen(
        [str(VENV_BIN / "python"), str(DAGS / "sqs_scheduled_dag.py")],
        env=airflow_env(airflow_home, env),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        assert wait_for_task_state(
            airflow_home, "sqs_scheduled_dag", "get_restored_object_messages", "up_for_retry", proc
        )
    finally:
        stop(proc)


def test_empty_queue_after_the_last_try_skips_the_run(airflow_home, world, dirs):
    env = glacier_env(world, dirs["data"], dirs["archive"], GLACIER_SYNC_POLL_RETRIES=0)
    proc = dag_test(airflow_home, "sqs_scheduled_dag.py", env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    state, tasks = last_run(airflow_home, "sqs_scheduled_dag")
    assert state == "success"
    assert tasks[("get_restored_object_messages", -1)] == "skipped"


def test_down_dag_archives_dropped_bags(airflow_home, world, dirs):
    incoming = dirs["data"] / "incoming" / "Archive3" / "11" / "W1DROP"
    incoming.mkdir(parents=True)
    bag_dir = make_bag_dir(dirs["bags"], "W1DROP")
    zip_dir(bag_dir, incoming / "W1DROP.bag.zip")
    proc = dag_test(
        airflow_home, "down_scheduled_dag.py", glacier_env(world, dirs["data"], dirs["archive"])
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    state, tasks = last_run(airflow_home, "down_scheduled_dag")
    assert state == "success" and tasks[("sync_debagged", 0)] == "success"
    archived = dirs["archive"] / "Archive3" / "11" / "W1DROP"
    for rel, content in DEFAULT_FILES.items():
        assert (archived / rel).read_bytes() == content
    assert _rows(dirs)["W1DROP"].state == "synced"
    assert not (incoming / "W1DROP.bag.zip").exists()
