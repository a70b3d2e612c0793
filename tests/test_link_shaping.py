"""benchmarks/link_shaping.py slows what one loopback port sends, and only it; the shaping a
killed benchmark left is found and removed by scripts/clean-test-leftovers.sh."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time

import pytest
from helpers import REPO

sys.path.insert(0, str(REPO / "benchmarks"))
import link_shaping  # noqa: E402

# The loopback's root queueing discipline is the machine's: a serial tier, not beside the fast ones.
pytestmark = pytest.mark.services
PAYLOAD = 12 * 1024 * 1024
MBIT = 80  # 10 MB/s: the payload takes 1.2 s through the shaped port


class _Sender:
    """A loopback server that sends PAYLOAD bytes to each connection."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        chunk = b"x" * (1 << 20)
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn:
                for _ in range(PAYLOAD // len(chunk)):
                    conn.sendall(chunk)

    def seconds_to_fetch(self) -> float:
        started = time.monotonic()
        got = 0
        with socket.create_connection(("127.0.0.1", self.port), timeout=30) as conn:
            while got < PAYLOAD:
                data = conn.recv(1 << 20)
                assert data, f"the server sent {got} of {PAYLOAD} bytes"
                got += len(data)
        return time.monotonic() - started


def _usable() -> None:
    refused = "needs root" if os.geteuid() != 0 else link_shaping.refusal()
    if refused:
        if os.environ.get("CI"):
            pytest.fail(f"CI runs as root with tc: {refused}")
        pytest.skip(refused)


def _leftovers(tmp_path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "TMPDIR": str(tmp_path), "LEFTOVER_KINDS": "shaping"}
    script = REPO / "scripts" / "clean-test-leftovers.sh"
    return subprocess.run(
        ["bash", str(script), *args], env=env, capture_output=True, text=True, timeout=60
    )


def test_the_shaped_port_is_slowed_and_no_other_and_a_left_shaping_is_removed(tmp_path):
    """One test: both halves change the one root queueing discipline of the loopback."""
    _usable()
    shaped, other = _Sender(), _Sender()
    try:
        with link_shaping.shaped(shaped.port, MBIT):
            assert link_shaping.active()
            slow, fast = shaped.seconds_to_fetch(), other.seconds_to_fetch()
        assert not link_shaping.active(), "the shaping is taken off when the block ends"
        assert slow >= 0.8 * PAYLOAD / (MBIT * 125_000), f"{slow:.2f} s: not shaped"
        assert fast < slow / 3, f"the other port was slowed too ({fast:.2f} s, {slow:.2f} s)"
    finally:
        link_shaping.remove()
        shaped.sock.close()
        other.sock.close()

    left = link_shaping.shaped(1, MBIT)
    left.__enter__()  # never left: as a benchmark killed with -9 inside the block
    try:
        check = _leftovers(tmp_path, "--check")
        assert check.returncode == 1, check.stdout + check.stderr
        assert "left over: shaping of the loopback link" in check.stdout, check.stdout
        assert link_shaping.active(), "--check removes nothing"
        clean = _leftovers(tmp_path)
        assert clean.returncode == 0, clean.stdout + clean.stderr
        assert not link_shaping.active()
        assert "nothing left over" in _leftovers(tmp_path, "--check").stdout
    finally:
        link_shaping.remove()
