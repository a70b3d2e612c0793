"""Typed settings of the pipeline, read from a TOML config file and the environment.

Order of precedence (last wins): built-in defaults, the config file's top level, the config
file's ``[profiles.<env>]`` table, environment variables ``GLACIER_SYNC_<NAME>``.
The profile (``env``) follows one rule for both the table and the setting: the explicit ``env``
argument (``glacier-sync --env``), else ``GLACIER_SYNC_ENV``, else the file's ``env``, else
``dev``. The config file is ``$GLACIER_SYNC_CONFIG`` when set. Every setting is described in
``docs/configuration.md``.
"""

from __future__ import annotations

import os
import re
import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic.fields import FieldInfo
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    SettingsError,
)

from glacier_sync.errors import ConfigError
from glacier_sync.settings_alerts import NoticeEnvSource, check_alert_settings, webhook_url

ENV_PREFIX = "GLACIER_SYNC_"
CONFIG_ENV_VAR = "GLACIER_SYNC_CONFIG"
# The default sync script ships with the package; the archive's own replaces it (sync_command).
DEFAULT_SYNC_COMMAND = Path(__file__).resolve().parent / "sync_scripts" / "syncOneWork.sh"
_EVENT_PATTERN = re.compile(r"^[A-Za-z0-9]+(:[A-Za-z0-9*]+)?$")
_JSON_EXAMPLES = {
    "queues": '\'[{"name": "tbrc", "queue_url": "https://sqs...", "region": "us-east-1"}]\'',
    "event_names": "'[\"ObjectRestore:Completed\"]'",
}


class QueueSource(BaseModel):
    """One SQS queue that receives the restore events of one collection."""

    model_config = {"extra": "forbid"}

    name: str = Field(description="Short label used in logs and the progress database.")
    queue_url: str = Field(description="URL of the SQS queue.")
    region: str = Field(description="AWS region of the queue and its bucket.")
    profile: str | None = Field(
        default=None, description="AWS profile (a section of the credentials file) outside Airflow."
    )
    bucket: str | None = Field(
        default=None, description="Bucket whose restore events feed this queue (request-restore)."
    )
    aws_conn_id: str | None = Field(
        default=None, description="Airflow connection used inside Airflow; unset: use `profile`."
    )

    @field_validator("queue_url")
    @classmethod
    def _url(cls, value: str) -> str:
        if not re.match(r"^https?://", value):
            raise ValueError(f"queue_url {value!r} is not an http(s) URL; copy the queue's URL")
        return value


class _ChosenProfile(PydanticBaseSettingsSource):
    """The profile given to the model (resolved by load_settings), above the environment."""

    def __init__(self, settings_cls: type[BaseSettings], init_kwargs: dict[str, Any]) -> None:
        super().__init__(settings_cls)
        self.env = init_kwargs.get("env")

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        """Unused: ``__call__`` gives the one value."""
        return None, field_name, False

    def __call__(self) -> dict[str, Any]:
        return {} if self.env is None else {"env": self.env}


class Settings(BaseSettings):
    """Everything the pipeline needs; see docs/configuration.md."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="forbid", validate_default=True)

    env: Literal["dev", "prod"] = "dev"
    queues: list[QueueSource] = Field(default_factory=list)
    event_names: list[str] = Field(default_factory=lambda: ["ObjectRestore:Completed"])
    aws_credentials_file: Path = Path("/run/secrets/aws")
    aws_endpoint_url: str | None = None
    data_root: Path = Path.home() / ".local" / "share" / "glacier-sync"
    work_root: Path | None = None
    archive_root: Path | None = None
    archive_root_marker: str | None = None
    archive_root_must_be_mount: bool = False
    progress_db_url: SecretStr | None = None
    progress_db_url_file: Path | None = None
    progress_db_auto_migrate: bool = True
    sync_command: Path = DEFAULT_SYNC_COMMAND
    sync_replace_archive: bool = False
    sync_move_work: bool = True
    sync_db_config: Path | None = None
    sync_timeout_seconds: int = Field(default=6 * 3600, ge=1)
    stall_minutes: float = Field(default=30, ge=0)
    keep_zip_after_sync: bool = False
    max_messages_per_run: int = Field(default=10, ge=1, le=1000)
    sqs_wait_seconds: int = Field(default=20, ge=0, le=20)
    sqs_visibility_timeout: int = Field(default=300, ge=0, le=43200)
    max_attempts: int = Field(default=3, ge=1)
    batch_max_works: int = Field(default=20, ge=1, le=1000)
    batch_max_mb: int = Field(default=1024, ge=1)
    claim_lease_minutes: float = Field(default=5, gt=0, le=24 * 60)
    download_concurrency: int = Field(default=4, ge=1, le=64)
    download_chunk_mb: int = Field(default=64, ge=5, le=5120)
    free_space_margin_mb: int = Field(default=512, ge=0)
    restore_days: int = Field(default=7, ge=1)
    restore_tier: Literal["Standard", "Bulk"] = "Standard"
    expiry_warning_hours: float = Field(default=24, ge=0)
    poll_retries: int = Field(default=11, ge=0)
    poll_retry_delay_seconds: int = Field(default=300, ge=1)
    task_retries: int = Field(default=1, ge=0)
    task_retry_delay_seconds: int = Field(default=300, ge=1)
    sqs_schedule: str | None = "@hourly"
    down_schedule: str | None = None
    max_active_runs: int = Field(default=1, ge=1)
    event_driven: bool = True
    event_poll_seconds: float = Field(default=5, ge=1, le=300)
    event_refire_seconds: float = Field(default=10, ge=5, le=3600)
    event_max_active_runs: int = Field(default=2, ge=1)
    metrics_statsd_host: str | None = None
    metrics_statsd_port: int = Field(default=8125, ge=1, le=65535)
    metrics_prefix: str = Field(default="glacier_sync", pattern=r"^[A-Za-z0-9_.-]+$")
    instance_id: str | None = Field(default=None, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
    # Notices (glacier_sync.alerts): off until a recipient or a webhook is set.
    alert_email_to: list[str] = []
    alert_email_from: str | None = None
    alert_smtp_host: str | None = None
    alert_smtp_port: int = Field(default=25, ge=1, le=65535)
    alert_smtp_starttls: bool = False
    alert_smtp_user: str | None = None
    alert_smtp_password_file: Path | None = None
    alert_webhook_url: SecretStr | None = None
    alert_webhook_url_file: Path | None = None
    alert_timeout_seconds: float = Field(default=10, gt=0, le=120)
    ui_base_url: str | None = None

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        """Environment variables override the config file (passed as init values), except the
        profile: an ``env`` given to the model was already chosen by the one rule of
        ``_choose_env`` and must also decide ``env`` itself."""
        chosen = _ChosenProfile(settings_cls, getattr(init_settings, "init_kwargs", {}))
        return chosen, NoticeEnvSource(settings_cls), init_settings

    @field_validator(
        "aws_endpoint_url",
        "archive_root",
        "archive_root_marker",
        "work_root",
        "progress_db_url",
        "progress_db_url_file",
        "sync_db_config",
        "instance_id",
        "metrics_statsd_host",
        "alert_email_from",
        "alert_smtp_host",
        "alert_smtp_user",
        "alert_smtp_password_file",
        "alert_webhook_url",
        "alert_webhook_url_file",
        "ui_base_url",
        mode="before",
    )
    @classmethod
    def _empty_is_unset(cls, value: Any) -> Any:
        """An empty value (``GLACIER_SYNC_AWS_ENDPOINT_URL=`` from Compose) means unset."""
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("data_root", "work_root")
    @classmethod
    def _folder_or_absent(cls, value: Path | None) -> Path | None:
        """A data or work root must be a folder, or not exist yet (it is created then)."""
        if value is not None and value.exists() and not value.is_dir():
            raise ValueError(
                f"{value} exists and is not a folder; name a folder (created when missing)"
            )
        return value

    @field_validator("event_names")
    @classmethod
    def _event_names(cls, value: list[str]) -> list[str]:
        if not value:
            raise ValueError("no event name given; the usual value is ['ObjectRestore:Completed']")
        for name in value:
            if not _EVENT_PATTERN.match(name):
                raise ValueError(
                    f"event name {name!r} is not of the form 'ObjectRestore:Completed' "
                    "or 'ObjectRestore:*'"
                )
        return value

    @field_validator("sqs_schedule", "down_schedule")
    @classmethod
    def _schedule(cls, value: str | None) -> str | None:
        if value is None or value.strip().lower() in ("", "none", "null"):
            return None
        if value.startswith("@") or len(value.split()) == 5:
            return value
        raise ValueError(
            f"schedule {value!r} is neither a preset like '@hourly' nor a 5-field cron expression"
        )

    @model_validator(mode="after")
    def _cross_checks(self) -> Settings:
        names = [q.name for q in self.queues]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"queue names must be unique; repeated: {', '.join(dupes)}")
        if self.env == "prod":
            if not self.queues:
                raise ValueError("prod needs at least one entry in `queues`")
            if self.archive_root is None:
                raise ValueError("prod needs `archive_root` (GLACIER_SYNC_ARCHIVE_ROOT)")
            if self.aws_endpoint_url:
                raise ValueError(
                    "prod must talk to AWS itself: unset `aws_endpoint_url` (an emulator URL)"
                )
        if self.progress_db_url and self.progress_db_url_file:
            raise ValueError("set only one of `progress_db_url` and `progress_db_url_file`")
        check_alert_settings(self)
        return self

    def webhook_url(self) -> SecretStr | None:
        """The notices' webhook: ``alert_webhook_url``, or the URL in ``alert_webhook_url_file``
        (an empty file: none)."""
        return webhook_url(self)

    @property
    def incoming_dir(self) -> Path:
        """Where bag zips are downloaded (or dropped by hand), keeping the key's path."""
        return self.data_root / "incoming"

    @property
    def work_dir(self) -> Path:
        """Where bags are debagged into work folders before the sync."""
        return self.work_root or self.data_root / "work"

    @property
    def logs_dir(self) -> Path:
        """Where the per-work sync logs are written."""
        return self.data_root / "logs"

    def require_archive_root(self) -> Path:
        """The archive root, or a ConfigError saying how to set it."""
        if self.archive_root is None:
            raise ConfigError(
                "setting `archive_root` is not set: set GLACIER_SYNC_ARCHIVE_ROOT (or archive_root "
                "in the config file) to the folder that holds the archive tree"
            )
        return self.archive_root

    def database_url(self) -> str:
        """The progress-database URL (secret): explicit, from its file, or SQLite in data_root."""
        if self.progress_db_url is not None:
            return self.progress_db_url.get_secret_value()
        if self.progress_db_url_file is not None:
            try:
                text = self.progress_db_url_file.read_text(encoding="utf-8").strip()
            except OSError as exc:
                raise ConfigError(
                    f"setting `progress_db_url_file`: cannot read {self.progress_db_url_file} "
                    f"({exc.strerror}); create the file with the database URL or unset the setting"
                ) from exc
            if not text:
                raise ConfigError(
                    f"setting `progress_db_url_file`: {self.progress_db_url_file} is empty; "
                    "write the database URL into it"
                )
            return text
        return f"sqlite:///{self.data_root / 'progress.sqlite'}"

    def public_dict(self) -> dict[str, Any]:
        """The settings as plain data with every secret masked (for check-config and logs)."""
        data = self.model_dump(mode="json")
        data["progress_db_url"] = mask_url(self.database_url()) if self._db_url_readable() else None
        data["work_root"] = str(self.work_dir)
        return data

    def _db_url_readable(self) -> bool:
        try:
            self.database_url()
        except ConfigError:
            return False
        return True


def mask_url(url: str) -> str:
    """Hide the password of a database URL: ``postgresql://u:***@host/db``."""
    return re.sub(r"(://[^:/@]+:)[^@]*@", r"\1***@", url)


def _read_config_file(path: Path, origin: str) -> dict[str, Any]:
    """The TOML file's tables; ``origin`` says where its name came from (for the messages)."""
    where = f"config file {path} (from {origin})"
    try:
        with path.open("rb") as handle:
            return tomllib.load(handle)
    except FileNotFoundError as exc:
        raise ConfigError(
            f"{where} does not exist; create it or name an existing file in {origin}"
        ) from exc
    except IsADirectoryError as exc:
        raise ConfigError(f"{where} is a folder; name the TOML file itself in {origin}") from exc
    except OSError as exc:
        raise ConfigError(
            f"{where} cannot be read ({exc.strerror}); make it readable by this user "
            f"or name another file in {origin}"
        ) from exc
    except UnicodeDecodeError as exc:
        raise ConfigError(
            f"{where} is not UTF-8 text (byte {exc.object[exc.start]:#04x} at offset "
            f"{exc.start}); save it as UTF-8"
        ) from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{where} is not valid TOML: {exc}; fix the file") from exc


def _merge_profile(data: dict[str, Any], env: str | None) -> dict[str, Any]:
    profiles = data.pop("profiles", {}) or {}
    if not isinstance(profiles, dict) or not all(isinstance(v, dict) for v in profiles.values()):
        raise ConfigError("config file: `profiles` must hold tables such as [profiles.prod]")
    unknown = sorted(set(profiles) - {"dev", "prod"})
    if unknown:
        raise ConfigError(
            f"config file: unknown profile(s) {', '.join(unknown)}; use [profiles.dev] or "
            "[profiles.prod]"
        )
    chosen = _choose_env(env, data)
    merged = {**data, **profiles.get(chosen, {})}
    merged["env"] = chosen
    return merged


def _choose_env(env: str | None, data: dict[str, Any]) -> str:
    """The one rule for the profile: ``env`` argument, ``GLACIER_SYNC_ENV``, file, ``dev``."""
    return env or os.environ.get(ENV_PREFIX + "ENV") or data.get("env") or "dev"


def _explain_env_value(exc: SettingsError) -> ConfigError:
    """pydantic-settings could not decode a list or table given in the environment."""
    match = re.search(r'field "(\w+)"', str(exc))
    name = match.group(1) if match else "settings"
    env_name = ENV_PREFIX + name.upper()
    cause = f" ({exc.__cause__})" if exc.__cause__ else ""
    example = _JSON_EXAMPLES.get(name, "'[...]' or '{...}'")
    return ConfigError(
        f"invalid settings:\n  setting `{name}` ({env_name}): the environment value is not valid "
        f"JSON{cause}; give lists and tables as JSON, e.g. {env_name}={example}"
    )


def _explain(exc: ValidationError, source: str) -> ConfigError:
    lines = []
    for err in exc.errors():
        loc = [str(p) for p in err["loc"]]
        name = loc[0] if loc else "settings"
        where = ".".join(loc)
        env_name = ENV_PREFIX + name.upper()
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            msg = "unknown setting; check its spelling against docs/configuration.md"
        if not loc:  # a check across settings: the message names them
            lines.append(f"settings (environment or {source}): {msg}")
            continue
        lines.append(f"setting `{where}` ({env_name} or `{name}` in {source}): {msg}")
    return ConfigError("invalid settings:\n  " + "\n  ".join(lines))


def load_settings(
    config_file: Path | str | None = None, env: str | None = None, **overrides: Any
) -> Settings:
    """Read the settings; raise ConfigError naming the setting and the fix when invalid."""
    path = config_file or os.environ.get(CONFIG_ENV_VAR)
    origin = "--config" if config_file else CONFIG_ENV_VAR
    data: dict[str, Any] = _read_config_file(Path(path), origin) if path else {}
    data = _merge_profile(data, env)
    data.update(overrides)
    source = str(path) if path else "the config file"
    try:
        return Settings(**data)
    except ValidationError as exc:
        raise _explain(exc, source) from None
    except SettingsError as exc:
        raise _explain_env_value(exc) from None
