"""A whole-object mismatch narrowed down to its parts, against a stand-in store (no server).

The object: 30 bytes in three 10-byte parts, one range a part, composite CRC32. The store's
part HEADs are answered from a table, so that what it gives (a part's own checksum, the
object's value, nothing, an error) is the test's choice."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import pytest

from glacier_sync.transfer import part_checks
from glacier_sync.transfer.object_checks import Check, b64, new_hasher
from glacier_sync.transfer.range_journal import RangePlan, journal_path, read_journal

pytestmark = pytest.mark.unit

DATA = bytes(range(30))
PART = 10


def _crc(data: bytes) -> str:
    hasher = new_hasher("crc32")
    hasher.update(data)
    return b64(hasher.digest())


PLAN = RangePlan(
    bucket="archive",
    key="W1/W1.bag.zip",
    version_id="",
    etag="0" * 32 + "-3",
    size=len(DATA),
    part_size=PART,
    algorithm="crc32",
    check=Check.COMPOSITE_CRC32,
    expected="AAAAAA==-3",
)


class _Store:
    """``head_object`` for part N answers ``parts[N - 1]`` (a dict, or an exception raised)."""

    def __init__(self, parts: list) -> None:
        self.parts = parts

    def head_object(self, **kwargs):
        answer = self.parts[kwargs["PartNumber"] - 1]
        if isinstance(answer, Exception):
            raise answer
        return {"ContentLength": PART, "ETag": f'"{PLAN.etag}"', **answer}


@pytest.fixture
def partial(tmp_path) -> Path:
    """The downloaded file, every range journaled; part 2 has a byte flipped on its way."""
    path = tmp_path / ".W1.bag.zip.part"
    data = bytearray(DATA)
    data[15] ^= 0x01
    path.write_bytes(bytes(data))
    lines = [json.dumps(asdict(PLAN))]
    lines += [json.dumps({"i": i, "d": f"{i:08x}"}) for i in range(3)]
    journal_path(path).write_text("\n".join(lines) + "\n")
    return path


def _own(number: int) -> dict:
    return {"ChecksumCRC32": _crc(DATA[(number - 1) * PART : number * PART])}


def test_only_the_part_at_fault_is_dropped(partial):
    assert part_checks.keep_good_parts(_Store([_own(1), _own(2), _own(3)]), PLAN, partial, 2, "W1")
    assert sorted(read_journal(journal_path(partial), PLAN)) == [0, 2]


def test_a_part_md5_etag_serves_where_no_part_checksum_is_given(partial):
    import hashlib

    md5s = [{"ETag": hashlib.md5(DATA[n * PART : (n + 1) * PART]).hexdigest()} for n in range(3)]
    assert part_checks.keep_good_parts(_Store(md5s), PLAN, partial, 2, "W1")
    assert sorted(read_journal(journal_path(partial), PLAN)) == [0, 2]


@pytest.mark.parametrize(
    "parts",
    [
        pytest.param(
            [_own(1), {"ChecksumCRC32": "AAAAAA=="}, _own(3)],
            id="the object's value, not the part's",
        ),
        pytest.param([{"ChecksumCRC32": _crc(b"other")}] * 3, id="every part differs"),
        pytest.param([_own(1), {}, _own(3)], id="a part with no value of its own"),
        pytest.param([_own(1), ConnectionError("reset"), _own(3)], id="a part HEAD that fails"),
        pytest.param([_own(1), {"ChecksumCRC32": "not base64!"}, _own(3)], id="a garbled value"),
    ],
)
def test_nothing_is_narrowed_where_the_parts_cannot_be_told(partial, parts, caplog):
    before = journal_path(partial).read_text()
    assert not part_checks.keep_good_parts(_Store(parts), PLAN, partial, 2, "W1")
    assert journal_path(partial).read_text() == before, "the caller drops the whole file"
