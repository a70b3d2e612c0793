#!/usr/bin/env python3
"""Healthchecks of the pipeline's Airflow containers, cheap enough to run every 30 s.

    bdrc-healthcheck job TriggererJob|DagProcessorJob
        the newest running job of that type on this container's host has a heartbeat within
        Airflow's threshold (``airflow jobs check --job-type T --hostname $HOSTNAME``)
    bdrc-healthcheck worker
        this host's Celery worker answers a ping (``celery --app ... inspect ping -d
        celery@$HOSTNAME``)

Airflow's own commands import Airflow first: about 2.5 s of CPU for the job check and 3.5 s for
the ping, every 30 s in every container. These ask the same questions of the same database and
broker with psycopg2 and a bare Celery client (about 0.05 s and 0.6 s). A metadata database that
is not PostgreSQL is left to ``airflow jobs check`` itself. Exit 0 healthy, 1 not, 2 for usage,
with one line saying why.
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
NEWEST_JOB = """
SELECT now() - latest_heartbeat < make_interval(secs => %s), latest_heartbeat
FROM job WHERE state = 'running' AND job_type = %s AND hostname = %s
ORDER BY latest_heartbeat DESC NULLS LAST LIMIT 1
"""


def airflow_setting(name: str) -> str:
    """An Airflow setting as Airflow reads it from the environment: ``NAME``, else the output
    of ``NAME_CMD`` (run without a shell, as Airflow runs it)."""
    if os.environ.get(name):
        return os.environ[name]
    command = os.environ.get(f"{name}_CMD")
    if not command:
        raise SystemExit(f"unhealthy: neither {name} nor {name}_CMD is set")
    done = subprocess.run(shlex.split(command), capture_output=True, text=True, timeout=10)
    if done.returncode != 0:
        said = " ".join(done.stderr.split())[:200]
        raise SystemExit(f"unhealthy: {name}_CMD failed: {said}")
    return done.stdout.strip()


def host() -> str:
    return os.environ.get("HOSTNAME") or socket.gethostname()


def check_job(job_type: str) -> str:
    variable, default = THRESHOLDS[job_type]
    threshold = float(os.environ.get(variable) or default)
    url = airflow_setting("AIRFLOW__DATABASE__SQL_ALCHEMY_CONN")
    scheme, sep, rest = url.partition("://")
    if not sep or scheme.split("+")[0] not in ("postgresql", "postgres"):
        jobs_check = ["airflow", "jobs", "check", "--job-type", job_type, "--hostname", host()]
        os.execvp(jobs_check[0], jobs_check)
    import psycopg2  # only here: the worker's check needs none of it

    try:
        with (
            contextlib.closing(
                psycopg2.connect(
                    f"postgresql://{rest}", connect_timeout=5, options="-c statement_timeout=5000"
                )
            ) as conn,
            conn.cursor() as cursor,
        ):
            cursor.execute(NEWEST_JOB, (threshold, job_type, host()))
            row = cursor.fetchone()
    except psycopg2.Error as exc:
        said = " ".join(str(exc).split())[:200]
        raise SystemExit(f"unhealthy: the metadata database: {said}") from None
    if row is None:
        raise SystemExit(f"unhealthy: no running {job_type} on {host()}")
    alive, heartbeat = row
    if not alive:
        raise SystemExit(
            f"unhealthy: the {job_type} on {host()} last beat at {heartbeat} "
            f"(more than {threshold:g} s ago)"
        )
    return f"healthy: the {job_type} on {host()} beat at {heartbeat}"


def check_worker() -> str:
    from celery import Celery

    name = f"celery@{host()}"
    app = Celery(broker=airflow_setting("AIRFLOW__CELERY__BROKER_URL"))
    try:
        replies = app.control.ping(destination=[name], timeout=1.0)
    except Exception as exc:  # noqa: BLE001 - any broker failure is an unhealthy answer
        raise SystemExit(f"unhealthy: the broker: {' '.join(str(exc).split())[:200]}") from None
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
