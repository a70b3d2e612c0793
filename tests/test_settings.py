"""Settings: sources and precedence, profiles, validation messages, masking."""

from __future__ import annotations

import json
import os
import shutil
import subprocess

import pytest
from helpers import VENV_BIN

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


@pytest.mark.unit
def test_defaults_are_valid(tmp_path):
    settings = load_settings(data_root=tmp_path)
    assert settings.env == "dev"
    assert settings.event_names == ["ObjectRestore:Completed"]
    assert settings.incoming_dir == tmp_path / "incoming"
    assert settings.work_dir == tmp_path / "work"
    assert settings.database_url() == f"sqlite:///{tmp_path}/progress.sqlite"
    assert settings.sync_command.name == "syncOneWork.sh" and settings.sync_command.is_file()


@pytest.mark.unit
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


@pytest.mark.unit
def test_queues_from_environment_json(monkeypatch):
    monkeypatch.setenv(
        "GLACIER_SYNC_QUEUES",
        json.dumps([QUEUE, {**QUEUE, "name": "two", "region": "ap-northeast-2"}]),
    )
    settings = load_settings()
    assert [q.region for q in settings.queues] == ["us-east-1", "ap-northeast-2"]


@pytest.mark.unit
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


@pytest.mark.unit
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


@pytest.mark.unit
def test_bad_config_file_errors(tmp_path, monkeypatch):
    with pytest.raises(ConfigError, match="does not exist"):
        load_settings(tmp_path / "missing.toml")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_settings(_write(tmp_path, "data_root = "))
    with pytest.raises(ConfigError, match="unknown profile"):
        load_settings(_write(tmp_path, "[profiles.staging]\nenv='dev'\n"))


@pytest.mark.unit
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


@pytest.mark.unit
def test_database_url_file_missing_or_empty(tmp_path):
    with pytest.raises(ConfigError, match="progress_db_url_file"):
        load_settings(progress_db_url_file=tmp_path / "nope").database_url()
    empty = tmp_path / "empty"
    empty.write_text("\n")
    with pytest.raises(ConfigError, match="is empty"):
        load_settings(progress_db_url_file=empty).database_url()


@pytest.mark.unit
def test_archive_root_required_message():
    with pytest.raises(ConfigError, match="GLACIER_SYNC_ARCHIVE_ROOT"):
        load_settings().require_archive_root()


# -- bad input gives one clear error (exit 2), never a traceback --------------------------


def _unprivileged() -> list[str]:
    """A command prefix under which file permissions hold, also for root (tests run as root)."""
    if os.geteuid() != 0:
        return []
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        pytest.skip("root reads a chmod 000 file, and setpriv (util-linux) is missing to stop that")
    return [setpriv, "--bounding-set=-dac_override,-dac_read_search"]


def _unreadable(tmp_path):
    path = _write(tmp_path, 'data_root = "/tmp"\n')
    path.chmod(0)
    return path


def _check_config(*args, env=None, prefix=()):
    base = {k: v for k, v in os.environ.items() if not k.startswith("GLACIER_SYNC_")}
    return subprocess.run(
        [*prefix, str(VENV_BIN / "glacier-sync"), *map(str, args), "check-config"],
        env={**base, **(env or {})},
        capture_output=True,
        text=True,
        timeout=60,
    )


def _assert_one_clear_error(result, *names):
    assert result.returncode == 2, result.stdout + result.stderr
    assert result.stderr.startswith("error: ") and "Traceback" not in result.stderr, result.stderr
    for name in names:
        assert name in result.stderr, result.stderr


@pytest.mark.unit
@pytest.mark.parametrize(
    ("name", "value"),
    [("QUEUES", "not json"), ("EVENT_NAMES", "ObjectRestore:Completed")],
)
def test_env_list_that_is_not_json_names_the_variable(monkeypatch, name, value):
    monkeypatch.setenv("GLACIER_SYNC_" + name, value)
    with pytest.raises(ConfigError) as info:
        load_settings()
    message = str(info.value)
    assert f"GLACIER_SYNC_{name}" in message and "not valid JSON" in message
    assert f"GLACIER_SYNC_{name}='[" in message, "the fix: an example in JSON"


@pytest.mark.unit
def test_config_file_that_is_a_folder_or_not_utf8(tmp_path):
    with pytest.raises(ConfigError, match=r"is a folder; name the TOML file itself in --config"):
        load_settings(tmp_path)
    bad = tmp_path / "latin1.toml"
    bad.write_bytes('data_root = "/tmp/caf\xe9"\n'.encode("latin-1"))
    with pytest.raises(ConfigError, match=r"latin1.toml .*is not UTF-8 text.*save it as UTF-8"):
        load_settings(bad)


@pytest.mark.integration
def test_config_file_that_cannot_be_read(tmp_path):
    path = _unreadable(tmp_path)
    code = (
        "import sys\n"
        "from glacier_sync.settings import load_settings\n"
        "from glacier_sync.errors import ConfigError\n"
        "try:\n"
        "    load_settings(sys.argv[1])\n"
        "except ConfigError as exc:\n"
        "    sys.exit(f'ConfigError: {exc}')\n"
    )
    result = subprocess.run(
        [*_unprivileged(), str(VENV_BIN / "python"), "-c", code, str(path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.stderr.startswith(f"ConfigError: config file {path} (from --config)"), result
    assert "cannot be read (Permission denied); make it readable" in result.stderr


@pytest.mark.unit
@pytest.mark.parametrize("name", ["data_root", "work_root"])
def test_roots_must_be_folders_or_absent(tmp_path, name):
    a_file = tmp_path / "a-file"
    a_file.write_text("not a folder")
    with pytest.raises(ConfigError) as info:
        load_settings(**{name: a_file})
    assert f"`{name}`" in str(info.value) and "GLACIER_SYNC_" + name.upper() in str(info.value)
    assert f"{a_file} exists and is not a folder" in str(info.value)
    assert getattr(load_settings(**{name: tmp_path / "later"}), name) == tmp_path / "later"
    assert getattr(load_settings(**{name: tmp_path}), name) == tmp_path


@pytest.mark.integration
@pytest.mark.parametrize(
    ("env", "names"),
    [
        ({"GLACIER_SYNC_QUEUES": "not json"}, ["GLACIER_SYNC_QUEUES", "JSON"]),
        (
            {"GLACIER_SYNC_EVENT_NAMES": "ObjectRestore:Completed"},
            ["GLACIER_SYNC_EVENT_NAMES", "JSON"],
        ),
        ({"GLACIER_SYNC_DATA_ROOT": "{file}"}, ["GLACIER_SYNC_DATA_ROOT", "not a folder"]),
        ({"GLACIER_SYNC_WORK_ROOT": "{file}"}, ["GLACIER_SYNC_WORK_ROOT", "not a folder"]),
        ({"GLACIER_SYNC_CONFIG": "{folder}"}, ["GLACIER_SYNC_CONFIG", "is a folder"]),
    ],
)
def test_console_script_refuses_bad_environment_in_one_line(tmp_path, env, names):
    a_file = tmp_path / "a-file"
    a_file.write_text("")
    env = {k: v.format(file=a_file, folder=tmp_path) for k, v in env.items()}
    _assert_one_clear_error(_check_config(env=env), *names)


@pytest.mark.integration
def test_console_script_refuses_bad_config_files_in_one_line(tmp_path):
    _assert_one_clear_error(_check_config("--config", tmp_path), "--config", "is a folder")
    latin1 = tmp_path / "latin1.toml"
    latin1.write_bytes('data_root = "/tmp/caf\xe9"\n'.encode("latin-1"))
    _assert_one_clear_error(_check_config("--config", latin1), str(latin1), "not UTF-8")
    unreadable = _unreadable(tmp_path)
    result = _check_config("--config", unreadable, prefix=_unprivileged())
    _assert_one_clear_error(result, str(unreadable), "cannot be read")


# -- one rule decides the profile ---------------------------------------------------------


def _profiles(tmp_path):
    return _write(
        tmp_path,
        f"""
env = "dev"
[profiles.dev]
max_messages_per_run = 2
[profiles.prod]
max_messages_per_run = 5
[[profiles.prod.queues]]
name = "{QUEUE["name"]}"
queue_url = "{QUEUE["queue_url"]}"
region = "{QUEUE["region"]}"
""",
    )


@pytest.mark.unit
def test_explicit_env_wins_over_environment_which_wins_over_file(tmp_path, monkeypatch):
    path = _profiles(tmp_path)
    assert load_settings(path).env == "dev"
    monkeypatch.setenv("GLACIER_SYNC_ENV", "dev")
    with pytest.raises(ConfigError, match="prod needs `archive_root`"):
        load_settings(path, env="prod")  # the prod checks run: the profile is prod
    prod = load_settings(path, env="prod", archive_root=tmp_path)
    assert (prod.env, prod.max_messages_per_run) == ("prod", 5)
    monkeypatch.setenv("GLACIER_SYNC_ENV", "prod")
    from_env = load_settings(path, archive_root=tmp_path)
    assert (from_env.env, from_env.max_messages_per_run) == ("prod", 5)
    dev = load_settings(path, env="dev")
    assert (dev.env, dev.max_messages_per_run) == ("dev", 2)


@pytest.mark.integration
def test_console_script_env_option_wins_over_environment(tmp_path):
    path = _profiles(tmp_path)
    env = {"GLACIER_SYNC_ENV": "dev", "GLACIER_SYNC_DATA_ROOT": str(tmp_path)}
    result = _check_config("--config", path, "--env", "prod", env=env)
    _assert_one_clear_error(result, "prod needs `archive_root`")
    assert "GLACIER_SYNC_SETTINGS" not in result.stderr
    env["GLACIER_SYNC_ARCHIVE_ROOT"] = str(tmp_path)
    result = _check_config("--config", path, "--env", "prod", env=env)
    assert result.returncode == 0, result.stderr
    shown = json.loads(result.stdout[: result.stdout.rindex("}") + 1])
    assert (shown["env"], shown["max_messages_per_run"]) == ("prod", 5)
