"""The task of ``restore_request_dag``: the trigger form's works asked of S3, one result each."""

from __future__ import annotations

import logging
from dataclasses import asdict
from typing import Any

from airflow.sdk import get_current_context
from airflow.sdk.exceptions import AirflowFailException

from glacier_sync.intake.restore_requests import RECORDED, RestoreRequester, parse_items, summary
from glacier_sync.runner import open_store
from glacier_sync.settings import Settings

log = logging.getLogger(__name__)


def request_restores(settings: Settings, clients: Any) -> dict[str, Any]:
    """Ask for the restore of each work of the run's ``works`` param; log one line per work and
    return the results (the task's XCom). Bad items (no such key, ...) do not stop the others;
    the task fails only when none of the works could be requested. A transient AWS failure is
    raised as it is: the task retries. The user who triggered the run is named in each
    work's history."""
    context = get_current_context()
    params = context["params"]
    items = parse_items(str(params.get("works") or ""))
    if not items:
        raise AirflowFailException("no work given: put work ids or keys in `works`, one per line")
    tier, days = str(params["tier"]), int(params["days"])
    user = getattr(context["dag_run"], "triggering_user_name", None)
    requester = RestoreRequester(settings, open_store(settings), clients=clients, user=user)
    results = requester.request_all(items, tier, days)
    for result in results:
        (log.info if result.outcome in RECORDED else log.warning)("%s", result.line())
    totals = summary(results)
    log.info("summary: %s (%s tier, %s days)", totals, tier, days)
    if not any(result.outcome in RECORDED for result in results):
        raise AirflowFailException(f"none of the {len(results)} works was requested: {totals}")
    return {"summary": totals, "works": [asdict(result) for result in results]}
