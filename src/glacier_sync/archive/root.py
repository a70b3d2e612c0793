"""The archive tree: is the root really the archive, room for a work, staging left by dead tries.

Nothing here creates the archive root or writes above a work's own folder except the key's
group folders (``Archive0/00``), created one level at a time below a root that passed the
checks. See docs/reliability.md.
"""

from __future__ import annotations

import errno
import logging
import os
import shutil
from pathlib import Path

from glacier_sync.errors import ArchiveUnavailable, RoomShortfall
from glacier_sync.records.claimants import pid_alive, this_host

log = logging.getLogger(__name__)

# Where the stack mounts the archive root from, on the host (set by the Compose file).
ARCHIVE_HOST_ROOT_ENV = "GLACIER_SYNC_ARCHIVE_HOST_ROOT"

# Staging names of the default sync script: .<work>.syncing.<host>.<pid>.<start>, and .replaced.
STAGING_KINDS = ("syncing", "replaced")


def verify_archive_root(root: Path, marker: str | None = None, must_be_mount: bool = False) -> Path:
    """Return ``root`` when it is an existing folder (a mount point, holding ``marker``, when
    asked); raise ArchiveUnavailable naming the check and the fix otherwise."""
    if not root.is_dir():
        what = "is not a folder" if root.exists() else "does not exist"
        raise ArchiveUnavailable(
            f"archive root {root} {what}: is the archive volume mounted? Mount it (or fix "
            "GLACIER_SYNC_ARCHIVE_ROOT); nothing was written and every work stays pending"
        )
    if must_be_mount and not os.path.ismount(root):
        raise ArchiveUnavailable(
            f"archive root {root} is not a mount point (archive_root_must_be_mount is set): "
            "mount the archive volume there; nothing was written"
        )
    if marker and not (root / marker).is_file():
        raise ArchiveUnavailable(
            f"archive root {root} lacks its marker file {marker} (archive_root_marker): it is "
            "not the archive, or the volume is not mounted; nothing was written"
        )
    return root


def ensure_parent(root: Path, parent: Path) -> list[Path]:
    """Create the group folders between a verified ``root`` and ``parent``, one level at a time
    (never the root itself, never anything outside it); return the folders created."""
    relative = parent.relative_to(root)
    current = root
    created: list[Path] = []
    for part in relative.parts:
        current = current / part
        try:
            current.mkdir()
            created.append(current)
        except FileExistsError:
            if not current.is_dir():
                raise ArchiveUnavailable(
                    f"{current} exists in the archive but is not a folder; move it away"
                ) from None
        except FileNotFoundError:
            raise ArchiveUnavailable(
                f"archive root {root} vanished while {current} was being created: is the "
                "archive volume mounted?"
            ) from None
    return created


def remove_if_empty(folders: list[Path]) -> None:
    """Remove the folders ``ensure_parent`` created when a failed sync left them empty."""
    for folder in reversed(folders):
        try:
            folder.rmdir()
        except OSError:
            return


def require_room(folder: Path, needed: int, what: str) -> None:
    """Raise RoomShortfall naming ``folder`` when its file system has less than ``needed``
    bytes free."""
    try:
        free = shutil.disk_usage(folder).free
    except FileNotFoundError:
        return
    if needed > free:
        raise RoomShortfall(
            f"{what} needs {needed} bytes in {folder} but only {free} are free; free some space "
            "there: the work is tried again on the next run and nothing was lost"
        )


def _staging_owner_alive(name: str, prefix: str) -> bool:
    """True when a staging name (``<prefix><host>.<pid>[.<start>]``) belongs to a process that
    still runs on this host."""
    owner = name.removeprefix(prefix).split(".")
    if len(owner) < 2 or owner[0] != this_host() or not owner[1].isdigit():
        return False
    start = int(owner[2]) if len(owner) > 2 and owner[2].isdigit() else None
    return pid_alive(int(owner[1]), start)


def sweep_staging(parent: Path, work_id: str) -> list[Path]:
    """Remove the staging folders of ``work_id`` left in ``parent`` by dead tries.

    Called only by the run that holds the work's claim, so any staging of the work is from a
    try that died (a sync on this host whose process still runs is left alone).
    """
    removed: list[Path] = []
    if not parent.is_dir():
        return removed
    dest = parent / work_id
    replaced = f".{work_id}.replaced."
    for previous in sorted(parent.glob(f"{replaced}*")):
        if not dest.exists() and not _staging_owner_alive(previous.name, replaced):
            os.rename(previous, dest)  # a swap cut between its two renames: the old copy back
            log.warning("work %s: %s put back from %s", work_id, dest, previous)
    for kind in STAGING_KINDS:
        prefix = f".{work_id}.{kind}."
        for path in parent.glob(f"{prefix}*"):
            if _staging_owner_alive(path.name, prefix):
                log.warning("work %s: %s belongs to a running sync; left alone", work_id, path)
                continue
            try:
                shutil.rmtree(path)
            except FileNotFoundError:
                continue
            except OSError as exc:
                if exc.errno != errno.ENOTEMPTY:
                    raise
                log.warning("work %s: %s is still being written; left for later", work_id, path)
                continue
            log.warning("work %s: removed %s left by an interrupted sync", work_id, path)
            removed.append(path)
    return removed


def archive_host_root() -> str | None:
    """The host's folder mounted as the archive root, when the stack says (else None)."""
    return os.environ.get(ARCHIVE_HOST_ROOT_ENV, "").strip() or None


def archive_host_path(
    archive_path: str | None, archive_root: Path | None, host_root: str | None
) -> str | None:
    """``archive_path`` (a path in the container) with the container's archive root replaced by
    the host's; None when there is no host root, no path, or it lies outside the archive root."""
    if not (host_root and archive_path and archive_root):
        return None
    try:
        relative = Path(archive_path).relative_to(archive_root)
    except ValueError:
        return None
    return str(Path(host_root) / relative)
