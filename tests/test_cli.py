"""The glacier-sync command, run as operators run it (a real process)."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import time
import zipfile

import pytest
from helpers import DEFAULT_FILES, VENV_BIN, glacier_env, make_bag_dir, make_bag_zip, zip_dir

pytestmark = pytest.mark.integration

SUBCOMMANDS = [
    "check-config",
    "run-once",
    "process-bag",
    "status",
    "request-restore",
    "retry",
    "db",
    "db current",
    "db upgrade",
    "db downgrade",
    "shared-folders",
    "shared-folders mark",
    "shared-folders check",
]


def gs(*args, env=None, cwd=None):
    base = {k: v for k, v in os.environ.items() if not k.startswith("GLACIER_SYNC_")}
    return subprocess.run(
        [str(VENV_BIN / "glacier-sync"), *map(str, args)],
        env=env or base,
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=300,
    )


def process_bag(zip_path, archive, data_dir, *extra):
    """``glacier-sync process-bag ZIP --archive-root ARCHIVE --data-dir DATA [extra]``."""
    return gs("process-bag", zip_path, "--archive-root", archive, "--data-dir", data_dir, *extra)


@pytest.mark.parametrize("sub", SUBCOMMANDS)
def test_help_on_every_subcommand(sub):
    result = gs(*sub.split(), "--help")
    assert result.returncode == 0 and "usage: glacier-sync " + sub in result.stdout


def test_help_is_fast_and_imports_no_airflow():
    started = time.monotonic()
    assert gs("--help").returncode == 0
    assert time.monotonic() - started < 5  # generous; the benchmark measures the real figure
    code = (
        "import sys, glacier_sync.cli; glacier_sync.cli.build_parser(); "
        "print([m for m in sys.modules if m.startswith(('airflow', 'boto3', 'sqlalchemy'))])"
    )
    out = subprocess.run([str(VENV_BIN / "python"), "-c", code], capture_output=True, text=True)
    assert out.stdout.strip() == "[]"


def test_check_config_masks_secret_and_fails_on_bad_value(tmp_path):
    env = {
        **os.environ,
        "GLACIER_SYNC_PROGRESS_DB_URL": "postgresql://u:hunter2@db/x",
        "GLACIER_SYNC_DATA_ROOT": str(tmp_path),
    }
    ok = gs("check-config", env=env)
    assert ok.returncode == 0, ok.stderr
    assert "hunter2" not in ok.stdout + ok.stderr and "u:***@db" in ok.stdout
    bad = gs("check-config", env={**env, "GLACIER_SYNC_SQS_WAIT_SECONDS": "99"})
    assert bad.returncode == 2
    assert "sqs_wait_seconds" in bad.stderr and "GLACIER_SYNC_SQS_WAIT_SECONDS" in bad.stderr
    assert "hunter2" not in bad.stdout + bad.stderr
    unreachable = gs(
        "check-config",
        "--connect",
        env={**env, "GLACIER_SYNC_PROGRESS_DB_URL": "postgresql://u:hunter2@127.0.0.1:1/x"},
    )
    assert unreachable.returncode == 1 and "unreachable" in unreachable.stderr
    assert "hunter2" not in unreachable.stdout + unreachable.stderr


def test_process_bag_archives_a_valid_bag(tmp_path):
    zip_path = make_bag_zip(tmp_path, "W1NLM4700")
    archive = tmp_path / "archive"
    archive.mkdir()
    key = "Archive0/00/W1NLM4700/W1NLM4700.bag.zip"
    result = process_bag(zip_path, archive, tmp_path / "data", "--key", key)
    assert result.returncode == 0, result.stdout + result.stderr
    archived = archive / "Archive0" / "00" / "W1NLM4700"
    for rel, content in DEFAULT_FILES.items():
        assert (archived / rel).read_bytes() == content
    assert zip_path.is_file(), "a zip given by path is the operator's: kept"
    status = gs("status", "W1NLM4700", "--json", "--data-dir", tmp_path / "data")
    row = json.loads(status.stdout)[0]
    assert row["state"] == "synced" and row["archive_path"] == str(archived)
    again = process_bag(zip_path, archive, tmp_path / "data")
    assert again.returncode == 0 and "synced" in again.stdout


def _bad_bags(tmp_path):
    """Each bad bag the issue names, as (name, zip, expected text)."""
    out = []

    def variant(name, mutate, expected):
        bag_dir = make_bag_dir(tmp_path / name, "W1BAD")
        mutate(bag_dir)
        out.append((name, zip_dir(bag_dir, tmp_path / name / "W1BAD.bag.zip"), expected))

    def flip(bag_dir):
        path = bag_dir / "data" / "images" / "I1_0002.tif"
        data = bytearray(path.read_bytes())
        data[-1] ^= 1
        path.write_bytes(bytes(data))

    def drop_tagmanifests(bag_dir):
        for path in bag_dir.glob("tagmanifest-*"):
            path.unlink()

    def oxum(bag_dir):
        info = bag_dir / "bag-info.txt"
        info.write_text(info.read_text().replace("Payload-Oxum: ", "Payload-Oxum: 9"))
        drop_tagmanifests(bag_dir)

    def missing(bag_dir):
        (bag_dir / "data" / "archive" / "notes.txt").unlink()

    def extra(bag_dir):
        (bag_dir / "data" / "extra.txt").write_bytes(b"surprise")

    variant("checksum", flip, "I1_0002.tif: sha512 mismatch")
    variant("oxum", oxum, "Payload-Oxum")
    variant("missing", missing, "data/archive/notes.txt")
    variant("extra", extra, "data/extra.txt")
    dotdot = make_bag_zip(tmp_path / "dotdot", "W1BAD")
    with zipfile.ZipFile(dotdot, "a") as zf:
        zf.writestr("data/../../../outside.txt", b"x")
    out.append(("dotdot", dotdot, "climbs out"))
    link = make_bag_zip(tmp_path / "symlink", "W1BAD")
    with zipfile.ZipFile(link, "a") as zf:
        info = zipfile.ZipInfo("data/images/link")
        info.external_attr = 0o120777 << 16
        zf.writestr(info, "/etc/shadow")
    out.append(("symlink", link, "symbolic link"))
    truncated = make_bag_zip(tmp_path / "truncated", "W1BAD")
    truncated.write_bytes(truncated.read_bytes()[:-300])
    out.append(("truncated", truncated, "not a readable zip"))
    return out


@pytest.mark.parametrize("move", ["true", "false"], ids=["rename", "copy"])
def test_process_bag_on_a_current_database_does_no_migration_work(tmp_path, move):
    """The usual case: the data root's database is current (no Alembic import), and the work
    folder is renamed into an archive on the same file system (copied with the setting off)."""
    data, archive = tmp_path / "data", tmp_path / "archive"
    archive.mkdir()
    assert gs("db", "upgrade", "--data-dir", data).returncode == 0
    zip_path = make_bag_zip(tmp_path, "W1MOVE")
    argv = ["process-bag", str(zip_path), "--archive-root", str(archive), "--data-dir", str(data)]
    code = (
        "import sys; from glacier_sync.cli import main; "
        f"code = main({argv!r}); "
        "print(code, [m for m in sys.modules if m.startswith('alembic')])"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("GLACIER_SYNC_")}
    env["GLACIER_SYNC_SYNC_MOVE_WORK"] = move
    out = subprocess.run(
        [str(VENV_BIN / "python"), "-c", code], capture_output=True, text=True, env=env
    )
    assert out.stdout.splitlines()[-1] == "0 []", out.stdout + out.stderr
    for rel, content in DEFAULT_FILES.items():
        assert (archive / "W1MOVE" / rel).read_bytes() == content
    assert not (data / "work" / "W1MOVE").exists() and zip_path.is_file()
    with sqlite3.connect(data / "progress.sqlite") as conn:
        (history,) = conn.execute("SELECT history FROM glacier_sync_progress").fetchone()
    history = json.loads(history)
    sync = next(h for h in history if h["event"] == "sync done")
    assert sync["moved"] is (move == "true")


BAD_BAGS = ["checksum", "oxum", "missing", "extra", "dotdot", "symlink", "truncated"]


@pytest.mark.parametrize("which", BAD_BAGS)
def test_process_bag_refuses_each_bad_bag(tmp_path, which):
    made = _bad_bags(tmp_path)
    assert [name for name, _, _ in made] == BAD_BAGS
    for name, zip_path, expected in [bag for bag in made if bag[0] == which]:
        archive = tmp_path / name / "archive"
        archive.mkdir()
        before = zip_path.read_bytes()
        result = process_bag(zip_path, archive, tmp_path / name / "data")
        assert result.returncode == 1, name
        assert expected in result.stdout, (name, result.stdout)
        assert zip_path.read_bytes() == before, name
        assert list(archive.iterdir()) == [], name
        assert not (tmp_path / name / "data" / "work" / "W1BAD").exists(), name
        status = gs("status", "W1BAD", "--json", "--data-dir", tmp_path / name / "data")
        row = json.loads(status.stdout)[0]
        assert row["state"] == "failed" and row["failed_phase"] == "debag", name
    assert not (tmp_path / "outside.txt").exists()


def test_process_bag_input_errors(tmp_path):
    missing = gs("process-bag", tmp_path / "nope.bag.zip", "--archive-root", tmp_path)
    assert missing.returncode == 1 and "does not exist" in missing.stderr
    zip_path = make_bag_zip(tmp_path, "W1X")
    no_root = gs("process-bag", zip_path, "--archive-root", tmp_path / "nowhere")
    assert no_root.returncode == 1 and "create it first" in no_root.stderr
    usage = gs("process-bag", zip_path)
    assert usage.returncode == 2 and "--archive-root" in usage.stderr


def test_run_once_request_restore_status_and_retry(world, dirs, tmp_path):
    env = glacier_env(world, dirs["data"], dirs["archive"])
    zip_path = make_bag_zip(dirs["bags"], "W1CLI")
    key = "Archive2/10/W1CLI/W1CLI.bag.zip"
    world.upload_archived(zip_path, key)
    restore = gs("request-restore", "--key", key, env=env)
    assert restore.returncode == 0, restore.stderr
    assert "requested" in restore.stdout
    world.client("s3").head_object(Bucket=world.bucket, Key=key)  # moto sends Completed now
    failing = tmp_path / "fail.sh"
    failing.write_text("exit 9\n")
    first = gs("run-once", env={**env, "GLACIER_SYNC_SYNC_COMMAND": str(failing)})
    assert first.returncode == 1 and "FAILED W1CLI" in first.stdout and "status 9" in first.stdout
    stuck = gs("status", "--stuck", "--hours", "0", env=env)
    assert "W1CLI" in stuck.stdout and "sync" in stuck.stdout
    retry = gs("retry", "W1CLI", env=env)
    assert retry.returncode == 0, retry.stdout + retry.stderr
    assert (dirs["archive"] / "Archive2" / "10" / "W1CLI" / "images").is_dir()
    row = json.loads(gs("status", "W1CLI", "--json", env=env).stdout)[0]
    assert row["state"] == "synced" and row["restore_requested_at"]
    nothing = gs("retry", "W1CLI", env=env)
    assert nothing.returncode == 1 and "no unsynced row" in nothing.stderr
    again = gs("request-restore", "W1CLI", env=env)
    assert again.returncode == 0 and "W1CLI" in again.stdout
    unknown = gs("request-restore", "W0UNKNOWN", env=env)
    assert unknown.returncode == 1 and "--key" in unknown.stderr


def test_run_once_needs_archive_root(world, dirs):
    env = glacier_env(world, dirs["data"], dirs["archive"])
    del env["GLACIER_SYNC_ARCHIVE_ROOT"]
    result = gs("run-once", env=env)
    assert result.returncode == 2 and "GLACIER_SYNC_ARCHIVE_ROOT" in result.stderr


def test_retry_without_archive_root_claims_nothing(tmp_path):
    bag_dir = make_bag_dir(tmp_path, "W1BAD")
    (bag_dir / "data" / "archive" / "notes.txt").write_bytes(b"changed after bagging\n")
    zip_path = zip_dir(bag_dir, tmp_path / "W1BAD.bag.zip")
    archive = tmp_path / "archive"
    archive.mkdir()
    assert process_bag(zip_path, archive, tmp_path / "data").returncode == 1
    result = gs("retry", "W1BAD", "--data-dir", tmp_path / "data")
    assert result.returncode == 2 and "GLACIER_SYNC_ARCHIVE_ROOT" in result.stderr
    row = json.loads(gs("status", "W1BAD", "--json", "--data-dir", tmp_path / "data").stdout)[0]
    assert row["claimed_by"] is None and row["attempts"] == 1 and row["state"] == "failed"


def _revision(data_dir) -> str:
    with sqlite3.connect(data_dir / "progress.sqlite") as conn:
        return conn.execute("SELECT version_num FROM glacier_sync_alembic_version").fetchone()[0]


def _index_names(data_dir) -> set[str]:
    with sqlite3.connect(data_dir / "progress.sqlite") as conn:
        rows = conn.execute("SELECT name FROM sqlite_master WHERE type = 'index'").fetchall()
    return {name for (name,) in rows}


INDEX = "ix_glacier_sync_progress_state_cleaned_at"


def test_db_current_upgrade_and_downgrade(tmp_path):
    data = tmp_path / "data"
    empty = gs("db", "current", "--data-dir", data)
    assert empty.returncode == 0, empty.stderr
    assert "revision:          none" in empty.stdout and "newest known:      0004" in empty.stdout
    assert "upgrade due: run `glacier-sync db upgrade`" in empty.stdout
    up = gs("db", "upgrade", "--data-dir", data)
    assert up.returncode == 0, up.stderr
    assert "upgraded from an empty database to revision 0004" in up.stdout
    assert _revision(data) == "0004" and INDEX in _index_names(data)
    again = gs("db", "upgrade", "--data-dir", data)
    assert again.returncode == 0 and "at revision 0004 already; nothing to do" in again.stdout
    current = gs("db", "current", "--data-dir", data)
    assert "revision:          0004" in current.stdout and "up to date" in current.stdout

    down = gs("db", "downgrade", "0002", "--data-dir", data)
    assert down.returncode == 0, down.stderr
    assert "downgraded from 0004 to revision 0002" in down.stdout
    assert _revision(data) == "0002" and INDEX not in _index_names(data)
    current = gs("db", "current", "--data-dir", data)
    assert "revision:          0002" in current.stdout and "upgrade due" in current.stdout
    assert _revision(data) == "0002", "`db current` migrates nothing"

    unknown = gs("db", "downgrade", "0009", "--data-dir", data)
    assert unknown.returncode == 2 and unknown.stdout == ""
    assert unknown.stderr == (
        "error: unknown revision '0009': this glacier-sync knows 0001, 0002, 0003, 0004 "
        "(see `glacier-sync db current`)\n"
    )
    forward = gs("db", "downgrade", "0003", "--data-dir", data)
    assert forward.returncode == 2 and "older than 0003" in forward.stderr
    assert gs("db", "downgrade", "--data-dir", data).returncode == 2, "REV is required"
    assert gs("db", "upgrade", "--data-dir", data).returncode == 0
    assert _revision(data) == "0004" and INDEX in _index_names(data)


def test_db_upgrade_when_current_does_no_alembic_work(tmp_path):
    assert gs("db", "upgrade", "--data-dir", tmp_path).returncode == 0
    code = (
        "import sys; from glacier_sync.cli import main; "
        f"code = main(['db', 'upgrade', '--data-dir', {str(tmp_path)!r}]); "
        "print(code, [m for m in sys.modules if m.startswith('alembic')])"
    )
    out = subprocess.run([str(VENV_BIN / "python"), "-c", code], capture_output=True, text=True)
    assert out.stdout.splitlines()[-1] == "0 []", out.stdout + out.stderr


def test_a_database_newer_than_this_glacier_sync_is_a_one_line_error(tmp_path):
    """A rollback without downgrade: every command refuses, exit 2, and migrates nothing."""
    data = tmp_path / "data"
    assert gs("db", "upgrade", "--data-dir", data).returncode == 0
    with sqlite3.connect(data / "progress.sqlite") as conn:
        conn.execute("UPDATE glacier_sync_alembic_version SET version_num = '0005'")
    expected = (
        f"error: progress database sqlite:///{data}/progress.sqlite is at revision 0005, newer "
        "than this glacier-sync (0004): deploy the newer image again, or run "
        "`glacier-sync db downgrade 0004` with it before rolling back\n"
    )
    for command in (
        ["status"],
        ["status", "--stuck"],
        ["check-config", "--connect"],
        ["retry", "W1", "--reset-only"],
        ["db", "current"],
        ["db", "upgrade"],
        ["db", "downgrade", "0002"],
    ):
        result = gs(*command, "--data-dir", data)
        assert (result.returncode, result.stderr) == (2, expected), command
    assert _revision(data) == "0005"


def test_status_shows_the_archive_host_path_when_told_the_host_root(tmp_path):
    archive = tmp_path / "archive"
    archive.mkdir()
    zip_path = make_bag_zip(tmp_path, "W1HOST")
    key = "Archive0/00/W1HOST/W1HOST.bag.zip"
    assert process_bag(zip_path, archive, tmp_path / "data", "--key", key).returncode == 0
    base = {k: v for k, v in os.environ.items() if not k.startswith("GLACIER_SYNC_")}
    env = {**base, "GLACIER_SYNC_ARCHIVE_ROOT": str(archive)}
    container_path = str(archive / "Archive0" / "00" / "W1HOST")
    args = ("status", "W1HOST", "--data-dir", tmp_path / "data")

    row = json.loads(gs(*args, "--json", env=env).stdout)[0]
    assert row["archive_path"] == container_path and "archive_host_path" not in row
    table = gs(*args, env=env).stdout
    assert f"archive: {container_path}\n" in table and "host:" not in table

    host = {**env, "GLACIER_SYNC_ARCHIVE_HOST_ROOT": "/srv/archive"}
    row = json.loads(gs(*args, "--json", env=host).stdout)[0]
    assert row["archive_path"] == container_path
    assert row["archive_host_path"] == "/srv/archive/Archive0/00/W1HOST"
    table = gs(*args, env=host).stdout
    assert f"archive: {container_path} (host: /srv/archive/Archive0/00/W1HOST)" in table


def test_a_bad_bag_is_shown_as_needing_attention_until_retried(tmp_path):
    bag_dir = make_bag_dir(tmp_path / "bags", "W1HELD")
    (bag_dir / "data" / "images" / "I1_0001.tif").write_bytes(b"XXXX")
    zip_path = zip_dir(bag_dir, tmp_path / "W1HELD.bag.zip")
    archive, data = tmp_path / "archive", tmp_path / "data"
    archive.mkdir()
    assert process_bag(zip_path, archive, data).returncode == 1
    stuck = gs("status", "--stuck", "--data-dir", data)
    assert "W1HELD" in stuck.stdout and "needs attention: a permanent failure" in stuck.stdout
    assert "`glacier-sync retry W1HELD`" in stuck.stdout
    assert gs("retry", "W1HELD", "--reset-only", "--data-dir", data).returncode == 0
    assert "needs attention" not in gs("status", "W1HELD", "--data-dir", data).stdout


def test_status_of_a_work_shows_its_fixity_evidence(tmp_path):
    archive, data = tmp_path / "archive", tmp_path / "data"
    archive.mkdir()
    zip_path = make_bag_zip(tmp_path, "W1FIX")
    assert process_bag(zip_path, archive, data).returncode == 0
    shown = gs("status", "W1FIX", "--data-dir", data).stdout
    payload = sum(len(v) for v in DEFAULT_FILES.values())
    assert (
        f"fixity: {len(DEFAULT_FILES)} files, {payload} bytes checked against sha512 at " in shown
    )
    assert "  manifest-sha512.txt sha256 " in shown
    as_json = json.loads(gs("status", "W1FIX", "--json", "--data-dir", data).stdout)
    assert as_json[0]["fixity"]["files"] == len(DEFAULT_FILES)
