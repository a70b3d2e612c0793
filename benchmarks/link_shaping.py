"""A link of a given speed between a loopback server and its clients (Linux ``tc``, root).

On loopback, with the server on the same cores, a download is bound by the CPU, not by a link:
a client that checks what it fetches loses to one that checks nothing by exactly its hashing.
``shaped(port, mbit)`` limits what the server on ``port`` sends to ``mbit`` megabits a second
(an HTB class for the traffic from that port only; everything else on loopback is untouched),
so that the side-by-side also shows each client on a link it cannot outrun. ``remove()`` takes
the shaping away; after a run killed with -9, scripts/clean-test-leftovers.sh removes it (the
same handle). All loopback traffic passes the HTB root; only the port's is limited.
"""

from __future__ import annotations

import contextlib
import shutil
import subprocess
from collections.abc import Iterator

DEVICE = "lo"
HANDLE = "bdc0:"  # the root queueing discipline this module adds, and only removes


def _tc(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(["tc", *args], capture_output=True, text=True, check=check)


def active() -> bool:
    """Whether this module's shaping is on the loopback device."""
    if shutil.which("tc") is None:
        return False
    shown = _tc("qdisc", "show", "dev", DEVICE, check=False).stdout
    return f"qdisc htb {HANDLE}" in shown


def remove() -> None:
    """Take this module's shaping off the loopback device (nothing else is touched)."""
    if active():
        _tc("qdisc", "del", "dev", DEVICE, "root", "handle", HANDLE, check=False)


def refusal() -> str | None:
    """Why shaping cannot be used here, in one line, or None."""
    if shutil.which("tc") is None:
        return "--link-mbps needs tc (Debian package iproute2)"
    shown = _tc("qdisc", "show", "dev", DEVICE, check=False)
    if shown.returncode != 0:
        return f"--link-mbps: tc cannot read {DEVICE}: {shown.stderr.strip()}"
    if "qdisc noqueue" not in shown.stdout and not active():
        return f"--link-mbps: {DEVICE} already has a queueing discipline; leaving it alone"
    return None


@contextlib.contextmanager
def shaped(port: int, mbit: int) -> Iterator[None]:
    """Traffic from 127.0.0.1:``port`` limited to ``mbit`` Mbit/s while the block runs: an HTB
    root whose one class is the link (other traffic is unclassified, so HTB sends it directly)."""
    remove()
    burst = max(1 << 20, mbit * 1_000_000 // 8 // 250)  # 4 ms of the rate, 1 MiB at least
    link = f"{HANDLE[:-1]}:3"
    try:
        _tc("qdisc", "add", "dev", DEVICE, "root", "handle", HANDLE, "htb", "r2q", "1000")
        _tc(
            "class", "add", "dev", DEVICE, "parent", HANDLE, "classid", link, "htb",
            "rate", f"{mbit}mbit", "ceil", f"{mbit}mbit", "burst", str(burst), "cburst", str(burst),
        )  # fmt: skip
        _tc(
            "filter", "add", "dev", DEVICE, "parent", HANDLE, "protocol", "ip", "prio", "1",
            "u32", "match", "ip", "sport", str(port), "0xffff", "flowid", link,
        )  # fmt: skip
    except subprocess.CalledProcessError as exc:
        remove()
        raise SystemExit(f"--link-mbps: tc refused the shaping: {exc.stderr.strip()}") from None
    try:
        yield
    finally:
        remove()
