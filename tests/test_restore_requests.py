"""Restore requests against a real moto server: per-work results, versioned and unversioned
buckets, one row per work from request to archive."""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from helpers import make_bag_zip

from glacier_sync.intake.restore_requests import (
    AVAILABLE,
    IN_PROGRESS,
    NO_SUCH_KEY,
    NOT_IN_GLACIER,
    REQUESTED,
    UNKNOWN_WORK,
    RestoreRequester,
    parse_items,
    summary,
)
from glacier_sync.records.progress import ProgressStore
from glacier_sync.runner import Pipeline, open_store

pytestmark = pytest.mark.integration

SAMPLE = Path(__file__).parent / "data" / "objectrestore-completed.json"


def _key(work_id: str) -> str:
    return f"Archive0/{work_id[-2:]}/{work_id}/{work_id}.bag.zip"


@contextmanager
def _slow_restores(world, heads: int) -> Iterator[None]:
    """moto keeps each restore "ongoing" for the next ``heads`` - 1 reads of its status (the
    server's setting, which outlives a reset: put back to immediate after)."""
    _set_restore_transition(world, {"progression": "manual", "times": heads})
    try:
        yield
    finally:
        _set_restore_transition(world, {"progression": "immediate"})


def _set_restore_transition(world, transition: dict) -> None:
    body = {"model_name": "s3::keyrestore", "transition": transition}
    request = urllib.request.Request(
        world.endpoint + "/moto-api/state-manager/set-transition",
        data=json.dumps(body).encode(),
        method="POST",
    )
    urllib.request.urlopen(request, timeout=10).read()  # noqa: S310


def _requester(settings) -> RestoreRequester:
    return RestoreRequester(settings, open_store(settings))


def test_items_are_one_per_line_with_comments_and_duplicates_dropped():
    text = "W1A\n\n  W1B  # the second\nArchive0/00/W1C/W1C.bag.zip, W1A\n# all done\n"
    assert parse_items(text) == ["W1A", "W1B", "Archive0/00/W1C/W1C.bag.zip"]


@pytest.mark.parametrize("versioned", [False, True], ids=["unversioned", "versioned"])
def test_one_row_per_work_from_request_to_archive(world, dirs, settings, versioned):
    s3 = world.client("s3")
    if versioned:  # the archive's buckets are versioned
        s3.put_bucket_versioning(Bucket=world.bucket, VersioningConfiguration={"Status": "Enabled"})
    world.upload_archived(make_bag_zip(dirs["bags"], "W1VER01"), _key("W1VER01"))
    [result] = _requester(settings).request_all([_key("W1VER01")], "Bulk", 3)
    assert (result.outcome, result.work_id) == (REQUESTED, "W1VER01"), result
    store = ProgressStore(settings.database_url())
    [row] = store.find(["W1VER01"])
    assert row.state == "requested" and row.id == result.row_id
    assert (row.version_id is not None) == versioned

    s3.head_object(Bucket=world.bucket, Key=_key("W1VER01"))  # moto sends the Completed event
    _, outcomes = Pipeline(settings).run_once()
    assert [(o.work_id, o.ok) for o in outcomes] == [("W1VER01", True)]
    [row] = store.find(["W1VER01"])
    assert row.id == result.row_id and row.state == "synced", "the requested row, completed"
    events = [h["event"] for h in row.history]
    assert events[:2] == ["restore requested", "restore completed"]
    assert (dirs["archive"] / "Archive0" / "01" / "W1VER01" / "images").is_dir()


def test_a_real_s3_event_with_version_id_completes_the_requested_row(world, dirs, settings):
    """Real S3 puts the versionId (and the copy's expiry) in the event; moto does not."""
    s3 = world.client("s3")
    s3.put_bucket_versioning(Bucket=world.bucket, VersioningConfiguration={"Status": "Enabled"})
    world.upload_archived(make_bag_zip(dirs["bags"], "W1VER02"), _key("W1VER02"))
    [result] = _requester(settings).request_all(["Archive0/02/W1VER02/W1VER02.bag.zip"], "Bulk", 3)
    head = s3.head_object(Bucket=world.bucket, Key=_key("W1VER02"))
    body = json.loads(SAMPLE.read_text())
    record = body["Records"][0]
    record["s3"]["bucket"]["name"] = world.bucket
    record["s3"]["object"].update(
        key=_key("W1VER02").replace("/", "%2F"),
        eTag=head["ETag"].strip('"'),
        versionId=head["VersionId"],
        size=head["ContentLength"],
    )
    record["glacierEventData"]["restoreEventData"]["lifecycleRestorationExpiryTime"] = (
        "2099-01-01T00:00:00.000Z"
    )
    world.client("sqs").purge_queue(QueueUrl=world.queue_url)
    world.send_body(json.dumps(body))
    pipeline = Pipeline(settings)
    _, outcomes = pipeline.run_once()
    assert [o.ok for o in outcomes] == [True], outcomes
    [row] = pipeline.store.find(["W1VER02"])
    assert row.id == result.row_id and row.version_id == head["VersionId"]
    assert row.restore_expires_at is not None and row.restore_expires_at.year == 2099


def test_each_work_gets_its_own_result(world, dirs, settings):
    s3 = world.client("s3")
    for work in ("W1NEW01", "W1SLOW1", "W1DONE1"):
        world.upload_archived(make_bag_zip(dirs["bags"], work), _key(work))
    s3.put_object(Bucket=world.bucket, Key=_key("W1STD01"), Body=b"not in Glacier")
    with _slow_restores(world, heads=3):
        s3.restore_object(
            Bucket=world.bucket,
            Key=_key("W1SLOW1"),
            RestoreRequest={"Days": 1, "GlacierJobParameters": {"Tier": "Bulk"}},
        )
        world.restore(_key("W1DONE1"))  # restored already (and its own event sent)
        s3.head_object(Bucket=world.bucket, Key=_key("W1DONE1"))
        items = [
            _key("W1NEW01"),
            _key("W1SLOW1"),
            _key("W1DONE1"),
            _key("W1GONE1"),
            _key("W1STD01"),
            "W1NOPE1",
        ]
        results = _requester(settings).request_all(items, "Standard", 5)
        assert [r.outcome for r in results] == [
            REQUESTED,
            IN_PROGRESS,
            AVAILABLE,
            NO_SUCH_KEY,
            NOT_IN_GLACIER,
            UNKNOWN_WORK,
        ], [r.line() for r in results]
        assert "is in STANDARD: nothing to restore" in results[4].detail
        assert " until " in results[2].detail and "the next run processes it" in results[2].detail
        assert summary(results) == (
            "1 requested, 1 already in progress, 1 already available, 1 no such key, "
            "1 not archived in Glacier, 1 unknown work"
        )
    store = ProgressStore(settings.database_url())
    states = {r.work_id: r.state for r in store.find()}
    assert states == {"W1NEW01": "requested", "W1SLOW1": "requested", "W1DONE1": "restored"}
    assert store.find(["W1DONE1"])[0].restore_expires_at is not None

    # A work id the database knows now resolves to its key.
    again = _requester(settings).request("W1NEW01", "Standard", 5)
    assert again.key == _key("W1NEW01") and again.row_id == results[0].row_id


def test_an_archived_work_whose_copy_is_still_available_is_said_to_be_done(world, dirs, settings):
    world.upload_archived(make_bag_zip(dirs["bags"], "W1DONE2"), _key("W1DONE2"))
    world.restore(_key("W1DONE2"))
    _, outcomes = Pipeline(settings).run_once()
    assert [o.ok for o in outcomes] == [True]
    result = _requester(settings).request("W1DONE2", "Bulk", 3)
    assert result.outcome == AVAILABLE and "was archived" in result.detail, result.line()
    assert "nothing to do" in result.detail
    assert [r.state for r in open_store(settings).find(["W1DONE2"])] == ["synced"]
