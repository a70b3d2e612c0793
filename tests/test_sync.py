"""Sync: the default syncOneWork.sh and the Python side that runs it."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest

from glacier_sync.archive.root import (
    ensure_parent,
    remove_if_empty,
    sweep_staging,
    verify_archive_root,
)
from glacier_sync.archive.sync import archive_parent_for_key, job_environment, sync_work
from glacier_sync.errors import ArchiveUnavailable, DiskFull, SyncError
from glacier_sync.records.claimants import is_dead_local_run, local_run_id, process_start
from glacier_sync.settings import DEFAULT_SYNC_COMMAND

pytestmark = pytest.mark.integration


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


def test_default_script_places_and_verifies_work(tmp_path):
    work = _work(tmp_path)
    parent = tmp_path / "archive" / "Archive1" / "37"
    parent.mkdir(parents=True)
    result = sync_work(DEFAULT_SYNC_COMMAND, work, parent, tmp_path / "logs")
    archived = parent / "W2KG209837"
    assert result.archive_path == archived
    assert (archived / "images" / "p1.txt").read_text() == "page one"
    assert (archived / "W2KG209837.bag" / "bagit.txt").is_file()
    assert work.is_dir(), "the caller removes the work folder once the sync is recorded"
    assert "archived" in result.log_file.read_text()
    assert not list(parent.glob(".*")), "no staging folder left behind"
    assert not result.moved, "copied: the script was not allowed to move the work folder"


def test_default_script_creates_nothing_above_the_work(tmp_path):
    parent = tmp_path / "unmounted" / "Archive1" / "37"
    with pytest.raises(SyncError, match="status 2") as info:
        sync_work(DEFAULT_SYNC_COMMAND, _work(tmp_path), parent, tmp_path / "logs")
    assert "is the archive mounted" in str(info.value)
    assert not (tmp_path / "unmounted").exists()


def _fake_cp(tmp_path: Path, after: str) -> dict[str, str]:
    """PATH with a `cp` that copies, then runs ``after`` (bash, $3 = the staging folder)."""
    bin_dir = tmp_path / "fakebin"
    bin_dir.mkdir(exist_ok=True)
    fake = bin_dir / "cp"
    fake.write_text(f'#!/usr/bin/env bash\n/bin/cp "$@" || exit $?\n{after}\n')
    fake.chmod(0o755)
    return {"PATH": f"{bin_dir}:{os.environ['PATH']}"}


def test_a_copy_that_appears_during_the_sync_is_not_replaced_without_A(tmp_path, monkeypatch):
    parent = tmp_path / "archive"
    parent.mkdir()
    dest = parent / "W2KG209837"
    # Another sync of the same work installs a different copy while this one verifies its own.
    env = _fake_cp(tmp_path, f"mkdir -p {dest} && echo other > {dest}/other.txt")
    monkeypatch.setenv("PATH", env["PATH"])
    with pytest.raises(SyncError, match="status 3") as info:
        sync_work(DEFAULT_SYNC_COMMAND, _work(tmp_path), parent, tmp_path / "logs")
    assert "refusing to replace it" in str(info.value)
    assert sorted(p.name for p in dest.iterdir()) == ["other.txt"], "the other copy stays whole"
    assert not list(parent.glob(".W2KG209837.*")), "staging removed on failure"


def test_an_identical_copy_that_appears_during_the_sync_is_success(tmp_path, monkeypatch):
    parent = tmp_path / "archive"
    parent.mkdir()
    work = _work(tmp_path)
    env = _fake_cp(tmp_path, f"[ -e {parent}/W2KG209837 ] || /bin/cp -a {work} {parent}/")
    monkeypatch.setenv("PATH", env["PATH"])
    result = sync_work(DEFAULT_SYNC_COMMAND, work, parent, tmp_path / "logs")
    assert "archived meanwhile by another sync, identical" in result.log_file.read_text()
    assert not list(parent.glob(".W2KG209837.*"))


def test_a_failed_copy_leaves_no_staging(tmp_path, monkeypatch):
    parent = tmp_path / "archive"
    parent.mkdir()
    env = _fake_cp(tmp_path, 'echo "cp: error writing: No space left on device" >&2; exit 1')
    monkeypatch.setenv("PATH", env["PATH"])
    with pytest.raises(DiskFull, match=f"no space left in {parent}"):
        sync_work(DEFAULT_SYNC_COMMAND, _work(tmp_path), parent, tmp_path / "logs")
    assert list(parent.iterdir()) == [], "neither the work nor its staging copy"


def test_default_script_is_idempotent_and_refuses_to_replace_without_A(tmp_path):
    parent = tmp_path / "archive"
    parent.mkdir()
    sync_work(DEFAULT_SYNC_COMMAND, _work(tmp_path), parent, tmp_path / "logs")
    shutil.rmtree(tmp_path / "work")
    result = sync_work(DEFAULT_SYNC_COMMAND, _work(tmp_path), parent, tmp_path / "logs")
    assert "identical" in result.log_file.read_text()
    shutil.rmtree(tmp_path / "work")
    changed = _work(tmp_path, text="page one, rescanned")
    with pytest.raises(SyncError, match="exited with status 3"):
        sync_work(DEFAULT_SYNC_COMMAND, changed, parent, tmp_path / "logs")
    assert changed.is_dir(), "kept for a retry"
    assert (parent / "W2KG209837" / "images" / "p1.txt").read_text() == "page one"
    sync_work(DEFAULT_SYNC_COMMAND, changed, parent, tmp_path / "logs", replace=True)
    assert (parent / "W2KG209837" / "images" / "p1.txt").read_text() == "page one, rescanned"
    assert not list(parent.glob(".*")), "the replaced copy is gone once the new one is in"


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


def test_job_environment_names(tmp_path, monkeypatch):
    monkeypatch.delenv("DB_CONFIG", raising=False)
    when = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    env = job_environment(tmp_path, when, None)
    assert env["syncLogDateTimeFile"].endswith("sync-2026-01-02_03-04-05.log")
    assert "DB_CONFIG" not in env, "no database config unless one is given"
    assert job_environment(tmp_path, when, tmp_path / "db.cfg")["DB_CONFIG"] == str(
        tmp_path / "db.cfg"
    )


def _staging_name(work_id: str, start: int | None = None) -> str:
    """A staging name of this process (``start`` None: its real start time)."""
    start = process_start(os.getpid()) if start is None else start
    return f".{work_id}.syncing.{socket.gethostname().split('.')[0]}.{os.getpid()}.{start}"


def test_sweep_removes_dead_staging_keeps_live_and_puts_back_an_interrupted_replace(tmp_path):
    parent = tmp_path / "Archive0" / "00"
    dead = parent / ".W1.syncing.otherhost.4242"
    previous = parent / ".W1.replaced.otherhost.4242"
    live = parent / _staging_name("W1")
    reused_pid = parent / _staging_name("W1", start=1)  # same pid, another (dead) process
    neighbour = parent / ".W2.syncing.otherhost.1"
    for folder in (dead, previous, live, reused_pid, neighbour):
        (folder / "images").mkdir(parents=True)
    (previous / "images" / "p1.txt").write_text("the archived copy")
    removed = sweep_staging(parent, "W1")
    assert sorted(removed) == sorted([dead, reused_pid])
    assert (parent / "W1" / "images" / "p1.txt").read_text() == "the archived copy"
    assert live.is_dir() and neighbour.is_dir(), "a running sync and other works are left alone"


def test_a_dead_local_claimant_is_recognised_even_when_its_pid_is_reused():
    own = local_run_id()
    assert not is_dead_local_run(own), "this process is alive"
    host, rest = own.removeprefix("glacier-sync@").split(":", 1)
    pid = rest.split(".", 1)[0]
    assert is_dead_local_run(f"glacier-sync@{host}:{pid}.1:abcd"), "same pid, other start"
    assert is_dead_local_run(f"glacier-sync@{host}:999999999.5:abcd"), "no such process"
    assert not is_dead_local_run("glacier-sync@otherhost:1.1:abcd"), "another host: trusted"
    assert not is_dead_local_run("airflow:manual__2026"), "an Airflow run: its lease decides"
    zombie = subprocess.Popen(["true"])
    for _ in range(100):  # exited, not reaped: a zombie is a dead process
        if Path(f"/proc/{zombie.pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z":
            break
        time.sleep(0.05)
    start = process_start(zombie.pid)
    assert is_dead_local_run(f"glacier-sync@{host}:{zombie.pid}.{start}:abcd")
    zombie.wait()


def test_archive_root_checks(tmp_path):
    with pytest.raises(ArchiveUnavailable, match="does not exist: is the archive volume mounted"):
        verify_archive_root(tmp_path / "nfs")
    (tmp_path / "file").write_text("x")
    with pytest.raises(ArchiveUnavailable, match="is not a folder"):
        verify_archive_root(tmp_path / "file")
    with pytest.raises(ArchiveUnavailable, match="lacks its marker file .archive-root"):
        verify_archive_root(tmp_path, marker=".archive-root")
    (tmp_path / ".archive-root").write_text("")
    assert verify_archive_root(tmp_path, marker=".archive-root") == tmp_path
    with pytest.raises(ArchiveUnavailable, match="not a mount point"):
        verify_archive_root(tmp_path, must_be_mount=True)
    assert verify_archive_root(Path("/"), must_be_mount=True) == Path("/")
    assert not (tmp_path / "nfs").exists()


def test_ensure_parent_creates_group_folders_below_the_root_only(tmp_path):
    parent = tmp_path / "Archive0" / "00"
    assert ensure_parent(tmp_path, parent) == [tmp_path / "Archive0", parent]
    assert parent.is_dir() and ensure_parent(tmp_path, parent) == []
    created = ensure_parent(tmp_path, tmp_path / "Archive0" / "01" / "x")
    (tmp_path / "Archive0" / "01" / "keep").mkdir()
    remove_if_empty(created)
    assert not (tmp_path / "Archive0" / "01" / "x").exists()
    assert (tmp_path / "Archive0" / "01" / "keep").is_dir(), "a folder in use stays"
    (tmp_path / "Archive1").write_text("not a folder")
    with pytest.raises(ArchiveUnavailable, match="is not a folder"):
        ensure_parent(tmp_path, tmp_path / "Archive1" / "00")


def test_environment_failures_are_transient_work_failures_are_not():
    from botocore.exceptions import ClientError, EndpointConnectionError, NoCredentialsError
    from s3transfer.exceptions import RetriesExceededError

    from glacier_sync.errors import BagError, SyncTimeout, is_transient

    def client_error(code):
        return ClientError({"Error": {"Code": code, "Message": code}}, "GetObject")

    for exc in (
        EndpointConnectionError(endpoint_url="http://x"),
        NoCredentialsError(),
        RetriesExceededError(EndpointConnectionError(endpoint_url="http://x")),
        client_error("SlowDown"),
        client_error("503"),
        client_error("504"),
        client_error("ExpiredToken"),
        OSError(30, "Read-only file system"),
        DiskFull("full"),
        SyncTimeout("slow"),
    ):
        assert is_transient(exc), exc
    for exc in (BagError("bad bag"), client_error("NoSuchKey"), SyncError("refused"), ValueError()):
        assert not is_transient(exc), exc


# -- the rename path (GLACIER_SYNC_MOVE_WORK=1: the work folder may become the archived copy) ----


def _identity(path: Path) -> tuple[int, int]:
    stat = path.stat()
    return stat.st_dev, stat.st_ino


def _run_script(*args, **env_extra) -> subprocess.CompletedProcess:
    """The default script run directly, with GLACIER_SYNC_MOVE_WORK=1 and ``env_extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("GLACIER_SYNC_")}
    env.update({"GLACIER_SYNC_MOVE_WORK": "1", **{k: str(v) for k, v in env_extra.items()}})
    return subprocess.run(
        ["bash", str(DEFAULT_SYNC_COMMAND), *map(str, args)],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def _python_wrapper(tmp_path: Path, after: str) -> Path:
    """A GLACIER_SYNC_PYTHON that does the script's rename, then runs ``after`` (bash; $5 and
    $6 are the rename's source and target)."""
    wrapper = tmp_path / "python-wrapper"
    wrapper.write_text(f'#!/usr/bin/env bash\n"{sys.executable}" "$@" || exit $?\n{after}\n')
    wrapper.chmod(0o755)
    return wrapper


@pytest.fixture
def other_fs(tmp_path):
    """A folder on another file system than tmp_path (/dev/shm, or a tmpfs mounted here)."""
    shm = Path("/dev/shm")
    if shm.is_dir() and os.access(shm, os.W_OK) and _identity(shm)[0] != _identity(tmp_path)[0]:
        folder = Path(tempfile.mkdtemp(prefix="glacier-sync-test-", dir=shm))
        yield folder
        shutil.rmtree(folder, ignore_errors=True)
        return
    if os.geteuid() != 0:
        pytest.skip("no second file system: /dev/shm is missing and mounting a tmpfs needs root")
    folder = tmp_path / "tmpfs"
    folder.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(folder)], capture_output=True
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs: {mounted.stderr.decode().strip()}")
    yield folder
    subprocess.run(["umount", str(folder)], check=True)


def test_move_work_renames_the_work_folder_into_the_archive(tmp_path):
    work = _work(tmp_path)
    before = _identity(work)
    parent = tmp_path / "archive" / "Archive1" / "37"
    parent.mkdir(parents=True)
    result = sync_work(DEFAULT_SYNC_COMMAND, work, parent, tmp_path / "logs", move_work=True)
    archived = parent / "W2KG209837"
    assert result.moved and result.archive_path == archived
    assert _identity(archived) == before, "the archived folder is the work folder, renamed"
    assert not work.exists()
    assert (archived / "images" / "p1.txt").read_text() == "page one"
    assert (archived / "W2KG209837.bag" / "bagit.txt").is_file()
    log = result.log_file.read_text()
    assert "renamed, not copied" in log and f"{archived}: archived" in log
    assert not list(parent.glob(".*")), "no staging folder left behind"


def test_move_work_copies_to_another_file_system(tmp_path, other_fs):
    work = _work(tmp_path)
    parent = other_fs / "Archive1"
    parent.mkdir()
    result = sync_work(DEFAULT_SYNC_COMMAND, work, parent, tmp_path / "logs", move_work=True)
    assert not result.moved and work.is_dir(), "a rename across file systems fails: copied"
    assert (parent / "W2KG209837" / "images" / "p1.txt").read_text() == "page one"
    assert "another file system?); copying it" in result.log_file.read_text()
    assert not list(parent.glob(".*"))


def test_without_a_rename_helper_the_script_copies(tmp_path):
    work = _work(tmp_path)
    parent = tmp_path / "archive"
    parent.mkdir()
    done = _run_script(
        "-a", parent, "-s", tmp_path / "ok", work, GLACIER_SYNC_PYTHON=tmp_path / "no-python"
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert work.is_dir() and "copying it" in done.stdout
    assert (parent / "W2KG209837" / "images" / "p1.txt").read_text() == "page one"
    assert (tmp_path / "ok").read_text() == "W2KG209837\n"


def test_a_refused_sync_after_the_rename_puts_the_work_folder_back(tmp_path):
    work = _work(tmp_path)
    before = _identity(work)
    parent = tmp_path / "archive"
    parent.mkdir()
    dest = parent / "W2KG209837"
    # Another sync installs a different copy right after this one renamed the work folder.
    wrapper = _python_wrapper(tmp_path, f"[ -e {dest} ] || {{ mkdir {dest}; echo x > {dest}/x; }}")
    done = _run_script("-a", parent, "-s", tmp_path / "ok", work, GLACIER_SYNC_PYTHON=wrapper)
    assert done.returncode == 3 and "refusing to replace it" in done.stderr
    assert _identity(work) == before, "the work folder is back where it was, the same folder"
    assert (work / "images" / "p1.txt").read_text() == "page one"
    assert sorted(p.name for p in dest.iterdir()) == ["x"], "the other copy stays whole"
    assert not list(parent.glob(".W2KG209837.*")) and not (tmp_path / "ok").exists()


def test_an_identical_copy_that_appears_during_a_move_is_success(tmp_path):
    work = _work(tmp_path)
    parent = tmp_path / "archive"
    parent.mkdir()
    dest = parent / "W2KG209837"
    wrapper = _python_wrapper(tmp_path, f'[ -e {dest} ] || /bin/cp -a "$6" {dest}')
    done = _run_script("-a", parent, "-s", tmp_path / "ok", work, GLACIER_SYNC_PYTHON=wrapper)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "archived meanwhile by another sync, identical" in done.stdout
    assert work.is_dir(), "the work folder is put back; the caller removes it"
    assert not list(parent.glob(".W2KG209837.*"))
    assert (tmp_path / "ok").read_text() == "W2KG209837\n"


def test_move_work_replaces_with_A_and_copies_when_a_web_copy_is_asked(tmp_path):
    parent, web = tmp_path / "archive", tmp_path / "web"
    parent.mkdir()
    web.mkdir()
    old = parent / "W2KG209837"
    old.mkdir()
    (old / "old.txt").write_text("an older copy")
    work = _work(tmp_path)
    refused = _run_script("-a", parent, "-s", tmp_path / "ok", work)
    assert refused.returncode == 3 and work.is_dir(), "without -A: refused, nothing moved"
    before = _identity(work)
    replaced = _run_script("-A", "-a", parent, "-s", tmp_path / "ok", work)
    assert replaced.returncode == 0, replaced.stdout + replaced.stderr
    assert _identity(old) == before and not work.exists(), "the work folder, renamed in"
    assert not (old / "old.txt").exists() and not list(parent.glob(".*"))
    shutil.rmtree(old)
    work = _work(tmp_path)
    both = _run_script("-a", parent, "-w", web, "-s", tmp_path / "ok", work)
    assert both.returncode == 0, both.stdout + both.stderr
    assert work.is_dir() and "renamed" not in both.stdout, "-w needs the work folder: copied"
    for copy in (parent / "W2KG209837", web / "W2KG209837"):
        assert (copy / "images" / "p1.txt").read_text() == "page one"
