"""The suite's own conftest refuses a test without exactly one tier (tests/tiers.py).

The real tests/ folder's conftest and helpers are copied beside new test files, which are
collected with the project's pytest settings, as a developer adding them would.
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


def _collect(tmp_path: Path, files: dict[str, str]) -> subprocess.CompletedProcess:
    suite = tmp_path / "tests"
    suite.mkdir()
    for name in ("conftest.py", "tiers.py", "helpers.py"):
        shutil.copy(TESTS / name, suite / name)
    (tmp_path / "tools").symlink_to(REPO / "tools")  # the conftest imports the demo's world
    for name, source in files.items():
        (suite / name).write_text(source)
    return subprocess.run(
        [sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider"]
        + ["-c", str(REPO / "pyproject.toml"), "--rootdir", str(tmp_path), str(suite)],
        capture_output=True,
        text=True,
        timeout=120,
    )


CASES = {  # a new test file -> what the collection says of it (None: collected, no complaint)
    "test_none.py": ("def test_a():\n    pass\n", "test_none.py::test_a has no tier"),
    "test_two.py": (
        "import pytest\npytestmark = pytest.mark.unit\n\n"
        "@pytest.mark.integration\ndef test_b():\n    pass\n",
        "test_two.py::test_b has 2 tiers (integration, unit)",
    ),
    "test_unit_server.py": (
        "import pytest\npytestmark = pytest.mark.unit\n\ndef test_c(world):\n    pass\n",
        "test_unit_server.py::test_c is marked unit but uses moto_endpoint, world",
    ),
    "test_good.py": (
        "import pytest\npytestmark = pytest.mark.integration\n\n"
        "@pytest.mark.parametrize('db', [pytest.param('x')])\n"
        "def test_e(world, db):\n    pass\n",
        None,
    ),
}


def test_a_test_without_exactly_one_fitting_tier_stops_the_collection(tmp_path):
    result = _collect(tmp_path, {name: source for name, (source, _) in CASES.items()})
    said = result.stdout + result.stderr
    assert result.returncode != 0, said
    assert "3 test(s) without exactly one tier" in said, said
    for name, (_, why) in CASES.items():
        if why:
            assert why in said, (name, said)
        else:
            assert f"{name}::test_e[x] has" not in said, f"{name} has its tier: {said}"
            assert f"{name}::test_e[x] is" not in said, f"{name} has its tier: {said}"


def test_a_misspelt_tier_is_refused(tmp_path):
    source = "import pytest\n\n@pytest.mark.unti\ndef test_d():\n    pass\n"
    result = _collect(tmp_path, {"test_misspelt.py": source})
    assert result.returncode != 0
    assert "'unti' not found in `markers` configuration option" in result.stdout + result.stderr
