"""The committer of finished ranges: bytes flushed before their journal lines, in batches."""

from __future__ import annotations

import errno
import os
import threading
import time

import pytest

from glacier_sync import range_commit
from glacier_sync.range_commit import RangeCommitter

pytestmark = pytest.mark.unit


class _Journal:
    def __init__(self, events: list[str]) -> None:
        self.events = events

    def record_many(self, ranges: list[tuple[int, str]]) -> None:
        self.events.extend(f"line {index}" for index, _ in ranges)


@pytest.fixture
def fd(tmp_path):
    fd = os.open(tmp_path / "object.part", os.O_RDWR | os.O_CREAT, 0o644)
    yield fd
    os.close(fd)


def test_each_range_is_flushed_before_its_journal_line_and_flushes_are_batched(fd, monkeypatch):
    events: list[str] = []
    real_sync = os.fdatasync

    def slow_sync(handle: int) -> None:  # a disk that takes its time: ranges pile up meanwhile
        events.append("sync")
        time.sleep(0.03)
        real_sync(handle)

    monkeypatch.setattr(range_commit.os, "fdatasync", slow_sync)
    durable: list[int] = []
    committer = RangeCommitter(
        fd, _Journal(events), lambda i, _: durable.append(i), threading.Event()
    )
    for index in range(30):
        events.append(f"add {index}")
        committer.add(index, "digest")
        time.sleep(0.002)
    committer.close()
    assert sorted(durable) == list(range(30))
    assert events.count("sync") < 15, "one flush for several ranges"
    for index in range(30):
        added, line = events.index(f"add {index}"), events.index(f"line {index}")
        assert "sync" in events[added:line], (
            f"range {index}: journaled before its bytes were flushed"
        )


def test_a_disk_error_stops_the_fetching_and_is_raised(fd, monkeypatch):
    def failing_sync(handle: int) -> None:
        raise OSError(errno.EIO, "I/O error")

    monkeypatch.setattr(range_commit.os, "fdatasync", failing_sync)
    stop, durable = threading.Event(), []
    committer = RangeCommitter(fd, _Journal([]), lambda i, _: durable.append(i), stop)
    committer.add(0, "digest")
    assert stop.wait(5), "the fetching threads are told to stop"
    with pytest.raises(OSError, match="I/O error"):
        committer.close()
    assert durable == [], "nothing counts as verified that is not on disk"
