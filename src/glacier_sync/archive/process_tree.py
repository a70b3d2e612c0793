"""A child process and every process it started, read from ``/proc``: whether the tree still
moves bytes (read or written through system calls), and a kill that reaches all of it (the sync
script's ``cp`` or ``rsync`` as well as the script)."""

from __future__ import annotations

import contextlib
import os
import signal
from pathlib import Path

PROC = Path("/proc")


def tree(root: int) -> list[int]:
    """``root`` and its descendants alive now (``root`` first; just ``root`` without /proc)."""
    children: dict[int, list[int]] = {}
    for entry in PROC.glob("[0-9]*"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            stat = (entry / "stat").read_text()
            parent = int(stat[stat.rindex(")") + 2 :].split()[1])  # after "pid (comm) state"
            children.setdefault(parent, []).append(int(entry.name))
    found, todo = [], [root]
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo.extend(children.get(pid, []))
    return found


def io_counts(pids: list[int]) -> dict[int, int | None]:
    """Bytes each process has read and written through system calls (``rchar + wchar``);
    None where they cannot be read (gone, or no /proc/<pid>/io)."""
    counts: dict[int, int | None] = {}
    for pid in pids:
        try:
            fields = dict(
                line.split(": ") for line in (PROC / str(pid) / "io").read_text().splitlines()
            )
            counts[pid] = int(fields["rchar"]) + int(fields["wchar"])
        except (OSError, KeyError, ValueError):
            counts[pid] = None
    return counts


def moved(before: dict[int, int | None], now: dict[int, int | None]) -> bool:
    """Whether the tree made progress between two readings: a process started, or one moved
    bytes. Counts that cannot be read count as progress (never a stall by ignorance)."""
    return any(
        count is None or before.get(pid) is None or count > before[pid]
        for pid, count in now.items()
    )


def kill_tree(root: int) -> None:
    """SIGKILL ``root`` and everything it started. The tree is frozen first (SIGSTOP, until a
    scan finds no process it has not stopped), so nothing forks or is re-parented meanwhile."""
    stopped: list[int] = []
    for _ in range(10):
        fresh = [pid for pid in tree(root) if pid not in stopped]
        if not fresh:
            break
        for pid in fresh:
            _signal(pid, signal.SIGSTOP)
        stopped += fresh
    for pid in reversed(stopped):  # the deepest first, the script last
        _signal(pid, signal.SIGKILL)


def _signal(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.kill(pid, sig)
