"""Shared fixtures: a moto server on loopback, restore worlds, settings on temporary folders."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))

from helpers import aws_env, make_world, moto_server  # noqa: E402
from tiers import pytest_collection_modifyitems  # noqa: E402, F401 (every test has one tier)

for _key in [k for k in os.environ if k.startswith("GLACIER_SYNC_")]:
    del os.environ[_key]
os.environ.update(aws_env())
# Every process a test starts carries the run's pid: scripts/clean-test-leftovers.sh finds those
# a killed run left (run-tests.sh sets it for the whole run).
os.environ.setdefault("BDRC_TEST_OWNER", str(os.getpid()))


@pytest.fixture(scope="session")
def moto_endpoint(tmp_path_factory) -> str:
    """One moto server for the whole session (each test resets it through its world)."""
    log_file = tmp_path_factory.mktemp("moto") / "moto.log"
    with moto_server(log_file) as endpoint:
        yield endpoint


@pytest.fixture
def world(moto_endpoint):
    """A fresh bucket + queue + dead-letter queue + restore notification."""
    return make_world(moto_endpoint)


@pytest.fixture
def dirs(tmp_path) -> dict[str, Path]:
    """data root, archive root and a folder for source bags."""
    paths = {name: tmp_path / name for name in ("data", "archive", "bags")}
    for path in paths.values():
        path.mkdir()
    return paths


@pytest.fixture
def settings(world, dirs):
    """Settings pointing at the moto world and the temporary folders."""
    from glacier_sync.settings import load_settings

    return load_settings(
        queues=[world.queue_entry()],
        aws_endpoint_url=world.endpoint,
        aws_credentials_file=dirs["data"] / "no-credentials",
        data_root=dirs["data"],
        archive_root=dirs["archive"],
        sqs_wait_seconds=0,
    )
