"""The restore-queue watcher's contract, against the moto server, outside the triggerer.

``RestoreQueueWatcher`` (the trigger of the event-driven DAG's asset) only counts the visible
messages: it never receives, hides or deletes one. It fires when the queues go from empty to
holding messages and again every ``refire_seconds`` while messages stay visible, is quiet while
they are empty, keeps watching (backing off) while the queue cannot be reached, and a watcher
re-created from its serialized form (a triggerer restarted after a kill) fires at once for the
messages still waiting."""

from __future__ import annotations

import asyncio
import json
import time
from typing import TYPE_CHECKING

import pytest
from demo_world import settings_env

if TYPE_CHECKING:
    from glacier_sync_airflow.watcher import RestoreQueueWatcher

pytestmark = pytest.mark.airflow

POLL, REFIRE = 0.2, 1.0
QUEUE = "demo"  # the world's queue entry


def _watcher():
    """The watcher's module, imported when a test runs: it imports Airflow, which the fast
    tiers' collection of this file (in every worker) need not pay for."""
    from glacier_sync_airflow import watcher

    return watcher


@pytest.fixture
def watched(world, tmp_path, monkeypatch):
    """The world's queue named in the environment the watcher loads its settings from."""
    for name, value in settings_env(world, tmp_path / "data", tmp_path / "archive").items():
        monkeypatch.setenv(name, value)
    sqs = world.client("sqs")
    for message in _receive_all(world):  # the bucket notification's s3:TestEvent
        sqs.delete_message(QueueUrl=world.queue_url, ReceiptHandle=message["ReceiptHandle"])
    assert _counts(world) == (0, 0)
    return world


class _Events:
    """A watcher running in the background, its events gathered with the time they came."""

    def __init__(self, trigger: RestoreQueueWatcher) -> None:
        self.trigger, self.seen = trigger, []
        self.task = asyncio.ensure_future(self._gather())

    async def _gather(self) -> None:
        async for event in self.trigger.run():
            self.seen.append((time.monotonic(), event.payload))

    async def first_after(self, since: float, within: float) -> dict:
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            later = [payload for at, payload in self.seen if at >= since]
            if later:
                return later[0]
            await asyncio.sleep(0.02)
        raise AssertionError(f"no event within {within} s")

    def since(self, moment: float) -> int:
        return sum(1 for at, _ in self.seen if at >= moment)

    async def stop(self) -> None:
        self.task.cancel()
        await asyncio.gather(self.task, return_exceptions=True)


def _send(world, count: int) -> None:
    sqs = world.client("sqs")
    for index in range(count):
        sqs.send_message(QueueUrl=world.queue_url, MessageBody=json.dumps({"n": index}))


def _counts(world) -> tuple[int, int]:
    attributes = world.client("sqs").get_queue_attributes(
        QueueUrl=world.queue_url,
        AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"],
    )["Attributes"]
    return (
        int(attributes["ApproximateNumberOfMessages"]),
        int(attributes["ApproximateNumberOfMessagesNotVisible"]),
    )


def _receive_all(world) -> list[dict]:
    sqs, messages = world.client("sqs"), []
    while batch := sqs.receive_message(
        QueueUrl=world.queue_url,
        MaxNumberOfMessages=10,
        AttributeNames=["ApproximateReceiveCount"],
        WaitTimeSeconds=0,
    ).get("Messages", []):
        messages += batch
    return messages


def test_it_fires_refires_and_falls_quiet_without_taking_a_message(watched):
    async def scenario() -> None:
        events = _Events(_watcher().RestoreQueueWatcher(poll_seconds=POLL, refire_seconds=REFIRE))
        try:
            await asyncio.sleep(4 * POLL)
            assert events.seen == [], "an empty queue: no event"

            sent = time.monotonic()
            await asyncio.to_thread(_send, watched, 3)
            first = await events.first_after(sent, within=2 * POLL + 1)
            # A count read between two of the sends fires too: what it saw, never more.
            assert first["waiting"] in ({QUEUE: 1}, {QUEUE: 2}, {QUEUE: 3}), first
            await asyncio.sleep(2.5 * REFIRE)
            refires = events.since(sent) - 1
            assert 2 <= refires <= 3, f"{refires} re-fires in 2.5 periods of {REFIRE} s"
            assert events.seen[-1][1]["waiting"] == {QUEUE: 3}, "a re-fire counts them all"
            assert await asyncio.to_thread(_counts, watched) == (3, 0), "none taken, none hidden"

            messages = await asyncio.to_thread(_receive_all, watched)
            assert sorted(m["Attributes"]["ApproximateReceiveCount"] for m in messages) == [
                "1",
                "1",
                "1",
            ], "this receive is each message's first: the watcher never received one"
            sqs = watched.client("sqs")
            for message in messages:
                sqs.delete_message(
                    QueueUrl=watched.queue_url, ReceiptHandle=message["ReceiptHandle"]
                )
            emptied = time.monotonic() + 2 * POLL  # a count read just before the delete may fire
            await asyncio.sleep(2 * REFIRE)
            assert events.since(emptied) == 0, "an emptied queue: quiet"

            again = time.monotonic()
            await asyncio.to_thread(_send, watched, 1)
            event = await events.first_after(again, within=2 * POLL + 1)
            assert event["waiting"] == {QUEUE: 1}, "empty to waiting fires at once"
        finally:
            await events.stop()

    asyncio.run(scenario())


def test_an_unreachable_queue_is_watched_again_with_backoff(watched, monkeypatch, capfd):
    real, calls = _watcher().waiting_messages, []

    def flaky(clients, settings):
        calls.append(time.monotonic())
        if len(calls) <= 2:
            raise ConnectionError("Could not connect to the endpoint URL")
        return real(clients, settings)

    monkeypatch.setattr(_watcher(), "waiting_messages", flaky)
    _send(watched, 2)

    async def scenario() -> dict:
        events = _Events(_watcher().RestoreQueueWatcher(poll_seconds=POLL, refire_seconds=REFIRE))
        try:
            return await events.first_after(0, within=10 * POLL + 2)
        finally:
            await events.stop()

    event = asyncio.run(scenario())
    assert event["waiting"] == {QUEUE: 2}
    assert calls[1] - calls[0] >= 2 * POLL and calls[2] - calls[1] >= 4 * POLL, "backed off"
    said = capfd.readouterr()
    assert "restore queues unreachable" in said.out + said.err, "the triggerer's log says so"
    assert _counts(watched) == (2, 0)


def test_a_watcher_recreated_after_a_restart_fires_for_what_still_waits(watched):
    """The triggerer re-creates the trigger from ``serialize()`` after a kill: the new watcher
    knows nothing of what the old one fired, and fires at once for the messages waiting."""
    _send(watched, 1)
    path, kwargs = _watcher().RestoreQueueWatcher(poll_seconds=POLL, refire_seconds=600).serialize()
    assert path == "glacier_sync_airflow.watcher.RestoreQueueWatcher"

    async def first_event(trigger: RestoreQueueWatcher) -> dict:
        events = _Events(trigger)
        try:
            return await events.first_after(0, within=2 * POLL + 1)
        finally:
            await events.stop()

    recreated = _watcher().RestoreQueueWatcher(**kwargs)
    assert asyncio.run(first_event(recreated))["waiting"] == {QUEUE: 1}
    restarted = _watcher().RestoreQueueWatcher(**kwargs)
    assert asyncio.run(first_event(restarted))["waiting"] == {QUEUE: 1}, "fired again"
    assert _counts(watched) == (1, 0)
