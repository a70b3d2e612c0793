"""A deployed instance's Compose stack, driven from Python: deploy.sh, compose, health, the REST
API and logs. Shared by the Docker end-to-end test and the worker benchmark."""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

from airflow_rest import AirflowApi
from helpers import REPO

SYNC_UID = 4242
AIRFLOW_SERVICES = (
    "postgres",
    "airflow-apiserver",
    "airflow-scheduler",
    "airflow-dag-processor",
    "airflow-triggerer",
)


def compose_cmd() -> list[str]:
    probe = subprocess.run(["docker", "compose", "version"], capture_output=True)
    return ["docker", "compose"] if probe.returncode == 0 else ["docker-compose"]


def run(cmd: list[str], *, timeout: int = 900, check: bool = True, **kwargs):
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, **kwargs)
    if check and result.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed:\n{result.stdout[-4000:]}\n{result.stderr}")
    return result


class Stack:
    """One deployed instance and its Compose project (plus an optional override file)."""

    def __init__(
        self,
        dest: Path,
        project: str,
        ui_port: int,
        override: Path | None = None,
        workers: int = 0,
    ):
        self.dest, self.project, self.ui_port, self.override = dest, project, ui_port, override
        self.services = AIRFLOW_SERVICES + (("moto",) if override else ())
        # CeleryExecutor: Redis, Flower and the workers must be healthy too.
        self.healthy = AIRFLOW_SERVICES + (("redis", "airflow-flower") if workers else ())
        self.workers = workers

    def files(self) -> list[str]:
        files = ["-f", str(self.dest / "docker-compose.yaml")]
        return files + (["-f", str(self.override)] if self.override else [])

    def compose(self, *args: str, check: bool = True, timeout: int = 900):
        cmd = [*compose_cmd(), "-p", self.project, *self.files(), *args]
        return run(cmd, cwd=self.dest, check=check, timeout=timeout)

    def admin(
        self, *args: str, stdin: str | None = None, check: bool = True, env: dict | None = None
    ):
        """``deploy.sh user|backup|restore|rotate ... --dest DEST`` with this stack's compose
        files (``env``: more environment variables)."""
        env = {**os.environ, "COMPOSE_FILE": os.pathsep.join(self.files()[1::2]), **(env or {})}
        cmd = ["bash", str(REPO / "deploy.sh"), args[0], "--dest", str(self.dest), *args[1:]]
        return run(cmd, input=stdin, env=env, check=check, timeout=600)

    def exec(self, *args: str, check: bool = True):
        return self.compose("exec", "-T", "airflow-scheduler", *args, check=check)

    def status(self, *works: str) -> dict[str, dict]:
        rows = json.loads(self.exec("glacier-sync", "status", *works, "--json").stdout)
        return {row["work_id"]: row for row in rows}

    def containers(self, client) -> dict[str, object]:
        """One container per service (the Celery workers: see ``worker_containers``)."""
        found = client.containers.list(
            all=True, filters={"label": f"com.docker.compose.project={self.project}"}
        )
        return {c.labels["com.docker.compose.service"]: c for c in found}

    def worker_containers(self, client) -> list:
        """The Celery worker replicas, running or not."""
        labels = [f"com.docker.compose.project={self.project}"]
        labels.append("com.docker.compose.service=airflow-worker")
        return client.containers.list(all=True, filters={"label": labels})

    def started_at(self, client) -> dict[str, str]:
        return {
            name: c.attrs["State"]["StartedAt"]
            for name, c in self.containers(client).items()
            if name != "airflow-init"
        }

    def wait_healthy(self, client, timeout: float = 480) -> None:
        deadline = time.monotonic() + timeout
        while True:
            states = {}
            for name, container in self.containers(client).items():
                container.reload()
                health = container.attrs["State"].get("Health", {}).get("Status")
                states[name] = health or container.status
                if name == "airflow-init" and container.status == "exited":
                    code = container.attrs["State"]["ExitCode"]
                    assert code == 0, f"airflow-init exited {code}:\n{self.logs('airflow-init')}"
                    states[name] = "done"
            workers = self.worker_containers(client) if self.workers else []
            for worker in workers:
                worker.reload()
            states["workers"] = [w.attrs["State"].get("Health", {}).get("Status") for w in workers]
            if (
                all(states.get(s) == "healthy" for s in self.healthy)
                and all(states.get(s) == "running" for s in self.services if s not in self.healthy)
                and states["workers"] == ["healthy"] * self.workers
            ):
                return
            assert time.monotonic() < deadline, f"{self.project} not healthy in time: {states}"
            time.sleep(2)

    def env(self) -> dict[str, str]:
        """The instance's .env."""
        return dict(
            line.split("=", 1)
            for line in (self.dest / ".env").read_text().splitlines()
            if line and not line.startswith("#")
        )

    def api(self, user: str | None = None, password: str | None = None) -> AirflowApi:
        env = self.env()
        password = password or (self.dest / "secrets" / "airflow_admin_password").read_text()
        return AirflowApi(
            f"http://127.0.0.1:{self.ui_port}", user or env["AIRFLOW_ADMIN_USER"], password.strip()
        )

    def logs(self, *services: str) -> str:
        """Service logs (every service's are also saved in test-artifacts/)."""
        text = self.compose("logs", "--no-color", "--tail", "300", *services, check=False).stdout
        if not services:
            artifacts = REPO / "test-artifacts"
            artifacts.mkdir(exist_ok=True)
            (artifacts / f"docker-e2e-{self.project}.txt").write_text(text)
        return text


def deploy(checkout: Path, dest: Path, inputs: dict, *extra: str, check: bool = True):
    return run(
        [
            "bash",
            str(checkout / "deploy.sh"),
            "--dest",
            str(dest),
            "--env",
            "dev",
            "--sync-uid",
            str(SYNC_UID),
            "--aws-credentials",
            str(inputs["creds"]),
            "--pipeline-config",
            str(inputs["config"]),
            "--postgres-image",
            "bdrc-test/postgres:15",
            *extra,
        ],
        check=check,
        timeout=120,
    )
