"""Room checks for tests and benchmarks: refuse, in one line, a run the machine cannot hold.

moto keeps about 2.6 x an object in memory while it takes an upload (measured: 1,354 MiB of
RSS for 512 MiB) at about 20 MB/s, so objects above ``MOTO_MAX_OBJECT`` belong on s3rver; a
benchmark's work folder holds several copies of its object, so the disk is checked first too.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

MIB = 1024 * 1024
MOTO_MAX_OBJECT = 256 * MIB
MOTO_MEMORY_FACTOR = 2.6


class NoRoom(SystemExit):
    """The machine lacks what a run needs; the message names both (printed, exit status 1)."""


def available_memory() -> int:
    """Bytes of memory available to new processes (MemAvailable)."""
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * 1024
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")


def require_moto_room(size: int, what: str) -> None:
    """Refuse an object of ``size`` bytes on moto: too big for it, or for this machine's memory."""
    if size > MOTO_MAX_OBJECT:
        raise NoRoom(
            f"{what} is {size // MIB} MiB, more than moto takes ({MOTO_MAX_OBJECT // MIB} MiB: it "
            f"holds about {MOTO_MEMORY_FACTOR} x an object in memory while it is uploaded); put "
            "objects this large on s3rver (benchmarks/bench_large_works.py)"
        )
    need, free = int(size * MOTO_MEMORY_FACTOR), available_memory()
    if need > free:
        raise NoRoom(
            f"{what} needs about {need // MIB} MiB of memory in moto but only {free // MIB} MiB "
            "are available; free memory or use a smaller object"
        )


def require_disk(folder: Path, need: int, what: str) -> None:
    """Refuse a run that needs ``need`` bytes in ``folder`` (or its nearest existing parent)."""
    present = folder
    while not present.exists() and present != present.parent:
        present = present.parent
    free = shutil.disk_usage(present).free
    if need > free:
        raise NoRoom(
            f"{what} needs {need // MIB} MiB in {folder} but only {free // MIB} MiB are free; "
            "free space there or pass a smaller size or another --workdir"
        )
