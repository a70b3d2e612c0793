"""The Works view's FastAPI app, mounted on Airflow's API server by the plugin.

Every request is signed in through Airflow's own auth manager (the UI's session cookie or a
bearer token, as the REST API) and checked with Airflow's permissions on the restore DAGs:
reading needs to read their runs, an action needs to trigger them (Op and Admin; a Viewer is
refused with 403 and the page shows no button). An action is recorded in the work's history
with the user's name, and starts the run that carries it out.
"""

from __future__ import annotations

import logging
from datetime import timedelta
from functools import cache
from importlib import resources
from typing import Annotated, Any

from airflow.api.common.trigger_dag import trigger_dag
from airflow.api_fastapi.app import get_auth_manager
from airflow.api_fastapi.auth.managers.models.resource_details import DagAccessEntity, DagDetails
from airflow.api_fastapi.core_api.security import get_user
from airflow.models.dag import DagModel
from airflow.utils.types import DagRunTriggeredByType
from fastapi import Depends, FastAPI, Header, HTTPException, Query
from fastapi.responses import HTMLResponse, JSONResponse
from starlette.requests import Request

from glacier_sync.errors import GlacierSyncError, WorkNotFound
from glacier_sync.records.progress import ProgressStore
from glacier_sync.records.states import PENDING
from glacier_sync.records.works_board import (
    BoardRules,
    held_by_a_live_run,
    search_works,
    work_entry,
    works_board,
)
from glacier_sync.settings import Settings, load_settings

log = logging.getLogger(__name__)
ACTION_HEADER = "glacier-works"  # what the page sends with an action (no cross-site form can)
User = Annotated[Any, Depends(get_user)]

app = FastAPI(title="Works", description="The archive's works: the progress database's view")
REQUEST_DAG = "restore_request_dag"
LOCAL_DAG = "down_scheduled_dag"  # the one that takes works dropped into the incoming folder


@app.exception_handler(GlacierSyncError)
def _pipeline_error(request: Request, exc: GlacierSyncError) -> JSONResponse:
    """The settings or the progress database cannot be read: the view says why (503), the
    rest of the API server goes on."""
    log.error("works view: %s", exc)
    return JSONResponse(status_code=503, content={"detail": f"the Works view cannot work: {exc}"})


@cache
def _settings() -> Settings:
    return load_settings()


@cache
def _store() -> ProgressStore:
    """The instance's progress database, never created or migrated by the view."""
    return ProgressStore(_settings().database_url(), auto_migrate=False)


def _rules(settings: Settings) -> BoardRules:
    return BoardRules(settings.max_attempts, timedelta(hours=settings.expiry_warning_hours))


def restore_dag(settings: Settings) -> str:
    """The DAG whose runs take restored works: the event-driven one when it is on."""
    return "sqs_event_dag" if settings.event_driven else "sqs_scheduled_dag"


def _may(user: Any, method: str, dag_id: str) -> bool:
    """Airflow's own answer: may ``user`` read (GET) or trigger (POST) the runs of ``dag_id``."""
    return get_auth_manager().is_authorized_dag(
        method=method, access_entity=DagAccessEntity.RUN, details=DagDetails(id=dag_id), user=user
    )


def _require(user: Any, method: str, dag_id: str, what: str) -> None:
    if not _may(user, method, dag_id):
        right = "trigger" if method == "POST" else "read"
        raise HTTPException(
            status_code=403,
            detail=f"{user.get_name()} may not {what}: it needs the right to {right} runs of "
            f"{dag_id} (roles User, Op or Admin)",
        )


def _check_action(x_requested_by: str | None) -> None:
    if x_requested_by != ACTION_HEADER:
        raise HTTPException(
            status_code=400, detail=f"an action needs the header X-Requested-By: {ACTION_HEADER}"
        )


def _start_run(
    dag_id: str, user: Any, conf: dict[str, Any], note: str, if_not_started: str
) -> tuple[str, str]:
    """Trigger a run of ``dag_id`` in the user's name: its id and a line saying what follows
    (a paused DAG's run waits for it to be unpaused). A run that cannot be started is a 502
    saying why and ``if_not_started`` (what stands)."""
    try:
        run = trigger_dag(
            dag_id,
            triggered_by=DagRunTriggeredByType.UI,
            triggering_user_name=user.get_name(),
            conf=conf,
            note=note,
        )
        if run is None:
            raise RuntimeError(f"Airflow started no run of {dag_id}")
    except Exception as exc:  # what the action recorded stands: say so, and why
        log.exception("works view: the run of %s (%s) did not start", dag_id, note)
        raise HTTPException(
            status_code=502, detail=f"no run of {dag_id} started ({exc}); {if_not_started}"
        ) from None
    model = DagModel.get_current(dag_id)
    paused = bool(model and model.is_paused)
    return run.run_id, (
        f"run {run.run_id} of {dag_id} is queued, but {dag_id} is paused: unpause it to go on"
        if paused
        else f"run {run.run_id} of {dag_id} takes it"
    )


@app.get("/", response_class=HTMLResponse, include_in_schema=False)
def page() -> str:
    """The page (static; it asks the API below for everything it shows)."""
    return resources.files(__package__).joinpath("page.html").read_text(encoding="utf-8")


@app.get("/api/board")
def board(user: User) -> dict[str, Any]:
    """Counts per state and the sections of the view, with what this user may do."""
    settings = _settings()
    _require(user, "GET", restore_dag(settings), "see the works")
    store = _store()
    result = works_board(store, _rules(settings), store.clock())
    result["user"] = user.get_name()
    result["may_retry"] = _may(user, "POST", restore_dag(settings))
    result["may_request"] = _may(user, "POST", REQUEST_DAG)
    return result


@app.get("/api/works")
def search(user: User, q: Annotated[str, Query(min_length=1, max_length=128)]) -> dict:
    """The works whose id contains ``q`` (any case)."""
    settings = _settings()
    _require(user, "GET", restore_dag(settings), "see the works")
    store = _store()
    return {"works": search_works(store, q, _rules(settings), store.clock())}


@app.post("/api/works/{work_id}/retry")
def retry(
    work_id: str,
    user: User,
    x_requested_by: Annotated[str | None, Header()] = None,
) -> dict[str, Any]:
    """Make a held or failed work eligible again (as `glacier-sync retry --reset-only`, the
    user named in its history) and start a run of the DAG that takes it: the restore DAG for
    a work from S3, down_scheduled_dag for one dropped into the incoming folder. Refused (409)
    while a run holds the work."""
    settings, store = _settings(), _store()
    now = store.clock()
    rows = [r for r in store.find([work_id]) if r.state in PENDING]
    dag_id = restore_dag(settings) if any(r.source == "s3" for r in rows) or not rows else LOCAL_DAG
    _require(user, "POST", dag_id, f"retry {work_id}")
    _check_action(x_requested_by)
    busy = [r for r in rows if held_by_a_live_run(r, now)]
    if busy:
        raise HTTPException(
            status_code=409,
            detail=f"{work_id} is being processed by {busy[0].claimed_by} (lease until "
            f"{busy[0].claimed_until:%H:%M:%S} UTC); nothing to retry now",
        )
    try:
        ids = store.reset_for_retry(work_id, by=user.get_name())
    except WorkNotFound as exc:
        raise HTTPException(status_code=404, detail=str(exc)) from None
    run_id, what = _start_run(
        dag_id,
        user,
        {},
        f"retry of {work_id} from the Works view by {user.get_name()}",
        f"the retry of {work_id} is recorded: the next run takes it",
    )
    log.info("works view: %s retried %s (rows %s); %s", user.get_name(), work_id, ids, what)
    rules, now = _rules(settings), store.clock()  # after the reset: the rows as they are now
    return {
        "work_id": work_id,
        "rows": ids,
        "dag_id": dag_id,
        "run_id": run_id,
        "message": f"{work_id}: retry recorded; {what}.",
        "works": [work_entry(row, rules, now) for row in store.find([work_id])],
    }


@app.post("/api/works/{work_id}/restore")
def request_restore(
    work_id: str,
    user: User,
    x_requested_by: Annotated[str | None, Header()] = None,
) -> dict[str, Any]:
    """Ask S3 for a new restore of the work (the tier and days of the settings) through a run
    of restore_request_dag: its task asks S3, records the request with the user's name and
    logs the outcome (a work the database does not know is refused here: give its key in
    the DAG's trigger form instead)."""
    settings = _settings()
    _require(user, "POST", REQUEST_DAG, f"request a restore of {work_id}")
    _check_action(x_requested_by)
    if not _store().find([work_id]):
        raise HTTPException(
            status_code=404,
            detail=f"work {work_id} is not in the progress database; give its key in the "
            f"trigger form of {REQUEST_DAG}",
        )
    run_id, what = _start_run(
        REQUEST_DAG,
        user,
        {"works": work_id, "tier": settings.restore_tier, "days": settings.restore_days},
        f"restore of {work_id} asked from the Works view by {user.get_name()}",
        "nothing was asked of S3",
    )
    log.info("works view: %s asked a restore of %s; %s", user.get_name(), work_id, what)
    return {
        "work_id": work_id,
        "dag_id": REQUEST_DAG,
        "run_id": run_id,
        "message": f"{work_id}: restore asked; {what} (its log has the outcome).",
    }
