"""Objects made the way real uploaders make them, each downloaded and checked end to end.

boto3's ``upload_file`` with its defaults (multipart from 8 MiB, CRC32 sent), the other checksum
algorithms an uploader may ask for, SSE-KMS (whose eTag is no MD5 on S3, so the checksum is the
only end-to-end check), full-object multipart checksums and parts of unequal sizes, all on moto.
moto answers ``HeadObject`` with a composite checksum's value but neither its ``-N`` nor its
``ChecksumType``; ``AsRealS3`` completes the answer from ``GetObjectAttributes`` the way S3
itself answers, so both kinds of store are tried. Each object is also fetched once through a
link that flips one byte: the check catches it as a fault of the transfer, never a bad object.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import boto3
import pytest
from botocore.config import Config
from demo_world import FAKE_CREDENTIALS
from helpers import (
    AsRealS3,
    FlippingLink,
    PassThroughClient,
    aws_cli_upload,
    fail_range,
    upload_parts,
)

from glacier_sync.errors import DownloadError, PermanentError, is_transient
from glacier_sync.transfer import object_download
from glacier_sync.transfer.range_journal import journal_path
from glacier_sync.transfer.whole_object import WholeObjectMismatch

pytestmark = pytest.mark.integration

MIB = 1024 * 1024
KEY = "Archive0/00/W1UP/W1UP.bag.zip"


def _client(endpoint: str):
    config = Config(max_pool_connections=16)
    return boto3.client(
        "s3", endpoint_url=endpoint, region_name="us-east-1", config=config, **FAKE_CREDENTIALS
    )


class _CountingPartHeads(PassThroughClient):
    """A client that counts its part HEADs (``HEAD ?partNumber=N``)."""

    def __init__(self, s3) -> None:
        super().__init__(s3)
        self.asked = 0

    def head_object(self, **kwargs):
        self.asked += bool(kwargs.get("PartNumber"))
        return self._s3.head_object(**kwargs)


@pytest.fixture
def kms_key(world) -> str:
    return world.client("kms").create_key()["KeyMetadata"]["KeyId"]


def _upload_file(world, source: Path, extra: dict) -> None:
    """boto3's ``upload_file`` with its defaults (8 MiB parts, CRC32 unless told otherwise)."""
    _client(world.endpoint).upload_file(str(source), world.bucket, KEY, ExtraArgs=extra or None)


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
    ("8-6-8-rest-crc32-kms", "unequal", {"ChecksumAlgorithm": "CRC32"}, True, False, None),
    ("8-6-8-rest-sha256-kms-as-s3", "unequal", {"ChecksumAlgorithm": "SHA256"}, True, True, None),
    ("8-6-rest-crc32c-as-s3", "as-many", {"ChecksumAlgorithm": "CRC32C"}, False, True, None),
    ("8-6-rest-sha1-kms", "as-many", {"ChecksumAlgorithm": "SHA1"}, True, False, None),
    ("single-part-sha256-kms", "put", {"ChecksumAlgorithm": "SHA256"}, True, False, "sha256"),
    ("single-part-kms", "put", {}, True, False, "crc32"),
]


@pytest.mark.parametrize("chunk_mb", [3, 16], ids=["3-ranges-a-part", "2-parts-a-range"])
@pytest.mark.parametrize(
    ("how", "extra", "kms", "as_s3", "check"),
    [case[1:] for case in CASES],
    ids=[case[0] for case in CASES],
)
def test_each_upload_is_verified_end_to_end_and_a_flipped_byte_is_caught(
    world, tmp_path, kms_key, how, extra, kms, as_s3, check, chunk_mb
):
    """With 3 MB ranges each 8 MiB part is fetched in three ranges of unequal ends (their CRCs
    combined, or the part's MD5 or SHA hashed from disk once they are in); with 16 MB ranges
    each range holds two whole parts, each hashed on its own."""
    size = {"put": 3 * MIB + 77, "unequal": 23 * MIB + 4321}.get(how, 21 * MIB + 4321)
    data = os.urandom(size)
    source = tmp_path / "source.zip"
    source.write_bytes(data)
    extra = {**extra, **(_kms(kms_key) if kms else {})}
    if how == "file":
        _upload_file(world, source, extra)
    elif how == "put":
        _client(world.endpoint).put_object(Bucket=world.bucket, Key=KEY, Body=data, **extra)
    elif how == "parts":
        upload_parts(
            _client(world.endpoint),
            world.bucket,
            KEY,
            data,
            [8 * MIB, 8 * MIB, size - 16 * MIB],
            **extra,
        )
    else:  # a short part in the middle: the ranges follow the first, the check the real ones
        middle = [6 * MIB, 8 * MIB] if how == "unequal" else [6 * MIB]  # 4 parts, or 3 as ranges
        sizes = [8 * MIB, *middle, size - 8 * MIB - sum(middle)]
        assert min(sizes) > MIB and sum(sizes) == size
        upload_parts(_client(world.endpoint), world.bucket, KEY, data, sizes, **extra)
        check = f"composite-{extra['ChecksumAlgorithm'].lower()}"
    s3 = _client(world.endpoint)
    store = AsRealS3(s3) if as_s3 else s3
    head = store.head_object(Bucket=world.bucket, Key=KEY, ChecksumMode="ENABLED")
    assert (head.get("ServerSideEncryption") == "aws:kms") is kms
    etag = head["ETag"].strip('"')
    target = tmp_path / "W1UP.bag.zip"

    with pytest.raises(WholeObjectMismatch) as caught:
        object_download.download_object(
            FlippingLink(store), world.bucket, KEY, etag, target, "W1UP", 2, chunk_mb
        )
    assert is_transient(caught.value) and not isinstance(caught.value, PermanentError)
    assert not target.exists()

    report: dict = {}
    counted = _CountingPartHeads(store)
    assert object_download.download_object(
        counted, world.bucket, KEY, etag, target, "W1UP", 2, chunk_mb, report=report
    )
    assert target.read_bytes() == data
    assert report["check"] == check, report
    if how in ("file", "parts"):  # equal parts: at most part 1's size is asked
        assert counted.asked <= 1, "the parts' digests from the ranges: no second hashing pass"
    elif how in ("unequal", "as-many"):
        assert counted.asked == 1 + len(sizes), "hashed again along the parts' exact bounds"
    assert not list(tmp_path.glob(".*part*")), "nothing left beside the zip, the note neither"


def _composite_kms_object(world, tmp_path, kms_key) -> tuple[bytes, str]:
    data = os.urandom(21 * MIB + 4321)
    (tmp_path / "source.zip").write_bytes(data)
    _upload_file(world, tmp_path / "source.zip", _kms(kms_key))
    head = _client(world.endpoint).head_object(Bucket=world.bucket, Key=KEY)
    return data, head["ETag"].strip('"')


class _PartHeads(PassThroughClient):
    """A store as real S3 answers whose part HEADs answer ``status`` (0: as S3 does)."""

    def __init__(self, s3, status: int) -> None:
        super().__init__(AsRealS3(s3))
        self.status, self.asked = status, 0

    def head_object(self, **kwargs):
        if not kwargs.get("PartNumber"):
            return self._s3.head_object(**kwargs)
        self.asked += 1
        if not self.status:
            return self._s3.head_object(**kwargs)
        from botocore.exceptions import ClientError

        error = {"Error": {"Code": str(self.status), "Message": "x"}}
        raise ClientError(
            {**error, "ResponseMetadata": {"HTTPStatusCode": self.status}}, "HeadObject"
        )


def test_a_composite_checksum_on_a_store_without_part_numbers_is_said_unchecked(
    world, tmp_path, kms_key, caplog
):
    data, etag = _composite_kms_object(world, tmp_path, kms_key)
    store = _PartHeads(_client(world.endpoint), 400)
    target = tmp_path / "W1UP.bag.zip"
    report: dict = {}
    with caplog.at_level("INFO", logger="glacier_sync"):
        assert object_download.download_object(
            store, world.bucket, KEY, etag, target, "W1UP", 2, 4, report=report
        )
    assert report["check"] == "none" and target.read_bytes() == data
    assert store.asked == 1, "the part size is asked once"
    assert "the bag manifests are the check" in caplog.text


def test_a_refused_part_head_spends_an_attempt_and_is_never_retried_without_end(
    world, tmp_path, kms_key
):
    """403 is no fault of the link (as a 503 is): the work's attempts run out and it is held."""
    data, etag = _composite_kms_object(world, tmp_path, kms_key)
    store = _PartHeads(_client(world.endpoint), 403)
    target = tmp_path / "W1UP.bag.zip"
    with pytest.raises(DownloadError, match="s3:GetObject") as refused:
        object_download.download_object(store, world.bucket, KEY, etag, target, "W1UP", 2, 4)
    assert not is_transient(refused.value) and not target.exists()


def test_a_journal_started_with_the_etag_check_resumes_where_a_checksum_is_now_chosen(
    world, tmp_path, monkeypatch
):
    """A download begun by an earlier release (the multipart eTag) keeps its verified ranges
    after an upgrade that would choose the object's composite CRC32 instead."""
    data = os.urandom(21 * MIB + 4321)
    (tmp_path / "source.zip").write_bytes(data)
    _upload_file(world, tmp_path / "source.zip", {})
    s3 = _client(world.endpoint)
    etag = s3.head_object(Bucket=world.bucket, Key=KEY)["ETag"].strip('"')
    fail_range(monkeypatch, 2)
    target = tmp_path / "W1UP.bag.zip"
    with pytest.raises(DownloadError, match="injected"):  # moto's answer: the eTag check
        object_download.download_object(s3, world.bucket, KEY, etag, target, "W1UP", 1, 4)
    monkeypatch.undo()
    as_s3 = AsRealS3(s3)
    head = as_s3.head_object(Bucket=world.bucket, Key=KEY, ChecksumMode="ENABLED")
    assert head["ChecksumType"] == "COMPOSITE", "today's plan would be composite-crc32"
    report: dict = {}
    assert object_download.download_object(
        as_s3, world.bucket, KEY, etag, target, "W1UP", 2, 4, report=report
    )
    # 4 MB ranges split the 8 MiB parts in two: the first try kept the first part's two ranges
    assert report == {"check": "etag-parts", "reused": 8 * MIB, "fetched": len(data) - 8 * MIB}
    assert target.read_bytes() == data


@pytest.mark.parametrize("as_s3", [False, True], ids=["etag-parts", "composite-crc32"])
@pytest.mark.parametrize("earlier_release", [False, True], ids=["this-release", "older-journal"])
def test_ranges_of_whole_parts_resume_from_their_journal(
    world, tmp_path, monkeypatch, earlier_release, as_s3
):
    """boto3's 8 MiB parts (five and a 4321-byte sixth) in 16 MB ranges of two parts each: a
    try that fails in the second range keeps the first (each part's digest journaled), and the
    next try fetches only the rest, the last range (a whole part and the short one) checked
    from the ranges' own digests. A journal of the earlier release (one part a range, no
    ``parts_per_range`` in its header) resumes with its own plan under the new default."""
    data = os.urandom(40 * MIB + 4321)
    (tmp_path / "source.zip").write_bytes(data)
    _upload_file(world, tmp_path / "source.zip", {})
    plain = _client(world.endpoint)
    s3 = AsRealS3(plain) if as_s3 else plain
    etag = plain.head_object(Bucket=world.bucket, Key=KEY)["ETag"].strip('"')
    first = 8 if earlier_release else 16
    fail_range(monkeypatch, 1)
    target = tmp_path / "W1UP.bag.zip"
    with pytest.raises(DownloadError, match="injected"):
        object_download.download_object(s3, world.bucket, KEY, etag, target, "W1UP", 1, first)
    monkeypatch.undo()
    journal = journal_path(target.with_name(f".{target.name}.part"))
    lines = journal.read_text().splitlines()
    header = json.loads(lines[0])
    assert (header["part_size"], header["parts_per_range"]) == (first * MIB, first // 8)
    width = 8 if as_s3 else 32  # a CRC32 or an MD5 a part
    assert [len(json.loads(line)["d"]) for line in lines[1:]] == [width * first // 8]
    if earlier_release:
        del header["parts_per_range"]
        journal.write_text("\n".join([json.dumps(header), *lines[1:]]) + "\n")
    report: dict = {}
    counted = _CountingPartHeads(s3)
    assert object_download.download_object(
        counted, world.bucket, KEY, etag, target, "W1UP", 2, 16, report=report
    )
    check = "composite-crc32" if as_s3 else "etag-parts"
    assert report == {"check": check, "reused": first * MIB, "fetched": len(data) - first * MIB}
    assert counted.asked <= 1, "the parts' digests from the ranges: no second hashing pass"
    assert target.read_bytes() == data


@pytest.mark.parametrize(
    ("extra", "as_s3", "check"),
    [
        ({}, False, "etag-parts"),
        ({"ChecksumAlgorithm": "SHA256"}, True, "composite-sha256"),
        ({"ChecksumAlgorithm": "CRC32C"}, True, "composite-crc32c"),
    ],
    ids=["etag-parts", "composite-sha256", "composite-crc32c"],
)
def test_a_part_larger_than_the_range_size_costs_a_range_not_the_part(
    world, tmp_path, monkeypatch, extra, as_s3, check
):
    """20 MiB parts in 4 MB ranges (five a part): a try that fails in the fourth range keeps
    the three before it, though their part is unfinished; the next try fetches only the rest,
    and the part's MD5 or SHA is hashed from disk once its five ranges are in (a CRC combined)."""
    data = os.urandom(25 * MIB + 321)
    plain = _client(world.endpoint)
    upload_parts(plain, world.bucket, KEY, data, [20 * MIB, 5 * MIB + 321], **extra)
    s3 = AsRealS3(plain) if as_s3 else plain
    etag = plain.head_object(Bucket=world.bucket, Key=KEY)["ETag"].strip('"')
    target = tmp_path / "W1UP.bag.zip"
    fail_range(monkeypatch, 3)
    with pytest.raises(DownloadError, match="injected"):
        object_download.download_object(s3, world.bucket, KEY, etag, target, "W1UP", 1, 4)
    monkeypatch.undo()
    lines = journal_path(target.with_name(f".{target.name}.part")).read_text().splitlines()
    assert json.loads(lines[0])["ranges_per_part"] == 5 and len(lines) == 1 + 3
    report: dict = {}
    counted = _CountingPartHeads(s3)
    assert object_download.download_object(
        counted, world.bucket, KEY, etag, target, "W1UP", 2, 4, report=report
    )
    assert report == {"check": check, "reused": 12 * MIB, "fetched": len(data) - 12 * MIB}
    assert counted.asked <= 1, "the parts' digests from their ranges: no second hashing pass"
    assert target.read_bytes() == data


def test_a_disk_error_while_hashing_a_split_part_keeps_its_verified_ranges(
    world, tmp_path, monkeypatch
):
    """Reading a part back to hash it failed: reported as the disk's error, never taken for a
    mismatch, and every verified range stays for the next try (which hashes the parts again)."""
    from glacier_sync.transfer import disk_hashes

    data = os.urandom(21 * MIB + 4321)
    (tmp_path / "source.zip").write_bytes(data)
    _upload_file(world, tmp_path / "source.zip", {})
    s3 = _client(world.endpoint)
    etag = s3.head_object(Bucket=world.bucket, Key=KEY)["ETag"].strip('"')
    target = tmp_path / "W1UP.bag.zip"

    def failing(fd, start, end, hasher):
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(disk_hashes, "hash_span", failing)
    with pytest.raises(DownloadError, match="Input/output error.*the verified ranges are kept"):
        object_download.download_object(s3, world.bucket, KEY, etag, target, "W1UP", 2, 3)
    lines = journal_path(target.with_name(f".{target.name}.part")).read_text().splitlines()
    assert len(lines) == 1 + 8, "all eight ranges (3 + 3 + the 5 MiB last part's 2) journaled"
    monkeypatch.undo()
    report: dict = {}
    assert object_download.download_object(
        s3, world.bucket, KEY, etag, target, "W1UP", 2, 3, report=report
    )
    assert report == {"check": "etag-parts", "reused": len(data), "fetched": 0}
    assert target.read_bytes() == data


@pytest.mark.parametrize(
    ("options", "as_s3", "check"),
    [
        ((), False, "etag-parts"),
        ((), True, "composite-crc32"),
        (("--sse", "aws:kms"), False, "composite-crc32"),
        (("--sse", "aws:kms"), True, "composite-crc32"),
    ],
    ids=["defaults", "defaults-as-s3", "kms", "kms-as-s3"],
)
def test_an_upload_by_the_aws_cli_is_verified_end_to_end(
    world, tmp_path, kms_key, options, as_s3, check
):
    """``aws s3 cp`` with its defaults (aws-cli 1.46: 8 MiB parts, a CRC32 sent), 21 MiB in
    three parts, in 3 MB ranges (each part split in three)."""
    data = os.urandom(21 * MIB + 4321)
    source = tmp_path / "source.zip"
    source.write_bytes(data)
    kms = ("--sse-kms-key-id", kms_key) if options else ()
    aws_cli_upload(world, source, KEY, *options, *kms)
    plain = _client(world.endpoint)
    head = plain.head_object(Bucket=world.bucket, Key=KEY, ChecksumMode="ENABLED")
    assert head["ETag"].strip('"').endswith("-3") and head.get("ChecksumCRC32"), head
    assert (head.get("ServerSideEncryption") == "aws:kms") is bool(options)
    store = AsRealS3(plain) if as_s3 else plain
    etag = head["ETag"].strip('"')
    target = tmp_path / "W1UP.bag.zip"
    with pytest.raises(WholeObjectMismatch):
        object_download.download_object(
            FlippingLink(store), world.bucket, KEY, etag, target, "W1UP", 2, 3
        )
    report: dict = {}
    assert object_download.download_object(
        store, world.bucket, KEY, etag, target, "W1UP", 2, 3, report=report
    )
    assert report["check"] == check and target.read_bytes() == data


class _CountingGets(PassThroughClient):
    """A client that adds up the object bytes its GETs answer."""

    def __init__(self, s3) -> None:
        super().__init__(s3)
        self.fetched = 0

    def get_object(self, **kwargs):
        response = self._s3.get_object(**kwargs)
        self.fetched += response["ContentLength"]
        return response


class _NoPartValues(PassThroughClient):
    """A store whose part HEADs with ``ChecksumMode`` fail (503): no part's own value is read
    (the part sizes the plan needs, asked without it, are answered)."""

    def head_object(self, **kwargs):
        if kwargs.get("PartNumber") and kwargs.get("ChecksumMode"):
            from botocore.exceptions import ClientError

            error = {"Error": {"Code": "503", "Message": "Slow Down"}}
            raise ClientError({**error, "ResponseMetadata": {"HTTPStatusCode": 503}}, "HeadObject")
        return self._s3.head_object(**kwargs)


def _boto3_object(world, tmp_path) -> tuple[bytes, str]:
    """21 MiB and a bit uploaded with boto3's defaults (8 MiB parts, composite CRC32)."""
    data = os.urandom(21 * MIB + 4321)
    (tmp_path / "source.zip").write_bytes(data)
    _upload_file(world, tmp_path / "source.zip", {})
    head = _client(world.endpoint).head_object(Bucket=world.bucket, Key=KEY)
    return data, head["ETag"].strip('"')


@pytest.mark.parametrize("as_s3", [False, True], ids=["moto-part-md5", "s3-part-checksum"])
def test_a_flipped_byte_costs_the_part_it_was_in_not_the_object(world, tmp_path, as_s3, caplog):
    """boto3's defaults (8 MiB parts, composite CRC32), 3 MB ranges: a byte flipped in the first
    range fails the whole-object check; each part is then compared with its own value in the
    store (moto: the part's eTag, its MD5; S3: the part's CRC32), and only part 1's three ranges
    are dropped. The next try fetches 8 MiB, not 21."""
    data, etag = _boto3_object(world, tmp_path)
    s3 = _client(world.endpoint)
    store = AsRealS3(s3) if as_s3 else s3
    target = tmp_path / "W1UP.bag.zip"
    partial = target.with_name(f".{target.name}.part")

    with pytest.raises(WholeObjectMismatch) as caught:
        object_download.download_object(
            FlippingLink(store), world.bucket, KEY, etag, target, "W1UP", 2, 3
        )
    assert is_transient(caught.value)
    assert partial.is_file() and not target.exists()
    assert "part(s) 1 of 3 differ from their own values in S3" in caplog.text
    assert len(journal_path(partial).read_text().splitlines()) == 1 + 8 - 3  # header, kept

    report: dict = {}
    counting = _CountingGets(store)
    assert object_download.download_object(
        counting, world.bucket, KEY, etag, target, "W1UP", 2, 3, report=report
    )
    assert target.read_bytes() == data
    assert counting.fetched == report["fetched"] == 8 * MIB, report
    assert report["reused"] == len(data) - 8 * MIB


def test_a_mismatch_whose_parts_cannot_be_read_drops_the_whole_file(world, tmp_path, caplog):
    data, etag = _boto3_object(world, tmp_path)
    s3 = _client(world.endpoint)
    target = tmp_path / "W1UP.bag.zip"

    with pytest.raises(WholeObjectMismatch) as caught:
        object_download.download_object(
            FlippingLink(_NoPartValues(s3)), world.bucket, KEY, etag, target, "W1UP", 2, 3
        )
    assert is_transient(caught.value), "the check ran and failed: fetched again, never passed"
    partial = target.with_name(f".{target.name}.part")
    assert not partial.exists() and not journal_path(partial).exists(), "the whole file dropped"
    assert "the parts at fault cannot be told (part 1's own value not read" in caplog.text
    report: dict = {}
    assert object_download.download_object(
        s3, world.bucket, KEY, etag, target, "W1UP", 2, 3, report=report
    )
    assert target.read_bytes() == data and report["fetched"] == len(data)


def test_killed_right_after_noting_a_mismatch_the_next_try_refetches_the_part(
    world, tmp_path, monkeypatch
):
    """The mismatch is noted only once the part at fault has left the journal: a kill just after
    the note leaves a journal without the bad bytes, so the next try fetches them again instead
    of reusing them and taking the same mismatch for a repeated one (a held work)."""
    from glacier_sync.transfer import whole_object

    data, etag = _boto3_object(world, tmp_path)
    s3 = _client(world.endpoint)
    target = tmp_path / "W1UP.bag.zip"
    real_note = whole_object.judge_mismatch

    def noted_then_killed(partial, mismatch, work_id):
        with pytest.raises(whole_object.UnconfirmedMismatch):
            real_note(partial, mismatch, work_id)
        raise KeyboardInterrupt("killed right after the note")  # a stand-in for kill -9

    monkeypatch.setattr(whole_object, "judge_mismatch", noted_then_killed)
    with pytest.raises(KeyboardInterrupt):
        object_download.download_object(
            FlippingLink(s3), world.bucket, KEY, etag, target, "W1UP", 2, 3
        )
    monkeypatch.undo()
    report: dict = {}
    assert object_download.download_object(
        s3, world.bucket, KEY, etag, target, "W1UP", 2, 3, report=report
    )
    assert target.read_bytes() == data and report["fetched"] == 8 * MIB, report
