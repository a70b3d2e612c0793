"""S3 event records: parsing, filtering, decoding, identity."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from glacier_sync.errors import MalformedMessage
from glacier_sync.events import event_name_matches, parse_message_body, work_id_from_key

SAMPLE = (Path(__file__).parent / "data" / "objectrestore-completed.json").read_text()
COMPLETED = ["ObjectRestore:Completed"]


def _body(name="ObjectRestore:Completed", key="Archive0/00/W1/W1.bag.zip", **obj) -> str:
    record = json.loads(SAMPLE)["Records"][0]
    record["eventName"] = name
    record["s3"]["object"]["key"] = key
    record["s3"]["object"].update(obj)
    return json.dumps({"Records": [record]})


def test_sample_completed_record():
    parsed = parse_message_body(SAMPLE, COMPLETED)
    (record,) = parsed.records
    assert record.bucket == "glacier.staging.example.org"
    assert record.key == "Archive1/37/W2KG209837/W2KG209837.bag.zip"
    assert record.work_id == "W2KG209837"
    assert record.etag == "9b2cf535f27731c974343645a3985328-88"
    assert record.size == 734003200
    assert record.region == "ap-northeast-2"
    assert record.storage_class == "DEEP_ARCHIVE"
    assert record.expiry_time == "2026-10-16T00:00:00.000Z"
    assert record.sequencer == "0068DE0C2B6F1A2B3C"


def test_test_event_is_skipped_not_an_error():
    body = json.dumps({"Service": "Amazon S3", "Event": "s3:TestEvent", "Bucket": "b"})
    parsed = parse_message_body(body, COMPLETED)
    assert parsed.records == []
    assert parsed.skipped == ["skipped s3:TestEvent"]


@pytest.mark.parametrize(
    "body",
    [
        "{not json",
        "[1, 2]",
        '{"Records": "x"}',
        '{"Records": [{"eventName": "ObjectRestore:Completed"}]}',
    ],
)
def test_malformed_bodies_raise(body):
    with pytest.raises(MalformedMessage):
        parse_message_body(body, COMPLETED)


def test_unknown_event_name_is_skipped_with_reason():
    parsed = parse_message_body(_body("ObjectRestore:Post"), COMPLETED)
    assert parsed.records == []
    assert "ObjectRestore:Post" in parsed.skipped[0]


def test_wildcard_patterns():
    assert event_name_matches("ObjectRestore:Post", ["ObjectRestore:*"])
    assert event_name_matches("ObjectCreated:Put", ["ObjectRestore:Completed", "ObjectCreated:*"])
    assert not event_name_matches("ObjectRestore:Delete", ["ObjectRestore:Completed"])
    parsed = parse_message_body(_body("ObjectRestore:Delete"), ["ObjectRestore:*"])
    assert len(parsed.records) == 1


def test_key_with_spaces_and_encoded_slashes_is_decoded():
    parsed = parse_message_body(_body(key="Archive0%2F00%2FW1+x%2FW1.bag.zip"), COMPLETED)
    assert parsed.records[0].key == "Archive0/00/W1 x/W1.bag.zip"
    assert parsed.records[0].work_id == "W1"


def test_same_object_same_identity_other_version_other_identity():
    one = parse_message_body(_body(), COMPLETED).records[0]
    two = parse_message_body(_body(), COMPLETED).records[0]
    other = parse_message_body(_body(eTag="ffff"), COMPLETED).records[0]
    versioned = parse_message_body(_body(versionId="v2"), COMPLETED).records[0]
    assert one.dedup_key == two.dedup_key
    assert len({one.dedup_key, other.dedup_key, versioned.dedup_key}) == 3


@pytest.mark.parametrize(
    ("key", "work"),
    [
        ("Archive0/00/W1NLM4700/W1NLM4700.bag.zip", "W1NLM4700"),
        ("W22084.zip", "W22084"),
        ("a/b/W1_x-2.tar.gz", "W1_x-2"),
    ],
)
def test_work_id_from_key(key, work):
    assert work_id_from_key(key) == work


def test_unusable_key_is_an_error_naming_it():
    with pytest.raises(ValueError, match="cannot derive a work id"):
        work_id_from_key("Archive0/00/.bag.zip")
    with pytest.raises(MalformedMessage, match="cannot derive a work id"):
        parse_message_body(_body(key="Archive0/00/%2E.zip"), COMPLETED)
