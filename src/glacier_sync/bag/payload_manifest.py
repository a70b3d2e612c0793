"""A bag's payload manifests, read once, line by line, into one table on disk (the debag's
``BagIndex``): each payload path (NFC) with the digests its manifests give it, as bytes. Memory
does not grow with the number of files (bagit's dictionaries of hex strings took about 1 KB a
file, the compact table in memory that came after them 200 bytes)."""

from __future__ import annotations

import codecs
import hashlib
import io
import os
import re
import sqlite3
import zipfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from functools import cached_property

from glacier_sync.bag.bag_index import MAX_PROBLEMS, BagIndex, nfc

SUPPORTED_ALGORITHMS = ("sha512", "sha256", "sha1", "md5")  # strongest first
DIGEST_SIZES = {alg: hashlib.new(alg).digest_size for alg in SUPPORTED_ALGORITHMS}
MANIFEST_NAME = re.compile(r"manifest-(\w+)\.txt")
_ENCODING = re.compile(r"^Tag-File-Character-Encoding:\s*(\S+)\s*$", re.IGNORECASE | re.MULTILINE)


def tag_encoding(bagit_txt: bytes) -> str:
    """The tag files' encoding that ``bagit.txt`` declares (UTF-8 when it declares none that
    Python knows: the bag's declaration is refused later, naming it)."""
    match = _ENCODING.search(bagit_txt.decode("utf-8", errors="replace").lstrip("\ufeff"))
    try:
        return codecs.lookup(match.group(1)).name if match else "utf-8"
    except LookupError:
        return "utf-8"


@dataclass
class PayloadManifest:
    """The payload manifests of one bag, joined in ``index``'s ``manifest`` table: the NFC path
    of each payload file in the zip (``root`` included) -> its digests, in ``algorithms``
    order. ``problems`` lists every line that could not be taken, each naming its manifest."""

    index: BagIndex
    root: str = ""  # the bag folder in the zip, NFC
    algorithms: tuple[str, ...] = ()
    unsupported: tuple[str, ...] = ()
    problems: list[str] = field(default_factory=list)
    clashes: list[str] = field(default_factory=list)  # one path listed twice in a manifest

    @cached_property
    def _digests_query(self) -> str:
        columns = ", ".join(f"d{i}" for i in range(len(self.algorithms)))
        return f"SELECT {columns} FROM manifest WHERE path = ?"

    def expected(self, member: str) -> dict[str, str] | None:
        """The hex digests the manifests give the payload file named ``member`` (NFC, as in the
        zip), by algorithm; None when no manifest lists it."""
        row = self.index.one(self._digests_query, member)
        if row is None:
            return None
        return {alg: digest.hex() for alg, digest in zip(self.algorithms, row, strict=True)}


class _Undecodable(Exception):
    """A manifest line that is not valid in the bag's declared encoding."""

    def __init__(self, where: str, reason: str) -> None:
        super().__init__(f"{where} ({reason})")


def _lines(zf: zipfile.ZipFile, info: zipfile.ZipInfo, encoding: str) -> Iterator[str]:
    """The manifest's lines, read from the zip as they are needed (never whole in memory); each
    decoded on its own where the encoding keeps ASCII's newline (UTF-8 and its kin), so that
    a bad byte is named with its line."""
    with zf.open(info) as raw:
        if "\n".encode(encoding) != b"\n":  # UTF-16 and the like: decoded as a stream
            text = io.TextIOWrapper(raw, encoding=encoding)
            try:
                yield from (line.lstrip("\ufeff") for line in text)
            except UnicodeDecodeError as exc:
                raise _Undecodable("somewhere", exc.reason) from None
            return
        for number, line in enumerate(raw, 1):
            try:
                decoded = line.decode(encoding)
            except UnicodeDecodeError as exc:
                raise _Undecodable(f"line {number}", exc.reason) from None
            yield decoded.lstrip("\ufeff") if number == 1 else decoded


def _decoded(path: str) -> str:
    """A manifest path as bagit reads it: normalised, its CR and LF percent-decoded."""
    return os.path.normpath(path.lstrip("*")).replace("%0D", "\r").replace("%0A", "\n")


def _is_text(path: str) -> bool:
    """False for a path with lone surrogates (what UTF-7 or escapes can decode to)."""
    try:
        path.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


class _Reader:
    """Adds one manifest after another to the table: manifest ``i``'s digests go to column
    ``d<i>``. A path missing from an earlier manifest is kept as a gap."""

    def __init__(self, table: PayloadManifest) -> None:
        self.table = table
        self.db = table.index.db
        self.column = 0  # the manifest being read: its digests go to d<column>
        self.more = 0  # problems past MAX_PROBLEMS

    def add(self, name: str, alg: str, lines: Iterable[str], encoding: str) -> None:
        size = DIGEST_SIZES[alg]
        try:
            for number, line in enumerate(lines, 1):
                line = line.strip()
                if line and not line.startswith("#"):
                    self._entry(name, alg, size, number, line)
        except _Undecodable as exc:
            self.problem(f"{name}: not valid {encoding}: {exc}")
        self.column += 1

    def problem(self, text: str, kind: list[str] | None = None) -> None:
        """Name a problem; past MAX_PROBLEMS, count it (a manifest of junk stays small here)."""
        named = self.table.problems if kind is None else kind
        if len(self.table.problems) + len(self.table.clashes) < MAX_PROBLEMS:
            named.append(text)
        else:
            self.more += 1

    def _entry(self, name: str, alg: str, size: int, number: int, line: str) -> None:
        parts = line.split(None, 1)
        if len(parts) != 2:
            self.problem(f"{name} line {number}: not '<digest>  <path>': {line[:80]!r}")
            return
        try:
            digest = bytes.fromhex(parts[0])
        except ValueError:
            digest = b""
        if len(digest) != size:
            self.problem(f"{name} line {number}: {parts[0][:20]!r} is not a {alg} digest")
            return
        path = _decoded(parts[1])
        if not path.isascii() and not _is_text(path):
            self.problem(f"{name} line {number}: the path is not valid text: {path[:80]!a}")
            return
        if path.startswith("/") or ".." in path.split("/"):
            self.problem(f"{path}: a manifest names a path outside the bag")
            return
        if not path.startswith("data/"):
            self.problem(f"{path}: {name} names a file outside data/")
            return
        key = nfc(path)
        member = self.table.root + key
        if not self.column:
            try:
                self.db.execute(
                    "INSERT INTO manifest (path, d0, raw) VALUES (?, ?, ?)",
                    (member, digest, path if key != path else None),
                )
            except sqlite3.IntegrityError:
                self._twice(name, path, key, member)
            return
        column = f"d{self.column}"
        added = self.db.execute(
            f"UPDATE manifest SET {column} = ? WHERE path = ? AND {column} IS NULL AND gap = 0",
            (digest, member),
        )
        if added.rowcount:
            return
        row = self.db.execute(f"SELECT {column}, gap FROM manifest WHERE path = ?", (member,))
        row = row.fetchone()
        if row is None:  # missing from an earlier manifest
            self.db.execute("INSERT INTO manifest (path, gap) VALUES (?, 1)", (member,))
        elif row[0] is not None and not row[1]:
            self._twice(name, path, key, member)

    def _twice(self, name: str, path: str, key: str, member: str) -> None:
        (raw,) = self.db.execute("SELECT raw FROM manifest WHERE path = ?", (member,)).fetchone()
        first = raw or key
        self.problem(
            f"{name}: {path}: listed twice"
            if first == path
            else f"{name}: {key}: stored under 2 names that differ only in Unicode "
            f"normalisation ({ascii(first)} and {ascii(path)}); keep one",
            self.table.clashes,
        )

    def finish(self, names: list[str]) -> None:
        """Every path must be in every payload manifest."""
        cut = len(self.table.root) + 1
        short = " OR ".join(f"d{i} IS NULL" for i in range(self.column)) or "0"
        for (path,) in self.db.execute(
            f"SELECT substr(path, ?) FROM manifest WHERE gap = 1 OR {short} ORDER BY path",
            (cut,),
        ):
            self.problem(f"{path}: not listed in every payload manifest ({', '.join(names)})")
        if self.more:
            self.table.problems.append(f"... and {self.more} more lines that cannot be taken")


def read_payload_manifests(
    zf: zipfile.ZipFile, tags: list[zipfile.ZipInfo], root: str, encoding: str, index: BagIndex
) -> PayloadManifest:
    """Every ``manifest-<alg>.txt`` at the bag's top, joined into ``index``'s table; manifests
    of an algorithm this tool does not know are named in ``unsupported`` and not read."""
    found = {}
    for info in tags:
        match = MANIFEST_NAME.fullmatch(info.filename[len(root) :])
        if match:
            found[match.group(1)] = info
    known = [alg for alg in SUPPORTED_ALGORITHMS if alg in found]
    table = PayloadManifest(
        index,
        nfc(root),
        algorithms=tuple(known),
        unsupported=tuple(sorted(alg for alg in found if alg not in SUPPORTED_ALGORITHMS)),
    )
    reader = _Reader(table)
    names = [f"manifest-{alg}.txt" for alg in known]
    for alg, name in zip(known, names, strict=True):
        reader.add(name, alg, _lines(zf, found[alg], encoding), encoding)
    reader.finish(names)
    return table
