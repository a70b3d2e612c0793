"""The assets the DAGs share: the restore queues' (watched by the triggerer, it starts the
event-driven DAG) and the archive's (each sync task's event describes the works it archived)."""

from __future__ import annotations

from typing import Any

from airflow.sdk import get_current_context

from glacier_sync.archive.root import archive_host_path, archive_host_root
from glacier_sync.runner import Pipeline
from glacier_sync.settings import Settings

ARCHIVE_URI = "glacier-sync-archive://archive"


def archive_asset(settings: Settings):
    """The asset of this instance's archive: an event per sync task, naming its works."""
    from airflow.sdk import Asset

    return Asset(name=f"glacier_sync_archive_{settings.env}", uri=f"{ARCHIVE_URI}/{settings.env}")


def restore_event_asset(settings: Settings):
    """The asset the restore queues' watcher updates; ``sqs_event_dag`` is scheduled on it."""
    from airflow.sdk import Asset, AssetWatcher

    from glacier_sync_airflow.watcher import ASSET_URI, RestoreQueueWatcher

    watcher = RestoreQueueWatcher(settings.event_poll_seconds, settings.event_refire_seconds)
    return Asset(
        name="glacier_sync_restore_queues",
        uri=ASSET_URI,
        watchers=[AssetWatcher(name="glacier_sync_restore_queue_watcher", trigger=watcher)],
    )


def publish_archived(settings: Settings, pipeline: Pipeline, ids: list[int]) -> None:
    """Describe the batch's archived works in the event the sync task emits on the archive's
    asset (the Assets view): their ids, and for each where it is, its key and fixity evidence.

    One event per sync task, not per work: Airflow 3.3 emits several events of one asset from a
    task only through an asset alias, and concurrent tasks racing to link a new alias to its
    asset fail at their end on PostgreSQL (a unique violation in ``asset_alias_asset``)."""
    works = [_archived_extra(settings, pipeline, progress_id) for progress_id in ids]
    extra = {"work_ids": [work["work_id"] for work in works], "works": works}
    get_current_context()["outlet_events"][archive_asset(settings)].extra = extra


def _archived_extra(settings: Settings, pipeline: Pipeline, progress_id: int) -> dict[str, Any]:
    """An archived work as its asset event says it: the work id, where it is, its key and
    fixity evidence. ``archived_now`` is false when this try found the work archived already
    (by another run, or a cleared task)."""
    row = pipeline.store.get(progress_id)
    synced = [h for h in row.history if h.get("event") == "sync done"]
    host_path = archive_host_path(row.archive_path, settings.archive_root, archive_host_root())
    return {
        "work_id": row.work_id,
        "archived_now": bool(synced) and synced[-1].get("run") == pipeline.run_id,
        "archive_path": row.archive_path,
        "archive_host_path": host_path,
        "bucket": row.bucket,
        "key": row.object_key,
        "version_id": row.version_id,
        "etag": row.etag,
        "synced_at": row.synced_at.isoformat(timespec="seconds") + "Z" if row.synced_at else None,
        "fixity": row.fixity,
    }
