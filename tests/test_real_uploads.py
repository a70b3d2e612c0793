"""Objects made the way real uploaders make them, each downloaded and checked end to end.

boto3's ``upload_file`` with its defaults (multipart from 8 MiB, CRC32 sent), the other checksum
algorithms an uploader may ask for, SSE-KMS (whose eTag is no MD5 on S3, so the checksum is the
only end-to-end check), full-object multipart checksums and parts of unequal sizes, all on moto.
moto answers ``HeadObject`` with a composite checksum's value but neither its ``-N`` nor its
``ChecksumType``; ``_AsRealS3`` completes the answer from ``GetObjectAttributes`` the way S3
itself answers, so both kinds of store are tried. Each object is also fetched once through a
link that flips one byte: the check catches it as a fault of the transfer, never a bad object.
"""

from __future__ import annotations

import os
from pathlib import Path

import boto3
import pytest
from botocore.config import Config
from demo_world import FAKE_CREDENTIALS

from glacier_sync import aws
from glacier_sync.errors import PermanentError, is_transient
from glacier_sync.whole_object import WholeObjectMismatch

pytestmark = pytest.mark.integration

MIB = 1024 * 1024
KEY = "Archive0/00/W1UP/W1UP.bag.zip"


def _client(endpoint: str):
    config = Config(max_pool_connections=16)
    return boto3.client(
        "s3", endpoint_url=endpoint, region_name="us-east-1", config=config, **FAKE_CREDENTIALS
    )


class _AsRealS3:
    """moto's client with its HEAD answers completed as real S3 gives them: the checksum's
    ``ChecksumType`` and, for a composite one, its ``-N`` (read from ``GetObjectAttributes``)."""

    def __init__(self, s3) -> None:
        self._s3 = s3

    def __getattr__(self, name):
        return getattr(self._s3, name)

    def head_object(self, **kwargs):
        head = self._s3.head_object(**kwargs)
        if kwargs.get("ChecksumMode") != "ENABLED" or kwargs.get("PartNumber"):
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


class _FlippingBody:
    def __init__(self, body) -> None:
        self._body, self._done = body, False

    def readinto(self, view) -> int:
        count = self._body.readinto(view)
        if count and not self._done:
            view[int.from_bytes(os.urandom(4), "big") % count] ^= 0x01
            self._done = True
        return count

    def close(self) -> None:
        self._body.close()


class _FlippingLink:
    """A client whose first ranged answer has one byte flipped in transit."""

    def __init__(self, s3) -> None:
        self._s3 = s3

    def __getattr__(self, name):
        return getattr(self._s3, name)

    def get_object(self, **kwargs):
        response = self._s3.get_object(**kwargs)
        if kwargs.get("Range", "").startswith("bytes=0-"):
            response["Body"] = _FlippingBody(response["Body"])
        return response


@pytest.fixture
def kms_key(world) -> str:
    return world.client("kms").create_key()["KeyMetadata"]["KeyId"]


def _upload_file(world, source: Path, extra: dict) -> None:
    """boto3's ``upload_file`` with its defaults (8 MiB parts, CRC32 unless told otherwise)."""
    _client(world.endpoint).upload_file(str(source), world.bucket, KEY, ExtraArgs=extra or None)


def _upload_parts(world, data: bytes, sizes: list[int], extra: dict) -> None:
    """A multipart upload of parts of the given sizes, with the given create arguments."""
    s3 = _client(world.endpoint)
    upload = s3.create_multipart_upload(Bucket=world.bucket, Key=KEY, **extra)["UploadId"]
    algorithm = extra.get("ChecksumAlgorithm")
    parts, offset = [], 0
    for number, size in enumerate(sizes, start=1):
        more = {"ChecksumAlgorithm": algorithm} if algorithm else {}
        part = s3.upload_part(
            Bucket=world.bucket,
            Key=KEY,
            UploadId=upload,
            PartNumber=number,
            Body=data[offset : offset + size],
            **more,
        )
        entry = {"PartNumber": number, "ETag": part["ETag"]}
        if algorithm:
            entry[f"Checksum{algorithm}"] = part[f"Checksum{algorithm}"]
        parts.append(entry)
        offset += size
    s3.complete_multipart_upload(
        Bucket=world.bucket, Key=KEY, UploadId=upload, MultipartUpload={"Parts": parts}
    )


def _kms(kms_key: str) -> dict:
    return {"ServerSideEncryption": "aws:kms", "SSEKMSKeyId": kms_key}


# (id, how it is uploaded, its arguments, whether SSE-KMS, HEAD as real S3, the check that passes)
CASES = [
    ("boto3-defaults", "file", {}, False, False, "etag-parts"),
    ("boto3-defaults-as-s3", "file", {}, False, True, "composite-crc32"),
    ("boto3-defaults-kms", "file", {}, True, False, "composite-crc32"),
    ("boto3-defaults-kms-as-s3", "file", {}, True, True, "composite-crc32"),
    ("crc32c-kms", "file", {"ChecksumAlgorithm": "CRC32C"}, True, False, "composite-crc32c"),
    ("sha256-kms-as-s3", "file", {"ChecksumAlgorithm": "SHA256"}, True, True, "composite-sha256"),
    ("sha1-kms", "file", {"ChecksumAlgorithm": "SHA1"}, True, False, "composite-sha1"),
    ("crc64nvme-kms", "file", {"ChecksumAlgorithm": "CRC64NVME"}, True, False, "crc64nvme"),
    ("crc64nvme-as-s3", "file", {"ChecksumAlgorithm": "CRC64NVME"}, False, True, "crc64nvme"),
    (
        "full-object-crc32-kms",
        "parts",
        {"ChecksumAlgorithm": "CRC32", "ChecksumType": "FULL_OBJECT"},
        True,
        False,
        "crc32",
    ),
    (
        "full-object-crc32c-as-s3",
        "parts",
        {"ChecksumAlgorithm": "CRC32C", "ChecksumType": "FULL_OBJECT"},
        False,
        True,
        "crc32c",
    ),
    ("unequal-parts-crc32-kms", "unequal", {"ChecksumAlgorithm": "CRC32"}, True, False, None),
    (
        "unequal-parts-sha256-kms-as-s3",
        "unequal",
        {"ChecksumAlgorithm": "SHA256"},
        True,
        True,
        None,
    ),
    ("single-part-sha256-kms", "put", {"ChecksumAlgorithm": "SHA256"}, True, False, "sha256"),
    ("single-part-kms", "put", {}, True, False, "crc32"),
]


@pytest.mark.parametrize(
    ("how", "extra", "kms", "as_s3", "check"),
    [case[1:] for case in CASES],
    ids=[case[0] for case in CASES],
)
def test_each_upload_is_verified_end_to_end_and_a_flipped_byte_is_caught(
    world, tmp_path, kms_key, how, extra, kms, as_s3, check
):
    size = 3 * MIB + 77 if how == "put" else 21 * MIB + 4321
    data = os.urandom(size)
    source = tmp_path / "source.zip"
    source.write_bytes(data)
    extra = {**extra, **(_kms(kms_key) if kms else {})}
    if how == "file":
        _upload_file(world, source, extra)
    elif how == "put":
        _client(world.endpoint).put_object(Bucket=world.bucket, Key=KEY, Body=data, **extra)
    elif how == "parts":
        _upload_parts(world, data, [8 * MIB, 8 * MIB, size - 16 * MIB], extra)
    else:  # a short part in the middle: the ranges follow the first, the check the real ones
        _upload_parts(world, data, [8 * MIB, 6 * MIB, 8 * MIB - 1, size - 22 * MIB + 1], extra)
        algorithm = extra["ChecksumAlgorithm"].lower()
        check = f"composite-{algorithm}"
    s3 = _client(world.endpoint)
    store = _AsRealS3(s3) if as_s3 else s3
    head = store.head_object(Bucket=world.bucket, Key=KEY, ChecksumMode="ENABLED")
    assert (head.get("ServerSideEncryption") == "aws:kms") is kms
    etag = head["ETag"].strip('"')
    target = tmp_path / "W1UP.bag.zip"

    with pytest.raises(WholeObjectMismatch) as caught:
        aws.download_object(_FlippingLink(store), world.bucket, KEY, etag, target, "W1UP", 2, 4)
    assert is_transient(caught.value) and not isinstance(caught.value, PermanentError)
    assert not target.exists()

    report: dict = {}
    assert aws.download_object(store, world.bucket, KEY, etag, target, "W1UP", 2, 4, report=report)
    assert target.read_bytes() == data
    assert report["check"] == check, report
    assert not list(tmp_path.glob(".*part*")), "nothing left beside the zip, the note neither"
