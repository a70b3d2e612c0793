"""A bag zip's members vetted before anything is written: names (absolute, ``..``, backslashes,
Unicode twins, a file that is also a folder), types (links, special files, encrypted members),
the bag folder, the payload manifests' own clashes, the Payload-Oxum against the declared sizes,
and the room the extraction needs. Each refusal names every member at fault."""

from __future__ import annotations

import contextlib
import re
import shutil
import stat
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

from glacier_sync.bag.bag_index import BagIndex, MemberNames, Problems
from glacier_sync.bag.payload_manifest import (
    MANIFEST_NAME,
    PayloadManifest,
    read_payload_manifests,
    tag_encoding,
)
from glacier_sync.bag.zip_directory import StreamedZip, UnsupportedZip
from glacier_sync.errors import BagError, RoomShortfall

MAX_TAG_FILE_SIZE = 256 * 1024 * 1024
_OXUM = re.compile(r"^Payload-Oxum:\s*(\d+)\.(\d+)\s*$", re.IGNORECASE | re.MULTILINE)


class Vetted(NamedTuple):
    """A zip's members once vetted (the payload's names are in the index, not here)."""

    root: str  # the bag folder inside the zip ("" or "W1/"), the prefix of every member
    files: int  # the payload's files (under data/)
    declared: int  # the payload's bytes, as the zip declares them
    tags: list[zipfile.ZipInfo]  # the other files: bagit.txt, manifests, bag-info.txt
    oxum: tuple[int, int] | None  # Payload-Oxum (bytes, files), when bag-info.txt has one
    manifest: PayloadManifest  # the payload manifests, joined
    names: MemberNames  # every member's name, on disk


# One shared tuple for every member's date: zipfile keeps a tuple of six ints per member.
NO_DATE = (1980, 1, 1, 0, 0, 0)

# General purpose flag bit 11 (APPNOTE 4.4.4): the member's name and comment are UTF-8.
UTF8_NAME_FLAG = 0x800


def _fix_legacy_name(info: zipfile.ZipInfo) -> None:
    """Zips made without the UTF-8 flag often still hold UTF-8 names: decode them as such."""
    if info.flag_bits & UTF8_NAME_FLAG or info.filename.isascii():  # ASCII: no new string
        return
    with contextlib.suppress(UnicodeEncodeError, UnicodeDecodeError):
        info.filename = info.filename.encode("cp437").decode("utf-8")


def undecodable_name(zip_path: Path, exc: UnicodeDecodeError) -> BagError:
    """zipfile could not decode a member name flagged as UTF-8: name its raw bytes."""
    raw = exc.object if isinstance(exc.object, bytes) else str(exc.object).encode()
    return BagError(
        f"refused {zip_path.name}: a member name is not valid UTF-8 although the zip flags it as "
        "UTF-8; nothing was extracted; rebuild the zip with UTF-8 names",
        [f"{raw!r}: name is not valid UTF-8 ({exc.reason} at byte {exc.start})"],
    )


def unreadable_zip(zip_path: Path, exc: Exception) -> BagError:
    """The zip (its end record or its directory) cannot be read: most likely cut short."""
    return BagError(
        f"refused {zip_path.name}: not a readable zip ({exc}); it may be truncated: "
        "download it again"
    )


def _member_problems(info: zipfile.ZipInfo) -> list[str]:
    name = info.filename
    problems = []
    mode = info.external_attr >> 16
    kind = stat.S_IFMT(mode)
    if name.startswith("/") or re.match(r"^[A-Za-z]:", name):
        problems.append(f"{name}: absolute path")
    if "\\" in name:
        problems.append(f"{name}: backslash in member name")
    if ".." in name.split("/"):  # no pathlib: it interns every name
        problems.append(f"{name}: climbs out of the bag with '..'")
    if kind == stat.S_IFLNK:
        problems.append(f"{name}: symbolic link")
    elif kind not in (0, stat.S_IFREG, stat.S_IFDIR):
        problems.append(f"{name}: special file (mode {oct(mode)})")
    if info.flag_bits & 0x1:
        problems.append(f"{name}: encrypted member")
    return problems


def stream_members(zip_path: Path, zf: StreamedZip) -> Iterator[zipfile.ZipInfo]:
    """The zip's members as its directory is read, names decoded as ``_fix_legacy_name`` does;
    a damaged directory or a name that cannot be decoded is a ``BagError``."""
    try:
        for info in zf.members():
            _fix_legacy_name(info)
            info.date_time = NO_DATE  # never used (files get the time of extraction)
            yield info
    except UnsupportedZip as exc:
        raise BagError(
            f"refused {zip_path.name}: {exc}; nothing was extracted; rebuild the zip with a "
            "common zip tool"
        ) from None
    except zipfile.BadZipFile as exc:
        raise unreadable_zip(zip_path, exc) from None
    except UnicodeDecodeError as exc:
        raise undecodable_name(zip_path, exc) from None


def _data_end(info: zipfile.ZipInfo) -> int:
    """Where a member's data ends at the least: its local header, name and data (the header's
    extra field, not known before the header is read, may add to it)."""
    encoding = "utf-8" if info.flag_bits & UTF8_NAME_FLAG else "cp437"
    name = info.orig_filename.encode(encoding)
    return info.header_offset + zipfile.sizeFileHeader + len(name) + info.compress_size


def is_payload(info: zipfile.ZipInfo, root: str) -> bool:
    return not info.is_dir() and info.filename[len(root) :].startswith("data/")


def small_enough(info: zipfile.ZipInfo) -> None:
    if info.file_size > MAX_TAG_FILE_SIZE:
        raise BagError(
            f"tag file {info.filename} is {info.file_size} bytes; refusing tag files this large"
        )


def read_small(zf: zipfile.ZipFile, info: zipfile.ZipInfo) -> bytes:
    small_enough(info)
    try:
        return zf.read(info)
    except (zipfile.BadZipFile, OSError, EOFError) as exc:
        raise BagError(f"tag file {info.filename} cannot be read from the zip ({exc})") from None


def _payload_oxum(bag_info: bytes) -> tuple[int, int] | None:
    match = _OXUM.search(bag_info.decode("utf-8", errors="replace"))
    return (int(match.group(1)), int(match.group(2))) if match else None


def _payload_manifest(
    zip_path: Path, zf: zipfile.ZipFile, tags: list[zipfile.ZipInfo], root: str, index: BagIndex
) -> PayloadManifest:
    """The payload manifests read from the zip in the declared encoding; refused when one
    names a path twice (a duplicate or a Unicode twin) or has a line that cannot be taken."""
    declaration = next((i for i in tags if i.filename == root + "bagit.txt"), None)
    encoding = tag_encoding(read_small(zf, declaration)) if declaration else "utf-8"
    for info in tags:
        if MANIFEST_NAME.fullmatch(info.filename[len(root) :]):
            small_enough(info)
    try:
        manifest = read_payload_manifests(zf, tags, root, encoding, index)
    except (zipfile.BadZipFile, OSError, EOFError) as exc:
        raise BagError(
            f"refused {zip_path.name}: a payload manifest cannot be read from the zip ({exc})"
        ) from None
    if manifest.clashes:
        raise BagError(
            f"refused {zip_path.name}: a payload manifest names one path twice; "
            "nothing was extracted",
            manifest.clashes + manifest.problems,
        )
    if manifest.problems:
        raise BagError(
            f"refused {zip_path.name}: a payload manifest has entries that cannot be taken; "
            "nothing was extracted",
            manifest.problems,
        )
    return manifest


def _read_names(zip_path: Path, zf: StreamedZip, names: MemberNames) -> str:
    """Vet each member's name and type as the directory is read, record its name; return the
    bag folder (the folder of the shallowest bagit.txt)."""
    problems = Problems()
    root = None
    for info in stream_members(zip_path, zf):
        for problem in _member_problems(info):
            problems.add(problem)
        names.add(info.filename, info.is_dir(), info.header_offset, _data_end(info))
        declaration = info.filename.rsplit("/", 1)[-1] == "bagit.txt" and not info.is_dir()
        if declaration and (root is None or info.filename.count("/") < root.count("/")):
            root = info.filename[: -len("bagit.txt")]
    found = problems.lines() + names.clashes() + names.overlaps(zf.start_dir)
    if found:
        raise BagError(
            f"refused {zip_path.name}: unsafe or clashing members; nothing was extracted", found
        )
    if root is None:
        raise BagError("not a bag: the zip holds no bagit.txt")
    return root


def vet_members(
    zip_path: Path, zf: StreamedZip, index: BagIndex, work_root: Path, margin: int
) -> Vetted:
    """Checks that need no writing (but to ``index``): member names and types, declared sizes,
    free space. The directory is read twice, never kept whole."""
    names = MemberNames(index)
    root = _read_names(zip_path, zf, names)
    outside = names.outside(root)
    if outside:
        raise BagError(
            f"refused {zip_path.name}: members outside the bag folder {root or '/'!s}", outside
        )
    files = declared = 0
    tags = []
    for info in stream_members(zip_path, zf):
        if is_payload(info, root):
            files += 1
            declared += info.file_size
        elif not info.is_dir():
            tags.append(info)
    manifest = _payload_manifest(zip_path, zf, tags, root, index)
    info_name = root + "bag-info.txt"
    info_member = next((i for i in tags if i.filename == info_name), None)
    oxum = _payload_oxum(read_small(zf, info_member)) if info_member else None
    if oxum is not None and (declared, files) != oxum:
        raise BagError(
            f"refused {zip_path.name}: the zip declares {declared} payload bytes in {files}"
            f" files, but Payload-Oxum says {oxum[0]}.{oxum[1]}; nothing was extracted",
            [f"Payload-Oxum {oxum[0]}.{oxum[1]} != declared {declared}.{files}"]
            + names.unlisted(root),
        )
    needed = declared + sum(i.file_size for i in tags) + margin
    work_root.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(work_root).free
    if needed > free:
        raise RoomShortfall(
            f"{zip_path.name} needs {needed} bytes in {work_root} (payload plus {margin} bytes "
            f"margin) but only {free} are free; free some space there, the debag is tried again "
            "on the next run"
        )
    return Vetted(root, files, declared, tags, oxum, manifest, names)
