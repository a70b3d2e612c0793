"""A full disk in each of the three places, on real (tiny) tmpfs mounts.

Each test runs the real `glacier-sync run-once` against the moto world with the data root, the
work root or the archive root on a tmpfs too small for the work: refused by a free-space
pre-check, or a real ENOSPC while writing (a tmpfs charges a whole 4 KiB page per small file, so
a bag of many small files needs far more room than the bytes its zip declares). The run must
exit 1 with a one-line error naming the path and saying to free space, record the work `failed`
without spending an attempt, keep a zip it downloaded whole and leave nothing half-written; once the
tmpfs is enlarged, a plain re-run archives the work whole and leaves the data root clean.

Needs root (mount): skipped otherwise, but a failure when the CI variable is set.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest
from helpers import VENV_BIN, glacier_env, make_bag_dir, zip_dir

from glacier_sync.bag.bag_index import BagIndex
from glacier_sync.records.progress import ProgressStore

pytestmark = pytest.mark.integration

PAGE = 4096
EMPTY_INDEX_KIB = 16  # the debag's index of member names, made before anything is extracted
SMALL_TMPFS_KIB = 128
LARGE_TMPFS_KIB = 4096
WORK = "W1DISKFULL"
KEY = f"Archive0/01/{WORK}/{WORK}.bag.zip"
PARENT = Path("Archive0") / "01"  # the key's folder in the archive, without the work's own

# A few big files: ~300 KB of random bytes, which deflate cannot shrink.
BIG = {f"images/I{i:04d}.tif": os.urandom(75_000 + i) for i in range(4)}
BIG["sources/notes.txt"] = b"scanned 2026\n"
# Many small files: 64,000 bytes declared, but 64 pages (256 KiB) once written on a tmpfs.
SMALL = {f"images/I{i:04d}.tif": os.urandom(1_000) for i in range(64)}
# One tiny file: the bag's four tag files alone take four pages.
TINY = {"sources/notes.txt": b"scanned 2026\n"}
# ~300 KB that deflate shrinks to a few KB: a zip much smaller than its payload, so the download's
# estimate (payload ~ zip) passes and only the exact checks of debag and sync can refuse it.
DEFLATABLE = {f"images/I{i:04d}.tif": bytes(75_000 + i) for i in range(4)}

LOG_LINE = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+ (ERROR|WARNING) glacier_sync\.")
# Names of the temporary files and folders of each step (download, debag, sync script).
TEMPORARY = re.compile(r"^\..*(\.part|\.syncing\.|\.replaced\.)|^\.debag-|\.tmp$")


def _unavailable(reason: str) -> None:
    if os.environ.get("CI"):
        pytest.fail(f"the disk-full tests must run in CI, but {reason}")
    pytest.skip(reason)


@dataclass
class Tmpfs:
    """A tmpfs the test mounted (the fixture unmounts it)."""

    path: Path

    def resize(self, kib: int, inodes: int = 100_000) -> None:
        options = f"remount,size={kib}k,nr_inodes={inodes}"
        subprocess.run(["mount", "-o", options, str(self.path)], check=True, capture_output=True)

    def used(self) -> int:
        stat = os.statvfs(self.path)
        return (stat.f_blocks - stat.f_bfree) * stat.f_frsize


@pytest.fixture
def tmpfs():
    """``tmpfs(path, kib)`` mounts a tmpfs of ``kib`` KiB at ``path`` for this test."""
    mounted: list[Path] = []

    def mount(path: Path, kib: int, inodes: int = 100_000) -> Tmpfs:
        if os.geteuid() != 0:
            _unavailable("mounting a tmpfs needs root")
        path.mkdir(parents=True, exist_ok=True)
        options = f"size={kib}k,nr_inodes={inodes},mode=0755,huge=never"
        result = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)],
            capture_output=True,
            text=True,
        )
        if result.returncode != 0:
            _unavailable(f"cannot mount a tmpfs at {path}: {result.stderr.strip()}")
        mounted.append(path)
        return Tmpfs(path)

    yield mount
    for path in reversed(mounted):
        subprocess.run(["umount", str(path)], check=True, capture_output=True)


@dataclass
class Scene:
    """One work restored in the moto world, the pipeline's folders and its environment."""

    world: object
    files: dict[str, bytes]
    bag_dir: Path
    zip_path: Path
    data: Path
    work: Path
    archive: Path
    db_url: str
    env: dict[str, str]

    @property
    def incoming_zip(self) -> Path:
        return self.data / "incoming" / KEY

    def run(self, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [str(VENV_BIN / "glacier-sync"), *args],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=120,
        )

    def status(self) -> dict:
        """The work's row as `glacier-sync status WORK --json` shows it."""
        result = self.run("status", WORK, "--json")
        assert result.returncode == 0, show(result)
        rows = json.loads(result.stdout)
        assert [r["work_id"] for r in rows] == [WORK], rows
        return rows[0]

    def row(self) -> tuple[dict, list[dict]]:
        """The work's row (as `status --json` prints it) and its history, from the store."""
        store = ProgressStore(self.db_url)
        try:
            rows = store.find([WORK])
        finally:
            store.engine.dispose()
        assert len(rows) == 1, [r.summary() for r in rows]
        return rows[0].summary(), rows[0].history

    def history(self) -> list[dict]:
        return self.row()[1]


def make_scene(
    world, tmp_path: Path, files: dict[str, bytes], work: Path | None = None, **places: Path
) -> Scene:
    """Upload and restore the bag of ``files``; ``places`` may put data or archive elsewhere.

    The progress database is outside every tmpfs, the free-space margin is 0 (the tests size
    the file systems to the byte), and the work root is ``work`` (default: in the data root).
    """
    bags = tmp_path / "bags"
    bags.mkdir(parents=True)
    bag_dir = make_bag_dir(bags, WORK, files)
    zip_path = zip_dir(bag_dir, bags / f"{WORK}.bag.zip")
    world.upload_archived(zip_path, KEY)
    world.restore(KEY)
    data = places.get("data", tmp_path / "data")
    archive = places.get("archive", tmp_path / "archive")
    for folder in (data, archive):
        folder.mkdir(exist_ok=True)
    db = tmp_path / "db" / "progress.sqlite"
    db.parent.mkdir(parents=True)
    extra = {"GLACIER_SYNC_WORK_ROOT": work} if work is not None else {}
    env = glacier_env(
        world,
        data,
        archive,
        GLACIER_SYNC_SQS_WAIT_SECONDS=0,
        GLACIER_SYNC_PROGRESS_DB_URL=f"sqlite:///{db}",
        GLACIER_SYNC_FREE_SPACE_MARGIN_MB=0,
        **extra,
    )
    work = work if work is not None else data / "work"
    return Scene(world, files, bag_dir, zip_path, data, work, archive, f"sqlite:///{db}", env)


def show(result: subprocess.CompletedProcess) -> str:
    return f"exit {result.returncode}\nstdout:\n{result.stdout}\nstderr:\n{result.stderr}"


def pages(size: int) -> int:
    return -(-size // PAGE)


def files_under(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def temporary_leftovers(*folders: Path) -> list[str]:
    return sorted(str(p) for f in folders for p in f.rglob("*") if TEMPORARY.search(p.name))


def expected_archive(scene: Scene) -> dict[str, bytes]:
    """The archive once the work is synced: the payload (from the test's own bytes) in the
    work's folder, the bag's tag files in ``<work>/<work>.bag/``, nothing else."""
    work_dir = PARENT / WORK
    tree = {str(work_dir / rel): content for rel, content in scene.files.items()}
    for path in scene.bag_dir.iterdir():
        if path.is_file():
            tree[str(work_dir / f"{WORK}.bag" / path.name)] = path.read_bytes()
    return tree


def empty_index_bytes(tmp: Path) -> int:
    """The size of the debag's index of member names when made (before any row)."""
    path = tmp / "empty-index.sqlite"
    BagIndex(path).close()
    size = path.stat().st_size
    path.unlink()
    return size


def assert_failed_for_space(scene: Scene, result, path: Path, phase: str) -> dict:
    """Exit 1, one FAILED line naming ``path`` and saying to free space, no traceback; the row
    is failed in ``phase`` with no attempt spent; the message is gone but recorded; nothing
    temporary is left anywhere; the archive holds nothing. Returns the row."""
    assert result.returncode == 1, show(result)
    assert "Traceback" not in result.stdout + result.stderr, show(result)
    noise = [line for line in result.stderr.splitlines() if not LOG_LINE.match(line)]
    assert noise == [], "stderr holds only log lines (the script's output goes to its log)"
    failed = [line for line in result.stdout.splitlines() if line.startswith("FAILED")]
    assert len(failed) == 1, show(result)
    line = failed[0]
    assert f" {path} " in line or f" {path};" in line, f"names {path}: {line}"
    assert re.search(r"free (some )?space there", line), line
    row, _ = scene.row()
    assert row["state"] == "failed", row
    assert row["failed_phase"] == phase, row
    assert row["attempts"] == 0, "a full disk is transient: no attempt spent"
    assert row["claimed_by"] is None, "the claim is released"
    assert row["last_error"] and "\n" not in row["last_error"], row["last_error"]
    assert line.endswith(row["last_error"]), (line, row["last_error"])
    assert scene.world.queue_count() == 0, "the message is deleted once its row is recorded"
    assert temporary_leftovers(scene.data, scene.work, scene.archive) == []
    assert list(scene.archive.rglob("*")) == [], "nothing partial in the archive"
    return row


def assert_zip_kept(scene: Scene) -> None:
    assert scene.incoming_zip.read_bytes() == scene.zip_path.read_bytes(), "the zip is kept"


def assert_rerun_archives(scene: Scene) -> None:
    """A plain re-run syncs the work: archive == bag, no attempt spent, nothing left over."""
    result = scene.run("run-once")
    assert result.returncode == 0, show(result)
    assert f"OK     {WORK} -> {scene.archive / PARENT / WORK} (" in result.stdout, show(result)
    row, _ = scene.row()
    assert (row["state"], row["attempts"], row["last_error"]) == ("synced", 0, None), row
    assert row["cleaned_at"] is not None, row
    assert files_under(scene.archive) == expected_archive(scene), "the archive holds the bag"
    leftovers = [
        str(p)
        for p in scene.data.rglob("*")
        if p not in (scene.data / "incoming", scene.work)
        and scene.data / "logs" not in (p, *p.parents)
    ]
    assert leftovers == [], "nothing left in the data root but its (empty) folders and logs"
    assert list(scene.work.iterdir()) == [], "the work root is emptied"


# -- 1. the data root (downloads) --------------------------------------------------------------


def test_data_root_too_small_for_the_zip_refuses_the_download(world, tmp_path, tmpfs):
    """Refused by the download's pre-check before any byte is written: the zip and the work
    folder (estimated by the zip's size) share the data root, and their sum is counted. (Writing
    the `.part` itself cannot run out from outside: the pre-check asks for the exact size and a
    single file has no overhead on a tmpfs; see the next test.)"""
    data = tmpfs(tmp_path / "data", SMALL_TMPFS_KIB)
    scene = make_scene(world, tmp_path, BIG, data=data.path)
    size = scene.zip_path.stat().st_size
    assert size > SMALL_TMPFS_KIB * 1024, "the zip does not fit"

    result = scene.run("run-once")

    row = assert_failed_for_space(scene, result, scene.incoming_zip.parent, "download")
    assert scene.status() == row, "`glacier-sync status --json` works with the data root full"
    error = row["last_error"]
    assert f"needs {2 * size} bytes at once" in error, error
    assert f"the zip {size} in {scene.incoming_zip.parent}, " in error, error
    assert f"the work folder {size} in {scene.work}," in error, error
    assert "archive copy" not in error, "the archive is elsewhere and checked on its own"
    assert "the download has not started" in error, error
    assert row["downloaded_at"] is None
    assert files_under(data.path) == {}, "nothing written to the full data root"
    assert data.used() == 0

    data.resize(LARGE_TMPFS_KIB)
    assert_rerun_archives(scene)


def test_a_work_too_big_for_the_room_does_not_hold_up_the_works_that_fit(world, tmp_path, tmpfs):
    """``run-once`` goes on past a work its free-space check refused before writing (the next
    may be smaller and each checks its own): the big work, first in line on every run, is
    refused, the small one after it is archived in the same run (any other transient failure
    still ends the run: tests/test_runner.py)."""
    data = tmpfs(tmp_path / "data", SMALL_TMPFS_KIB)
    scene = make_scene(world, tmp_path, BIG, data=data.path)
    first = scene.run("run-once")
    assert_failed_for_space(scene, first, scene.incoming_zip.parent, "download")
    small_key = "Archive0/01/W1FITS/W1FITS.bag.zip"
    small_zip = zip_dir(
        make_bag_dir(tmp_path / "bags", "W1FITS", TINY), tmp_path / "bags" / "W1FITS.bag.zip"
    )
    world.upload_archived(small_zip, small_key)
    world.restore(small_key)

    second = scene.run("run-once")

    assert second.returncode == 1, show(second)
    failed = [line for line in second.stdout.splitlines() if line.startswith("FAILED")]
    assert len(failed) == 1 and WORK in failed[0], show(second)
    assert f"OK     W1FITS -> {scene.archive / PARENT / 'W1FITS'} (" in second.stdout, show(second)
    assert "not enough room for it; the next works are tried" in second.stderr, show(second)
    store = ProgressStore(scene.db_url)
    try:
        rows = {row.work_id: row for row in store.find([WORK, "W1FITS"])}
    finally:
        store.engine.dispose()
    assert rows[WORK].id < rows["W1FITS"].id, "the big work came first in line"
    assert (rows[WORK].state, rows[WORK].attempts) == ("failed", 0), rows[WORK].summary()
    assert rows["W1FITS"].state == "synced", rows["W1FITS"].summary()
    assert (scene.archive / PARENT / "W1FITS" / "sources" / "notes.txt").read_bytes() == (
        TINY["sources/notes.txt"]
    )
    assert not (scene.archive / PARENT / WORK).exists()


def test_archive_root_too_small_for_the_copy_refuses_the_download(world, tmp_path, tmpfs):
    """The archive copy the sync will make is counted before the download starts (the work
    folder is on another file system, so it is copied, not moved): nothing is fetched for a
    work the archive cannot take."""
    archive = tmpfs(tmp_path / "archive", SMALL_TMPFS_KIB)
    scene = make_scene(world, tmp_path, BIG, work=tmp_path / "work", archive=archive.path)
    size = scene.zip_path.stat().st_size

    result = scene.run("run-once")

    row = assert_failed_for_space(scene, result, archive.path / PARENT, "download")
    error = row["last_error"]
    assert f"(the archive copy {size} in {archive.path / PARENT}, plus" in error, error
    assert f"only {SMALL_TMPFS_KIB * 1024} are free" in error, error
    assert not scene.incoming_zip.parent.exists() or files_under(scene.data / "incoming") == {}
    assert archive.used() == 0

    archive.resize(LARGE_TMPFS_KIB)
    assert_rerun_archives(scene)


@pytest.mark.parametrize("move_work", [True, False], ids=["moved", "copied"])
def test_one_file_system_counts_the_archive_copy_only_when_copied(
    world, tmp_path, tmpfs, move_work
):
    """Data root and archive on one file system with room for the zip and the work folder but
    not for a third copy: a sync that moves the work folder into the archive fits; one that
    copies it is refused before the download, naming all three."""
    disk = tmpfs(tmp_path / "disk", 768)
    scene = make_scene(world, tmp_path, BIG, data=disk.path / "data", archive=disk.path / "archive")
    size = scene.zip_path.stat().st_size
    assert 2 * size < 768 * 1024 < 3 * size, "room for two copies, not three"
    scene.env["GLACIER_SYNC_SYNC_MOVE_WORK"] = "true" if move_work else "false"

    if move_work:
        assert_rerun_archives(scene)
        return
    result = scene.run("run-once")
    row = assert_failed_for_space(scene, result, scene.incoming_zip.parent, "download")
    error = row["last_error"]
    assert f"needs {3 * size} bytes at once" in error, error
    assert "the zip" in error and "the work folder" in error and "the archive copy" in error

    disk.resize(LARGE_TMPFS_KIB)
    assert_rerun_archives(scene)


def test_data_root_with_room_for_the_zip_only_runs_out_while_downloading(world, tmp_path, tmpfs):
    """The zip fits to the page, so the pre-check passes; writing its completion record is a
    real ENOSPC. Nothing half-written stays (no zip without its record, no empty record), so a
    re-run with one more page downloads it again and succeeds."""
    scene = make_scene(world, tmp_path, BIG, work=tmp_path / "work")
    zip_pages = pages(scene.zip_path.stat().st_size)
    data = tmpfs(scene.data, zip_pages * PAGE // 1024)

    result = scene.run("run-once")

    row = assert_failed_for_space(scene, result, scene.incoming_zip.parent, "download")
    assert "no space left in" in row["last_error"] and "while downloading" in row["last_error"]
    assert row["downloaded_at"] is None
    record = scene.incoming_zip.with_name(scene.incoming_zip.name + ".download.json")
    assert not record.exists(), "no (empty) completion record is left"
    assert files_under(data.path) == {}, "no zip without its completion record either"

    data.resize(LARGE_TMPFS_KIB)
    assert_rerun_archives(scene)
    downloads = [h.get("skipped") for h in scene.history() if h["event"] == "download done"]
    assert downloads == [None], "downloaded once, by the re-run"


# -- 2. the work root (debag) ------------------------------------------------------------------


def test_work_root_too_small_for_the_payload_refuses_the_debag(world, tmp_path, tmpfs):
    """Refused by the debag's pre-check (declared sizes plus a zero margin) before extracting:
    the zip is small enough for the download's estimate, its payload is not."""
    work = tmpfs(tmp_path / "work", SMALL_TMPFS_KIB)
    scene = make_scene(world, tmp_path, DEFLATABLE, work=work.path)
    assert scene.zip_path.stat().st_size < SMALL_TMPFS_KIB * 1024 // 4, "the zip passes"
    assert sum(map(len, DEFLATABLE.values())) > SMALL_TMPFS_KIB * 1024, "the payload does not fit"

    result = scene.run("run-once")

    row = assert_failed_for_space(scene, result, work.path, "debag")
    free = int(re.search(r"only (\d+) are free", row["last_error"]).group(1))
    index = empty_index_bytes(tmp_path)  # the debag's index of names, made before the check
    assert SMALL_TMPFS_KIB * 1024 - index <= free < SMALL_TMPFS_KIB * 1024, row["last_error"]
    assert row["downloaded_at"] is not None
    assert_zip_kept(scene)
    assert list(work.path.iterdir()) == [] and work.used() == 0, "nothing extracted"

    work.resize(LARGE_TMPFS_KIB)
    assert_rerun_archives(scene)
    downloads = [h.get("skipped") for h in scene.history() if h["event"] == "download done"]
    assert downloads == [None, "complete"], "the kept zip is not downloaded again"


@pytest.mark.parametrize(
    ("files", "kib", "where"),
    [
        (SMALL, SMALL_TMPFS_KIB, r"while extracting data/images/I\d{4}\.tif "),
        (TINY, 8, r"for the debag's index of member names"),
        (TINY, 8 + EMPTY_INDEX_KIB, r"while writing the tag file \S+\.txt;"),
    ],
    ids=["payload", "index", "tag-files"],
)
def test_work_root_filling_up_during_extraction(world, tmp_path, tmpfs, files, kib, where):
    """The zip declares fewer bytes than the tmpfs holds (the pre-check passes, no margin), but
    each small file takes a page: the extraction itself hits ENOSPC (in the payload, or already
    in the tag files, which are written first), or the debag's index of names (made first,
    four pages when empty) cannot be made at all."""
    work = tmpfs(tmp_path / "work", kib)
    scene = make_scene(world, tmp_path, files, work=work.path)
    bag_files = [p for p in scene.bag_dir.rglob("*") if p.is_file()]
    declared = sum(p.stat().st_size for p in bag_files)
    index = empty_index_bytes(tmp_path)
    assert index == EMPTY_INDEX_KIB * 1024, "the index's size the cases are sized for"
    if "index" in where:
        assert kib * 1024 < index, "sized so that the index does not fit"
    else:
        assert declared < kib * 1024 - index < len(bag_files) * PAGE, "sized for a real ENOSPC"

    result = scene.run("run-once")

    row = assert_failed_for_space(scene, result, work.path, "debag")
    assert re.search(rf"no space left in {re.escape(str(work.path))} {where}", row["last_error"]), (
        row["last_error"]
    )
    assert_zip_kept(scene)
    assert list(work.path.iterdir()) == [] and work.used() == 0, "the staging is removed"

    work.resize(LARGE_TMPFS_KIB)
    assert_rerun_archives(scene)


# -- 3. the archive root (sync) ----------------------------------------------------------------


def test_archive_root_too_small_for_the_work_refuses_the_sync(world, tmp_path, tmpfs):
    """Refused by the sync's pre-check (the debagged bytes against the archive's free space)
    before the sync script runs; the group folders it created are removed again."""
    archive = tmpfs(tmp_path / "archive", SMALL_TMPFS_KIB)
    scene = make_scene(world, tmp_path, DEFLATABLE, work=tmp_path / "work", archive=archive.path)
    assert scene.zip_path.stat().st_size < SMALL_TMPFS_KIB * 1024 // 4, "the zip passes"
    assert sum(map(len, DEFLATABLE.values())) > SMALL_TMPFS_KIB * 1024, "the payload does not fit"

    result = scene.run("run-once")

    row = assert_failed_for_space(scene, result, archive.path / PARENT, "sync")
    assert f"only {SMALL_TMPFS_KIB * 1024} are free" in row["last_error"], row["last_error"]
    assert row["debagged_at"] is not None
    assert_zip_kept(scene)
    assert archive.used() == 0
    assert (scene.work / WORK).is_dir(), "the debagged work folder is kept for the retry"

    archive.resize(LARGE_TMPFS_KIB)
    assert_rerun_archives(scene)
    debags = [h.get("skipped") for h in scene.history() if h["event"] == "debag done"]
    assert debags == [None, "already debagged"], "the kept work folder is reused"


def test_archive_root_filling_up_during_the_copy(world, tmp_path, tmpfs):
    """The work's blocks fit (the pre-check passes) but not its files: the tmpfs has too few
    inodes, so `cp` itself hits ENOSPC half way."""
    archive = tmpfs(tmp_path / "archive", LARGE_TMPFS_KIB, inodes=len(SMALL) // 2)
    scene = make_scene(world, tmp_path, SMALL, work=tmp_path / "work", archive=archive.path)

    result = scene.run("run-once")

    row = assert_failed_for_space(scene, result, archive.path / PARENT, "sync")
    assert "during the sync" in row["last_error"], row["last_error"]
    log_file = Path(row["last_error"].rsplit("Log: ", 1)[1])
    assert "No space left on device" in log_file.read_text(), "cp itself ran out of space"
    assert_zip_kept(scene)
    assert archive.used() == 0, "the script removed its staging copy"

    archive.resize(LARGE_TMPFS_KIB)
    assert_rerun_archives(scene)
