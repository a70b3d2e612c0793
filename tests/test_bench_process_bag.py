"""benchmarks/bench_process_bag.py runs end to end at a tiny size (its figures are not tested)."""

from __future__ import annotations

import subprocess
import sys

import pytest
from helpers import REPO

pytestmark = pytest.mark.integration


def test_bench_process_bag_runs_at_a_tiny_size(tmp_path):
    result = subprocess.run(
        [
            sys.executable,
            str(REPO / "benchmarks" / "bench_process_bag.py"),
            "--size",
            "256K",
            "--files",
            "4",
            "--reps",
            "1",
            "--workdir",
            str(tmp_path / "bench"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    rows = {
        line.split("  ")[0]: line.split()
        for line in result.stdout.splitlines()
        if line.startswith(("process-bag", "naive"))
    }
    assert {"process-bag", "process-bag (copy)", "naive"} <= set(rows), result.stdout
    assert rows["naive"][-1] == "1.00x"
    for row in rows.values():
        assert float(row[-1].rstrip("x")) > 0, row
    if "naive, other fs" not in rows:
        assert "no run with the archive on another file system" in result.stdout
    assert not any(p.is_mount() for p in (tmp_path / "bench").iterdir()), "tmpfs unmounted"
