"""The disk space a work needs at once, checked before its download starts.

While a work is synced its zip (kept until the sync is recorded), its work folder and its new
archive copy all exist together. Those three may sit on one file system or on three: the needs
are summed per file system (by device), so that a work that cannot finish is refused before a
byte of it is fetched, with the folders and the bytes named.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from glacier_sync.errors import RoomShortfall


@dataclass(frozen=True)
class Need:
    """``size`` bytes that ``what`` takes in ``folder`` (which need not exist yet)."""

    what: str
    folder: Path
    size: int


def existing_ancestor(path: Path) -> Path:
    """``path`` or its nearest ancestor that exists (where its space will come from)."""
    for candidate in (path, *path.parents):
        if candidate.exists():
            return candidate
    return Path("/")


def work_needs(
    size: int,
    still_to_fetch: int,
    incoming: Path,
    work_root: Path,
    archive_parent: Path | None,
    archive_copies: bool,
) -> list[Need]:
    """What a work of a ``size``-byte zip needs at its peak: the rest of the zip, a work folder
    (its payload, estimated by the zip's size: debag checks the exact figure from the zip's
    directory) and, when the sync copies rather than moves, an archive copy of the same size."""
    needs = [
        Need("the zip", incoming, still_to_fetch),
        Need("the work folder", work_root, size),
    ]
    if archive_parent is not None and archive_copies:
        needs.append(Need("the archive copy", archive_parent, size))
    return needs


def require_room(work_id: str, needs: list[Need], margin: int) -> None:
    """Raise RoomShortfall naming every need of the first file system whose free space (less
    ``margin``) is short of their sum."""
    by_device: dict[int, list[tuple[Need, Path]]] = {}
    for need in needs:
        present = existing_ancestor(need.folder)
        by_device.setdefault(os.stat(present).st_dev, []).append((need, present))
    for group in by_device.values():
        total = sum(need.size for need, _ in group) + margin
        free = shutil.disk_usage(group[0][1]).free
        if total > free:
            parts = ", ".join(f"{need.what} {need.size} in {need.folder}" for need, _ in group)
            raise RoomShortfall(
                f"work {work_id} needs {total} bytes at once on the file system of "
                f"{group[0][0].folder} ({parts}, plus a margin of {margin}) but only {free} are "
                "free; free some space there or move a folder to a larger disk: the download "
                "has not started and is tried again on the next run"
            )
