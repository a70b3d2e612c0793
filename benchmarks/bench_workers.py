"""Throughput of the Compose stack at 1, 2 and 3 Celery workers, with LocalExecutor, and of
``glacier-sync run-once`` in the same stack, measured one after the other in one run.

    python benchmarks/bench_workers.py [--works 100] [--workers 1,2,3] [--image NAME] [--keep]

Builds the stand-in images (tests/docker/build-test-images.sh) and, unless ``--image`` names
one, the image of this checkout (bdrc-docker.sh); deploys one instance with CeleryExecutor, a
moto server and an archive folder in a temporary directory; then for each path restores
``--works`` small sample bags at once (new works each time) and times from the first restore
request to the last work in the archive:

* ``celery N``  the event-driven DAG on N worker containers (``--scale airflow-worker=N``);
* ``local``     the same instance re-deployed with ``--executor local`` (tasks in the scheduler);
* ``run-once``  ``glacier-sync run-once`` in the scheduler container, the DAGs paused, run again
                until every work is archived (one run takes ``max_messages_per_run`` messages).

Prints works per minute and the ratio of each path's time to ``run-once``'s. Every work must be
archived exactly once (checked in the progress database at the end). Needs a Docker engine and
root (the archive folder belongs to the sync uid). Takes about 15 minutes on 2 cores.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "tools"), str(REPO / "tests")]

from demo_world import World, create_world  # noqa: E402
from docker_stack import AIRFLOW_SERVICES, SYNC_UID, Stack, deploy, run  # noqa: E402
from helpers import free_port, make_bag_zip  # noqa: E402

PROJECT = "bdrc-bench-workers"
EVENT_DAG = "sqs_event_dag"
BUCKET, QUEUE = "archive.bench.example", "restores"
CONFIG = (
    'sqs_schedule = "None"\nsqs_wait_seconds = 2\nmax_messages_per_run = 50\n'
    '[[queues]]\nname = "bench"\n'
    f'queue_url = "http://moto:5000/123456789012/{QUEUE}"\n'
    f'region = "us-east-1"\nbucket = "{BUCKET}"\nprofile = "default"\n'
)
SYNC_COUNTS = """
import json
from glacier_sync.runner import open_store
from glacier_sync.settings import load_settings
rows = open_store(load_settings()).find()
print(json.dumps({r.work_id: [r.state, [h["event"] for h in r.history].count("sync done")]
                  for r in rows}))
"""


def build_image(tmp: Path) -> str:
    """The stand-in base images, then this checkout's image; return its name."""
    run(["bash", str(REPO / "tests" / "docker" / "build-test-images.sh")], timeout=1800)
    image = "bdrc-airflow:bench"
    run(
        ["bash", str(REPO / "bdrc-docker.sh"), "--build-dir", str(tmp / "build"), "--rebuild"]
        + ["--base-image", "bdrc-test/bookworm-python:3.11", "--image", image],
        timeout=2400,
    )
    return image


def deploy_stack(tmp: Path, image: str, workers: int, executor: str = "celery") -> Stack:
    """Deploy (or re-deploy) the instance in ``tmp/instance``; return its stack, started."""
    creds, config = tmp / "aws-credentials", tmp / "glacier-sync.toml"
    creds.write_text("[default]\naws_access_key_id = testing\naws_secret_access_key = testing\n")
    config.write_text(CONFIG)
    archive = tmp / "archive"
    if not archive.exists():
        archive.mkdir()
        os.chown(archive, SYNC_UID, 0)
    override = tmp / "docker-compose.bench.yaml"
    ports = json.loads(override.with_suffix(".json").read_text()) if override.exists() else {}
    ports = ports or {"ui": free_port(), "moto": free_port()}
    override.with_suffix(".json").write_text(json.dumps(ports))
    override.write_text(f"""version: "3.9"
services:
  moto:
    image: bdrc-test/moto:5.2.5
    ports:
      - "127.0.0.1:{ports["moto"]}:5000"
""")
    stack = Stack(tmp / "instance", PROJECT, ports["ui"], override, workers=workers)
    stack.moto = f"http://127.0.0.1:{ports['moto']}"
    extra = ["--executor", executor]
    if executor == "celery":
        extra += ["--workers", str(workers), "--worker-concurrency", "4"]
        extra += ["--redis-image", "bdrc-test/redis:7", "--flower", "off"]
    inputs = {"creds": creds, "config": config}
    deploy(
        REPO,
        stack.dest,
        inputs,
        "--arch-root",
        str(archive),
        "--aws-endpoint-url",
        "http://moto:5000",
        "--image",
        image,
        "--ui-port",
        str(ports["ui"]),
        "--project-name",
        PROJECT,
        *extra,
    )
    stack.healthy = AIRFLOW_SERVICES + (("redis",) if executor == "celery" else ())
    stack.compose("up", "-d")
    return stack


def scale(stack: Stack, client, workers: int) -> None:
    """Run exactly ``workers`` Celery workers and wait until all are healthy."""
    stack.compose("up", "-d", "--scale", f"airflow-worker={workers}")
    stack.workers = workers
    stack.wait_healthy(client)


def restore_works(world: World, tmp: Path, name: str, count: int) -> tuple[list[Path], float]:
    """Upload ``count`` new bags, then request every restore; return their archive folders
    and the moment the first restore was requested."""
    keys = []
    for index in range(count):
        work = f"W9{name.upper()}{index:04d}"
        zip_path = make_bag_zip(tmp / "bags" / name, work, files={"a.txt": work.encode() * 50})
        key = f"Archive9/{index % 100:02d}/{work}/{work}.bag.zip"
        world.upload_archived(zip_path, key)
        keys.append(key)
    started = time.monotonic()
    for key in keys:
        world.restore(key)
    archive = tmp / "archive"
    return [archive / Path(key).parent for key in keys], started


def wait_archived(folders: list[Path], started: float, timeout: float = 3600) -> float:
    """Seconds from ``started`` until every folder exists (a sync renames a work into place)."""
    while True:
        if all(folder.is_dir() for folder in folders):
            return time.monotonic() - started
        if time.monotonic() - started > timeout:
            missing = sum(not folder.is_dir() for folder in folders)
            raise SystemExit(f"bench_workers: {missing} works not archived after {timeout:.0f} s")
        time.sleep(1)


def run_once_until(stack: Stack, folders: list[Path], started: float) -> float:
    """Call ``glacier-sync run-once`` in the scheduler container until every work is archived."""
    while not all(folder.is_dir() for folder in folders):
        stack.exec("glacier-sync", "run-once", check=False)  # a failed work: status says
        if time.monotonic() - started > 3600:
            raise SystemExit("bench_workers: run-once did not archive every work in an hour")
    return time.monotonic() - started


def main() -> None:
    """Command line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--works", type=int, default=100)
    parser.add_argument("--workers", default="1,2,3")
    parser.add_argument("--image", default=None, help="an image built already (bdrc-docker.sh)")
    parser.add_argument("--keep", action="store_true", help="leave the stack and its folder")
    args = parser.parse_args()
    counts = [int(n) for n in args.workers.split(",")]
    import docker

    client = docker.from_env()
    tmp = Path(tempfile.mkdtemp(prefix="glacier-sync-bench-workers-"))
    image = args.image or build_image(tmp)
    stack = deploy_stack(tmp, image, max(counts))
    results: list[tuple[str, float]] = []
    try:
        stack.wait_healthy(client)
        world = create_world(stack.moto, bucket=BUCKET, queue=QUEUE)
        stack.api().wait_for_dag(EVENT_DAG)
        for workers in counts:
            scale(stack, client, workers)
            folders, started = restore_works(world, tmp, f"c{workers}", args.works)
            results.append((f"celery, {workers} worker(s)", wait_archived(folders, started)))
            print(f"{results[-1][0]}: {results[-1][1]:.1f} s", flush=True)

        stack.compose("stop", "airflow-worker")
        stack = deploy_stack(tmp, image, 0, executor="local")
        stack.wait_healthy(client)
        folders, started = restore_works(world, tmp, "local", args.works)
        results.append(("LocalExecutor", wait_archived(folders, started)))
        print(f"{results[-1][0]}: {results[-1][1]:.1f} s", flush=True)

        api = stack.api()
        api.pause(EVENT_DAG)
        folders, started = restore_works(world, tmp, "once", args.works)
        results.append(("run-once", run_once_until(stack, folders, started)))
        print(f"{results[-1][0]}: {results[-1][1]:.1f} s", flush=True)

        counts_by_work = json.loads(stack.exec("python", "-c", SYNC_COUNTS).stdout)
        wrong = {w: c for w, c in counts_by_work.items() if c != ["synced", 1]}
        assert not wrong, f"works not archived exactly once: {wrong}"
    finally:
        if not args.keep:
            stack.compose("--profile", "celery", "down", "-v", "--remove-orphans", check=False)
    baseline = results[-1][1]
    print(f"\n{args.works} small works per path, {os.cpu_count()} cores")
    print(f"{'path':<24}{'seconds':>9}{'works/min':>11}{'vs run-once':>13}")
    for name, seconds in results:
        rate, ratio = args.works * 60 / seconds, seconds / baseline
        print(f"{name:<24}{seconds:>9.1f}{rate:>11.0f}{ratio:>12.2f}x")
    if args.keep:
        print(f"stack kept: {stack.dest} (project {PROJECT})")


if __name__ == "__main__":
    main()
