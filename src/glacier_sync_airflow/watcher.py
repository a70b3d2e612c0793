"""Event-driven runs: a trigger that watches the restore queues without taking a message.

Airflow's own SQS trigger (the Amazon provider's ``SqsSensorTrigger``) deletes the messages it
receives in the triggerer, before the event is stored: a run that fails cannot get them back.
This one only looks: it asks SQS how many messages are visible (``GetQueueAttributes``, which
neither receives nor hides a message, nor counts as a receive for the dead-letter redrive) and
fires an event when some are waiting. The run it starts polls the queue like any run:
receive, record every work in the progress database, and only then delete.

It fires when the queues go from empty to holding messages, and again every
``event_refire_seconds`` while messages stay visible. Messages a run has received are invisible
(in flight) until it deletes them, so what stays visible is what no run took yet: the rest of a
burst beyond ``max_messages_per_run``, events that came during a run, or the messages of a run
that died. Runs are bounded by the DAG's ``max_active_runs`` (``event_max_active_runs``) and
each run's ``max_messages_per_run``, so a burst of events starts a few runs, not hundreds.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

from airflow.triggers.base import BaseEventTrigger, TriggerEvent

from glacier_sync.settings import Settings

ASSET_URI = "glacier-sync://restore-queues"


def waiting_messages(clients: Any, settings: Settings) -> dict[str, int]:
    """Visible messages per queue (approximate, as SQS counts them); nothing is received."""
    counts = {}
    for queue in settings.queues:
        sqs = clients.client("sqs", queue)
        attributes = sqs.get_queue_attributes(
            QueueUrl=queue.queue_url, AttributeNames=["ApproximateNumberOfMessages"]
        )["Attributes"]
        counts[queue.name] = int(attributes.get("ApproximateNumberOfMessages", 0))
    return counts


class RestoreQueueWatcher(BaseEventTrigger):
    """Fires while the pipeline's restore queues hold visible messages (never receives one)."""

    def __init__(self, poll_seconds: float = 5.0, refire_seconds: float = 10.0) -> None:
        super().__init__()
        self.poll_seconds = poll_seconds
        self.refire_seconds = refire_seconds

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return (
            f"{self.__class__.__module__}.{self.__class__.__qualname__}",
            {"poll_seconds": self.poll_seconds, "refire_seconds": self.refire_seconds},
        )

    def _clients_and_settings(self) -> tuple[Any, Settings]:
        from glacier_sync.settings import load_settings
        from glacier_sync_airflow.clients import HookClients

        settings = load_settings()
        return HookClients(settings), settings

    async def run(self) -> AsyncIterator[TriggerEvent]:
        clients, settings = await asyncio.to_thread(self._clients_and_settings)
        last_fired: float | None = None
        was_empty = True
        failures = 0
        while True:
            try:
                counts = await asyncio.to_thread(waiting_messages, clients, settings)
                failures = 0
            except Exception as exc:  # the queue is unreachable: keep watching, say so
                failures += 1
                self.log.warning("restore queues unreachable (try %s): %s", failures, exc)
                await asyncio.sleep(min(self.poll_seconds * 2**failures, 300))
                continue
            waiting = sum(counts.values())
            now = time.monotonic()
            due = last_fired is None or now - last_fired >= self.refire_seconds
            if waiting and (was_empty or due):
                self.log.info("restore events waiting: %s", counts)
                yield TriggerEvent(
                    {"waiting": counts, "seen_at": datetime.now(UTC).isoformat(timespec="seconds")}
                )
                last_fired = now
            was_empty = waiting == 0
            await asyncio.sleep(self.poll_seconds)
