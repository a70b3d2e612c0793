"""Test tiers: every test carries exactly one, checked when the suite is collected.

``unit``        in-process only: no server, no subprocess that waits
``integration`` the moto server, SQLite, subprocesses (the CLI, the scripts, tmpfs mounts)
``airflow``     real Airflow (``dag.test()``, the FAB auth manager) on a SQLite metadata DB
``services``    PostgreSQL / MariaDB / Redis on 127.0.0.1, local-airflow.sh services, a browser
``docker``      images built and the Compose stack run on the local Docker engine

A file of one tier says so with ``pytestmark = pytest.mark.<tier>``; a file of several marks
each test (or each parameter, ``pytest.param(..., marks=...)``). The fast loop is
``-m "unit or integration"`` (``scripts/run-tests.sh --fast``).
"""

from __future__ import annotations

import pytest

TIERS = ("unit", "integration", "airflow", "services", "docker")
# Fixtures that start or reach a server: a unit test that asks for one is in the wrong tier.
SERVER_FIXTURES = frozenset({"moto_endpoint", "world", "settings", "tmpfs"})


def tier_problem(item: pytest.Item) -> str | None:
    """Why ``item``'s tier is wrong, or None when it has exactly one that fits."""
    tiers = sorted({mark.name for mark in item.iter_markers() if mark.name in TIERS})
    if not tiers:
        return "has no tier"
    if len(tiers) > 1:
        return f"has {len(tiers)} tiers ({', '.join(tiers)})"
    servers = sorted(SERVER_FIXTURES.intersection(item.fixturenames))
    if tiers == ["unit"] and servers:
        return f"is marked unit but uses {', '.join(servers)} (a server: integration)"
    return None


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Refuse the collection (before ``-m`` selects) when any test's tier is missing or wrong."""
    problems = [f"{item.nodeid} {why}" for item in items if (why := tier_problem(item))]
    if problems:
        shown = "\n  ".join(problems[:20])
        more = f"\n  ... and {len(problems) - 20} more" if len(problems) > 20 else ""
        raise pytest.UsageError(
            f"{len(problems)} test(s) without exactly one tier; give each one of "
            f"{', '.join(TIERS)} (pytestmark = pytest.mark.<tier> in the file, or a mark on "
            f"the test; see tests/tiers.py):\n  {shown}{more}"
        )
