"""Memory that does not grow with a bag's file count beyond what its manifest needs.

``glacier-sync process-bag`` (debag, sync, records) of a 20,000-file bag is measured against
the same command on a 10-file bag: the peak RSS the extra files add must stay under
``BYTES_PER_FILE`` each. The code before the payload manifests were read into one compact table
(bagit's dictionaries, copied three times) added about 1,500 bytes a file; it adds about 700 now
(the zip's central directory, about 450, and the manifest table, about 200); 696 measured."""

from __future__ import annotations

import hashlib
import os
import subprocess
import zipfile
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

GLACIER_SYNC = Path(__file__).resolve().parents[1] / ".venv" / "bin" / "glacier-sync"
FILES = 20_000
BYTES_PER_FILE = 1_100


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
    """Peak RSS in bytes of one ``process-bag`` (its own process, read from wait4)."""
    data, archive = tmp / f"data-{zip_path.stem}", tmp / f"archive-{zip_path.stem}"
    archive.mkdir()
    with open(tmp / "out.log", "wb") as out:
        proc = subprocess.Popen(
            [GLACIER_SYNC, "process-bag", zip_path, "--data-dir", data, "--archive-root", archive],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
    assert proc.returncode == 0, (tmp / "out.log").read_text()
    return usage.ru_maxrss * 1024


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
