"""process-bag benchmark: `glacier-sync process-bag` against the naive way, side by side.

    python benchmarks/bench_process_bag.py [--size 64M] [--files 128] [--reps 3]
                                           [--workdir DIR] [--other-fs auto|none|PATH]

Generates one deterministic bag zip (seeded random payload, as incompressible as TIFF scans;
stored, not deflated; a sha512 manifest; ``--size`` bytes in ``--files`` files), then runs, in
the same run and rotating their order in every repetition, each contender in its own child
process (the wall time is measured around the whole process: interpreter start-up and imports
count, as they do for a user):

* ``process-bag``         ``glacier-sync process-bag ZIP --archive-root A --data-dir D`` as a
                          user runs it, the data dir and the archive on the workdir's file
                          system (the work folder is renamed into the archive);
* ``process-bag (copy)``  the same with ``GLACIER_SYNC_SYNC_MOVE_WORK=false`` (copied with
                          ``cp -a`` and compared with ``diff -r``, as every sync did before);
* ``naive``               ``zipfile.extractall`` + ``bagit.Bag(...).validate()`` +
                          ``shutil.copytree`` into the archive;

and, when another file system is available (a tmpfs it mounts when run as root, else
/dev/shm, else ``--other-fs PATH``), ``process-bag`` and ``naive`` again with the archive there
(the sync copies: a rename cannot cross file systems).

The data dir's progress database is current (migrated once, before timing: the usual case).
Before each timed run the archive is empty and ``sync`` has flushed every dirty page, so that
one contender's writes are not paid by the next. Each run's result is checked (the archive
holds every payload byte), then removed. Prints medians and the ratio against the naive way
with the archive in the same place. Not a test: nothing fails on a slow machine.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))

from bench_debag import machine, make_bag_zip, parse_size  # noqa: E402

WORK_ID = "W1BENCH"
PHASES = re.compile(r"\((.*)\)\s*$")


def glacier_sync_env(move: bool) -> dict[str, str]:
    """The environment of a user's shell, this checkout's sources first, nothing configured."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("GLACIER_SYNC_")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO / "src"), env.get("PYTHONPATH")]))
    if not move:
        env["GLACIER_SYNC_SYNC_MOVE_WORK"] = "false"
    return env


def naive_child(zip_path: str, out: str, archive: str) -> None:
    """The naive way, in its own process: extract, validate with bagit, copy into the archive."""
    import bagit

    out_dir = Path(out)
    with zipfile.ZipFile(zip_path) as zf:
        zf.extractall(out_dir)
    bagit.Bag(str(out_dir)).validate()
    shutil.copytree(out_dir, Path(archive) / out_dir.name)


class Place:
    """Where a contender's data dir (or extraction folder) and archive are, per run."""

    def __init__(self, scratch: Path, archive_parent: Path) -> None:
        self.scratch = scratch
        self.archive_parent = archive_parent

    def fresh(self, template_db: Path) -> tuple[Path, Path]:
        """An empty archive and a data dir holding a copy of the current, migrated database."""
        self.clear()
        data, archive = self.scratch / "data", self.archive_parent / "archive"
        data.mkdir(parents=True)
        archive.mkdir(parents=True)
        for db_file in template_db.parent.glob("progress.sqlite*"):
            shutil.copy2(db_file, data / db_file.name)
        return data, archive

    def clear(self) -> None:
        for folder in (self.scratch / "data", self.scratch / "naive"):
            shutil.rmtree(folder, ignore_errors=True)
        shutil.rmtree(self.archive_parent / "archive", ignore_errors=True)


def archived_bytes(folder: Path) -> tuple[int, int]:
    """(files, bytes) of the payload found under ``folder`` (images/*.tif at any depth)."""
    files = [p for p in folder.rglob("*.tif") if p.is_file()]
    return len(files), sum(p.stat().st_size for p in files)


def run_contender(
    name: str, zip_path: Path, place: Place, template_db: Path, payload: tuple[int, int]
) -> dict:
    """One timed run of ``name`` in a child process; checked, then cleaned (untimed)."""
    data, archive = place.fresh(template_db)
    os.sync()
    if name.startswith("naive"):
        argv = [sys.executable, __file__, "_naive", str(zip_path), str(place.scratch / "naive")]
        argv.append(str(archive))
        env = dict(os.environ)
    else:
        argv = [str(Path(sys.executable).parent / "glacier-sync"), "process-bag", str(zip_path)]
        argv += ["--archive-root", str(archive), "--data-dir", str(data)]
        env = glacier_sync_env(move="(copy)" not in name)
    started = time.perf_counter()
    result = subprocess.run(argv, env=env, capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - started
    if result.returncode != 0:
        raise RuntimeError(f"{name} failed ({result.returncode}): {result.stdout}{result.stderr}")
    found = archived_bytes(archive / (WORK_ID if not name.startswith("naive") else "naive"))
    if found != payload:
        raise RuntimeError(f"{name}: the archive holds {found} (files, bytes), not {payload}")
    phases = {}
    match = PHASES.search(result.stdout.strip().splitlines()[-1]) if result.stdout else None
    if match and not name.startswith("naive"):
        for part in match.group(1).split(", "):
            phase, value = part.split()
            phases[phase] = float(value.rstrip("s"))
    place.clear()
    os.sync()
    return {"seconds": seconds, **phases}


def other_file_system(choice: str, workdir: Path, needed: int) -> tuple[Path | None, str, bool]:
    """(folder on another file system or None, how it was found, whether this mounted it)."""
    if choice == "none":
        return None, "not asked (--other-fs none)", False
    device = workdir.stat().st_dev
    if choice != "auto":
        path = Path(choice)
        path.mkdir(parents=True, exist_ok=True)
        if path.stat().st_dev == device:
            return None, f"{path} is on the workdir's file system", False
        return path, f"{path} (given)", False
    mount_point = workdir / "other-fs"
    if os.geteuid() == 0 and shutil.which("mount"):
        mount_point.mkdir(exist_ok=True)
        size_kib = needed // 1024 + 65536
        mounted = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size_kib}k", "tmpfs", str(mount_point)],
            capture_output=True,
            text=True,
            check=False,
        )
        if mounted.returncode == 0:
            return mount_point, f"a tmpfs mounted at {mount_point}", True
    shm = Path("/dev/shm")
    if (
        shm.is_dir()
        and os.access(shm, os.W_OK)
        and shm.stat().st_dev != device
        and shutil.disk_usage(shm).free > needed
    ):
        return Path(tempfile.mkdtemp(prefix="bench-process-bag-", dir=shm)), "/dev/shm", False
    return None, "none available (not root, and no roomy /dev/shm on another device)", False


def main() -> None:
    """Command line entry point."""
    if len(sys.argv) > 1 and sys.argv[1] == "_naive":
        naive_child(*sys.argv[2:5])
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", default="64M", help="payload size (64M; the figures: 1G)")
    parser.add_argument("--files", type=int, default=128, help="payload files (128)")
    parser.add_argument("--reps", type=int, default=3, help="repetitions (3); medians printed")
    parser.add_argument("--workdir", type=Path, default=Path("/var/tmp/glacier-sync-bench"))
    parser.add_argument(
        "--other-fs",
        default="auto",
        help="archive on another file system: auto (mount a tmpfs when root, else /dev/shm), "
        "none, or a folder on another file system",
    )
    args = parser.parse_args()
    size = parse_size(args.size)
    from machine_room import require_disk

    # The zip, the work folder and the archive copy at once, with room to spare.
    require_disk(args.workdir, int(3.3 * size), "bench_process_bag.py")
    args.workdir.mkdir(parents=True, exist_ok=True)
    workdir = args.workdir.resolve()
    print(machine())
    name = f"bag-{size}-{args.files}-stored"
    started = time.perf_counter()
    (workdir / name).mkdir(exist_ok=True)
    zip_path = workdir / name / f"{WORK_ID}.bag.zip"
    make_bag_zip(zip_path, size, args.files, zipfile.ZIP_STORED, seed=size + args.files)
    print(f"bag: {zip_path} ({zip_path.stat().st_size / 1e6:.0f} MB, {args.files} files, stored)")
    print(f"[zip ready in {time.perf_counter() - started:.1f} s]")
    payload = (args.files, size)

    template_db = workdir / "template" / "progress.sqlite"
    if not template_db.exists():
        upgrade = subprocess.run(
            [str(Path(sys.executable).parent / "glacier-sync"), "db", "upgrade", "--data-dir"]
            + [str(template_db.parent)],
            env=glacier_sync_env(move=True),
            capture_output=True,
            text=True,
            check=True,
        )
        print(upgrade.stdout.strip())

    here = Place(workdir / "run", workdir / "run")
    places = {"process-bag": here, "process-bag (copy)": here, "naive": here}
    other, how, mounted = other_file_system(args.other_fs, workdir, 2 * size)
    print(f"another file system for the archive: {how}")
    if other is not None:
        away = Place(workdir / "run", other)
        places |= {"process-bag, other fs": away, "naive, other fs": away}
    contenders = list(places)
    results: dict[str, list[dict]] = {c: [] for c in contenders}
    try:
        for rep in range(args.reps):
            order = contenders[rep % len(contenders) :] + contenders[: rep % len(contenders)]
            for contender in order:
                results[contender].append(
                    run_contender(contender, zip_path, places[contender], template_db, payload)
                )
    finally:
        for place in set(places.values()):
            place.clear()
        if mounted and other is not None:
            subprocess.run(["umount", str(other)], check=False)
        elif other is not None and args.other_fs == "auto":
            shutil.rmtree(other, ignore_errors=True)

    print(
        f"\n{size / 2**20:.0f} MiB in {args.files} files, {args.reps} repetitions, medians "
        "(wall time of the whole process; debag and sync as glacier-sync reports them)"
    )
    print(
        f"{'contender':<24}{'archive':>9}{'seconds':>9}{'min':>7}{'max':>7}{'debag':>7}"
        f"{'sync':>7}{'vs naive':>10}"
    )
    for contender in contenders:
        runs = results[contender]
        seconds = [r["seconds"] for r in runs]
        naive = "naive, other fs" if "other fs" in contender else "naive"
        ratio = statistics.median(seconds) / statistics.median(r["seconds"] for r in results[naive])
        phase = {
            p: f"{statistics.median(r[p] for r in runs):.2f}" if p in runs[0] else "-"
            for p in ("debag", "sync")
        }
        print(
            f"{contender:<24}{'other fs' if 'other fs' in contender else 'same fs':>9}"
            f"{statistics.median(seconds):>9.2f}{min(seconds):>7.2f}{max(seconds):>7.2f}"
            f"{phase['debag']:>7}{phase['sync']:>7}{ratio:>9.2f}x"
        )
    if other is None:
        print(f"(no run with the archive on another file system: {how})")
    print(
        "\nThe write path of a VM is noisy (the same 1 GB write can take 1.2 s or 3 s): compare "
        "contenders of one run, and repeat runs before trusting a difference of a few percent."
    )


if __name__ == "__main__":
    main()
