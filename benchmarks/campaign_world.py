"""The fault campaign's world: its settings, the random bags it uploads, restores and
re-sends, and what the progress database holds (``fault_campaign.py`` runs it)."""

from __future__ import annotations

import argparse
import json
import os
import random
import sqlite3
import sys
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tools"))
BIN = Path(sys.executable).parent

from demo_world import (  # noqa: E402
    World,
    settings_env,
    write_bag_zip,
)

from glacier_sync.settings import DEFAULT_SYNC_COMMAND  # noqa: E402

# Fault points (glacier_sync.faults and the default sync script) and the highest pass number
# drawn for each: a run passes some points once per work, others once per file or per commit.
# The points in use are read from the sources (fault_points()); one not listed here gets
# DEFAULT_PASSES, "sync:swapping" is left out (only a replacing sync, -A, passes it).
FAULT_POINTS: dict[str, int] = {
    "poll:recorded": 15,  # recorded, message not deleted yet
    "download:chunk": 4,  # inside a download
    "download:renamed": 3,  # zip in place, its completion record not yet
    "progress:before-commit": 20,  # inside a progress update
    "debag:member": 40,  # inside an extraction
    "debag:placed": 3,  # work folder in place, no marker yet
    "debag:marked": 3,  # marker written, debag not recorded
    "sync:before-script": 3,
    "sync:copied": 1,  # staging copy in the archive, not verified (bash: first pass only)
    "sync:before-rename": 1,  # staging verified, not renamed (bash)
    "sync:renamed": 1,  # archive copy in place, success list not written (bash)
    "sync:after-script": 3,  # script done, sync not recorded
    "sync:recorded": 3,  # recorded, clean-up not started
    "cleanup:file": 40,  # inside a clean-up: work folder half deleted
}

DEFAULT_PASSES = 3

NOT_PASSED = {"sync:swapping"}

SYNC_SCRIPT = DEFAULT_SYNC_COMMAND

CAMPAIGN_MESSAGES_PER_RUN = 25

CLEAN_MESSAGES_PER_RUN = 100

VISIBILITY_SECONDS = 2

CONCURRENT_SHARE = 0.15  # rounds with a second run beside the first

FAULT_SHARE = 0.3  # rounds whose first run carries a fault point

EARLY_SHARE = 0.2  # timer kills in the start-up or poll (the others: after a first claim)

DUPLICATE_SHARE = 0.1  # Completed bodies sent once or twice more

RUN_TIMEOUT = 300.0  # a campaign run still alive after this is killed and counted as hung

MAX_CLEAN_RUNS = 40

INSIDE = ("download:", "debag:", "sync:", "clean-up")

TIBETAN = "བོད་ཡིག"


@dataclass(frozen=True)
class Bag:
    """One work: its S3 key, its zip, and the files its archived tree must hold."""

    work_id: str
    key: str
    zip_path: Path
    expected: dict[str, bytes]  # path relative to the archive root -> content

    @property
    def group(self) -> str:
        """The archive folder that receives the work (``Archive0/NN``)."""
        return str(PurePosixPath(self.key).parent.parent)


@dataclass
class Ctx:
    """The campaign's world, folders, settings and timing estimates."""

    args: argparse.Namespace
    world: World
    tmp: Path
    bags: list[Bag]
    env: dict[str, str]
    started: float
    startup: float = 2.0
    per_work: float = 0.4
    pace: float = 1.0  # corrects the estimates from what the rounds achieve
    share: float = 1.0  # works each killed run may finish, for the kills to spread over all
    synced: int = 0  # works synced before the round
    points: dict[str, int] = field(default_factory=dict)  # fault point -> highest pass drawn

    @property
    def data(self) -> Path:
        """The data root (progress database, incoming, work, logs)."""
        return self.tmp / "data"

    @property
    def archive(self) -> Path:
        """The archive root."""
        return self.tmp / "archive"

    @property
    def db(self) -> Path:
        """The SQLite progress database."""
        return self.data / "progress.sqlite"

    def elapsed(self) -> float:
        """Seconds since the campaign began."""
        return time.monotonic() - self.started

    def time_left(self) -> float:
        """Seconds left before the wall-clock bound."""
        return self.args.seconds - self.elapsed()


# -- the emulator ---------------------------------------------------------------------------
# -- bags -----------------------------------------------------------------------------------
def random_files(rng: random.Random, small: bool) -> dict[str, bytes]:
    """Payload files of one bag: a few to ~40 files, 1 KB-300 KB in all (tiny with --small)."""
    count = rng.randint(1, 4) if small else rng.randint(3, 40)
    total = rng.randint(64, 2048) if small else rng.randint(1024, 300 * 1024)
    weights = [rng.random() + 0.05 for _ in range(count)]
    scale = total / sum(weights)
    files: dict[str, bytes] = {}
    for index, weight in enumerate(weights):
        size = max(1, int(weight * scale))
        roll = rng.random()
        if roll < 0.1:
            name = f"sources/{TIBETAN}-{index}.txt"
        elif roll < 0.2:
            name = f"archive/scan notes {index}.txt"
        elif roll < 0.35:
            name = f"images/sub{index % 3}/I{index:04d}.tif"
        else:
            name = f"images/I{index:04d}.tif"
        if rng.random() < 0.25:
            content = (b"scan line %d " % index) * (size // 12 + 1)
            files[name] = content[:size]
        else:
            files[name] = rng.randbytes(size)
    return files


def expected_tree(zip_path: Path, work_id: str, group: str) -> dict[str, bytes]:
    """The archived work as it must be: payload at <work>/<path>, tags at <work>/<work>.bag/."""
    tree: dict[str, bytes] = {}
    with zipfile.ZipFile(zip_path) as zf:
        for info in zf.infolist():
            if info.is_dir():
                continue
            name = info.filename
            rel = name[len("data/") :] if name.startswith("data/") else f"{work_id}.bag/{name}"
            tree[f"{group}/{work_id}/{rel}"] = zf.read(info)
    return tree


def build_bags(
    rng: random.Random, count: int, folder: Path, small: bool, prefix: str = "W1FC"
) -> list[Bag]:
    """Write ``count`` bag zips with random content; keys ``Archive0/NN/W…/W….bag.zip``."""
    bags = []
    for index in range(count):
        work_id = f"{prefix}{index:05d}"
        group = f"Archive0/{rng.randrange(100):02d}"
        key = f"{group}/{work_id}/{work_id}.bag.zip"
        zip_path = write_bag_zip(folder / f"{work_id}.bag.zip", random_files(rng, small))
        bags.append(Bag(work_id, key, zip_path, expected_tree(zip_path, work_id, group)))
    return bags


def publish(world: World, bags: list[Bag], rng: random.Random) -> tuple[int, int]:
    """Upload the bags as DEEP_ARCHIVE, restore them, re-send some Completed bodies verbatim;
    return (Completed events seen, duplicate bodies sent)."""
    restore_bags(world, bags)
    sqs = world.client("sqs")
    received = receive_all(sqs, world.queue_url)
    completed = [m["Body"] for m in received if "ObjectRestore:Completed" in m["Body"]]
    duplicates = 0
    for body in completed:
        if rng.random() < DUPLICATE_SHARE:
            for _ in range(rng.randint(1, 2)):
                sqs.send_message(QueueUrl=world.queue_url, MessageBody=body)
                duplicates += 1
    for start in range(0, len(received), 10):
        entries = [
            {"Id": str(i), "ReceiptHandle": m["ReceiptHandle"], "VisibilityTimeout": 0}
            for i, m in enumerate(received[start : start + 10])
        ]
        sqs.change_message_visibility_batch(QueueUrl=world.queue_url, Entries=entries)
    return len(completed), duplicates


def restore_bags(world: World, bags: list[Bag]) -> None:
    """Upload the bags as DEEP_ARCHIVE objects and restore them (Completed events queued)."""
    s3 = world.client("s3")
    for bag in bags:
        s3.upload_file(
            str(bag.zip_path), world.bucket, bag.key, ExtraArgs={"StorageClass": "DEEP_ARCHIVE"}
        )
        s3.restore_object(
            Bucket=world.bucket,
            Key=bag.key,
            RestoreRequest={"Days": 1, "GlacierJobParameters": {"Tier": "Bulk"}},
        )
        s3.head_object(Bucket=world.bucket, Key=bag.key)  # moto: ObjectRestore:Completed now


def receive_all(sqs: Any, queue_url: str) -> list[dict[str, Any]]:
    """Every message of the queue, held invisible for a while (to copy their bodies)."""
    messages: dict[str, dict[str, Any]] = {}
    while True:
        batch = sqs.receive_message(
            QueueUrl=queue_url, MaxNumberOfMessages=10, WaitTimeSeconds=0, VisibilityTimeout=300
        ).get("Messages", [])
        if not batch:
            return list(messages.values())
        for message in batch:
            messages.setdefault(message["MessageId"], message)


# -- runs -----------------------------------------------------------------------------------
def base_env(world: World, data: Path, archive: Path) -> dict[str, str]:
    """The runs' environment: this process's, without GLACIER_SYNC_*, plus the world's."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("GLACIER_SYNC_")}
    env.update(settings_env(world, data, archive))
    env["GLACIER_SYNC_SQS_WAIT_SECONDS"] = "0"
    env["GLACIER_SYNC_SQS_VISIBILITY_TIMEOUT"] = str(VISIBILITY_SECONDS)
    env["GLACIER_SYNC_MAX_MESSAGES_PER_RUN"] = str(CAMPAIGN_MESSAGES_PER_RUN)
    return env


# -- where a kill landed ----------------------------------------------------------------------
def read_rows(db: Path) -> list[dict[str, Any]]:
    """Every progress row, read-only (no write lock taken); [] before the database exists."""
    if not db.exists():
        return []
    uri = f"file:{db}?mode=ro"
    try:
        with sqlite3.connect(uri, uri=True, timeout=60) as conn:
            conn.row_factory = sqlite3.Row
            rows = conn.execute("SELECT * FROM glacier_sync_progress ORDER BY id").fetchall()
    except sqlite3.OperationalError:
        return []
    result = []
    for row in rows:
        item = dict(row)
        item["history"] = json.loads(item["history"] or "[]")
        result.append(item)
    return result
