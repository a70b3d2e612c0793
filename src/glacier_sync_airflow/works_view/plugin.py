"""The Airflow plugin of the Works view: its FastAPI app on the API server (under
``/glacier-works``) and its page in the UI's navigation (``/plugin/works``)."""

from __future__ import annotations

from airflow.plugins_manager import AirflowPlugin

from glacier_sync_airflow.works_view.api import app

URL_PREFIX = "/glacier-works"


class WorksViewPlugin(AirflowPlugin):
    """Registered through the ``airflow.plugins`` entry point of the glacier-sync package."""

    name = "glacier_works"
    fastapi_apps = [{"app": app, "url_prefix": URL_PREFIX, "name": "Works"}]
    external_views = [
        {
            "name": "Works",
            "href": URL_PREFIX.lstrip("/") + "/",
            "destination": "nav",
            "url_route": "works",
        }
    ]
