"""A bag's payload manifests, read once, line by line, into one compact table: each payload path
(NFC) with the digests its manifests give it, as bytes. About 200 bytes a file, where bagit's
dictionaries of hex strings (and the copies made of them) took about 1 KB."""

from __future__ import annotations

import codecs
import hashlib
import io
import os
import re
import unicodedata
import zipfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

SUPPORTED_ALGORITHMS = ("sha512", "sha256", "sha1", "md5")  # strongest first
DIGEST_SIZES = {alg: hashlib.new(alg).digest_size for alg in SUPPORTED_ALGORITHMS}
MAX_PROBLEMS = 1000  # lines named one by one; the rest are counted
MANIFEST_NAME = re.compile(r"manifest-(\w+)\.txt")
_ENCODING = re.compile(r"^Tag-File-Character-Encoding:\s*(\S+)\s*$", re.IGNORECASE | re.MULTILINE)


def nfc(path: str) -> str:
    return unicodedata.normalize("NFC", path)


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
    """The payload manifests of one bag, joined: NFC path -> the digests, in ``algorithms``
    order. ``problems`` lists every line that could not be taken, each naming its manifest."""

    algorithms: tuple[str, ...] = ()
    unsupported: tuple[str, ...] = ()
    digests: dict[str, bytes] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    clashes: list[str] = field(default_factory=list)  # one path listed twice in a manifest

    def expected(self, path: str) -> dict[str, str]:
        """The hex digests the manifests give the NFC payload ``path``, by algorithm."""
        value, digests, start = self.digests[path], {}, 0
        for alg in self.algorithms:
            size = DIGEST_SIZES[alg]
            digests[alg] = value[start : start + size].hex()
            start += size
        return digests


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


class _Reader:
    """Adds one manifest after another to the table; the table's value for a path grows by one
    digest per manifest that lists it."""

    def __init__(self, table: PayloadManifest) -> None:
        self.table = table
        self.offset = 0  # bytes of digest the manifests read so far give each path
        self.raw_names: dict[str, str] = {}  # NFC path -> its name in the manifest, if other
        self.gaps: set[str] = set()  # paths missing from an earlier manifest
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
        self.offset += size

    def problem(self, text: str, kind: list[str] | None = None) -> None:
        """Name a problem; past MAX_PROBLEMS, count it (a manifest of junk stays small here)."""
        named = self.table.problems if kind is None else kind
        if len(self.table.problems) + len(self.table.clashes) < MAX_PROBLEMS:
            named.append(text)
        else:
            self.more += 1

    def _entry(self, name: str, alg: str, size: int, number: int, line: str) -> None:
        table, parts = self.table, line.split(None, 1)
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
        if path.startswith("/") or ".." in path.split("/"):
            self.problem(f"{path}: a manifest names a path outside the bag")
            return
        if not path.startswith("data/"):
            self.problem(f"{path}: {name} names a file outside data/")
            return
        key = nfc(path)
        have = table.digests.get(key, b"")
        if not have and self.offset:
            self.gaps.add(key)
        elif len(have) == self.offset:
            table.digests[key] = have + digest
            if key != path and not self.offset:
                self.raw_names[key] = path
        elif len(have) > self.offset:
            first = self.raw_names.get(key, key)
            self.problem(
                f"{name}: {path}: listed twice"
                if first == path
                else f"{name}: {key}: stored under 2 names that differ only in Unicode "
                f"normalisation ({ascii(first)} and {ascii(path)}); keep one",
                table.clashes,
            )

    def finish(self, names: list[str]) -> None:
        """Every path must be in every payload manifest."""
        short = {p for p, value in self.table.digests.items() if len(value) != self.offset}
        partial = sorted(short | self.gaps)
        for path in partial:
            self.problem(f"{path}: not listed in every payload manifest ({', '.join(names)})")
        for path in short:
            del self.table.digests[path]
        if self.more:
            self.table.problems.append(f"... and {self.more} more lines that cannot be taken")


def read_payload_manifests(
    zf: zipfile.ZipFile, tags: list[zipfile.ZipInfo], root: str, encoding: str
) -> PayloadManifest:
    """Every ``manifest-<alg>.txt`` at the bag's top, joined into one table; manifests of an
    algorithm this tool does not know are named in ``unsupported`` and not read."""
    found = {}
    for info in tags:
        match = MANIFEST_NAME.fullmatch(info.filename[len(root) :])
        if match:
            found[match.group(1)] = info
    known = [alg for alg in SUPPORTED_ALGORITHMS if alg in found]
    table = PayloadManifest(
        algorithms=tuple(known),
        unsupported=tuple(sorted(alg for alg in found if alg not in SUPPORTED_ALGORITHMS)),
    )
    reader = _Reader(table)
    names = [f"manifest-{alg}.txt" for alg in known]
    for alg, name in zip(known, names, strict=True):
        reader.add(name, alg, _lines(zf, found[alg], encoding), encoding)
    reader.finish(names)
    return table
