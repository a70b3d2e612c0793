"""Bags made and zipped the way archivists make them: bagit-python's ``make_bag`` (two payload
manifests, tag manifests), then Info-ZIP's ``zip -r`` (deflated, with the extra fields that
differ between a member's local record and its directory entry), ``zip -r -0`` (stored), a zip
of the bag's contents without its folder, and Python's ``shutil.make_archive``. Each is debagged
whole, every payload file as it was, the non-ASCII name included."""

from __future__ import annotations

import os
import shutil
import subprocess
import zipfile
from pathlib import Path

import bagit
import pytest

from glacier_sync.bag.bags import debag

pytestmark = pytest.mark.integration

WORK = "W1RW"


@pytest.fixture(scope="module")
def bag(tmp_path_factory) -> Path:
    """A bag of 40 files of random sizes and one named in Tibetan, made by bagit-python."""
    assert shutil.which("zip"), "install Info-ZIP's zip (scripts/install-system-packages.sh)"
    folder = tmp_path_factory.mktemp("bags") / WORK
    (folder / "images").mkdir(parents=True)
    for index in range(40):
        (folder / "images" / f"I{index:04d}.tif").write_bytes(os.urandom(index * 977 + 1))
    (folder / "སྒྲ.txt").write_text("བཀྲ་ཤིས།\n", encoding="utf-8")
    bagit.make_bag(str(folder), checksums=["sha256", "sha512"])
    return folder


def _payload(root: Path) -> dict[str, bytes]:
    return {
        p.relative_to(root).as_posix(): p.read_bytes()
        for p in root.rglob("*")
        if p.is_file() and f"{WORK}.bag" not in p.parts
    }


def _zip(bag: Path, out: Path, how: str) -> Path:
    if how == "make_archive":
        return Path(shutil.make_archive(str(out.with_suffix("")), "zip", bag.parent, bag.name))
    flags, where, what = {
        "zip -r": ("-qr", bag.parent, bag.name),
        "zip -r -0": ("-qr0", bag.parent, bag.name),
        "zip -r, no folder": ("-qr", bag, "."),
    }[how]
    subprocess.run(["zip", flags, str(out), what], cwd=where, check=True)
    return out


@pytest.mark.parametrize("how", ["zip -r", "zip -r -0", "zip -r, no folder", "make_archive"])
def test_a_bag_zipped_as_archivists_zip_lands_whole(bag, tmp_path, how):
    zip_path = _zip(bag, tmp_path / f"{WORK}.bag.zip", how)
    with zipfile.ZipFile(zip_path) as zf:
        names = zf.namelist()
    assert any(name.endswith("bagit.txt") for name in names), names
    result = debag(zip_path, tmp_path / "work", WORK)
    assert result.algorithms == ("sha512", "sha256")
    assert _payload(result.work_path) == _payload(bag / "data")
    assert (result.work_path / f"{WORK}.bag" / "tagmanifest-sha512.txt").is_file()
