"""The containers' job healthcheck (docker/healthcheck.py, `bdrc-healthcheck job T` in the
image) against Airflow's own `job` table on the machine's PostgreSQL: it says healthy when
`airflow jobs check --job-type T --hostname $HOSTNAME` would, and hands what it cannot read as
Airflow does to that command. The worker's ping is tried on
a real worker in tests/test_celery_setup.py, and both in the Compose stacks of
tests/test_docker_deploy.py."""

from __future__ import annotations

import datetime as dt
import os
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import REPO
from sqlalchemy import create_engine, insert, text
from test_progress import _server_url

pytestmark = pytest.mark.services
HEALTHCHECK = REPO / "docker" / "healthcheck.py"
HOST = "3f9c2a1b7d4e"  # a container's host name


@pytest.fixture(scope="module")
def jobs_db() -> str:
    """A fresh PostgreSQL database holding Airflow's own `job` table (its ORM's definition)."""
    from airflow.jobs.job import Job

    url = _server_url("postgresql")
    engine = create_engine(url)
    Job.__table__.create(engine)
    engine.dispose()
    yield url
    admin = create_engine(url.rsplit("/", 1)[0] + "/postgres", isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f"DROP DATABASE IF EXISTS {url.rsplit('/', 1)[1]}"))
    admin.dispose()


def _job(url: str, job_type: str, state: str, age_seconds: float | None, host: str = HOST):
    engine = create_engine(url)
    now = dt.datetime.now(dt.UTC)
    beat = None if age_seconds is None else now - dt.timedelta(seconds=age_seconds)
    from airflow.jobs.job import Job

    with engine.begin() as conn:
        conn.execute(
            insert(Job.__table__).values(
                job_type=job_type, state=state, hostname=host, latest_heartbeat=beat
            )
        )
    engine.dispose()


def _check(url: str | None, *args: str, host: str = HOST, **env: str):
    environment = {k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW__")}
    environment.update(HOSTNAME=host, **env)
    if url:
        environment["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"] = url
    return subprocess.run(
        [sys.executable, str(HEALTHCHECK), *args],
        capture_output=True,
        text=True,
        env=environment,
        timeout=60,
    )


def test_a_job_is_healthy_only_while_its_own_host_beats_within_the_threshold(jobs_db):
    missing = _check(jobs_db, "job", "TriggererJob")
    assert missing.returncode == 1 and f"no running TriggererJob on {HOST}" in missing.stderr

    _job(jobs_db, "TriggererJob", "running", age_seconds=45)
    stale = _check(jobs_db, "job", "TriggererJob")
    assert stale.returncode == 1 and "(more than 30 s ago" in stale.stderr, stale.stderr
    patient = _check(
        jobs_db, "job", "TriggererJob", AIRFLOW__TRIGGERER__TRIGGERER_HEALTH_CHECK_THRESHOLD="60"
    )
    assert patient.returncode == 0, "Airflow's threshold setting is honoured"

    _job(jobs_db, "TriggererJob", "running", age_seconds=2)
    alive = _check(jobs_db, "job", "TriggererJob")
    assert alive.returncode == 0 and alive.stdout.startswith("healthy:"), alive.stderr
    assert _check(jobs_db, "job", "TriggererJob", host="elsewhere").returncode == 1
    assert _check(jobs_db, "job", "DagProcessorJob").returncode == 1, "another job type"

    _job(jobs_db, "DagProcessorJob", "success", age_seconds=1)
    assert _check(jobs_db, "job", "DagProcessorJob").returncode == 1, "an ended job is not live"
    _job(jobs_db, "DagProcessorJob", "running", age_seconds=45, host="dp-host")
    stale = _check(jobs_db, "job", "DagProcessorJob", host="dp-host")
    assert stale.returncode == 1, stale.stdout
    patient = _check(
        jobs_db,
        "job",
        "DagProcessorJob",
        host="dp-host",
        AIRFLOW__DAG_PROCESSOR__HEALTH_CHECK_THRESHOLD="60",
    )
    assert patient.returncode == 0, patient.stderr
    # As `airflow jobs check` on PostgreSQL: a running job that never beat sorts first (NULLs
    # first), so the host is unhealthy even beside a live one.
    _job(jobs_db, "DagProcessorJob", "running", age_seconds=3)
    assert _check(jobs_db, "job", "DagProcessorJob").returncode == 0
    _job(jobs_db, "DagProcessorJob", "running", age_seconds=None)
    never = _check(jobs_db, "job", "DagProcessorJob")
    assert never.returncode == 1 and "or never" in never.stderr, never.stderr


def test_the_database_url_comes_as_airflow_reads_it_and_failures_are_one_line(
    jobs_db, tmp_path: Path
):
    _job(jobs_db, "TriggererJob", "running", age_seconds=1, host="cmd-host")
    secret = tmp_path / "airflow_db_url"
    secret.write_text(jobs_db + "\n")
    by_command = _check(
        None,
        "job",
        "TriggererJob",
        host="cmd-host",
        AIRFLOW__DATABASE__SQL_ALCHEMY_CONN_CMD=f"cat {secret}",
    )
    assert by_command.returncode == 0, by_command.stderr

    down = _check("postgresql+psycopg2://postgres@127.0.0.1:1/airflow", "job", "TriggererJob")
    assert down.returncode == 1 and down.stderr.startswith("unhealthy: the metadata database")
    assert len(down.stderr.strip().splitlines()) == 1, down.stderr
    broken = _check(
        None, "job", "TriggererJob", AIRFLOW__DATABASE__SQL_ALCHEMY_CONN_CMD="/nonexistent/cmd"
    )
    assert broken.returncode == 1 and broken.stderr.startswith("unhealthy: ")
    assert (
        "SQL_ALCHEMY_CONN_CMD cannot run" in broken.stderr and len(broken.stderr.splitlines()) == 1
    )
    usage = _check(jobs_db, "job", "SchedulerJob")
    assert usage.returncode == 2 and usage.stderr.startswith("usage: bdrc-healthcheck")


@pytest.mark.parametrize(
    ("url", "more"),
    [
        ("mysql+pymysql://root@127.0.0.1/airflow", {}),
        ("postgresql+psycopg2://airflow:pw@127.0.0.1:1/airflow?sslmode=require", {}),
        ("postgresql://airflow:pw@127.0.0.1:1/airflow", {"SQL_ALCHEMY_SCHEMA": "airflow"}),
        (None, {}),  # in airflow.cfg, not in the environment
    ],
    ids=["mysql", "query", "schema", "not-in-env"],
)
def test_what_it_cannot_read_as_airflow_does_is_left_to_airflow_jobs_check(
    tmp_path: Path, url, more
):
    fake = tmp_path / "bin" / "airflow"
    fake.parent.mkdir()
    fake.write_text('#!/bin/sh\necho "airflow $*"\n')
    fake.chmod(0o755)
    result = _check(
        url,
        "job",
        "DagProcessorJob",
        PATH=f"{fake.parent}:{os.environ['PATH']}",
        **{f"AIRFLOW__DATABASE__{k}": v for k, v in more.items()},
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == (
        f"airflow jobs check --job-type DagProcessorJob --hostname {HOST}"
    )
