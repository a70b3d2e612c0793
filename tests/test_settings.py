"""Settings: sources and precedence, profiles, validation messages, masking."""

from __future__ import annotations

import json

import pytest

from glacier_sync.errors import ConfigError
from glacier_sync.settings import load_settings, mask_url

QUEUE = {
    "name": "tbrc",
    "queue_url": "https://sqs.us-east-1.amazonaws.com/1/q",
    "region": "us-east-1",
}


def _write(tmp_path, text: str):
    path = tmp_path / "glacier-sync.toml"
    path.write_text(text)
    return path


def test_defaults_are_valid(tmp_path):
    settings = load_settings(data_root=tmp_path)
    assert settings.env == "dev"
    assert settings.event_names == ["ObjectRestore:Completed"]
    assert settings.incoming_dir == tmp_path / "incoming"
    assert settings.work_dir == tmp_path / "work"
    assert settings.database_url() == f"sqlite:///{tmp_path}/progress.sqlite"
    assert settings.sync_command.name == "syncOneWork.sh" and settings.sync_command.is_file()


def test_file_profile_and_environment_precedence(tmp_path, monkeypatch):
    path = _write(
        tmp_path,
        f"""
data_root = "{tmp_path}/top"
max_messages_per_run = 3
[[queues]]
name = "tbrc"
queue_url = "https://sqs.us-east-1.amazonaws.com/1/q"
region = "us-east-1"
[profiles.prod]
data_root = "{tmp_path}/prod"
archive_root = "{tmp_path}/archive"
[profiles.dev]
data_root = "{tmp_path}/dev"
""",
    )
    assert load_settings(path).data_root == tmp_path / "dev"
    prod = load_settings(path, env="prod")
    assert prod.env == "prod" and prod.data_root == tmp_path / "prod"
    assert prod.max_messages_per_run == 3
    monkeypatch.setenv("GLACIER_SYNC_MAX_MESSAGES_PER_RUN", "7")
    monkeypatch.setenv("GLACIER_SYNC_ENV", "prod")
    from_env = load_settings(path)
    assert from_env.env == "prod" and from_env.max_messages_per_run == 7


def test_queues_from_environment_json(monkeypatch):
    monkeypatch.setenv(
        "GLACIER_SYNC_QUEUES",
        json.dumps([QUEUE, {**QUEUE, "name": "two", "region": "ap-northeast-2"}]),
    )
    settings = load_settings()
    assert [q.region for q in settings.queues] == ["us-east-1", "ap-northeast-2"]


@pytest.mark.parametrize(
    ("overrides", "names"),
    [
        (
            {"max_messages_per_run": 0},
            ["max_messages_per_run", "GLACIER_SYNC_MAX_MESSAGES_PER_RUN"],
        ),
        ({"sqs_wait_seconds": 30}, ["sqs_wait_seconds", "less than or equal to 20"]),
        ({"event_names": ["Object Restore"]}, ["event_names", "ObjectRestore:*"]),
        ({"restore_tier": "Expedited"}, ["restore_tier", "Standard"]),
        ({"sqs_schedule": "every hour"}, ["sqs_schedule", "cron"]),
        ({"queues": [{**QUEUE, "queue_url": "sqs/q"}]}, ["queues.0.queue_url", "http(s) URL"]),
        ({"queues": [QUEUE, QUEUE]}, ["queue names must be unique", "tbrc"]),
        ({"archve_root": "/x"}, ["archve_root", "unknown setting"]),
    ],
)
def test_invalid_settings_name_the_setting_and_fix(overrides, names):
    with pytest.raises(ConfigError) as info:
        load_settings(**overrides)
    for name in names:
        assert name in str(info.value)


def test_prod_requires_queues_archive_and_real_aws(tmp_path):
    with pytest.raises(ConfigError, match="at least one entry in `queues`"):
        load_settings(env="prod", archive_root=tmp_path)
    with pytest.raises(ConfigError, match="archive_root"):
        load_settings(env="prod", queues=[QUEUE])
    with pytest.raises(ConfigError, match="aws_endpoint_url"):
        load_settings(
            env="prod",
            queues=[QUEUE],
            archive_root=tmp_path,
            aws_endpoint_url="http://127.0.0.1:5000",
        )


def test_bad_config_file_errors(tmp_path, monkeypatch):
    with pytest.raises(ConfigError, match="does not exist"):
        load_settings(tmp_path / "missing.toml")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_settings(_write(tmp_path, "data_root = "))
    with pytest.raises(ConfigError, match="unknown profile"):
        load_settings(_write(tmp_path, "[profiles.staging]\nenv='dev'\n"))


def test_database_url_file_and_masking(tmp_path):
    secret = tmp_path / "db_url"
    secret.write_text("postgresql://airflow:s3cr3t-pass@db:5432/progress\n")
    settings = load_settings(progress_db_url_file=secret)
    assert settings.database_url() == "postgresql://airflow:s3cr3t-pass@db:5432/progress"
    shown = json.dumps(settings.public_dict())
    assert "s3cr3t-pass" not in shown and "airflow:***@db" in shown
    direct = load_settings(progress_db_url="mysql+pymysql://u:pw0rd@h/db")
    assert "pw0rd" not in repr(direct) and "pw0rd" not in json.dumps(direct.public_dict())
    assert mask_url("sqlite:////x/y.sqlite") == "sqlite:////x/y.sqlite"


def test_database_url_file_missing_or_empty(tmp_path):
    with pytest.raises(ConfigError, match="progress_db_url_file"):
        load_settings(progress_db_url_file=tmp_path / "nope").database_url()
    empty = tmp_path / "empty"
    empty.write_text("\n")
    with pytest.raises(ConfigError, match="is empty"):
        load_settings(progress_db_url_file=empty).database_url()


def test_archive_root_required_message():
    with pytest.raises(ConfigError, match="GLACIER_SYNC_ARCHIVE_ROOT"):
        load_settings().require_archive_root()
