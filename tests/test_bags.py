"""Debag: valid bags land whole; every kind of bad bag is refused with nothing written."""

from __future__ import annotations

import hashlib
import os
import sqlite3
import stat
import zipfile
from pathlib import Path

import pytest
from helpers import DEFAULT_FILES, make_bag_dir, make_bag_zip, zip_dir

from glacier_sync.bag import bag_index, bags
from glacier_sync.bag.bags import debag
from glacier_sync.errors import BagError, DiskFull, TransientError

pytestmark = pytest.mark.unit


def _tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def _refused(zip_path: Path, work_root: Path, *expected: str) -> BagError:
    before = zip_path.read_bytes()
    with pytest.raises(BagError) as info:
        debag(zip_path, work_root, "W1TEST")
    message = str(info.value)
    for text in expected:
        assert text in message, message
    assert zip_path.read_bytes() == before, "the zip must stay as it was"
    assert list(work_root.iterdir()) == [] if work_root.exists() else True, "nothing kept"
    return info.value


def test_valid_bag_lands_with_tags_beside_payload(tmp_path):
    zip_path = make_bag_zip(tmp_path, "W1TEST")
    result = debag(zip_path, tmp_path / "work", "W1TEST")
    work = tmp_path / "work" / "W1TEST"
    assert result.work_path == work
    assert result.files == len(DEFAULT_FILES)
    assert result.bytes == sum(len(v) for v in DEFAULT_FILES.values())
    tree = _tree(work)
    for rel, content in DEFAULT_FILES.items():
        assert tree[rel] == content
    assert {"bagit.txt", "bag-info.txt", "manifest-sha512.txt"} <= {
        p.name for p in (work / "W1TEST.bag").iterdir()
    }
    assert not any(p.name.startswith(".debag") for p in (tmp_path / "work").iterdir())
    assert zip_path.is_file(), "debag never deletes the zip"


@pytest.mark.parametrize("dir_entries", [True, False])
@pytest.mark.parametrize("prefix", ["", "W1TEST/", "W1TEST.bag/"])
def test_zip_shapes_accepted(tmp_path, dir_entries, prefix):
    bag_dir = make_bag_dir(tmp_path, "W1TEST")
    zip_path = zip_dir(bag_dir, tmp_path / "W1TEST.bag.zip", prefix=prefix, dir_entries=dir_entries)
    debag(zip_path, tmp_path / "work", "W1TEST")
    assert (tmp_path / "work" / "W1TEST" / "sources" / "བོད་ཡིག.txt").is_file()


def test_every_manifest_algorithm_is_checked(tmp_path):
    bag_dir = make_bag_dir(tmp_path, "W1TEST", checksums=("sha256", "md5", "sha1"))
    zip_path = zip_dir(bag_dir, tmp_path / "W1TEST.bag.zip")
    assert set(debag(zip_path, tmp_path / "work", "W1TEST").algorithms) == {"sha256", "md5", "sha1"}
    # Corrupt only the md5 manifest: the others still match, the bag must still be refused.
    manifest = bag_dir / "manifest-md5.txt"
    lines = manifest.read_text().splitlines()
    lines[0] = "0" * 32 + lines[0][32:]
    manifest.write_text("\n".join(lines) + "\n")
    for tagmanifest in bag_dir.glob("tagmanifest-*.txt"):
        tagmanifest.unlink()
    zip_path = zip_dir(bag_dir, tmp_path / "W2TEST.bag.zip")
    with pytest.raises(BagError, match="md5 mismatch"):
        debag(zip_path, tmp_path / "work2", "W2TEST")


def test_payload_with_work_folder_is_flattened(tmp_path):
    files = {f"W1TEST/{k}": v for k, v in DEFAULT_FILES.items()}
    zip_path = make_bag_zip(tmp_path, "W1TEST", files)
    debag(zip_path, tmp_path / "work", "W1TEST")
    assert (tmp_path / "work" / "W1TEST" / "images" / "I1_0001.tif").is_file()
    assert (tmp_path / "work" / "W1TEST" / "W1TEST.bag" / "bagit.txt").is_file()


def test_rerun_replaces_an_unsynced_work_folder(tmp_path):
    zip_path = make_bag_zip(tmp_path, "W1TEST")
    debag(zip_path, tmp_path / "work", "W1TEST")
    (tmp_path / "work" / "W1TEST" / "stray.txt").write_text("left over")
    debag(zip_path, tmp_path / "work", "W1TEST")
    assert not (tmp_path / "work" / "W1TEST" / "stray.txt").exists()
    assert [p.name for p in (tmp_path / "work").iterdir()] == ["W1TEST"]


def test_large_files_hash_in_parallel_threads(tmp_path, monkeypatch):
    monkeypatch.setattr(bags, "THREADED_HASH_MIN_SIZE", 1024)
    monkeypatch.setattr(bags, "CHUNK_SIZE", 4096)
    big = os.urandom(300_000)
    zip_path = make_bag_zip(tmp_path, "W1TEST", {"big.bin": big})
    debag(zip_path, tmp_path / "work", "W1TEST")
    assert (tmp_path / "work" / "W1TEST" / "big.bin").read_bytes() == big
    bad = make_bag_dir(tmp_path, "W2TEST", {"big.bin": big})
    (bad / "data" / "big.bin").write_bytes(big[:-1] + bytes([big[-1] ^ 1]))
    zip_path = zip_dir(bad, tmp_path / "W2TEST.bag.zip")
    with pytest.raises(BagError, match="big.bin: sha512 mismatch"):
        debag(zip_path, tmp_path / "work2", "W2TEST")


# -- refused bags ------------------------------------------------------------------------


def _rewrite_oxum(bag_dir: Path, old: str, new: str) -> None:
    """Change Payload-Oxum and drop the tag manifests, so that only the Oxum is in question."""
    info = bag_dir / "bag-info.txt"
    text = info.read_text()
    assert f"Payload-Oxum: {old}" in text
    info.write_text(text.replace(f"Payload-Oxum: {old}", f"Payload-Oxum: {new}"))
    for tagmanifest in bag_dir.glob("tagmanifest-*.txt"):
        tagmanifest.unlink()


def _bad_zip(tmp_path: Path, extra_member: zipfile.ZipInfo, data: bytes = b"x") -> Path:
    bag_dir = make_bag_dir(tmp_path, "W1TEST")
    zip_path = zip_dir(bag_dir, tmp_path / "W1TEST.bag.zip")
    with zipfile.ZipFile(zip_path, "a") as zf:
        zf.writestr(extra_member, data)
    return zip_path


def test_dotdot_member_refused_before_writing(tmp_path):
    zip_path = _bad_zip(tmp_path, zipfile.ZipInfo("data/../../evil.txt"))
    _refused(zip_path, tmp_path / "work", "climbs out", "nothing was extracted")
    assert not (tmp_path / "evil.txt").exists()
    assert not (tmp_path / "work").exists() or not any((tmp_path / "work").iterdir())


def test_absolute_member_refused(tmp_path):
    zip_path = _bad_zip(tmp_path, zipfile.ZipInfo("/etc/evil.txt"))
    _refused(zip_path, tmp_path / "work", "absolute path")


def test_symlink_member_refused(tmp_path):
    link = zipfile.ZipInfo("data/link")
    link.external_attr = (stat.S_IFLNK | 0o777) << 16
    zip_path = _bad_zip(tmp_path, link, b"/etc/passwd")
    _refused(zip_path, tmp_path / "work", "data/link: symbolic link")


def test_a_manifest_path_that_decodes_to_no_text_is_refused(tmp_path):
    """UTF-7 (a declared encoding Python knows) decodes ``+2AA-`` to a lone surrogate: a path
    no file system or database can hold. Refused, naming the line, not a crash."""
    files = {"images/I1.tif": b"TIFF"}
    bag_dir = make_bag_dir(tmp_path, "W1TEST", files)
    (bag_dir / "bagit.txt").write_text(
        "BagIt-Version: 0.97\nTag-File-Character-Encoding: UTF-7\n", encoding="ascii"
    )
    manifest = bag_dir / "manifest-sha512.txt"
    digest = hashlib.sha512(b"TIFF").hexdigest()
    manifest.write_text(manifest.read_text() + f"{digest}  data/I+2AA-.tif\n", encoding="ascii")
    zip_path = zip_dir(bag_dir, tmp_path / "W1TEST.bag.zip")
    refused = _refused(zip_path, tmp_path / "work", "cannot be taken")
    assert any("line 2: the path is not valid text" in p for p in refused.problems), refused


def test_truncated_zip_refused(tmp_path):
    zip_path = make_bag_zip(tmp_path, "W1TEST")
    data = zip_path.read_bytes()
    zip_path.write_bytes(data[: len(data) * 2 // 3])
    _refused(zip_path, tmp_path / "work", "not a readable zip", "truncated")


def test_checksum_mismatch_same_size_refused(tmp_path):
    bag_dir = make_bag_dir(tmp_path, "W1TEST")
    target = bag_dir / "data" / "images" / "I1_0001.tif"
    data = bytearray(target.read_bytes())
    data[10] ^= 0xFF
    target.write_bytes(bytes(data))
    zip_path = zip_dir(bag_dir, tmp_path / "W1TEST.bag.zip")
    error = _refused(zip_path, tmp_path / "work", "data/images/I1_0001.tif: sha512 mismatch")
    assert len(error.problems) == 1


def test_payload_oxum_mismatch_alone_refused(tmp_path):
    bag_dir = make_bag_dir(tmp_path, "W1TEST")
    total = sum(len(v) for v in DEFAULT_FILES.values())
    _rewrite_oxum(bag_dir, f"{total}.4", f"{total + 1}.4")  # every checksum still matches
    zip_path = zip_dir(bag_dir, tmp_path / "W1TEST.bag.zip")
    _refused(zip_path, tmp_path / "work", "Payload-Oxum", f"{total + 1}.4")


def test_declared_sizes_above_oxum_refused_before_writing(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(bags, "_extract_hashing", lambda *a: calls.append(a))
    bag_dir = make_bag_dir(tmp_path, "W1TEST")
    (bag_dir / "data" / "archive" / "notes.txt").write_bytes(b"x" * 5000)
    zip_path = zip_dir(bag_dir, tmp_path / "W1TEST.bag.zip")
    _refused(zip_path, tmp_path / "work", "Payload-Oxum", "nothing was extracted")
    assert calls == []


def test_missing_payload_file_refused(tmp_path):
    bag_dir = make_bag_dir(tmp_path, "W1TEST")
    os.remove(bag_dir / "data" / "archive" / "notes.txt")
    zip_path = zip_dir(bag_dir, tmp_path / "W1TEST.bag.zip")
    _refused(zip_path, tmp_path / "work", "data/archive/notes.txt")


def test_missing_payload_file_with_oxum_fixed_is_named(tmp_path):
    bag_dir = make_bag_dir(tmp_path, "W1TEST")
    missing = bag_dir / "data" / "archive" / "notes.txt"
    size = missing.stat().st_size
    os.remove(missing)
    total = sum(len(v) for v in DEFAULT_FILES.values())
    _rewrite_oxum(bag_dir, f"{total}.4", f"{total - size}.3")
    zip_path = zip_dir(bag_dir, tmp_path / "W1TEST.bag.zip")
    _refused(
        zip_path,
        tmp_path / "work",
        "data/archive/notes.txt: listed in the manifest but missing from the zip",
    )


def test_unexpected_extra_file_refused(tmp_path):
    bag_dir = make_bag_dir(tmp_path, "W1TEST")
    (bag_dir / "data" / "extra.txt").write_bytes(b"")  # zero bytes: the Oxum bytes still match
    total = sum(len(v) for v in DEFAULT_FILES.values())
    _rewrite_oxum(bag_dir, f"{total}.4", f"{total}.5")
    zip_path = zip_dir(bag_dir, tmp_path / "W1TEST.bag.zip")
    _refused(zip_path, tmp_path / "work", "data/extra.txt: in the zip but not in any manifest")


def test_tag_manifest_mismatch_refused(tmp_path):
    bag_dir = make_bag_dir(tmp_path, "W1TEST")
    info = bag_dir / "bag-info.txt"
    info.write_text(info.read_text() + "Contact-Name: changed after bagging\n")
    zip_path = zip_dir(bag_dir, tmp_path / "W1TEST.bag.zip")
    _refused(zip_path, tmp_path / "work", "bag-info.txt: sha512 mismatch (tag manifest)")


def test_fetch_txt_refused(tmp_path):
    bag_dir = make_bag_dir(tmp_path, "W1TEST")
    (bag_dir / "fetch.txt").write_text("http://example.org/x 10 data/x\n")
    zip_path = zip_dir(bag_dir, tmp_path / "W1TEST.bag.zip")
    _refused(zip_path, tmp_path / "work", "fetch.txt")


def test_not_a_bag_refused(tmp_path):
    zip_path = tmp_path / "W1TEST.bag.zip"
    with zipfile.ZipFile(zip_path, "w") as zf:
        zf.writestr("readme.txt", "no bag here")
    _refused(zip_path, tmp_path / "work", "no bagit.txt")


def test_no_free_space_is_a_transient_refusal(tmp_path):
    zip_path = make_bag_zip(tmp_path, "W1TEST")
    with pytest.raises(DiskFull, match=f"in {tmp_path / 'work'} .* free some space"):
        debag(zip_path, tmp_path / "work", "W1TEST", free_space_margin=1 << 62)
    assert list((tmp_path / "work").iterdir()) == []


def test_manifest_hashes_are_the_real_ones(tmp_path):
    """Guard the fixtures themselves: the manifest says what hashlib says."""
    bag_dir = make_bag_dir(tmp_path, "W1TEST")
    line = next(
        ln
        for ln in (bag_dir / "manifest-sha512.txt").read_text().splitlines()
        if ln.endswith("I1_0001.tif")
    )
    assert line.split()[0] == hashlib.sha512(DEFAULT_FILES["images/I1_0001.tif"]).hexdigest()


def test_manifest_path_outside_the_bag_is_refused(tmp_path):
    bag_dir = make_bag_dir(tmp_path, "W1TEST")
    manifest = bag_dir / "manifest-sha512.txt"
    manifest.write_text(manifest.read_text() + "0" * 128 + "  data/../../escape.txt\n")
    for tagmanifest in bag_dir.glob("tagmanifest-*.txt"):
        tagmanifest.unlink()
    zip_path = zip_dir(bag_dir, tmp_path / "W1TEST.bag.zip")
    _refused(zip_path, tmp_path / "work", "../escape.txt: a manifest names a path outside the bag")
    assert not (tmp_path / "escape.txt").exists()


# -- names that cannot be extracted faithfully ---------------------------------------------


def _bag_zip_with(tmp_path: Path, extra: dict[str, bytes]) -> Path:
    """The default bag zipped, plus ``extra`` members written as given (names as str)."""
    zip_path = zip_dir(make_bag_dir(tmp_path, "W1TEST"), tmp_path / "W1TEST.bag.zip")
    with zipfile.ZipFile(zip_path, "a") as zf:
        for name, data in extra.items():
            zf.writestr(name, data)
    return zip_path


def test_name_flagged_utf8_but_invalid_is_refused_naming_its_bytes(tmp_path):
    name = "data/\u00e9-placeholder.txt"  # not ASCII: zipfile stores it as UTF-8, flag 0x800
    placeholder, raw = name.encode(), b"data/\xe9\xff-placeholder.txt"
    assert len(placeholder) == len(raw)
    zip_path = _bag_zip_with(tmp_path, {name: b"x"})
    with zipfile.ZipFile(zip_path) as zf:
        assert zf.getinfo(name).flag_bits & 0x800
    data = zip_path.read_bytes()
    assert data.count(placeholder) == 2  # the local header and the central directory
    zip_path.write_bytes(data.replace(placeholder, raw))
    error = _refused(zip_path, tmp_path / "work", "is not valid UTF-8", "nothing was extracted")
    assert error.problems[0].startswith(f"{raw!r}: name is not valid UTF-8")


def test_name_that_is_a_file_and_a_folder_is_refused_before_writing(tmp_path, monkeypatch):
    writes = []
    monkeypatch.setattr(bags, "_extract_hashing", lambda *a: writes.append(a))
    zip_path = _bag_zip_with(tmp_path, {"data/a": b"file", "data/a/b.txt": b"inside"})
    error = _refused(zip_path, tmp_path / "work", "nothing was extracted")
    assert error.problems == [
        "data/a: a file, but data/a/b.txt makes it a folder; keep one of them"
    ]
    assert writes == []


def test_file_beside_a_folder_entry_of_the_same_name_is_refused(tmp_path):
    zip_path = _bag_zip_with(tmp_path, {"data/archive/notes.txt/": b""})
    error = _refused(zip_path, tmp_path / "work", "nothing was extracted")
    assert error.problems == [
        "data/archive/notes.txt: a file, but data/archive/notes.txt/ makes it a folder; "
        "keep one of them"
    ]


def test_nfc_and_nfd_names_of_one_path_are_refused(tmp_path):
    nfc, nfd = "data/caf\u00e9.txt", "data/cafe\u0301.txt"
    zip_path = _bag_zip_with(tmp_path, {nfc: b"composed", nfd: b"decomposed"})
    error = _refused(zip_path, tmp_path / "work", "nothing was extracted")
    (problem,) = error.problems
    assert problem.startswith(f"{nfc}: stored under 2 names that differ only in Unicode")
    assert ascii(nfc) in problem and ascii(nfd) in problem


def test_manifest_naming_one_path_in_two_unicode_forms_is_refused(tmp_path, monkeypatch):
    writes = []
    monkeypatch.setattr(bags, "_extract_hashing", lambda *a: writes.append(a))
    content = b"one file"
    bag_dir = make_bag_dir(tmp_path, "W1TEST", {"caf\u00e9.txt": content})
    manifest = bag_dir / "manifest-sha512.txt"
    digest = hashlib.sha512(content).hexdigest()
    manifest.write_text(manifest.read_text() + f"{digest}  data/cafe\u0301.txt\n")
    for tagmanifest in bag_dir.glob("tagmanifest-*.txt"):
        tagmanifest.unlink()
    zip_path = zip_dir(bag_dir, tmp_path / "W1TEST.bag.zip")
    error = _refused(zip_path, tmp_path / "work", "names one path twice", "nothing was extracted")
    (problem,) = error.problems
    assert problem.startswith("manifest-sha512.txt: data/caf\u00e9.txt: stored under 2 names")
    assert ascii("data/caf\u00e9.txt") in problem and ascii("data/cafe\u0301.txt") in problem
    assert writes == []


# -- payload manifests read into one table -------------------------------------------------


def _with_manifest_edit(tmp_path: Path, edit, checksums=("sha512",)) -> Path:
    """The default bag with its payload manifests changed by ``edit(bag_dir)``, tag manifests
    dropped (so that only the payload manifests are in question), zipped."""
    bag_dir = make_bag_dir(tmp_path, "W1TEST", checksums=checksums)
    edit(bag_dir)
    for tagmanifest in bag_dir.glob("tagmanifest-*.txt"):
        tagmanifest.unlink()
    return zip_dir(bag_dir, tmp_path / "W1TEST.bag.zip")


def _append(name: str, text: str):
    def edit(bag_dir: Path) -> None:
        manifest = bag_dir / name
        manifest.write_text(manifest.read_text() + text)

    return edit


def _drop_line(name: str, ending: str):
    def edit(bag_dir: Path) -> None:
        manifest = bag_dir / name
        lines = manifest.read_text().splitlines(keepends=True)
        manifest.write_text("".join(ln for ln in lines if not ln.rstrip().endswith(ending)))

    return edit


NOTES = "data/archive/notes.txt"
BOTH = "manifest-sha512.txt, manifest-md5.txt"


@pytest.mark.parametrize(
    ("edit", "checksums", "expected"),
    [
        pytest.param(
            _append("manifest-sha512.txt", "not-a-line\n"),
            ("sha512",),
            "manifest-sha512.txt line 5: not '<digest>  <path>': 'not-a-line'",
            id="a line without a path",
        ),
        pytest.param(
            _append("manifest-sha512.txt", "abcd  data/short.txt\n"),
            ("sha512",),
            "manifest-sha512.txt line 5: 'abcd' is not a sha512 digest",
            id="a digest of the wrong length",
        ),
        pytest.param(
            _drop_line("manifest-md5.txt", NOTES),
            ("sha512", "md5"),
            f"{NOTES}: not listed in every payload manifest ({BOTH})",
            id="a file missing from one of two manifests",
        ),
        pytest.param(
            _drop_line("manifest-sha512.txt", NOTES),
            ("sha512", "md5"),
            f"{NOTES}: not listed in every payload manifest ({BOTH})",
            id="a file missing from the first of two manifests",
        ),
        pytest.param(
            _append("manifest-sha512.txt", "0" * 128 + "  bagit.txt\n"),
            ("sha512",),
            "bagit.txt: manifest-sha512.txt names a file outside data/",
            id="a tag file in the payload manifest",
        ),
    ],
)
def test_a_payload_manifest_line_that_cannot_be_taken_is_refused(
    tmp_path, monkeypatch, edit, checksums, expected
):
    """bagit logged such lines and went on; here each is named and nothing is written."""
    writes = []
    monkeypatch.setattr(bags, "_extract_hashing", lambda *a, **k: writes.append(a))
    zip_path = _with_manifest_edit(tmp_path, edit, checksums)
    error = _refused(zip_path, tmp_path / "work", "cannot be taken", "nothing was extracted")
    assert error.problems == [expected]
    assert writes == []


def test_a_path_listed_twice_in_one_manifest_is_refused(tmp_path):
    line = next(
        ln
        for ln in (make_bag_dir(tmp_path, "W0") / "manifest-sha512.txt").read_text().splitlines()
        if ln.endswith(NOTES)
    )
    zip_path = _with_manifest_edit(tmp_path, _append("manifest-sha512.txt", line + "\n"))
    error = _refused(zip_path, tmp_path / "work", "names one path twice")
    assert error.problems == [f"manifest-sha512.txt: {NOTES}: listed twice"]


def test_a_manifest_of_an_unknown_algorithm_is_refused(tmp_path):
    """bagit skipped a manifest-<alg>.txt of an algorithm it does not know, unread."""

    def add_blake3(bag_dir: Path) -> None:
        (bag_dir / "manifest-blake3.txt").write_text("0" * 64 + f"  {NOTES}\n")

    zip_path = _with_manifest_edit(tmp_path, add_blake3)
    _refused(zip_path, tmp_path / "work", "unsupported manifest algorithm(s) ['blake3']")


def test_manifest_with_a_bom_upper_case_digests_and_comments_is_taken(tmp_path):
    def reformat(bag_dir: Path) -> None:
        manifest = bag_dir / "manifest-sha512.txt"
        lines = manifest.read_text().splitlines()
        upper = [f"{ln[:128].upper()} {ln[128:]}" for ln in lines]
        manifest.write_text("\ufeff# made by hand\n\n" + "\n".join(upper) + "\n")

    zip_path = _with_manifest_edit(tmp_path, reformat)
    result = debag(zip_path, tmp_path / "work", "W1TEST")
    assert result.files == len(DEFAULT_FILES) and result.algorithms == ("sha512",)


def test_a_bad_digest_is_still_named_with_both_values(tmp_path):
    def corrupt(bag_dir: Path) -> None:
        manifest = bag_dir / "manifest-sha256.txt"
        lines = manifest.read_text().splitlines()
        at = next(i for i, ln in enumerate(lines) if ln.endswith(NOTES))
        lines[at] = "ab" * 32 + lines[at][64:]
        manifest.write_text("\n".join(lines) + "\n")

    zip_path = _with_manifest_edit(tmp_path, corrupt, ("sha512", "sha256"))
    error = _refused(zip_path, tmp_path / "work", "the bag is invalid")
    assert error.problems == [
        f"{NOTES}: sha256 mismatch (manifest {'ab' * 8}..., file "
        f"{hashlib.sha256(DEFAULT_FILES['archive/notes.txt']).hexdigest()[:16]}...)"
    ]


def test_payload_a_tag_manifest_lists_is_checked_there_too(tmp_path):
    """bagit checks every path a tag manifest lists, payload files included."""

    def list_payload(bag_dir: Path) -> None:
        (bag_dir / "tagmanifest-sha256.txt").write_text(
            f"{'ab' * 32}  {NOTES}\n{'cd' * 32}  data/ghost.txt\n"
        )

    bag_dir = make_bag_dir(tmp_path, "W1TEST")
    list_payload(bag_dir)
    zip_path = zip_dir(bag_dir, tmp_path / "W1TEST.bag.zip")
    error = _refused(zip_path, tmp_path / "work", "the bag is invalid")
    assert error.problems == [
        f"{NOTES}: sha256 mismatch (tag manifest)",
        "data/ghost.txt: listed in a tag manifest but missing from the zip",
    ]


@pytest.mark.parametrize("name", ["data/a", "data/\u00e9", "data/ab"])
def test_a_name_stored_twice_is_refused_whatever_its_length(tmp_path, name):
    """One-character names are one shared object in CPython: compared by value, not identity."""
    import warnings

    zip_path = zip_dir(make_bag_dir(tmp_path, "W1TEST"), tmp_path / "W1TEST.bag.zip")
    with warnings.catch_warnings(), zipfile.ZipFile(zip_path, "a") as zf:
        warnings.simplefilter("ignore")  # zipfile warns of the duplicate: that is the point
        zf.writestr(name, b"one")
        zf.writestr(name, b"two")
    error = _refused(zip_path, tmp_path / "work", "nothing was extracted")
    assert f"{name}: stored more than once" in error.problems


def test_a_manifest_that_is_not_valid_utf8_is_named(tmp_path):
    def spoil(bag_dir: Path) -> None:
        manifest = bag_dir / "manifest-sha512.txt"
        manifest.write_bytes(manifest.read_bytes() + b"0" * 128 + b"  data/\xff.txt\n")

    zip_path = _with_manifest_edit(tmp_path, spoil)
    error = _refused(zip_path, tmp_path / "work", "cannot be taken")
    assert error.problems == ["manifest-sha512.txt: not valid utf-8: line 5 (invalid start byte)"]


def test_a_manifest_of_junk_is_named_within_bounds(tmp_path):
    """Every bad line costs a problem string: past a thousand they are counted, not kept."""
    zip_path = _with_manifest_edit(tmp_path, _append("manifest-sha512.txt", "junk\n" * 3000))
    error = _refused(zip_path, tmp_path / "work", "cannot be taken")
    assert len(error.problems) == 1001
    assert error.problems[-1] == "... and 2000 more lines that cannot be taken"


@pytest.mark.parametrize(
    ("error", "kind", "says"),
    [
        ("database or disk is full", DiskFull, "no space left in"),
        ("disk I/O error", TransientError, "a quota, or an I/O error"),
    ],
)
def test_the_index_failing_is_the_folders_fault_not_the_bags(
    tmp_path, monkeypatch, error, kind, says
):
    """SQLite failing under the debag's index of names (ENOSPC, or EDQUOT and EIO, which SQLite
    reports as an I/O error) is retried with no attempt spent, never held as a bad bag; the
    staging folder goes."""
    zip_path = make_bag_zip(tmp_path, "W1TEST")

    def failing(*args, **kwargs):
        raise sqlite3.OperationalError(error)

    monkeypatch.setattr(bag_index.MemberNames, "add", failing)
    work = tmp_path / "work"
    with pytest.raises(kind) as failed:
        debag(zip_path, work, "W1TEST")
    assert not isinstance(failed.value, BagError)
    assert says in str(failed.value) and str(work) in str(failed.value), failed.value
    assert list(work.iterdir()) == [], "the staging folder and its index are removed"


def test_a_bag_whose_every_file_fails_names_the_first_and_counts_the_rest(tmp_path):
    """Problem lines stay bounded whatever the file count: the first ``MAX_PROBLEMS`` named,
    the rest counted, and the message counts them all."""
    files = {f"images/I{index:05d}.tif": index.to_bytes(4, "big") for index in range(1_200)}
    bag_dir = make_bag_dir(tmp_path / "src", "W1BAD", files)
    for manifest in bag_dir.glob("manifest-*.txt"):
        lines = manifest.read_text().splitlines()
        manifest.write_text(
            "".join(f"{'0' * len(line.split()[0])}  {line.split(None, 1)[1]}\n" for line in lines)
        )
    for tagmanifest in bag_dir.glob("tagmanifest-*.txt"):
        tagmanifest.unlink()
    zip_path = zip_dir(bag_dir, tmp_path / "W1BAD.bag.zip")
    work_root = tmp_path / "work"
    work_root.mkdir()
    with pytest.raises(BagError) as caught:
        debag(zip_path, work_root, "W1BAD")
    problems = caught.value.problems
    mismatches = 1_200 * len(list(bag_dir.glob("manifest-*.txt")))
    assert len(problems) == bag_index.MAX_PROBLEMS + 1, len(problems)
    assert problems[-1] == f"... and {mismatches - bag_index.MAX_PROBLEMS} more"
    assert str(caught.value).endswith(f"... and {mismatches - 50} more"), str(caught.value)[-200:]


def test_a_bag_error_counts_every_capped_list_in_its_message():
    """``unlisted()`` joins two capped lists (missing, extra): each ends in its own count."""
    error = BagError("refused", ["a", "... and 5 more", "b", "... and 7 more names stored twice"])
    assert str(error).splitlines()[1:] == ["  - a", "  - b", "  ... and 12 more"]


def test_a_folder_not_empty_once_its_entries_are_gone_is_read_again(tmp_path, monkeypatch):
    """On NFS, reading a folder while unlinking in it may skip entries: its rmdir then fails
    with ENOTEMPTY, and the folder is read again (a bounded number of times)."""
    import errno

    from glacier_sync.bag import workspace

    tree = tmp_path / "W1NFS"
    (tree / "images").mkdir(parents=True)
    (tree / "images" / "I0001.tif").write_bytes(b"x")
    real_rmdir, skipped = os.rmdir, []

    def rmdir_after_a_skip(path, *args, **kwargs):
        if str(path).endswith("images") and not skipped:
            skipped.append(path)
            (tree / "images" / "I0002.tif").write_bytes(b"y")  # an entry the reading missed
            raise OSError(errno.ENOTEMPTY, "Directory not empty", str(path))
        return real_rmdir(path, *args, **kwargs)

    monkeypatch.setattr(workspace.os, "rmdir", rmdir_after_a_skip)
    workspace.remove_tree(tree)
    assert skipped and not tree.exists()
