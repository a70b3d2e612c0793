"""End to end: build the image, deploy a dev instance, run the Compose stack, archive a work.

Needs a Docker engine (scripts/run-tests.sh starts one when it can). Stand-in base images are
built locally (tests/docker/build-test-images.sh): there is no registry to pull from.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest
from airflow_rest import AirflowApi
from demo_world import World, create_world
from helpers import REPO, free_port, make_bag_zip

pytestmark = pytest.mark.docker
PROJECT = "bdrc-e2e"
SYNC_UID = 4242
SERVICES = (
    "postgres",
    "airflow-apiserver",
    "airflow-scheduler",
    "airflow-dag-processor",
    "airflow-triggerer",
    "moto",
)


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


def compose_cmd() -> list[str]:
    probe = subprocess.run(["docker", "compose", "version"], capture_output=True)
    return ["docker", "compose"] if probe.returncode == 0 else ["docker-compose"]


class Stack:
    """One deployed instance and its Compose project."""

    def __init__(self, dest: Path, override: Path) -> None:
        self.dest, self.override = dest, override

    def compose(self, *args: str, check: bool = True, timeout: int = 900):
        cmd = [
            *compose_cmd(),
            "-p",
            PROJECT,
            "-f",
            str(self.dest / "docker-compose.yaml"),
            "-f",
            str(self.override),
            *args,
        ]
        result = subprocess.run(cmd, cwd=self.dest, capture_output=True, text=True, timeout=timeout)
        if check and result.returncode != 0:
            raise AssertionError(f"{' '.join(args)} failed:\n{result.stdout}\n{result.stderr}")
        return result

    def containers(self, client) -> dict[str, object]:
        found = client.containers.list(
            all=True, filters={"label": f"com.docker.compose.project={PROJECT}"}
        )
        return {c.labels["com.docker.compose.service"]: c for c in found}

    def wait_healthy(self, client, timeout: float = 420) -> None:
        deadline = time.monotonic() + timeout
        while True:
            states = {}
            for name, container in self.containers(client).items():
                container.reload()
                health = container.attrs["State"].get("Health", {}).get("Status")
                states[name] = health or container.status
                if name == "airflow-init" and container.status == "exited":
                    code = container.attrs["State"]["ExitCode"]
                    assert code == 0, f"airflow-init exited {code}"
                    states[name] = "done"
            if all(states.get(s) in ("healthy", "running") for s in SERVICES) and all(
                states.get(s) == "healthy" for s in SERVICES if s != "moto"
            ):
                return
            assert time.monotonic() < deadline, f"not healthy in time: {states}"
            time.sleep(5)

    def logs(self) -> str:
        """Every service's logs (also saved in test-artifacts/docker-e2e-logs.txt)."""
        text = self.compose("logs", "--no-color", "--tail", "300", check=False).stdout
        artifacts = REPO / "test-artifacts"
        artifacts.mkdir(exist_ok=True)
        (artifacts / "docker-e2e-logs.txt").write_text(text)
        return text


def _deploy(dest: Path, inputs: dict, image: str, ui_port: int) -> None:
    env = {**os.environ, "POSTGRES_IMAGE": "bdrc-test/postgres:15"}
    result = subprocess.run(
        [
            "bash",
            str(REPO / "deploy.sh"),
            "--dest",
            str(dest),
            "--env",
            "dev",
            "--arch-root",
            str(inputs["archive"]),
            "--sync-uid",
            str(SYNC_UID),
            "--aws-credentials",
            str(inputs["creds"]),
            "--pipeline-config",
            str(inputs["config"]),
            "--aws-endpoint-url",
            "http://moto:5000",
            "--image",
            image,
            "--ui-port",
            str(ui_port),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def _digest(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    client = _docker_client()
    started = time.monotonic()
    build = subprocess.run(
        ["bash", str(REPO / "tests" / "docker" / "build-test-images.sh")],
        capture_output=True,
        text=True,
        timeout=1800,
    )
    assert build.returncode == 0, build.stdout + build.stderr
    tmp = tmp_path_factory.mktemp("docker-e2e")
    image = "bdrc-airflow:e2e-test"
    built = subprocess.run(
        [
            "bash",
            str(REPO / "bdrc-docker.sh"),
            "--build-dir",
            str(tmp / "build"),
            "--rebuild",
            "--base-image",
            "bdrc-test/bookworm-python:3.11",
            "--image",
            image,
        ],
        capture_output=True,
        text=True,
        timeout=2400,
    )
    assert built.returncode == 0, built.stdout[-5000:] + built.stderr[-5000:]
    creds = tmp / "aws-credentials"
    creds.write_text(
        "[default]\naws_access_key_id = testing\naws_secret_access_key = testing\n"
        "region_name = us-east-1\n"
    )
    config = tmp / "glacier-sync.toml"
    config.write_text(
        '[[queues]]\nname = "e2e"\n'
        'queue_url = "http://moto:5000/123456789012/restores"\n'
        'region = "us-east-1"\nbucket = "archive.e2e.example"\nprofile = "default"\n'
    )
    # Only the run the test triggers: no scheduled run races it for the work.
    config.write_text('sqs_schedule = "None"\nsqs_wait_seconds = 2\n' + config.read_text())
    archive = tmp / "archive"
    archive.mkdir()
    inputs = {"creds": creds, "config": config, "archive": archive}
    ui_port, moto_port = free_port(), free_port()
    dest = tmp / "instance"
    _deploy(dest, inputs, image, ui_port)
    override = tmp / "docker-compose.test.yaml"
    override.write_text(f"""version: "3.9"
services:
  moto:
    image: bdrc-test/moto:5.2.5
    ports:
      - "127.0.0.1:{moto_port}:5000"
""")
    stack = Stack(dest, override)
    stack.compose("down", "-v", "--remove-orphans", check=False)
    try:
        stack.compose("up", "-d")
        stack.wait_healthy(client)
        yield {
            "stack": stack,
            "client": client,
            "dest": dest,
            "inputs": inputs,
            "image": image,
            "ui_port": ui_port,
            "moto": f"http://127.0.0.1:{moto_port}",
            "tmp": tmp,
            "started": started,
        }
    except BaseException:
        print(stack.logs())
        raise
    finally:
        stack.compose("down", "-v", "--remove-orphans", check=False)
        print(f"docker end-to-end: {time.monotonic() - started:.0f} s in all")


def _api(stack) -> AirflowApi:
    password = (stack["dest"] / "secrets" / "airflow_admin_password").read_text().strip()
    return AirflowApi(f"http://127.0.0.1:{stack['ui_port']}", "admin", password)


def _world(stack) -> World:
    world = create_world(stack["moto"], bucket="archive.e2e.example", queue="restores")
    assert world.queue_url.endswith("/123456789012/restores")
    return world


def test_restore_event_is_archived_by_the_compose_stack(stack):
    try:
        world = _world(stack)
        zip_path = make_bag_zip(stack["tmp"] / "bags", "W1E2E")
        key = "Archive0/00/W1E2E/W1E2E.bag.zip"
        world.upload_archived(zip_path, key)
        world.restore(key)
        api = _api(stack)
        api.wait_for_dag("sqs_scheduled_dag")
        api.unpause("sqs_scheduled_dag")
        run_id = api.trigger("sqs_scheduled_dag")
        run = api.wait_for_run("sqs_scheduled_dag", run_id, timeout=420)
        assert run["state"] == "success", api.task_states("sqs_scheduled_dag", run_id)
        archived = stack["inputs"]["archive"] / "Archive0" / "00" / "W1E2E"
        files = [p for p in archived.rglob("*") if p.is_file()]
        assert files and (archived / "W1E2E.bag" / "bagit.txt").is_file()
        assert {p.stat().st_uid for p in [archived, *files]} == {SYNC_UID}
        status = stack["stack"].compose(
            "exec", "-T", "airflow-scheduler", "glacier-sync", "status", "W1E2E", "--json"
        )
        row = json.loads(status.stdout)[0]
        assert row["state"] == "synced" and row["archive_path"] == "/mnt/Archive0/00/W1E2E"
        stack["run_id"] = run_id
    except BaseException:
        print(stack["stack"].logs())
        raise


def test_redeploy_and_restart_keep_secrets_metadata_and_archive(stack):
    if "run_id" not in stack:
        pytest.skip("needs the archived work of the previous test")
    dest = stack["dest"]
    secrets_before = _digest(dest / "secrets")
    archived = stack["inputs"]["archive"] / "Archive0" / "00" / "W1E2E"
    archive_before = sorted(p.relative_to(archived) for p in archived.rglob("*"))
    _deploy(dest, stack["inputs"], stack["image"], stack["ui_port"])
    assert _digest(dest / "secrets") == secrets_before
    try:
        stack["stack"].compose("down")
        stack["stack"].compose("up", "-d")
        stack["stack"].wait_healthy(stack["client"])
        api = _api(stack)
        run = api.run("sqs_scheduled_dag", stack["run_id"])
        assert run["state"] == "success", "the metadata database survived"
        assert sorted(p.relative_to(archived) for p in archived.rglob("*")) == archive_before
        status = stack["stack"].compose(
            "exec", "-T", "airflow-scheduler", "glacier-sync", "status", "W1E2E", "--json"
        )
        assert json.loads(status.stdout)[0]["state"] == "synced"
    except BaseException:
        print(stack["stack"].logs())
        raise
    shutil.rmtree(stack["tmp"] / "bags", ignore_errors=True)
