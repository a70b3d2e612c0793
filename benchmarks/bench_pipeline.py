"""Event-to-archive and scaling benchmark against a moto server on 127.0.0.1.

    python benchmarks/bench_pipeline.py [--works 1,10,50] [--paths run-once,dag-test,services]
                                        [--batch-max-works N] [--postgres URL]

For each work count, restores that many small sample bags (DEEP_ARCHIVE -> restore ->
ObjectRestore:Completed in the queue), then carries them to the archive through each path:

* ``run-once``  the ``glacier-sync run-once`` command (no Airflow);
* ``dag-test``  ``python dags/sqs_scheduled_dag.py`` (``dag.test()``: tasks run one by one);
* ``services``  local-airflow.sh's scheduler with LocalExecutor, triggered through the REST API
                (mapped tasks run in parallel, up to the executor's parallelism), small works
                in batches (``batch_max_works``, 20 unless ``--batch-max-works``);
* ``services-per-work``  the same with one work per mapped instance (``batch_max_works=1``).

Prints the wall time from the trigger to the last work archived, seconds per work, and the
median seconds of each phase (download, debag, sync) read from the progress database, and the
ratio of the total to ``run-once``'s at the same count (when measured in the same run); plus
the start-up time of ``glacier-sync --help``.

``--postgres postgresql+psycopg2://USER@HOST:PORT`` puts Airflow's metadata database and every
path's progress database on that PostgreSQL server (fresh databases ``glacier_bench_*``, dropped
first), as a production instance has them; by default both are SQLite files.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "tools"), str(REPO / "tests")]
BIN = Path(sys.executable).parent

from airflow_rest import AirflowApi  # noqa: E402
from demo_world import setup  # noqa: E402
from helpers import free_port, moto_server  # noqa: E402

from glacier_sync.records.progress import ProgressStore  # noqa: E402


def fresh_database(server: str, name: str) -> str:
    """Drop and create database ``name`` on the PostgreSQL server; return its URL."""
    import sqlalchemy

    engine = sqlalchemy.create_engine(f"{server}/postgres", isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.execute(sqlalchemy.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        conn.execute(sqlalchemy.text(f'CREATE DATABASE "{name}"'))
    engine.dispose()
    return f"{server}/{name}"


def phases(progress_url: str) -> tuple[int, dict[str, float]]:
    """Synced works and the median seconds of each phase."""
    rows = ProgressStore(progress_url).find()
    seconds: dict[str, list[float]] = {"download": [], "debag": [], "sync": []}
    for row in rows:
        for entry in row.history:
            name = entry["event"].removesuffix(" done")
            if name in seconds and "seconds" in entry:
                seconds[name].append(entry["seconds"])
    synced = sum(row.state == "synced" for row in rows)
    return synced, {k: statistics.median(v) if v else 0.0 for k, v in seconds.items()}


def run_once(env: dict, _: Path) -> None:
    subprocess.run(
        [str(BIN / "glacier-sync"), "run-once"],
        env=env,
        check=True,
        capture_output=True,
        timeout=3600,
    )


def dag_test(env: dict, home: Path) -> None:
    env = {
        **env,
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__DAGS_FOLDER": str(REPO / "dags"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
    }
    subprocess.run(
        [str(BIN / "python"), str(REPO / "dags" / "sqs_scheduled_dag.py")],
        env=env,
        check=True,
        capture_output=True,
        timeout=3600,
    )


class Services:
    """local-airflow.sh's services on a private AIRFLOW_HOME, restarted per measurement."""

    def __init__(self, home: Path) -> None:
        self.home = home
        self.env: dict[str, str] = {}

    def __call__(self, env: dict, work: Path) -> None:
        env_file = work / "glacier-sync.env"
        prefixes = ("GLACIER_SYNC_", "AWS_", "AIRFLOW__DATABASE__")
        keep = {k: v for k, v in env.items() if k.startswith(prefixes)}
        keep["GLACIER_SYNC_POLL_RETRIES"] = "0"
        keep["GLACIER_SYNC_EVENT_DRIVEN"] = "false"  # only the run this measures
        env_file.write_text("".join(f"export {k}='{v}'\n" for k, v in keep.items()))
        self.env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("GLACIER_SYNC_")},
            "AIRFLOW_HOME": str(self.home),
            "GLACIER_SYNC_ENV_FILE": str(env_file),
            "AIRFLOW_PORT": str(free_port()),
            "WORKER_LOG_PORT": str(free_port()),
            "TRIGGER_LOG_PORT": str(free_port()),
        }
        for args in (["-w", "-u"], ["-s", "-u"]):
            subprocess.run(
                ["bash", str(REPO / "local-airflow.sh"), *args],
                env=self.env,
                check=True,
                capture_output=True,
                timeout=600,
            )
        try:
            import json

            password = json.loads((self.home / "local-passwords.json").read_text())["admin"]
            api = AirflowApi(f"http://127.0.0.1:{self.env['AIRFLOW_PORT']}", "admin", password)
            api.wait_for_dag("sqs_scheduled_dag")
            api.unpause("sqs_scheduled_dag")
            self.started = time.perf_counter()
            run = api.wait_for_run("sqs_scheduled_dag", api.trigger("sqs_scheduled_dag"), 3600)
            assert run["state"] == "success", run
        finally:
            subprocess.run(
                ["bash", str(REPO / "local-airflow.sh"), "stop"],
                env=self.env,
                capture_output=True,
                timeout=600,
            )


def help_startup(reps: int = 5) -> float:
    times = []
    for _ in range(reps):
        started = time.perf_counter()
        subprocess.run([str(BIN / "glacier-sync"), "--help"], capture_output=True, check=True)
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def main() -> None:
    """Command line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--works", default="1,10,50")
    parser.add_argument("--paths", default="run-once,dag-test,services")
    parser.add_argument("--batch-max-works", type=int, default=None)
    parser.add_argument("--postgres", default=None, help="postgresql+psycopg2://USER@HOST:PORT")
    args = parser.parse_args()
    counts = [int(n) for n in args.works.split(",")]
    paths = args.paths.split(",")
    print(f"glacier-sync --help start-up: {help_startup():.3f} s (median of 5; target < 1 s)")
    with tempfile.TemporaryDirectory(prefix="glacier-sync-bench-") as tmp_name:
        tmp = Path(tmp_name)
        home = tmp / "airflow-home"
        home.mkdir()
        metadata: dict[str, str] = {}
        if args.postgres:
            url = fresh_database(args.postgres, "glacier_bench_airflow")
            metadata["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"] = url
        subprocess.run(
            [str(BIN / "airflow"), "db", "migrate"],
            check=True,
            capture_output=True,
            env={
                **os.environ,
                **metadata,
                "AIRFLOW_HOME": str(home),
                "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            },
        )
        services = Services(home)
        runners = {
            "run-once": run_once,
            "dag-test": dag_test,
            "services": services,
            "services-per-work": lambda env, work: services(
                {**env, "GLACIER_SYNC_BATCH_MAX_WORKS": "1"}, work
            ),
        }
        unknown = set(paths) - set(runners)
        if unknown:
            parser.error(f"unknown path(s) {', '.join(sorted(unknown))}; from {', '.join(runners)}")
        print(
            f"{'path':<18}{'works':>6}{'total s':>9}{'s/work':>8}{'download':>10}"
            f"{'debag':>7}{'sync':>7}{'vs run-once':>13}  (phase medians, s)"
        )
        run_once_totals: dict[int, float] = {}
        with moto_server(tmp / "moto.log") as endpoint:
            for count in counts:
                for path in paths:
                    work = tmp / f"{path}-{count}"
                    work.mkdir()
                    env = {**os.environ, **metadata, **setup(endpoint, work, count)}
                    progress_url = f"sqlite:///{work / 'data' / 'progress.sqlite'}"
                    if args.postgres:
                        name = f"glacier_bench_{path}_{count}".replace("-", "_")
                        progress_url = fresh_database(args.postgres, name)
                    env["GLACIER_SYNC_PROGRESS_DB_URL"] = progress_url
                    env["GLACIER_SYNC_MAX_MESSAGES_PER_RUN"] = str(max(10, count * 3))
                    env["GLACIER_SYNC_POLL_RETRIES"] = "0"
                    if args.batch_max_works:
                        env["GLACIER_SYNC_BATCH_MAX_WORKS"] = str(args.batch_max_works)
                    started = time.perf_counter()
                    target = work if path.startswith("services") else home
                    runners[path](env, target)
                    if path.startswith("services"):
                        started = services.started
                    total = time.perf_counter() - started
                    synced, med = phases(progress_url)
                    assert synced == count, f"{path}: {synced} of {count} works synced"
                    if path == "run-once":
                        run_once_totals[count] = total
                    ratio = total / run_once_totals[count] if count in run_once_totals else None
                    print(
                        f"{path:<18}{count:>6}{total:>9.1f}{total / count:>8.2f}"
                        f"{med['download']:>10.2f}{med['debag']:>7.2f}{med['sync']:>7.2f}"
                        f"{f'{ratio:.2f}x' if ratio else '':>13}",
                        flush=True,
                    )


if __name__ == "__main__":
    main()
