"""The restore queues: messages received with long polling and their receive counts, and a
message deleted once its records are recorded (a failed delete is said, the message comes back)."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from glacier_sync.settings import QueueSource

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SqsMessage:
    """One received message with the queue it came from."""

    queue: QueueSource
    message_id: str
    receipt_handle: str
    body: str
    receive_count: int


def receive_messages(sqs: Any, queue: QueueSource, limit: int, wait: int, visibility: int):
    """Long-poll ``queue`` until ``limit`` messages are received or the queue is empty."""
    received: list[SqsMessage] = []
    seen: set[str] = set()
    while len(received) < limit:
        response = sqs.receive_message(
            QueueUrl=queue.queue_url,
            MaxNumberOfMessages=min(10, limit - len(received)),
            WaitTimeSeconds=wait if not received else 0,
            VisibilityTimeout=visibility,
            AttributeNames=["ApproximateReceiveCount"],
        )
        batch = [m for m in response.get("Messages", []) if m["MessageId"] not in seen]
        if not batch:
            break
        for msg in batch:
            seen.add(msg["MessageId"])
            count = int(msg.get("Attributes", {}).get("ApproximateReceiveCount", "1"))
            received.append(
                SqsMessage(queue, msg["MessageId"], msg["ReceiptHandle"], msg["Body"], count)
            )
    return received


def delete_message(sqs: Any, message: SqsMessage) -> bool:
    """Delete a message whose records are safely recorded; False when SQS refused.

    A refused delete (expired receipt handle) is harmless: the message comes back and its
    records are recognised as duplicates.
    """
    from botocore.exceptions import ClientError

    try:
        sqs.delete_message(QueueUrl=message.queue.queue_url, ReceiptHandle=message.receipt_handle)
    except ClientError as exc:
        log.warning(
            "queue %s: message %s not deleted (%s); it will come back as a duplicate",
            message.queue.name,
            message.message_id,
            exc,
        )
        return False
    return True
