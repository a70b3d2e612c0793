"""boto3 clients for the pipeline through the Amazon provider's hooks (Airflow connections)."""

from __future__ import annotations

from typing import Any

from glacier_sync.aws import ProfileClients, with_pool
from glacier_sync.settings import QueueSource, Settings


class HookClients:
    """boto3 clients through the Amazon provider's hooks (one Airflow connection per queue).

    A queue entry without ``aws_conn_id`` falls back to its named profile, as outside Airflow.
    """

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.profiles = ProfileClients(settings)
        self._cache: dict[tuple[str, str, str], Any] = {}

    def client(self, service: str, queue: QueueSource) -> Any:
        """A client for ``service`` from the queue's Airflow connection (or profile)."""
        if not queue.aws_conn_id:
            return self.profiles.client(service, queue)
        key = (service, queue.aws_conn_id, queue.region)
        if key not in self._cache:
            from airflow.providers.amazon.aws.hooks.base_aws import AwsBaseHook

            hook = AwsBaseHook(
                aws_conn_id=queue.aws_conn_id, client_type=service, region_name=queue.region
            )
            endpoint = hook.conn_config.endpoint_url or self.settings.aws_endpoint_url
            self._cache[key] = hook.get_session(region_name=queue.region).client(
                service,
                region_name=queue.region,
                endpoint_url=endpoint,
                config=with_pool(self.settings, hook.config),
            )
        return self._cache[key]
