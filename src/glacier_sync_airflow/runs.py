"""The Airflow run a task belongs to: its try, its pipeline, and its works in batches."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from airflow.sdk import get_current_context

from glacier_sync.batches import BatchItem, plan_batches
from glacier_sync.records.claimants import AIRFLOW_RUN_PREFIX
from glacier_sync.runner import Pipeline
from glacier_sync.settings import Settings
from glacier_sync_airflow.clients import HookClients


@dataclass(frozen=True)
class TaskTry:
    """The running task's run id, and whether this try is its last (no retry follows)."""

    run_id: str
    final: bool


def current_try() -> TaskTry:
    """The run and try of the task running now."""
    context = get_current_context()
    ti = context["ti"]
    final = (ti.try_number or 1) > (getattr(ti, "max_tries", 0) or 0)
    return TaskTry(context["run_id"], final)


def make_pipeline(settings: Settings, run_id: str) -> Pipeline:
    """A pipeline whose claims are made in the name of the Airflow run."""
    return Pipeline(settings, clients=HookClients(settings), run_id=f"{AIRFLOW_RUN_PREFIX}{run_id}")


def batches_of(pipeline: Pipeline, ids: list[int]) -> list[list[int]]:
    """This run's works in batches (``batch_max_works``, ``batch_max_mb``), in claim order."""
    items = []
    for progress_id in ids:
        row = pipeline.store.get(progress_id)
        items.append(BatchItem(progress_id, row.work_id, row.size))
    settings = pipeline.settings
    return plan_batches(items, settings.batch_max_works, settings.batch_max_mb * 1024 * 1024)


def as_batch(value: Any) -> list[int]:
    """A batch of progress ids; a single id is the batch of one a run started before batches
    (an upgrade while it ran: the DAG file is read anew by each task) maps over."""
    return [value] if isinstance(value, int) else list(value)
