"""Fault injection points: ``kill -9`` at a named instant, for the crash-safety tests.

Off unless ``GLACIER_SYNC_FAULT_FILE`` names a file. That file holds one line,
``<point> [<n>] [self|group]``: the ``n``-th time (default 1) this process passes ``<point>``,
the file is renamed to ``<file>.fired`` (so a re-run does not fire again and the test sees which
point fired) and SIGKILL is sent to the whole process group (default) or to this process only
(``self``: an Airflow task process, whose group holds the executor). The default sync script
reads the same file for its own points (``sync:copied``, ``sync:before-rename``,
``sync:renamed``). Every point is listed in docs/reliability.md.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

FAULT_FILE_ENV = "GLACIER_SYNC_FAULT_FILE"
_passes: dict[str, int] = {}


def checkpoint(point: str) -> None:
    """Die here with SIGKILL when the fault file names ``point`` (and its count is reached)."""
    path = os.environ.get(FAULT_FILE_ENV)
    if not path:
        return
    try:
        words = Path(path).read_text(encoding="utf-8").split()
    except OSError:
        return
    if not words or words[0] != point:
        return
    nth = int(words[1]) if len(words) > 1 and words[1].isdigit() else 1
    _passes[point] = _passes.get(point, 0) + 1
    if _passes[point] < nth:
        return
    try:
        os.replace(path, path + ".fired")
    except OSError:
        return  # another process fired it first
    if "self" in words[1:]:
        os.kill(os.getpid(), signal.SIGKILL)
    os.killpg(os.getpgrp(), signal.SIGKILL)
