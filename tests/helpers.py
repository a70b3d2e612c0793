"""Test helpers: bag zips built with bagit, a moto server on loopback, the S3 restore flow."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import bagit

REPO = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent

DEFAULT_FILES = {
    "images/I1_0001.tif": b"TIFF" + bytes(range(256)) * 40,
    "images/I1_0002.tif": b"TIFF" + bytes(reversed(range(256))) * 40,
    "sources/བོད་ཡིག.txt": "བཀྲ་ཤིས་བདེ་ལེགས།\n".encode(),
    "archive/notes.txt": b"scanned 2026\n",
}


def make_bag_dir(
    root: Path,
    work_id: str,
    files: dict[str, bytes] | None = None,
    checksums: tuple[str, ...] = ("sha512",),
) -> Path:
    """A bag folder for ``work_id`` holding ``files`` (relative path -> content)."""
    bag_dir = root / f"{work_id}-bagdir"
    if bag_dir.exists():
        shutil.rmtree(bag_dir)
    for rel, content in (files if files is not None else DEFAULT_FILES).items():
        path = bag_dir / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)
    bag_dir.mkdir(parents=True, exist_ok=True)
    bagit.make_bag(str(bag_dir), {"Source-Organization": "Test Archive"}, checksums=list(checksums))
    return bag_dir


def zip_dir(
    src: Path,
    zip_path: Path,
    prefix: str = "",
    dir_entries: bool = True,
    compression: int = zipfile.ZIP_DEFLATED,
) -> Path:
    """Zip ``src`` (optionally under a folder ``prefix``), with or without directory entries."""
    zip_path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(zip_path, "w", compression) as zf:
        for path in sorted(src.rglob("*")):
            name = prefix + path.relative_to(src).as_posix()
            if path.is_dir():
                if dir_entries:
                    zf.writestr(name + "/", b"")
            else:
                zf.write(path, name)
    return zip_path


def make_bag_zip(
    root: Path, work_id: str, files: dict[str, bytes] | None = None, **zip_options
) -> Path:
    """A bag zip ``<root>/<work_id>.bag.zip``."""
    bag_dir = make_bag_dir(root, work_id, files)
    return zip_dir(bag_dir, root / f"{work_id}.bag.zip", **zip_options)


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
            [str(VENV_BIN / "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
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


def reset_moto(endpoint: str) -> None:
    """Clear every bucket and queue of the moto server."""
    request = urllib.request.Request(endpoint + "/moto-api/reset", method="POST")
    urllib.request.urlopen(request, timeout=10)  # noqa: S310


def aws_env() -> dict[str, str]:
    """Fake credentials for the emulator (never real ones)."""
    return {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }


@dataclass
class RestoreWorld:
    """A bucket and a queue (with a dead-letter queue) wired by a restore notification."""

    endpoint: str
    bucket: str
    queue_url: str
    dlq_url: str
    region: str = "us-east-1"

    def client(self, service: str):
        import boto3

        return boto3.client(
            service,
            endpoint_url=self.endpoint,
            region_name=self.region,
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
        )

    def queue_entry(self, **extra) -> dict:
        return {
            "name": "test",
            "queue_url": self.queue_url,
            "region": self.region,
            "bucket": self.bucket,
            **extra,
        }

    def upload_archived(self, zip_path: Path, key: str) -> None:
        """Put a bag zip as a DEEP_ARCHIVE object."""
        self.client("s3").upload_file(
            str(zip_path), self.bucket, key, ExtraArgs={"StorageClass": "DEEP_ARCHIVE"}
        )

    def restore(self, key: str) -> None:
        """Request the restore; the next HEAD makes moto send ObjectRestore:Completed."""
        s3 = self.client("s3")
        s3.restore_object(
            Bucket=self.bucket,
            Key=key,
            RestoreRequest={"Days": 1, "GlacierJobParameters": {"Tier": "Bulk"}},
        )
        s3.head_object(Bucket=self.bucket, Key=key)

    def send_body(self, body: str) -> None:
        self.client("sqs").send_message(QueueUrl=self.queue_url, MessageBody=body)

    def queue_count(self, url: str | None = None) -> int:
        attrs = self.client("sqs").get_queue_attributes(
            QueueUrl=url or self.queue_url,
            AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"],
        )["Attributes"]
        return int(attrs["ApproximateNumberOfMessages"]) + int(
            attrs["ApproximateNumberOfMessagesNotVisible"]
        )


def make_world(
    endpoint: str,
    bucket: str = "archive.test.example",
    queue: str = "restores",
    max_receive: int = 2,
) -> RestoreWorld:
    """Create the bucket, the queue with its redrive policy, and the bucket notification."""
    reset_moto(endpoint)
    world = RestoreWorld(endpoint, bucket, "", "")
    s3, sqs = world.client("s3"), world.client("sqs")
    s3.create_bucket(Bucket=bucket)
    world.dlq_url = sqs.create_queue(QueueName=queue + "-dlq")["QueueUrl"]
    dlq_arn = sqs.get_queue_attributes(QueueUrl=world.dlq_url, AttributeNames=["QueueArn"])[
        "Attributes"
    ]["QueueArn"]
    world.queue_url = sqs.create_queue(
        QueueName=queue,
        Attributes={
            "RedrivePolicy": json.dumps(
                {"deadLetterTargetArn": dlq_arn, "maxReceiveCount": str(max_receive)}
            )
        },
    )["QueueUrl"]
    arn = sqs.get_queue_attributes(QueueUrl=world.queue_url, AttributeNames=["QueueArn"])[
        "Attributes"
    ]["QueueArn"]
    s3.put_bucket_notification_configuration(
        Bucket=bucket,
        NotificationConfiguration={
            "QueueConfigurations": [{"QueueArn": arn, "Events": ["s3:ObjectRestore:*"]}]
        },
    )
    return world


def glacier_env(world: RestoreWorld, data_root: Path, archive_root: Path, **extra) -> dict:
    """GLACIER_SYNC_* environment for a process (CLI or DAG) against ``world``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("GLACIER_SYNC_")}
    env.update(aws_env())
    env.update(
        {
            "GLACIER_SYNC_QUEUES": json.dumps([world.queue_entry()]),
            "GLACIER_SYNC_AWS_ENDPOINT_URL": world.endpoint,
            "GLACIER_SYNC_AWS_CREDENTIALS_FILE": str(data_root / "no-such-credentials"),
            "GLACIER_SYNC_DATA_ROOT": str(data_root),
            "GLACIER_SYNC_ARCHIVE_ROOT": str(archive_root),
            "GLACIER_SYNC_SQS_WAIT_SECONDS": "1",
        }
    )
    env.update({k: str(v) for k, v in extra.items()})
    return env
