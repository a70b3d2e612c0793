"""Restore events as SQS delivers them, polled by the pipeline from a real moto server."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from helpers import make_bag_zip

from glacier_sync.runner import Pipeline

pytestmark = pytest.mark.integration

SAMPLE = json.loads((Path(__file__).parent / "data" / "objectrestore-completed.json").read_text())


def _route_through_sns(world) -> None:
    """Make the bucket notify an SNS topic that the world's queue subscribes to (no raw delivery:
    SQS receives SNS envelopes, as with S3 -> SNS -> SQS on AWS)."""
    sns, sqs = world.client("sns"), world.client("sqs")
    topic = sns.create_topic(Name="restores-topic")["TopicArn"]
    queue_arn = sqs.get_queue_attributes(QueueUrl=world.queue_url, AttributeNames=["QueueArn"])[
        "Attributes"
    ]["QueueArn"]
    sns.subscribe(TopicArn=topic, Protocol="sqs", Endpoint=queue_arn)
    world.client("s3").put_bucket_notification_configuration(
        Bucket=world.bucket,
        NotificationConfiguration={
            "TopicConfigurations": [{"TopicArn": topic, "Events": ["s3:ObjectRestore:*"]}]
        },
    )


def _set_max_receive(world, count: int) -> None:
    """Let a message be received ``count`` times before SQS moves it to the dead-letter queue."""
    sqs = world.client("sqs")
    dlq_arn = sqs.get_queue_attributes(QueueUrl=world.dlq_url, AttributeNames=["QueueArn"])[
        "Attributes"
    ]["QueueArn"]
    policy = {"deadLetterTargetArn": dlq_arn, "maxReceiveCount": str(count)}
    sqs.set_queue_attributes(
        QueueUrl=world.queue_url, Attributes={"RedrivePolicy": json.dumps(policy)}
    )


def _record(world, key: str) -> dict:
    record = json.loads(json.dumps(SAMPLE["Records"][0]))
    record["awsRegion"] = world.region
    record["s3"]["bucket"]["name"] = world.bucket
    record["s3"]["object"]["key"] = key
    return record


def test_restore_event_through_sns_is_recorded_and_deleted(world, dirs, settings):
    pipeline = Pipeline(settings)
    pipeline.poll_queues()  # the TestEvent of the world's direct notification
    _route_through_sns(world)
    key = "Archive0/05/W1SNS/W1SNS.bag.zip"
    world.upload_archived(make_bag_zip(dirs["bags"], "W1SNS"), key)
    world.restore(key)
    report = pipeline.poll_queues()
    assert report.recorded == 1 and report.malformed == [], report
    assert "skipped s3:TestEvent" in report.skipped, "the SNS-wrapped TestEvent is skipped"
    assert report.deleted == report.received >= 2
    (row,) = pipeline.store.find(["W1SNS"])
    assert (row.bucket, row.object_key, row.state) == (world.bucket, key, "restored")
    assert world.queue_count() == 0 and world.queue_count(world.dlq_url) == 0


def test_invalid_record_beside_a_valid_one_records_it_and_leaves_the_message(world, settings):
    _set_max_receive(world, 4)  # one poll may receive a message twice (visibility timeout 0)
    valid = _record(world, "Archive0/06/W1MIX/W1MIX.bag.zip")
    world.send_body(json.dumps({"Records": [valid, {"eventName": "ObjectRestore:Completed"}]}))
    pipeline = Pipeline(settings.model_copy(update={"sqs_visibility_timeout": 0}))
    first = pipeline.poll_queues()
    assert first.recorded == 1 and len(first.malformed) == 1
    assert "record 1 lacks field 's3'" in first.malformed[0]
    assert [r.work_id for r in pipeline.store.find(["W1MIX"])] == ["W1MIX"]
    again = pipeline.poll_queues()  # not deleted: it comes back
    assert (again.received, again.duplicates, again.recorded) == (1, 1, 0)
    assert len(again.malformed) == 1 and again.deleted == 0
    for _ in range(5):  # past maxReceiveCount the queue moves it to the dead-letter queue
        if world.queue_count() == 0:
            break
        pipeline.poll_queues()
    assert world.queue_count() == 0 and world.queue_count(world.dlq_url) == 1
    assert len(pipeline.store.find()) == 1


@pytest.mark.parametrize("name", [".listing", "W1ODD.tar"])
def test_restored_object_that_is_not_a_zip_is_skipped_and_deleted(world, dirs, settings, name):
    odd = dirs["bags"] / name
    odd.write_bytes(b"not a bag")
    key = f"Archive0/07/W1ODD/{name}"
    world.upload_archived(odd, key)
    world.restore(key)
    pipeline = Pipeline(settings)
    report = pipeline.poll_queues()
    assert report.recorded == 0 and report.malformed == [], report
    reason = f"skipped s3://{world.bucket}/{key}: not a bag zip (.bag.zip or .zip)"
    assert reason in report.skipped
    assert report.deleted == report.received
    assert world.queue_count() == 0 and world.queue_count(world.dlq_url) == 0
    assert pipeline.store.find() == []
