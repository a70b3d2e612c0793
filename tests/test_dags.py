"""The Airflow DAGs, run for real with dag.test() on a SQLite metadata database."""

from __future__ import annotations

import json
import subprocess
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from airflow_helpers import (
    DAGS,
    airflow_env,
    dag_test,
    dagbag,
    last_run,
    last_run_labels,
    migrate,
    stop,
    wait_for_task_state,
)
from helpers import DEFAULT_FILES, VENV_BIN, glacier_env, make_bag_dir, make_bag_zip, zip_dir

from glacier_sync.records.progress import ProgressStore

pytestmark = pytest.mark.airflow
DATA = Path(__file__).parent / "data"


@pytest.fixture(scope="session")
def airflow_home(tmp_path_factory):
    home = tmp_path_factory.mktemp("airflow-home")
    migrate(home)
    return home


def _restore(world, dirs, work_id, key, zip_path=None):
    zip_path = zip_path or make_bag_zip(dirs["bags"], work_id)
    world.upload_archived(zip_path, key)
    world.restore(key)


class _WebhookListener:
    """An HTTP listener on 127.0.0.1 that keeps each JSON POST (the notices' webhook)."""

    def __init__(self) -> None:
        posts: list[dict] = []

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - the stdlib's name
                posts.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args) -> None:
                pass

        self.posts = posts
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/notices"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def _rows(dirs):
    store = ProgressStore(f"sqlite:///{dirs['data']}/progress.sqlite")
    return {r.work_id: r for r in store.find()}


def test_dagbag_imports_every_dag_without_errors(airflow_home, world, dirs):
    result = dagbag(airflow_home, glacier_env(world, dirs["data"], dirs["archive"]))
    assert result["errors"] == {}
    assert result["dags"] == [
        "down_scheduled_dag",
        "restore_request_dag",
        "sqs_event_dag",
        "sqs_scheduled_dag",
    ]
    # An hour-long phase keeps its task: no execution_timeout, no dagrun_timeout (a stalled
    # phase is stopped by the pipeline's own stall check, from the progress it makes).
    assert result["limits"] == []


def test_invalid_settings_fail_the_dag_import_with_the_fix(airflow_home, world, dirs):
    env = glacier_env(world, dirs["data"], dirs["archive"], GLACIER_SYNC_MAX_ACTIVE_RUNS="0")
    result = dagbag(airflow_home, env)
    assert set(result["errors"]) == {
        str(DAGS / "sqs_scheduled_dag.py"),
        str(DAGS / "sqs_event_dag.py"),
        str(DAGS / "down_scheduled_dag.py"),
        str(DAGS / "restore_request_dag.py"),
    }
    message = next(iter(result["errors"].values()))
    assert "max_active_runs" in message and "GLACIER_SYNC_MAX_ACTIVE_RUNS" in message


def test_sqs_dag_carries_restored_works_to_the_archive(airflow_home, world, dirs):
    _restore(world, dirs, "W1NLM4700", "Archive0/00/W1NLM4700/W1NLM4700.bag.zip")
    _restore(world, dirs, "W2KG209837", "Archive1/37/W2KG209837/W2KG209837.bag.zip")
    # One work per mapped instance (batches of one), as for works of batch_max_mb or more.
    env = glacier_env(world, dirs["data"], dirs["archive"], GLACIER_SYNC_BATCH_MAX_WORKS=1)
    proc = dag_test(airflow_home, "sqs_scheduled_dag.py", env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    state, tasks = last_run(airflow_home, "sqs_scheduled_dag")
    assert state == "success"
    assert [tasks[("sync_debagged", i)] for i in (0, 1)] == ["success", "success"]
    labels = last_run_labels(airflow_home, "sqs_scheduled_dag", "sync_debagged")
    assert sorted(labels) == ["W1NLM4700", "W2KG209837"], "each instance is named by its work"
    assert tasks[("summarize_run", -1)] == "success"
    assert "summary: 2 of 2 works archived" in proc.stdout + proc.stderr
    for folder in ("Archive0/00/W1NLM4700", "Archive1/37/W2KG209837"):
        for rel, content in DEFAULT_FILES.items():
            assert (dirs["archive"] / folder / rel).read_bytes() == content
    rows = _rows(dirs)
    assert {r.state for r in rows.values()} == {"synced"}
    assert all(r.claimed_by is None for r in rows.values()), "claims released"
    assert world.queue_count() == 0

    # Each sync task emits an event of the archive's asset naming the works it archived,
    # with each work's evidence (here one work per batch, so one event per work).
    events = _asset_events(airflow_home, "glacier-sync-archive://archive/dev")
    assert sorted(e["work_ids"] for e in events) == [["W1NLM4700"], ["W2KG209837"]]
    for event in (work for e in events for work in e["works"]):
        row = rows[event["work_id"]]
        assert event["archive_path"] == row.archive_path and event["key"] == row.object_key
        assert event["fixity"] == row.fixity and event["fixity"]["files"] == len(DEFAULT_FILES)
        assert event["archived_now"] is True

    # A duplicate of an event already archived (S3 delivers at least once) publishes nothing.
    row = rows["W1NLM4700"]
    body = json.loads((DATA / "objectrestore-completed.json").read_text())
    record = body["Records"][0]
    record["eventTime"] = row.restore_completed_at.isoformat() + "Z"
    record["s3"]["bucket"]["name"] = row.bucket
    record["s3"]["object"].update(key=row.object_key, eTag=row.etag, size=row.size)
    world.send_body(json.dumps(body))
    env = glacier_env(world, dirs["data"], dirs["archive"], GLACIER_SYNC_POLL_RETRIES=0)
    dag_test(airflow_home, "sqs_scheduled_dag.py", env)
    assert world.queue_count() == 0, "the duplicate was recorded and deleted"
    assert len(_asset_events(airflow_home, "glacier-sync-archive://archive/dev")) == 2


def _asset_events(airflow_home, uri: str) -> list[dict]:
    """The extras of the asset's events, oldest first (the metadata database's own rows)."""
    import sqlite3

    with sqlite3.connect(airflow_home / "airflow.db") as conn:
        rows = conn.execute(
            "SELECT e.extra FROM asset_event e JOIN asset a ON a.id = e.asset_id "
            "WHERE a.uri = ? ORDER BY e.id",
            (uri,),
        ).fetchall()
    return [json.loads(extra) for (extra,) in rows]


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
    hook = _WebhookListener()
    env = glacier_env(
        world,
        dirs["data"],
        dirs["archive"],
        GLACIER_SYNC_TASK_RETRIES=2,
        GLACIER_SYNC_TASK_RETRY_DELAY_SECONDS=1,
        GLACIER_SYNC_ALERT_WEBHOOK_URL=hook.url,
    )
    try:
        proc = dag_test(airflow_home, "sqs_scheduled_dag.py", env)
    finally:
        hook.close()
    # The summary told the webhook, once, that the bad work is held (docs/operations.md).
    held = [p for p in hook.posts if p["kind"] == "held"]
    assert [p["work_id"] for p in held] == ["W1BAD"], hook.posts
    assert "notes.txt: sha512 mismatch" in held[0]["text"]
    state, tasks = last_run(airflow_home, "sqs_scheduled_dag")
    assert state == "failed"
    assert tasks[("summarize_run", -1)] == "failed", "the summary keeps the run failed"
    log = proc.stdout + proc.stderr
    assert "W1BAD: failed in debag: " in log and "needs attention" in log
    assert "summary: 1 of 2 works archived" in log
    rows = _rows(dirs)
    assert rows["W1GOOD"].state == "synced" and rows["W1BAD"].state == "failed"
    assert "notes.txt: sha512 mismatch" in rows["W1BAD"].last_error
    assert rows["W1BAD"].attempts == 1, "failed once: no Airflow retry of a bad bag"
    assert rows["W1BAD"].claimed_by is None, "released for an operator's retry"
    # Both works in one batch (one instance per phase, named by both ids): its debag task
    # fails, naming the bad work, after the good one is debagged; the sync carries the good one.
    assert {t: s for (t, i), s in tasks.items() if i >= 0} == {
        "download_from_messages": "success",
        "debag_downloads": "failed",
        "sync_debagged": "success",
    }
    label = last_run_labels(airflow_home, "sqs_scheduled_dag", "debag_downloads")
    assert sorted(label[0].split()) == ["W1BAD", "W1GOOD"]
    assert "debag failed (not retried) for W1BAD: " in log
    assert "sync skipped: debag failed: " in log
    events = _asset_events(airflow_home, "glacier-sync-archive://archive/dev")
    assert events[-1]["work_ids"] == ["W1GOOD"], "the archive's event names the good work only"
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


def test_down_dag_archives_dropped_bags_and_tells_of_a_bad_one(airflow_home, world, dirs):
    """A good and a bad bag dropped into the incoming folder: the good one is archived, the
    bad one held, and the DAG's last task tells the webhook of the hold, once."""
    incoming = dirs["data"] / "incoming" / "Archive3" / "11" / "W1DROP"
    incoming.mkdir(parents=True)
    bag_dir = make_bag_dir(dirs["bags"], "W1DROP")
    zip_dir(bag_dir, incoming / "W1DROP.bag.zip")
    bad_dir = make_bag_dir(dirs["bags"], "W2DROPBAD")
    (bad_dir / "data" / "archive" / "notes.txt").write_bytes(b"scanned 2027\n")
    bad_incoming = dirs["data"] / "incoming" / "Archive3" / "12" / "W2DROPBAD"
    bad_incoming.mkdir(parents=True)
    zip_dir(bad_dir, bad_incoming / "W2DROPBAD.bag.zip")
    hook = _WebhookListener()
    env = glacier_env(world, dirs["data"], dirs["archive"], GLACIER_SYNC_ALERT_WEBHOOK_URL=hook.url)
    try:
        proc = dag_test(airflow_home, "down_scheduled_dag.py", env)
    finally:
        hook.close()
    assert [(p["kind"], p["work_id"]) for p in hook.posts] == [("held", "W2DROPBAD")], (
        hook.posts,
        proc.stderr[-3000:],
    )
    state, tasks = last_run(airflow_home, "down_scheduled_dag")
    assert state == "failed", "the bad bag's debag failed (its sibling went on)"
    assert tasks[("summarize_run", -1)] == "failed", "the summary keeps the run failed"
    assert _rows(dirs)["W2DROPBAD"].needs_attention
    archived = dirs["archive"] / "Archive3" / "11" / "W1DROP"
    for rel, content in DEFAULT_FILES.items():
        assert (archived / rel).read_bytes() == content
    assert _rows(dirs)["W1DROP"].state == "synced"
    assert not (incoming / "W1DROP.bag.zip").exists()


def _request_run(airflow_home, env, *works: str) -> subprocess.CompletedProcess:
    """``python dags/restore_request_dag.py WORK...`` (the form's works, through dag.test())."""
    return subprocess.run(
        [str(VENV_BIN / "python"), str(DAGS / "restore_request_dag.py"), *works],
        env=airflow_env(airflow_home, env),
        capture_output=True,
        text=True,
        timeout=300,
    )


def _request_xcom(airflow_home) -> dict:
    import sqlite3

    with sqlite3.connect(airflow_home / "airflow.db") as conn:
        [value] = conn.execute(
            "SELECT value FROM xcom WHERE dag_id='restore_request_dag' AND key='return_value' "
            "ORDER BY dag_run_id DESC LIMIT 1"
        ).fetchone()
    return json.loads(value)


def test_restore_request_dag_requests_each_work_then_its_event_archives_it(
    airflow_home, world, dirs
):
    """The trigger form's works: one result each in the log and XCom; the requested row is the
    one the restore event completes and the event-driven path archives (one row per work)."""
    world.upload_archived(
        make_bag_zip(dirs["bags"], "W1ASK01"), "Archive0/01/W1ASK01/W1ASK01.bag.zip"
    )
    env = glacier_env(world, dirs["data"], dirs["archive"])
    result = _request_run(
        airflow_home,
        env,
        "Archive0/01/W1ASK01/W1ASK01.bag.zip",
        "Archive0/09/W1GONE/W1GONE.bag.zip",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    state, tasks = last_run(airflow_home, "restore_request_dag")
    assert state == "success" and tasks == {("request_restores", -1): "success"}
    log = result.stdout + result.stderr
    assert "W1ASK01: requested (row " in log and "W1GONE: no such key" in log
    assert "summary: 1 requested, 1 no such key (Standard tier, 7 days)" in log
    xcom = _request_xcom(airflow_home)
    assert xcom["summary"] == "1 requested, 1 no such key"
    assert [w["outcome"] for w in xcom["works"]] == ["requested", "no such key"]
    assert _rows(dirs)["W1ASK01"].state == "requested"

    world.client("s3").head_object(Bucket=world.bucket, Key="Archive0/01/W1ASK01/W1ASK01.bag.zip")
    dag_test(airflow_home, "sqs_scheduled_dag.py", env)
    rows = ProgressStore(f"sqlite:///{dirs['data']}/progress.sqlite").find(["W1ASK01"])
    assert [r.state for r in rows] == ["synced"], "the requested row itself was archived"
    assert (dirs["archive"] / "Archive0" / "01" / "W1ASK01" / "images").is_dir()


def test_restore_request_dag_fails_when_no_work_could_be_requested(airflow_home, world, dirs):
    env = glacier_env(world, dirs["data"], dirs["archive"])
    result = _request_run(airflow_home, env, "W0UNKNOWN")
    state, tasks = last_run(airflow_home, "restore_request_dag")
    assert state == "failed" and tasks == {("request_restores", -1): "failed"}
    log = result.stdout + result.stderr
    assert "none of the 1 works was requested: 1 unknown work" in log
    assert "Retrying" not in log and "up_for_retry" not in log, "bad input is not retried"


FORM_CHECK = """
import copy, json, runpy, sys
dag = runpy.run_path(sys.argv[1])["dag"]
out = {}
for name, conf in json.loads(sys.argv[2]).items():
    params = copy.deepcopy(dag.params)
    try:
        params.update(conf)  # as a triggered run's conf does
        out[name] = params.validate()
    except Exception as exc:  # ParamValidationError
        out[name] = "refused: " + type(exc).__name__ + ": " + str(exc)
print("RESULT" + json.dumps(out))
"""


def test_restore_request_form_refuses_bad_input(airflow_home, world, dirs):
    """The trigger form's JSON schema: works required and not blank, tier and days bounded."""
    confs = {
        "empty": {"works": ""},
        "blank": {"works": "   \n "},
        "tier": {"works": "W1", "tier": "Fast"},
        "days": {"works": "W1", "days": 99},
        "good": {"works": "W1\nW2"},
    }
    result = subprocess.run(
        [
            str(VENV_BIN / "python"),
            "-c",
            FORM_CHECK,
            str(DAGS / "restore_request_dag.py"),
            json.dumps(confs),
        ],
        env=airflow_env(airflow_home, glacier_env(world, dirs["data"], dirs["archive"])),
        capture_output=True,
        text=True,
        timeout=300,
    )
    lines = [ln for ln in result.stdout.splitlines() if ln.startswith("RESULT")]
    assert lines, result.stderr[-3000:]
    out = json.loads(lines[-1].removeprefix("RESULT"))
    for name in ("empty", "blank", "tier", "days"):
        assert str(out[name]).startswith("refused: ParamValidationError"), (name, out[name])
    assert out["good"] == {"works": "W1\nW2", "tier": "Standard", "days": 7}


def test_a_run_started_before_batches_still_maps_its_single_ids():
    """An upgrade while a run is under way: its tasks read the new DAG file, and its poll's
    XCom holds single ids where the new tasks expect batches."""
    from glacier_sync_airflow.runs import as_batch

    assert as_batch(7) == [7] and as_batch([3, 4]) == [3, 4]
