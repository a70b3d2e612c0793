"""restore_request_dag: ask S3 to restore works from Glacier / Deep Archive, from the UI.

Trigger it with the form ("Trigger" in the UI): **works** are work ids known to the progress
database or object keys, one per line; **tier** is Standard (within 12 hours for Deep Archive)
or Bulk (within 48 hours, cheaper); **days** is how long the restored copy stays. Each work gets
one result in the task log and in its XCom: requested, already in progress, already available,
no such key, not archived in Glacier or unknown work. The requested works are recorded as
`requested`; their ObjectRestore:Completed events then start sqs_event_dag, which archives them.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from airflow.sdk import Param, dag, task

from glacier_sync_airflow import HookClients, load_settings
from glacier_sync_airflow.restore_request import request_restores

SETTINGS = load_settings()


@dag(
    dag_id="restore_request_dag",
    schedule=None,
    start_date=datetime(2025, 1, 1),
    catchup=False,
    max_active_runs=1,
    # Runs only when someone triggers it: nothing to hold back, so it starts unpaused.
    is_paused_upon_creation=False,
    # A throttled or unreachable S3 is retried; bad input fails at once (no retry).
    default_args={
        "retries": SETTINGS.task_retries,
        "retry_delay": timedelta(seconds=SETTINGS.task_retry_delay_seconds),
    },
    tags=["glacier-sync", SETTINGS.env],
    doc_md=__doc__,
    params={
        "works": Param(
            "",
            type="string",
            title="Works",
            description="Work ids (W1NLM4700) or keys (Archive0/00/W1NLM4700/W1NLM4700.bag.zip), "
            "one per line",
            format="multiline",
            minLength=1,
            pattern=r"\S",
        ),
        "tier": Param(
            SETTINGS.restore_tier,
            type="string",
            enum=["Standard", "Bulk"],
            title="Retrieval tier",
            description="Standard: within 12 hours (Deep Archive); Bulk: within 48 hours",
        ),
        "days": Param(
            SETTINGS.restore_days,
            type="integer",
            minimum=1,
            maximum=30,
            title="Days",
            description="How long S3 keeps the restored copy",
        ),
    },
)
def restore_request_dag() -> None:
    """Ask S3 for the restores named in the trigger form."""

    @task(task_id="request_restores")
    def request() -> dict:
        """Ask S3 to restore each work; one result per work (log and XCom)."""
        return request_restores(SETTINGS, HookClients(SETTINGS))

    request()


dag = restore_request_dag()

if __name__ == "__main__":
    # Under an IDE debugger: python dags/restore_request_dag.py W1NLM4700 [WORK ...]
    import sys

    if len(sys.argv) < 2:
        sys.exit("usage: python dags/restore_request_dag.py WORK_OR_KEY [WORK_OR_KEY ...]")
    dag.test(run_conf={"works": "\n".join(sys.argv[1:])})
