"""Tests and benchmarks refuse, in one line and before anything starts, what this machine or
moto cannot hold (tools/machine_room.py)."""

from __future__ import annotations

import subprocess
import sys

import pytest
from demo_world import World
from helpers import REPO
from machine_room import MIB, NoRoom, require_disk, require_moto_room


@pytest.mark.unit
def test_an_object_too_big_for_moto_is_refused_before_any_upload(tmp_path):
    big = tmp_path / "W1BIG.bag.zip"
    with big.open("wb") as sparse:
        sparse.truncate(300 * MIB)
    world = World("http://127.0.0.1:9", "bucket", "queue", "dlq")  # nothing listens there
    with pytest.raises(NoRoom) as info:
        world.upload_archived(big, "Archive0/00/W1BIG/W1BIG.bag.zip")
    message = str(info.value)
    assert "W1BIG.bag.zip is 300 MiB, more than moto takes (256 MiB" in message
    assert "put objects this large on s3rver" in message and "\n" not in message
    assert info.value.code == message, "exits the benchmark with the line (status 1 and text)"


@pytest.mark.unit
def test_moto_room_counts_its_memory(monkeypatch):
    import machine_room

    monkeypatch.setattr(machine_room, "available_memory", lambda: 100 * MIB)
    with pytest.raises(NoRoom, match=r"needs about 166 MiB of memory in moto but only 100 MiB"):
        require_moto_room(64 * MIB, "the bag W1X.bag.zip")
    require_moto_room(32 * MIB, "the bag W1Y.bag.zip")


@pytest.mark.unit
def test_disk_room_names_the_folder_the_need_and_the_free_space(tmp_path):
    with pytest.raises(NoRoom, match=r"needs \d+ MiB in .*/not-yet but only \d+ MiB are free"):
        require_disk(tmp_path / "not-yet", 1 << 60, "bench_debag.py")
    require_disk(tmp_path / "not-yet", MIB, "bench_debag.py")
    assert not (tmp_path / "not-yet").exists(), "a check creates nothing"


@pytest.mark.integration
@pytest.mark.parametrize(
    ("script", "args"),
    [
        ("bench_debag.py", ["--size", "100000G", "--shapes", "large"]),
        ("bench_process_bag.py", ["--size", "100000G"]),
    ],
)
def test_a_benchmark_without_room_refuses_in_one_line_and_creates_nothing(tmp_path, script, args):
    workdir = tmp_path / "work"
    result = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / script), *args, "--workdir", str(workdir)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1, result.stdout + result.stderr
    assert result.stderr.startswith(f"{script} needs "), result.stderr
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
    assert not workdir.exists()
