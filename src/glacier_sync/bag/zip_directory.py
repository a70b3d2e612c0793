"""A zip whose central directory is read as a stream, one member at a time, when asked.

Python's ``zipfile.ZipFile`` reads the whole directory when it opens a zip and keeps a
``ZipInfo`` for every member (about 450 bytes each: 45 MB for a bag of 100,000 files).
``StreamedZip`` reads only the end record when it opens; ``members()`` yields each member's
``ZipInfo`` in directory order and keeps none, and ``open(info)`` extracts one as ``ZipFile``
does. Parsing follows CPython 3.11's ``ZipFile._RealGetContents`` (zip64 and a zip with data
before it included)."""

from __future__ import annotations

import struct
import zipfile
from collections.abc import Iterator

_READ_BUFFER = 1024 * 1024


class UnsupportedZip(zipfile.BadZipFile):
    """A member that needs a zip feature Python cannot read (a newer format version)."""


class StreamedZip(zipfile.ZipFile):
    """A read-only ``ZipFile`` (opened from a path) that streams its directory."""

    def _RealGetContents(self) -> None:  # noqa: N802 (zipfile's name)
        """Read the end record only: where the directory starts, its size, the data before."""
        try:
            endrec = zipfile._EndRecData(self.fp)
        except OSError:
            raise zipfile.BadZipFile("File is not a zip file") from None
        if not endrec:
            raise zipfile.BadZipFile("File is not a zip file")
        size = endrec[zipfile._ECD_SIZE]
        offset = endrec[zipfile._ECD_OFFSET]
        self._comment = endrec[zipfile._ECD_COMMENT]
        concat = endrec[zipfile._ECD_LOCATION] - size - offset  # data before the zip, if any
        if endrec[zipfile._ECD_SIGNATURE] == zipfile.stringEndArchive64:
            concat -= zipfile.sizeEndCentDir64 + zipfile.sizeEndCentDir64Locator
        self.start_dir = offset + concat
        if self.start_dir < 0:
            raise zipfile.BadZipFile("Bad offset for central directory")
        self._directory = (self.start_dir, size, concat)

    def members(self) -> Iterator[zipfile.ZipInfo]:
        """Every member's ``ZipInfo``, in directory order, read from the file as needed.

        Raises ``zipfile.BadZipFile`` for a truncated or damaged directory, and
        ``UnicodeDecodeError`` for a name flagged UTF-8 that is not."""
        start, size, concat = self._directory
        with open(self.filename, "rb", buffering=_READ_BUFFER) as fp:
            fp.seek(start)
            total = 0
            while total < size:
                header = fp.read(zipfile.sizeCentralDir)
                if len(header) != zipfile.sizeCentralDir:
                    raise zipfile.BadZipFile("Truncated central directory")
                centdir = struct.unpack(zipfile.structCentralDir, header)
                if centdir[zipfile._CD_SIGNATURE] != zipfile.stringCentralDir:
                    raise zipfile.BadZipFile("Bad magic number for central directory")
                name_size = centdir[zipfile._CD_FILENAME_LENGTH]
                extra_size = centdir[zipfile._CD_EXTRA_FIELD_LENGTH]
                comment_size = centdir[zipfile._CD_COMMENT_LENGTH]
                total += zipfile.sizeCentralDir + name_size + extra_size + comment_size
                if total > size:  # an entry that runs past the directory's declared end
                    raise zipfile.BadZipFile("Truncated central directory")
                raw = fp.read(name_size)
                extra = fp.read(extra_size)
                comment = fp.read(comment_size)
                if len(raw) + len(extra) + len(comment) != name_size + extra_size + comment_size:
                    raise zipfile.BadZipFile("Truncated central directory")
                yield _member(centdir, raw, extra, comment, concat)


def _member(centdir: tuple, raw: bytes, extra: bytes, comment: bytes, concat: int):
    """One directory entry as the ``ZipInfo`` that ``ZipFile`` would have made of it."""
    flags = centdir[zipfile._CD_FLAG_BITS]
    name = raw.decode("utf-8") if flags & zipfile._MASK_UTF_FILENAME else raw.decode("cp437")
    info = zipfile.ZipInfo(name)
    info.extra = extra
    info.comment = comment
    info.header_offset = centdir[zipfile._CD_LOCAL_HEADER_OFFSET]
    (
        info.create_version,
        info.create_system,
        info.extract_version,
        info.reserved,
        info.flag_bits,
        info.compress_type,
        time,
        date,
        info.CRC,
        info.compress_size,
        info.file_size,
    ) = centdir[1:12]
    if info.extract_version > zipfile.MAX_EXTRACT_VERSION:
        raise UnsupportedZip(
            f"{name}: needs zip version {info.extract_version / 10:.1f}, which Python cannot read"
        )
    info.volume, info.internal_attr, info.external_attr = centdir[15:18]
    info._raw_time = time
    info.date_time = (
        (date >> 9) + 1980,
        (date >> 5) & 0xF,
        date & 0x1F,
        time >> 11,
        (time >> 5) & 0x3F,
        (time & 0x1F) * 2,
    )
    try:
        info._decodeExtra()  # zip64 sizes and offset
    except TypeError:  # Python 3.12 and later take the name's CRC
        import zlib

        info._decodeExtra(zlib.crc32(raw))
    info.header_offset += concat
    return info
