"""Memory that does not grow with a bag's file count.

``glacier-sync process-bag`` (debag, sync, records) of a 20,000-file bag is measured against
the same command on a 10-file bag: the peak RSS the extra files add must stay under
``BYTES_PER_FILE`` each. bagit's dictionaries (copied three times) added about 1,500 bytes a
file; one compact table of the manifests in memory and zipfile's ``ZipInfo`` of every member
about 700 (696 measured). Now the zip's directory is read as a stream and every per-file table
(names, folders, manifests) is a SQLite file whose page cache is capped at 8 MB
(``bag_index.CACHE_KIB``): about 200 bytes a file here, where the cache fills, and the same
4 to 9 MB for 100,000 files (process-bag peaked at 83 MB against 145 MB before)."""

from __future__ import annotations

import hashlib
import os
import subprocess
import zipfile
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

PYTHON = Path(__file__).resolve().parents[1] / ".venv" / "bin" / "python"
# glacier-sync's own main, reporting the process's peak RSS (VmHWM) as it exits. Not wait4's
# ru_maxrss: that counts the high-water mark of the process that forked it (a pytest worker
# of 130 MB), which the kernel carries across fork and exec.
MEASURED_MAIN = """
import atexit, re, sys
from glacier_sync.cli import main
def report(path=sys.argv.pop(1)):
    status = open("/proc/self/status").read()
    open(path, "w").write(re.search(r"VmHWM:\\s+(\\d+) kB", status).group(1))
atexit.register(report)
sys.argv[0] = "glacier-sync"
sys.exit(main())
"""
FILES = 20_000
BYTES_PER_FILE = 400


def _bag_zip(path: Path, files: int) -> Path:
    """A stored bag zip as bagit-python makes one: ``files`` small payload files in one flat
    folder, a SHA-512 manifest, and a tag manifest that lists it (so the payload manifest is
    hashed as a tag file too)."""
    manifest = []
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as zf:
        for index in range(files):
            name = f"data/images/I{index:06d}.tif"
            data = index.to_bytes(4, "big") * 16
            zf.writestr(name, data)
            manifest.append(f"{hashlib.sha512(data).hexdigest()}  {name}\n")
        tags = {
            "bagit.txt": "BagIt-Version: 0.97\nTag-File-Character-Encoding: UTF-8\n",
            "bag-info.txt": f"Payload-Oxum: {files * 64}.{files}\n",
            "manifest-sha512.txt": "".join(manifest),
        }
        for name, text in tags.items():
            zf.writestr(name, text)
        zf.writestr(
            "tagmanifest-sha256.txt",
            "".join(f"{hashlib.sha256(t.encode()).hexdigest()}  {n}\n" for n, t in tags.items()),
        )
    return path


def _peak_rss(zip_path: Path, tmp: Path) -> int:
    """Peak RSS in bytes of one ``process-bag`` (its own process: VmHWM as it exits)."""
    data, archive = tmp / f"data-{zip_path.stem}", tmp / f"archive-{zip_path.stem}"
    archive.mkdir()
    peak = tmp / f"peak-{zip_path.stem}"
    with open(tmp / "out.log", "wb") as out:
        returncode = subprocess.call(
            [PYTHON, "-c", MEASURED_MAIN, peak, "process-bag", zip_path, "--data-dir", data]
            + ["--archive-root", archive],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    assert returncode == 0, (tmp / "out.log").read_text()
    return int(peak.read_text()) * 1024


def test_process_bag_memory_per_file_stays_under_the_bound(tmp_path):
    small = _peak_rss(_bag_zip(tmp_path / "W1FEW.bag.zip", 10), tmp_path)
    large = _peak_rss(_bag_zip(tmp_path / "W1MANY.bag.zip", FILES), tmp_path)
    archived = tmp_path / "archive-W1MANY.bag" / "W1MANY" / "images"
    assert sum(len(files) for _, _, files in os.walk(archived)) == FILES
    per_file = (large - small) / FILES
    assert per_file < BYTES_PER_FILE, (
        f"process-bag of {FILES} files peaked at {large / 1e6:.0f} MB, "
        f"{per_file:.0f} bytes a file over a 10-file bag ({small / 1e6:.0f} MB)"
    )


def _traced_peak(action) -> int:
    """Bytes of Python memory ``action()`` held at its peak (tracemalloc)."""
    import tracemalloc

    tracemalloc.start()
    try:
        action()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def _flat_folder(folder: Path, files: int) -> Path:
    folder.mkdir(parents=True)
    for index in range(files):
        (folder / f"I{index:06d}.tif").write_bytes(b"x")
    return folder


def test_a_flat_folder_is_measured_placed_and_removed_without_its_listing_in_memory(tmp_path):
    """A bag whose payload is one flat folder of 20,000 files: the debag's placing, the free
    space check's count and the clean-up read it as a stream (a listing of it is about 2 MB
    of names and paths)."""
    from glacier_sync.bag import bags, workspace

    staging = tmp_path / "staging"
    payload = _flat_folder(staging / "payload", 20_000)
    tags = staging / "W1FLAT.bag"
    tags.mkdir()
    work_root = tmp_path / "work"
    work_root.mkdir()
    bound = 256 * 1024
    assert _traced_peak(lambda: workspace.disk_usage(payload)) < bound
    placed = []
    assert (
        _traced_peak(
            lambda: placed.append(bags._place(staging, payload, tags, work_root, "W1FLAT"))
        )
        < bound
    )
    assert placed == [work_root / "W1FLAT"] and (work_root / "W1FLAT" / "W1FLAT.bag").is_dir()
    assert _traced_peak(lambda: workspace.remove_tree(work_root / "W1FLAT")) < bound
    assert not (work_root / "W1FLAT").exists()


def test_a_tag_manifest_listing_the_payload_manifest_is_checked_as_a_stream(tmp_path):
    """bagit-python's tag manifest lists ``manifest-sha512.txt``: hashing it never reads the
    payload manifest (17 MB for 100,000 files) whole."""
    import hashlib

    from glacier_sync.bag import bags

    manifest = "".join(f"{'ab' * 64}  data/I{index:06d}.tif\n" for index in range(40_000))
    (tmp_path / "manifest-sha512.txt").write_text(manifest)
    digest = hashlib.sha256(manifest.encode()).hexdigest()

    class Tags:  # what bagit's Bag gives _check_tags: the tag manifests' entries
        entries = {"manifest-sha512.txt": {"sha256": digest}}

    del manifest
    problems: list = []
    peak = _traced_peak(lambda: problems.extend(bags._check_tags(Tags(), tmp_path)))
    assert problems == [] and peak < 1024 * 1024, f"{peak / 1e6:.1f} MB for a 6 MB manifest"
    Tags.entries = {"manifest-sha512.txt": {"sha256": "0" * 64}}
    assert bags._check_tags(Tags(), tmp_path) == [
        "manifest-sha512.txt: sha256 mismatch (tag manifest)"
    ]
