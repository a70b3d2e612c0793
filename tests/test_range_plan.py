"""A download plan's ranges: they tile the object exactly and line up with the upload's parts."""

from __future__ import annotations

import json
from dataclasses import asdict

import pytest

from glacier_sync.transfer.download_plan import _along_parts
from glacier_sync.transfer.object_checks import Check
from glacier_sync.transfer.range_journal import RangePlan, journaled_plan

pytestmark = pytest.mark.unit

MIB = 1024 * 1024


def _plan(size: int, part: int, chunk: int) -> RangePlan:
    return RangePlan(
        "b",
        "k",
        "",
        "e-1",
        size,
        algorithm="md5",
        check="etag-parts",
        expected="e",
        **_along_parts(part, chunk),
    )


def _ranges(plan: RangePlan) -> list[tuple[int, int]]:
    return [plan.bounds(i) for i in range(plan.ranges)]


@pytest.mark.parametrize(
    ("size", "part", "chunk"),
    [
        (21 * MIB + 4321, 8 * MIB, 3 * MIB),  # parts in 3 ranges, the short last part in 1
        (24 * MIB, 8 * MIB, 3 * MIB),  # the last part whole
        (17 * MIB + 1, 8 * MIB, 3 * MIB),  # a last part of one byte
        (100 * MIB + 7, 5 * MIB + 3, MIB),  # parts of odd sizes in ranges of unequal ends
        (40 * MIB + 4321, 8 * MIB, 16 * MIB),  # two whole parts a range
        (40 * MIB + 4321, 8 * MIB, 8 * MIB),  # a part a range
        (0, 8 * MIB, 3 * MIB),  # an empty object: one empty range
    ],
)
def test_ranges_tile_the_object_each_within_one_part_and_the_range_size(size, part, chunk):
    plan = _plan(size, part, chunk)
    ranges = _ranges(plan)
    assert ranges[0][0] == 0 and ranges[-1][1] == size
    assert all(end == start for (_, end), (start, _) in zip(ranges, ranges[1:], strict=False))
    assert all(start < end for start, end in ranges) or size == 0
    assert max(end - start for start, end in ranges) <= max(chunk, part if part <= chunk else 0)
    if part > chunk:  # split: no range crosses a part's end, every part's first byte starts one
        assert all(start // part == (end - 1) // part for start, end in ranges if end > start)
        starts = {start for start, _ in ranges}
        assert set(range(0, size, part)) <= starts
        assert plan.ranges_per_part == -(-part // chunk) and plan.parts == max(1, -(-size // part))
    else:  # whole parts: every range starts at a part's first byte
        assert all(start % part == 0 for start, _ in ranges)


def test_a_split_md5_or_sha_is_carried_by_a_crc32c_a_range_and_a_crc_by_itself():
    split = _plan(21 * MIB, 8 * MIB, 3 * MIB)
    assert (split.range_algorithm, split.upload_part) == ("crc32c", 8 * MIB)
    crc = RangePlan(**{**split.__dict__, "algorithm": "crc32"})
    assert crc.range_algorithm == "crc32"
    whole = _plan(21 * MIB, 8 * MIB, 16 * MIB)
    assert (whole.range_algorithm, whole.upload_part, whole.range_size) == (
        "md5",
        8 * MIB,
        16 * MIB,
    )


def test_a_plan_and_a_journal_header_carry_the_check_as_a_check(tmp_path):
    """The check is a ``Check`` whether written by the planner or read back from a journal; a
    journal naming a check this release does not know is not trusted (the new plan is used)."""
    plan = _plan(24 * MIB, 8 * MIB, 3 * MIB)
    assert plan.check is Check.ETAG_PARTS
    assert Check.of_parts("crc32", ambiguous=True) is Check.FULL_OR_COMPOSITE_CRC32
    assert Check.of_parts("sha256") is Check.COMPOSITE_SHA256
    assert [c for c in Check if c.in_order_algorithm] == [Check.SHA256, Check.SHA1, Check.ETAG_MD5]
    journal = tmp_path / "w.part.journal"
    other = _plan(24 * MIB, 8 * MIB, 4 * MIB)  # the same check with other ranges: resumed
    journal.write_text(json.dumps(asdict(other)) + "\n")
    resumed = journaled_plan(journal, plan)
    assert resumed == other and resumed.check is Check.ETAG_PARTS
    journal.write_text(json.dumps({**asdict(other), "check": "md6-parts"}) + "\n")
    assert journaled_plan(journal, plan) is plan
    with pytest.raises(ValueError, match="md6"):
        RangePlan("b", "k", "", "e", 1, 1, "md5", check="md6")
