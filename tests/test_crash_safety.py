"""Crash safety: `kill -9` of `glacier-sync run-once` at every phase boundary and inside every
phase, then plain re-runs with default settings.

Each kill is deterministic: a fault point (glacier_sync.faults, and the same hook in the default
sync script) sends SIGKILL to the whole process group the n-th time the run passes it. After the
re-run, every work is synced once, each archived tree equals its bag (payload and tag files),
nothing else is in the archive, and the data root holds no leftovers.

The data root and the archive share a file system here, so by default the sync script renames
the work folder into the archive (`sync_move_work`); the points of the sync and the clean-up are
killed on the copy path too (`GLACIER_SYNC_SYNC_MOVE_WORK=false`).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
from helpers import VENV_BIN, glacier_env, make_bag_dir, zip_dir

from glacier_sync.records.progress import ProgressStore

pytestmark = pytest.mark.integration

WORKS = {
    "W1CRASH1": "Archive0/01/W1CRASH1/W1CRASH1.bag.zip",
    "W1CRASH2": "Archive0/02/W1CRASH2/W1CRASH2.bag.zip",
}
FILES = {f"images/I{i:04d}.tif": os.urandom(3000 + i) for i in range(12)}
FILES["sources/notes.txt"] = b"scanned 2026\n"

# (fault point, pass number): one kill at each boundary and inside each phase.
POINTS = [
    ("poll:recorded", 1),  # recorded, message not deleted yet
    ("download:chunk", 1),  # inside the download
    ("download:recorded", 1),  # completion record written, zip not renamed yet
    ("download:renamed", 1),  # zip and record in place, download not recorded
    ("progress:before-commit", 2),  # inside the "download done" update
    ("debag:member", 3),  # inside the extraction
    ("debag:placed", 1),  # work folder in place, no marker yet
    ("debag:marked", 1),  # marker written, debag not recorded
    ("progress:before-commit", 3),  # inside the "debag done" update
    ("sync:before-script", 1),
    ("sync:copied", 1),  # staging copy in the archive, not verified (bash)
    ("sync:before-rename", 1),  # staging verified, not renamed (bash)
    ("sync:renamed", 1),  # archive copy in place, success list not written (bash)
    ("sync:after-script", 1),  # script done, sync not recorded
    ("progress:before-commit", 4),  # inside the "sync done" update
    ("sync:recorded", 1),  # recorded, clean-up not started
    ("cleanup:folder", 1),  # inside the clean-up: one empty incoming folder of two removed
    ("progress:before-commit", 5),  # inside the "cleaned" update
]
# The same instants on the copy path (the work folder copied into the archive, then deleted by
# the clean-up); above, they are passed on the rename path (the work folder itself, renamed).
COPY_POINTS = [
    ("sync:before-script", 1),
    ("sync:copied", 1),  # staging copy in the archive, not verified (bash)
    ("sync:before-rename", 1),  # staging verified, not renamed (bash)
    ("sync:renamed", 1),  # archive copy in place, success list not written (bash)
    ("sync:after-script", 1),
    ("progress:before-commit", 4),  # inside the "sync done" update
    ("sync:recorded", 1),
    ("cleanup:file", 3),  # inside the clean-up: work folder half deleted
    ("cleanup:folder", 1),
]
COPY = {"GLACIER_SYNC_SYNC_MOVE_WORK": "false"}


def _bag(dirs: dict[str, Path], work_id: str) -> Path:
    bag_dir = make_bag_dir(dirs["bags"], work_id, FILES)
    return zip_dir(bag_dir, dirs["bags"] / f"{work_id}.bag.zip")


def expected_tree(dirs: dict[str, Path], work_id: str) -> dict[str, bytes]:
    """The archived work as it must be: the payload, and the tag files under <work>.bag/."""
    bag_dir = dirs["bags"] / f"{work_id}-bagdir"
    tree = {}
    for path in bag_dir.rglob("*"):
        if path.is_file():
            rel = path.relative_to(bag_dir)
            key = rel.relative_to("data") if rel.parts[0] == "data" else f"{work_id}.bag" / rel
            tree[str(key)] = path.read_bytes()
    return tree


def tree_of(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def _run(env: dict[str, str], *args: str, timeout: int = 120) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(VENV_BIN / "glacier-sync"), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        start_new_session=True,  # its own process group: the fault kills only the run
    )


@pytest.fixture
def run_here(monkeypatch, capsys):
    """The ``glacier-sync`` command run in this process (its ``main``) with ``env`` as its whole
    environment: the re-runs after a kill, which need no process of their own (only the killed
    run does), at a fraction of a new interpreter's start-up."""

    def run(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
        from glacier_sync import cli

        for name in [k for k in os.environ if k not in env]:
            monkeypatch.delenv(name)
        for name, value in env.items():
            monkeypatch.setenv(name, str(value))
        capsys.readouterr()
        code = cli.main(list(args))
        out, err = capsys.readouterr()
        monkeypatch.undo()
        return subprocess.CompletedProcess(["glacier-sync", *args], code, out, err)

    return run


@pytest.fixture
def crash_world(world, dirs):
    for work_id, key in WORKS.items():
        world.upload_archived(_bag(dirs, work_id), key)
        world.restore(key)
    return world


def _wait_nothing_in_flight(world, timeout: float = 10) -> None:
    """Until the messages the killed run received are visible again (their 2 s visibility
    timeout runs from the receive, so some of it has passed by the kill)."""
    sqs, deadline = world.client("sqs"), time.monotonic() + timeout
    while True:
        attrs = sqs.get_queue_attributes(
            QueueUrl=world.queue_url, AttributeNames=["ApproximateNumberOfMessagesNotVisible"]
        )["Attributes"]
        if attrs["ApproximateNumberOfMessagesNotVisible"] == "0":
            return
        assert time.monotonic() < deadline, "the killed run's messages stay hidden"
        time.sleep(0.1)


def env_for(world, dirs, **extra) -> dict[str, str]:
    return glacier_env(
        world, dirs["data"], dirs["archive"], GLACIER_SYNC_SQS_WAIT_SECONDS=0, **extra
    )


def assert_all_archived_once(world, dirs, moved: bool | None = None) -> None:
    """Every work synced once, archive == bags, nothing else anywhere, queue drained; with
    ``moved``, whether at least one work reached the archive by a rename (True) or none (False)."""
    archive_files = sorted(
        str(p.relative_to(dirs["archive"])) for p in dirs["archive"].rglob("*") if p.is_file()
    )
    expected = sorted(
        f"{Path(key).parent}/{rel}"
        for work_id, key in WORKS.items()
        for rel in expected_tree(dirs, work_id)
    )
    assert archive_files == expected, "nothing but the works' own files in the archive"
    for work_id, key in WORKS.items():
        folder = dirs["archive"] / Path(key).parent
        assert tree_of(folder) == expected_tree(dirs, work_id), f"{work_id} archived whole"
    store = ProgressStore(f"sqlite:///{dirs['data'] / 'progress.sqlite'}")
    rows = store.find()
    store.engine.dispose()
    assert sorted(r.work_id for r in rows) == sorted(WORKS), "one row per work"
    for row in rows:
        assert (row.state, row.claimed_by) == ("synced", None), row.summary()
        assert row.cleaned_at is not None
        syncs = [h for h in row.history if h["event"] == "sync done"]
        assert len(syncs) == 1, f"{row.work_id} synced exactly once"
    if moved is not None:
        renamed = [h.get("moved") for r in rows for h in r.history if h["event"] == "sync done"]
        assert any(renamed) is moved, renamed
    leftovers = [
        str(p.relative_to(dirs["data"]))
        for p in dirs["data"].rglob("*")
        if not p.name.startswith("progress.sqlite")
        and "logs" not in p.relative_to(dirs["data"]).parts
        and not (p.is_dir() and p.name in ("incoming", "work"))
    ]
    assert leftovers == [], "no leftovers in the data root"


CASES = [(p, n, {}) for p, n in POINTS] + [(p, n, COPY) for p, n in COPY_POINTS]


@pytest.mark.parametrize(
    ("point", "nth", "mode"),
    CASES,
    ids=[f"{p}#{n}" + ("-copy" if mode else "") for p, n, mode in CASES],
)
def test_kill_at_every_instant_then_rerun(crash_world, dirs, tmp_path, run_here, point, nth, mode):
    fault = tmp_path / "fault"
    fault.write_text(f"{point} {nth}\n")
    killed = _run(
        env_for(
            crash_world,
            dirs,
            GLACIER_SYNC_FAULT_FILE=fault,
            GLACIER_SYNC_SQS_VISIBILITY_TIMEOUT=2,
            **mode,
        ),
        "run-once",
    )
    assert killed.returncode == -signal.SIGKILL, killed.stdout + killed.stderr
    assert Path(f"{fault}.fired").exists(), f"the run passed {point} #{nth}"
    store = ProgressStore(f"sqlite:///{dirs['data'] / 'progress.sqlite'}")
    held = [r.work_id for r in store.find() if r.claimed_by]
    store.engine.dispose()
    assert len(held) <= 1, "a crashed run holds at most the work it was on"

    _wait_nothing_in_flight(crash_world)
    env = env_for(crash_world, dirs, **mode)  # no fault, default lease
    status = run_here(env, "status", "--stuck")
    assert status.returncode == 0
    if held:
        assert "whose process is gone" in status.stdout, status.stdout
    rerun = run_here(env, "run-once")
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    assert_all_archived_once(crash_world, dirs, moved=not mode)
    assert crash_world.queue_count() == 0, "every message deleted once recorded"


def test_crash_during_cleanup_then_replace_never_truncates_the_archive(crash_world, dirs, tmp_path):
    """The landed code's worst case: half-deleted work folder, then a retry with -A (on the
    copy path: on the rename path the clean-up has no work folder left to delete)."""
    fault = tmp_path / "fault"
    fault.write_text("cleanup:file 5\n")
    killed = _run(env_for(crash_world, dirs, GLACIER_SYNC_FAULT_FILE=fault, **COPY), "run-once")
    assert killed.returncode == -signal.SIGKILL
    rerun = _run(env_for(crash_world, dirs, GLACIER_SYNC_SYNC_REPLACE_ARCHIVE="true"), "run-once")
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    assert_all_archived_once(crash_world, dirs)


@pytest.mark.parametrize("point", ["sync:swapping", "sync:renamed"])
@pytest.mark.parametrize("mode", [{}, COPY], ids=["rename", "copy"])
def test_kill_inside_a_replace_puts_the_old_copy_back_then_installs_the_new(
    crash_world, dirs, tmp_path, mode, point
):
    old = dirs["archive"] / "Archive0" / "01" / "W1CRASH1"
    (old / "images").mkdir(parents=True)
    (old / "images" / "I0000.tif").write_bytes(b"an older scan")
    fault = tmp_path / "fault"
    fault.write_text(f"{point} 1\n")
    env = env_for(crash_world, dirs, GLACIER_SYNC_SYNC_REPLACE_ARCHIVE="true", **mode)
    killed = _run({**env, "GLACIER_SYNC_FAULT_FILE": str(fault)}, "run-once")
    assert killed.returncode == -signal.SIGKILL
    if point == "sync:swapping":
        assert not old.exists(), "killed between the two renames of the swap"
    else:
        assert tree_of(old) == expected_tree(dirs, "W1CRASH1"), "the new copy is in place"
    assert (dirs["data"] / "work" / "W1CRASH1").is_dir() is bool(mode), "renamed, or copied"
    rerun = _run(env, "run-once")
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    assert_all_archived_once(crash_world, dirs)


def test_a_kill_after_the_rename_leaves_the_work_in_staging_and_its_zip_is_debagged_again(
    crash_world, dirs, tmp_path
):
    """Rename path: killed after the work folder became the staging folder, before it was put
    in place: the archive has nothing of the work, the zip is kept, the next run sweeps the
    staging folder, debags the zip again and renames the new work folder in."""
    fault = tmp_path / "fault"
    fault.write_text("sync:before-rename 1\n")
    env = env_for(crash_world, dirs, GLACIER_SYNC_SQS_VISIBILITY_TIMEOUT=2)
    killed = _run({**env, "GLACIER_SYNC_FAULT_FILE": str(fault)}, "run-once")
    assert killed.returncode == -signal.SIGKILL, killed.stdout + killed.stderr
    parent = dirs["archive"] / "Archive0" / "01"
    stagings = list(parent.glob(".W1CRASH1.syncing.*"))
    assert len(stagings) == 1 and tree_of(stagings[0]) == expected_tree(dirs, "W1CRASH1")
    assert not (parent / "W1CRASH1").exists(), "nothing in the work's place in the archive"
    assert not (dirs["data"] / "work" / "W1CRASH1").exists(), "the work folder was renamed"
    assert (dirs["data"] / "incoming" / WORKS["W1CRASH1"]).is_file(), "the zip is kept"
    _wait_nothing_in_flight(crash_world)
    rerun = _run(env_for(crash_world, dirs), "run-once")
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    assert "removed" in rerun.stderr and "left by an interrupted sync" in rerun.stderr
    assert_all_archived_once(crash_world, dirs, moved=True)
    store = ProgressStore(f"sqlite:///{dirs['data'] / 'progress.sqlite'}")
    row = store.find(["W1CRASH1"])[0]
    store.engine.dispose()
    debags = [h for h in row.history if h["event"] == "debag done" and not h.get("skipped")]
    assert len(debags) == 2, "extracted again from the zip: the renamed folder is not trusted"


def test_unmounted_archive_root_is_refused_and_nothing_is_touched(crash_world, dirs):
    missing = dirs["archive"].parent / "nfs" / "archive"
    env = glacier_env(crash_world, dirs["data"], missing, GLACIER_SYNC_SQS_WAIT_SECONDS=0)
    queued = crash_world.queue_count()
    result = _run(env, "run-once")
    assert result.returncode == 1
    assert f"archive root {missing} does not exist: is the archive volume mounted?" in (
        result.stderr
    )
    assert "Traceback" not in result.stderr
    assert not missing.parent.exists(), "the archive root is never created"
    assert crash_world.queue_count() == queued, "no message taken"
    retry = _run(env, "retry", "W1CRASH1")
    assert retry.returncode == 1 and "is the archive volume mounted" in retry.stderr


def test_marker_file_setting_refuses_an_empty_mount_point(crash_world, dirs):
    env = env_for(crash_world, dirs, GLACIER_SYNC_ARCHIVE_ROOT_MARKER=".bdrc-archive")
    result = _run(env, "run-once")
    assert result.returncode == 1 and "lacks its marker file .bdrc-archive" in result.stderr
    assert list(dirs["archive"].iterdir()) == []
    (dirs["archive"] / ".bdrc-archive").write_text("")
    result = _run(env, "run-once")
    assert result.returncode == 0, result.stdout + result.stderr
    assert (dirs["archive"] / "Archive0" / "01" / "W1CRASH1" / "images").is_dir()


def test_leftovers_of_old_killed_tries_are_swept(crash_world, dirs):
    """Temporary files named as the earlier code named them (random suffixes) go too."""
    incoming = dirs["data"] / "incoming" / "Archive0" / "01" / "W1CRASH1"
    incoming.mkdir(parents=True)
    (incoming / ".W1CRASH1.bag.zip.part-1a2b3c4d").write_bytes(b"half a zip")
    (incoming / ".W1CRASH1.bag.zip.part.Ab12Cd34").write_bytes(b"boto3's temp name")
    work = dirs["data"] / "work"
    (work / ".debag-W1CRASH1" / "payload").mkdir(parents=True)
    (dirs["archive"] / "Archive0" / "01" / ".W1CRASH1.syncing.deadhost.4242").mkdir(parents=True)
    result = _run(env_for(crash_world, dirs), "run-once")
    assert result.returncode == 0, result.stdout + result.stderr
    assert_all_archived_once(crash_world, dirs)


def test_status_json_shows_the_claim(crash_world, dirs, tmp_path):
    fault = tmp_path / "fault"
    fault.write_text("debag:placed 1\n")
    _run(env_for(crash_world, dirs, GLACIER_SYNC_FAULT_FILE=fault), "run-once")
    status = _run(env_for(crash_world, dirs), "status", "--stuck", "--json")
    rows = json.loads(status.stdout)
    assert [r["work_id"] for r in rows] == ["W1CRASH1"]
    assert rows[0]["claimed_by"].startswith("glacier-sync@") and rows[0]["claimed_until"]
