"""Batches of works for the Airflow path: small works share a task instance, large ones do not.

Every Airflow task is a process of its own with 1–2 s of start-up, so a burst of small works
carried one task per work per phase spends its time starting processes. A batch is a list of
progress rows that go through each phase in one task: up to ``batch_max_works`` works and
``batch_max_mb`` of objects, and never more than the 250 characters Airflow keeps of a mapped
instance's label, which lists the batch's work ids (so a work is found by its id in the UI). A
work at least ``batch_max_mb`` large is a batch of its own.

Inside a task each work still runs, and records, its phase on its own: a bad work fails alone
(recorded, the others go on; the task fails at the end, naming it) and the next phase of the
batch runs the works that are ready for it, skipping the ones that failed before it.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from glacier_sync.errors import is_transient
from glacier_sync.records.models import Progress
from glacier_sync.records.states import State

if TYPE_CHECKING:
    from glacier_sync.runner import Pipeline

log = logging.getLogger(__name__)

# Airflow keeps 250 characters of a mapped task instance's rendered label.
LABEL_LIMIT = 250
PHASES = ("download", "debag", "sync")


@dataclass(frozen=True)
class BatchItem:
    """What planning needs of one work: its row, its id and the size of its object."""

    progress_id: int
    work_id: str
    size: int | None


def plan_batches(
    items: Sequence[BatchItem], max_works: int, max_bytes: int, label_limit: int = LABEL_LIMIT
) -> list[list[int]]:
    """Group works, in the given order, into batches bounded by count, bytes and label length.

    An unknown size counts as small; a work of ``max_bytes`` or more is a batch of its own.
    """
    batches: list[list[int]] = []
    current: list[BatchItem] = []

    def flush() -> None:
        if current:
            batches.append([item.progress_id for item in current])
            current.clear()

    for item in items:
        size = item.size or 0
        if size >= max_bytes:
            batches.append([item.progress_id])
            continue
        label = batch_label([*(i.work_id for i in current), item.work_id])
        if current and (
            len(current) >= max_works
            or sum(i.size or 0 for i in current) + size > max_bytes
            or len(label) > label_limit
        ):
            flush()
        current.append(item)
    flush()
    return batches


def batch_label(work_ids: Sequence[str]) -> str:
    """A batch's name in the UI: its work ids, separated by spaces."""
    return " ".join(work_ids)


def next_phase(row: Progress) -> str | None:
    """The phase a work needs next: the one that failed, or the one after its state."""
    if row.state == State.FAILED:
        needed = row.failed_phase or PHASES[0]
    else:
        needed = {
            State.RESTORED: "download",
            State.DOWNLOADED: "debag",
            State.DEBAGGED: "sync",
        }.get(State(row.state))
    if needed == "download" and row.source != "s3":
        return "debag"  # a bag dropped into the incoming folder has nothing to download
    return needed


def blocked_reason(row: Progress, phase: str) -> str | None:
    """Why ``phase`` must not run for the work now (it has not passed the phases before it),
    or None when it may run (again: every phase is idempotent)."""
    if row.state == State.SYNCED:
        return None
    needed = next_phase(row)
    if needed is None:
        return f"the work is {row.state}"
    if PHASES.index(needed) >= PHASES.index(phase):
        return None
    if row.state == State.FAILED:
        return f"{row.failed_phase} failed: {row.last_error}"
    return f"{needed} has not run"


@dataclass
class BatchReport:
    """What one phase did to each work of a batch."""

    phase: str
    done: list[int] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)
    failed: dict[str, str] = field(default_factory=dict)
    transient: Exception | None = None
    transient_works: list[str] = field(default_factory=list)
    transient_ids: list[int] = field(default_factory=list)

    def summary(self) -> str:
        """One line: how many works were done, skipped and failed."""
        parts = [f"{self.phase}: {len(self.done)} done"]
        if self.skipped:
            parts.append(f"{len(self.skipped)} skipped")
        if self.failed:
            parts.append(f"{len(self.failed)} failed ({', '.join(self.failed)})")
        if self.transient_works:
            retry = ", ".join(self.transient_works)
            parts.append(f"{len(self.transient_works)} to retry ({retry})")
        return ", ".join(parts)


def run_batch_phase(
    pipeline: Pipeline, phase: str, ids: Sequence[int], release_on_failure: bool
) -> BatchReport:
    """Run ``phase`` (``download``, ``debag`` or ``sync``) for each work of a batch, in turn.

    A work's failure is recorded by the phase and does not stop the others. A failure that is
    not transient releases the work at once (a retry would meet the same bag); a transient one
    keeps the claim unless ``release_on_failure`` (the task's last try).
    """
    report = BatchReport(phase)
    action = getattr(pipeline, phase)
    for progress_id in ids:
        row = pipeline.store.get(progress_id)
        reason = blocked_reason(row, phase)
        if reason is not None:
            log.warning("work %s (row %s): %s skipped: %s", row.work_id, progress_id, phase, reason)
            report.skipped[row.work_id] = reason
            continue
        if phase == "download" and row.source != "s3":
            report.done.append(
                progress_id
            )  # a bag dropped into the incoming folder: nothing to fetch
            continue
        try:
            action(progress_id, release_on_failure=release_on_failure)
        except Exception as exc:
            if is_transient(exc):
                log.warning(
                    "work %s (row %s): %s retried: %s", row.work_id, progress_id, phase, exc
                )
                report.transient = report.transient or exc
                report.transient_works.append(row.work_id)
                report.transient_ids.append(progress_id)
                continue
            pipeline.store.release(progress_id, pipeline.run_id)
            log.error(
                "work %s (row %s): %s failed (not retried): %s",
                row.work_id,
                progress_id,
                phase,
                exc,
            )
            report.failed[row.work_id] = str(exc)
            continue
        report.done.append(progress_id)
    log.info("batch of %s works: %s", len(ids), report.summary())
    return report
