"""The AWS edge: sessions per named profile (the credentials secret file) and their clients, the
error code of a failed call, and the restore request of an object (``transfer/object_download``
downloads, ``intake/sqs`` polls)."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, Protocol

from glacier_sync.credentials import profile_credentials, read_credentials
from glacier_sync.errors import DownloadError

if TYPE_CHECKING:
    import boto3

    from glacier_sync.settings import QueueSource, Settings

log = logging.getLogger(__name__)


class ClientFactory(Protocol):
    """Gives boto3 clients for one queue entry (a profile session, or an Airflow hook's)."""

    def client(self, service: str, queue: QueueSource) -> Any: ...


def profile_session(settings: Settings, profile: str | None, region: str) -> boto3.Session:
    """A boto3 session for ``profile``: from the credentials secret file when present.

    The file is INI with one section per profile (``aws_access_key_id``,
    ``aws_secret_access_key``, optional ``aws_session_token`` and ``region_name``). Without the
    file (or with an empty one), boto3's normal chain (environment, ``~/.aws``, instance role)
    is used.
    """
    import boto3

    path = settings.aws_credentials_file
    if not path.is_file() or path.stat().st_size == 0:
        return boto3.Session(profile_name=profile, region_name=region)
    values = profile_credentials(read_credentials(path), path, profile)
    return boto3.Session(
        aws_access_key_id=values["aws_access_key_id"],
        aws_secret_access_key=values["aws_secret_access_key"],
        aws_session_token=values.get("aws_session_token") or None,
        region_name=values.get("region_name") or region,
    )


PART_HEAD_THREADS = 8  # the most part-size HEADs a download asks at once (whole_object)
BOTOCORE_POOL = 10  # botocore's own max_pool_connections


def pool_size(settings: Settings) -> int:
    """Connections a client keeps: one per download thread and part-size HEAD (botocore keeps
    10, and a download of more threads would open and drop connections for every range)."""
    return max(BOTOCORE_POOL, settings.download_concurrency + PART_HEAD_THREADS)


def with_pool(settings: Settings, config: Any = None) -> Any:
    """``config`` (a botocore ``Config``, or none) with room for ``pool_size`` connections
    (a larger pool already set in it is kept)."""
    from botocore.config import Config

    have = getattr(config, "max_pool_connections", None) or 0
    pool = Config(max_pool_connections=max(have, pool_size(settings)))
    return config.merge(pool) if config is not None else pool


class ProfileClients:
    """Clients from named profiles (the way to work outside Airflow)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._cache: dict[tuple[str, str | None, str], Any] = {}

    def client(self, service: str, queue: QueueSource) -> Any:
        """A cached boto3 client for ``service`` in the queue's region and profile."""
        key = (service, queue.profile, queue.region)
        if key not in self._cache:
            session = profile_session(self.settings, queue.profile, queue.region)
            self._cache[key] = session.client(
                service,
                region_name=queue.region,
                endpoint_url=self.settings.aws_endpoint_url,
                config=with_pool(self.settings),
            )
        return self._cache[key]


def error_code(exc: Exception) -> str:
    """The AWS error code of a botocore ClientError ("" for anything else)."""
    return str(getattr(exc, "response", {}).get("Error", {}).get("Code", ""))


def request_restore(s3: Any, bucket: str, key: str, days: int, tier: str) -> str:
    """Ask S3 to restore an archived object; return 'requested', 'in-progress' or 'available'."""
    from botocore.exceptions import ClientError

    try:
        response = s3.restore_object(
            Bucket=bucket,
            Key=key,
            RestoreRequest={"Days": days, "GlacierJobParameters": {"Tier": tier}},
        )
    except ClientError as exc:
        code = error_code(exc)
        if code == "RestoreAlreadyInProgress":
            return "in-progress"
        if code in ("NoSuchKey", "404"):
            raise DownloadError(f"s3://{bucket}/{key} does not exist; check the key") from exc
        raise DownloadError(f"restore request for s3://{bucket}/{key} failed: {exc}") from exc
    status = response["ResponseMetadata"]["HTTPStatusCode"]
    return "available" if status == 200 else "requested"
