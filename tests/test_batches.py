"""Batches of works for the Airflow path: planning, readiness, and one phase over a batch
against a real moto server (a bad work fails alone, the phase after it skips it)."""

from __future__ import annotations

import pytest
from helpers import make_bag_dir, make_bag_zip, zip_dir

from glacier_sync.batches import (
    LABEL_LIMIT,
    BatchItem,
    batch_label,
    blocked_reason,
    plan_batches,
    run_batch_phase,
)
from glacier_sync.records.models import Progress
from glacier_sync.runner import Pipeline

MB = 1024 * 1024


def _items(count: int, size: int | None = MB, prefix: str = "W1B") -> list[BatchItem]:
    return [BatchItem(i, f"{prefix}{i:04d}", size) for i in range(count)]


@pytest.mark.unit
def test_small_works_share_batches_bounded_by_count():
    batches = plan_batches(_items(45), max_works=20, max_bytes=1024 * MB)
    assert [len(b) for b in batches] == [20, 20, 5]
    assert [pid for b in batches for pid in b] == list(range(45)), "claim order kept"


@pytest.mark.unit
def test_bytes_bound_a_batch_and_a_large_work_is_alone():
    items = [
        BatchItem(1, "W1A", 400 * MB),
        BatchItem(2, "W1B", 400 * MB),
        BatchItem(3, "W1C", 400 * MB),  # would make 1200 MB: starts the next batch
        BatchItem(4, "W1HUGE", 17 * 1024 * MB),
        BatchItem(5, "W1D", None),  # size unknown: counted as small
    ]
    assert plan_batches(items, max_works=20, max_bytes=1024 * MB) == [[1, 2], [4], [3, 5]]


@pytest.mark.unit
def test_a_batch_label_lists_every_work_and_fits_airflow():
    long_ids = _items(40, prefix="W1KG0123456789_")
    batches = plan_batches(long_ids, max_works=40, max_bytes=1024 * MB)
    by_id = {item.progress_id: item.work_id for item in long_ids}
    for batch in batches:
        label = batch_label([by_id[pid] for pid in batch])
        assert len(label) <= LABEL_LIMIT
        assert label.split() == [by_id[pid] for pid in batch], "every work findable by id"
    assert sum(len(b) for b in batches) == 40 and len(batches) > 1


@pytest.mark.unit
def test_one_work_per_batch_when_asked():
    assert plan_batches(_items(3), max_works=1, max_bytes=1024 * MB) == [[0], [1], [2]]


def _row(state: str, failed_phase: str | None = None, source: str = "s3") -> Progress:
    return Progress(
        state=state, failed_phase=failed_phase, last_error="boom", source=source, work_id="W1"
    )


@pytest.mark.unit
def test_a_phase_runs_only_for_works_that_passed_the_ones_before_it():
    assert blocked_reason(_row("restored"), "download") is None
    assert blocked_reason(_row("restored"), "debag") == "download has not run"
    assert blocked_reason(_row("failed", "download"), "debag") == "download failed: boom"
    assert blocked_reason(_row("failed", "debag"), "debag") is None, "a retry of the phase"
    assert blocked_reason(_row("failed", "sync"), "debag") is None, "idempotent: runs again"
    assert blocked_reason(_row("downloaded"), "sync") == "debag has not run"
    assert blocked_reason(_row("synced"), "sync") is None, "the phase says it is done"
    assert blocked_reason(_row("restored", source="local"), "debag") is None, "no download"
    assert blocked_reason(_row("restored", source="local"), "download") is None
    assert blocked_reason(_row("requested"), "download") == "the work is requested"


@pytest.mark.integration
def test_a_bad_work_fails_alone_in_its_batch(world, dirs, settings):
    bad = make_bag_dir(dirs["bags"], "W1BAD")
    (bad / "data" / "archive" / "notes.txt").write_bytes(b"tampered\n")
    for work_id, zip_path in (
        ("W1BAD", zip_dir(bad, dirs["bags"] / "W1BAD.bag.zip")),
        ("W1GOOD", make_bag_zip(dirs["bags"], "W1GOOD")),
    ):
        key = f"Archive0/01/{work_id}/{work_id}.bag.zip"
        world.upload_archived(zip_path, key)
        world.restore(key)
    pipeline = Pipeline(settings, run_id="airflow:batch-test")
    batch = pipeline.poll()
    assert len(batch) == 2

    download = run_batch_phase(pipeline, "download", batch, release_on_failure=False)
    assert len(download.done) == 2 and not download.failed
    debag = run_batch_phase(pipeline, "debag", batch, release_on_failure=False)
    assert list(debag.failed) == ["W1BAD"] and "Payload-Oxum" in debag.failed["W1BAD"]
    assert len(debag.done) == 1
    sync = run_batch_phase(pipeline, "sync", batch, release_on_failure=False)
    assert list(sync.skipped) == ["W1BAD"] and sync.skipped["W1BAD"].startswith("debag failed")
    assert "1 done, 1 skipped" in sync.summary()

    rows = {r.work_id: r for r in pipeline.store.find()}
    assert rows["W1GOOD"].state == "synced"
    assert rows["W1BAD"].state == "failed" and rows["W1BAD"].attempts == 1
    assert rows["W1BAD"].claimed_by is None, "released at once: no retry meets a bad bag"
    assert (dirs["archive"] / "Archive0" / "01" / "W1GOOD").is_dir()
    assert not (dirs["archive"] / "Archive0" / "01" / "W1BAD").exists()

    again = run_batch_phase(pipeline, "sync", batch, release_on_failure=False)
    assert len(again.done) == 1, "a retried task finds the synced work done, once"
    synced = [h["event"] for h in pipeline.store.get(rows["W1GOOD"].id).history]
    assert synced.count("sync done") == 1


@pytest.mark.integration
def test_a_transient_failure_keeps_the_claims_for_the_task_retry(world, dirs, settings):
    for work_id in ("W1TRA1", "W1TRA2"):
        key = f"Archive0/02/{work_id}/{work_id}.bag.zip"
        world.upload_archived(make_bag_zip(dirs["bags"], work_id), key)
        world.restore(key)
    pipeline = Pipeline(settings, run_id="airflow:transient-test")
    batch = pipeline.poll()
    run_batch_phase(pipeline, "download", batch, release_on_failure=False)
    run_batch_phase(pipeline, "debag", batch, release_on_failure=False)
    dirs["archive"].rename(dirs["archive"].with_name("unmounted"))  # the archive volume is gone
    sync = run_batch_phase(pipeline, "sync", batch, release_on_failure=False)
    assert sync.transient is not None and sorted(sync.transient_works) == ["W1TRA1", "W1TRA2"]
    assert not sync.done and not sync.failed
    rows = pipeline.store.find()
    assert {r.claimed_by for r in rows} == {"airflow:transient-test"}, "held for the retry"
    assert {r.attempts for r in rows} == {0}, "the environment's fault spends no attempt"

    dirs["archive"].with_name("unmounted").rename(dirs["archive"])  # mounted again: the retry
    retry = run_batch_phase(pipeline, "sync", batch, release_on_failure=False)
    assert len(retry.done) == 2 and retry.transient is None
    assert {r.state for r in pipeline.store.find()} == {"synced"}
