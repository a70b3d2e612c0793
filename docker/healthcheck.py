#!/usr/bin/env python3
"""Healthchecks of the pipeline's Airflow containers, cheap enough to run every 10 s.

    bdrc-healthcheck job TriggererJob|DagProcessorJob
        the newest running job of that type on this container's host has a heartbeat within
        Airflow's threshold (``airflow jobs check --job-type T --hostname $HOSTNAME``)
    bdrc-healthcheck worker
        this host's Celery worker answers a ping (``celery --app ... inspect ping -d
        celery@$HOSTNAME``)

Airflow's own commands import Airflow first: about 2.3 s of CPU for the job check and 3.7 s for
the ping. These ask the same questions of the same database and broker with psycopg2 and a bare
Celery client (about 0.2 s and 0.3 s). Whatever they cannot read as Airflow would (a database
that is not PostgreSQL, a URL with a query string or a schema, a setting not in the environment,
a library missing) is handed to Airflow's own command. Exit 0 healthy, 1 not (one line saying
why), 2 for usage.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import socket
import subprocess
import sys

# Airflow's defaults for [triggerer] triggerer_health_check_threshold and [dag_processor]
# health_check_threshold (seconds), and the variables that override them.
THRESHOLDS = {
    "TriggererJob": ("AIRFLOW__TRIGGERER__TRIGGERER_HEALTH_CHECK_THRESHOLD", 30.0),
    "DagProcessorJob": ("AIRFLOW__DAG_PROCESSOR__HEALTH_CHECK_THRESHOLD", 30.0),
}
# As `airflow jobs check` (limit 1): the running job with the newest heartbeat, NULLs first as
# PostgreSQL sorts them (a running job that never beat is no live job, as there).
NEWEST_JOB = """
SELECT now() - latest_heartbeat < make_interval(secs => %s), latest_heartbeat
FROM job WHERE state = 'running' AND job_type = %s AND hostname = %s
ORDER BY latest_heartbeat DESC LIMIT 1
"""


class AskAirflow(Exception):
    """This check cannot answer as Airflow would: Airflow's own command answers."""


def one_line(text: object) -> str:
    return " ".join(str(text).split())[:200]


def airflow_setting(name: str) -> str:
    """An Airflow setting from the environment as Airflow reads it: ``NAME``, else the output of
    ``NAME_CMD`` (run without a shell, as Airflow runs it); anywhere else: ask Airflow."""
    if os.environ.get(name):
        return os.environ[name]
    command = os.environ.get(f"{name}_CMD")
    if not command:
        raise AskAirflow(f"{name} is not in the environment")
    try:
        done = subprocess.run(shlex.split(command), capture_output=True, text=True, timeout=10)
    except (OSError, ValueError, subprocess.SubprocessError) as exc:
        raise SystemExit(f"unhealthy: {name}_CMD cannot run: {one_line(exc)}") from None
    if done.returncode != 0:
        raise SystemExit(f"unhealthy: {name}_CMD failed: {one_line(done.stderr)}")
    return done.stdout.strip()


def host() -> str:
    return os.environ.get("HOSTNAME") or socket.gethostname()


def connect_arguments(url: str) -> dict[str, object]:
    """psycopg2's arguments for a plain PostgreSQL SQLAlchemy URL (credentials decoded as
    SQLAlchemy decodes them); anything more for Airflow to read."""
    from sqlalchemy.engine import make_url

    parsed = make_url(url)
    if parsed.drivername not in ("postgresql", "postgresql+psycopg2", "postgres"):
        raise AskAirflow(f"a {parsed.drivername} database")
    if parsed.query or os.environ.get("AIRFLOW__DATABASE__SQL_ALCHEMY_SCHEMA"):
        raise AskAirflow("connection options or a schema")
    arguments = parsed.translate_connect_args(username="user", database="dbname")
    return {k: v for k, v in arguments.items() if v is not None}


def check_job(job_type: str) -> str:
    variable, default = THRESHOLDS[job_type]
    threshold = float(os.environ.get(variable) or default)
    try:
        arguments = connect_arguments(airflow_setting("AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"))
        import psycopg2
    except (AskAirflow, ImportError):
        jobs_check = ["airflow", "jobs", "check", "--job-type", job_type, "--hostname", host()]
        os.execvp(jobs_check[0], jobs_check)
    try:
        with (
            contextlib.closing(psycopg2.connect(connect_timeout=5, **arguments)) as conn,
            conn.cursor() as cursor,
        ):
            cursor.execute("SET statement_timeout = 5000")
            cursor.execute(NEWEST_JOB, (threshold, job_type, host()))
            row = cursor.fetchone()
    except psycopg2.Error as exc:
        raise SystemExit(f"unhealthy: the metadata database: {one_line(exc)}") from None
    if row is None:
        raise SystemExit(f"unhealthy: no running {job_type} on {host()}")
    alive, heartbeat = row
    if not alive:
        raise SystemExit(
            f"unhealthy: the {job_type} on {host()} last beat at {heartbeat} "
            f"(more than {threshold:g} s ago, or never)"
        )
    return f"healthy: the {job_type} on {host()} beat at {heartbeat}"


def check_worker() -> str:
    name = f"celery@{host()}"
    try:
        broker = airflow_setting("AIRFLOW__CELERY__BROKER_URL")
        from celery import Celery
    except (AskAirflow, ImportError):
        app = "airflow.providers.celery.executors.celery_executor.app"
        ping = ["celery", "--app", app, "inspect", "ping", "-d", name]
        os.execvp(ping[0], ping)
    try:
        replies = Celery(broker=broker).control.ping(destination=[name], timeout=1.0)
    except Exception as exc:  # noqa: BLE001 - any broker failure is an unhealthy answer
        raise SystemExit(f"unhealthy: the broker: {one_line(exc)}") from None
    if not any(name in reply for reply in replies):
        raise SystemExit(f"unhealthy: {name} did not answer a ping")
    return f"healthy: {name} answered"


def main(argv: list[str]) -> int:
    if argv[:1] == ["worker"] and len(argv) == 1:
        print(check_worker())
    elif argv[:1] == ["job"] and len(argv) == 2 and argv[1] in THRESHOLDS:
        print(check_job(argv[1]))
    else:
        print(
            f"usage: bdrc-healthcheck job {'|'.join(THRESHOLDS)} | bdrc-healthcheck worker",
            file=sys.stderr,
        )
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
