"""The Compose file's healthchecks of the dag-processor, the triggerer and the Celery workers,
run as Docker runs them: this image's bdrc-healthcheck (docker/healthcheck.py, tried against
PostgreSQL and a real worker in tests/test_healthcheck.py and tests/test_celery_setup.py), or
Airflow's own commands on an image without it."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import yaml
from helpers import REPO

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("has_new_check", [True, False], ids=["this-image", "older-image"])
def test_the_compose_healthchecks_fall_back_to_airflows_commands_on_an_older_image(
    tmp_path: Path, has_new_check
):
    """The Compose file's tests, run as Docker runs them (`sh -c`, `$$` unescaped): the image's
    bdrc-healthcheck where it has one, else Airflow's own commands (a rollback to an older image
    with this Compose file must not leave its services unhealthy)."""
    compose = yaml.safe_load((REPO / "bdrc-docker-compose.yml").read_text())
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    names = ["bdrc-entrypoint", "celery"] + (["bdrc-healthcheck"] if has_new_check else [])
    for name in names:
        (bin_dir / name).write_text(f'#!/bin/sh\necho "{name} $*"\n')
        (bin_dir / name).chmod(0o755)
    expected = {
        "airflow-dag-processor": "airflow jobs check --job-type DagProcessorJob --hostname c0ffee",
        "airflow-triggerer": "airflow jobs check --job-type TriggererJob --hostname c0ffee",
        "airflow-worker": "celery --app airflow.providers.celery.executors.celery_executor.app "
        "inspect ping -d celery@c0ffee",
    }
    new = {
        "airflow-dag-processor": "bdrc-healthcheck job DagProcessorJob",
        "airflow-triggerer": "bdrc-healthcheck job TriggererJob",
        "airflow-worker": "bdrc-healthcheck worker",
    }
    for service, old in expected.items():
        kind, command = compose["services"][service]["healthcheck"]["test"]
        assert kind == "CMD-SHELL"
        ran = subprocess.run(
            ["sh", "-c", command.replace("$$", "$")],
            capture_output=True,
            text=True,
            env={"PATH": f"{bin_dir}:/usr/bin:/bin", "HOSTNAME": "c0ffee"},
            timeout=30,
        )
        said = ran.stdout.strip()
        if has_new_check:
            assert said == new[service], (service, said, ran.stderr)
        else:
            assert said in (old, f"bdrc-entrypoint {old}"), (service, said, ran.stderr)
