"""Workers prove they see the instance's shared folders: marks, refusals, transient phases."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import make_bag_zip

from glacier_sync.errors import ConfigError, is_transient
from glacier_sync.runner import Pipeline
from glacier_sync.shared_storage import (
    MARKER,
    SharedStorageMissing,
    check_shared_roots,
    mark_shared_roots,
)

pytestmark = pytest.mark.integration

KEY = "Archive0/00/W1SHARE/W1SHARE.bag.zip"


def _with_instance(settings, instance="gs-0123456789abcdef"):
    return settings.model_copy(update={"instance_id": instance})


def test_marks_are_written_once_and_checked(settings):
    mine = _with_instance(settings)
    written = mark_shared_roots(mine)
    assert sorted(written) == sorted([settings.data_root / MARKER, settings.work_dir / MARKER])
    assert (settings.work_dir / MARKER).read_text() == "gs-0123456789abcdef\n"
    assert mark_shared_roots(mine) == [], "marked already: nothing written"
    check_shared_roots(mine)
    check_shared_roots(settings)  # no instance id (one machine, no stack): nothing to check


def test_an_unmounted_or_foreign_folder_is_refused_as_transient(settings):
    mine = _with_instance(settings)
    with pytest.raises(SharedStorageMissing) as missing:
        check_shared_roots(mine)
    message = str(missing.value)
    assert f"data_root {settings.data_root} holds no mark ({MARKER})" in message
    assert "mount it here" in message and "\n" not in message
    assert is_transient(missing.value), "a lost mount is retried, spending no attempt"

    mark_shared_roots(_with_instance(settings, "gs-ffffffffffffffff"))
    with pytest.raises(SharedStorageMissing, match="the mark of instance gs-ffffffffffffffff"):
        check_shared_roots(mine)
    with pytest.raises(ConfigError, match="belongs to instance gs-ffffffffffffffff, not gs-01"):
        mark_shared_roots(mine)


def test_an_invalid_instance_id_is_a_settings_error(settings):
    from glacier_sync.settings import load_settings

    with pytest.raises(Exception, match="instance_id"):
        load_settings(data_root=settings.data_root, instance_id="../etc")


def test_a_phase_on_a_worker_without_the_shared_folder_is_retried_not_failed(world, dirs, settings):
    """Download on a worker that sees the shared data root; the debag on one whose data root
    is an empty local folder (the mount missing): refused before it touches anything, recorded
    as transient, no attempt spent; on a worker that sees it, the work goes on."""
    shared = _with_instance(settings)
    mark_shared_roots(shared)
    zip_path = make_bag_zip(dirs["bags"], "W1SHARE")
    world.upload_archived(zip_path, KEY)
    world.restore(KEY)
    pipeline = Pipeline(shared, run_id="run-a")
    [pid] = pipeline.poll()
    pipeline.download(pid)

    lonely_root = dirs["data"].parent / "lonely-data"
    lonely_root.mkdir()
    lonely = shared.model_copy(update={"data_root": lonely_root, "work_root": None})
    other = Pipeline(lonely, store=pipeline.store, run_id="run-a")
    with pytest.raises(SharedStorageMissing):
        other.debag(pid)
    row = pipeline.store.get(pid)
    assert row.attempts == 0 and row.failed_phase == "debag"
    assert row.history[-1]["transient"] is True
    assert list(lonely_root.iterdir()) == [], "nothing written into the wrong folder"

    pipeline.debag(pid)
    pipeline.sync(pid)
    assert pipeline.store.get(pid).state == "synced"
    assert (dirs["archive"] / "Archive0" / "00" / "W1SHARE" / "images").is_dir()


def test_the_poll_refuses_before_taking_a_message(world, dirs, settings):
    world.upload_archived(make_bag_zip(dirs["bags"], "W1SHARE"), KEY)
    world.restore(KEY)
    before = world.queue_count()
    with pytest.raises(SharedStorageMissing):
        Pipeline(_with_instance(settings)).poll()
    assert world.queue_count() == before


def _cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "glacier_sync.cli", *args],
        capture_output=True,
        text=True,
        env={**os.environ, **env},
        timeout=120,
    )


def test_cli_mark_and_check_as_the_worker_start_uses_them(tmp_path: Path):
    data = tmp_path / "data"
    env = {"GLACIER_SYNC_INSTANCE_ID": "gs-00000000000000aa", "GLACIER_SYNC_CONFIG": ""}
    refused = _cli("shared-folders", "check", "--data-dir", str(data), env=env)
    assert refused.returncode == 1 and refused.stdout == ""
    assert refused.stderr.startswith("error: data_root ") and refused.stderr.count("\n") == 1
    marked = _cli("shared-folders", "mark", "--data-dir", str(data), env=env)
    assert marked.returncode == 0 and marked.stdout.count("marked ") == 2, marked.stderr
    checked = _cli("shared-folders", "check", "--data-dir", str(data), env=env)
    assert checked.returncode == 0 and "belong to instance gs-00000000000000aa" in checked.stdout
    unset = _cli("shared-folders", "mark", "--data-dir", str(data), env={"GLACIER_SYNC_CONFIG": ""})
    assert unset.returncode == 2 and "instance_id is not set" in unset.stderr
