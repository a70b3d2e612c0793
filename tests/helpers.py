"""Test helpers: bag zips built with bagit, a moto server on loopback, the S3 restore flow."""

from __future__ import annotations

import os
import shutil
import sys
import zipfile
from pathlib import Path

import bagit
from demo_world import (  # free_port and moto_server: the tests import them from here
    FAKE_CREDENTIALS,
    World,
    create_world,
    free_port,  # noqa: F401
    moto_server,  # noqa: F401
    settings_env,
)

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


def aws_env() -> dict[str, str]:
    """Fake credentials for the emulator (never real ones)."""
    return {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }


def make_world(endpoint: str, max_receive: int = 2) -> World:
    """A fresh bucket, queue, dead-letter queue and restore notification on the emulator."""
    return create_world(
        endpoint, bucket="archive.test.example", queue="restores", max_receive=max_receive
    )


def glacier_env(world: World, data_root: Path, archive_root: Path, **extra) -> dict:
    """GLACIER_SYNC_* environment for a process (CLI or DAG) against ``world``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("GLACIER_SYNC_")}
    env.update(settings_env(world, data_root, archive_root))
    env.update(aws_env())
    # The defaults, not the demo's short retries, unless a test says otherwise.
    env["GLACIER_SYNC_POLL_RETRIES"] = "11"
    env["GLACIER_SYNC_POLL_RETRY_DELAY_SECONDS"] = "300"
    env["GLACIER_SYNC_SQS_SCHEDULE"] = "@hourly"
    env.update({k: str(v) for k, v in extra.items()})
    return env


def fail_range(monkeypatch, index: int) -> None:
    """Make range ``index`` of every download fail as a reset link would (until
    ``monkeypatch.undo()``); the other ranges are fetched as usual."""
    from glacier_sync.errors import DownloadError
    from glacier_sync.transfer import ranged_download

    real_fetch = ranged_download._fetch_range

    def failing(s3, plan, fd, number, stop, progress):
        if number == index:
            raise DownloadError("connection reset (injected)")
        return real_fetch(s3, plan, fd, number, stop, progress)

    monkeypatch.setattr(ranged_download, "_fetch_range", failing)


def upload_parts(s3, bucket: str, key: str, data: bytes, sizes: list[int], **create) -> str:
    """A multipart upload of ``data`` in parts of the given sizes (any legal split, unequal ones
    too), with ``create``'s arguments (a checksum algorithm and type, SSE-KMS); its eTag."""
    assert sum(sizes) == len(data)
    upload = s3.create_multipart_upload(Bucket=bucket, Key=key, **create)["UploadId"]
    algorithm = create.get("ChecksumAlgorithm")
    per_part = {"ChecksumAlgorithm": algorithm} if algorithm else {}
    parts, offset = [], 0
    for number, size in enumerate(sizes, start=1):
        body = data[offset : offset + size]
        answer = s3.upload_part(
            Bucket=bucket, Key=key, UploadId=upload, PartNumber=number, Body=body, **per_part
        )
        entry = {"PartNumber": number, "ETag": answer["ETag"]}
        if algorithm:
            entry[f"Checksum{algorithm}"] = answer[f"Checksum{algorithm}"]
        parts.append(entry)
        offset += size
    s3.complete_multipart_upload(
        Bucket=bucket, Key=key, UploadId=upload, MultipartUpload={"Parts": parts}
    )
    return s3.head_object(Bucket=bucket, Key=key)["ETag"].strip('"')


class PassThroughClient:
    """An S3 client whose calls pass through to ``s3``, but for those a subclass redefines."""

    def __init__(self, s3) -> None:
        self._s3 = s3

    def __getattr__(self, name):
        return getattr(self._s3, name)


class FlippingBody:
    """A response body that flips one byte (at random) of what it passes on, as a bad link."""

    def __init__(self, body) -> None:
        self._body, self._done = body, False

    def readinto(self, view) -> int:
        count = self._body.readinto(view)
        if count and not self._done:
            view[int.from_bytes(os.urandom(4), "big") % count] ^= 0x01  # a byte at random
            self._done = True
        return count

    def close(self) -> None:
        self._body.close()


class FlippingLink(PassThroughClient):
    """A client whose answer for the first range has one byte flipped in transit."""

    def get_object(self, **kwargs):
        response = self._s3.get_object(**kwargs)
        if kwargs.get("Range", "").startswith("bytes=0-"):
            response["Body"] = FlippingBody(response["Body"])
        return response


def aws_cli_upload(world: World, source: Path, key: str, *options: str) -> None:
    """Upload ``source`` with the AWS CLI's ``aws s3 cp`` and its defaults (multipart from
    8 MiB, its own checksum default), plus ``options`` (``--sse aws:kms``, a storage class)."""
    import subprocess

    env = {
        "PATH": os.environ.get("PATH", ""),
        "HOME": str(source.parent),  # no ~/.aws of the developer's
        "AWS_ACCESS_KEY_ID": FAKE_CREDENTIALS["aws_access_key_id"],
        "AWS_SECRET_ACCESS_KEY": FAKE_CREDENTIALS["aws_secret_access_key"],
        "AWS_DEFAULT_REGION": world.region,
    }
    command = [str(VENV_BIN / "aws"), "s3", "cp", "--only-show-errors", "--endpoint-url"]
    target = f"s3://{world.bucket}/{key}"
    done = subprocess.run(
        [*command, world.endpoint, str(source), target, *options],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr


class AsRealS3(PassThroughClient):
    """moto's client with its HEAD answers completed as real S3 gives them: the checksum's
    ``ChecksumType`` and, for a composite one, its ``-N`` (read from ``GetObjectAttributes``);
    a part's HEAD carries the object's eTag (moto gives the part's MD5) and, with
    ``ChecksumMode``, the part's own checksum of a composite upload (computed here from the
    part's bytes: moto gives none)."""

    def head_object(self, **kwargs):
        if kwargs.get("PartNumber"):
            return self._part_head(**kwargs)
        head = self._s3.head_object(**kwargs)
        if kwargs.get("ChecksumMode") != "ENABLED":
            return head
        attributes = self._s3.get_object_attributes(
            Bucket=kwargs["Bucket"], Key=kwargs["Key"], ObjectAttributes=["Checksum"]
        )
        kind = attributes.get("Checksum", {}).get("ChecksumType")
        if kind:
            head["ChecksumType"] = kind
        parts = head["ETag"].strip('"').rpartition("-")[2]
        for name in [n for n in head if n.startswith("Checksum") and n != "ChecksumType"]:
            if kind == "COMPOSITE" and "-" not in head[name]:
                head[name] = f"{head[name]}-{parts}"
        return head

    def _part_head(self, **kwargs):
        from glacier_sync.transfer.object_checks import b64, checksum_of, new_hasher

        head = self._s3.head_object(**kwargs)
        whole = self.head_object(**{k: v for k, v in kwargs.items() if k != "PartNumber"})
        head["ETag"] = whole["ETag"]
        checksum = checksum_of(whole) if kwargs.get("ChecksumMode") == "ENABLED" else None
        if checksum and checksum.kind == "COMPOSITE":
            base = {k: v for k, v in kwargs.items() if k in ("Bucket", "Key", "VersionId")}
            sizes = [
                self._s3.head_object(**base, PartNumber=n)["ContentLength"]
                for n in range(1, kwargs["PartNumber"])
            ]
            start = sum(sizes)
            end = start + head["ContentLength"] - 1
            body = self._s3.get_object(**base, Range=f"bytes={start}-{end}")["Body"].read()
            hasher = new_hasher(checksum.algorithm)
            hasher.update(body)
            head[f"Checksum{checksum.algorithm.upper()}"] = b64(hasher.digest())
        return head
