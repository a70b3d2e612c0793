"""A small client of Airflow 3's REST API (/auth/token, /api/v2) for the tests."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from typing import Any


class AirflowApi:
    """Token login, DAG and run calls, polling."""

    def __init__(self, base_url: str, username: str, password: str) -> None:
        self.base_url = base_url.rstrip("/")
        self.token = self._call(
            "POST", "/auth/token", {"username": username, "password": password}
        )["access_token"]

    def _call(self, method: str, path: str, body: Any = None) -> Any:
        headers = {"Content-Type": "application/json"}
        if getattr(self, "token", None):
            headers["Authorization"] = f"Bearer {self.token}"
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(
            self.base_url + path, data=data, method=method, headers=headers
        )
        with urllib.request.urlopen(request, timeout=30) as response:  # noqa: S310
            payload = response.read()
        return json.loads(payload) if payload else None

    def wait_for_dag(self, dag_id: str, timeout: float = 180) -> dict:
        """Wait until the dag-processor has parsed ``dag_id``."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                return self._call("GET", f"/api/v2/dags/{dag_id}")
            except urllib.error.HTTPError as exc:
                if exc.code != 404 or time.monotonic() > deadline:
                    raise
            time.sleep(2)

    def unpause(self, dag_id: str) -> None:
        self._call("PATCH", f"/api/v2/dags/{dag_id}", {"is_paused": False})

    def pause(self, dag_id: str) -> None:
        self._call("PATCH", f"/api/v2/dags/{dag_id}", {"is_paused": True})

    def trigger(self, dag_id: str) -> str:
        """Trigger a run now; return its run id."""
        return self._call("POST", f"/api/v2/dags/{dag_id}/dagRuns", {"logical_date": None})[
            "dag_run_id"
        ]

    def run(self, dag_id: str, run_id: str) -> dict:
        return self._call("GET", f"/api/v2/dags/{dag_id}/dagRuns/{run_id}")

    def wait_for_run(self, dag_id: str, run_id: str, timeout: float = 300) -> dict:
        """Poll a run until it succeeds or fails."""
        deadline = time.monotonic() + timeout
        while True:
            run = self.run(dag_id, run_id)
            if run["state"] in ("success", "failed") or time.monotonic() > deadline:
                return run
            time.sleep(2)

    def task_states(self, dag_id: str, run_id: str) -> dict[tuple[str, int], str]:
        data = self._call("GET", f"/api/v2/dags/{dag_id}/dagRuns/{run_id}/taskInstances")
        return {(t["task_id"], t["map_index"]): t["state"] for t in data["task_instances"]}

    def task_tries(self, dag_id: str, run_id: str, task_id: str, map_index: int) -> list[dict]:
        """Every try of one task instance, oldest first."""
        path = f"/api/v2/dags/{dag_id}/dagRuns/{run_id}/taskInstances/{task_id}/{map_index}/tries"
        return self._call("GET", path)["task_instances"]

    def runs(self, dag_id: str) -> list[dict]:
        """Every run of ``dag_id`` (up to 100), oldest first."""
        path = f"/api/v2/dags/{dag_id}/dagRuns?limit=100&order_by=id"
        return self._call("GET", path)["dag_runs"]

    def mapped_matching(self, dag_id: str, run_id: str, task_id: str, text: str) -> list[dict]:
        """The task's mapped instances whose label holds ``text`` (the UI's search box)."""
        path = (
            f"/api/v2/dags/{dag_id}/dagRuns/{run_id}/taskInstances/{task_id}/listMapped"
            f"?rendered_map_index_pattern={text}"
        )
        return self._call("GET", path)["task_instances"]

    def task_instances(self, dag_id: str, run_id: str) -> list[dict]:
        """The run's task instances as the REST API gives them (with ``rendered_map_index``)."""
        path = f"/api/v2/dags/{dag_id}/dagRuns/{run_id}/taskInstances"
        return self._call("GET", path)["task_instances"]
