"""The demo's world on an S3/SQS emulator: a bucket, restore queues, a sample bag, its restore.

Used by ``local-airflow.sh demo`` (``python tools/demo_world.py``), the tests and the benchmarks;
kept out of the shipped package. Talks to the emulator only (fake credentials); never to AWS.
"""

from __future__ import annotations

import argparse
import json
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

DEMO_BUCKET = "glacier.demo.example.org"
DEMO_QUEUE = "glacier-restores"
DEMO_REGION = "us-east-1"
DEMO_WORK = "W1NLM4700"
DEMO_KEY = f"Archive0/00/{DEMO_WORK}/{DEMO_WORK}.bag.zip"
FAKE_CREDENTIALS = {"aws_access_key_id": "demo", "aws_secret_access_key": "demo"}

SAMPLE_FILES = {
    "images/I1NLM4700_0001.tif": b"II*\x00" + bytes(range(256)) * 64,
    "images/I1NLM4700_0002.tif": b"II*\x00" + bytes(reversed(range(256))) * 64,
    "sources/བསྟན་འགྱུར།.txt": "བཀྲ་ཤིས་བདེ་ལེགས། sample source text\n".encode(),
    "archive/scan-notes.txt": b"Scanned for the demo. Deterministic content.\n",
}


@dataclass
class World:
    """A bucket and a queue (with a dead-letter queue) wired by a restore notification."""

    endpoint: str
    bucket: str
    queue_url: str
    dlq_url: str
    region: str = DEMO_REGION

    def client(self, service: str) -> Any:
        """A boto3 client on the emulator."""
        import boto3

        return boto3.client(
            service, endpoint_url=self.endpoint, region_name=self.region, **FAKE_CREDENTIALS
        )

    def queue_entry(self, **extra: Any) -> dict[str, Any]:
        """The settings' queue entry for this world."""
        return {
            "name": "demo",
            "queue_url": self.queue_url,
            "region": self.region,
            "bucket": self.bucket,
            **extra,
        }

    def upload_archived(self, zip_path: Path, key: str, **extra: Any) -> None:
        """Put a bag zip as a DEEP_ARCHIVE object with boto3's ``upload_file`` defaults and
        ``extra`` arguments (SSE-KMS, a checksum algorithm); refused first when moto cannot
        hold it."""
        from machine_room import require_moto_room

        require_moto_room(zip_path.stat().st_size, f"the bag {zip_path.name}")
        self.client("s3").upload_file(
            str(zip_path), self.bucket, key, ExtraArgs={"StorageClass": "DEEP_ARCHIVE", **extra}
        )

    def restore(self, key: str) -> None:
        """Request the restore; the emulator sends ObjectRestore:Completed on the next HEAD."""
        s3 = self.client("s3")
        s3.restore_object(
            Bucket=self.bucket,
            Key=key,
            RestoreRequest={"Days": 1, "GlacierJobParameters": {"Tier": "Bulk"}},
        )
        s3.head_object(Bucket=self.bucket, Key=key)

    def send_body(self, body: str) -> None:
        """Send a raw message body to the restore queue."""
        self.client("sqs").send_message(QueueUrl=self.queue_url, MessageBody=body)

    def queue_count(self, url: str | None = None) -> int:
        """Messages in a queue, visible or in flight."""
        attrs = self.client("sqs").get_queue_attributes(
            QueueUrl=url or self.queue_url,
            AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"],
        )["Attributes"]
        return sum(int(v) for v in attrs.values())


def free_port() -> int:
    """A free TCP port on 127.0.0.1."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def moto_server(log_file: Path) -> Iterator[str]:
    """A real moto server process on 127.0.0.1; yields its endpoint URL."""
    port = free_port()
    with log_file.open("w") as log:
        proc = subprocess.Popen(
            [str(Path(sys.executable).parent / "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    endpoint = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                urllib.request.urlopen(endpoint + "/moto-api/", timeout=1)  # noqa: S310
                break
            except OSError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise RuntimeError(f"moto server did not start; see {log_file}") from None
                time.sleep(0.2)
        yield endpoint
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def reset_emulator(endpoint: str) -> None:
    """Clear every bucket and queue of the moto server."""
    request = urllib.request.Request(endpoint + "/moto-api/reset", method="POST")
    urllib.request.urlopen(request, timeout=10)  # noqa: S310 - loopback emulator only


def create_world(
    endpoint: str,
    bucket: str = DEMO_BUCKET,
    queue: str = DEMO_QUEUE,
    max_receive: int = 3,
    reset: bool = True,
) -> World:
    """Create the bucket, the queue and its dead-letter queue, and the bucket notification."""
    if reset:
        reset_emulator(endpoint)
    world = World(endpoint, bucket, "", "")
    s3, sqs = world.client("s3"), world.client("sqs")
    s3.create_bucket(Bucket=bucket)
    world.dlq_url = sqs.create_queue(QueueName=queue + "-dlq")["QueueUrl"]
    dlq_arn = _queue_arn(sqs, world.dlq_url)
    policy = {"deadLetterTargetArn": dlq_arn, "maxReceiveCount": str(max_receive)}
    world.queue_url = sqs.create_queue(
        QueueName=queue, Attributes={"RedrivePolicy": json.dumps(policy)}
    )["QueueUrl"]
    s3.put_bucket_notification_configuration(
        Bucket=bucket,
        NotificationConfiguration={
            "QueueConfigurations": [
                {"QueueArn": _queue_arn(sqs, world.queue_url), "Events": ["s3:ObjectRestore:*"]}
            ]
        },
    )
    return world


def _queue_arn(sqs: Any, url: str) -> str:
    return sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"][
        "QueueArn"
    ]


def write_bag_zip(zip_path: Path, files: dict[str, bytes] | None = None) -> Path:
    """A valid BagIt zip (bagit-python, sha512) holding ``files``; deterministic content."""
    import bagit

    with tempfile.TemporaryDirectory() as tmp:
        bag_dir = Path(tmp) / "bag"
        for rel, content in (files or SAMPLE_FILES).items():
            path = bag_dir / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(content)
        bagit.make_bag(str(bag_dir), {"Source-Organization": "Demo Archive"}, checksums=["sha512"])
        zip_path.parent.mkdir(parents=True, exist_ok=True)
        with zipfile.ZipFile(zip_path, "w", zipfile.ZIP_DEFLATED) as zf:
            for path in sorted(bag_dir.rglob("*")):
                if path.is_file():
                    zf.write(path, path.relative_to(bag_dir).as_posix())
    return zip_path


def settings_env(world: World, data_root: Path, archive_root: Path) -> dict[str, str]:
    """GLACIER_SYNC_* variables (and fake emulator credentials) for this world."""
    return {
        "GLACIER_SYNC_ENV": "dev",
        "GLACIER_SYNC_QUEUES": json.dumps([world.queue_entry()]),
        "GLACIER_SYNC_AWS_ENDPOINT_URL": world.endpoint,
        "GLACIER_SYNC_AWS_CREDENTIALS_FILE": str(data_root / "no-aws-credentials"),
        "GLACIER_SYNC_DATA_ROOT": str(data_root),
        "GLACIER_SYNC_ARCHIVE_ROOT": str(archive_root),
        "GLACIER_SYNC_SQS_WAIT_SECONDS": "1",
        "GLACIER_SYNC_POLL_RETRIES": "2",
        "GLACIER_SYNC_POLL_RETRY_DELAY_SECONDS": "10",
        "GLACIER_SYNC_SQS_SCHEDULE": "None",
        "AWS_ACCESS_KEY_ID": FAKE_CREDENTIALS["aws_access_key_id"],
        "AWS_SECRET_ACCESS_KEY": FAKE_CREDENTIALS["aws_secret_access_key"],
        "AWS_DEFAULT_REGION": world.region,
    }


def setup(endpoint: str, state_dir: Path, works: int = 1) -> dict[str, str]:
    """Create the world, upload the sample bag(s) as DEEP_ARCHIVE, restore them; return the env."""
    world = create_world(endpoint)
    bags = state_dir / "bags"
    for index in range(works):
        work_id = DEMO_WORK if index == 0 else f"W1DEMO{index:04d}"
        files = SAMPLE_FILES if index == 0 else {**SAMPLE_FILES, "index.txt": str(index).encode()}
        zip_path = write_bag_zip(bags / f"{work_id}.bag.zip", files)
        key = DEMO_KEY if index == 0 else f"Archive0/00/{work_id}/{work_id}.bag.zip"
        world.upload_archived(zip_path, key)
        world.restore(key)
    env = settings_env(world, state_dir / "data", state_dir / "archive")
    (state_dir / "archive").mkdir(parents=True, exist_ok=True)
    return env


def summary(data_root: Path, work_id: str = DEMO_WORK) -> tuple[bool, str]:
    """Where the work landed, its progress row and each phase's seconds."""
    from glacier_sync.records.progress import ProgressStore
    from glacier_sync.records.states import State

    store = ProgressStore(f"sqlite:///{data_root / 'progress.sqlite'}")
    rows = store.find([work_id])
    if not rows:
        return False, f"work {work_id}: no row in the progress database"
    row = rows[-1]
    lines = [f"work {row.work_id}: {row.state}"]
    if row.archive_path:
        files = sorted(p for p in Path(row.archive_path).rglob("*") if p.is_file())
        lines.append(f"archived at {row.archive_path} ({len(files)} files)")
    if row.last_error:
        lines.append(f"last error: {row.last_error}")
    phases = {}
    for entry in row.history:
        if entry["event"].endswith(" done") and "seconds" in entry:
            phases[entry["event"].removesuffix(" done")] = entry["seconds"]
    lines.append("seconds per phase: " + ", ".join(f"{k} {v:.2f}" for k, v in phases.items()))
    lines.append("progress row: " + json.dumps(row.summary(), indent=2))
    return row.state == State.SYNCED, "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """``python tools/demo_world.py setup|summary``."""
    parser = argparse.ArgumentParser(prog="python tools/demo_world.py")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("setup", help="create the emulator world and restore the sample bag")
    p.add_argument("--endpoint", required=True)
    p.add_argument("--state-dir", type=Path, required=True)
    p.add_argument("--works", type=int, default=1)
    p.add_argument("--env-file", type=Path, required=True, help="write the settings here")
    p = sub.add_parser("summary", help="print where the demo work landed")
    p.add_argument("--data-root", type=Path, required=True)
    p = sub.add_parser("clean", help="remove the demo folder")
    p.add_argument("--state-dir", type=Path, required=True)
    args = parser.parse_args(argv)
    if args.command == "setup":
        env = setup(args.endpoint, args.state_dir, args.works)
        args.env_file.write_text("".join(f"export {k}='{v}'\n" for k, v in env.items()))
        print(
            f"restored {args.works} sample bag(s) into {DEMO_BUCKET}; "
            "ObjectRestore:Completed is in the queue"
        )
        return 0
    if args.command == "summary":
        ok, text = summary(args.data_root)
        print(text)
        return 0 if ok else 1
    shutil.rmtree(args.state_dir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
