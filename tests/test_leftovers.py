"""scripts/clean-test-leftovers.sh finds what a killed run left, removes it, and spares a live one.

A real pytest run (the suite's own conftest) is killed with -9 while its test holds a temporary
folder and a child process; the Docker case leaves a container and an image under the names the
end-to-end test and the benchmarks use.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import REPO

SCRIPT = REPO / "scripts" / "clean-test-leftovers.sh"
HANGING_TEST = """import subprocess, time, pytest
pytestmark = pytest.mark.unit

def test_hang(tmp_path):
    (tmp_path / "partial").write_text("half")
    child = subprocess.Popen(["sleep", "600"])
    (tmp_path / "child.pid").write_text(str(child.pid))
    time.sleep(600)
"""


def _script(tmp_root: Path, *args: str, kinds: str) -> subprocess.CompletedProcess:
    """The script on ``kinds`` only: the Compose stream may run beside (scripts/run-tests.sh)."""
    env = {
        **os.environ,
        "TMPDIR": str(tmp_root),
        "LEFTOVER_ROOTS": str(tmp_root / "bench"),
        "LEFTOVER_KINDS": kinds,
    }
    return subprocess.run(
        ["bash", str(SCRIPT), *args], env=env, capture_output=True, text=True, timeout=120
    )


def _running(pid: int) -> bool:
    """Alive and not a zombie waiting for its (new) parent."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state != "Z"


def _killed_run(tmp_path: Path, tmp_root: Path) -> tuple[int, Path]:
    """A pytest run killed with -9 mid-test: the pid of the child it left, the test's folder."""
    suite = tmp_path / "suite" / "tests"
    suite.mkdir(parents=True)
    for name in ("conftest.py", "tiers.py", "helpers.py"):
        shutil.copy(REPO / "tests" / name, suite / name)
    (suite.parent / "tools").symlink_to(REPO / "tools")
    (suite / "test_hang.py").write_text(HANGING_TEST)
    env = {k: v for k, v in os.environ.items() if k != "BDRC_TEST_OWNER"}
    env["TMPDIR"] = str(tmp_root)
    run = subprocess.Popen(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-c"]
        + [str(REPO / "pyproject.toml"), "--rootdir", str(suite.parent), str(suite)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 60
    while not (found := list(tmp_root.glob("pytest-of-*/pytest-*/test_hang0/child.pid"))):
        assert run.poll() is None and time.monotonic() < deadline, "the run never started"
        time.sleep(0.2)
    time.sleep(0.2)  # the pid is written whole
    run.send_signal(signal.SIGKILL)
    run.wait()
    return int(found[0].read_text()), found[0].parent.parent


@pytest.mark.integration
def test_a_killed_runs_process_and_folder_are_found_and_removed(tmp_path):
    tmp_root = tmp_path / "tmp"
    (tmp_root / "bench").mkdir(parents=True)  # a benchmark's work folder
    child, folder = _killed_run(tmp_path, tmp_root)
    assert _running(child) and (folder / "test_hang0" / "partial").exists()
    live = tmp_root / "bdrc-tests.live"  # a run folder of run-tests.sh whose run is alive
    live.mkdir()
    (live / ".owner").write_text(str(os.getpid()))
    gone = subprocess.Popen(["true"])
    gone.wait()
    venv_wait = tmp_root / "bdrc-venv.gone"  # where a killed run-tests.sh waited for its venv
    venv_wait.mkdir()
    (venv_wait / ".owner").write_text(str(gone.pid))

    check = _script(tmp_root, "--check", kinds="processes folders")
    assert check.returncode == 1, check.stdout + check.stderr
    assert f"left over: process {child} sleep 600" in check.stdout, check.stdout
    assert f"left over: folder {folder}\n" in check.stdout, check.stdout
    assert f"left over: folder {tmp_root / 'bench'}\n" in check.stdout, check.stdout
    assert f"left over: folder {venv_wait}\n" in check.stdout, check.stdout
    assert str(live) not in check.stdout, "a live run's folder is not a leftover"
    assert "remove them with scripts/clean-test-leftovers.sh" in check.stderr
    assert _running(child) and folder.exists(), "--check removes nothing"

    clean = _script(tmp_root, kinds="processes folders")
    assert clean.returncode == 0, clean.stdout + clean.stderr
    deadline = time.monotonic() + 10
    while _running(child) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _running(child)
    assert not folder.exists() and not (tmp_root / "bench").exists()
    assert not venv_wait.exists()
    assert live.exists(), "a live run's folder is kept"

    shutil.rmtree(live)
    again = _script(tmp_root, "--check", kinds="processes folders")
    assert again.returncode == 0 and "nothing left over" in again.stdout, again.stdout
    assert sorted(p.name for p in tmp_root.iterdir()) == [], "pytest's empty base folder too"


def _docker_ready() -> bool:
    probe = subprocess.run(["docker", "info"], capture_output=True, check=False)
    return shutil.which("docker") is not None and probe.returncode == 0


@pytest.mark.docker
def test_a_left_container_and_image_are_found_and_removed(tmp_path):
    if not _docker_ready():
        if os.environ.get("CI"):
            pytest.fail("no Docker engine: CI runs the docker tier (scripts/prepare-docker.sh)")
        pytest.skip("no Docker engine (scripts/prepare-docker.sh starts one)")
    image, project = "bdrc-airflow:e2e-leftover-probe", "bdrc-e2e-leftover-probe"
    empty = tmp_path / "empty"
    empty.mkdir()
    tar = subprocess.run(["tar", "-C", str(empty), "-c", "."], capture_output=True, check=True)
    subprocess.run(["docker", "import", "-", image], input=tar.stdout, check=True)
    created = subprocess.run(
        ["docker", "create", "--label", f"com.docker.compose.project={project}"]
        + ["--name", f"{project}-1", image, "/none"],
        capture_output=True,
        text=True,
        check=True,
    )
    try:
        tmp_root = tmp_path / "tmp"
        tmp_root.mkdir()
        check = _script(tmp_root, "--check", kinds="docker")
        assert check.returncode == 1
        assert f"left over: container {project}-1\n" in check.stdout, check.stdout
        assert f"left over: image {image}\n" in check.stdout, check.stdout

        clean = _script(tmp_root, kinds="docker")
        assert clean.returncode == 0, clean.stdout + clean.stderr
        left = subprocess.run(
            ["docker", "ps", "-a", "-q", "--filter", f"label=com.docker.compose.project={project}"],
            capture_output=True,
            text=True,
            check=True,
        )
        assert left.stdout.strip() == ""
        images = subprocess.run(["docker", "images", "-q", image], capture_output=True, text=True)
        assert images.stdout.strip() == ""
    finally:
        subprocess.run(["docker", "rm", "-f", created.stdout.strip()], capture_output=True)
        subprocess.run(["docker", "rmi", "-f", image], capture_output=True)


@pytest.mark.integration
def test_an_unknown_kind_is_refused_in_one_line(tmp_path):
    result = _script(tmp_path, "--check", kinds="processes folder")
    assert result.returncode == 2, result.stdout + result.stderr
    assert result.stderr.strip() == (
        "clean-test-leftovers: unknown kind 'folder' in LEFTOVER_KINDS; "
        "use processes, folders, shaping or docker"
    )
    assert "nothing left over" not in result.stdout, "nothing was checked, so nothing is said"
