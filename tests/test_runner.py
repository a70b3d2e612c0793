"""The pipeline against a real moto server: the restore flow, at-least-once, failures, retries."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from datetime import timedelta
from pathlib import Path

import pytest
from helpers import (
    DEFAULT_FILES,
    AsRealS3,
    aws_cli_upload,
    make_bag_dir,
    make_bag_zip,
    upload_parts,
    zip_dir,
)

from glacier_sync import aws
from glacier_sync.bag.workspace import read_marker, verified_work_folder, write_marker
from glacier_sync.errors import (
    ArchiveUnavailable,
    BagError,
    NeedsAttention,
    NoRestoredWork,
    ProgressDatabaseError,
)
from glacier_sync.runner import Pipeline
from glacier_sync.settings import load_settings

pytestmark = pytest.mark.integration

KEY = "Archive0/00/W1NLM4700/W1NLM4700.bag.zip"


def _restored(world, dirs, work_id="W1NLM4700", key=KEY, files=None, **extra):
    zip_path = make_bag_zip(dirs["bags"], work_id, files)
    world.upload_archived(zip_path, key, **extra)
    world.restore(key)
    return zip_path


def test_restore_event_to_archive(world, dirs, settings):
    _restored(world, dirs)
    pipeline = Pipeline(settings)
    report, outcomes = pipeline.run_once()
    assert report.recorded == 1 and report.deleted >= 2  # TestEvent, Post and Completed
    assert [o.ok for o in outcomes] == [True]
    archived = dirs["archive"] / "Archive0" / "00" / "W1NLM4700"
    for rel, content in DEFAULT_FILES.items():
        assert (archived / rel).read_bytes() == content
    row = pipeline.store.find(["W1NLM4700"])[0]
    assert row.state == "synced" and row.claimed_by is None
    assert row.downloaded_at and row.debagged_at and row.synced_at
    assert world.queue_count() == 0
    assert not (dirs["data"] / "incoming" / KEY).exists(), "zip removed after a safe sync"
    assert not (dirs["data"] / "work" / "W1NLM4700").exists()
    events = [h["event"] for h in row.history]
    phases = ["restore completed", "download done", "debag done", "sync done", "cleaned"]
    assert [e for e in events if e in phases] == phases, "each phase recorded once, in order"
    assert row.cleaned_at is not None
    leftovers = [
        p.relative_to(dirs["data"]).as_posix()
        for p in dirs["data"].rglob("*")
        if p.is_file() and not p.name.startswith("progress.sqlite") and "logs" not in p.parts
    ]
    assert leftovers == [], "the data root holds nothing of a synced work"
    assert not any((dirs["data"] / "incoming").iterdir()), "no empty key folders either"


def test_a_bag_uploaded_with_boto3_defaults_is_archived(world, dirs, settings):
    """The demo's and most uploaders' way: boto3 upload_file with its defaults (multipart from
    8 MiB, CRC32 sent), here 21 MiB in three parts; moto's answer to its checksum is ambiguous."""
    mib = 1024 * 1024
    files = {"images/I0001.tif": os.urandom(12 * mib), "images/I0002.tif": os.urandom(9 * mib)}
    _restored(world, dirs, "W1BIG", "Archive0/00/W1BIG/W1BIG.bag.zip", files)
    head = world.client("s3").head_object(
        Bucket=world.bucket, Key="Archive0/00/W1BIG/W1BIG.bag.zip", ChecksumMode="ENABLED"
    )
    assert head["ETag"].strip('"').endswith("-3") and "ChecksumType" not in head
    pipeline = Pipeline(settings)
    report, outcomes = pipeline.run_once()
    assert [o.ok for o in outcomes] == [True], [o.__dict__ for o in outcomes]
    archived = dirs["archive"] / "Archive0" / "00" / "W1BIG"
    for rel, content in files.items():
        assert (archived / rel).read_bytes() == content
    row = pipeline.store.find(["W1BIG"])[0]
    assert (row.state, row.attempts) == ("synced", 0), row.summary()
    [done] = [h for h in row.history if h["event"] == "download done"]
    assert (done["check"], done["fetched"], done["reused"]) == (
        "etag-parts",
        head["ContentLength"],
        0,
    )


def test_an_sse_kms_bag_is_archived_checked_by_its_composite_crc32(world, dirs, settings):
    """SSE-KMS: on S3 its eTag is no MD5, so the composite CRC32 boto3 sent is the only
    end-to-end check; the work's record says it was made."""
    mib = 1024 * 1024
    files = {"images/I0001.tif": os.urandom(10 * mib), "images/I0002.tif": os.urandom(9 * mib)}
    key = world.client("kms").create_key()["KeyMetadata"]["KeyId"]
    kms = {"ServerSideEncryption": "aws:kms", "SSEKMSKeyId": key}
    _restored(world, dirs, "W1KMS", "Archive0/00/W1KMS/W1KMS.bag.zip", files, **kms)
    pipeline = Pipeline(settings)
    report, outcomes = pipeline.run_once()
    assert [o.ok for o in outcomes] == [True], [o.__dict__ for o in outcomes]
    archived = dirs["archive"] / "Archive0" / "00" / "W1KMS"
    for rel, content in files.items():
        assert (archived / rel).read_bytes() == content
    row = pipeline.store.find(["W1KMS"])[0]
    assert (row.state, row.attempts) == ("synced", 0), row.summary()
    [done] = [h for h in row.history if h["event"] == "download done"]
    assert done["check"] == "composite-crc32", done


class _AsRealS3Clients:
    """The pipeline's clients, its S3 answering HEADs as real S3 does (``AsRealS3``)."""

    def __init__(self, settings) -> None:
        self.profiles = aws.ProfileClients(settings)

    def client(self, service: str, queue):
        made = self.profiles.client(service, queue)
        return AsRealS3(made) if service == "s3" else made


MIB = 1024 * 1024
# (id, part sizes in MiB (the rest last; none: boto3's upload_file), upload arguments, SSE-KMS,
# HEAD as real S3 gives it, the check the work's record names)
UPLOADS = [
    ("8-6-8-rest-etag", [8, 6, 8], {}, False, False, "etag-parts"),
    (
        "8-6-8-rest-crc32-kms",
        [8, 6, 8],
        {"ChecksumAlgorithm": "CRC32"},
        True,
        False,
        "composite-crc32",
    ),
    (
        "8-6-8-rest-sha256-as-s3",
        [8, 6, 8],
        {"ChecksumAlgorithm": "SHA256"},
        False,
        True,
        "composite-sha256",
    ),
    ("boto3-crc32-as-s3", None, {}, False, True, "composite-crc32"),
    ("boto3-crc64nvme-as-s3", None, {"ChecksumAlgorithm": "CRC64NVME"}, False, True, "crc64nvme"),
]


@pytest.mark.parametrize(
    ("parts", "extra", "kms", "as_s3", "check"),
    [case[1:] for case in UPLOADS],
    ids=[case[0] for case in UPLOADS],
)
def test_uploads_made_as_uploaders_make_them_are_archived_by_their_check(
    world, dirs, settings, parts, extra, kms, as_s3, check
):
    """Unequal parts (with their eTag, a composite CRC32 under SSE-KMS, a typed composite
    SHA-256), a typed composite CRC32 and a full-object CRC64NVME: each restored, checked end
    to end as the work's record says, debagged and synced through ``run-once``."""
    files = {"images/I0001.tif": os.urandom(12 * MIB), "images/I0002.tif": os.urandom(11 * MIB)}
    key, work_id = "Archive0/00/W1UPL/W1UPL.bag.zip", "W1UPL"
    zip_path = make_bag_zip(dirs["bags"], work_id, files)
    s3 = world.client("s3")
    if kms:
        kms_key = world.client("kms").create_key()["KeyMetadata"]["KeyId"]
        extra = {**extra, "ServerSideEncryption": "aws:kms", "SSEKMSKeyId": kms_key}
    if parts is None:
        world.upload_archived(zip_path, key, **extra)
    else:
        data = zip_path.read_bytes()
        sizes = [n * MIB for n in parts]
        sizes.append(len(data) - sum(sizes))
        upload_parts(s3, world.bucket, key, data, sizes, StorageClass="DEEP_ARCHIVE", **extra)
    world.restore(key)
    clients = _AsRealS3Clients(settings) if as_s3 else None
    pipeline = Pipeline(settings, clients=clients)
    report, outcomes = pipeline.run_once()
    assert [o.ok for o in outcomes] == [True], [o.__dict__ for o in outcomes]
    archived = dirs["archive"] / "Archive0" / "00" / work_id
    for rel, content in files.items():
        assert (archived / rel).read_bytes() == content
    row = pipeline.store.find([work_id])[0]
    assert (row.state, row.attempts) == ("synced", 0), row.summary()
    [done] = [h for h in row.history if h["event"] == "download done"]
    assert done["check"] == check, done


def test_a_bag_uploaded_with_the_aws_cli_is_archived(world, dirs, settings):
    """``aws s3 cp --storage-class DEEP_ARCHIVE`` with the CLI's defaults (8 MiB parts, a CRC32
    sent): restored, downloaded and checked, debagged and synced through ``run-once``."""
    mib = 1024 * 1024
    files = {"images/I0001.tif": os.urandom(11 * mib), "images/I0002.tif": os.urandom(7 * mib)}
    key = "Archive0/00/W1CLI/W1CLI.bag.zip"
    zip_path = make_bag_zip(dirs["bags"], "W1CLI", files)
    aws_cli_upload(world, zip_path, key, "--storage-class", "DEEP_ARCHIVE")
    world.restore(key)
    pipeline = Pipeline(settings)
    report, outcomes = pipeline.run_once()
    assert [o.ok for o in outcomes] == [True], [o.__dict__ for o in outcomes]
    archived = dirs["archive"] / "Archive0" / "00" / "W1CLI"
    for rel, content in files.items():
        assert (archived / rel).read_bytes() == content
    row = pipeline.store.find(["W1CLI"])[0]
    assert (row.state, row.attempts) == ("synced", 0), row.summary()
    [done] = [h for h in row.history if h["event"] == "download done"]
    assert done["check"] == "etag-parts", done


def test_same_event_twice_is_processed_once(world, dirs, settings):
    _restored(world, dirs)
    body = None
    sqs = world.client("sqs")
    for msg in sqs.receive_message(
        QueueUrl=world.queue_url, MaxNumberOfMessages=10, VisibilityTimeout=0
    ).get("Messages", []):
        if "ObjectRestore:Completed" in msg["Body"]:
            body = msg["Body"]
    world.send_body(body)
    pipeline = Pipeline(settings)
    report, outcomes = pipeline.run_once()
    assert report.recorded == 1 and report.duplicates == 1
    assert len(outcomes) == 1 and outcomes[0].ok
    assert len(pipeline.store.find()) == 1
    world.send_body(body)  # a late redelivery after the sync: still the same restore
    report, outcomes = pipeline.run_once()
    assert report.duplicates == 1 and outcomes == []


def test_test_event_and_unknown_events_are_deleted_safely(world, settings):
    world.send_body(json.dumps({"Service": "Amazon S3", "Event": "s3:TestEvent"}))
    pipeline = Pipeline(settings)
    report = pipeline.poll_queues()
    assert report.received >= 2 and report.deleted == report.received
    assert any("TestEvent" in s for s in report.skipped)
    assert world.queue_count() == 0


def test_malformed_body_stays_for_the_dead_letter_queue(world, settings):
    world.send_body("this is not json")
    world.send_body(json.dumps({"Records": [{"eventName": "ObjectRestore:Completed"}]}))
    fast = settings.model_copy(update={"sqs_visibility_timeout": 0})
    pipeline = Pipeline(fast)
    first = pipeline.poll_queues()
    assert len(first.malformed) == 2
    assert "not JSON" in first.malformed[0] or "not JSON" in first.malformed[1]
    pipeline.poll_queues()
    pipeline.poll_queues()  # past maxReceiveCount=2 the queue moves them to the DLQ
    assert world.queue_count() == 0
    assert world.queue_count(world.dlq_url) == 2


def test_poll_task_refuses_an_unmounted_archive_before_taking_messages(world, dirs, settings):
    _restored(world, dirs)
    queued = world.queue_count()
    missing = settings.model_copy(update={"archive_root": dirs["archive"] / "not-mounted"})
    with pytest.raises(ArchiveUnavailable, match="is the archive volume mounted"):
        Pipeline(missing).poll()
    assert world.queue_count() == queued and Pipeline(settings).store.find() == []


def test_empty_queue_raises_for_the_poll_task(world, settings):
    with pytest.raises(NoRestoredWork, match="no restore event waiting"):
        Pipeline(settings).poll()


def test_not_restored_object_fails_clearly_and_retries_later(world, dirs, settings):
    zip_path = make_bag_zip(dirs["bags"], "W1LATE")
    key = "Archive0/01/W1LATE/W1LATE.bag.zip"
    world.upload_archived(zip_path, key)
    body = json.dumps(
        {
            "Records": [
                {
                    "eventName": "ObjectRestore:Completed",
                    "awsRegion": "us-east-1",
                    "eventTime": "2026-11-01T00:00:00Z",
                    "s3": {"bucket": {"name": world.bucket}, "object": {"key": key, "size": 1}},
                }
            ]
        }
    )
    world.send_body(body)
    pipeline = Pipeline(settings)
    _, outcomes = pipeline.run_once()
    assert not outcomes[0].ok
    assert "glacier-sync request-restore W1LATE" in outcomes[0].error
    row = pipeline.store.find(["W1LATE"])[0]
    assert (row.state, row.failed_phase) == ("failed", "download")
    assert not any((dirs["archive"]).rglob("*"))
    world.restore(key)
    _, outcomes = Pipeline(settings).run_once()  # no new message needed
    assert outcomes[0].ok
    assert (dirs["archive"] / "Archive0" / "01" / "W1LATE" / "sources").is_dir()


def test_missing_object_is_recorded(world, settings):
    world.send_body(
        json.dumps(
            {
                "Records": [
                    {
                        "eventName": "ObjectRestore:Completed",
                        "awsRegion": "us-east-1",
                        "s3": {
                            "bucket": {"name": world.bucket},
                            "object": {"key": "W1GONE.bag.zip"},
                        },
                    }
                ]
            }
        )
    )
    pipeline = Pipeline(settings)
    _, outcomes = pipeline.run_once()
    assert "does not exist" in outcomes[0].error
    row = pipeline.store.find(["W1GONE"])[0]
    assert row.needs_attention and row.failed_run == pipeline.run_id, "a missing key is held"


def test_bad_bag_fails_alone_zip_kept_archive_untouched(world, dirs, settings):
    _restored(world, dirs, "W1GOOD", "Archive0/02/W1GOOD/W1GOOD.bag.zip")
    bad_dir = make_bag_dir(dirs["bags"], "W1BAD")
    (bad_dir / "data" / "images" / "I1_0001.tif").write_bytes(
        b"XXXX" + DEFAULT_FILES["images/I1_0001.tif"][4:]
    )
    bad_zip = zip_dir(bad_dir, dirs["bags"] / "W1BAD.bag.zip")
    bad_key = "Archive0/03/W1BAD/W1BAD.bag.zip"
    world.upload_archived(bad_zip, bad_key)
    world.restore(bad_key)
    pipeline = Pipeline(settings)
    _, outcomes = pipeline.run_once()
    by_work = {o.work_id: o for o in outcomes}
    assert by_work["W1GOOD"].ok
    assert not by_work["W1BAD"].ok and "I1_0001.tif: sha512 mismatch" in by_work["W1BAD"].error
    assert (dirs["data"] / "incoming" / bad_key).read_bytes() == bad_zip.read_bytes()
    assert not (dirs["archive"] / "Archive0" / "03").exists()
    assert not (dirs["data"] / "work" / "W1BAD").exists()
    row = pipeline.store.find(["W1BAD"])[0]
    assert row.failed_phase == "debag" and "mismatch" in row.last_error
    assert row.needs_attention and row.failed_run == pipeline.run_id and row.attempts == 1


def _bad_bag(world, dirs, work_id="W1BAD", key="Archive0/03/W1BAD/W1BAD.bag.zip"):
    bad_dir = make_bag_dir(dirs["bags"], work_id)
    (bad_dir / "data" / "images" / "I1_0001.tif").write_bytes(b"XXXX")
    world.upload_archived(zip_dir(bad_dir, dirs["bags"] / f"{work_id}.bag.zip"), key)
    world.restore(key)


def test_a_permanent_failure_is_held_until_an_operator_retries(world, dirs, settings):
    """A bad bag fails once and stays put: later runs do not take it again (spending its
    attempts and failing runs that deliver good works), `status --stuck` lists it, the run that
    failed it may try again (its task cleared in the UI), an operator's retry frees it."""
    _bad_bag(world, dirs)
    first = Pipeline(settings, run_id="airflow:run-1")
    _, outcomes = first.run_once()
    assert [o.ok for o in outcomes] == [False]
    pid = outcomes[0].progress_id
    _restored(world, dirs, "W1GOOD", "Archive0/02/W1GOOD/W1GOOD.bag.zip")
    later = Pipeline(settings, run_id="airflow:run-2")
    _, outcomes = later.run_once()
    assert [(o.work_id, o.ok) for o in outcomes] == [("W1GOOD", True)], "the held work is left"
    row = later.store.get(pid)
    assert (row.state, row.attempts, row.needs_attention) == ("failed", 1, True)
    assert [r.work_id for r in later.store.stuck(timedelta(hours=24), 3)] == ["W1BAD"]

    with pytest.raises(NeedsAttention, match="failed permanently in airflow:run-1 .debag: "):
        later.debag(pid)
    with pytest.raises(BagError):  # the failed run's own retry (Clear in the UI) tries again
        first.debag(pid)
    assert first.store.get(pid).attempts == 2

    first.store.reset_for_retry("W1BAD")
    row = first.store.get(pid)
    assert (row.attempts, row.needs_attention, row.failed_run) == (0, False, None)
    assert later.claim() == [pid], "free again for any run"


def test_a_transient_failure_is_not_held(world, dirs, settings):
    """The archive volume gone at the sync (the environment's fault): no attempt, no hold; the
    next run takes the work and finishes it."""
    _restored(world, dirs)
    pipeline = Pipeline(settings, run_id="airflow:run-1")
    [pid] = pipeline.poll()
    pipeline.download(pid)
    pipeline.debag(pid)
    unmounted = dirs["archive"].with_name("archive-away")
    dirs["archive"].rename(unmounted)
    with pytest.raises(ArchiveUnavailable):
        pipeline.sync(pid)
    row = pipeline.store.get(pid)
    assert (row.attempts, row.needs_attention, row.failed_run) == (0, False, None)
    unmounted.rename(dirs["archive"])
    later = Pipeline(settings, run_id="airflow:run-2")
    assert later.claim() == [pid]
    later.sync(pid)
    assert later.store.get(pid).state == "synced"


def test_a_new_restore_of_a_held_work_ends_the_hold(world, dirs, settings):
    """A copy that expired before its download is held; the Completed event of a new restore
    (a later event time) frees it, attempts reset."""
    _bad_bag(world, dirs)
    pipeline = Pipeline(settings)
    _, [outcome] = pipeline.run_once()
    row = pipeline.store.get(outcome.progress_id)
    assert row.needs_attention
    record = dataclasses.replace(_event_of(row), event_time="2099-01-01T00:00:00.000Z")
    assert pipeline.store.record_event(record, "q", "m-2") == (row.id, "reopened")
    row = pipeline.store.get(row.id)
    assert (row.needs_attention, row.attempts, row.failed_run) == (False, 0, None)
    assert row.history[-1]["event"] == "restored again; the work is tried again"


def _event_of(row):
    from glacier_sync.intake.events import RestoreEvent

    return RestoreEvent(
        event_name="ObjectRestore:Completed",
        region="us-east-1",
        bucket=row.bucket,
        key=row.object_key,
        size=row.size,
        etag=row.etag,
        version_id=row.version_id,
    )


def test_failing_sync_script_keeps_work_then_retry_finishes(world, dirs, settings, tmp_path):
    _restored(world, dirs)
    failing = tmp_path / "failing.sh"
    failing.write_text("echo 'archive volume is read-only' >&2\nexit 5\n")
    pipeline = Pipeline(settings.model_copy(update={"sync_command": failing}))
    _, outcomes = pipeline.run_once()
    assert "status 5" in outcomes[0].error and "read-only" in outcomes[0].error
    assert (dirs["data"] / "work" / "W1NLM4700" / "images").is_dir()
    assert (dirs["data"] / "incoming" / KEY).is_file()
    assert not any(dirs["archive"].rglob("*"))
    good = Pipeline(settings)
    _, outcomes = good.run_once()
    assert outcomes[0].ok
    row = good.store.find(["W1NLM4700"])[0]
    assert row.attempts == 1, "one recorded failure; the successful run spent none"
    skipped = [h for h in row.history if h.get("skipped")]
    assert {h["event"] for h in skipped} == {"download done", "debag done"}


def test_database_unreachable_at_start(world, settings):
    broken = settings.model_copy(update={"progress_db_url": None})
    broken = load_settings(
        **{
            **broken.model_dump(exclude={"progress_db_url"}),
            "progress_db_url": "postgresql+psycopg2://u:pw@127.0.0.1:1/x",
        }
    )
    with pytest.raises(ProgressDatabaseError, match="unreachable"):
        Pipeline(broken)
    assert world.queue_count() >= 1, "no message consumed without a database"


def test_down_folder_scan(dirs, settings):
    incoming = dirs["data"] / "incoming" / "Archive4" / "00" / "W1DROP"
    incoming.mkdir(parents=True)
    zip_path = make_bag_zip(incoming, "W1DROP")
    (incoming / "W1DROP-bagdir").rename(dirs["bags"] / "W1DROP-bagdir")
    pipeline = Pipeline(settings)
    ids = pipeline.scan_incoming()
    assert len(ids) == 1
    outcome = pipeline.process(ids[0])
    assert outcome.ok, outcome.error
    assert (dirs["archive"] / "Archive4" / "00" / "W1DROP" / "images").is_dir()
    assert not zip_path.exists(), "a synced drop leaves the incoming folder"
    assert pipeline.scan_incoming() == []


def test_downloads_under_a_relative_data_root_are_not_taken_for_drops(
    world, dirs, settings, monkeypatch
):
    monkeypatch.chdir(dirs["data"].parent)
    relative = settings.model_copy(update={"data_root": Path("data"), "keep_zip_after_sync": True})
    _restored(world, dirs)
    pipeline = Pipeline(relative)
    _, outcomes = pipeline.run_once()
    assert outcomes[0].ok and (dirs["data"] / "incoming" / KEY).is_file()
    assert pipeline.scan_incoming() == [], "the downloaded zip is not a hand-dropped bag"
    assert len(pipeline.store.find()) == 1


def test_a_group_folder_that_vanishes_during_the_sync_is_transient(world, dirs, settings, tmp_path):
    """Another work's failed sync may remove an empty group folder this sync is about to use."""
    _restored(world, dirs)
    script = tmp_path / "vanishing.sh"
    script.write_text(
        'while getopts "Aa:s:" o; do case $o in a) p=$OPTARG;; esac; done\n'
        'rmdir "$p"; echo "$p does not exist" >&2; exit 2\n'
    )
    pipeline = Pipeline(settings.model_copy(update={"sync_command": script}))
    _, outcomes = pipeline.run_once()
    assert outcomes[0].transient and "vanished during the sync" in outcomes[0].error
    row = pipeline.store.find(["W1NLM4700"])[0]
    assert (row.state, row.attempts) == ("failed", 0), "no attempt spent"
    _, outcomes = Pipeline(settings).run_once()
    assert outcomes[0].ok


@pytest.mark.parametrize("move", [True, False], ids=["rename", "copy"])
def test_the_marker_vouches_for_the_folder_the_debag_placed_only(dirs, settings, move):
    """A work folder replaced by a copy (or recreated) is not trusted: it is debagged again; the
    one the debag placed is renamed into the archive (or copied, with sync_move_work off)."""
    zip_path = make_bag_zip(dirs["bags"], "W1MARK")
    pipeline = Pipeline(settings.model_copy(update={"sync_move_work": move}))
    pid = pipeline.register_bag(zip_path)
    assert pipeline.claim("local", ids=[pid]) == [pid]
    pipeline.debag(pid)
    work_root, work = settings.work_dir, settings.work_dir / "W1MARK"
    marker = read_marker(work_root, "W1MARK")
    assert (marker.folder_dev, marker.folder_ino) == (work.stat().st_dev, work.stat().st_ino)
    assert verified_work_folder(work_root, "W1MARK", pid, zip_path)
    elsewhere = dataclasses.replace(marker, folder_dev=marker.folder_dev + 1)
    write_marker(work_root, "W1MARK", elsewhere)
    assert not verified_work_folder(work_root, "W1MARK", pid, zip_path), "this host: dev counts"
    write_marker(work_root, "W1MARK", dataclasses.replace(elsewhere, folder_host="other-host"))
    assert verified_work_folder(work_root, "W1MARK", pid, zip_path), "another host: inode only"
    write_marker(work_root, "W1MARK", marker)
    shutil.copytree(work, work_root / "W1MARK.copy")
    shutil.rmtree(work)
    (work_root / "W1MARK.copy").rename(work)
    assert not verified_work_folder(work_root, "W1MARK", pid, zip_path), "same bytes, other folder"
    placed = {}
    original = pipeline._debagged

    def spy(row):
        result = original(row)
        placed["identity"] = (work.stat().st_dev, work.stat().st_ino)
        placed["redone"] = result.debagged_at is not None
        return result

    pipeline._debagged = spy
    pipeline.sync(pid)
    row = pipeline.store.get(pid)
    assert row.state == "synced" and placed["redone"], "debagged again before the sync"
    archived = dirs["archive"] / "W1MARK"
    assert ((archived.stat().st_dev, archived.stat().st_ino) == placed["identity"]) is move
    sync = next(h for h in row.history if h["event"] == "sync done")
    assert sync["moved"] is move
    for rel, content in DEFAULT_FILES.items():
        assert (archived / rel).read_bytes() == content
    assert not work.exists() and zip_path.is_file()


def test_the_debag_records_its_fixity_evidence(world, dirs, settings):
    """What the debag proved is kept with the work: algorithms, files, bytes, Payload-Oxum,
    the SHA-256 of each manifest file as it was in the zip, and when."""
    import hashlib
    import zipfile

    zip_path = _restored(world, dirs)
    pipeline = Pipeline(settings)
    _, [outcome] = pipeline.run_once()
    assert outcome.ok
    fixity = pipeline.store.get(outcome.progress_id).fixity
    payload = sum(len(v) for v in DEFAULT_FILES.values())
    assert (fixity["files"], fixity["bytes"]) == (len(DEFAULT_FILES), payload)
    assert fixity["algorithms"] == ["sha512"]
    assert fixity["payload_oxum"] == f"{payload}.{len(DEFAULT_FILES)}"
    with zipfile.ZipFile(zip_path) as zf:
        manifests = {
            n.rsplit("/", 1)[-1]: hashlib.sha256(zf.read(n)).hexdigest()
            for n in zf.namelist()
            if "manifest-" in n
        }
    assert fixity["manifest_sha256"] == manifests and "manifest-sha512.txt" in manifests
    assert fixity["validated_at"].endswith("Z")


def test_a_phase_longer_than_two_leases_keeps_its_claim_and_another_run_leaves_it_alone(
    world, dirs, settings, monkeypatch
):
    """Run A's download takes longer than two leases (3 s each here); its heartbeat renews the
    claim, so run B, started while A's first lease would have run out, claims nothing of the
    work; A then archives it with no take-over in its history and no attempt spent."""
    import threading
    import time

    from glacier_sync.transfer import object_download

    _restored(world, dirs)
    quick = load_settings(
        **{**settings.model_dump(exclude_unset=True), "claim_lease_minutes": 0.05}
    )
    lease = 0.05 * 60
    real_download = object_download.download_object
    in_download = threading.Event()

    def slow_download(*args, **kwargs):
        in_download.set()
        time.sleep(2.5 * lease)
        return real_download(*args, **kwargs)

    monkeypatch.setattr(object_download, "download_object", slow_download)
    run_a = Pipeline(quick, run_id="airflow:run-a")
    finished: dict = {}
    thread = threading.Thread(target=lambda: finished.update(a=run_a.run_once()))
    thread.start()
    assert in_download.wait(30), "run A never reached its download"
    time.sleep(1.5 * lease)  # A's first lease has run out by now, unless it was renewed
    report_b, outcomes_b = Pipeline(quick, run_id="airflow:run-b").run_once()
    row = run_a.store.find(["W1NLM4700"])[0]
    assert outcomes_b == [] and row.claimed_by == "airflow:run-a", (outcomes_b, row.summary())
    thread.join(60)
    _, outcomes_a = finished["a"]
    assert [o.ok for o in outcomes_a] == [True], [o.__dict__ for o in outcomes_a]
    row = run_a.store.find(["W1NLM4700"])[0]
    assert (row.state, row.attempts) == ("synced", 0), row.summary()
    assert not [h for h in row.history if h["event"] == "claim taken over"], row.history


def test_a_transient_failure_other_than_a_room_shortfall_ends_the_run(
    world, dirs, settings, monkeypatch
):
    """A fault of S3 or the network would meet the next works too: the run stops at the first
    work it hits, the next stays unclaimed for the next run (no attempt spent)."""
    from glacier_sync.errors import TransferFault
    from glacier_sync.transfer import object_download

    _restored(world, dirs, "W1FIRST", "Archive0/00/W1FIRST/W1FIRST.bag.zip")
    _restored(world, dirs, "W1SECOND", "Archive0/00/W1SECOND/W1SECOND.bag.zip")

    def link_down(*args, **kwargs):
        raise TransferFault("the link to S3 is down (a test's fault)")

    monkeypatch.setattr(object_download, "download_object", link_down)
    pipeline = Pipeline(settings)
    report, outcomes = pipeline.run_once()
    assert report.recorded == 2
    assert [(o.ok, o.transient, o.short_of_room) for o in outcomes] == [(False, True, False)]
    rows = {r.work_id: r for r in pipeline.store.find(["W1FIRST", "W1SECOND"])}
    first = outcomes[0].work_id
    second = ({"W1FIRST", "W1SECOND"} - {first}).pop()
    assert (rows[first].state, rows[first].attempts) == ("failed", 0), rows[first].summary()
    assert rows[second].state == "restored" and rows[second].claimed_by is None
    monkeypatch.undo()
    report, outcomes = pipeline.run_once()
    assert sorted((o.work_id, o.ok) for o in outcomes) == [("W1FIRST", True), ("W1SECOND", True)]
