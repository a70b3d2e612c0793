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
    """A stored bag zip of ``files`` small payload files in 100 folders (sha512 manifest)."""
    manifest = []
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as zf:
        for index in range(files):
            name = f"data/images/I{index % 100:03d}/I{index:06d}.tif"
            data = index.to_bytes(4, "big") * 16
            zf.writestr(name, data)
            manifest.append(f"{hashlib.sha512(data).hexdigest()}  {name}\n")
        zf.writestr("bagit.txt", "BagIt-Version: 0.97\nTag-File-Character-Encoding: UTF-8\n")
        zf.writestr("bag-info.txt", f"Payload-Oxum: {files * 64}.{files}\n")
        zf.writestr("manifest-sha512.txt", "".join(manifest))
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
