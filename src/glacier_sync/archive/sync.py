"""Sync a debagged work into the archive tree by running the archive's bash sync script."""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath

from glacier_sync.archive import process_tree
from glacier_sync.errors import DiskFull, SyncError, SyncTimeout
from glacier_sync.progress_watch import ProgressWatch, no_watch

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SyncResult:
    """Where the work was archived, where its log is, and whether the work folder itself was
    renamed into the archive (``moved``: the archived folder is the work folder, same device
    and inode) rather than copied."""

    work_id: str
    archive_path: Path
    log_file: Path
    moved: bool = False


def archive_parent_for_key(archive_root: Path, key: str, work_id: str) -> Path:
    """The folder that receives the work: the key's folder without the work's own folder.

    ``Archive1/37/W2KG209837/W2KG209837.bag.zip`` -> ``<root>/Archive1/37``, so the work lands
    at ``<root>/Archive1/37/W2KG209837``.
    """
    folder = PurePosixPath(key).parent
    if folder.name == work_id:
        folder = folder.parent
    parts = [p for p in folder.parts if p not in ("", ".", "/")]
    if ".." in parts:
        raise SyncError(f"key {key!r} climbs out of the archive with '..'; refusing to sync it")
    return archive_root.joinpath(*parts)


def job_environment(
    log_dir: Path, now: datetime, db_config: Path | None, extra: dict[str, str] | None = None
) -> dict[str, str]:
    """The environment the archive's sync script reads (job time and per-run log places)."""
    job_date, job_time = now.strftime("%Y-%m-%d"), now.strftime("%H-%M-%S")
    date_time = f"{job_date}_{job_time}"
    env = dict(os.environ)
    env.update(
        {
            "jobDateTime": date_time,
            "jobDate": job_date,
            "jobTime": job_time,
            "syncLogDateTimeDir": str(log_dir),
            "syncLogDateTimeFile": str(log_dir / f"sync-{date_time}.log"),
            "syncLogTempDir": str(log_dir / "tmp"),
        }
    )
    if db_config is not None:
        env["DB_CONFIG"] = str(db_config)
    env.update(extra or {})
    return env


def sync_work(
    command: Path,
    work_path: Path,
    archive_parent: Path,
    logs_root: Path,
    *,
    replace: bool = False,
    db_config: Path | None = None,
    timeout: int = 6 * 3600,
    now: datetime | None = None,
    move_work: bool = False,
    watch: ProgressWatch | None = None,
) -> SyncResult:
    """Run ``bash command [-A] -a archive_parent -s success_list work_path``.

    The script's own exit status and its success list decide; output goes to a log file per
    work (appended, never truncated). The script dies with this process (no orphan keeps
    copying). The work folder is left in place (the caller removes it once the sync is
    recorded) unless ``move_work``: then the script is told (``GLACIER_SYNC_MOVE_WORK=1``) that
    it may rename the work folder into the archive instead of copying it, which the default
    script does when both are on one file system; a script that ignores it copies. After a
    failed sync the work folder is where it was (the default script puts it back).

    The script's progress is the bytes its processes read and write: ``watch`` is ticked while
    they move and stops the script when it stalls (``Stalled``). Stopped, timed out or
    interrupted, the script and every process it started are killed.
    """
    work_id = work_path.name
    if not command.is_file():
        raise SyncError(
            f"sync command {command} does not exist; set sync_command (GLACIER_SYNC_SYNC_COMMAND)"
        )
    if not work_path.is_dir():
        raise SyncError(f"work folder {work_path} does not exist; debag the work again")
    now = now or datetime.now(UTC)
    log_dir = logs_root / "sync" / now.strftime("%Y-%m-%d")
    (log_dir / "tmp").mkdir(parents=True, exist_ok=True)
    log_file = log_dir / f"{work_id}.log"
    success_list = log_dir / "tmp" / f"{work_id}-{now.strftime('%H%M%S%f')}.success"
    success_list.unlink(missing_ok=True)
    argv = ["bash", str(command)]
    if replace:
        argv.append("-A")
    argv += ["-a", str(archive_parent), "-s", str(success_list), str(work_path)]
    moves = {"GLACIER_SYNC_MOVE_WORK": "1" if move_work else "0"}
    if move_work:
        moves["GLACIER_SYNC_PYTHON"] = sys.executable
    env = job_environment(log_dir, now, db_config, moves)
    before = _identity(work_path)
    with log_file.open("a", encoding="utf-8") as out:
        out.write(f"=== {now.isoformat()} {' '.join(argv)}\n")
        out.flush()
        start = out.tell()
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            preexec_fn=_die_with_parent,
        )
        try:
            returncode = _wait_while_moving(proc, timeout, watch or no_watch())
        except subprocess.TimeoutExpired as exc:
            raise SyncTimeout(
                f"work {work_id}: sync timed out after {timeout} s; see {log_file}"
            ) from exc
        out.write(f"=== exit status {returncode}\n")
    if returncode != 0:
        output = _read_from(log_file, start)
        if "No space left on device" in output or "Disk quota exceeded" in output:
            raise DiskFull(
                f"work {work_id}: no space left in {archive_parent} during the sync; free space "
                f"there, the sync is tried again on the next run. Log: {log_file}"
            )
        raise SyncError(
            f"work {work_id}: sync command exited with status {returncode}; "
            f"{_work_folder_note(work_path)}. Log: {log_file}{_tail(log_file)}"
        )
    listed = success_list.read_text(encoding="utf-8").split() if success_list.exists() else []
    success_list.unlink(missing_ok=True)
    if work_id not in listed:
        raise SyncError(
            f"work {work_id}: sync command exited 0 but did not list the work in its success "
            f"list; {_work_folder_note(work_path)}. Log: {log_file}"
        )
    archived = archive_parent / work_id
    moved = not work_path.exists() and before is not None and _identity(archived) == before
    return SyncResult(work_id, archived, log_file, moved)


def _work_folder_note(work_path: Path) -> str:
    if work_path.is_dir():
        return f"the work folder {work_path} is kept"
    return f"the work folder {work_path} is gone; the next try debags the zip again"


def _identity(path: Path) -> tuple[int, int] | None:
    """(device, inode) of ``path``; None when it is gone."""
    try:
        stat = path.stat()
    except OSError:
        return None
    return stat.st_dev, stat.st_ino


def _load_prctl():
    with contextlib.suppress(OSError, AttributeError):
        return ctypes.CDLL(None, use_errno=True).prctl
    return None


_PRCTL = _load_prctl()  # resolved before any fork: the child only calls it


POLL_SECONDS = 1.0


def _wait_while_moving(proc: subprocess.Popen, timeout: float, watch: ProgressWatch) -> int:
    """The script's exit status. Every ``POLL_SECONDS`` the watch is ticked when the script's
    processes moved bytes (else only asked whether the phase was stopped: ``Stalled``); past
    ``timeout`` seconds, ``TimeoutExpired``. Whatever ends the wait early kills the tree."""
    deadline = time.monotonic() + timeout
    before: dict[int, int | None] = {}
    try:
        while True:
            try:
                return proc.wait(timeout=min(POLL_SECONDS, max(0.0, deadline - time.monotonic())))
            except subprocess.TimeoutExpired:
                if time.monotonic() >= deadline:
                    raise
            now = process_tree.io_counts(process_tree.tree(proc.pid))
            if process_tree.moved(before, now):
                watch.tick()
            else:
                watch.check()
            before = now
    except BaseException:
        process_tree.kill_tree(proc.pid)
        proc.wait()
        raise


def _die_with_parent() -> None:
    """In the child: receive SIGKILL when the parent dies (Linux ``PR_SET_PDEATHSIG``)."""
    if _PRCTL is not None:
        _PRCTL(1, signal.SIGKILL)


def _read_from(log_file: Path, offset: int) -> str:
    try:
        with log_file.open("rb") as handle:
            handle.seek(offset)
            return handle.read().decode("utf-8", errors="replace")
    except OSError:
        return ""


def _tail(log_file: Path, lines: int = 5) -> str:
    try:
        text = log_file.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        return ""
    return "\n  " + "\n  ".join(text[-lines:])
