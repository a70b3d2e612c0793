"""S3 event records: parsing, filtering, decoding, identity."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from glacier_sync.errors import MalformedMessage
from glacier_sync.intake.events import event_name_matches, parse_message_body, work_id_from_key

pytestmark = pytest.mark.unit

SAMPLE = (Path(__file__).parent / "data" / "objectrestore-completed.json").read_text()
COMPLETED = ["ObjectRestore:Completed"]


def _raw(name="ObjectRestore:Completed", key="Archive0/00/W1/W1.bag.zip", **obj) -> dict:
    record = json.loads(SAMPLE)["Records"][0]
    record["eventName"] = name
    record["s3"]["object"]["key"] = key
    record["s3"]["object"].update(obj)
    return record


def _body(name="ObjectRestore:Completed", key="Archive0/00/W1/W1.bag.zip", **obj) -> str:
    return json.dumps({"Records": [_raw(name, key, **obj)]})


def _sns(message: str) -> str:
    """The SNS envelope SQS receives when S3 notifies an SNS topic the queue subscribes to."""
    return json.dumps(
        {
            "Type": "Notification",
            "MessageId": "5b4c8d1e-0000-4000-8000-000000000001",
            "TopicArn": "arn:aws:sns:ap-northeast-2:123456789012:glacier-restores",
            "Subject": "Amazon S3 Notification",
            "Message": message,
            "Timestamp": "2026-10-02T04:31:08.000Z",
            "SignatureVersion": "1",
            "Signature": "RVhBTVBMRQ==",
        }
    )


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
        _sns("not json"),
        _sns("[1]"),
        _sns(json.dumps({"Records": "x"})),
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
    parsed = parse_message_body(_body(key="Archive0/00/%2E.zip"), COMPLETED)
    assert parsed.records == [] and parsed.skipped == []
    (reason,) = parsed.invalid
    assert reason.startswith("record 0: cannot derive a work id from key 'Archive0/00/..zip'")


def test_sns_wrapped_restore_event_is_unwrapped():
    parsed = parse_message_body(_sns(SAMPLE), COMPLETED)
    assert [r.work_id for r in parsed.records] == ["W2KG209837"]
    assert parsed.records[0].bucket == "glacier.staging.example.org"
    assert parsed.skipped == [] and parsed.invalid == []


def test_sns_wrapped_test_event_is_skipped():
    test_event = json.dumps({"Service": "Amazon S3", "Event": "s3:TestEvent", "Bucket": "b"})
    parsed = parse_message_body(_sns(test_event), COMPLETED)
    assert (parsed.records, parsed.skipped, parsed.invalid) == ([], ["skipped s3:TestEvent"], [])


def test_other_sns_messages_are_skipped_by_type():
    confirmation = json.dumps({"Type": "SubscriptionConfirmation", "Message": "You have chosen"})
    parsed = parse_message_body(confirmation, COMPLETED)
    assert parsed.records == [] and parsed.skipped == ["skipped SubscriptionConfirmation"]


def test_valid_records_are_kept_beside_invalid_ones():
    unusable = [
        {"eventName": "ObjectRestore:Completed"},
        "not an object",
        _raw(key="Archive0/00/%2E.zip"),
        _raw(key="W3.bag.zip", size="large"),
    ]
    body = json.dumps({"Records": [_raw(key="W1.bag.zip"), *unusable, _raw(key="W2.zip")]})
    parsed = parse_message_body(body, COMPLETED)
    assert [r.work_id for r in parsed.records] == ["W1", "W2"]
    assert parsed.skipped == []
    assert len(parsed.invalid) == 4
    assert parsed.invalid[0] == "record 1 lacks field 's3'"
    assert parsed.invalid[1] == "record 2 is not a JSON object"
    assert "record 3: cannot derive a work id" in parsed.invalid[2]
    assert parsed.invalid[3].startswith("record 4 has a field of the wrong type")


@pytest.mark.parametrize("key", ["Archive0/00/W1/", "Archive0/00/W1/W1.tar", "Archive0/%2E/.odd"])
def test_keys_that_are_not_zips_are_skipped_before_the_work_id_check(key):
    parsed = parse_message_body(_body(key=key), COMPLETED)
    assert parsed.records == [] and parsed.invalid == []
    (reason,) = parsed.skipped
    assert "not a bag zip" in reason and key.replace("%2E", ".") in reason
