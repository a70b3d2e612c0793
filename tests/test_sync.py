"""Sync: the default syncOneWork.sh and the Python side that runs it."""

from __future__ import annotations

import subprocess
from datetime import UTC, datetime
from pathlib import Path

import pytest

from glacier_sync.errors import SyncError
from glacier_sync.settings import DEFAULT_SYNC_COMMAND
from glacier_sync.sync import archive_parent_for_key, job_environment, sync_work


def _work(root: Path, work_id: str = "W2KG209837", text: str = "page one") -> Path:
    work = root / "work" / work_id
    (work / "images").mkdir(parents=True)
    (work / "images" / "p1.txt").write_text(text)
    (work / f"{work_id}.bag").mkdir()
    (work / f"{work_id}.bag" / "bagit.txt").write_text("BagIt-Version: 0.97\n")
    return work


def _script(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "fake-sync.sh"
    path.write_text("#!/usr/bin/env bash\n" + body)
    return path


def test_archive_parent_for_key(tmp_path):
    key = "Archive1/37/W2KG209837/W2KG209837.bag.zip"
    assert archive_parent_for_key(tmp_path, key, "W2KG209837") == tmp_path / "Archive1" / "37"
    assert archive_parent_for_key(tmp_path, "W1.bag.zip", "W1") == tmp_path
    assert archive_parent_for_key(tmp_path, "in/W1.zip", "W1") == tmp_path / "in"
    with pytest.raises(SyncError, match="climbs out"):
        archive_parent_for_key(tmp_path, "../../W1/W1.zip", "W1")


def test_default_script_places_verifies_and_removes_work(tmp_path):
    work = _work(tmp_path)
    parent = tmp_path / "archive" / "Archive1" / "37"
    result = sync_work(DEFAULT_SYNC_COMMAND, work, parent, tmp_path / "logs")
    archived = parent / "W2KG209837"
    assert result.archive_path == archived
    assert (archived / "images" / "p1.txt").read_text() == "page one"
    assert (archived / "W2KG209837.bag" / "bagit.txt").is_file()
    assert not work.exists(), "the work folder goes only after success"
    assert "archived" in result.log_file.read_text()
    assert not list(parent.glob(".*")), "no staging folder left behind"


def test_default_script_is_idempotent_and_refuses_to_replace_without_A(tmp_path):
    parent = tmp_path / "archive"
    sync_work(DEFAULT_SYNC_COMMAND, _work(tmp_path), parent, tmp_path / "logs")
    result = sync_work(DEFAULT_SYNC_COMMAND, _work(tmp_path), parent, tmp_path / "logs")
    assert "identical" in result.log_file.read_text()
    changed = _work(tmp_path, text="page one, rescanned")
    with pytest.raises(SyncError, match="exited with status 3"):
        sync_work(DEFAULT_SYNC_COMMAND, changed, parent, tmp_path / "logs")
    assert changed.is_dir(), "kept for a retry"
    assert (parent / "W2KG209837" / "images" / "p1.txt").read_text() == "page one"
    sync_work(DEFAULT_SYNC_COMMAND, changed, parent, tmp_path / "logs", replace=True)
    assert (parent / "W2KG209837" / "images" / "p1.txt").read_text() == "page one, rescanned"


def test_default_script_command_line_errors(tmp_path):
    def run(*args):
        return subprocess.run(
            ["bash", str(DEFAULT_SYNC_COMMAND), *args],  # noqa: E731
            capture_output=True,
            text=True,
        )

    assert run("-h").returncode == 0 and "archiveParent" in run("-h").stdout
    assert run("-a", str(tmp_path)).returncode == 2
    assert run("-a", str(tmp_path), str(tmp_path / "missing")).returncode == 2
    assert "-a archiveParent is required" in run(str(tmp_path)).stderr
    assert run("-Z", str(tmp_path)).returncode == 2


def test_failing_script_keeps_work_and_log_is_appended(tmp_path):
    script = _script(tmp_path, 'echo "cannot reach the archive" >&2\nexit 7\n')
    work = _work(tmp_path)
    for _ in range(2):
        with pytest.raises(SyncError, match="status 7") as info:
            sync_work(script, work, tmp_path / "archive", tmp_path / "logs")
        assert "cannot reach the archive" in str(info.value)
        assert work.is_dir()
    log_files = list((tmp_path / "logs").rglob("W2KG209837.log"))
    assert len(log_files) == 1
    assert log_files[0].read_text().count("cannot reach the archive") == 2


def test_script_status_not_a_pipe_decides(tmp_path):
    script = _script(tmp_path, "false | tee /dev/null\nexit 0\n")
    with pytest.raises(SyncError, match="did not list the work"):
        sync_work(script, _work(tmp_path), tmp_path / "archive", tmp_path / "logs")


def test_script_receives_archive_command_line_and_environment(tmp_path):
    record = tmp_path / "seen.txt"
    script = _script(
        tmp_path,
        f"""
echo "$@" > {record}
echo "$jobDate|$jobTime|$jobDateTime|$syncLogDateTimeDir|$syncLogTempDir|$DB_CONFIG" >> {record}
while getopts "Aa:s:" o; do case $o in s) list=$OPTARG;; esac; done
shift $((OPTIND-1)); basename "$1" >> "$list"
""",
    )
    db_config = tmp_path / "db.cfg"
    now = datetime(2026, 11, 21, 8, 30, 5, tzinfo=UTC)
    sync_work(
        script,
        _work(tmp_path),
        tmp_path / "arch",
        tmp_path / "logs",
        replace=True,
        db_config=db_config,
        now=now,
    )
    argv, env_line = record.read_text().splitlines()
    assert argv.startswith(f"-A -a {tmp_path}/arch -s ")
    assert argv.endswith(f"{tmp_path}/work/W2KG209837")
    assert env_line.split("|")[:3] == ["2026-11-21", "08-30-05", "2026-11-21_08-30-05"]
    assert env_line.endswith(f"tmp|{db_config}")


def test_missing_command_or_work(tmp_path):
    with pytest.raises(SyncError, match="does not exist; set sync_command"):
        sync_work(tmp_path / "nope.sh", _work(tmp_path), tmp_path / "a", tmp_path / "l")
    with pytest.raises(SyncError, match="debag the work again"):
        sync_work(DEFAULT_SYNC_COMMAND, tmp_path / "nowork", tmp_path / "a", tmp_path / "l")


def test_job_environment_names(tmp_path):
    env = job_environment(tmp_path, datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC), None)
    assert env["syncLogDateTimeFile"].endswith("sync-2026-01-02_03-04-05.log")
    assert "DB_CONFIG" not in env or env["DB_CONFIG"] == env.get("DB_CONFIG")
