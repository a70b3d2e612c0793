"""The values a download computes to compare with what S3 says of an object (no server)."""

from __future__ import annotations

import base64
import hashlib
import os
import zlib

import pytest
from awscrt import checksums as crt

from glacier_sync.transfer.object_checks import (
    CRC_BYTES,
    checksum_of,
    composite_value,
    full_object_value,
    multipart_etag,
    new_hasher,
)

pytestmark = pytest.mark.unit

WHOLE = {"crc32": crt.crc32, "crc32c": crt.crc32c, "crc64nvme": crt.crc64nvme}


def _b64(value: int, algorithm: str) -> str:
    return base64.b64encode(value.to_bytes(CRC_BYTES[algorithm], "big")).decode()


@pytest.mark.parametrize("algorithm", sorted(CRC_BYTES))
@pytest.mark.parametrize("sizes", [[4096] * 7 + [5], [333, 1], [1, 7, 5 * 1024 * 1024 + 3]])
def test_the_ranges_crcs_combine_into_the_whole_objects(algorithm, sizes):
    data = os.urandom(sum(sizes))
    digests, offset = [], 0
    for size in sizes:
        hasher = new_hasher(algorithm)
        hasher.update(data[offset : offset + size])
        digests.append(hasher.hexdigest())
        offset += size
    whole = WHOLE[algorithm](data)
    assert full_object_value(algorithm, digests, sizes) == _b64(whole, algorithm)
    if algorithm == "crc32":
        assert whole == zlib.crc32(data), "the CRT's CRC32 is zlib's"


def test_a_composite_checksum_is_the_checksum_of_the_parts_checksums():
    parts = [os.urandom(n) for n in (8, 6, 8)]
    sha = [hashlib.sha256(p).digest() for p in parts]
    assert (
        composite_value("sha256", sha)
        == base64.b64encode(hashlib.sha256(b"".join(sha)).digest()).decode()
    )
    crcs = [zlib.crc32(p).to_bytes(4, "big") for p in parts]
    assert composite_value("crc32", crcs) == _b64(zlib.crc32(b"".join(crcs)), "crc32")
    md5s = [hashlib.md5(p).digest() for p in parts]
    assert multipart_etag(md5s) == hashlib.md5(b"".join(md5s)).hexdigest() + "-3"


@pytest.mark.parametrize(
    ("head", "expected"),
    [
        (
            {"ChecksumCRC32": "AAAAAA==", "ChecksumType": "FULL_OBJECT"},
            ("crc32", "FULL_OBJECT", None),
        ),
        ({"ChecksumCRC32C": "AAAAAA==-3", "ChecksumType": "COMPOSITE"}, ("crc32c", "COMPOSITE", 3)),
        ({"ChecksumSHA256": "AAAA-12"}, ("sha256", "COMPOSITE", 12)),  # the suffix says it
        ({"ChecksumCRC32": "lWe6dQ=="}, ("crc32", "", None)),  # moto: ambiguous
        ({"ChecksumCRC64NVME": "2+KYJS4nKgQ="}, ("crc64nvme", "", None)),
    ],
)
def test_what_a_head_answer_says_of_the_checksum(head, expected):
    found = checksum_of({"ETag": '"x"', **head})
    assert (found.algorithm, found.kind, found.parts) == expected
    assert "-" not in found.value


def test_no_checksum_is_none():
    assert checksum_of({"ETag": '"x"', "ContentLength": 3}) is None
