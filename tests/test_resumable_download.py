"""Resumable downloads against moto, through a proxy that counts the bytes S3 served.

A download killed (``kill -9``) inside a range, between ranges, or after the last range before
the rename is resumed by the next try, which fetches only the ranges its journal does not vouch
for; a corrupted range on disk, a changed object and a journal of an older format are each
detected; the whole object is checked against its CRC32 checksum or its (multipart) eTag.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import boto3
import pytest
from boto3.s3.transfer import TransferConfig
from botocore.config import Config
from byte_proxy import ByteCountingProxy
from demo_world import FAKE_CREDENTIALS
from helpers import FlippingLink, PassThroughClient, fail_range, upload_parts

from glacier_sync.errors import DownloadError, ObjectUnavailable, PermanentError, is_transient
from glacier_sync.transfer import (
    disk_hashes,
    download_plan,
    object_download,
    ranged_download,
    whole_object,
)
from glacier_sync.transfer.range_journal import RangePlan, journal_path

pytestmark = pytest.mark.integration

MIB = 1024 * 1024
SIZE = 23 * MIB + 12345  # five 5 MiB ranges, the last one short
HEADERS = 64 * 1024  # generous allowance per request for HTTP headers
KEY = "Archive0/00/W1RES/W1RES.bag.zip"


def _client(endpoint: str, checksums: bool = True):
    config = Config(
        request_checksum_calculation="when_supported" if checksums else "when_required",
        max_pool_connections=16,
    )
    return boto3.client(
        "s3", endpoint_url=endpoint, region_name="us-east-1", config=config, **FAKE_CREDENTIALS
    )


@pytest.fixture
def payload(tmp_path) -> bytes:
    data = os.urandom(SIZE)
    (tmp_path / "source.zip").write_bytes(data)
    return data


@pytest.fixture
def proxy(world):
    host, port = world.endpoint.removeprefix("http://").split(":")
    with ByteCountingProxy(host, int(port)) as counting:
        yield counting


def _upload(world, tmp_path, multipart: bool, checksums: bool) -> str:
    s3 = _client(world.endpoint, checksums)
    source = str(tmp_path / "source.zip")
    if multipart:
        config = TransferConfig(multipart_threshold=5 * MIB, multipart_chunksize=5 * MIB)
        s3.upload_file(source, world.bucket, KEY, Config=config)
    else:
        s3.put_object(Bucket=world.bucket, Key=KEY, Body=Path(source).read_bytes())
    return s3.head_object(Bucket=world.bucket, Key=KEY)["ETag"].strip('"')


def _download(endpoint: str, world, target: Path, etag: str, concurrency: int = 1) -> bool:
    s3 = _client(endpoint)
    return object_download.download_object(
        s3, world.bucket, KEY, etag, target, "W1RES", concurrency, 5
    )


def _killed_download(world, target: Path, etag: str, point: str, concurrency: int = 1) -> None:
    """Run a download in its own process group, killed at the ``point`` line's instant."""
    target.parent.mkdir(parents=True, exist_ok=True)
    fault = target.parent.parent / "fault"
    Path(str(fault) + ".fired").unlink(missing_ok=True)
    fault.write_text(point)
    code = (
        "import sys; sys.path[:0] = sys.argv[1:3]\n"
        "from test_resumable_download import _download\n"
        "from pathlib import Path\n"
        "class W: bucket = sys.argv[4]\n"
        "_download(sys.argv[3], W, Path(sys.argv[5]), sys.argv[6], int(sys.argv[7]))\n"
    )
    here = Path(__file__).resolve().parent
    args = [str(here), str(here.parent / "tools"), world.endpoint, world.bucket, str(target)]
    proc = subprocess.run(
        [sys.executable, "-c", code, *args, etag, str(concurrency)],
        env={**os.environ, "GLACIER_SYNC_FAULT_FILE": str(fault)},
        start_new_session=True,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == -9, proc.stderr
    assert Path(str(fault) + ".fired").exists()


def _journaled_bytes(target: Path) -> int:
    partial = target.with_name(f".{target.name}.part")
    lines = journal_path(partial).read_text().splitlines()[1:]
    header = json.loads(journal_path(partial).read_text().splitlines()[0])
    indexes = {json.loads(line)["i"] for line in lines}
    return sum(min(SIZE, (i + 1) * header["part_size"]) - i * header["part_size"] for i in indexes)


@pytest.mark.parametrize(
    ("point", "kept"),
    [
        # Inside the third range: the first two at most (the committer may lag behind).
        ("download:chunk 12", (0, 2 * 5 * MIB)),
        # The third range journaled, and any that shared the committer's round.
        ("download:range 3", (3 * 5 * MIB, SIZE)),
        ("download:ranges-done", (SIZE, SIZE)),  # every range on disk, not checked nor renamed
        ("download:recorded", (SIZE, SIZE)),  # the completion record written, not renamed
    ],
)
def test_a_killed_download_fetches_only_what_is_missing(
    world, tmp_path, payload, proxy, point, kept
):
    etag = _upload(world, tmp_path, multipart=True, checksums=False)
    target = tmp_path / "incoming" / "W1RES.bag.zip"
    _killed_download(world, target, etag, point)
    assert not target.exists()
    journaled = _journaled_bytes(target)
    assert kept[0] <= journaled <= kept[1], journaled
    proxy.reset()
    assert _download(proxy.endpoint, world, target, etag) is True
    missing = SIZE - journaled
    assert missing <= proxy.served <= missing + 8 * HEADERS, proxy.served
    assert target.read_bytes() == payload
    assert not list(target.parent.glob(".*part*")), "the journal and .part are cleaned up"


def test_concurrent_ranges_resume_after_a_kill(world, tmp_path, payload, proxy):
    etag = _upload(world, tmp_path, multipart=False, checksums=True)  # the CRC32 check
    target = tmp_path / "W1RES.bag.zip"
    _killed_download(world, target, etag, "download:range 2", concurrency=4)
    kept = _journaled_bytes(target)
    assert kept >= 2 * 5 * MIB
    proxy.reset()
    assert _download(proxy.endpoint, world, target, etag, concurrency=4) is True
    assert proxy.served <= SIZE - kept + 8 * HEADERS
    assert target.read_bytes() == payload


def test_a_corrupted_range_on_disk_is_fetched_again(world, tmp_path, payload, proxy):
    etag = _upload(world, tmp_path, multipart=False, checksums=False)  # the plain MD5 eTag
    target = tmp_path / "W1RES.bag.zip"
    _killed_download(world, target, etag, "download:ranges-done")
    partial = target.with_name(f".{target.name}.part")
    with partial.open("r+b") as part:  # one flipped byte in the second range
        part.seek(7 * MIB)
        byte = part.read(1)
        part.seek(7 * MIB)
        part.write(bytes([byte[0] ^ 0xFF]))
    proxy.reset()
    assert _download(proxy.endpoint, world, target, etag) is True
    assert 5 * MIB <= proxy.served <= 5 * MIB + 2 * HEADERS
    assert target.read_bytes() == payload


def test_a_changed_object_discards_the_partial_file(world, tmp_path, payload, proxy):
    _upload(world, tmp_path, multipart=True, checksums=False)
    target = tmp_path / "W1RES.bag.zip"
    _killed_download(world, target, "", "download:range 2")
    changed = os.urandom(SIZE)
    (tmp_path / "source.zip").write_bytes(changed)
    new_etag = _upload(world, tmp_path, multipart=True, checksums=False)
    proxy.reset()
    assert _download(proxy.endpoint, world, target, new_etag) is True
    assert proxy.served >= SIZE
    assert target.read_bytes() == changed
    # The event names the old version: refused, and nothing of the old try is kept.
    target.unlink()
    _killed_download(world, target, new_etag, "download:range 1")
    with pytest.raises(ObjectUnavailable, match="changed since the restore event"):
        _download(proxy.endpoint, world, target, "0" * 32)
    assert not list(target.parent.glob(".*part*"))


def test_a_journal_of_an_older_format_is_not_trusted(world, tmp_path, payload, proxy):
    etag = _upload(world, tmp_path, multipart=True, checksums=False)
    target = tmp_path / "W1RES.bag.zip"
    _killed_download(world, target, etag, "download:range 3")
    journal = journal_path(target.with_name(f".{target.name}.part"))
    lines = journal.read_text().splitlines()
    header = json.loads(lines[0])
    journal.write_text("\n".join([json.dumps({**header, "format": 1}), *lines[1:]]) + "\n")
    proxy.reset()
    assert _download(proxy.endpoint, world, target, etag) is True
    assert proxy.served >= SIZE
    assert target.read_bytes() == payload


def test_a_torn_journal_line_loses_only_its_range(world, tmp_path, payload, proxy):
    etag = _upload(world, tmp_path, multipart=True, checksums=False)
    target = tmp_path / "W1RES.bag.zip"
    _killed_download(world, target, etag, "download:range 3")
    journal = journal_path(target.with_name(f".{target.name}.part"))
    text = journal.read_text()
    last = json.loads(text.splitlines()[-1])["i"]
    kept = _journaled_bytes(target) - (min(SIZE, (last + 1) * 5 * MIB) - last * 5 * MIB)
    journal.write_text(text[: text.rindex('{"i"') + 5])  # the last line cut mid-write
    proxy.reset()
    assert _download(proxy.endpoint, world, target, etag) is True
    assert SIZE - kept <= proxy.served <= SIZE - kept + 8 * HEADERS
    assert target.read_bytes() == payload


@pytest.mark.parametrize(
    ("multipart", "checksums", "check"),
    [
        (True, False, "etag-parts"),
        (False, False, "etag-md5"),
        (False, True, "crc32"),
    ],
)
def test_the_whole_object_check_of_each_kind(world, tmp_path, payload, multipart, checksums, check):
    etag = _upload(world, tmp_path, multipart, checksums)
    s3 = _client(world.endpoint)
    head = s3.head_object(Bucket=world.bucket, Key=KEY, ChecksumMode="ENABLED")
    plan = download_plan.plan_download(s3, head, world.bucket, KEY, None, 5)
    assert plan.check == check
    if check == "etag-parts":
        assert plan.part_size == 5 * MIB and plan.ranges == 5
    partial = tmp_path / ".W1RES.bag.zip.part"
    ranged_download.fetch_ranges(s3, plan, partial, 3, "W1RES")
    assert partial.read_bytes() == payload
    wrong = RangePlan(**{**plan.__dict__, "expected": "AAAAAA=="})
    ranged_download.discard(partial)
    with pytest.raises(whole_object.WholeObjectMismatch, match=f"{check}: got"):
        ranged_download.fetch_ranges(s3, wrong, partial, 3, "W1RES")
    target = tmp_path / "W1RES.bag.zip"
    assert _download(world.endpoint, world, target, etag) is True


def test_a_mismatching_whole_object_drops_the_partial_file(world, tmp_path, payload, monkeypatch):
    etag = _upload(world, tmp_path, multipart=True, checksums=False)
    real_plan = download_plan.plan_download

    def wrong_plan(*args, **kwargs):
        plan = real_plan(*args, **kwargs)
        return RangePlan(**{**plan.__dict__, "expected": "f" * 32 + "-5"})

    monkeypatch.setattr(download_plan, "plan_download", wrong_plan)
    target = tmp_path / "W1RES.bag.zip"
    with pytest.raises(DownloadError, match="does not match the object") as first:
        _download(world.endpoint, world, target, etag)
    assert not isinstance(first.value, PermanentError), "once may be a fault of the transfer"
    assert not target.exists() and not list(tmp_path.glob(".*part")), "the bytes are dropped"


def test_the_same_mismatch_twice_is_held_after_two_fetches(
    world, tmp_path, payload, proxy, monkeypatch
):
    """A wrong expectation (not a bad transfer) gives the same bytes and the same mismatch on
    every fetch: held for an operator with both values after the second, not fetched forever."""
    etag = _upload(world, tmp_path, multipart=True, checksums=False)
    real_plan = download_plan.plan_download
    wrong = "f" * 32 + "-5"

    def wrong_plan(*args, **kwargs):
        return RangePlan(**{**real_plan(*args, **kwargs).__dict__, "expected": wrong})

    monkeypatch.setattr(download_plan, "plan_download", wrong_plan)
    target = tmp_path / "W1RES.bag.zip"
    with pytest.raises(whole_object.WholeObjectMismatch) as first:
        _download(proxy.endpoint, world, target, etag)
    assert is_transient(first.value) and not isinstance(first.value, PermanentError)
    with pytest.raises(whole_object.RepeatedMismatch) as second:
        _download(proxy.endpoint, world, target, etag)
    assert isinstance(second.value, PermanentError) and not is_transient(second.value)
    message = str(second.value)
    assert f"got {first.value.got} twice, S3 says {wrong}" in message, message
    assert "glacier-sync retry W1RES" in message and "head-object" in message
    assert proxy.served <= 2 * SIZE + 20 * HEADERS, "at most two full fetches"
    assert not list(tmp_path.glob(".*part*")), "nothing kept, the note neither"


def test_a_byte_flipped_in_transit_is_fetched_again_and_never_held(world, tmp_path, payload):
    """The single-part MD5 catches it; the next try, with a clean link, archives the object."""
    etag = _upload(world, tmp_path, multipart=False, checksums=False)
    target = tmp_path / "W1RES.bag.zip"
    flipping = FlippingLink(_client(world.endpoint))
    with pytest.raises(whole_object.WholeObjectMismatch) as caught:
        object_download.download_object(flipping, world.bucket, KEY, etag, target, "W1RES", 2, 5)
    assert not isinstance(caught.value, PermanentError), "never a bad object for a bad link"
    with pytest.raises(whole_object.WholeObjectMismatch) as again:
        object_download.download_object(flipping, world.bucket, KEY, etag, target, "W1RES", 2, 5)
    assert not isinstance(again.value, PermanentError), "a different flip each time: not held"
    assert _download(world.endpoint, world, target, etag) is True
    assert target.read_bytes() == payload
    assert not list(tmp_path.glob(".*part*")), "the note goes with the success"


def test_a_link_that_corrupts_every_fetch_spends_attempts_from_the_third(world, tmp_path, payload):
    """Mismatches that differ each time are a bad link, not a bad object: never held, but
    from the third in a row each try spends an attempt (no refetching for ever); a clean
    fetch then passes and forgets them."""
    etag = _upload(world, tmp_path, multipart=False, checksums=False)
    target = tmp_path / "W1RES.bag.zip"
    flipping = FlippingLink(_client(world.endpoint))
    partial = target.with_name(f".{target.name}.part")
    for nth in range(1, whole_object.FREE_MISMATCHES + 1):
        with pytest.raises(whole_object.UnconfirmedMismatch) as free:
            object_download.download_object(
                flipping, world.bucket, KEY, etag, target, "W1RES", 2, 5
            )
        assert is_transient(free.value), f"mismatch {nth}: fetched again, no attempt spent"
    with pytest.raises(whole_object.MismatchesInARow) as spent:
        object_download.download_object(flipping, world.bucket, KEY, etag, target, "W1RES", 2, 5)
    assert not is_transient(spent.value) and not isinstance(spent.value, PermanentError)
    message = str(spent.value)
    assert "3 downloads in a row" in message and "check the network path" in message, message
    noted = whole_object.mismatch_note(partial).read_text().splitlines()
    assert len(noted) == 3 and len(set(noted)) == 3, noted
    assert _download(world.endpoint, world, target, etag) is True
    assert target.read_bytes() == payload
    assert not list(tmp_path.glob(".*part*")), "the note goes with the success"


def test_mismatches_noted_for_another_version_of_the_object_do_not_count(world, tmp_path, payload):
    """The note beside the partial file counts mismatches of this object only: lines left by
    another version (a kill, an object replaced since) never charge an attempt or hold the
    work; a changed object drops the note with the partial file."""
    etag = _upload(world, tmp_path, multipart=False, checksums=False)
    target = tmp_path / "W1RES.bag.zip"
    partial = target.with_name(f".{target.name}.part")
    note = whole_object.mismatch_note(partial)
    note.write_text("".join(f"etag-md5 {n * 32} {'e' * 32}\n" for n in "abc"))
    with pytest.raises(whole_object.UnconfirmedMismatch):
        object_download.download_object(
            FlippingLink(_client(world.endpoint)), world.bucket, KEY, etag, target, "W1RES", 2, 5
        )
    assert note.read_text().splitlines()[-1].endswith(etag), "this version's own line"
    assert len(note.read_text().splitlines()) == 1, "the other version's lines are dropped"
    with pytest.raises(ObjectUnavailable, match="changed since the restore event"):
        object_download.download_object(
            _client(world.endpoint), world.bucket, KEY, "0" * 32, target, "W1RES", 2, 5
        )
    assert not note.exists() and not partial.exists(), "the changed object's note goes too"


def test_a_partial_file_cut_short_while_checked_is_an_io_error(tmp_path):
    """Hashing the file back never takes a short read for the end of a part (a silent
    mismatch): it is an I/O error, said."""
    import hashlib

    path = tmp_path / "cut"
    path.write_bytes(b"x" * 10)
    fd = os.open(path, os.O_RDONLY)
    try:
        with pytest.raises(OSError, match="ends at byte 10, before 20: it was cut short"):
            whole_object.hash_span(fd, 0, 20, hashlib.md5())
    finally:
        os.close(fd)


def test_a_failed_range_keeps_the_others(world, tmp_path, payload, proxy, monkeypatch):
    etag = _upload(world, tmp_path, multipart=True, checksums=False)
    fail_range(monkeypatch, 3)
    target = tmp_path / "W1RES.bag.zip"
    with pytest.raises(DownloadError, match="injected"):
        _download(world.endpoint, world, target, etag, concurrency=1)
    monkeypatch.undo()
    kept = _journaled_bytes(target)
    assert kept == 3 * 5 * MIB  # ranges 0-2 done; 4 cancelled once 3 failed (one thread)
    proxy.reset()
    assert _download(proxy.endpoint, world, target, etag) is True
    assert proxy.served <= SIZE - kept + 4 * HEADERS
    assert target.read_bytes() == payload


# Objects made the way real uploaders make them.


def test_an_upload_with_boto3_defaults_is_checked_by_its_multipart_etag(world, tmp_path, payload):
    """boto3's own defaults (multipart from 8 MiB, CRC32 sent): moto answers the parts' composite
    CRC32 with no ChecksumType and no -N, which is not the object's CRC32; the eTag decides."""
    s3 = boto3.client("s3", endpoint_url=world.endpoint, region_name="us-east-1")
    s3.upload_file(str(tmp_path / "source.zip"), world.bucket, KEY)
    head = s3.head_object(Bucket=world.bucket, Key=KEY, ChecksumMode="ENABLED")
    assert head["ETag"].strip('"').endswith("-3"), "8 MiB parts"
    assert head.get("ChecksumCRC32") and not head.get("ChecksumType"), "the ambiguous answer"
    plan = download_plan.plan_download(s3, head, world.bucket, KEY, None, 5)
    assert (plan.check, plan.part_size) == ("etag-parts", 8 * MIB)
    target = tmp_path / "W1RES.bag.zip"
    assert _download(world.endpoint, world, target, head["ETag"].strip('"')) is True
    assert target.read_bytes() == payload


@pytest.mark.parametrize(
    "sizes",
    [
        [8 * MIB, 6 * MIB, 8 * MIB, SIZE - 22 * MIB],  # a short part in the middle
        [5 * MIB, 9 * MIB, SIZE - 14 * MIB],  # parts larger than the first
    ],
    ids=["8-6-8-rest", "5-9-rest"],
)
def test_parts_of_unequal_sizes_are_checked_along_their_own_bounds(world, tmp_path, payload, sizes):
    etag = upload_parts(_client(world.endpoint), world.bucket, KEY, payload, sizes)
    assert etag.endswith(f"-{len(sizes)}")
    s3 = _client(world.endpoint)
    head = s3.head_object(Bucket=world.bucket, Key=KEY, ChecksumMode="ENABLED")
    plan = download_plan.plan_download(s3, head, world.bucket, KEY, None, 5)
    assert (plan.check, plan.part_size) == ("etag-parts", sizes[0]), "checked, not skipped"
    partial = tmp_path / ".W1RES.bag.zip.part"
    ranged_download.fetch_ranges(s3, plan, partial, 3, "W1RES")
    assert partial.read_bytes() == payload
    ranged_download.discard(partial)
    wrong = RangePlan(**{**plan.__dict__, "expected": "f" * 32 + f"-{len(sizes)}"})
    with pytest.raises(whole_object.WholeObjectMismatch, match="etag-parts: got"):
        ranged_download.fetch_ranges(s3, wrong, partial, 3, "W1RES")
    target = tmp_path / "W1RES.bag.zip"
    assert _download(world.endpoint, world, target, etag) is True
    assert target.read_bytes() == payload


class _Faulty(PassThroughClient):
    """An S3 client whose chosen calls fail (or misbehave) the way a throttled store would."""

    def __init__(
        self,
        s3,
        fail_part_head: int | None = None,
        ignore_range: bool = False,
        shift_range: bool = False,
        heads_before_expiry: int | None = None,
    ):
        super().__init__(s3)
        self.fail_part_head, self.ignore_range = fail_part_head, ignore_range
        self.shift_range, self.heads_left = shift_range, heads_before_expiry

    def head_object(self, **kwargs):
        if self.heads_left is not None:  # then every HEAD fails as expired credentials do
            if self.heads_left <= 0:
                from botocore.exceptions import ClientError

                meta = {"HTTPStatusCode": 400}
                raise ClientError({"Error": {"Code": "400"}, "ResponseMetadata": meta}, "Head")
            self.heads_left -= 1
        if kwargs.get("PartNumber") is not None and self.fail_part_head == 200:
            kwargs.pop("PartNumber")  # a store that ignores it: the whole object, no PartsCount
            return self._s3.head_object(**kwargs)
        if kwargs.get("PartNumber") is not None and self.fail_part_head is not None:
            from botocore.exceptions import ClientError

            status = self.fail_part_head
            error = {"Code": "SlowDown" if status == 503 else "InvalidArgument", "Message": "x"}
            meta = {"HTTPStatusCode": status}
            raise ClientError({"Error": error, "ResponseMetadata": meta}, "HeadObject")
        return self._s3.head_object(**kwargs)

    def get_object(self, **kwargs):
        if self.ignore_range:
            kwargs.pop("Range", None)
        if self.shift_range:  # a 206 for the wrong bytes: one byte later than asked
            first, last = kwargs["Range"].removeprefix("bytes=").split("-")
            kwargs["Range"] = f"bytes={int(first) + 1}-{last}"
        return self._s3.get_object(**kwargs)


@pytest.mark.parametrize(
    "fault",
    [{"fail_part_head": 503}, {"heads_before_expiry": 1}],
    ids=["503", "400-for-every-head"],
)
def test_a_failed_part_head_is_retried_never_a_silent_downgrade(world, tmp_path, payload, fault):
    """A throttled part HEAD (503), or a 400 that every HEAD gets as expired credentials give
    (a HEAD's error has no code: a 400 means "no part numbers" only while the same HEAD without
    ``partNumber`` is answered), fails the try as a fault, never an unchecked download."""
    etag = _upload(world, tmp_path, multipart=True, checksums=False)
    target = tmp_path / "W1RES.bag.zip"
    faulty = _Faulty(_client(world.endpoint), **fault)
    with pytest.raises(DownloadError, match="size of part 1 of its upload could not be read") as e:
        object_download.download_object(faulty, world.bucket, KEY, etag, target, "W1RES", 2, 5)
    assert is_transient(e.value), "a fault of the store: no attempt spent"
    assert not target.exists()
    assert _download(world.endpoint, world, target, etag) is True, "the next try checks it"
    assert target.read_bytes() == payload


@pytest.mark.parametrize("answer", [400, 200], ids=["refused", "ignored"])
def test_a_store_without_part_numbers_is_downloaded_and_said_unchecked(
    world, tmp_path, payload, caplog, answer
):
    etag = _upload(world, tmp_path, multipart=True, checksums=False)
    target = tmp_path / "W1RES.bag.zip"
    faulty = _Faulty(_client(world.endpoint), fail_part_head=answer)
    report: dict = {}
    with caplog.at_level("INFO", logger="glacier_sync"):
        assert object_download.download_object(
            faulty, world.bucket, KEY, etag, target, "W1RES", 2, 5, report=report
        )
    assert report["check"] == "none", "said unchecked in the work's record too"
    assert target.read_bytes() == payload
    assert "its multipart eTag cannot be checked" in caplog.text
    assert "the bag manifests are the check" in caplog.text


def test_an_answer_that_ignores_the_range_is_refused(world, tmp_path, payload):
    etag = _upload(world, tmp_path, multipart=True, checksums=False)
    target = tmp_path / "W1RES.bag.zip"
    faulty = _Faulty(_client(world.endpoint), ignore_range=True)
    with pytest.raises(DownloadError, match="a proxy or store that ignores or shifts ranges"):
        object_download.download_object(faulty, world.bucket, KEY, etag, target, "W1RES", 2, 5)
    assert not target.exists()
    assert _download(world.endpoint, world, target, etag) is True
    assert target.read_bytes() == payload


def test_an_answer_for_other_bytes_than_the_range_asked_is_refused(world, tmp_path, payload):
    """A 206 whose ``Content-Range`` is not the range asked for (a proxy that shifts it) is
    refused before a byte of it is written; the next try, on a sound path, archives it whole."""
    etag = _upload(world, tmp_path, multipart=True, checksums=False)
    target = tmp_path / "W1RES.bag.zip"
    shifting = _Faulty(_client(world.endpoint), shift_range=True)
    with pytest.raises(DownloadError, match="ignores or shifts ranges") as caught:
        object_download.download_object(shifting, world.bucket, KEY, etag, target, "W1RES", 2, 5)
    assert is_transient(caught.value) and "answered 206 with Content-Range" in str(caught.value)
    assert not target.exists()
    assert _download(world.endpoint, world, target, etag) is True
    assert target.read_bytes() == payload


class _ResettingBody:
    """A response body that breaks once after ``after`` bytes, as a reset connection does."""

    def __init__(self, body, after: int, served: list[int]):
        self._body, self._left, self._served = body, after, served

    def readinto(self, view) -> int:
        if self._left is not None and self._left <= 0:
            self._left = None
            from urllib3.exceptions import ProtocolError

            raise ProtocolError("Connection broken: ConnectionResetError(104, 'reset by peer')")
        count = self._body.readinto(view[: self._left] if self._left else view)
        if self._left is not None:
            self._left -= count
        self._served[0] += count
        return count

    def close(self) -> None:
        self._body.close()


class _Resetting(_Faulty):
    """Every ``every``-th GET breaks once after ``after`` bytes of its body."""

    def __init__(self, s3, every: int, always: bool = False, after: int = MIB + 17):
        super().__init__(s3)
        self.calls, self.every, self.always, self.served = 0, every, always, [0]
        self.after = after

    def get_object(self, **kwargs):
        response = self._s3.get_object(**kwargs)
        self.calls += 1
        breaks = self.always or self.calls % self.every == 0
        after = self.after if breaks else None
        response["Body"] = _ResettingBody(response["Body"], after, self.served)
        return response


def test_a_reset_inside_a_range_resumes_that_range_from_its_byte(world, tmp_path, payload):
    etag = _upload(world, tmp_path, multipart=False, checksums=True)
    target = tmp_path / "W1RES.bag.zip"
    resetting = _Resetting(_client(world.endpoint), every=2)
    assert object_download.download_object(
        resetting, world.bucket, KEY, etag, target, "W1RES", 2, 5
    )
    assert target.read_bytes() == payload
    assert resetting.calls > 5, "some ranges were asked again"
    assert resetting.served[0] == SIZE, "each retry asked for the rest of its range only"


def test_a_range_that_keeps_failing_fails_the_try_and_keeps_the_others(
    world, tmp_path, payload, monkeypatch
):
    monkeypatch.setattr(ranged_download, "RETRY_BASE_SECONDS", 0.01)
    etag = _upload(world, tmp_path, multipart=False, checksums=True)
    target = tmp_path / "W1RES.bag.zip"
    broken = _Resetting(_client(world.endpoint), every=1, always=True, after=0)  # no progress
    real = broken.get_object

    def range_2_breaks(**kwargs):
        start = int(kwargs["Range"].removeprefix("bytes=").split("-")[0])
        if 2 * 5 * MIB <= start < 3 * 5 * MIB:
            return real(**kwargs)
        return broken._s3.get_object(**kwargs)

    broken.get_object = range_2_breaks
    with pytest.raises(DownloadError, match="failed 5 time.*Connection broken") as caught:
        object_download.download_object(broken, world.bucket, KEY, etag, target, "W1RES", 1, 5)
    assert is_transient(caught.value), "a fault of the network: no attempt spent"
    assert broken.calls == ranged_download.RANGE_ATTEMPTS, "retried, then given up"
    assert _journaled_bytes(target) == 2 * 5 * MIB, "the ranges before it are kept"


def test_a_torn_journal_tail_is_cut_before_the_next_record(tmp_path):
    from glacier_sync.transfer.range_journal import RangeJournal, read_journal

    plan = RangePlan("b", "k", "", "e", 3 * MIB, MIB, "crc32", "none")
    path = tmp_path / "x.part.journal"
    RangeJournal(path, plan, fresh=True).close()
    with path.open("a") as journal:
        journal.write('{"i": 0, "d": "00000001"}\n{"i": 1, "d": "0000')  # killed mid-line
    again = RangeJournal(path, plan, fresh=False)
    again.record_many([(2, "00000003")])
    again.close()
    assert read_journal(path, plan) == {0: "00000001", 2: "00000003"}


def test_a_disk_error_while_hashing_back_keeps_the_verified_ranges(
    world, tmp_path, payload, monkeypatch
):
    etag = _upload(world, tmp_path, multipart=False, checksums=False)  # the in-order MD5 check
    target = tmp_path / "W1RES.bag.zip"

    def failing(fd, start, end, hasher):
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(disk_hashes, "hash_span", failing)
    with pytest.raises(DownloadError, match="Input/output error.*the verified ranges are kept"):
        _download(world.endpoint, world, target, etag)
    assert _journaled_bytes(target) == SIZE, "nothing thrown away for a disk error"
    monkeypatch.undo()
    assert _download(world.endpoint, world, target, etag) is True
    assert target.read_bytes() == payload


def test_a_disk_error_while_rechecking_a_resumed_file_keeps_it(
    world, tmp_path, payload, monkeypatch
):
    """Verified ranges on disk are not thrown away because reading them back failed once."""
    etag = _upload(world, tmp_path, multipart=True, checksums=False)
    target = tmp_path / "W1RES.bag.zip"
    _killed_download(world, target, etag, "download:ranges-done")
    partial = target.with_name(f".{target.name}.part")
    assert _journaled_bytes(target) == SIZE

    def failing(fd, plan, index):
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(ranged_download, "_hash_on_disk", failing)
    with pytest.raises(OSError, match="Input/output error"):
        _download(world.endpoint, world, target, etag)
    assert partial.is_file() and journal_path(partial).is_file(), "kept for the next try"
    monkeypatch.undo()
    assert _download(world.endpoint, world, target, etag) is True
    assert target.read_bytes() == payload


def test_each_write_is_durable_before_the_record_that_depends_on_it(
    world, tmp_path, payload, monkeypatch
):
    """Bytes, then their record, down to the disk: every journal ``fsync`` comes after an
    ``fdatasync`` of the ``.part`` file; the completion record is fsynced before its rename,
    renamed before the zip is, and the folder fsynced after both renames, before the download
    returns (and the database records ``downloaded``). A power loss then leaves no record
    ahead of what it records."""
    etag = _upload(world, tmp_path, multipart=True, checksums=False)
    target = tmp_path / "W1RES.bag.zip"
    steps: list[tuple[str, str]] = []
    real = {name: getattr(os, name) for name in ("fsync", "fdatasync", "replace")}

    def synced(name):
        def sync(fd):
            steps.append((name, os.readlink(f"/proc/self/fd/{fd}")))
            return real[name](fd)

        return sync

    def replace(source, destination, **kwargs):
        steps.append(("replace", f"{Path(source).name} -> {Path(destination).name}"))
        return real["replace"](source, destination, **kwargs)

    monkeypatch.setattr(os, "fsync", synced("fsync"))
    monkeypatch.setattr(os, "fdatasync", synced("fdatasync"))
    monkeypatch.setattr(os, "replace", replace)
    assert _download(world.endpoint, world, target, etag, concurrency=2) is True
    steps.append(("returned", ""))
    monkeypatch.undo()
    part, journal = f".{target.name}.part", f".{target.name}.part.journal"
    record = f"{target.name}.download.json"

    def where(step: tuple[str, str]) -> int:
        return steps.index(step)

    journal_syncs = [
        i for i, (op, path) in enumerate(steps) if op == "fsync" and path.endswith(journal)
    ]
    part_syncs = [
        i for i, (op, path) in enumerate(steps) if op == "fdatasync" and path.endswith(part)
    ]
    assert len(journal_syncs) >= 2, steps  # its header, then at least one round of ranges
    for index in journal_syncs[1:]:
        assert any(s < index for s in part_syncs), "a journal line before its range's bytes"
    record_sync = next(i for i, (op, path) in enumerate(steps) if path.endswith(f".{record}.tmp"))
    record_rename = where(("replace", f".{record}.tmp -> {record}"))
    zip_rename = where(("replace", f"{part} -> {target.name}"))
    folder_sync = max(i for i, (op, path) in enumerate(steps) if path == str(tmp_path))
    assert record_sync < record_rename < zip_rename < folder_sync < where(("returned", ""))
    assert target.read_bytes() == payload
