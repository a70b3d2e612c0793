"""Debag: check a BagIt zip, extract its payload while hashing it (one read), validate it.

Nothing is written before the zip's member names, types and declared sizes are checked; the
bag is built in a staging folder and moved into ``<work root>/<WorkRID>`` only when every check
passed. The zip itself is never modified or deleted here.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import logging
import os
import queue
import re
import secrets
import shutil
import sqlite3
import threading
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from glacier_sync import faults
from glacier_sync.bag.bag_index import (
    RECENT_FOLDERS,
    BagIndex,
    MemberNames,
    Problems,
    RecentSet,
)
from glacier_sync.bag.payload_manifest import SUPPORTED_ALGORITHMS, PayloadManifest, nfc
from glacier_sync.bag.workspace import debag_stagings
from glacier_sync.bag.zip_directory import StreamedZip
from glacier_sync.bag.zip_vetting import (
    is_payload,
    small_enough,
    stream_members,
    unreadable_zip,
    vet_members,
)
from glacier_sync.errors import BagError, DiskFull, TransientError, is_disk_full

log = logging.getLogger(__name__)

CHUNK_SIZE = 256 * 1024
THREADED_HASH_MIN_SIZE = 4 * 1024 * 1024


@dataclass(frozen=True)
class DebagResult:
    """A debagged work: where it is and what was checked."""

    work_id: str
    work_path: Path
    files: int
    bytes: int
    algorithms: tuple[str, ...]
    # The SHA-256 of each manifest file itself (``manifest-sha512.txt``, ``tagmanifest-...``):
    # the evidence names exactly the lists the payload was checked against.
    manifest_digests: dict[str, str] = field(default_factory=dict)
    payload_oxum: str | None = None


class _ParallelHasher:
    """Hashes chunks in one thread per algorithm while the caller reads and writes."""

    def __init__(self, algorithms: tuple[str, ...]) -> None:
        self.hashers = {alg: hashlib.new(alg) for alg in algorithms}
        self.queues = {alg: queue.Queue(maxsize=8) for alg in algorithms}
        self.threads = [
            threading.Thread(target=self._run, args=(alg,), daemon=True) for alg in algorithms
        ]
        for thread in self.threads:
            thread.start()

    def _run(self, alg: str) -> None:
        hasher, chunks = self.hashers[alg], self.queues[alg]
        while (chunk := chunks.get()) is not None:
            hasher.update(chunk)

    def update(self, chunk: bytes) -> None:
        for chunks in self.queues.values():
            chunks.put(chunk)

    def digests(self) -> dict[str, str]:
        for chunks in self.queues.values():
            chunks.put(None)
        for thread in self.threads:
            thread.join()
        return {alg: h.hexdigest() for alg, h in self.hashers.items()}


class _InlineHasher:
    """Hashes chunks in the calling thread (small files: no hand-over cost)."""

    def __init__(self, algorithms: tuple[str, ...]) -> None:
        self.hashers = [(alg, hashlib.new(alg)) for alg in algorithms]

    def update(self, chunk: bytes) -> None:
        for _, hasher in self.hashers:
            hasher.update(chunk)

    def digests(self) -> dict[str, str]:
        return {alg: h.hexdigest() for alg, h in self.hashers}


def _extract_hashing(
    zf: zipfile.ZipFile,
    info: zipfile.ZipInfo,
    dest: Path | str,
    algorithms: tuple[str, ...],
    progress: Callable[[], None] = lambda: None,
) -> tuple[int, dict[str, str]]:
    """Copy one member to ``dest`` and hash it in the same pass; zipfile checks the CRC;
    ``progress`` is called after every chunk written (it may raise to stop the debag)."""
    big = info.file_size >= THREADED_HASH_MIN_SIZE and len(algorithms) > 0
    hasher = _ParallelHasher(algorithms) if big else _InlineHasher(algorithms)
    written = 0
    try:
        with zf.open(info) as src, open(dest, "wb") as out:
            while chunk := src.read(CHUNK_SIZE):
                hasher.update(chunk)
                out.write(chunk)
                written += len(chunk)
                progress()
    finally:
        digests = hasher.digests()
    return written, digests


def _load_bag(tag_dir: Path, zip_name: str, manifest: PayloadManifest):
    """bagit reads the declaration, bag-info.txt and the tag manifests; the payload manifests
    were read into ``manifest`` while the zip was vetted."""
    import bagit

    class TagsOnlyBag(bagit.Bag):
        """bagit's Bag without the payload manifests (``manifest`` holds them, in a fifth of
        the memory) and without its per-path realpath() danger test (1.6 s per 20,000 files).

        Safe here: a payload file is only ever written to a path taken from a zip member that
        vet_members vetted (not absolute, no '..', no link); a manifest path that is not such a
        member is reported as missing and nothing is written for it.
        """

        def manifest_files(self):
            return iter(())

        def _path_is_dangerous(self, path: str) -> bool:
            return False

    try:
        bag = TagsOnlyBag(str(tag_dir))
    except bagit.BagError as exc:
        raise BagError(f"refused {zip_name}: invalid bag declaration: {exc}") from None
    if list(bag.fetch_entries()):
        raise BagError(f"refused {zip_name}: fetch.txt lists remote files; this tool fetches none")
    unsupported = list(manifest.unsupported)
    unsupported += [a for a in bag.algorithms if a not in SUPPORTED_ALGORITHMS]
    if unsupported:
        raise BagError(f"refused {zip_name}: unsupported manifest algorithm(s) {unsupported}")
    if not manifest.algorithms:
        raise BagError(f"refused {zip_name}: no payload manifest (manifest-<alg>.txt)")
    return bag


def _check_tags(bag, tag_dir: Path) -> list[str]:
    problems = []
    for path, hashes in bag.entries.items():
        if path.startswith("data/"):  # payload in a tag manifest: checked once extracted
            continue
        if PurePosixPath(path).is_absolute() or ".." in PurePosixPath(path).parts:
            problems.append(f"{path}: a manifest names a path outside the bag")
            continue
        file = tag_dir / path
        if not file.is_file():
            problems.append(f"{path}: listed in a tag manifest but missing")
            continue
        got = _hash_file(file, tuple(hashes))  # a payload manifest: never whole in memory
        for alg, expected in hashes.items():
            if got[alg] != expected.lower():
                problems.append(f"{path}: {alg} mismatch (tag manifest)")
    return problems


def _hash_file(file: Path, algorithms: tuple[str, ...]) -> dict[str, str]:
    """The hex digests of ``file`` for every algorithm, in one read through a fixed buffer."""
    hasher = _InlineHasher(algorithms)
    with file.open("rb") as stream:
        while chunk := stream.read(CHUNK_SIZE):
            hasher.update(chunk)
    return hasher.digests()


def _check_tag_listed_payload(bag, payload_dir: Path) -> list[str]:
    """Payload files a tag manifest lists too (unusual, but bagit checks them): each must be
    extracted and match there as well."""
    problems = []
    for path, hashes in bag.entries.items():
        if not path.startswith("data/"):
            continue
        file = payload_dir / nfc(path)[len("data/") :]
        if not file.is_file():
            problems.append(f"{path}: listed in a tag manifest but missing from the zip")
            continue
        got = _hash_file(file, tuple(hashes))  # every algorithm in one read
        problems += [
            f"{path}: {alg} mismatch (tag manifest)"
            for alg, expected in hashes.items()
            if got[alg] != expected.lower()
        ]
    return problems


def _extract_payload(
    zip_path: Path,
    zf: StreamedZip,
    root: str,
    names: MemberNames,
    manifest: PayloadManifest,
    dest: Path,
    progress: Callable[[], None],
) -> tuple[list[str], int]:
    """Extract and hash the payload, the zip's directory read once more; return (problems,
    bytes written). Nothing is extracted when a file is missing from the zip or the manifests."""
    unlisted = names.unlisted(root)
    if unlisted:
        return unlisted, 0
    problems = Problems()  # every file may fail: the first named, the rest counted
    total = 0
    made = RecentSet(RECENT_FOLDERS)  # folders made lately: no set of every folder
    for info in stream_members(zip_path, zf):
        if not is_payload(info, root):
            continue
        member = nfc(info.filename)
        path = member[len(manifest.root) :]
        target = os.path.join(dest, path[len("data/") :])  # no pathlib: it interns every name
        folder = os.path.dirname(target)
        if made.add(folder):
            os.makedirs(folder, exist_ok=True)
        hashes = manifest.expected(member)
        if hashes is None:  # unlisted() found every such file: the zip changed underneath
            raise BagError(f"refused {zip_path.name}: {path} is in no manifest")
        try:
            size, digests = _extract_hashing(zf, info, target, tuple(hashes), progress)
        except OSError as exc:
            if is_disk_full(exc):
                raise DiskFull(
                    f"no space left in {dest.parent.parent} while extracting {path} "
                    f"({info.file_size} bytes); free space there, the debag starts again on the "
                    "next run"
                ) from exc
            problems.add(f"{path}: cannot be read from the zip ({exc})")
            continue
        except (zipfile.BadZipFile, EOFError) as exc:
            problems.add(f"{path}: cannot be read from the zip ({exc})")
            continue
        faults.checkpoint("debag:member")
        total += size
        for alg, want in hashes.items():
            if digests[alg] != want.lower():
                problems.add(
                    f"{path}: {alg} mismatch (manifest {want[:16]}..., file {digests[alg][:16]}...)"
                )
    return problems.lines(), total


def _write_tags(zf, tags, root: str, tag_dir: Path) -> dict[str, str]:
    """The tag files copied into ``tag_dir`` as they are read (a manifest of 100,000 lines is
    never whole in memory); returns the SHA-256 of each manifest file."""
    digests: dict[str, str] = {}
    for info in tags:
        name = info.filename[len(root) :]
        target = tag_dir / name
        target.parent.mkdir(parents=True, exist_ok=True)
        small_enough(info)
        try:
            _, sha256 = _extract_hashing(zf, info, target, ("sha256",))
        except OSError as exc:  # the disk's fault, not the bag's
            if not is_disk_full(exc):
                raise
            raise DiskFull(
                f"no space left in {tag_dir.parent.parent} while writing the tag file "
                f"{info.filename}; free space there, the debag starts again on the next run"
            ) from exc
        except (zipfile.BadZipFile, EOFError) as exc:
            raise BagError(
                f"tag file {info.filename} cannot be read from the zip ({exc})"
            ) from None
        if re.fullmatch(r"(tag)?manifest-\w+\.txt", name):
            digests[name] = sha256["sha256"]
    return digests


def _place(staging: Path, payload_dir: Path, tag_dir: Path, work_root: Path, work_id: str) -> Path:
    """Move the staged bag to ``<work root>/<WorkRID>`` with the tags in ``<WorkRID>.bag/``."""
    content = payload_dir
    with os.scandir(payload_dir) as entries:  # two entries tell it: a flat data/ holds them all
        first = list(itertools.islice(entries, 2))
    if len(first) == 1 and first[0].is_dir(follow_symlinks=False) and first[0].name == work_id:
        content = payload_dir / work_id
    if (content / tag_dir.name).exists():
        raise BagError(
            f"the payload has its own {tag_dir.name}; cannot keep the tag files beside it"
        )
    os.replace(tag_dir, content / tag_dir.name)
    final = work_root / work_id
    old = None
    if final.exists():
        old = staging / "previous"
        os.replace(final, old)
        log.warning("replacing an earlier, unsynced work folder %s", final)
    os.replace(content, final)
    return final


def debag(
    zip_path: Path,
    work_root: Path,
    work_id: str,
    free_space_margin: int = 0,
    before_place: Callable[[], None] | None = None,
    progress: Callable[[], None] = lambda: None,
) -> DebagResult:
    """Validate ``zip_path`` and extract it to ``<work_root>/<work_id>``; raise BagError if bad.

    ``before_place`` is called (and may raise) just before the validated folder replaces the
    work folder. The staging folder is this call's own (``.debag-<work>.<nonce>``); staging of
    earlier, killed tries of the work is removed first. ``progress`` is called as the payload
    is written (it may raise ``Stalled`` to stop the debag; nothing is then kept).
    """
    zip_path, work_root = Path(zip_path), Path(work_root)
    if not zip_path.is_file():
        raise BagError(f"bag zip {zip_path} does not exist")
    try:
        zf = StreamedZip(zip_path)
    except (zipfile.BadZipFile, OSError) as exc:
        raise unreadable_zip(zip_path, exc) from None
    with zf:
        for stale in debag_stagings(work_root, work_id):  # killed tries of this work
            shutil.rmtree(stale, ignore_errors=True)
        staging = work_root / f".debag-{work_id}.{secrets.token_hex(4)}"
        tag_dir = staging / f"{work_id}.bag"
        payload_dir = staging / "payload"
        index = None
        try:
            payload_dir.mkdir(parents=True)
            with _index_faults(work_root):
                index = BagIndex(staging / "members.sqlite")  # closes itself if it fails
                root, files, _, tags, oxum, manifest, names = vet_members(
                    zip_path, zf, index, work_root, free_space_margin
                )
                digests = _write_tags(zf, tags, root, tag_dir)
                bag = _load_bag(tag_dir, zip_path.name, manifest)
                problems = _check_tags(bag, tag_dir)
                extract_problems, total = _extract_payload(
                    zip_path, zf, root, names, manifest, payload_dir, progress
                )
            problems += extract_problems or _check_tag_listed_payload(bag, payload_dir)
            if not extract_problems and oxum and (total, files) != oxum:
                problems.append(f"Payload-Oxum {oxum[0]}.{oxum[1]} != extracted {total}.{files}")
            if problems:
                raise BagError(
                    f"refused {zip_path.name}: the bag is invalid; nothing was kept", problems
                )
            if before_place is not None:
                before_place()
            final = _place(staging, payload_dir, tag_dir, work_root, work_id)
        finally:
            if index is not None:
                index.close()
            shutil.rmtree(staging, ignore_errors=True)
    return DebagResult(
        work_id,
        final,
        files,
        total,
        manifest.algorithms + tuple(a for a in bag.algorithms if a not in manifest.algorithms),
        dict(sorted(digests.items())),
        f"{oxum[0]}.{oxum[1]}" if oxum else None,
    )


@contextlib.contextmanager
def _index_faults(work_root: Path) -> Iterator[None]:
    """The index failing (a full disk, a quota, an I/O error of the file system) is the
    folder's fault, never the bag's: retried, no attempt spent."""
    try:
        yield
    except sqlite3.DatabaseError as exc:
        if isinstance(exc, sqlite3.IntegrityError | sqlite3.ProgrammingError):
            raise  # a fault of this code, not of the disk
        if "full" in str(exc):
            raise DiskFull(
                f"no space left in {work_root} for the debag's index of member names ({exc}); "
                "free space there, the debag starts again on the next run"
            ) from exc
        raise TransientError(
            f"the debag's index of member names in {work_root} failed ({exc}: a quota, or an "
            "I/O error of that file system); check it there, the debag starts again on the "
            "next run"
        ) from exc
