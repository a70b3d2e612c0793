"""The committer of finished ranges: bytes flushed before their journal lines, in batches."""

from __future__ import annotations

import errno
import os
import threading
import time

import pytest

from glacier_sync.transfer import range_commit
from glacier_sync.transfer.range_commit import RangeCommitter

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


def test_an_interrupted_download_stops_its_ranges_at_once(tmp_path, monkeypatch):
    """SIGTERM or Ctrl-C while the ranges are fetched: the queued ranges are not fetched first,
    and what was finished is journaled all the same."""
    from glacier_sync.transfer import ranged_download
    from glacier_sync.transfer.range_journal import RangePlan, journal_path

    fetched: list[int] = []

    def slow_range(s3, plan, fd, index, stop, progress):
        for _ in range(20):
            if stop.is_set():
                raise ranged_download._Stopped()
            time.sleep(0.01)
        fetched.append(index)
        return "00000000"

    real_wait = ranged_download.wait

    def interrupted(futures, return_when):
        real_wait(futures, timeout=0.5)  # two or so ranges finish, then the signal comes
        raise KeyboardInterrupt

    monkeypatch.setattr(ranged_download, "_fetch_range", slow_range)
    monkeypatch.setattr(ranged_download, "wait", interrupted)
    plan = RangePlan("b", "k", "", "e", 40 * 1024 * 1024, 1024 * 1024, "crc32", "none")
    partial = tmp_path / ".W1.bag.zip.part"
    started = time.monotonic()
    with pytest.raises(KeyboardInterrupt):
        ranged_download.fetch_ranges(None, plan, partial, 2, "W1")
    assert time.monotonic() - started < 2, "40 ranges of 0.2 s on two threads would take 4 s"
    assert 0 < len(fetched) < 10
    journaled = journal_path(partial).read_text().splitlines()[1:]
    assert len(journaled) == len(fetched), "the finished ranges are journaled"
