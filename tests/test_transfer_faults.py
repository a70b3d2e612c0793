"""A restore carried through `run-once` while the network and the store misbehave.

The pipeline reaches moto through a fault-injecting HTTP proxy on 127.0.0.1 (tests/fault_proxy.py);
the bag is uploaded as boto3 uploads by default (multipart, 8 MiB parts, CRC32). Whatever the
fault, the work ends archived intact, is never held as a bad bag, and the object bytes served stay
within 1.25 x the object (a flipped byte: each part is compared with its own value in the store
and only the range of the part at fault is fetched again).
"""

from __future__ import annotations

import os

import pytest
from fault_proxy import FaultProxy, Request
from helpers import make_bag_zip

from glacier_sync.runner import Pipeline

pytestmark = pytest.mark.integration

MIB = 1024 * 1024
KEY = "Archive0/00/W1NET/W1NET.bag.zip"
FILES = {"images/I0001.tif": os.urandom(13 * MIB), "images/I0002.tif": os.urandom(8 * MIB)}


def _part_head(request: Request) -> bool:
    return request.method == "HEAD" and "partNumber=" in request.target


def _get(request: Request) -> bool:
    return request.object_get


def _object_head(request: Request) -> bool:
    """The download's first HEAD of the object (its size, eTag and checksum)."""
    return request.method == "HEAD" and "partNumber=" not in request.target


def _sqs_receive(request: Request) -> bool:
    target = request.headers.get("x-amz-target", "")
    return target.endswith("ReceiveMessage") or "Action=ReceiveMessage" in request.target


@pytest.fixture
def scene(world, dirs, settings):
    zip_path = make_bag_zip(dirs["bags"], "W1NET", FILES)
    world.upload_archived(zip_path, KEY)
    world.restore(KEY)
    host, port = world.endpoint.removeprefix("http://").split(":")
    with FaultProxy(host, int(port)) as proxy:
        # 16 MB ranges of two 8 MiB parts: two ranges, so a fault meets more than one.
        through = {
            "aws_endpoint_url": proxy.endpoint,
            "download_concurrency": 2,
            "download_chunk_mb": 16,
        }
        yield proxy, settings.model_copy(update=through), zip_path.stat().st_size


def _archived(dirs) -> bool:
    folder = dirs["archive"] / "Archive0" / "00" / "W1NET"
    return all(
        (folder / rel).is_file() and (folder / rel).read_bytes() == data
        for rel, data in FILES.items()
    )


@pytest.mark.parametrize(
    ("kind", "matches", "times"),
    [
        ("slowdown", _get, 3),  # 503 SlowDown: botocore's own retries
        ("slowdown", _part_head, 2),  # botocore asks again; the part size is never skipped
        ("reset", _get, 3),  # reset after 1 MiB: the range resumes from its byte
        ("slowdown", _object_head, 2),  # the object's own HEAD, asked again
        ("slowdown", _sqs_receive, 2),  # the queue's ReceiveMessage, asked again
    ],
    ids=["slowdown-get", "slowdown-part-head", "reset-in-range", "slowdown-head", "slowdown-sqs"],
)
def test_faults_absorbed_within_one_run(world, dirs, scene, kind, matches, times):
    proxy, settings, size = scene
    proxy.arm(kind, times, matches, after=MIB)
    pipeline = Pipeline(settings)
    _, outcomes = pipeline.run_once()
    assert proxy.fired.get(kind) == times, proxy.fired
    assert [o.ok for o in outcomes] == [True], [o.__dict__ for o in outcomes]
    assert _archived(dirs)
    row = pipeline.store.find(["W1NET"])[0]
    assert (row.state, row.attempts, row.needs_attention) == ("synced", 0, False)
    assert proxy.served <= 1.25 * size, (proxy.served, size)


@pytest.mark.parametrize(
    ("kind", "matches", "times"),
    [
        ("flip", _get, 1),  # the whole-object check fails; the next try fetches it all again
        ("ignore-range", _get, 100),  # refused before a byte of it is written
        ("slowdown", _part_head, 100),  # more than botocore's retries: the check not readable
        ("slowdown", _object_head, 100),  # the object cannot be asked about: nothing fetched
    ],
    ids=[
        "flip",
        "ignore-range",
        "slowdown-part-head-beyond-retries",
        "slowdown-head-beyond-retries",
    ],
)
def test_faults_that_fail_a_try_never_make_a_bad_bag(world, dirs, scene, kind, matches, times):
    proxy, settings, size = scene
    proxy.arm(kind, times, matches)
    pipeline = Pipeline(settings)
    _, outcomes = pipeline.run_once()
    assert [o.ok for o in outcomes] == [False]
    row = pipeline.store.find(["W1NET"])[0]
    assert (row.failed_phase, row.needs_attention, row.attempts) == ("download", False, 0), (
        "a fault of the transfer: retried, no attempt spent, never held",
        row.summary(),
    )
    assert not _archived(dirs)
    if kind == "flip":
        assert proxy.served <= 1.25 * size, (proxy.served, size)

    proxy.disarm()  # the link is good again
    proxy.served = 0
    again = Pipeline(settings)
    _, outcomes = again.run_once()
    assert [o.ok for o in outcomes] == [True], [o.__dict__ for o in outcomes]
    assert _archived(dirs)
    row = again.store.find(["W1NET"])[0]
    assert (row.state, row.needs_attention) == ("synced", False)
    assert proxy.served <= 1.25 * size, (proxy.served, size)
    if kind == "flip":  # the part at fault told: only its range (two 8 MiB parts) again
        assert proxy.served <= 16 * MIB < size, (proxy.served, size)


def test_a_queue_answering_503_beyond_retries_fails_the_poll_and_loses_nothing(world, dirs, scene):
    """SQS itself throttled past botocore's retries: the run fails as a fault of the
    environment, nothing is recorded or deleted, and the next run takes the event."""
    from glacier_sync.errors import is_transient

    proxy, settings, size = scene
    proxy.arm("slowdown", 100, _sqs_receive)
    pipeline = Pipeline(settings)
    with pytest.raises(Exception) as caught:
        pipeline.run_once()
    assert is_transient(caught.value), repr(caught.value)
    assert pipeline.store.find(["W1NET"]) == [], "nothing recorded"
    proxy.disarm()
    _, outcomes = Pipeline(settings).run_once()
    assert [o.ok for o in outcomes] == [True], [o.__dict__ for o in outcomes]
    assert _archived(dirs)
    assert world.queue_count() == 0
