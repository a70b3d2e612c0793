"""What S3 says of a whole object's bytes, and the values a download computes to compare with it.

S3 gives at most one checksum per object (``HeadObject`` with ``ChecksumMode=ENABLED``):
CRC64NVME, CRC32C, CRC32, SHA-256 or SHA-1, either of the whole object (``FULL_OBJECT``: the
CRC of every byte; the ranges' CRCs combine into it) or ``COMPOSITE`` (the checksum of the
concatenated binary checksums of the upload's parts, written ``<base64>-<parts>``). Some stores
(moto) give a multipart object's composite value with neither the suffix nor a
``ChecksumType``: such a value is ``ambiguous`` and the download tries both readings. The eTag is
the other evidence: the MD5 of a single-part upload, or the MD5 of the parts' MD5s with ``-N``.
The CRCs are awscrt's (CRC32C and CRC64NVME are nowhere else, and its combine is C).
"""

from __future__ import annotations

import base64
import hashlib
from dataclasses import dataclass
from enum import StrEnum
from functools import cache
from typing import Any

# In the order they are looked for in a HEAD answer (S3 gives one of them).
ALGORITHMS = ("crc64nvme", "crc32c", "crc32", "sha256", "sha1")
CRC_BYTES = {"crc32": 4, "crc32c": 4, "crc64nvme": 8}


@cache
def _crt() -> Any:
    """awscrt's checksums, imported on first use (60 ms of every command's start otherwise)."""
    from awscrt import checksums

    return checksums


def _crc(algorithm: str) -> Any:
    return getattr(_crt(), algorithm)


def _combine(algorithm: str) -> Any:
    return getattr(_crt(), f"combine_{algorithm}")


FULL_OBJECT, COMPOSITE = "FULL_OBJECT", "COMPOSITE"


class Check(StrEnum):
    """The end-to-end check of a whole object (``download_plan`` chooses it; its value is what
    the download journal and the work's record hold)."""

    CRC64NVME = "crc64nvme"  # a full-object CRC, combined from the ranges' CRCs
    CRC32C = "crc32c"
    CRC32 = "crc32"
    SHA256 = "sha256"  # the SHA of a single-part object, hashed in order
    SHA1 = "sha1"
    COMPOSITE_CRC64NVME = "composite-crc64nvme"  # the checksum of the parts' checksums
    COMPOSITE_CRC32C = "composite-crc32c"
    COMPOSITE_CRC32 = "composite-crc32"
    COMPOSITE_SHA256 = "composite-sha256"
    COMPOSITE_SHA1 = "composite-sha1"
    FULL_OR_COMPOSITE_CRC64NVME = "full-or-composite-crc64nvme"  # no ChecksumType (moto)
    FULL_OR_COMPOSITE_CRC32C = "full-or-composite-crc32c"
    FULL_OR_COMPOSITE_CRC32 = "full-or-composite-crc32"
    ETAG_PARTS = "etag-parts"  # the multipart eTag, from each part's MD5
    ETAG_MD5 = "etag-md5"  # the single-part eTag, the MD5 of the object, hashed in order
    NONE = "none"  # nothing S3 offers can be checked: the bag's manifests decide

    @classmethod
    def of_parts(cls, algorithm: str, ambiguous: bool = False) -> Check:
        """The composite check of ``algorithm``, or both readings where S3 gave no type."""
        return cls(f"{'full-or-composite' if ambiguous else 'composite'}-{algorithm}")

    @property
    def ambiguous(self) -> bool:
        """Whether both the full-object and the composite reading are tried."""
        return self.value.startswith("full-or-composite-")

    @property
    def full_object_crc(self) -> bool:
        """Whether this is a full-object CRC, combined from the ranges' CRCs."""
        return self.value in CRC_BYTES

    @property
    def in_order_algorithm(self) -> str | None:
        """The hash of the whole file this check needs in byte order, if any."""
        return {"etag-md5": "md5", "sha256": "sha256", "sha1": "sha1"}.get(self.value)


@dataclass(frozen=True)
class S3Checksum:
    """One checksum S3 gave for an object: ``value`` is base64 without any ``-N`` suffix;
    ``kind`` is FULL_OBJECT, COMPOSITE, or "" when S3 did not say (``parts`` from a suffix)."""

    algorithm: str
    value: str
    kind: str
    parts: int | None


def checksum_of(head: dict[str, Any]) -> S3Checksum | None:
    """The checksum a ``HeadObject`` answer carries, if any."""
    for algorithm in ALGORITHMS:
        raw = head.get(f"Checksum{algorithm.upper()}")
        if not raw:
            continue
        value, _, suffix = str(raw).partition("-")
        parts = int(suffix) if suffix.isdigit() else None
        kind = str(head.get("ChecksumType") or "")
        if not kind and parts is not None:
            kind = COMPOSITE
        return S3Checksum(algorithm, value, kind, parts)
    return None


class Crc:
    """A hashlib-like CRC (``crc32``, ``crc32c`` or ``crc64nvme``)."""

    def __init__(self, algorithm: str) -> None:
        self.algorithm, self.value = algorithm, 0
        self._update = _crc(algorithm)

    def update(self, data: Any) -> None:
        self.value = self._update(data, self.value)

    def digest(self) -> bytes:
        return self.value.to_bytes(CRC_BYTES[self.algorithm], "big")

    def hexdigest(self) -> str:
        return self.digest().hex()


def new_hasher(algorithm: str) -> Any:
    """A fresh hasher of ``algorithm`` (``md5``, ``sha1``, ``sha256`` or a CRC)."""
    if algorithm in CRC_BYTES:
        return Crc(algorithm)
    return hashlib.new(algorithm)


def combine(algorithm: str, first: int, second: int, second_length: int) -> int:
    """The CRC of A+B from CRC(A), CRC(B) and len(B)."""
    if second_length <= 0:
        return first
    return _combine(algorithm)(first, second, second_length)


def combined_crc(algorithm: str, digests: list[str], lengths: list[int]) -> bytes:
    """The CRC of consecutive spans from their hex CRCs and lengths."""
    value = 0
    for digest, length in zip(digests, lengths, strict=True):
        value = combine(algorithm, value, int(digest, 16), length)
    return value.to_bytes(CRC_BYTES[algorithm], "big")


def full_object_value(algorithm: str, digests: list[str], lengths: list[int]) -> str:
    """The base64 full-object CRC of consecutive ranges from their hex CRCs and lengths."""
    return b64(combined_crc(algorithm, digests, lengths))


def composite_value(algorithm: str, part_digests: list[bytes]) -> str:
    """The base64 composite checksum (without ``-N``) of parts with these binary checksums."""
    hasher = new_hasher(algorithm)
    hasher.update(b"".join(part_digests))
    return b64(hasher.digest())


def multipart_etag(part_md5s: list[bytes]) -> str:
    """The eTag of a multipart upload whose parts have these binary MD5s."""
    return f"{hashlib.md5(b''.join(part_md5s)).hexdigest()}-{len(part_md5s)}"


def b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()
