"""The suite's own conftest refuses a test without exactly one tier (tests/tiers.py).

Each case copies the real tests/ folder's conftest and helpers beside one new test file and
collects it with the project's pytest settings, as a developer adding that file would.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import REPO

pytestmark = pytest.mark.integration

TESTS = REPO / "tests"


def _collect(tmp_path: Path, source: str) -> subprocess.CompletedProcess:
    suite = tmp_path / "tests"
    suite.mkdir()
    for name in ("conftest.py", "tiers.py", "helpers.py"):
        shutil.copy(TESTS / name, suite / name)
    (tmp_path / "tools").symlink_to(REPO / "tools")  # the conftest imports the demo's world
    (suite / "test_new.py").write_text(source)
    return subprocess.run(
        [sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider"]
        + ["-c", str(REPO / "pyproject.toml"), "--rootdir", str(tmp_path), str(suite)],
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.parametrize(
    ("source", "why"),
    [
        ("def test_a():\n    pass\n", "test_new.py::test_a has no tier"),
        (
            "import pytest\npytestmark = pytest.mark.unit\n\n"
            "@pytest.mark.integration\ndef test_b():\n    pass\n",
            "test_new.py::test_b has 2 tiers (integration, unit)",
        ),
        (
            "import pytest\npytestmark = pytest.mark.unit\n\ndef test_c(world):\n    pass\n",
            "test_new.py::test_c is marked unit but uses moto_endpoint, world",
        ),
        (
            "import pytest\n\n@pytest.mark.unti\ndef test_d():\n    pass\n",
            "'unti' not found in `markers` configuration option",
        ),
    ],
    ids=["none", "two", "unit-with-a-server", "misspelt"],
)
def test_a_test_without_exactly_one_fitting_tier_fails_collection(tmp_path, source, why):
    result = _collect(tmp_path, source)
    assert result.returncode != 0, result.stdout
    assert why in result.stdout + result.stderr, result.stdout + result.stderr


def test_a_tiered_file_is_collected(tmp_path):
    source = (
        "import pytest\npytestmark = pytest.mark.integration\n\n"
        "@pytest.mark.parametrize('db', [pytest.param('x')])\ndef test_e(world, db):\n    pass\n"
    )
    result = _collect(tmp_path, source)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 test collected" in result.stdout, result.stdout


def test_every_test_of_the_suite_has_its_tier():
    """The real suite collects: the hook, which runs before ``-m`` selects, refuses it otherwise."""
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr
    assert " tests collected" in result.stdout.splitlines()[-1], result.stdout[-300:]
