"""The pipeline's metrics arrive at a real StatsD listener (a UDP socket of the test)."""

from __future__ import annotations

import socket
import time
from collections import defaultdict

import pytest
from helpers import DEFAULT_FILES, make_bag_dir, make_bag_zip, zip_dir

from glacier_sync.metrics import Metrics
from glacier_sync.runner import Pipeline

pytestmark = pytest.mark.integration


@pytest.fixture
def listener():
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.settimeout(0.2)
    yield sock
    sock.close()


def _received(sock: socket.socket, quiet: float = 0.5) -> list[str]:
    lines, last = [], time.monotonic()
    while time.monotonic() - last < quiet:
        try:
            lines.append(sock.recv(65535).decode())
            last = time.monotonic()
        except TimeoutError:
            continue
    return lines


def _by_name(lines: list[str]) -> dict[str, list[tuple[float, str]]]:
    metrics = defaultdict(list)
    for line in lines:
        name, rest = line.split(":", 1)
        value, kind = rest.split("|", 1)
        metrics[name].append((float(value), kind))
    return metrics


def _restore(world, dirs, work_id, zip_path=None):
    key = f"Archive0/{work_id[-2:]}/{work_id}/{work_id}.bag.zip"
    zip_path = zip_path or make_bag_zip(dirs["bags"], work_id)
    world.upload_archived(zip_path, key)
    world.restore(key)
    return zip_path


def test_works_bytes_seconds_failures_and_queue_depth_arrive(world, dirs, settings, listener):
    good = [_restore(world, dirs, w) for w in ("W1MET01", "W1MET02")]
    bad_dir = make_bag_dir(dirs["bags"], "W1MET03")
    (bad_dir / "data" / "images" / "I1_0001.tif").write_bytes(b"XXXX")
    _restore(world, dirs, "W1MET03", zip_dir(bad_dir, dirs["bags"] / "W1MET03.bag.zip"))
    port = listener.getsockname()[1]
    on = settings.model_copy(
        update={"metrics_statsd_host": "127.0.0.1", "metrics_statsd_port": port}
    )
    _, outcomes = Pipeline(on).run_once()
    assert sorted(o.ok for o in outcomes) == [False, True, True]
    metrics = _by_name(_received(listener))
    payload = sum(len(v) for v in DEFAULT_FILES.values())
    assert metrics["glacier_sync.poll.new_works"] == [(3.0, "c")]
    assert metrics["glacier_sync.poll.messages"][0][0] >= 3
    assert metrics["glacier_sync.queue.demo.visible"] == [(0.0, "g")]
    assert metrics["glacier_sync.phase.download.works"] == [(1.0, "c")] * 3
    assert sorted(v for v, _ in metrics["glacier_sync.phase.download.bytes"]) == sorted(
        float(p.stat().st_size) for p in [*good, dirs["bags"] / "W1MET03.bag.zip"]
    )
    assert metrics["glacier_sync.phase.debag.works"] == [(1.0, "c")] * 2
    assert metrics["glacier_sync.phase.sync.bytes"] == [(float(payload), "c")] * 2
    assert metrics["glacier_sync.phase.debag.failures.permanent"] == [(1.0, "c")]
    assert all(kind == "ms" and v >= 0 for v, kind in metrics["glacier_sync.phase.sync.seconds"])
    assert len(metrics["glacier_sync.phase.sync.seconds"]) == 2


def test_nothing_is_sent_when_off_and_a_bad_host_fails_nothing(world, dirs, settings, listener):
    _restore(world, dirs, "W1MET04")
    _, outcomes = Pipeline(settings).run_once()
    assert [o.ok for o in outcomes] == [True]
    assert _received(listener) == [], "off by default"
    _restore(world, dirs, "W1MET05")
    unknown = settings.model_copy(update={"metrics_statsd_host": "statsd.invalid"})
    _, outcomes = Pipeline(unknown).run_once()
    assert [o.ok for o in outcomes] == [True], "an unresolvable StatsD host stops nothing"


def test_names_are_made_safe_and_sends_never_raise(listener):
    port = listener.getsockname()[1]
    metrics = Metrics("127.0.0.1", port, prefix="bdrc.")
    metrics.gauge("queue.tbrc restores:eu/1.visible", 4)
    assert _received(listener) == ["bdrc.queue.tbrc_restores_eu_1.visible:4|g"]
    listener.close()  # nobody listens any more: UDP does not care, nor do we
    metrics.incr("phase.sync.works")
