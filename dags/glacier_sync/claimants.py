"""Who holds a claim: run ids that name their host and process, so a dead one is recognised.

A ``glacier-sync`` command claims works as ``glacier-sync@<host>:<pid>:<nonce>``. When that host
is this host and the process is gone, the claim is dead at once: a re-run after a crash takes
the work over without waiting for the lease to run out. Any other claimant (an Airflow run,
another host) is trusted until its lease runs out.
"""

from __future__ import annotations

import os
import re
import socket
import uuid

_LOCAL_RUN = re.compile(r"^glacier-sync@(?P<host>[^:]+):(?P<pid>\d+):")


def this_host() -> str:
    """The short host name (a container's id in Docker)."""
    return socket.gethostname().split(".")[0]


def local_run_id() -> str:
    """A run id for a command run on this host: ``glacier-sync@<host>:<pid>:<nonce>``."""
    return f"glacier-sync@{this_host()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def local_run_prefix() -> str:
    """The prefix shared by the run ids of this host (for a LIKE query)."""
    return f"glacier-sync@{this_host()}:"


def pid_alive(pid: int) -> bool:
    """True when a process with this id exists on this host."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def is_dead_local_run(run_id: str | None) -> bool:
    """True when ``run_id`` is a command of this host whose process is gone."""
    match = _LOCAL_RUN.match(run_id or "")
    if not match or match["host"] != this_host():
        return False
    return int(match["pid"]) != os.getpid() and not pid_alive(int(match["pid"]))
