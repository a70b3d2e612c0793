"""Event -> archive latency of the event-driven and the scheduled path, measured in one run.

    python benchmarks/bench_event_latency.py [--events 20] [--retry-delay 60]

One moto server on 127.0.0.1 and one set of local-airflow.sh services (LocalExecutor). For each
path, with the other DAG paused:

* ``event``      sqs_event_dag, started by the restore queues' watcher (defaults: checks every
                 5 s, re-fires every 30 s while messages stay);
* ``scheduled``  sqs_scheduled_dag as it waits for events: a run whose poll task is "up for
                 retry" every ``--retry-delay`` seconds (the product default is 300 s; the
                 default here, 60 s, makes this path look 5x better than it is), and a new run
                 every minute once one has found its work.

``--events`` works are sent one at a time (the next once the last is archived, at a random
moment 0-10 s later), then as one burst. Latency is from the ``restore_object`` call (the
``ObjectRestore:Completed`` event lands in the queue) to the work's ``synced_at`` in the progress
database. Prints median, p95 and max per path and shape.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "tools"), str(REPO / "tests")]

from airflow_rest import AirflowApi  # noqa: E402
from demo_world import create_world, settings_env  # noqa: E402
from helpers import free_port, make_bag_zip, moto_server  # noqa: E402

from glacier_sync.records.progress import ProgressStore  # noqa: E402


def p95(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]


class Bench:
    """The world, the services and the sends."""

    def __init__(self, tmp: Path, endpoint: str, retry_delay: int) -> None:
        self.tmp = tmp
        self.world = create_world(endpoint, bucket="bench.example", queue="bench")
        self.data = tmp / "data"
        archive = tmp / "archive"
        archive.mkdir()
        settings = settings_env(self.world, self.data, archive)
        settings.update(
            GLACIER_SYNC_SQS_SCHEDULE="* * * * *",
            GLACIER_SYNC_POLL_RETRIES="1000",
            GLACIER_SYNC_POLL_RETRY_DELAY_SECONDS=str(retry_delay),
            GLACIER_SYNC_SQS_WAIT_SECONDS="1",
            GLACIER_SYNC_EVENT_DRIVEN="false",  # both DAGs start paused; main() unpauses one
        )
        env_file = tmp / "glacier-sync.env"
        env_file.write_text("".join(f"export {k}='{v}'\n" for k, v in settings.items()))
        self.env = {
            **{
                k: v
                for k, v in os.environ.items()
                if not k.startswith(("GLACIER_SYNC_", "AIRFLOW"))
            },
            "AIRFLOW_HOME": str(tmp / "airflow-home"),
            "GLACIER_SYNC_ENV_FILE": str(env_file),
            "AIRFLOW_PORT": str(free_port()),
            "WORKER_LOG_PORT": str(free_port()),
            "TRIGGER_LOG_PORT": str(free_port()),
        }
        self.sent: dict[str, float] = {}
        self.count = 0

    def script(self, *args: str) -> None:
        subprocess.run(
            ["bash", str(REPO / "local-airflow.sh"), *args],
            env=self.env,
            check=True,
            capture_output=True,
            timeout=600,
        )

    def start(self) -> AirflowApi:
        for args in (["-r"], ["-w", "-u"], ["-s", "-u"]):
            self.script(*args)
        home = Path(self.env["AIRFLOW_HOME"])
        password = json.loads((home / "local-passwords.json").read_text())["admin"]
        api = AirflowApi(f"http://127.0.0.1:{self.env['AIRFLOW_PORT']}", "admin", password)
        for dag in ("sqs_event_dag", "sqs_scheduled_dag"):
            api.wait_for_dag(dag)
        return api

    def send(self, n: int) -> list[str]:
        works = []
        for _ in range(n):
            self.count += 1
            work = f"W1LAT{self.count:04d}"
            zip_path = make_bag_zip(self.tmp / "bags", work)
            key = f"Archive9/{work[-2:]}/{work}/{work}.bag.zip"
            self.world.upload_archived(zip_path, key)
            self.world.restore(key)
            self.sent[work] = datetime.now(UTC).replace(tzinfo=None).timestamp()
            works.append(work)
        return works

    def wait(self, works: list[str], timeout: float = 3600) -> list[float]:
        deadline = time.monotonic() + timeout
        while True:
            rows = {
                r.work_id: r
                for r in ProgressStore(f"sqlite:///{self.data}/progress.sqlite").find(works)
            }
            if all(w in rows and rows[w].synced_at for w in works):
                return [rows[w].synced_at.timestamp() - self.sent[w] for w in works]
            if time.monotonic() > deadline:
                raise SystemExit(f"works not archived within {timeout} s: {works}")
            time.sleep(0.5)


def measure(bench: Bench, events: int) -> dict[str, list[float]]:
    one = []
    for _ in range(events):
        time.sleep(random.uniform(0, 10))
        one += bench.wait(bench.send(1))
    burst = bench.wait(bench.send(events))
    return {"one at a time": one, "burst": burst}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=20)
    parser.add_argument("--retry-delay", type=int, default=60)
    parser.add_argument("--paths", default="event,scheduled")
    args = parser.parse_args()
    random.seed(7)
    results: dict[str, dict[str, list[float]]] = {}
    with tempfile.TemporaryDirectory() as tmp, moto_server(Path(tmp) / "moto.log") as endpoint:
        bench = Bench(Path(tmp), endpoint, args.retry_delay)
        api = bench.start()
        try:
            for path in args.paths.split(","):
                dag = {"event": "sqs_event_dag", "scheduled": "sqs_scheduled_dag"}[path]
                api._call("PATCH", f"/api/v2/dags/{dag}", {"is_paused": False})
                results[path] = measure(bench, args.events)
                api._call("PATCH", f"/api/v2/dags/{dag}", {"is_paused": True})
                time.sleep(5)
        finally:
            bench.script("stop")
    print(f"\nevent -> archive latency, {args.events} events per shape, seconds")
    print(f"(scheduled path: poll retry every {args.retry_delay} s, new run every minute)\n")
    print("| path | shape | median | p95 | max |\n| --- | --- | ---: | ---: | ---: |")
    for path, shapes in results.items():
        for shape, values in shapes.items():
            print(
                f"| {path} | {shape} | {statistics.median(values):.1f} | {p95(values):.1f} | "
                f"{max(values):.1f} |"
            )


if __name__ == "__main__":
    main()
