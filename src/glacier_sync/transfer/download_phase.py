"""The download phase: a work's restored object into the incoming folder (resumable and
checked end to end, ``object_download``), refused first when the work cannot fit."""

from __future__ import annotations

from pathlib import Path, PurePosixPath

from glacier_sync.archive.sync import archive_parent_for_key
from glacier_sync.errors import GlacierSyncError
from glacier_sync.phase_base import PhaseResult, PhaseRunner
from glacier_sync.records.models import Progress, utcnow
from glacier_sync.records.states import State
from glacier_sync.settings import Settings
from glacier_sync.transfer import object_download, room


def local_zip_path(settings: Settings, row: Progress) -> Path:
    """Where a row's zip is (or will be) on disk: incoming/<key> for S3 objects."""
    if row.local_path:
        return Path(row.local_path)
    key = PurePosixPath(row.object_key)
    if key.is_absolute() or ".." in key.parts:
        raise GlacierSyncError(
            f"work {row.work_id}: key {row.object_key!r} is absolute or climbs out with '..'; "
            "refusing to write it outside the incoming folder"
        )
    return settings.incoming_dir / key


def same_device(a: Path, b: Path) -> bool:
    """True when both paths exist on one device (a rename between them needs no room)."""
    try:
        return a.stat().st_dev == b.stat().st_dev
    except OSError:
        return False


class DownloadPhase(PhaseRunner):
    """Downloads works' objects."""

    def download(self, progress_id: int, release_on_failure: bool = True) -> int:
        """Download the row's object into the incoming folder (skipped when already there)."""

        def action(row: Progress) -> PhaseResult:
            target = local_zip_path(self.settings, row)
            queue = self._queue_for(row)
            if row.local_path != str(target):  # claim the path before the file appears
                self.store.update_row(
                    progress_id, "download started", owner=self.run_id, local_path=str(target)
                )
            fetched = object_download.download_object(
                self.clients.client("s3", queue),
                row.bucket,
                row.object_key,
                row.etag or "",
                target,
                row.work_id,
                self.settings.download_concurrency,
                self.settings.download_chunk_mb,
                row.version_id,
                room=lambda still_to_fetch, size: self._require_room(row, still_to_fetch, size),
                report=(report := {}),
                progress=self.watch.tick,
            )
            # The whole-object check used ("none": unchecked, the bag's manifests decide).
            details = {"path": str(target), "skipped": None if fetched else "complete", **report}
            return PhaseResult(
                State.DOWNLOADED,
                details,
                local_path=str(target),
                downloaded_at=utcnow() if fetched or row.downloaded_at is None else None,
            )

        self._phase(progress_id, "download", action, release_on_failure=release_on_failure)
        return progress_id

    def _require_room(self, row: Progress, still_to_fetch: int, size: int) -> None:
        """Refuse a download whose work cannot fit: the zip, the work folder and (when the
        sync copies rather than moves it) the archive copy, summed per file system."""
        settings = self.settings
        parent = None
        if settings.archive_root is not None and settings.archive_root.is_dir():
            parent = archive_parent_for_key(settings.archive_root, row.object_key, row.work_id)
        archive_copies = parent is not None and (
            settings.sync_replace_archive or not (parent / row.work_id).exists()
        )
        if archive_copies and settings.sync_move_work:
            work_fs = room.existing_ancestor(settings.work_dir)
            archive_copies = not same_device(work_fs, room.existing_ancestor(parent))
        needs = room.work_needs(
            size,
            still_to_fetch,
            local_zip_path(settings, row).parent,
            settings.work_dir,
            parent,
            archive_copies,
        )
        room.require_room(row.work_id, needs, settings.free_space_margin_mb * 1024 * 1024)
