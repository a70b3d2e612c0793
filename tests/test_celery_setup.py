"""The locked Celery stack runs: the executor loads, a worker starts against the real Redis on
127.0.0.1 with the Compose file's own result backend (the metadata database's URL turned into a
Celery one by the file's command, on the machine's PostgreSQL), answers the Compose
healthcheck (`bdrc-healthcheck worker`, docker/healthcheck.py) once it runs and not before or
after, and stops warm on SIGTERM.

The Docker end-to-end test runs three workers in containers; this catches a broken lock in
seconds (celery 5.7 removed a function the celery provider imports: no worker could start).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from helpers import REPO

pytestmark = pytest.mark.services

BIN = Path(sys.executable).parent
LOAD_EXECUTOR = """
from airflow.executors.executor_loader import ExecutorLoader
[executor] = ExecutorLoader.init_executors()
print(type(executor).__name__)
"""
# The healthcheck of airflow-worker in bdrc-docker-compose.yml (bdrc-healthcheck in the image).
HEALTHCHECK = REPO / "docker" / "healthcheck.py"


def _redis_up() -> bool:
    try:
        with socket.create_connection(("127.0.0.1", 6379), timeout=2):
            return True
    except OSError:
        return False


def _compose_result_backend(metadata_url: str, tmp_path: Path) -> str:
    """The Compose file's AIRFLOW__CELERY__RESULT_BACKEND_CMD run on ``metadata_url`` (the
    airflow_db_url secret's form)."""
    compose = yaml.safe_load((REPO / "bdrc-docker-compose.yml").read_text())
    command = compose["x-airflow-common"]["environment"]["AIRFLOW__CELERY__RESULT_BACKEND_CMD"]
    secret = tmp_path / "airflow_db_url"
    secret.write_text(metadata_url)
    command = command.replace("/run/secrets/airflow_db_url", str(secret))
    return subprocess.run(
        ["bash", "-c", command], capture_output=True, text=True, check=True
    ).stdout.strip()


@pytest.fixture
def airflow_env(tmp_path) -> dict[str, str]:
    if not _redis_up():
        if os.environ.get("CI"):
            pytest.fail("Redis must run on 127.0.0.1:6379 in CI (the machine's own service)")
        pytest.skip("no Redis on 127.0.0.1:6379")
    backend = _compose_result_backend(
        "postgresql+psycopg2://postgres@127.0.0.1:5432/postgres", tmp_path
    )
    return {
        **os.environ,
        "AIRFLOW_HOME": str(tmp_path),
        "AIRFLOW__CORE__EXECUTOR": "CeleryExecutor",
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CELERY__BROKER_URL": "redis://127.0.0.1:6379/14",
        "AIRFLOW__CELERY__RESULT_BACKEND": backend,
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{tmp_path}/airflow.db",
    }


def test_the_celery_executor_loads(airflow_env):
    result = subprocess.run(
        [sys.executable, "-c", LOAD_EXECUTOR],
        capture_output=True,
        text=True,
        env=airflow_env,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip().splitlines()[-1] == "CeleryExecutor"


def _healthcheck(airflow_env, host: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(HEALTHCHECK), "worker"],
        capture_output=True,
        text=True,
        env={**airflow_env, "HOSTNAME": host},
        timeout=60,
    )


def test_a_worker_starts_answers_the_healthcheck_and_stops_warm(airflow_env, tmp_path):
    host = f"gs-test-{os.getpid()}"
    before = _healthcheck(airflow_env, host)
    assert before.returncode == 1, "no worker yet: unhealthy"
    assert f"celery@{host} did not answer a ping" in before.stderr, before.stderr
    log = tmp_path / "worker.log"
    with log.open("w") as out:
        worker = subprocess.Popen(
            [BIN / "airflow", "celery", "worker", "-c", "1", "-H", host],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=airflow_env,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + 120
        while True:
            assert worker.poll() is None, f"the worker exited:\n{log.read_text()[-4000:]}"
            ping = _healthcheck(airflow_env, host)
            if ping.returncode == 0:
                assert ping.stdout.strip() == f"healthy: celery@{host} answered"
                break
            assert time.monotonic() < deadline, (ping.stderr, log.read_text()[-4000:])
            time.sleep(2)
        assert _healthcheck(airflow_env, "another-host").returncode == 1, "its own host only"
        worker.send_signal(signal.SIGTERM)  # what `docker compose stop` sends
        assert worker.wait(timeout=60) == 0, log.read_text()[-4000:]
        assert "warm shutdown" in log.read_text().lower()
        assert _healthcheck(airflow_env, host).returncode == 1, "stopped: unhealthy"
    finally:
        if worker.poll() is None:
            os.killpg(worker.pid, signal.SIGKILL)
            worker.wait()
