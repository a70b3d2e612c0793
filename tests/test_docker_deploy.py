"""End to end on a real Docker engine: build, deploy, run, re-deploy, upgrade, kill, back up,
restore into a second instance, sign in with roles, roll back.

The tests run in order on two Compose stacks that live for the whole module (each step needs the
state the previous one left): stack A (dev, SimpleAuthManager, with a moto S3/SQS server) is
deployed from the *previous release* (the commit before the newest progress-database migration:
its deploy.sh, Compose file, DAGs and code, on this image's dependencies) and upgraded to this
one; stack B (FAB sign-in, CeleryExecutor with three workers and Flower) receives A's backup,
carries a burst through its workers while one is killed, and is rolled back to the previous
release. Stand-in base images are built locally (tests/docker/build-test-images.sh): there is
no registry to pull from.
"""

from __future__ import annotations

import base64
import configparser
import hashlib
import json
import os
import re
import shutil
import stat
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import yaml
from airflow_helpers import stop
from airflow_rest import AirflowApi
from cryptography.fernet import Fernet
from demo_world import World, create_world
from docker_stack import AIRFLOW_SERVICES, SYNC_UID, Stack, deploy, run
from helpers import REPO, free_port, make_bag_zip

pytestmark = pytest.mark.docker
NEW_IMAGE, OLD_IMAGE = "bdrc-airflow:e2e-test", "bdrc-airflow:e2e-previous"
# A secret key of its own (moto takes any), so that a search for it finds nothing else.
AWS_SECRET = "e2e-aws-secret-" + base64.b32encode(os.urandom(10)).decode().lower()
EVENT_DAG = "sqs_event_dag"  # on by default: restore events start its runs, nobody triggers
PROBE_DAG = '''"""A DAG added by a re-deploy of the running stack (tests/test_docker_deploy.py)."""
from airflow.sdk import dag, task


@dag(schedule=None, tags=["e2e"])
def e2e_probe():
    @task
    def hello():
        return 1

    hello()


e2e_probe()
'''
PREVIOUS_IMAGE_DOCKERFILE = f"""FROM {NEW_IMAGE}
USER 0
ARG SITE=/opt/airflow/venv/lib/python3.11/site-packages
RUN rm -rf $SITE/glacier_sync $SITE/glacier_sync_airflow /opt/bdrc/sync-scripts/* \\
    /opt/airflow/dags/*
COPY src/glacier_sync/ $SITE/glacier_sync/
COPY src/glacier_sync_airflow/ $SITE/glacier_sync_airflow/
COPY src/glacier_sync/sync_scripts/ /opt/bdrc/sync-scripts/
COPY dags/ /opt/airflow/dags/
RUN python -m compileall -q $SITE/glacier_sync $SITE/glacier_sync_airflow \\
    && chmod -R a+rX $SITE/glacier_sync $SITE/glacier_sync_airflow /opt/bdrc/sync-scripts \\
        /opt/airflow/dags
USER 50000:0
"""


def _docker_client():
    try:
        import docker

        client = docker.from_env()
        client.ping()
        return client
    except Exception as exc:
        if os.environ.get("CI"):
            pytest.fail(f"the Docker engine is required in CI: {exc}")
        pytest.skip(f"no Docker engine: {exc}")


def _checkout(tmp: Path) -> Path:
    """A copy of the deployment files of this checkout, to change a DAG in (the repo stays)."""
    copy = tmp / "checkout"
    ignore = shutil.ignore_patterns("__pycache__", "*.egg-info")
    for name in ("dags", "src", "scripts"):
        shutil.copytree(REPO / name, copy / name, ignore=ignore)
    for name in ("deploy.sh", "bdrc-docker-compose.yml"):
        shutil.copy2(REPO / name, copy / name)
    return copy


def _http_status(
    url: str, method: str = "GET", token: str | None = None, body=None, **more_headers: str
) -> int:
    headers = {"Content-Type": "application/json", **more_headers}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=30) as response:  # noqa: S310
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code


def _json(url: str, token: str) -> dict:
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(request, timeout=30) as response:  # noqa: S310
        return json.loads(response.read())


def _tree(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def _build_images(tmp: Path) -> None:
    """The stand-ins, this image and the previous release's, with what can overlap overlapped:
    the wheelhouse is filled on the host while debootstrap makes the base image, and the
    pipeline's image builds beside the other stand-ins (each needs only the base image)."""
    stand_ins = ["bash", str(REPO / "tests" / "docker" / "build-test-images.sh")]
    build = tmp / "build"
    bdrc_docker = ["bash", str(REPO / "bdrc-docker.sh"), "--build-dir", str(build)]
    prepare = _started(
        [
            *bdrc_docker,
            "--rebuild",
            "--base-image",
            "bdrc-test/bookworm-python:3.11",
            "--image",
            NEW_IMAGE,
            "--prepare-only",
        ],
        tmp / "prepare.log",
    )
    _beside(prepare, lambda: run([*stand_ins, "base"], timeout=1800))
    _finished(prepare, tmp / "prepare.log", timeout=1200)
    others = _started([*stand_ins, "postgres", "redis", "moto"], tmp / "stand-ins.log")
    _beside(others, lambda: run([*bdrc_docker, "--build-only"], timeout=2400))
    _finished(others, tmp / "stand-ins.log", timeout=1800)
    context = _previous_release(tmp)
    (context / "Dockerfile.previous").write_text(PREVIOUS_IMAGE_DOCKERFILE)
    run(
        ["docker", "build", "-q", "-f", str(context / "Dockerfile.previous"), "-t", OLD_IMAGE]
        + [str(context)],
        timeout=600,
    )


def _started(cmd: list[str], log: Path) -> subprocess.Popen:
    """``cmd`` running in the background in a process group of its own, its output in ``log``."""
    with log.open("wb") as out:
        return subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)


def _beside(process: subprocess.Popen, step) -> None:
    """Run ``step`` while ``process`` runs; stop ``process`` if the step fails."""
    try:
        step()
    except BaseException:
        stop(process, timeout=30)
        raise


def _finished(process: subprocess.Popen, log: Path, timeout: float) -> None:
    """Wait for a `_started` command; its log's tail in the failure if it failed (or is
    stopped, when it outlives ``timeout``)."""
    try:
        code = process.wait(timeout=timeout)
    except BaseException:
        stop(process, timeout=30)
        raise
    tail = log.read_text(errors="replace")[-4000:]
    assert code == 0, f"{' '.join(map(str, process.args))} failed ({code}):\n{tail}"


def _previous_release(tmp: Path) -> Path:
    """The release before the newest progress-database migration: the tree of the parent of
    the commit that added it (git archive), with its own DAGs, deploy.sh and Compose file."""
    git = ["git", "-C", str(REPO)]
    shallow = run([*git, "rev-parse", "--is-shallow-repository"]).stdout.strip() == "true"
    if shallow:  # a shallow clone lacks the previous release: fetch the history once
        fetched = run([*git, "fetch", "--unshallow", "--quiet"], check=False, timeout=600)
        assert fetched.returncode == 0, (
            "the Docker test needs the git history (the previous release is deployed first): "
            f"clone without --depth; git fetch --unshallow said: {fetched.stderr.strip()}"
        )
    versions = sorted((REPO / "src" / "glacier_sync" / "migrations" / "versions").glob("0*.py"))
    newest = str(versions[-1].relative_to(REPO))
    added = run(
        ["git", "-C", str(REPO), "log", "--diff-filter=A", "--format=%H", "-1", "--", newest]
    ).stdout.strip()
    assert added, f"{newest} is not committed: the previous release is the commit before it"
    dest = tmp / "previous-release"
    dest.mkdir()
    tree = subprocess.run(
        ["git", "-C", str(REPO), "archive", f"{added}^"], capture_output=True, check=True
    )
    subprocess.run(["tar", "-x", "-C", str(dest)], input=tree.stdout, check=True)
    return dest


def _override_b(e2e) -> Path:
    """Stack B's own moto server; its workers read the fault file; a killed worker's task is
    found dead within a minute, and one it had taken but not started is queued again within
    about two (Airflow's defaults: 5 minutes, and 10 to 12)."""
    port = free_port()
    e2e["moto_b"] = f"http://127.0.0.1:{port}"
    override = e2e["tmp"] / "docker-compose.test-b.yaml"
    override.write_text(f"""version: "3.9"
services:
  moto:
    image: bdrc-test/moto:5.2.5
    ports:
      - "127.0.0.1:{port}:5000"
  airflow-scheduler:
    environment:
      AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT: "45"
      AIRFLOW__SCHEDULER__ORPHANED_TASKS_CHECK_INTERVAL: "20"
      AIRFLOW__SCHEDULER__TASK_QUEUED_TIMEOUT: "120"
      AIRFLOW__SCHEDULER__TASK_QUEUED_TIMEOUT_CHECK_INTERVAL: "15"
  airflow-worker:
    environment:
      GLACIER_SYNC_FAULT_FILE: /opt/airflow/data/fault
""")
    return override


def _archive(tmp: Path, name: str) -> Path:
    archive = tmp / name
    archive.mkdir()
    os.chown(archive, SYNC_UID, 0)  # as an operator does: the sync user writes the archive
    return archive


@pytest.fixture(scope="module")
def e2e(tmp_path_factory):
    """The stacks of the module; their images removed at the end however the module ends
    (the stand-in base images stay: a build cache, see scripts/clean-test-leftovers.sh)."""
    client = _docker_client()
    tmp = tmp_path_factory.mktemp("docker-e2e")
    try:
        yield from _deployed(client, tmp)
    finally:
        _remove_images(client)


def _remove_images(client) -> None:
    """The images this module built under its own tags, and the untagged layers they left."""
    for image in (NEW_IMAGE, OLD_IMAGE):
        subprocess.run(["docker", "rmi", "-f", image], capture_output=True, check=False)
    client.images.prune(filters={"dangling": True})
    left = [t for i in client.images.list() for t in i.tags if t in (NEW_IMAGE, OLD_IMAGE)]
    assert not left, f"images left behind: {left}"


def _deployed(client, tmp: Path):
    started = time.monotonic()
    _build_images(tmp)
    creds = tmp / "aws-credentials"
    creds.write_text(
        "[default]\naws_access_key_id = testing\n"
        f"aws_secret_access_key = {AWS_SECRET}\nregion_name = us-east-1\n"
    )
    config = tmp / "glacier-sync.toml"
    # Only the runs the tests trigger (no schedule); short leases and retry delays, so that a
    # killed scheduler's work is taken over within a minute.
    config.write_text(
        'sqs_schedule = "None"\nsqs_wait_seconds = 2\nclaim_lease_minutes = 0.5\n'
        "task_retries = 3\ntask_retry_delay_seconds = 5\nmax_messages_per_run = 50\n"
        '[[queues]]\nname = "e2e"\n'
        'queue_url = "http://moto:5000/123456789012/restores"\n'
        'region = "us-east-1"\nbucket = "archive.e2e.example"\nprofile = "default"\n'
    )
    inputs = {"creds": creds, "config": config}
    ui_port, moto_port = free_port(), free_port()
    override = tmp / "docker-compose.test.yaml"
    override.write_text(f"""version: "3.9"
services:
  moto:
    image: bdrc-test/moto:5.2.5
    ports:
      - "127.0.0.1:{moto_port}:5000"
  airflow-scheduler:
    environment:
      GLACIER_SYNC_FAULT_FILE: /opt/airflow/data/fault
      AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT: "45"
      AIRFLOW__SCHEDULER__ORPHANED_TASKS_CHECK_INTERVAL: "20"
""")
    archive = _archive(tmp, "archive-a")
    stack = Stack(tmp / "instance-a", "bdrc-e2e-a", ui_port, override)
    result = deploy(
        tmp / "previous-release",
        stack.dest,
        inputs,
        "--arch-root",
        str(archive),
        "--aws-endpoint-url",
        "http://moto:5000",
        "--image",
        OLD_IMAGE,
        "--ui-port",
        str(ui_port),
        "--project-name",
        stack.project,
    )
    assert "Compose project bdrc-e2e-a" in result.stdout
    state = {
        "client": client,
        "a": stack,
        "inputs": inputs,
        "archive": archive,
        "moto": f"http://127.0.0.1:{moto_port}",
        "tmp": tmp,
        "stacks": [stack],
    }
    stack.compose("down", "-v", "--remove-orphans", check=False)
    try:
        stack.compose("up", "-d")
        stack.wait_healthy(client)
        yield state
    except BaseException:
        print(stack.logs())
        raise
    finally:
        for each in state["stacks"]:
            if os.environ.get("KEEP_E2E_LOGS", "1") == "1":
                each.logs()
            each.compose("down", "-v", "--remove-orphans", check=False)
        print(f"docker end-to-end: {time.monotonic() - started:.0f} s in all")


def _needs(e2e, *keys: str) -> None:
    missing = [k for k in keys if k not in e2e]
    if missing:
        pytest.skip(f"needs the state an earlier test left ({', '.join(missing)})")


def _world(e2e) -> World:
    world = create_world(e2e["moto"], bucket="archive.e2e.example", queue="restores")
    assert world.queue_url.endswith("/123456789012/restores")
    return world


def _restore(e2e, work: str) -> Path:
    zip_path = make_bag_zip(
        e2e["tmp"] / "bags", work, files={"a.txt": b"A" * 3000, "b/c.txt": b"C"}
    )
    key = f"Archive0/00/{work}/{work}.bag.zip"
    world = _world(e2e)
    world.upload_archived(zip_path, key)
    world.restore(key)
    return e2e["archive"] / "Archive0" / "00" / work


def _wait_event_run(api: AirflowApi, archived: Path, timeout: float) -> dict:
    """The event-driven run that archived the work (started by the watcher, not by hand)."""
    deadline = time.monotonic() + timeout
    while True:
        runs = api.runs(EVENT_DAG)
        done = [r for r in runs if r["state"] in ("success", "failed")]
        if archived.exists() and done and all(r["state"] != "running" for r in runs[-1:]):
            assert {r["run_type"] for r in runs} == {"asset_triggered"}, runs
            return done[-1]
        assert time.monotonic() < deadline, f"no event-driven run archived {archived}: {runs}"
        time.sleep(3)


def _leftovers(archive: Path) -> list[str]:
    """Anything half-written: staging copies, replaced copies, partial names."""
    return [
        str(p.relative_to(archive))
        for p in archive.rglob("*")
        if any(mark in p.name for mark in (".syncing.", ".replaced.", ".partial", ".part"))
    ]


def test_restore_event_is_archived_by_the_compose_stack(e2e):
    stack = e2e["a"]
    try:
        archived = _restore(e2e, "W1E2E")
        api = stack.api()
        dag = api.wait_for_dag(EVENT_DAG)
        assert dag["is_paused"] is False, "the event-driven path is on by default"
        result = _wait_event_run(api, archived, timeout=420)
        run_id = result["dag_run_id"]
        assert result["state"] == "success", api.task_states(EVENT_DAG, run_id)
        files = [p for p in archived.rglob("*") if p.is_file()]
        assert files and (archived / "W1E2E.bag" / "bagit.txt").is_file()
        assert {p.stat().st_uid for p in [archived, *files]} == {SYNC_UID}
        row = stack.status("W1E2E")["W1E2E"]
        assert row["state"] == "synced" and row["archive_path"] == "/mnt/Archive0/00/W1E2E"
        assert row.get("archive_host_path", str(archived)) == str(archived)
        incoming = stack.dest / "data" / "incoming"
        left = list(incoming.rglob("*")) if incoming.exists() else []
        assert left == [], "nothing stays in incoming/ after a sync, not even empty folders"
        assert "Password for user" not in stack.logs("airflow-apiserver")
        e2e["run_id"], e2e["w1"] = run_id, _tree(archived)
    except BaseException:
        print(stack.logs())
        raise


def test_redeploy_shows_a_new_dag_without_restart_then_upgrade_and_admin_rename(e2e):
    """A re-deploy of the running stack: the new DAG file appears in the running containers
    (same bind mount) with no restart; a new image and admin name are applied by `up -d`,
    where airflow-init migrates the progress database once, keeping rows and runs."""
    _needs(e2e, "run_id")
    stack, client = e2e["a"], e2e["client"]
    started = stack.started_at(client)
    checkout = _checkout(e2e["tmp"])
    (checkout / "dags" / "e2e_probe.py").write_text(PROBE_DAG)
    before = stack.exec("glacier-sync", "db", "current").stdout
    result = deploy(
        checkout,
        stack.dest,
        e2e["inputs"],
        "--arch-root",
        str(e2e["archive"]),
        "--aws-endpoint-url",
        "http://moto:5000",
        "--image",
        NEW_IMAGE,
        "--ui-port",
        str(stack.ui_port),
        "--admin-user",
        "opsadmin",
    )
    assert "edited by hand" not in result.stdout, result.stdout
    assert "the stack bdrc-e2e-a is running" in result.stdout
    assert "docker compose up -d" in result.stdout and "DAG_REFRESH_SECONDS" in result.stdout
    env = (stack.dest / ".env").read_text()
    assert f"BDRC_IMAGE={NEW_IMAGE}" in env and "AIRFLOW_ADMIN_USER=admin\n" not in env
    try:
        api = stack.api(user="admin")  # the running stack still has the old admin name
        api.wait_for_dag("e2e_probe", timeout=240)
        assert stack.started_at(client) == started, "the new DAG needed no restart"

        stack.compose("up", "-d")
        stack.wait_healthy(client)
        password = (stack.dest / "secrets" / "airflow_admin_password").read_text()
        assert stack.api(user="opsadmin").run(EVENT_DAG, e2e["run_id"])["state"] == ("success"), (
            "the metadata database kept the run"
        )
        with pytest.raises(urllib.error.HTTPError) as refused:
            stack.api(user="admin", password=password)
        assert refused.value.code == 401
        logs = stack.logs()
        assert password.strip() not in logs and "Password for user" not in logs
        migrations = [line for line in logs.splitlines() if ": upgraded from " in line]
        assert len(migrations) == 1 and migrations[0].startswith("airflow-init"), (
            "airflow-init upgraded the progress database, once (the services, which start after"
            " it, would migrate silently: their open finds it current)",
            migrations,
        )
        after = stack.exec("glacier-sync", "db", "current").stdout
        assert before != after and "up to date" in after.lower(), (before, after)
        row = stack.status("W1E2E")["W1E2E"]
        assert row["state"] == "synced", "the progress rows survived the migration"
        assert _tree(e2e["archive"] / "Archive0" / "00" / "W1E2E") == e2e["w1"]
        e2e["upgraded"] = True
    except BaseException:
        print(stack.logs())
        raise


def test_scheduler_killed_in_the_middle_of_a_sync(e2e):
    """`docker kill` of the scheduler (which runs the tasks) while the sync script has copied
    half-way: after `up -d` the work is archived exactly once and nothing half-written stays."""
    _needs(e2e, "upgraded")
    stack, client = e2e["a"], e2e["client"]
    fault = stack.dest / "data" / "fault"
    try:
        archived = _restore(e2e, "W2E2E")
        fault.write_text("sync:copied pause\n")
        api = stack.api()
        runs_before = len(api.runs(EVENT_DAG))
        paused = fault.with_name("fault.paused")
        deadline = time.monotonic() + 300
        while not paused.exists():
            assert time.monotonic() < deadline, api.runs(EVENT_DAG)[runs_before:]
            time.sleep(1)
        running = [r for r in api.runs(EVENT_DAG)[runs_before:] if r["state"] == "running"]
        assert len(running) == 1, running
        staging = [p.name for p in archived.parent.iterdir() if ".syncing." in p.name]
        assert staging and not archived.exists(), "paused with a half-made copy in the archive"
        stack.containers(client)["airflow-scheduler"].kill()
        paused.unlink()
        stack.compose("up", "-d")
        stack.wait_healthy(client)
        run_id = running[0]["dag_run_id"]
        result = api.wait_for_run(EVENT_DAG, run_id, timeout=600)
        assert result["state"] == "success", api.task_states(EVENT_DAG, run_id)
        assert (archived / "a.txt").read_bytes() == b"A" * 3000
        assert sorted(p.name for p in archived.parent.iterdir()) == ["W1E2E", "W2E2E"]
        assert _leftovers(e2e["archive"]) == []
        assert stack.status("W2E2E")["W2E2E"]["state"] == "synced"
        e2e["w2"] = _tree(archived)
    except BaseException:
        print(stack.logs())
        raise


def test_backup_then_restore_into_a_second_instance_with_fab_roles(e2e):
    _needs(e2e, "w2")
    a, client, tmp = e2e["a"], e2e["client"], e2e["tmp"]
    backup = tmp / "backups" / "a.tar"
    made = a.admin("backup", "--out", str(backup))
    assert "backup written" in made.stdout
    assert stat.S_IMODE(backup.stat().st_mode) == 0o600

    clash = deploy(
        REPO, tmp / "instance-c", e2e["inputs"], "--project-name", a.project, check=False
    )
    assert clash.returncode == 2 and f"belongs to the instance in {a.dest}" in clash.stderr
    assert not (tmp / "instance-c").exists()
    # A new project name for A (even with --force) would start it on an empty database.
    env_before = (a.dest / ".env").read_text()
    moved = deploy(
        REPO, a.dest, e2e["inputs"], "--project-name", "bdrc-e2e-moved", "--force", check=False
    )
    assert moved.returncode == 2, moved.stdout + moved.stderr
    assert "would start this instance on an empty database" in moved.stderr
    assert f"{a.project}_postgres-db" in moved.stderr and len(moved.stderr.splitlines()) == 1
    assert (a.dest / ".env").read_text() == env_before, "nothing written"

    b = Stack(tmp / "instance-b", "bdrc-e2e-b", free_port(), _override_b(e2e), workers=3)
    archive_b = _archive(tmp, "archive-b")
    flower_port = free_port()
    # Notices configured by deploy.sh (nothing is due in these tests: nothing is sent).
    smtp_password, webhook = tmp / "smtp-password", tmp / "webhook-url"
    smtp_password.write_text("e2e-smtp-" + AWS_SECRET[-16:] + "\n")
    webhook.write_text("http://127.0.0.1:9/hook/e2e-webhook-" + AWS_SECRET[-16:] + "\n")
    deploy(
        REPO,
        b.dest,
        e2e["inputs"],
        "--arch-root",
        str(archive_b),
        "--aws-endpoint-url",
        "http://moto:5000",
        "--image",
        NEW_IMAGE,
        "--ui-port",
        str(b.ui_port),
        "--auth",
        "fab",
        "--project-name",
        b.project,
        "--executor",
        "celery",
        "--workers",
        "3",
        "--worker-concurrency",
        "4",
        "--flower",
        "on",
        "--flower-port",
        str(flower_port),
        "--redis-image",
        "bdrc-test/redis:7",
        "--alert-email-to",
        "ops@e2e.example,lead@e2e.example",
        "--alert-email-from",
        "glacier-sync@e2e.example",
        "--smtp",
        "mail.e2e.example:587",
        "--smtp-user",
        "glacier",
        "--smtp-password-file",
        str(smtp_password),
        "--alert-webhook-url-file",
        str(webhook),
    )
    e2e["stacks"].append(b)
    e2e["archive_b"], e2e["flower"] = archive_b, f"http://127.0.0.1:{flower_port}"
    try:
        b.compose("up", "-d")
        b.wait_healthy(client)
        # The broker asks for its password (the healthcheck pings with it): without, NOAUTH.
        anonymous = b.compose("exec", "-T", "redis", "redis-cli", "ping", check=False)
        said = anonymous.stdout + anonymous.stderr
        assert "NOAUTH" in said and "PONG" not in said, said
        # The notice settings as the pipeline reads them in the stack (the scheduler), secrets
        # included.
        alerts = json.loads(b.exec("python", "-c", ALERT_SETTINGS).stdout)
        assert alerts == {
            "to": ["ops@e2e.example", "lead@e2e.example"],
            "smtp": ["mail.e2e.example", 587, "glacier", True],
            "password": smtp_password.read_text().strip(),
            "webhook": webhook.read_text().strip(),
            "ui": f"http://localhost:{b.ui_port}",
        }
        restored = b.admin("restore", "--from", str(backup))
        assert "restored" in restored.stdout, restored.stdout + restored.stderr
        b.wait_healthy(client)
        api = b.api()
        assert api.run(EVENT_DAG, e2e["run_id"])["state"] == "success"
        rows = b.status("W1E2E", "W2E2E")
        assert {w: r["state"] for w, r in rows.items()} == {"W1E2E": "synced", "W2E2E": "synced"}
        mine = {c.labels["com.docker.compose.project"] for c in b.containers(client).values()}
        assert mine == {b.project} and a.containers(client), "two instances side by side"
        # B now holds runs and works: another restore asks for --yes and changes nothing.
        started = b.started_at(client)
        again = b.admin("restore", "--from", str(backup), check=False)
        assert again.returncode == 2 and "re-run with --yes" in again.stderr, again.stderr
        assert len(again.stderr.splitlines()) == 1, again.stderr
        assert not list((b.dest / "backups").glob("*before-restore*")), "no safety backup made"
        assert b.started_at(client) == started, "no service stopped"

        base = f"http://127.0.0.1:{b.ui_port}"
        assert _http_status(f"{base}/api/v2/dags") == 401
        b.admin("user", "add", "viewer1", "--role", "Viewer", stdin="viewer-pass-1\n")
        b.admin("user", "add", "op1", "--role", "Op", stdin="op-pass-123\n")
        listed = json.loads(b.admin("user", "list").stdout)
        assert {u["username"]: u["roles"] for u in listed}["viewer1"] == ["Viewer"]
        dag = f"{base}/api/v2/dags/down_scheduled_dag"
        viewer = b.api(user="viewer1", password="viewer-pass-1").token
        operator = b.api(user="op1", password="op-pass-123").token
        assert _http_status(dag, token=viewer) == 200
        assert _http_status(dag, "PATCH", viewer, {"is_paused": False}) == 403
        assert _http_status(f"{dag}/dagRuns", "POST", viewer, {"logical_date": None}) == 403
        assert _http_status(dag, "PATCH", operator, {"is_paused": False}) == 200
        assert _http_status(f"{dag}/dagRuns", "POST", operator, {"logical_date": None}) == 200
        # The Works view (a plugin in the image) answers with the same FAB roles.
        works = f"{base}/glacier-works/api"
        assert _http_status(f"{works}/board") == 401
        assert _http_status(f"{works}/board", token=viewer) == 200
        found = _json(f"{works}/works?q=w1e2", viewer)["works"]
        assert [(w["work_id"], w["state"]) for w in found] == [("W1E2E", "synced")]
        assert _json(f"{works}/board", viewer)["may_retry"] is False
        assert _json(f"{works}/board", operator)["may_retry"] is True
        action = {"X-Requested-By": "glacier-works"}
        retry = f"{works}/works/W1E2E/retry"
        assert _http_status(retry, "POST", viewer, **action) == 403
        assert _http_status(retry, "POST", operator) == 400, "an action needs its header"
        assert _http_status(retry, "POST", operator, **action) == 404, "W1E2E is archived"
        assert _http_status(f"{base}/glacier-works/") == 200, "the page itself holds no data"
        refused = b.admin("user", "remove", "admin", check=False)
        assert refused.returncode == 2 and "last Admin" in refused.stderr
        e2e["b"] = b
        # A's part is done: stopped (not removed: the secret search reads its containers and
        # logs), it leaves the cores to B's workers.
        a.compose("stop")
    except BaseException:
        print(b.logs())
        raise


ALERT_SETTINGS = """
import json
from glacier_sync.settings import load_settings
s = load_settings()
print(json.dumps({"to": s.alert_email_to,
                  "smtp": [s.alert_smtp_host, s.alert_smtp_port, s.alert_smtp_user,
                           s.alert_smtp_starttls],
                  "password": s.alert_smtp_password_file.read_text().strip(),
                  "webhook": s.webhook_url().get_secret_value(), "ui": s.ui_base_url}))
"""

SYNC_COUNTS = """
import json
from glacier_sync.runner import open_store
from glacier_sync.settings import load_settings
rows = open_store(load_settings()).find()
print(json.dumps({r.work_id: [r.state, [h["event"] for h in r.history].count("sync done")]
                  for r in rows}))
"""


def _flower(base: str, path: str, password: str | None = None) -> tuple[int, object]:
    request = urllib.request.Request(base + path)
    if password:
        token = base64.b64encode(f"flower:{password}".encode()).decode()
        request.add_header("Authorization", f"Basic {token}")
    try:
        with urllib.request.urlopen(request, timeout=30) as response:  # noqa: S310
            return response.status, json.loads(response.read() or b"null")
    except urllib.error.HTTPError as exc:
        return exc.code, None


BURST = 200  # works in the Celery burst (in batches: a download, a debag and a sync task each)


def test_celery_workers_share_a_burst_and_survive_a_killed_worker(e2e):
    """Three Celery workers (healthy, seen by Flower) carry a burst of restore events; one is
    `docker kill`ed while its sync has half-copied a work; the others finish every work, each
    synced exactly once, nothing half-written. A worker that does not see the shared data
    folder refuses to start."""
    _needs(e2e, "b")
    b, client, tmp = e2e["b"], e2e["client"], e2e["tmp"]
    try:
        password = (b.dest / "secrets" / "flower_password").read_text().strip()
        assert _flower(e2e["flower"], "/api/workers")[0] == 401, "Flower asks for a password"
        deadline = time.monotonic() + 120
        while True:
            status, workers = _flower(e2e["flower"], "/api/workers?refresh=1", password)
            if status == 200 and len(workers or {}) == 3:
                break
            assert time.monotonic() < deadline, (status, workers)
            time.sleep(5)

        # A worker on "another machine" whose data/ and processing/ are empty local folders
        # (the shared mounts missing): the worker service's own command, the instance's
        # settings, no network. It must stop at once, naming the folder, and write nothing.
        lonely = tmp / "lonely-machine"
        for sub in ("data", "processing"):
            (lonely / sub).mkdir(parents=True)
            os.chown(lonely / sub, SYNC_UID, 0)
        compose = yaml.safe_load((b.dest / "docker-compose.yaml").read_text())
        command = compose["services"]["airflow-worker"]["command"]
        env = b.env()
        refused = run(
            [
                "docker",
                "run",
                "--rm",
                "--network",
                "none",
                "--user",
                f"{SYNC_UID}:0",
                "-e",
                f"GLACIER_SYNC_INSTANCE_ID={env['GLACIER_SYNC_INSTANCE_ID']}",
                "-e",
                "GLACIER_SYNC_CONFIG=/opt/airflow/config/glacier-sync.toml",
                "-e",
                "GLACIER_SYNC_DATA_ROOT=/opt/airflow/data",
                "-e",
                "GLACIER_SYNC_WORK_ROOT=/opt/airflow/processing",
                "-v",
                f"{b.dest / 'config'}:/opt/airflow/config:ro",
                "-v",
                f"{lonely / 'data'}:/opt/airflow/data",
                "-v",
                f"{lonely / 'processing'}:/opt/airflow/processing",
                env["BDRC_IMAGE"],
                *command,
            ],
            check=False,
            timeout=120,
        )
        assert refused.returncode == 1, (refused.stdout, refused.stderr)
        assert "holds no mark" in refused.stderr and "mount it here" in refused.stderr
        assert not [p for p in lonely.rglob("*") if p.is_file()], "the refused worker wrote nothing"

        world = create_world(e2e["moto_b"], bucket="archive.e2e.example", queue="restores")
        e2e["world_b"] = world
        fault = b.dest / "data" / "fault"
        fault.write_text("sync:copied pause\n")
        works = [f"W3CEL{i:03d}" for i in range(BURST)]
        for work in works:
            zip_path = make_bag_zip(tmp / "bags-b", work, files={"a.txt": work.encode() * 100})
            key = f"Archive1/{work[-2:]}/{work}/{work}.bag.zip"
            world.upload_archived(zip_path, key)
            world.restore(key)
        paused = fault.with_name("fault.paused")
        deadline = time.monotonic() + 420
        while not paused.exists():
            assert time.monotonic() < deadline, "no sync reached the pause point"
            time.sleep(1)
        host = fault.with_name("fault.host").read_text().strip()
        victims = [w for w in b.worker_containers(client) if w.attrs["Config"]["Hostname"] == host]
        assert len(victims) == 1, (host, [w.name for w in b.worker_containers(client)])
        victims[0].kill()
        paused.unlink()

        api = b.api()
        deadline = time.monotonic() + 900
        while True:
            counts = json.loads(b.exec("python", "-c", SYNC_COUNTS).stdout)
            done = [w for w in works if counts.get(w, [None])[0] == "synced"]
            runs = api.runs(EVENT_DAG)
            if len(done) == BURST and not [r for r in runs if r["state"] in ("running", "queued")]:
                break
            assert time.monotonic() < deadline, (len(done), counts, runs[-3:])
            time.sleep(10)
        assert {w: counts[w] for w in works} == {w: ["synced", 1] for w in works}
        archive = e2e["archive_b"]
        for work in works:
            assert (archive / "Archive1" / work[-2:] / work / "a.txt").read_bytes() == (
                work.encode() * 100
            )
        assert _leftovers(archive) == []
        assert world.queue_count() == 0, "every event recorded and deleted"
        served = {
            w.attrs["Config"]["Hostname"]
            for w in b.worker_containers(client)
            if "Task" in (w.logs(tail=2000) or b"").decode(errors="replace")
        }
        assert len(served) >= 2, "the burst was spread over the workers"
    except BaseException:
        print(b.logs())
        raise
    finally:
        b.compose("up", "-d")  # the killed worker back, for the rollback
        b.wait_healthy(client)


ROTATED = {  # deploy.sh rotate's names -> the files they replace
    "fernet": "airflow_fernet_key",
    "jwt": "airflow_jwt_secret",
    "api-secret": "airflow_api_secret_key",
    "admin-password": "airflow_admin_password",
    "postgres": "postgres_password",
    "redis": "redis_password",
    "flower": "flower_password",
    "aws": "aws",
}


KILL_AT = "BDRC_ROTATE_KILL_AT"  # scripts/rotate-secrets.sh's test hook


def _state(b: Stack, work: str) -> str | None:
    """The work's state in the progress database, None while it has no row."""
    shown = b.exec("glacier-sync", "status", work, "--json", check=False)
    if "no progress row" in shown.stdout + shown.stderr:
        return None
    assert shown.returncode == 0, shown.stdout + shown.stderr
    return json.loads(shown.stdout)[0]["state"]


def _mode_and_owner(path: Path) -> tuple[int, int, int]:
    info = path.stat()
    return stat.S_IMODE(info.st_mode), info.st_uid, info.st_gid


def _refused_by_postgres(b: Stack, password: str) -> bool:
    """A TCP sign-in to the stack's PostgreSQL with ``password`` is refused (True) or not."""
    tried = b.compose(
        *("exec", "-T", "-e", f"PGPASSWORD={password}", "postgres"),
        *("psql", "-h", "127.0.0.1", "-U", "airflow", "-d", "airflow", "-tAc", "SELECT 1"),
        check=False,
    )
    if tried.returncode == 0:
        assert tried.stdout.strip() == "1", tried.stdout
        return False
    assert "password authentication failed" in tried.stderr, tried.stderr
    return True


def _redis_answer(b: Stack, password: str) -> str:
    said = b.compose(
        "exec", "-T", "-e", f"REDISCLI_AUTH={password}", "redis", "redis-cli", "ping", check=False
    )
    return said.stdout + said.stderr


def test_every_secret_rotated_on_the_running_stack(e2e):
    """``deploy.sh rotate all aws`` on stack B (FAB, Celery, Flower) while it runs: each old
    secret stops working where it was used (PostgreSQL, Redis, Flower, the admin's sign-in, a
    token signed with the old JWT secret), a connection encrypted with the old fernet key still
    reads and is re-encrypted with the new one, nothing secret is printed, and a restore event
    afterwards is archived through the recreated workers."""
    _needs(e2e, "b")
    b, client, tmp = e2e["b"], e2e["client"], e2e["tmp"]
    secrets = b.dest / "secrets"
    try:
        b.exec(
            *("airflow", "connections", "add", "rotation_probe", "--conn-type", "http"),
            *("--conn-password", "probe-pass-before-rotation"),
        )
        old = {name: (secrets / file).read_text() for name, file in ROTATED.items()}
        old_token = b.api().token
        base = f"http://127.0.0.1:{b.ui_port}"
        assert _http_status(f"{base}/api/v2/dags", token=old_token) == 200
        creds = tmp / "aws-credentials-rotated"
        creds.write_text(
            "[default]\naws_access_key_id = rotated\n"
            f"aws_secret_access_key = rotated-{AWS_SECRET}\nregion_name = us-east-1\n"
        )
        refused = b.admin("rotate", "redis", "nope", check=False)
        assert refused.returncode == 2 and "unknown secret 'nope'" in refused.stderr
        modes = {f: _mode_and_owner(secrets / f) for f in (*ROTATED.values(), "redis_conf")}

        # Killed with -9 between PostgreSQL's new password and the files: the server has it,
        # the files not yet; another rotation is refused until this one is finished.
        killed = b.admin("rotate", "postgres", check=False, env={KILL_AT: "postgres:altered"})
        assert killed.returncode == -9, killed.stdout + killed.stderr
        assert (secrets / "postgres_password").read_text() == old["postgres"]
        assert _refused_by_postgres(b, old["postgres"])
        refused = b.admin("rotate", "jwt", check=False)
        assert (
            refused.returncode == 2 and "a rotation of postgres was interrupted" in refused.stderr
        )

        done = b.admin("rotate", "all", "aws", "--aws-credentials", str(creds))
        said = done.stdout + done.stderr + killed.stdout + killed.stderr
        new = {name: (secrets / file).read_text() for name, file in ROTATED.items()}
        assert "postgres: finishing the interrupted rotation" in done.stdout, said
        assert f"rotated: {' '.join(ROTATED)}" in done.stdout, said
        assert [n for n in ROTATED if new[n] == old[n]] == [], "every secret is new"
        parts = {p for v in (*old.values(), *new.values()) for p in re.split(r"[\s,=]+", v)}
        assert not [p for p in parts if len(p) >= 12 and p in said], said
        assert not (secrets / ".rotating").exists(), "nothing staged is left"
        assert {f: _mode_and_owner(secrets / f) for f in modes} == modes
        b.wait_healthy(client, timeout=60)  # the rotation waited for every recreated service
        assert new["aws"] == creds.read_text()
        keys = new["fernet"].split(",")
        assert keys[1:] == old["fernet"].split(","), "the old fernet key is kept: it decrypts"

        # The connection reads, and its stored form opens with the new key alone.
        shown = json.loads(
            b.exec("airflow", "connections", "get", "rotation_probe", "-o", "json").stdout
        )
        assert shown[0]["password"] == "probe-pass-before-rotation", shown
        stored = b.compose(
            *("exec", "-T", "postgres", "psql", "-U", "airflow", "-d", "airflow", "-tAc"),
            "SELECT password FROM connection WHERE conn_id = 'rotation_probe'",
        ).stdout.strip()
        assert Fernet(keys[0]).decrypt(stored.encode()) == b"probe-pass-before-rotation"

        assert _refused_by_postgres(b, old["postgres"]) and not _refused_by_postgres(
            b, new["postgres"]
        )
        assert "PONG" not in _redis_answer(b, old["redis"]) and "PONG" in _redis_answer(
            b, new["redis"]
        )
        assert _flower(e2e["flower"], "/api/workers", old["flower"])[0] == 401
        assert _flower(e2e["flower"], "/api/workers", new["flower"])[0] == 200
        refused = _http_status(f"{base}/api/v2/dags", token=old_token)
        assert refused in (401, 403), f"a token signed with the old JWT secret: {refused}"
        admin = b.env()["AIRFLOW_ADMIN_USER"]
        assert _http_status(
            f"{base}/auth/token",
            "POST",
            body={"username": admin, "password": old["admin-password"]},
        ) in (401, 403)
        api = b.api()  # the new admin password (read from the secret file)

        # The pipeline through every recreated service: an event, its run, the archive.
        world = e2e.get("world_b") or create_world(
            e2e["moto_b"], bucket="archive.e2e.example", queue="restores"
        )
        work = "W4ROT"
        zip_path = make_bag_zip(tmp / "bags-rotated", work, files={"r.txt": b"rotated"})
        key = f"Archive1/{work[-2:]}/{work}/{work}.bag.zip"
        world.upload_archived(zip_path, key)
        world.restore(key)
        deadline = time.monotonic() + 420
        while (state := _state(b, work)) != "synced":
            assert time.monotonic() < deadline, (state, api.runs(EVENT_DAG)[-3:])
            time.sleep(5)
        archived = e2e["archive_b"] / "Archive1" / work[-2:] / work / "r.txt"
        assert archived.read_bytes() == b"rotated"
    except BaseException:
        print(b.logs())
        raise


def _secret_values(dest: Path) -> dict[str, str]:
    """Every secret of the instance in ``dest`` by name: each file of ``secrets/`` (the AWS
    credentials file by its secret keys; ``redis_conf`` is derived from ``redis_password``)."""
    values = {}
    for file in sorted((dest / "secrets").iterdir()):
        text = file.read_text().strip()
        if file.name == "aws":
            ini = configparser.ConfigParser()
            ini.read_string(text)
            for section in ini.sections():
                for key, value in ini[section].items():
                    if "secret" in key or "token" in key:
                        values[f"aws [{section}] {key}"] = value
        elif file.name != "redis_conf":
            values[file.name] = text
    return {name: value for name, value in values.items() if len(value) >= 12}


def _haystacks(stack: Stack) -> dict[str, str]:
    """What anyone with access to the Docker engine can read of the stack: each container's
    definition (``docker inspect``), each image's layers and settings (``docker history``,
    ``docker image inspect``), and every service's whole log."""
    ids = stack.compose("ps", "-aq").stdout.split()
    assert ids, f"no container of {stack.project}"
    found = {f"docker inspect {i[:12]}": run(["docker", "inspect", i]).stdout for i in ids}
    for image in (NEW_IMAGE, OLD_IMAGE):
        found[f"docker history {image}"] = run(
            ["docker", "history", "--no-trunc", "--format", "{{.CreatedBy}}", image]
        ).stdout
        found[f"docker image inspect {image}"] = run(["docker", "image", "inspect", image]).stdout
    logs = stack.compose("logs", "--no-color", "--timestamps", check=False, timeout=600)
    found[f"docker compose logs of {stack.project}"] = logs.stdout + logs.stderr
    return found


def test_no_secret_in_a_container_definition_an_image_or_a_log(e2e):
    """No secret of either instance (PostgreSQL, fernet, JWT, API, admin, Redis, Flower, the
    AWS secret key) is in what the Docker engine shows: container definitions, image history
    and settings, and the whole logs of every service after all the steps above."""
    _needs(e2e, "b")
    searched, leaks = set(), []
    for stack in e2e["stacks"]:
        secrets = _secret_values(stack.dest)
        searched |= set(secrets)
        for where, text in _haystacks(stack).items():
            leaks += [
                f"{name} of {stack.project} in {where}" for name, v in secrets.items() if v in text
            ]
    assert not leaks, leaks
    assert {
        "postgres_password",
        "airflow_fernet_key",
        "airflow_jwt_secret",
        "airflow_admin_password",
        "redis_password",
        "flower_password",
        "aws [default] aws_secret_access_key",
    } <= searched, searched


def test_rollback_to_the_previous_image(e2e):
    """Documented in docs/upgrading.md: downgrade the progress database with the new image,
    then deploy the previous one."""
    _needs(e2e, "b")
    b, client = e2e["b"], e2e["client"]
    previous = run(
        [
            "docker",
            "run",
            "--rm",
            "--entrypoint",
            "python",
            OLD_IMAGE,
            "-c",
            "import glacier_sync.progress as p; print(p.HEAD_REVISION)",
        ]
    ).stdout.strip()
    try:
        b.compose("stop")  # nothing of the new image may open (and migrate) the database now
        b.compose("up", "-d", "postgres")
        for _ in range(60):
            ready = b.compose("exec", "-T", "postgres", "pg_isready", "-U", "airflow", check=False)
            if ready.returncode == 0:
                break
            time.sleep(1)
        downgraded = b.compose(
            "run",
            "--rm",
            "--no-deps",
            "airflow-scheduler",
            "glacier-sync",
            "db",
            "downgrade",
            previous,
        )
        assert f"to revision {previous}" in downgraded.stdout, downgraded.stdout
        deploy(
            e2e["tmp"] / "previous-release",
            b.dest,
            e2e["inputs"],
            "--arch-root",
            str(e2e["archive_b"]),
            "--image",
            OLD_IMAGE,
            "--ui-port",
            str(b.ui_port),
        )
        # The previous release knows no Celery profile: it runs the LocalExecutor again.
        b.workers, b.healthy = 0, AIRFLOW_SERVICES
        b.compose("up", "-d")
        b.wait_healthy(client)
        assert previous in b.exec("glacier-sync", "db", "current").stdout
        assert b.status("W1E2E")["W1E2E"]["state"] == "synced"
        assert b.api().run(EVENT_DAG, e2e["run_id"])["state"] == "success"
    except BaseException:
        print(b.logs())
        raise
