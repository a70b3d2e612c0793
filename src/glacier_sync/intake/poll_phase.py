"""The poll: messages received from every restore queue, their S3 event records recorded as
works (duplicates merged), and a message deleted only once all its records are recorded;
anything unusable is left for the queue's redrive policy."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from glacier_sync import faults
from glacier_sync.errors import MalformedMessage
from glacier_sync.intake.events import parse_message_body
from glacier_sync.intake.sqs import SqsMessage, delete_message, receive_messages
from glacier_sync.phase_base import PhaseRunner
from glacier_sync.records.models import utcnow
from glacier_sync.records.progress import expires_soon, expiry_note
from glacier_sync.records.progress_intake import Recorded
from glacier_sync.settings import QueueSource

log = logging.getLogger(__name__)


@dataclass
class PollReport:
    """What one poll of the queues found."""

    received: int = 0
    recorded: int = 0
    duplicates: int = 0
    skipped: list[str] = field(default_factory=list)
    malformed: list[str] = field(default_factory=list)
    deleted: int = 0


class QueuePolling(PhaseRunner):
    """Takes restore events from the queues into the progress database."""

    def poll_queues(self) -> PollReport:
        """Receive messages from every queue, record their records, delete what is recorded."""
        report = PollReport()
        budget = self.settings.max_messages_per_run
        for queue in self.settings.queues:
            if budget <= 0:
                break
            sqs = self.clients.client("sqs", queue)
            messages = receive_messages(
                sqs,
                queue,
                budget,
                self.settings.sqs_wait_seconds,
                self.settings.sqs_visibility_timeout,
            )
            budget -= len(messages)
            report.received += len(messages)
            for message in messages:
                self._handle_message(sqs, queue, message, report)
            self._gauge_queue(sqs, queue)
        self.metrics.incr("poll.messages", report.received)
        self.metrics.incr("poll.new_works", report.recorded)
        self.metrics.incr("poll.duplicates", report.duplicates)
        return report

    def _gauge_queue(self, sqs: Any, queue: QueueSource) -> None:
        """The messages still waiting in the queue (one GetQueueAttributes, metrics on only)."""
        if not self.metrics.enabled:
            return
        try:
            attributes = sqs.get_queue_attributes(
                QueueUrl=queue.queue_url, AttributeNames=["ApproximateNumberOfMessages"]
            )["Attributes"]
            self.metrics.gauge(
                f"queue.{queue.name}.visible", int(attributes["ApproximateNumberOfMessages"])
            )
        except Exception as exc:  # a metric never fails the poll
            log.debug("metrics: queue depth of %s not read: %s", queue.name, exc)

    def _handle_message(
        self, sqs: Any, queue: QueueSource, message: SqsMessage, report: PollReport
    ) -> None:
        try:
            parsed = parse_message_body(message.body, self.settings.event_names)
        except MalformedMessage as exc:
            note = (
                f"queue {queue.name}: message {message.message_id} (received "
                f"{message.receive_count} times) is not a usable S3 event: {exc}; left in the "
                "queue for its redrive policy (dead-letter queue)"
            )
            log.error(note)
            report.malformed.append(note)
            return
        for reason in parsed.skipped:
            log.info("queue %s: message %s: %s", queue.name, message.message_id, reason)
        report.skipped.extend(parsed.skipped)
        for record in parsed.records:
            progress_id, outcome = self.store.record_event(record, queue.name, message.message_id)
            faults.checkpoint("poll:recorded")
            log.info("work %s (row %s): %s restore event", record.work_id, progress_id, outcome)
            if outcome == Recorded.DUPLICATE:
                report.duplicates += 1
            else:
                report.recorded += 1
        if parsed.invalid:
            note = (
                f"queue {queue.name}: message {message.message_id} (received "
                f"{message.receive_count} times) holds unusable records: "
                f"{'; '.join(parsed.invalid)}; its usable records are recorded, the message is "
                "left in the queue for its redrive policy (dead-letter queue)"
            )
            log.error(note)
            report.malformed.append(note)
            return
        if delete_message(sqs, message):
            report.deleted += 1

    def _warn_expiring(self, ids: list[int]) -> None:
        """Log (the poll task's log in the UI) each claimed work whose restored copy expires
        within ``expiry_warning_hours``."""
        margin = timedelta(hours=self.settings.expiry_warning_hours)
        now = utcnow()
        for progress_id in ids:
            row = self.store.get(progress_id)
            if expires_soon(row, now, margin):
                log.warning("work %s (row %s): %s", row.work_id, progress_id, expiry_note(row))
