"""glacier_sync_airflow.ui_users against Airflow's real FAB auth manager on a SQLite metadata DB.

The Compose stack runs the same module (deploy.sh user, airflow-init's ensure-admin); the Docker
end-to-end test checks the roles over REST. Here: the rules of the module itself.
"""

from __future__ import annotations

import json
import subprocess

import pytest
from airflow_helpers import airflow_env
from helpers import VENV_BIN

pytestmark = pytest.mark.airflow

FAB = "airflow.providers.fab.auth_manager.fab_auth_manager.FabAuthManager"
SIMPLE = "airflow.api_fastapi.auth.managers.simple.simple_auth_manager.SimpleAuthManager"


@pytest.fixture(scope="module")
def fab_home(tmp_path_factory):
    home = tmp_path_factory.mktemp("fab-home")
    env = _env(home)
    subprocess.run(
        [str(VENV_BIN / "airflow"), "db", "migrate"],
        env=env,
        check=True,
        capture_output=True,
        timeout=300,
    )
    return home


def _env(home, manager: str = FAB) -> dict[str, str]:
    env = airflow_env(home)
    env.update(
        {
            "AIRFLOW__CORE__AUTH_MANAGER": manager,
            "AIRFLOW__LOGGING__LOGGING_LEVEL": "ERROR",
            "PYTHONWARNINGS": "ignore",
        }
    )
    return env


def users(home, *args: str, stdin: str = "", manager: str = FAB):
    return subprocess.run(
        [str(VENV_BIN / "python"), "-m", "glacier_sync_airflow.ui_users", *args],
        env=_env(home, manager),
        input=stdin,
        capture_output=True,
        text=True,
        timeout=300,
    )


def roles(home) -> dict[str, list[str]]:
    listed = users(home, "list")
    assert listed.returncode == 0, listed.stderr
    return {u["username"]: u["roles"] for u in json.loads(listed.stdout)}


def test_admin_is_created_once_and_users_get_one_role(fab_home):
    made = users(fab_home, "ensure-admin", "opsadmin", stdin="first-password")
    assert made.returncode == 0 and "created" in made.stdout, made.stderr
    again = users(fab_home, "ensure-admin", "opsadmin", stdin="another-password")
    assert again.returncode == 0 and "present" in again.stdout
    assert users(fab_home, "add", "alice", "--role", "Viewer", stdin="alice-pass\n").returncode == 0
    changed = users(fab_home, "set-role", "alice", "Op")
    assert changed.returncode == 0 and "now has role Op" in changed.stdout
    assert roles(fab_home) == {"alice": ["Op"], "opsadmin": ["Admin"]}
    assert "alice-pass" not in changed.stdout + changed.stderr


REFUSALS = [
    (("add", "bob", "--role", "Wizard"), "bob-password", "no role 'Wizard'; the roles are"),
    (("add", "bob", "--role", "Op"), "short", "at least 8 characters"),
    (("add", "bob smith", "--role", "Op"), "bob-password", "user name 'bob smith'"),
    (("add", "alice", "--role", "Op"), "alice-pass-2", "user 'alice' exists"),
    (("set-role", "nobody", "Op"), "", "no user 'nobody'"),
    (("remove", "opsadmin"), "", "opsadmin is the last Admin"),
    (("set-role", "opsadmin", "Viewer"), "", "opsadmin is the last Admin"),
]


def test_refusals_are_one_line_and_change_nothing(fab_home):
    users(fab_home, "ensure-admin", "opsadmin", stdin="first-password")
    users(fab_home, "add", "alice", "--role", "Viewer", stdin="alice-pass\n")
    before = roles(fab_home)
    for args, stdin, message in REFUSALS:
        result = users(fab_home, *args, stdin=stdin)
        assert result.returncode == 2, (args, result.stdout + result.stderr)
        assert result.stderr.strip().splitlines()[-1].startswith("ui users: "), result.stderr
        assert message in result.stderr, (args, result.stderr)
    assert roles(fab_home) == before


def test_simple_auth_manager_has_no_users_to_manage(fab_home):
    result = users(fab_home, "list", manager=SIMPLE)
    assert result.returncode == 2 and "deploy it with --auth fab" in result.stderr
