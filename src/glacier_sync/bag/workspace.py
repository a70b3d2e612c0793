"""A work's files in the data root: its zip, debag marker, work folder, and their clean-up.

The debag marker (``<work root>/.<work>.debagged.json``) is written after the validated work
folder was moved into place and removed before anything of that folder is deleted, so a work
folder is trusted only while its marker says it is the complete payload of this row's zip.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import shutil
import stat
from dataclasses import asdict, dataclass
from pathlib import Path

from glacier_sync import faults
from glacier_sync.records.claimants import this_host
from glacier_sync.transfer.object_download import remove_download, remove_partial_downloads

log = logging.getLogger(__name__)

REREADS = 3  # times a folder is read again when it is not empty once its entries are gone


@dataclass(frozen=True)
class DebagMarker:
    """What a completed debag proved, tied to one progress row, one zip on disk and one work
    folder: its inode, and its device as seen from ``folder_host`` (device numbers of a network
    file system differ from host to host). A folder put there by anything else is not vouched
    for. Markers written before these were recorded carry None."""

    row_id: int
    zip_size: int
    zip_mtime_ns: int
    files: int
    bytes: int
    algorithms: list[str]
    folder_dev: int | None = None
    folder_ino: int | None = None
    folder_host: str | None = None


def marker_path(work_root: Path, work_id: str) -> Path:
    """``<work root>/.<work>.debagged.json``."""
    return work_root / f".{work_id}.debagged.json"


def debag_stagings(work_root: Path, work_id: str) -> list[Path]:
    """Every staging folder of a work's debag: ``.debag-<work>.<nonce>`` (one per try) and the
    ``.debag-<work>`` of older versions."""
    return [work_root / f".debag-{work_id}", *work_root.glob(f".debag-{work_id}.*")]


def write_marker(work_root: Path, work_id: str, marker: DebagMarker) -> None:
    """Write the marker atomically (temporary file, then rename)."""
    path = marker_path(work_root, work_id)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(asdict(marker)), encoding="utf-8")
    os.replace(tmp, path)


def read_marker(work_root: Path, work_id: str) -> DebagMarker | None:
    """The marker, or None when absent or unreadable."""
    try:
        data = json.loads(marker_path(work_root, work_id).read_text(encoding="utf-8"))
        return DebagMarker(**data)
    except (OSError, ValueError, TypeError):
        return None


def verified_work_folder(work_root: Path, work_id: str, row_id: int, zip_path: Path) -> bool:
    """True when the work folder is a complete debag of this row's zip (as it is on disk now)."""
    marker = read_marker(work_root, work_id)
    if marker is None or marker.row_id != row_id:
        return False
    try:
        folder = (work_root / work_id).lstat()
    except OSError:
        return False
    if not stat.S_ISDIR(folder.st_mode):
        return False
    if marker.folder_ino is not None:
        if folder.st_ino != marker.folder_ino:
            return False  # not the folder the debag placed (replaced, or moved and recreated)
        if marker.folder_host == this_host() and folder.st_dev != marker.folder_dev:
            return False
    try:
        zip_stat = zip_path.stat()
    except FileNotFoundError:
        return True  # the zip may be gone once synced; the marker still vouches for the folder
    return (zip_stat.st_size, zip_stat.st_mtime_ns) == (marker.zip_size, marker.zip_mtime_ns)


def forget_debag(work_root: Path, work_id: str) -> None:
    """Withdraw the marker: from now on the work folder is not trusted."""
    marker_path(work_root, work_id).unlink(missing_ok=True)


def disk_usage(path: Path) -> int:
    """Bytes a copy of the tree at ``path`` takes on disk (allocated blocks, folders too),
    read as a stream: a folder of 100,000 files is never listed whole in memory."""
    total = 0
    folders = [os.fspath(path)]
    while folders:
        try:
            entries = os.scandir(folders.pop())
        except FileNotFoundError:  # removed meanwhile: it takes nothing
            continue
        with entries:
            for entry in entries:
                with contextlib.suppress(FileNotFoundError):
                    total += entry.stat(follow_symlinks=False).st_blocks * 512
                if entry.is_dir(follow_symlinks=False):
                    folders.append(entry.path)
    return total


def remove_tree(path: Path) -> None:
    """Delete a folder, each file as its folder is read (never a folder's whole listing in
    memory), each folder once emptied; a fault point after each file, for the crash tests."""
    if not path.exists() and not path.is_symlink():
        return
    if path.is_symlink() or not path.is_dir():
        path.unlink()
        return
    pending = [(os.fspath(path), False)]  # (folder, its files and sub-folders already taken)
    rereads: dict[str, int] = {}
    while pending:
        folder, emptied = pending.pop()
        if emptied:
            try:
                os.rmdir(folder)
            except FileNotFoundError:
                pass
            except OSError as exc:  # NFS may skip entries read while others are unlinked
                if exc.errno != errno.ENOTEMPTY or rereads.get(folder, 0) >= REREADS:
                    raise
                rereads[folder] = rereads.get(folder, 0) + 1
                pending.append((folder, False))
            continue
        pending.append((folder, True))
        try:
            entries = os.scandir(folder)
        except FileNotFoundError:  # another clean-up got there first
            continue
        with entries:
            for entry in entries:
                if entry.is_dir(follow_symlinks=False):
                    pending.append((entry.path, False))
                    continue
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(entry.path)
                faults.checkpoint("cleanup:file")


def remove_empty_parents(path: Path, stop: Path) -> None:
    """Remove the empty folders from ``path`` up to (not including) ``stop``, starting from the
    deepest one that still exists (a clean-up cut short may have removed the first ones)."""
    try:
        path.relative_to(stop)
    except ValueError:
        return
    current = path
    while current != stop and not current.exists():
        current = current.parent
    while current != stop:
        try:
            current.rmdir()
        except OSError:
            return
        faults.checkpoint("cleanup:folder")
        current = current.parent


def clean_work(
    work_root: Path, work_id: str, zip_path: Path | None, incoming: Path, logs: Path
) -> None:
    """Remove a synced work's local files: marker first, then the folder, the debag staging,
    the zip (when given) with its record and partial downloads, and empty incoming folders."""
    forget_debag(work_root, work_id)
    remove_tree(work_root / work_id)
    for staging in debag_stagings(work_root, work_id):
        shutil.rmtree(staging, ignore_errors=True)
    if zip_path is not None:
        remove_partial_downloads(zip_path)
        remove_download(zip_path)
        remove_empty_parents(zip_path.parent, incoming)
    for stale in logs.glob(f"sync/*/tmp/{work_id}-[0-9]*.success"):
        stale.unlink(missing_ok=True)
