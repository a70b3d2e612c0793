"""The sync phase: a verified work folder synced into the archive by the sync script (debagged
again first when nothing vouches for it), then the work's local files cleaned up."""

from __future__ import annotations

import logging
from pathlib import Path

from glacier_sync import faults
from glacier_sync.archive.root import ensure_parent, remove_if_empty, require_room, sweep_staging
from glacier_sync.archive.sync import SyncResult, archive_parent_for_key, sync_work
from glacier_sync.bag import workspace
from glacier_sync.bag.debag_phase import DebagPhase
from glacier_sync.errors import ArchiveUnavailable
from glacier_sync.phase_base import PhaseResult
from glacier_sync.records.models import Progress, utcnow
from glacier_sync.records.states import State
from glacier_sync.transfer.download_phase import local_zip_path, same_device

log = logging.getLogger(__name__)


class SyncPhase(DebagPhase):
    """Syncs works into the archive and cleans up after them."""

    def sync(self, progress_id: int, release_on_failure: bool = True) -> int:
        """Sync the verified work folder into the archive, record it, then clean up."""
        row = self._phase(
            progress_id, "sync", self._synced, release=True, release_on_failure=release_on_failure
        )
        faults.checkpoint("sync:recorded")
        self._clean_quietly(row)
        return progress_id

    def _synced(self, row: Progress) -> PhaseResult:
        """The work in the archive: its target folder found and swept, its work folder vouched
        for (debagged again if not), then the sync script run (``_run_sync``)."""
        root = self.archive_root()
        parent = archive_parent_for_key(root, row.object_key, row.work_id)
        # Staging of a dead try first: it may be this work's folder, renamed there by a killed
        # sync (then the folder is gone and is debagged again just below).
        sweep_staging(parent, row.work_id)
        redone = self._debagged(row)  # extracts again only when not vouched for
        if redone.debagged_at is not None:
            log.warning("work %s: work folder was not verified; debagged again", row.work_id)
        result = self._run_sync(row, root, parent)
        faults.checkpoint("sync:after-script")
        details = {
            "archive_path": str(result.archive_path),
            "log": str(result.log_file),
            "moved": result.moved,
        }
        return PhaseResult(
            State.SYNCED,
            details,
            synced_at=utcnow(),
            archive_path=str(result.archive_path),
            debagged_at=redone.debagged_at,  # recorded when it was debagged again just now
        )

    def _run_sync(self, row: Progress, root: Path, parent: Path) -> SyncResult:
        """Room checked for a copy, the claim renewed, then the sync script; a group folder this
        try created is removed again when the sync fails and leaves it empty."""
        created = ensure_parent(root, parent)
        work = self.settings.work_dir / row.work_id
        try:
            copying = self.settings.sync_replace_archive or not (parent / row.work_id).exists()
            if copying and not (self.settings.sync_move_work and same_device(work, parent)):
                require_room(parent, workspace.disk_usage(work), f"work {row.work_id}")
            faults.checkpoint("sync:before-script")
            self._still_mine(row, "the sync")
            return sync_work(
                self.settings.sync_command,
                work,
                parent,
                self.settings.logs_dir,
                replace=self.settings.sync_replace_archive,
                db_config=self.settings.sync_db_config,
                timeout=self.settings.sync_timeout_seconds,
                move_work=self.settings.sync_move_work,
                watch=self.watch,
            )
        except Exception as exc:
            if not parent.is_dir():  # another work's failed sync removed its empty folder
                raise ArchiveUnavailable(
                    f"work {row.work_id}: {parent} vanished during the sync (another work's "
                    "failed sync removed it while empty); tried again on the next run"
                ) from exc
            remove_if_empty(created)
            raise

    def clean(self, row: Progress) -> None:
        """Remove a synced work's local files (after the sync is recorded) and record it.

        Left alone while another run holds the work (a newer restore of it is on its way: the
        files are its now); recorded only for the sync that was cleaned.
        """
        if row.state != State.SYNCED or row.cleaned_at is not None:
            return
        if self.store.work_is_held(row.work_id, self.run_id):
            return
        zip_path = local_zip_path(self.settings, row)
        incoming = self.settings.incoming_dir.resolve()
        keep = self.settings.keep_zip_after_sync or not zip_path.resolve().is_relative_to(incoming)
        workspace.clean_work(
            self.settings.work_dir,
            row.work_id,
            None if keep else zip_path,
            self.settings.incoming_dir,
            self.settings.logs_dir,
        )
        self.store.mark_cleaned(row.id, row.synced_at)

    def _clean_quietly(self, row: Progress) -> None:
        """Clean up; a failure is logged (the work is synced; the next run cleans again)."""
        try:
            self.clean(row)
        except OSError as exc:
            log.warning("work %s: clean-up failed (%s); tried again later", row.work_id, exc)

    def finish_cleanups(self) -> None:
        """Finish the clean-up of synced works that a crash interrupted."""
        for row in self.store.needs_cleanup():
            self._clean_quietly(row)
