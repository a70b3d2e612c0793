"""Debag benchmark: the project's one-pass debag against the standard tools, side by side.

    python benchmarks/bench_debag.py [--size 1G --files 50] [--small-size 200M --small-files 20000]
                                     [--reps 3] [--workdir DIR] [--compression stored|deflated]

Generates deterministic bags (two shapes: few large files, many small ones), then runs, in the
same process run and alternating the contenders in every repetition:

* ``glacier_sync``    the project's debag (safety checks, extract + hash in one pass, validate);
* ``unzip+sha512sum`` ``unzip -q`` then ``sha512sum -c manifest-sha512.txt``;
* ``extract+bagit``   ``zipfile.extractall`` then ``bagit.Bag(...).validate()``;
* ``sha512 floor``    one SHA-512 pass over the payload on one core (no extraction at all).

Each contender runs in its own child process, so its wall time, bytes read (rchar: bytes read
through system calls, page cache included; and read_bytes: from the block device) and peak
memory (max RSS) are its own. Prints medians, MB/s and ratios, with the machine's details.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import random
import re
import resource
import shutil
import statistics
import subprocess
import sys
import time
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tools"))

CONTENDERS = [
    "glacier_sync",
    "unzip+sha512sum",
    "extract+bagit",
    "sha512 floor",
    "sha512+write floor",
]


def parse_size(text: str) -> int:
    """``1G`` / ``200M`` / ``512K`` / ``1000`` -> bytes."""
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    text = text.strip().upper().removesuffix("B").removesuffix("I")
    if text and text[-1] in units:
        return int(float(text[:-1]) * units[text[-1]])
    return int(text)


def make_bag_zip(path: Path, total: int, files: int, compression: int, seed: int) -> Path:
    """A valid bag zip of ``files`` payload files summing to ``total`` bytes (sha512 manifest)."""
    if path.exists():
        return path
    rng = random.Random(seed)
    base, extra = divmod(total, files)
    manifest, oxum = [], 0
    tmp = path.with_suffix(".tmp")
    with zipfile.ZipFile(tmp, "w", compression, allowZip64=True) as zf:
        for index in range(files):
            size = base + (1 if index < extra else 0)
            name = f"data/images/I{index:06d}.tif"
            digest = hashlib.sha512()
            with zf.open(
                zipfile.ZipInfo(name, date_time=(2026, 1, 1, 0, 0, 0)),
                "w",
                force_zip64=size > 1 << 30,
            ) as out:
                left = size
                while left:
                    chunk = rng.randbytes(min(left, 4 << 20))
                    digest.update(chunk)
                    out.write(chunk)
                    left -= len(chunk)
            manifest.append(f"{digest.hexdigest()}  {name}\n")
            oxum += size
        zf.writestr("bagit.txt", "BagIt-Version: 0.97\nTag-File-Character-Encoding: UTF-8\n")
        zf.writestr("bag-info.txt", f"Payload-Oxum: {oxum}.{files}\nSource-Organization: bench\n")
        zf.writestr("manifest-sha512.txt", "".join(manifest))
    tmp.rename(path)
    return path


# -- contenders, each run in a child process ---------------------------------------------------


def run_glacier_sync(zip_path: Path, out: Path) -> None:
    from glacier_sync.bag.bags import debag

    debag(zip_path, out, "W1BENCH")


def run_unzip_sha512sum(zip_path: Path, out: Path) -> None:
    out.mkdir(parents=True)
    subprocess.run(["unzip", "-q", str(zip_path), "-d", str(out)], check=True)
    subprocess.run(["sha512sum", "--quiet", "-c", "manifest-sha512.txt"], cwd=out, check=True)


def run_extract_bagit(zip_path: Path, out: Path) -> None:
    import bagit

    with zipfile.ZipFile(zip_path) as zf:
        zf.extractall(out)
    bagit.Bag(str(out)).validate()


def run_floor(zip_path: Path, out: Path) -> None:
    with zipfile.ZipFile(zip_path) as zf:
        for info in zf.infolist():
            if info.filename.startswith("data/"):
                digest = hashlib.sha512()
                with zf.open(info) as src:
                    while chunk := src.read(1 << 20):
                        digest.update(chunk)


def run_floor_written(zip_path: Path, out: Path) -> None:
    """The floor of a bag of many small files: each payload file read, hashed once and written
    to a file of its own (the file creation a debag cannot avoid), nothing checked."""
    made: set[Path] = set()
    with zipfile.ZipFile(zip_path) as zf:
        for info in zf.infolist():
            if not info.filename.startswith("data/") or info.is_dir():
                continue
            target = out / info.filename
            if target.parent not in made:
                target.parent.mkdir(parents=True, exist_ok=True)
                made.add(target.parent)
            digest = hashlib.sha512()
            with zf.open(info) as src, open(target, "wb") as dst:
                while chunk := src.read(1 << 20):
                    digest.update(chunk)
                    dst.write(chunk)


RUNNERS = {
    "glacier_sync": run_glacier_sync,
    "unzip+sha512sum": run_unzip_sha512sum,
    "extract+bagit": run_extract_bagit,
    "sha512 floor": run_floor,
    "sha512+write floor": run_floor_written,
}


def _io() -> dict[str, int]:
    fields = dict(line.split(": ") for line in Path("/proc/self/io").read_text().splitlines())
    return {"rchar": int(fields["rchar"]), "read_bytes": int(fields["read_bytes"])}


def child(contender: str, zip_path: str, out: str) -> None:
    """Run one contender; print its measurements as JSON (imports are not timed)."""
    import bagit  # noqa: F401

    import glacier_sync.bag.bags  # noqa: F401

    before = _io()
    started = time.perf_counter()
    RUNNERS[contender](Path(zip_path), Path(out))
    seconds = time.perf_counter() - started
    after = _io()  # includes the I/O of waited-for children (unzip, sha512sum)
    # This process's own peak (VmHWM): ru_maxrss would also count the peak of the process
    # that started it (the benchmark, which built the bag), carried across fork and exec.
    own = int(re.search(r"VmHWM:\s+(\d+) kB", Path("/proc/self/status").read_text()).group(1))
    kids = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    print(
        json.dumps(
            {
                "seconds": seconds,
                "rchar": after["rchar"] - before["rchar"],
                "read_bytes": after["read_bytes"] - before["read_bytes"],
                "max_rss_kb": max(own, kids),
            }
        )
    )


def measure(contender: str, zip_path: Path, workdir: Path) -> dict:
    out = workdir / "out"
    shutil.rmtree(out, ignore_errors=True)
    result = subprocess.run(
        [sys.executable, __file__, "_child", contender, str(zip_path), str(out)],
        capture_output=True,
        text=True,
        check=False,
    )
    shutil.rmtree(out, ignore_errors=True)
    if result.returncode != 0:
        raise RuntimeError(f"{contender} failed: {result.stderr[-2000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def machine() -> str:
    cpu = next(
        (
            ln.split(":", 1)[1].strip()
            for ln in Path("/proc/cpuinfo").read_text().splitlines()
            if ln.startswith("model name")
        ),
        platform.processor(),
    )
    mem = int(Path("/proc/meminfo").read_text().split()[1]) // 1024
    return (
        f"{platform.node()}: {cpu}, {os.cpu_count()} cores, {mem} MiB, "
        f"Python {platform.python_version()}, {platform.system()} {platform.release()}"
    )


def bench_shape(label: str, zip_path: Path, payload: int, reps: int, workdir: Path) -> None:
    results: dict[str, list[dict]] = {c: [] for c in CONTENDERS}
    for rep in range(reps):
        order = CONTENDERS[rep % len(CONTENDERS) :] + CONTENDERS[: rep % len(CONTENDERS)]
        for contender in order:
            results[contender].append(measure(contender, zip_path, workdir))
    med = {c: {k: statistics.median(r[k] for r in rs) for k in rs[0]} for c, rs in results.items()}
    mb = payload / 1e6
    print(f"\n{label}: {zip_path.name}, payload {mb:.0f} MB, {reps} repetitions (medians)")
    print(
        f"{'contender':<18}{'seconds':>9}{'MB/s':>9}{'read MB':>10}{'disk MB':>9}"
        f"{'peak MB':>9}{'vs glacier_sync':>17}"
    )
    ours = med["glacier_sync"]["seconds"]
    for contender in CONTENDERS:
        m = med[contender]
        print(
            f"{contender:<18}{m['seconds']:>9.2f}{mb / m['seconds']:>9.0f}"
            f"{m['rchar'] / 1e6:>10.0f}{m['read_bytes'] / 1e6:>9.0f}"
            f"{m['max_rss_kb'] / 1024:>9.0f}{m['seconds'] / ours:>16.2f}x"
        )
    print(
        f"ratios: glacier_sync / extract+bagit = {ours / med['extract+bagit']['seconds']:.2f}"
        f" (target <= 0.6); glacier_sync / sha512 floor = "
        f"{ours / med['sha512 floor']['seconds']:.2f} (target <= 1.3); glacier_sync / "
        f"unzip+sha512sum = {ours / med['unzip+sha512sum']['seconds']:.2f}"
    )


def main() -> None:
    """Command line entry point."""
    if len(sys.argv) > 1 and sys.argv[1] == "_child":
        child(*sys.argv[2:5])
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", default="1G", help="large shape payload (1G)")
    parser.add_argument("--files", type=int, default=50, help="large shape file count (50)")
    parser.add_argument("--small-size", default="200M", help="small shape payload (200M)")
    parser.add_argument("--small-files", type=int, default=20000, help="small shape files")
    parser.add_argument("--reps", type=int, default=3, help="repetitions (3)")
    parser.add_argument("--compression", choices=["stored", "deflated"], default="stored")
    parser.add_argument("--workdir", type=Path, default=Path("/var/tmp/glacier-sync-bench"))
    parser.add_argument("--shapes", default="large,small", help="large,small")
    args = parser.parse_args()
    comp = zipfile.ZIP_STORED if args.compression == "stored" else zipfile.ZIP_DEFLATED
    shapes = {
        "large": ("few large files", parse_size(args.size), args.files),
        "small": ("many small files", parse_size(args.small_size), args.small_files),
    }
    from machine_room import require_disk

    # One shape at a time: its zip and the payload extracted from it, with room to spare.
    biggest = max(shapes[key][1] for key in args.shapes.split(","))
    require_disk(args.workdir, int(2.2 * biggest), "bench_debag.py")
    args.workdir.mkdir(parents=True, exist_ok=True)
    print(machine())
    print(f"zip compression: {args.compression}; workdir {args.workdir}")
    for key in args.shapes.split(","):
        label, size, files = shapes[key]
        name = f"bag-{key}-{size}-{files}-{args.compression}.zip"
        started = time.perf_counter()
        zip_path = make_bag_zip(args.workdir / name, size, files, comp, seed=size + files)
        print(f"\n[{label}: zip ready in {time.perf_counter() - started:.1f} s]")
        bench_shape(label, zip_path, size, args.reps, args.workdir)


if __name__ == "__main__":
    main()
