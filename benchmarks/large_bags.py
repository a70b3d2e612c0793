"""Large bags end to end, for ``bench_large_works.py --bags``: run-once and Airflow's services.

Each bag is built (stored zip, SHA-512 manifest, random payload), uploaded to s3rver (S3: ranges
from disk) and announced by an ``ObjectRestore:Completed`` body sent to a moto server's queue
(SQS only: moto would copy a multi-GB object for every ranged GET). The pipeline reaches the two
through boto3's per-service endpoints (``AWS_ENDPOINT_URL_S3``, ``AWS_ENDPOINT_URL_SQS``), as
its own settings have one endpoint for both. Every path runs in fresh folders and a fresh
progress database, the sync copying the work folder (``sync_move_work = false``: an archive on
another file system). A sampler records the peak RSS of every process that appears meanwhile,
grouped by role; the phases' seconds come from the progress database.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import psutil

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
sys.path[:0] = [str(BENCH), str(REPO / "tools"), str(REPO / "tests")]

from bench_debag import make_bag_zip  # noqa: E402
from demo_world import create_world, settings_env  # noqa: E402

MIB = 1024 * 1024
PHASES = ("download", "debag", "sync")


@dataclass(frozen=True)
class Bag:
    """A bag shape: ``files`` payload files summing to ``total`` bytes."""

    label: str
    total: int
    files: int

    @property
    def work_id(self) -> str:
        return f"W1{self.label.upper().replace('-', '')}"

    @property
    def key(self) -> str:
        return f"Archive0/00/{self.work_id}/{self.work_id}.bag.zip"


@dataclass
class PeakRss:
    """Samples every process not running when it started; the peak RSS per role, in bytes, and
    the peak of its own memory (USS: the pages no other process shares; a task process forked
    from an Airflow service shares most of its RSS with it)."""

    interval: float = 0.2
    peaks: dict[str, int] = field(default_factory=dict)
    own: dict[str, int] = field(default_factory=dict)
    _stop: threading.Event = field(default_factory=threading.Event)

    def __enter__(self) -> PeakRss:
        self._before = {p.pid for p in psutil.process_iter()}
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            for proc in psutil.process_iter(["pid", "cmdline", "memory_info"]):
                info = proc.info
                if info["pid"] in self._before or not info["memory_info"]:
                    continue
                role = role_of(info["cmdline"] or [])
                self.peaks[role] = max(self.peaks.get(role, 0), info["memory_info"].rss)
                with contextlib.suppress(psutil.Error):
                    uss = proc.memory_full_info().uss
                    self.own[role] = max(self.own.get(role, 0), uss)


def role_of(cmdline: list[str]) -> str:
    """A short name for a process: the program and its sub-command."""
    if not cmdline:
        return "?"
    words = " ".join(cmdline).split()
    if words[0].endswith(("python", "python3", "python3.11")) and len(words) > 1:
        words = words[1:]
    program = Path(words[0]).name
    if program in ("airflow", "glacier-sync", "bash", "local-airflow.sh") and len(words) > 1:
        second = Path(words[1]).name if program == "bash" else words[1]
        return f"{program} {second}"[:48]
    return " ".join(words[:3])[:48]


def build(bag: Bag, folder: Path) -> Path:
    """The bag's zip in ``folder`` (reused when there)."""
    folder.mkdir(parents=True, exist_ok=True)
    return make_bag_zip(folder / f"{bag.work_id}.bag.zip", bag.total, bag.files, 0, seed=7)


def upload(s3: object, bucket: str, bag: Bag, zip_path: Path) -> str:
    """Upload the zip to s3rver; return its eTag."""
    from boto3.s3.transfer import TransferConfig

    config = TransferConfig(multipart_threshold=64 * MIB, multipart_chunksize=64 * MIB)
    s3.upload_file(str(zip_path), bucket, bag.key, Config=config)
    return s3.head_object(Bucket=bucket, Key=bag.key)["ETag"].strip('"')


def restore_event(bucket: str, bag: Bag, size: int, etag: str) -> str:
    """The body S3 sends to SQS when the bag's restore completed."""
    record = {
        "eventVersion": "2.1",
        "eventSource": "aws:s3",
        "awsRegion": "us-east-1",
        "eventTime": "2026-12-06T00:00:00.000Z",
        "eventName": "ObjectRestore:Completed",
        "s3": {
            "bucket": {"name": bucket},
            "object": {"key": bag.key, "size": size, "eTag": etag},
        },
    }
    return json.dumps({"Records": [record]})


@dataclass
class Scene:
    """A fresh queue, folders and progress database for one bag on one path."""

    env: dict[str, str]
    folder: Path
    progress_url: str
    zip_path: Path | None = None  # the built bag, for ``process-bag`` (no download)
    key: str = ""


def scene_for(
    bag: Bag, path: str, workdir: Path, moto: str, s3rver: str, bucket: str, etag: str, size: int
) -> Scene:
    folder = workdir / f"{bag.label}-{path}"
    shutil.rmtree(folder, ignore_errors=True)
    world = create_world(moto, bucket=bucket, queue=f"q-{bag.label}-{path}")
    world.send_body(restore_event(bucket, bag, size, etag))
    data, archive = folder / "data", folder / "archive"
    archive.mkdir(parents=True)
    progress_url = f"sqlite:///{folder / 'progress.sqlite'}"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GLACIER_SYNC_", "AWS_"))}
    env.update(settings_env(world, data, archive))
    del env["GLACIER_SYNC_AWS_ENDPOINT_URL"]
    env.update(
        {
            "AWS_ENDPOINT_URL_S3": s3rver,
            "AWS_ENDPOINT_URL_SQS": moto,
            "AWS_ACCESS_KEY_ID": "S3RVER",
            "AWS_SECRET_ACCESS_KEY": "S3RVER",
            "GLACIER_SYNC_PROGRESS_DB_URL": progress_url,
            "GLACIER_SYNC_SYNC_MOVE_WORK": "false",
            "GLACIER_SYNC_SQS_WAIT_SECONDS": "1",
            "GLACIER_SYNC_POLL_RETRIES": "0",
        }
    )
    return Scene(env, folder, progress_url, key=bag.key)


def phase_seconds(progress_url: str, work_id: str) -> dict[str, float]:
    """The seconds of each phase of the work's synced row."""
    from glacier_sync.records.progress import ProgressStore

    store = ProgressStore(progress_url)
    try:
        rows = store.find([work_id])
    finally:
        store.engine.dispose()
    assert len(rows) == 1 and rows[0].state == "synced", [r.summary() for r in rows]
    seconds = {}
    for entry in rows[0].history:
        name = entry["event"].removesuffix(" done")
        if name in PHASES and "seconds" in entry:
            seconds[name] = entry["seconds"]
    return seconds


def archived_matches(scene: Scene, bag: Bag) -> bool:
    """The archive holds the bag's payload: its file count and bytes (Payload-Oxum)."""
    work = next((scene.folder / "archive").rglob(bag.work_id))
    payload = [p for p in work.rglob("*") if p.is_file() and f"{bag.work_id}.bag" not in p.parts]
    return len(payload) == bag.files and sum(p.stat().st_size for p in payload) == bag.total


def process_bag(scene: Scene) -> float:
    """``glacier-sync process-bag`` on the built zip (hard-linked into the scene: the same bytes,
    no copy): the debag and the sync without a download."""
    assert scene.zip_path is not None, "process-bag needs the built zip"
    linked = scene.folder / "bags" / scene.zip_path.name
    linked.parent.mkdir(parents=True, exist_ok=True)
    os.link(scene.zip_path, linked)
    started = time.perf_counter()
    subprocess.run(
        [str(Path(sys.executable).parent / "glacier-sync"), "process-bag", str(linked)]
        + ["--archive-root", scene.env["GLACIER_SYNC_ARCHIVE_ROOT"], "--key", scene.key],
        env=scene.env,
        check=True,
        capture_output=True,
        timeout=4 * 3600,
    )
    return time.perf_counter() - started


def run_once(scene: Scene) -> float:
    started = time.perf_counter()
    subprocess.run(
        [str(Path(sys.executable).parent / "glacier-sync"), "run-once"],
        env=scene.env,
        check=True,
        capture_output=True,
        timeout=4 * 3600,
    )
    return time.perf_counter() - started


def services(scene: Scene) -> float:
    """The scheduled DAG under local-airflow.sh's services (LocalExecutor), triggered once."""
    from bench_pipeline import Services

    runner = Services(scene.folder / "airflow-home")
    runner(scene.env, scene.folder)
    return time.perf_counter() - runner.started


PATHS = {"process-bag": process_bag, "run-once": run_once, "services": services}
# Issue 33's limits: peak RSS of every process of the pipeline, and the debag's time against the
# SHA-512 floor (a bag of large files; one of many small files, file creation included).
RSS_LIMIT = 200 * MIB
FLOOR_LIMIT_LARGE, FLOOR_LIMIT_SMALL, SMALL_FILES = 1.1, 2.0, 10_000


def verdict(bag: Bag, peaks: dict[str, int], over_floor: float, over_written: float) -> str:
    """One line: each limit, the figure and whether it is met (the processes over the RSS
    limit named: Airflow's own services are among them on the services path). A bag of large
    files is held to the SHA-512 floor; one of many small files to the floor with each file
    written (the file creation no debag avoids)."""
    over = ", ".join(
        f"{role} {rss / MIB:.0f} MB" for role, rss in peaks.items() if rss >= RSS_LIMIT
    )
    rss = f"peak RSS < {RSS_LIMIT / MIB:.0f} MB per process: " + (
        f"NOT met by {over}" if over else "met"
    )
    if bag.files >= SMALL_FILES:
        ratio, limit, floor = over_written, FLOOR_LIMIT_SMALL, "SHA-512 + file-writing floor"
    else:
        ratio, limit, floor = over_floor, FLOOR_LIMIT_LARGE, "SHA-512 floor"
    return f"{rss}; debag {ratio:.2f} x the {floor} <= {limit}: " + (
        "met" if ratio <= limit else "NOT met"
    )


def disk_needed(bags: list[Bag], paths: list[str]) -> int:
    """Bytes the runs hold at once at worst: the largest bag's zip, its copy in s3rver, and a
    path's downloaded zip, work folder and archive copy (each path's folders are removed before
    the next), plus a tenth for the zip's and the file system's overhead."""
    largest = max((bag.total for bag in bags), default=0)
    return int(largest * (2 + 3) * 1.1) if paths else int(largest * 2 * 1.1)
