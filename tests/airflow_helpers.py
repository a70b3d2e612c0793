"""Running the DAGs for tests: a migrated SQLite metadata DB and dag.test() in a process."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sqlite3
import subprocess
import time
from pathlib import Path

from helpers import REPO, VENV_BIN

DAGS = REPO / "dags"


def airflow_env(home: Path, base: dict[str, str] | None = None) -> dict[str, str]:
    """Environment of an Airflow process on ``home`` with the repository's dags folder."""
    env = dict(base if base is not None else os.environ)
    env.update(
        {
            "AIRFLOW_HOME": str(home),
            "AIRFLOW__CORE__DAGS_FOLDER": str(DAGS),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__CORE__UNIT_TEST_MODE": "False",
            "PYTHONPATH": str(DAGS),
        }
    )
    return env


def migrate(home: Path) -> None:
    """``airflow db migrate`` on a SQLite metadata database in ``home``."""
    home.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        [str(VENV_BIN / "airflow"), "db", "migrate"],
        env=airflow_env(home),
        check=True,
        capture_output=True,
        timeout=300,
    )


def dagbag(home: Path, env: dict[str, str]) -> dict:
    """Import the dags folder the way the dag-processor does; return dag ids and errors."""
    code = (
        "import json; from airflow.dag_processing.dagbag import DagBag; "
        f"b = DagBag({str(DAGS)!r}); "
        "print('RESULT' + json.dumps({'dags': sorted(b.dag_ids), "
        "'errors': {k: str(v) for k, v in b.import_errors.items()}, "
        # Every time limit a long phase could meet: a task's, or a whole run's.
        "'limits': sorted([f'{d.dag_id}.{t.task_id}: {t.execution_timeout}' "
        "for d in b.dags.values() for t in d.tasks if t.execution_timeout] "
        "+ [f'{d.dag_id}: {d.dagrun_timeout}' for d in b.dags.values() if d.dagrun_timeout])}))"
    )
    out = subprocess.run(
        [str(VENV_BIN / "python"), "-c", code],
        env=airflow_env(home, env),
        capture_output=True,
        text=True,
        timeout=300,
    )
    line = [ln for ln in out.stdout.splitlines() if ln.startswith("RESULT")]
    assert line, out.stdout + out.stderr
    return json.loads(line[-1][len("RESULT") :])


def dag_test(home: Path, dag_file: str, env: dict[str, str], timeout: int = 300):
    """Run ``python dags/<dag_file>`` (its ``dag.test()``); return the finished process."""
    return subprocess.run(
        [str(VENV_BIN / "python"), str(DAGS / dag_file)],
        env=airflow_env(home, env),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def last_run(home: Path, dag_id: str) -> tuple[str, dict[tuple[str, int], str]]:
    """The newest run's state and its task instances' states by (task id, map index)."""
    with sqlite3.connect(home / "airflow.db") as conn:
        run_id, state = conn.execute(
            "SELECT run_id, state FROM dag_run WHERE dag_id=? ORDER BY id DESC LIMIT 1", (dag_id,)
        ).fetchone()
        rows = conn.execute(
            "SELECT task_id, map_index, state FROM task_instance WHERE dag_id=? AND run_id=?",
            (dag_id, run_id),
        ).fetchall()
    return state, {(t, m): s for t, m, s in rows}


def last_run_labels(home: Path, dag_id: str, task_id: str) -> list[str]:
    """The newest run's mapped instances of a task by their labels (``map_index_template``)."""
    with sqlite3.connect(home / "airflow.db") as conn:
        rows = conn.execute(
            "SELECT t.rendered_map_index FROM task_instance t WHERE t.dag_id=? AND t.task_id=? "
            "AND t.run_id=(SELECT run_id FROM dag_run WHERE dag_id=? ORDER BY id DESC LIMIT 1) "
            "ORDER BY t.map_index",
            (dag_id, task_id, dag_id),
        ).fetchall()
    return [label for (label,) in rows]


def wait_for_task_state(
    home: Path, dag_id: str, task_id: str, state: str, proc, timeout: float = 120
) -> bool:
    """Poll the metadata DB until the newest run's task reaches ``state``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            _, tasks = last_run(home, dag_id)
            if tasks.get((task_id, -1)) == state:
                return True
        except (sqlite3.Error, TypeError):
            pass
        time.sleep(0.5)
    return False


def stop(proc, timeout: float = 20) -> None:
    """Stop a process started in a session of its own (a dag.test(), a build) and all it
    started: SIGTERM to its group, SIGKILL after ``timeout`` seconds."""
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
