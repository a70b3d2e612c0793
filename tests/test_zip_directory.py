"""The zip directory read as a stream gives every member as ``zipfile`` reads it, for zips as
real tools make them (zip64, data before the zip, comments, UTF-8 and cp437 names), extracts
them, and refuses a damaged directory in one line with nothing written."""

from __future__ import annotations

import struct
import zipfile
from pathlib import Path

import pytest
from helpers import make_bag_zip

from glacier_sync.bag.bags import debag
from glacier_sync.bag.zip_directory import StreamedZip
from glacier_sync.errors import BagError

pytestmark = pytest.mark.unit

FIELDS = [
    "filename",
    "orig_filename",
    "header_offset",
    "compress_size",
    "file_size",
    "CRC",
    "flag_bits",
    "compress_type",
    "external_attr",
    "extra",
    "comment",
    "date_time",
]


def _same_as_zipfile(path: Path) -> list[zipfile.ZipInfo]:
    with zipfile.ZipFile(path) as reference, StreamedZip(path) as streamed:
        expected = reference.infolist()
        members = list(streamed.members())
        assert [[getattr(i, f) for f in FIELDS] for i in members] == [
            [getattr(i, f) for f in FIELDS] for i in expected
        ]
        for info in members:  # each opens and reads back with its CRC checked
            assert streamed.read(info) == reference.read(info.orig_filename)
    return members


def test_names_comments_and_deflate(tmp_path):
    path = tmp_path / "a.zip"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.comment = b"archive comment"
        zf.writestr("data/ascii.txt", b"a" * 1000)
        zf.writestr("data/བོད་ཡིག.txt", b"Tibetan")  # flagged UTF-8
        info = zipfile.ZipInfo("data/with-comment.txt")
        info.comment = b"member comment"
        zf.writestr(info, b"c")
        zf.mkdir("data/empty")
    assert len(_same_as_zipfile(path)) == 4


def test_cp437_names(tmp_path):
    """A name stored without the UTF-8 flag (older zip tools) decodes as cp437, as zipfile."""
    path = tmp_path / "cp437.zip"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("data/caf\u00e9.txt", b"x")  # written flagged UTF-8: caf + 2 bytes
    raw = bytearray(path.read_bytes().replace("caf\u00e9".encode(), b"caf\x82_"))  # cp437
    for signature, flags_at in ((b"PK\x03\x04", 6), (b"PK\x01\x02", 8)):
        at = raw.index(signature) + flags_at
        raw[at : at + 2] = struct.pack("<H", struct.unpack("<H", raw[at : at + 2])[0] & ~0x800)
    path.write_bytes(bytes(raw))
    [member] = _same_as_zipfile(path)
    assert member.filename == "data/caf\u00e9_.txt"


def test_zip64_members_and_directory(tmp_path, monkeypatch):
    """Sizes, offsets and the directory's own place in zip64 records, as a zip over 4 GiB or
    65,535 members has them (zipfile's limits lowered while writing, so the zip stays small)."""
    path = tmp_path / "zip64.zip"
    with monkeypatch.context() as limits:
        limits.setattr(zipfile, "ZIP64_LIMIT", 50)
        limits.setattr(zipfile, "ZIP_FILECOUNT_LIMIT", 2)
        with zipfile.ZipFile(path, "w") as zf:
            for index in range(3):
                zf.writestr(f"data/f{index}.bin", bytes([index]) * 100)
    raw = path.read_bytes()
    assert zipfile.stringEndArchive64 in raw and b"\x01\x00" in raw, "zip64 records written"
    members = _same_as_zipfile(path)
    assert [m.file_size for m in members] == [100, 100, 100]
    assert all(m.extra.startswith(b"\x01\x00") for m in members[1:]), "zip64 extra fields"


def test_data_before_the_zip(tmp_path):
    """A zip with bytes before it (a self-extracting stub): offsets shift as zipfile shifts them."""
    plain = make_bag_zip(tmp_path, "W1TEST")
    path = tmp_path / "W1TEST.sfx.zip"
    path.write_bytes(b"#!/bin/sh\nexit 0\n" + b"\0" * 4093 + plain.read_bytes())
    members = _same_as_zipfile(path)
    assert members[0].header_offset == 4110
    debag(path, tmp_path / "work", "W1TEST")
    assert (tmp_path / "work" / "W1TEST" / "sources" / "བོད་ཡིག.txt").is_file()


@pytest.mark.parametrize("damage", ["size", "magic"])
def test_a_damaged_directory_is_refused_with_nothing_written(tmp_path, damage):
    path = make_bag_zip(tmp_path, "W1TEST")
    data = bytearray(path.read_bytes())
    if damage == "size":  # the end record says the directory is longer than it is
        end = data.rindex(b"PK\x05\x06")
        (size,) = struct.unpack("<L", data[end + 12 : end + 16])
        data[end + 12 : end + 16] = struct.pack("<L", size + 10)
    else:  # the last directory entry's signature is damaged
        start = data.rindex(b"PK\x01\x02")
        data[start : start + 4] = b"PK\x09\x09"
    path.write_bytes(bytes(data))
    work = tmp_path / "work"
    with pytest.raises(BagError) as refused:
        debag(path, work, "W1TEST")
    assert "not a readable zip" in str(refused.value), refused.value
    assert not work.exists() or list(work.iterdir()) == [], "nothing written"


def test_overlapping_entries_are_refused_before_anything_is_written(tmp_path):
    """A zip bomb's trick: a member whose data runs over the next member's record (the
    directory says it is longer than the room it has). zipfile 3.11.7 reads both; refused."""
    path = make_bag_zip(tmp_path, "W1TEST", compression=zipfile.ZIP_STORED)
    data = bytearray(path.read_bytes())
    with zipfile.ZipFile(path) as zf:
        first, second = sorted(zf.infolist(), key=lambda i: i.header_offset)[:2]
    with StreamedZip(path) as streamed:
        entry = streamed.start_dir  # the directory's first entry: the first record's
    assert struct.unpack("<L", data[entry + 42 : entry + 46])[0] == first.header_offset == 0
    longer = second.header_offset + 10  # reaches 10 bytes into the second record
    data[entry + 20 : entry + 24] = struct.pack("<L", longer)  # compressed size
    data[entry + 24 : entry + 28] = struct.pack("<L", longer)  # size
    path.write_bytes(bytes(data))
    work = tmp_path / "work"
    with pytest.raises(BagError) as refused:
        debag(path, work, "W1TEST")
    assert "unsafe or clashing members" in str(refused.value)
    assert f"{first.filename}: its data overlaps the next entry of the zip" in str(refused.value)
    assert not work.exists() or list(work.iterdir()) == [], "nothing written"


def test_a_member_that_needs_a_newer_zip_version_is_refused_as_such(tmp_path):
    path = make_bag_zip(tmp_path, "W1TEST")
    data = bytearray(path.read_bytes())
    entry = data.rindex(b"PK\x01\x02")
    data[entry + 6 : entry + 8] = struct.pack("<H", 70)  # version needed to extract: 7.0
    path.write_bytes(bytes(data))
    with pytest.raises(BagError) as refused:
        debag(path, tmp_path / "work", "W1TEST")
    message = str(refused.value)
    assert "needs zip version 7.0" in message and "rebuild the zip" in message, message
    assert "download it again" not in message
