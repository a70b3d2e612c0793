"""Who holds a claim: run ids that name their host and process, so a dead one is recognised.

A ``glacier-sync`` command claims works as ``glacier-sync@<host>:<pid>.<start>:<nonce>`` (``start``:
the process's start time, so a reused pid is not taken for the dead process). When that host is
this host and that process is gone, the claim is dead at once: a re-run after a crash takes
the work over without waiting for the lease to run out. Any other claimant (an Airflow run,
another host) is trusted until its lease runs out.
"""

from __future__ import annotations

import os
import re
import socket
import uuid
from pathlib import Path

AIRFLOW_RUN_PREFIX = "airflow:"  # an Airflow task claims as ``airflow:<its DAG run's id>``
_LOCAL_RUN = re.compile(r"^glacier-sync@(?P<host>[^:]+):(?P<pid>\d+)(?:\.(?P<start>\d+))?:")


def this_host() -> str:
    """The short host name (a container's id in Docker)."""
    return socket.gethostname().split(".")[0]


def local_run_id() -> str:
    """A run id for a command run on this host: ``glacier-sync@<host>:<pid>.<start>:<nonce>``."""
    pid = os.getpid()
    return f"glacier-sync@{this_host()}:{pid}.{process_start(pid) or 0}:{uuid.uuid4().hex[:8]}"


def airflow_run_id(claimant: str | None) -> str | None:
    """The Airflow DAG run id of a claimant (``airflow:<run id>``); None for a ``glacier-sync``
    command's. An id with neither form is taken as a DAG run id as it is."""
    if not claimant or _LOCAL_RUN.match(claimant):
        return None
    return claimant.removeprefix(AIRFLOW_RUN_PREFIX)


def local_run_prefix() -> str:
    """The prefix shared by the run ids of this host (for a LIKE query)."""
    return f"glacier-sync@{this_host()}:"


def _stat_fields(pid: int) -> list[str] | None:
    """Fields 3… of ``/proc/<pid>/stat`` (after the name, which may hold spaces), or None."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def process_start(pid: int) -> int | None:
    """The start time of process ``pid`` (clock ticks since boot), None when it does not exist."""
    fields = _stat_fields(pid)
    return int(fields[19]) if fields else None  # field 22


def pid_alive(pid: int, start: int | None = None) -> bool:
    """True when process ``pid`` runs on this host: not a zombie (killed, not yet reaped) and,
    given ``start``, the one that started then (a pid given to a new process does not count)."""
    fields = _stat_fields(pid)
    if fields is None:
        try:
            os.kill(pid, 0)  # no /proc: ask the kernel
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True
    if fields[0] in ("Z", "X"):
        return False
    return not start or int(fields[19]) == start


def is_dead_local_run(run_id: str | None) -> bool:
    """True when ``run_id`` is a command of this host whose process is gone."""
    match = _LOCAL_RUN.match(run_id or "")
    if not match or match["host"] != this_host():
        return False
    pid, start = int(match["pid"]), int(match["start"] or 0)
    return not pid_alive(pid, start)
