"""The debag phase: a work's zip validated against its BagIt manifests and extracted into its
work folder, vouched for by a marker, with the fixity evidence recorded."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from glacier_sync import faults
from glacier_sync.bag import workspace
from glacier_sync.bag.bags import DebagResult, debag
from glacier_sync.bag.workspace import verified_work_folder
from glacier_sync.errors import DiskFull
from glacier_sync.phase_base import PhaseResult, PhaseRunner
from glacier_sync.records.claimants import this_host
from glacier_sync.records.models import Progress, utcnow
from glacier_sync.records.states import State
from glacier_sync.transfer.download_phase import local_zip_path


def fixity_evidence(result: DebagResult, validated_at: datetime) -> dict[str, Any]:
    """What a debag proved, as recorded in the progress row (``fixity``) and published with the
    archived work: every payload file matched every manifest, in count and bytes."""
    return {
        "algorithms": list(result.algorithms),
        "files": result.files,
        "bytes": result.bytes,
        "payload_oxum": result.payload_oxum,
        "manifest_sha256": result.manifest_digests,
        "validated_at": validated_at.isoformat(timespec="seconds") + "Z",
    }


class DebagPhase(PhaseRunner):
    """Debags works."""

    def _debagged(self, row: Progress) -> PhaseResult:
        """Make the work folder a verified debag of the row's zip (re-extract unless its marker
        vouches for it); say what was done (``debagged_at`` only when it was extracted now)."""
        work_root, zip_path = self.settings.work_dir, local_zip_path(self.settings, row)
        if verified_work_folder(work_root, row.work_id, row.id, zip_path):
            return PhaseResult(State.DEBAGGED, {"skipped": "already debagged"})
        workspace.forget_debag(work_root, row.work_id)
        try:
            result = debag(
                zip_path,
                work_root,
                row.work_id,
                self.settings.free_space_margin_mb * 1024 * 1024,
                before_place=lambda: self._still_mine(row, "placing the work folder"),
                progress=self.watch.tick,
            )
        except DiskFull as exc:  # the same kind (a shortfall found before writing, or not)
            raise type(exc)(f"work {row.work_id}: {exc}") from exc
        faults.checkpoint("debag:placed")
        stat = zip_path.stat()
        folder = result.work_path.lstat()
        marker = workspace.DebagMarker(
            row.id,
            stat.st_size,
            stat.st_mtime_ns,
            result.files,
            result.bytes,
            list(result.algorithms),
            folder.st_dev,
            folder.st_ino,
            this_host(),
        )
        workspace.write_marker(work_root, row.work_id, marker)
        faults.checkpoint("debag:marked")
        validated_at = utcnow()
        return PhaseResult(
            State.DEBAGGED,
            {"files": result.files, "bytes": result.bytes, "algorithms": list(result.algorithms)},
            debagged_at=validated_at,
            fixity=fixity_evidence(result, validated_at),
        )

    def debag(self, progress_id: int, release_on_failure: bool = True) -> int:
        """Validate and extract the row's zip into ``<work root>/<WorkRID>``."""
        self._phase(progress_id, "debag", self._debagged, release_on_failure=release_on_failure)
        return progress_id
