"""Debag: check a BagIt zip, extract its payload while hashing it (one read), validate it.

Nothing is written before the zip's member names, types and declared sizes are checked; the
bag is built in a staging folder and moved into ``<work root>/<WorkRID>`` only when every check
passed. The zip itself is never modified or deleted here.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import queue
import re
import secrets
import shutil
import stat
import threading
import unicodedata
import zipfile
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from glacier_sync import faults
from glacier_sync.errors import BagError, DiskFull, is_disk_full
from glacier_sync.workspace import debag_stagings

log = logging.getLogger(__name__)

SUPPORTED_ALGORITHMS = ("sha512", "sha256", "sha1", "md5")
CHUNK_SIZE = 256 * 1024
THREADED_HASH_MIN_SIZE = 4 * 1024 * 1024
MAX_TAG_FILE_SIZE = 256 * 1024 * 1024
_OXUM = re.compile(r"^Payload-Oxum:\s*(\d+)\.(\d+)\s*$", re.IGNORECASE | re.MULTILINE)


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


def _nfc(path: str) -> str:
    return unicodedata.normalize("NFC", path)


def _fix_legacy_name(info: zipfile.ZipInfo) -> None:
    """Zips made without the UTF-8 flag often still hold UTF-8 names: decode them as such."""
    if info.flag_bits & 0x800:
        return
    with contextlib.suppress(UnicodeEncodeError, UnicodeDecodeError):
        info.filename = info.filename.encode("cp437").decode("utf-8")


def _undecodable_name(zip_path: Path, exc: UnicodeDecodeError) -> BagError:
    """zipfile could not decode a member name flagged as UTF-8 (0x800): name its raw bytes."""
    raw = exc.object if isinstance(exc.object, bytes) else str(exc.object).encode()
    return BagError(
        f"refused {zip_path.name}: a member name is not valid UTF-8 although the zip flags it as "
        "UTF-8; nothing was extracted; rebuild the zip with UTF-8 names",
        [f"{raw!r}: name is not valid UTF-8 ({exc.reason} at byte {exc.start})"],
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
    if ".." in PurePosixPath(name).parts:
        problems.append(f"{name}: climbs out of the bag with '..'")
    if kind == stat.S_IFLNK:
        problems.append(f"{name}: symbolic link")
    elif kind not in (0, stat.S_IFREG, stat.S_IFDIR):
        problems.append(f"{name}: special file (mode {oct(mode)})")
    if info.flag_bits & 0x1:
        problems.append(f"{name}: encrypted member")
    return problems


def _nfc_clashes(names: list[str]) -> list[str]:
    """Distinct names that are one path once NFC-normalised (extracted, one would be lost)."""
    by_path: dict[str, list[str]] = {}
    for name in dict.fromkeys(names):
        by_path.setdefault(_nfc(name), []).append(name)
    return [
        f"{path}: stored under {len(group)} names that differ only in Unicode normalisation "
        f"({' and '.join(ascii(n) for n in group)}); keep one"
        for path, group in by_path.items()
        if len(group) > 1
    ]


def _file_folder_clashes(infos: list[zipfile.ZipInfo]) -> list[str]:
    """Names that are a file and also a folder of other members (``data/a``, ``data/a/b``)."""
    folders: dict[str, str] = {}  # NFC folder path -> the first member that makes it a folder
    for info in infos:
        parts = _nfc(info.filename).rstrip("/").split("/")
        depth = len(parts) if info.is_dir() else len(parts) - 1
        for end in range(1, depth + 1):
            folders.setdefault("/".join(parts[:end]), info.filename)
    return [
        f"{info.filename}: a file, but {folders[_nfc(info.filename)]} makes it a folder; "
        "keep one of them"
        for info in infos
        if not info.is_dir() and _nfc(info.filename) in folders
    ]


def _manifest_clashes(zf: zipfile.ZipFile, tags: list[zipfile.ZipInfo], root: str) -> list[str]:
    """Payload manifests listing one path under names that differ only in normalisation."""
    problems = []
    for info in tags:
        manifest = info.filename[len(root) :]
        if not re.fullmatch(r"manifest-\w+\.txt", manifest):
            continue
        names = []
        for line in _read_small(zf, info).decode("utf-8", errors="replace").splitlines():
            parts = line.strip().split(None, 1)
            if len(parts) == 2:
                path = parts[1].replace("%0D", "\r").replace("%0A", "\n").replace("%25", "%")
                names.append(path.removeprefix("./"))
        problems += [f"{manifest}: {clash}" for clash in _nfc_clashes(names)]
    return problems


def _find_bag_root(infos: list[zipfile.ZipInfo]) -> str:
    candidates = [
        i.filename
        for i in infos
        if PurePosixPath(i.filename).name == "bagit.txt" and not i.is_dir()
    ]
    if not candidates:
        raise BagError("not a bag: the zip holds no bagit.txt")
    shallowest = min(candidates, key=lambda n: n.count("/"))
    return shallowest[: -len("bagit.txt")]


def _read_small(zf: zipfile.ZipFile, info: zipfile.ZipInfo) -> bytes:
    if info.file_size > MAX_TAG_FILE_SIZE:
        raise BagError(
            f"tag file {info.filename} is {info.file_size} bytes; refusing tag files this large"
        )
    try:
        return zf.read(info)
    except (zipfile.BadZipFile, OSError, EOFError) as exc:
        raise BagError(f"tag file {info.filename} cannot be read from the zip ({exc})") from None


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
    zf: zipfile.ZipFile, info: zipfile.ZipInfo, dest: Path, algorithms: tuple[str, ...]
) -> tuple[int, dict[str, str]]:
    """Copy one member to ``dest`` and hash it in the same pass; zipfile checks the CRC."""
    big = info.file_size >= THREADED_HASH_MIN_SIZE and len(algorithms) > 0
    hasher = _ParallelHasher(algorithms) if big else _InlineHasher(algorithms)
    written = 0
    try:
        with zf.open(info) as src, open(dest, "wb") as out:
            while chunk := src.read(CHUNK_SIZE):
                hasher.update(chunk)
                out.write(chunk)
                written += len(chunk)
    finally:
        digests = hasher.digests()
    return written, digests


def _payload_oxum(bag_info: bytes) -> tuple[int, int] | None:
    match = _OXUM.search(bag_info.decode("utf-8", errors="replace"))
    return (int(match.group(1)), int(match.group(2))) if match else None


def _manifest_paths(zf: zipfile.ZipFile, tags: list[zipfile.ZipInfo], root: str) -> set[str]:
    """Payload paths named by the payload manifests, read in memory (for early error lists)."""
    paths: set[str] = set()
    for info in tags:
        if not re.fullmatch(r"manifest-\w+\.txt", info.filename[len(root) :]):
            continue
        for line in _read_small(zf, info).decode("utf-8", errors="replace").splitlines():
            parts = line.strip().split(None, 1)
            if len(parts) == 2:
                path = parts[1].replace("%0D", "\r").replace("%0A", "\n").replace("%25", "%")
                paths.add(_nfc(path.removeprefix("./")))
    return paths


def _precheck(zip_path: Path, zf: zipfile.ZipFile, work_root: Path, margin: int):
    """Checks that need no writing: member names and types, declared sizes, free space."""
    infos = zf.infolist()
    for info in infos:
        _fix_legacy_name(info)
    problems = [p for info in infos for p in _member_problems(info)]
    counts = Counter(i.filename for i in infos)
    dupes = sorted(name for name, count in counts.items() if count > 1)
    problems += [f"{n}: stored more than once" for n in dupes]
    problems += _nfc_clashes([i.filename for i in infos]) + _file_folder_clashes(infos)
    if problems:
        raise BagError(
            f"refused {zip_path.name}: unsafe or clashing members; nothing was extracted", problems
        )
    root = _find_bag_root(infos)
    outside = [i.filename for i in infos if not i.filename.startswith(root)]
    outside = [n for n in outside if not (n.endswith("/") and root.startswith(n))]
    if outside:
        raise BagError(
            f"refused {zip_path.name}: members outside the bag folder {root or '/'!s}",
            [f"{n}: outside the bag" for n in outside],
        )
    files = [i for i in infos if not i.is_dir()]
    payload = [i for i in files if i.filename[len(root) :].startswith("data/")]
    tags = [i for i in files if not i.filename[len(root) :].startswith("data/")]
    clashes = _manifest_clashes(zf, tags, root)
    if clashes:
        raise BagError(
            f"refused {zip_path.name}: a payload manifest names one path twice; "
            "nothing was extracted",
            clashes,
        )
    declared = sum(i.file_size for i in payload)
    info_name = root + "bag-info.txt"
    info_member = next((i for i in tags if i.filename == info_name), None)
    oxum = _payload_oxum(_read_small(zf, info_member)) if info_member else None
    if oxum is not None and (declared, len(payload)) != oxum:
        listed = _manifest_paths(zf, tags, root)
        members = {_nfc(i.filename[len(root) :]) for i in payload}
        raise BagError(
            f"refused {zip_path.name}: the zip declares {declared} payload bytes in {len(payload)}"
            f" files, but Payload-Oxum says {oxum[0]}.{oxum[1]}; nothing was extracted",
            [f"Payload-Oxum {oxum[0]}.{oxum[1]} != declared {declared}.{len(payload)}"]
            + [
                f"{p}: listed in the manifest but missing from the zip"
                for p in sorted(listed - members)
            ]
            + [f"{p}: in the zip but not in any manifest" for p in sorted(members - listed)],
        )
    needed = declared + sum(i.file_size for i in tags) + margin
    work_root.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(work_root).free
    if needed > free:
        raise DiskFull(
            f"{zip_path.name} needs {needed} bytes in {work_root} (payload plus {margin} bytes "
            f"margin) but only {free} are free; free some space there, the debag is tried again "
            "on the next run"
        )
    return root, payload, tags, oxum


def _load_bag(tag_dir: Path, zip_name: str):
    import bagit

    class CheckedPathsBag(bagit.Bag):
        """bagit's Bag without its per-path realpath() danger test (1.6 s per 20,000 files).

        Safe here: a payload file is only ever written to a path taken from a zip member that
        _precheck vetted (not absolute, no '..', no link); a manifest path that is not such a
        member is reported as missing and nothing is written for it.
        """

        def _path_is_dangerous(self, path: str) -> bool:
            return False

    try:
        bag = CheckedPathsBag(str(tag_dir))
    except bagit.BagError as exc:
        raise BagError(f"refused {zip_name}: invalid bag declaration: {exc}") from None
    if list(bag.fetch_entries()):
        raise BagError(f"refused {zip_name}: fetch.txt lists remote files; this tool fetches none")
    unsupported = [a for a in bag.algorithms if a not in SUPPORTED_ALGORITHMS]
    if unsupported:
        raise BagError(f"refused {zip_name}: unsupported manifest algorithm(s) {unsupported}")
    if not bag.algorithms:
        raise BagError(f"refused {zip_name}: no payload manifest (manifest-<alg>.txt)")
    return bag


def _check_tags(bag, tag_dir: Path) -> list[str]:
    problems = []
    payload = set(bag.payload_entries())
    for path, hashes in bag.entries.items():
        if path in payload:
            continue
        if PurePosixPath(path).is_absolute() or ".." in PurePosixPath(path).parts:
            problems.append(f"{path}: a manifest names a path outside the bag")
            continue
        file = tag_dir / path
        if not file.is_file():
            problems.append(f"{path}: listed in a tag manifest but missing")
            continue
        data = file.read_bytes()
        for alg, expected in hashes.items():
            if hashlib.new(alg, data).hexdigest() != expected.lower():
                problems.append(f"{path}: {alg} mismatch (tag manifest)")
    return problems


def _extract_payload(zf, payload, root, bag, dest: Path) -> tuple[list[str], int]:
    """Extract and hash the payload; return (problems, bytes written)."""
    expected = {_nfc(p): h for p, h in bag.payload_entries().items()}
    members = {_nfc(i.filename[len(root) :]): i for i in payload}
    problems = [
        f"{p}: listed in the manifest but missing from the zip"
        for p in sorted(set(expected) - set(members))
    ]
    problems += [
        f"{p}: in the zip but not in any manifest" for p in sorted(set(members) - set(expected))
    ]
    if problems:
        return problems, 0
    total = 0
    made: set[Path] = set()
    for path, info in members.items():
        target = dest / path[len("data/") :]
        if target.parent not in made:
            target.parent.mkdir(parents=True, exist_ok=True)
            made.add(target.parent)
        hashes = expected[path]
        try:
            size, digests = _extract_hashing(zf, info, target, tuple(hashes))
        except OSError as exc:
            if is_disk_full(exc):
                raise DiskFull(
                    f"no space left in {dest.parent.parent} while extracting {path} "
                    f"({info.file_size} bytes); free space there, the debag starts again on the "
                    "next run"
                ) from exc
            problems.append(f"{path}: cannot be read from the zip ({exc})")
            continue
        except (zipfile.BadZipFile, EOFError) as exc:
            problems.append(f"{path}: cannot be read from the zip ({exc})")
            continue
        faults.checkpoint("debag:member")
        total += size
        for alg, want in hashes.items():
            if digests[alg] != want.lower():
                problems.append(
                    f"{path}: {alg} mismatch (manifest {want[:16]}..., file {digests[alg][:16]}...)"
                )
    return problems, total


def _place(staging: Path, payload_dir: Path, tag_dir: Path, work_root: Path, work_id: str) -> Path:
    """Move the staged bag to ``<work root>/<WorkRID>`` with the tags in ``<WorkRID>.bag/``."""
    entries = list(payload_dir.iterdir())
    content = payload_dir
    if len(entries) == 1 and entries[0].is_dir() and entries[0].name == work_id:
        content = entries[0]
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
) -> DebagResult:
    """Validate ``zip_path`` and extract it to ``<work_root>/<work_id>``; raise BagError if bad.

    ``before_place`` is called (and may raise) just before the validated folder replaces the
    work folder. The staging folder is this call's own (``.debag-<work>.<nonce>``); staging of
    earlier, killed tries of the work is removed first.
    """
    zip_path, work_root = Path(zip_path), Path(work_root)
    if not zip_path.is_file():
        raise BagError(f"bag zip {zip_path} does not exist")
    try:
        zf = zipfile.ZipFile(zip_path)
    except (zipfile.BadZipFile, OSError) as exc:
        raise BagError(
            f"refused {zip_path.name}: not a readable zip ({exc}); it may be truncated: "
            "download it again"
        ) from None
    except UnicodeDecodeError as exc:
        raise _undecodable_name(zip_path, exc) from None
    with zf:
        root, payload, tags, oxum = _precheck(zip_path, zf, work_root, free_space_margin)
        for stale in debag_stagings(work_root, work_id):  # killed tries of this work
            shutil.rmtree(stale, ignore_errors=True)
        staging = work_root / f".debag-{work_id}.{secrets.token_hex(4)}"
        tag_dir = staging / f"{work_id}.bag"
        payload_dir = staging / "payload"
        try:
            payload_dir.mkdir(parents=True)
            digests: dict[str, str] = {}
            for info in tags:
                name = info.filename[len(root) :]
                target = tag_dir / name
                target.parent.mkdir(parents=True, exist_ok=True)
                content = _read_small(zf, info)
                if re.fullmatch(r"(tag)?manifest-\w+\.txt", name):
                    digests[name] = hashlib.sha256(content).hexdigest()
                try:
                    target.write_bytes(content)
                except OSError as exc:
                    if not is_disk_full(exc):
                        raise
                    raise DiskFull(
                        f"no space left in {work_root} while writing the tag file "
                        f"{info.filename}; free space there, the debag starts again on the next run"
                    ) from exc
            bag = _load_bag(tag_dir, zip_path.name)
            problems = _check_tags(bag, tag_dir)
            extract_problems, total = _extract_payload(zf, payload, root, bag, payload_dir)
            problems += extract_problems
            if not extract_problems and oxum and (total, len(payload)) != oxum:
                problems.append(
                    f"Payload-Oxum {oxum[0]}.{oxum[1]} != extracted {total}.{len(payload)}"
                )
            if problems:
                raise BagError(
                    f"refused {zip_path.name}: the bag is invalid; nothing was kept", problems
                )
            if before_place is not None:
                before_place()
            final = _place(staging, payload_dir, tag_dir, work_root, work_id)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return DebagResult(
        work_id,
        final,
        len(payload),
        total,
        tuple(bag.algorithms),
        dict(sorted(digests.items())),
        f"{oxum[0]}.{oxum[1]}" if oxum else None,
    )
