"""deploy.sh, the -h of the shell scripts, bdrc-docker.sh's build folder (no Docker engine)."""

from __future__ import annotations

import hashlib
import os
import re
import stat
import subprocess
from pathlib import Path

import pytest
import yaml
from helpers import REPO

from glacier_sync.settings import load_settings

DEPLOY = REPO / "deploy.sh"
CREDS = (
    "[default]\naws_access_key_id = AKIATEST\naws_secret_access_key = not-a-real-secret\n"
    "region_name = us-east-1\n"
)
CONFIG = """
[[queues]]
name = "tbrc"
queue_url = "https://sqs.us-east-1.amazonaws.com/123456789012/restores"
region = "us-east-1"
profile = "default"
"""


def deploy(*args, env=None):
    return subprocess.run(
        ["bash", str(DEPLOY), *map(str, args)],
        capture_output=True,
        text=True,
        env=env or os.environ,
        timeout=120,
    )


@pytest.fixture
def inputs(tmp_path):
    creds = tmp_path / "aws-credentials"
    creds.write_text(CREDS)
    config = tmp_path / "glacier-sync.toml"
    config.write_text(CONFIG)
    archive = tmp_path / "archive-root"
    archive.mkdir()
    return {"creds": creds, "config": config, "archive": archive, "dest": tmp_path / "instance"}


def _args(inputs, *extra, env="dev"):
    return [
        "--dest",
        inputs["dest"],
        "--env",
        env,
        "--arch-root",
        inputs["archive"],
        "--sync-uid",
        "4242",
        "--aws-credentials",
        inputs["creds"],
        "--pipeline-config",
        inputs["config"],
        *extra,
    ]


def _digest(folder: Path) -> dict[str, str]:
    """The files of ``folder`` (not its subfolders) by name: their SHA-256."""
    return {
        p.name: hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.iterdir())
        if p.is_file()
    }


@pytest.mark.integration
@pytest.mark.parametrize(
    ("script", "last_line"),
    [
        (
            "deploy.sh",
            "and kept on every re-deploy. Data, logs, the databases and the archive are never "
            "deleted.",
        ),
        (
            "local-airflow.sh",
            '(mode 0600). Without -a, an "admin" user with a generated password is created.',
        ),
        (
            "bdrc-docker.sh",
            "build needs no PyPI access. Works with `docker compose` (v2) and "
            "`docker-compose` (1.29).",
        ),
    ],
)
def test_help_is_exactly_the_header_comment(script, last_line):
    result = subprocess.run(
        ["bash", str(REPO / script), "-h"], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith(f"{script} - ") and lines[-1] == last_line
    assert not any(line.startswith(("set -", "#")) for line in lines), result.stdout


@pytest.mark.integration
def test_fresh_deploy_layout_env_and_secrets(inputs):
    result = deploy(*_args(inputs))
    assert result.returncode == 0, result.stderr
    dest = inputs["dest"]
    for sub in ("logs", "dags", "plugins", "processing", "data", "config", "secrets"):
        assert (dest / sub).is_dir(), sub
    assert (dest / "docker-compose.yaml").read_text() == (
        REPO / "bdrc-docker-compose.yml"
    ).read_text()
    assert sorted(p.name for p in (dest / "dags").iterdir()) == [
        "down_scheduled_dag.py",
        "restore_request_dag.py",
        "sqs_event_dag.py",
        "sqs_scheduled_dag.py",
    ], "DAG files only: the library is installed in the image, no build artefacts"
    assert (dest / "config" / "glacier-sync.toml").read_text() == CONFIG
    secrets = dest / "secrets"
    assert sorted(p.name for p in secrets.iterdir()) == [
        "airflow_admin_password",
        "airflow_api_secret_key",
        "airflow_db_url",
        "airflow_fernet_key",
        "airflow_jwt_secret",
        "alert_smtp_password",
        "alert_webhook_url",
        "aws",
        "flower_password",
        "postgres_password",
        "progress_db_url",
        "redis_conf",
        "redis_password",
    ]
    for path in [secrets, *secrets.iterdir()]:
        mode = stat.S_IMODE(path.stat().st_mode)
        # redis_conf is read by the Redis container's own user; the folder keeps it private.
        private = 0o644 if path.name == "redis_conf" else 0o600
        assert mode == (0o700 if path.is_dir() else private), (path, oct(mode))
        if os.getuid() == 0:
            assert path.stat().st_uid == 4242, path
    assert (secrets / "aws").read_text() == CREDS
    password = (secrets / "postgres_password").read_text().strip()
    assert (secrets / "progress_db_url").read_text().strip() == (
        f"postgresql+psycopg2://airflow:{password}@postgres:5432/glacier_sync"
    )
    assert (secrets / "airflow_db_url").read_text().strip() == (
        f"postgresql+psycopg2://airflow:{password}@postgres:5432/airflow"
    )
    import base64

    assert len(base64.urlsafe_b64decode((secrets / "airflow_fernet_key").read_text().strip())) == 32
    env_lines = (dest / ".env").read_text().splitlines()
    for index, line in enumerate(env_lines):
        if line and not line.startswith("#"):
            assert env_lines[index - 1].startswith("#"), f"uncommented variable: {line}"
    env = dict(line.split("=", 1) for line in env_lines if line and not line.startswith("#"))
    assert env["ARCH_ROOT"] == str(inputs["archive"]) and env["SYNC_ACCESS_UID"] == "4242"
    assert env["AIRFLOW_UI_BIND"] == "127.0.0.1"
    assert all(
        secret not in (dest / ".env").read_text() for secret in (password, "not-a-real-secret")
    )
    assert "Next steps" in result.stdout


@pytest.mark.integration
def test_redeploy_keeps_secrets_data_and_hand_edits(inputs):
    assert deploy(*_args(inputs)).returncode == 0
    dest = inputs["dest"]
    secrets_before = _digest(dest / "secrets")
    (dest / "data" / "incoming").mkdir()
    (dest / "data" / "incoming" / "W1.bag.zip").write_bytes(b"keep me")
    (dest / "logs" / "old.log").write_text("keep me")
    (dest / "dags" / "stale_dag.py").write_text("# removed upstream")
    (dest / "dags" / "glacier_sync" / "__pycache__").mkdir(parents=True)  # an older layout
    (dest / "dags" / "glacier_sync" / "runner.py").write_text("# the library moved to src/")
    (dest / "dags" / "sqs_scheduled_dag.py").write_text("# an older version")
    folder = (dest / "dags").stat().st_ino
    assert deploy(*_args(inputs)).returncode == 0
    assert _digest(dest / "secrets") == secrets_before
    assert (dest / "data" / "incoming" / "W1.bag.zip").read_bytes() == b"keep me"
    assert (dest / "logs" / "old.log").read_text() == "keep me"
    assert (dest / "dags").stat().st_ino == folder, "updated in place: a bind mount still sees it"
    assert sorted(p.name for p in (dest / "dags").iterdir()) == [
        "down_scheduled_dag.py",
        "restore_request_dag.py",
        "sqs_event_dag.py",
        "sqs_scheduled_dag.py",
    ], "dags/ mirrors the repository: stale files and the old library folder are gone"
    assert (dest / "dags" / "sqs_scheduled_dag.py").read_text() == (
        REPO / "dags" / "sqs_scheduled_dag.py"
    ).read_text()
    env_file = dest / ".env"
    env_file.write_text(
        env_file.read_text().replace("AIRFLOW_UI_PORT=8080", "AIRFLOW_UI_PORT=9090")
    )
    kept = deploy(*_args(inputs))
    assert kept.returncode == 0 and "edited by hand" in kept.stdout
    assert "AIRFLOW_UI_PORT=9090" in env_file.read_text()
    forced = deploy(*_args(inputs, "--force"))
    assert forced.returncode == 0 and "AIRFLOW_UI_PORT=8080" in env_file.read_text()
    assert _digest(dest / "secrets") == secrets_before, "--force never replaces secrets"


@pytest.mark.integration
def test_redeploy_from_another_folder_applies_a_changed_option(inputs, tmp_path, monkeypatch):
    """The .env stamp is checked against the destination's .env wherever deploy.sh runs from."""
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    assert deploy(*_args(inputs)).returncode == 0
    again = deploy(*_args(inputs, "--ui-port", "9191"))
    assert again.returncode == 0 and "edited by hand" not in again.stdout, again.stdout
    assert "AIRFLOW_UI_PORT=9191" in (inputs["dest"] / ".env").read_text()


@pytest.mark.integration
def test_dev_and_prod_env_differ_only_where_they_must(inputs, tmp_path):
    assert deploy(*_args(inputs)).returncode == 0
    prod_inputs = {**inputs, "dest": tmp_path / "prod"}
    assert deploy(*_args(prod_inputs, env="prod")).returncode == 0

    def parse(path):
        return dict(
            line.split("=", 1)
            for line in path.read_text().splitlines()
            if line and not line.startswith("#")
        )

    dev, prod = parse(inputs["dest"] / ".env"), parse(prod_inputs["dest"] / ".env")
    assert set(dev) == set(prod)
    assert {k for k in dev if dev[k] != prod[k]} == {
        "DEPLOY_ENV",
        "COMPOSE_PROJECT_NAME",
        "AIRFLOW_AUTH",
        "AIRFLOW_AUTH_MANAGER",
        "GLACIER_SYNC_INSTANCE_ID",
    }
    assert (dev["AIRFLOW_AUTH"], prod["AIRFLOW_AUTH"]) == ("simple", "fab")
    assert prod["AIRFLOW_AUTH_MANAGER"].endswith(".FabAuthManager")
    assert (dev["COMPOSE_PROJECT_NAME"], prod["COMPOSE_PROJECT_NAME"]) == (
        "bdrc-dev-instance",
        "bdrc-prod-prod",
    )


@pytest.mark.integration
@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((), "name the secrets to rotate: fernet jwt api-secret"),
        (("nope",), "unknown secret 'nope'; give one or more of: fernet"),
        (("aws",), "aws needs --aws-credentials FILE"),
        (("aws", "--aws-credentials", "/nonexistent"), "is not a readable, non-empty file"),
        (("jwt", "--aws-credentials", "CREDS"), "--aws-credentials is for the aws secret"),
        (("aws", "--aws-credentials", "OTHER"), "uses AWS profile [default] but AWS credentials"),
        (("redis",), "no Celery broker (deployed without --executor celery): drop redis"),
        (("flower",), "no Flower (deployed without --flower on): drop flower"),
        (("postgres", "URL"), "secrets/progress_db_url names the stack's PostgreSQL in a form"),
        (("jwt", "--wait"), "unknown option --wait"),
    ],
)
def test_rotate_refuses_in_one_line_before_touching_anything(inputs, args, message):
    assert deploy(*_args(inputs)).returncode == 0
    secrets = inputs["dest"] / "secrets"
    before = _digest(secrets)
    other = inputs["dest"].parent / "credentials-of-another-profile"
    other.write_text(CREDS.replace("[default]", "[other]"))
    if "URL" in args:  # a progress database URL on the stack's PostgreSQL, by another user
        (secrets / "progress_db_url").write_text("postgresql://glacier:pw@postgres:5432/gs\n")
        before = _digest(secrets)
        args = [a for a in args if a != "URL"]
    args = [{"CREDS": str(inputs["creds"]), "OTHER": str(other)}.get(a, a) for a in args]
    result = deploy("rotate", "--dest", inputs["dest"], *args)
    assert result.returncode == 2, result.stdout + result.stderr
    assert result.stderr.startswith("deploy.sh rotate: ") and message in result.stderr
    assert len(result.stderr.splitlines()) == 1 and result.stdout == ""
    assert _digest(secrets) == before and not (secrets / ".rotating").exists()


@pytest.mark.integration
def test_an_interrupted_rotation_is_finished_before_another(inputs):
    assert deploy(*_args(inputs)).returncode == 0
    staged = inputs["dest"] / "secrets" / ".rotating"
    staged.mkdir()
    (staged / "postgres").write_text("staged-before-a-crash")
    (staged / "jwt").write_text("staged-before-a-crash")
    result = deploy("rotate", "--dest", inputs["dest"], "fernet")
    assert result.returncode == 2
    finish = f"finish it first with ./deploy.sh rotate --dest {inputs['dest']} jwt postgres"
    assert finish in result.stderr, result.stderr
    # A re-deploy would write secrets under it: refused too, before anything is written.
    before = _digest(inputs["dest"] / "secrets")
    result = deploy(*_args(inputs))
    assert result.returncode == 2 and finish in result.stderr, result.stderr
    assert _digest(inputs["dest"] / "secrets") == before
    backup = inputs["dest"].parent / "a-backup.tar"
    backup.write_bytes(b"")
    result = deploy("restore", "--dest", inputs["dest"], "--from", backup)
    assert result.returncode == 2 and finish in result.stderr, result.stderr
    # The command it names is taken: staged credentials need no --aws-credentials again (it then
    # needs the running stack, which this test has not: exit 1, past the usage checks).
    (staged / "aws").write_text(CREDS)
    finishing = deploy("rotate", "--dest", inputs["dest"], "jwt", "postgres", "aws")
    assert finishing.returncode == 1, finishing.stderr
    assert "--aws-credentials" not in finishing.stderr and not list(staged.glob("*.part"))
    assert deploy("rotate", "-h").stdout.startswith("deploy.sh rotate - ")


def _env(dest: Path) -> dict[str, str]:
    lines = (dest / ".env").read_text().splitlines()
    return dict(line.split("=", 1) for line in lines if line and not line.startswith("#"))


@pytest.mark.integration
def test_names_are_kept_on_redeploy_and_options_win(inputs):
    """Project name, sign-in and admin stay what the instance has unless an option changes them."""
    assert deploy(*_args(inputs, "--project-name", "archive-a", "--auth", "fab")).returncode == 0
    again = deploy(*_args(inputs, "--admin-user", "opsadmin"))
    assert again.returncode == 0, again.stderr
    env = _env(inputs["dest"])
    assert (env["COMPOSE_PROJECT_NAME"], env["AIRFLOW_AUTH"]) == ("archive-a", "fab")
    assert env["AIRFLOW_ADMIN_USER"] == "opsadmin"
    assert "user opsadmin" in again.stdout
    assert "-BDRC_IMAGE" not in again.stdout and "+AIRFLOW_ADMIN_USER=opsadmin" in again.stdout
    for bad, message in [
        (("--auth", "ldap"), "--auth must be simple or fab"),
        (("--project-name", "archive-b"), "would change this instance's COMPOSE_PROJECT_NAME"),
        (("--env", "prod"), "would change this instance's DEPLOY_ENV (now dev)"),
        (("--admin-user", "-x"), "--admin-user '-x'"),
    ]:
        result = deploy(*_args(inputs, *bad))
        assert result.returncode == 2 and message in result.stderr, result.stderr
    assert _env(inputs["dest"]) == env, "a refused re-deploy changes nothing"
    fresh = deploy(
        *_args({**inputs, "dest": inputs["dest"].parent / "fresh"}, "--project-name", "Bad Name")
    )
    assert fresh.returncode == 2 and "lowercase letters, digits" in fresh.stderr


@pytest.mark.integration
def test_a_redeploy_with_only_dest_keeps_every_option(inputs):
    """`deploy.sh --dest DIR` again (an operator who forgot the options) changes nothing."""
    first = _args(
        inputs,
        "--image",
        "bdrc-airflow:7",
        "--ui-port",
        "9393",
        "--aws-endpoint-url",
        "http://moto:5000",
        "--postgres-image",
        "postgres:17-bookworm",
    )
    assert deploy(*first).returncode == 0
    before = _env(inputs["dest"])
    again = deploy("--dest", inputs["dest"])
    assert again.returncode == 0, again.stderr
    assert ".env: unchanged" in again.stdout
    assert _env(inputs["dest"]) == before
    assert before["SYNC_ACCESS_UID"] == "4242" and before["ARCH_ROOT"] == str(inputs["archive"])
    if os.getuid() == 0:
        assert (inputs["dest"] / "secrets" / "aws").stat().st_uid == 4242


@pytest.mark.integration
def test_a_kept_hand_edit_of_the_uid_decides_who_owns_the_secrets(inputs):
    if os.getuid() != 0:
        pytest.skip("chown needs root")
    assert deploy(*_args(inputs)).returncode == 0
    env_file = inputs["dest"] / ".env"
    env_file.write_text(
        env_file.read_text().replace("SYNC_ACCESS_UID=4242", "SYNC_ACCESS_UID=4343")
    )
    assert deploy(*_args(inputs)).returncode == 0
    assert (inputs["dest"] / "secrets" / "aws").stat().st_uid == 4343
    assert (inputs["dest"] / "data").stat().st_uid == 4343


@pytest.mark.integration
def test_a_changed_secret_is_written_in_place_and_asks_for_a_recreate(inputs):
    assert deploy(*_args(inputs)).returncode == 0
    aws = inputs["dest"] / "secrets" / "aws"
    inode = aws.stat().st_ino
    inputs["creds"].write_text(CREDS.replace("AKIATEST", "AKIANEW"))
    again = deploy(*_args(inputs))
    assert again.returncode == 0 and "AKIANEW" in aws.read_text()
    assert aws.stat().st_ino == inode, "the running containers' bind mount sees the new content"
    assert stat.S_IMODE(aws.stat().st_mode) == 0o600


@pytest.mark.integration
def test_hand_edit_is_shown_with_what_the_deploy_would_change(inputs):
    assert deploy(*_args(inputs)).returncode == 0
    env_file = inputs["dest"] / ".env"
    env_file.write_text(
        env_file.read_text().replace("DAG_REFRESH_SECONDS=60", "DAG_REFRESH_SECONDS=30")
    )
    kept = deploy(*_args(inputs, "--image", "bdrc-airflow:2"))
    assert kept.returncode == 0, kept.stderr
    mine, theirs = kept.stdout.split("what this deploy would change")
    assert "-DAG_REFRESH_SECONDS=60\n+DAG_REFRESH_SECONDS=30" in mine
    assert "-BDRC_IMAGE=bdrc-airflow:latest\n+BDRC_IMAGE=bdrc-airflow:2" in theirs
    assert _env(inputs["dest"])["BDRC_IMAGE"] == "bdrc-airflow:latest", "the hand edit is kept"
    forced = deploy(*_args(inputs, "--image", "bdrc-airflow:2", "--force"))
    assert forced.returncode == 0 and _env(inputs["dest"])["BDRC_IMAGE"] == "bdrc-airflow:2"
    again = deploy(*_args(inputs, "--image", "bdrc-airflow:2"))
    assert ".env: unchanged" in again.stdout and "edited by hand" not in again.stdout


@pytest.mark.integration
def test_build_artefacts_and_hidden_files_never_reach_dags(inputs, tmp_path):
    assert deploy(*_args(inputs)).returncode == 0
    dags = inputs["dest"] / "dags"
    (dags / "glacier_sync.egg-info").mkdir()
    (dags / "glacier_sync.egg-info" / "PKG-INFO").write_text("Name: glacier-sync")
    (dags / ".sqs_scheduled_dag.py.deploying").write_text("half a file")
    assert deploy(*_args(inputs)).returncode == 0
    assert sorted(p.name for p in dags.iterdir()) == [
        "down_scheduled_dag.py",
        "restore_request_dag.py",
        "sqs_event_dag.py",
        "sqs_scheduled_dag.py",
    ]


@pytest.mark.integration
def test_dry_run_changes_nothing(inputs):
    result = deploy(*_args(inputs, "--dry-run"))
    assert result.returncode == 0, result.stderr
    assert "would: " in result.stdout and not inputs["dest"].exists()


@pytest.mark.integration
@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"--dest": None}, "--dest DIR is required"),
        ({"--env": "staging"}, "--env must be dev or prod"),
        ({"--sync-uid": "archive"}, "--sync-uid must be a numeric uid"),
        ({"--arch-root": "/no/such/archive"}, "--arch-root /no/such/archive does not exist"),
        (
            {"--aws-credentials": "/no/such/creds"},
            "--aws-credentials /no/such/creds does not exist",
        ),
        ({"--pipeline-config": "/no/such.toml"}, "--pipeline-config /no/such.toml does not exist"),
        ({"--aws-endpoint-url": "moto:5000"}, "must be an http(s) URL"),
    ],
)
def test_each_input_error_is_named_before_anything_is_written(inputs, change, message):
    args = dict(zip(_args(inputs)[::2], _args(inputs)[1::2], strict=True))
    args.update(change)
    argv = [x for k, v in args.items() if v is not None for x in (k, v)]
    result = deploy(*argv)
    assert result.returncode == 2 and message in result.stderr, result.stderr
    assert not inputs["dest"].exists()


@pytest.mark.integration
def test_profile_section_absent(inputs):
    inputs["config"].write_text(CONFIG.replace('profile = "default"', 'profile = "nlm"'))
    result = deploy(*_args(inputs))
    assert result.returncode == 2
    assert "uses AWS profile [nlm]" in result.stderr and "has no [nlm] section" in result.stderr
    assert not inputs["dest"].exists()


@pytest.mark.integration
def test_invalid_toml_and_ini_are_named_before_anything_is_written(inputs):
    inputs["config"].write_text('[[queues]]\nname = "tbrc\n')
    result = deploy(*_args(inputs))
    assert result.returncode == 2 and len(result.stderr.splitlines()) == 1
    assert f"deploy.sh: {inputs['config']} is not valid TOML: " in result.stderr
    inputs["config"].write_text(CONFIG)
    inputs["creds"].write_text(CREDS.replace("[default]\n", ""))
    result = deploy(*_args(inputs))
    assert result.returncode == 2 and len(result.stderr.splitlines()) == 1
    assert f"deploy.sh: AWS credentials file {inputs['creds']} is not valid INI" in result.stderr
    assert "not-a-real-secret" not in result.stderr and "AKIATEST" not in result.stderr
    assert not inputs["dest"].exists()


@pytest.mark.integration
def test_bad_credentials_and_db_config(inputs, tmp_path):
    inputs["creds"].write_text("[default]\naws_access_key_id = AKIA\n")
    result = deploy(*_args(inputs))
    assert result.returncode == 2 and "lacks aws_secret_access_key" in result.stderr
    inputs["creds"].write_text(CREDS)
    db = tmp_path / "db"
    db.write_text("host=db user=x\n")
    result = deploy(*_args(inputs, "--db-config", db))
    assert result.returncode == 2 and "must hold a database URL" in result.stderr
    db.write_text("mysql+pymysql://u:pw@db/progress\n")
    assert deploy(*_args(inputs, "--db-config", db)).returncode == 0
    assert (inputs["dest"] / "secrets" / "progress_db_url").read_text() == db.read_text()


@pytest.mark.integration
def test_prod_requirements(inputs):
    result = deploy(
        "--dest",
        inputs["dest"],
        "--env",
        "prod",
        "--sync-uid",
        "4242",
        "--aws-credentials",
        inputs["creds"],
    )
    assert result.returncode == 2 and "prod needs --arch-root" in result.stderr
    result = deploy(*_args(inputs, "--aws-endpoint-url", "http://moto:5000", env="prod"))
    assert result.returncode == 2 and "is for dev" in result.stderr


# -- bdrc-docker.sh: requirements resolved by uv, the build folder ------------------------------
# (no Docker engine needed with --prepare-only; uv reaches PyPI)

BASE_LOCK = REPO / "requirements" / "base.lock"


def build_script(*args):
    return subprocess.run(
        ["bash", str(REPO / "bdrc-docker.sh"), *map(str, args)],
        capture_output=True,
        text=True,
        timeout=1200,
    )


def pins(text: str) -> dict[str, str]:
    """name -> version of each `name==version` line of a requirements file."""
    out = {}
    for line in text.splitlines():
        if line and not line.lstrip().startswith("#"):
            name, version = line.split("==")
            out[name] = version
    return out


def prepare_with(tmp_path, *contents):
    """bdrc-docker.sh --prepare-only with one --requirements file per text."""
    files = []
    for index, text in enumerate(contents):
        path = tmp_path / f"extra{index}.txt"
        path.write_text(text)
        files.append(path)
    args = [x for path in files for x in ("--requirements", path)]
    return build_script("--build-dir", tmp_path / "build", *args, "--prepare-only"), files


@pytest.mark.integration
@pytest.mark.parametrize("conflict", ["boto3==1.40.0", "boto3<1.40", "Boto3>=2"])
def test_conflicting_requirements_stop_before_building(tmp_path, conflict):
    result, [extra] = prepare_with(tmp_path, f"six>=1.0  # the audit tool\n{conflict}\n")
    assert result.returncode == 1
    assert (
        f"bdrc-docker.sh: requirements do not resolve: requirements/base.lock and {extra} "
        in result.stderr
    ), result.stderr
    boto3 = pins(BASE_LOCK.read_text())["boto3"]
    assert f"boto3=={boto3} and {conflict.lower()}" in result.stderr, "uv's explanation follows"
    assert not (tmp_path / "build" / "wheels").exists()
    assert not (tmp_path / "build" / "requirements.txt").exists()


@pytest.mark.integration
def test_indirect_conflict_with_a_dependency_of_airflow(tmp_path):
    """sqlmodel 0.0.8 needs pydantic<2; base.lock pins Airflow's pydantic 2."""
    result, [extra] = prepare_with(tmp_path, "sqlmodel==0.0.8\n")
    assert result.returncode == 1
    assert f"requirements do not resolve: requirements/base.lock and {extra} " in result.stderr
    pydantic = pins(BASE_LOCK.read_text())["pydantic"]
    assert "sqlmodel==0.0.8 depends on pydantic>=1.8.2,<2.0.0" in result.stderr
    assert f"you require pydantic=={pydantic}" in result.stderr
    assert not (tmp_path / "build" / "wheels").exists()


@pytest.mark.integration
def test_conflict_between_two_extra_files_names_both(tmp_path):
    result, [first, second] = prepare_with(tmp_path, "pysocks==1.7.1\n", "PySocks<1.7\n")
    assert result.returncode == 1
    assert (
        f"requirements do not resolve: requirements/base.lock and {first}, {second} "
        in result.stderr
    )


@pytest.mark.integration
@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("-r other.txt\n", "line 1: pip options (-r) are not supported"),
        (
            "six\n  --index-url https://token@example.org/simple\n",
            "line 2: pip options (--index-url) are not supported",
        ),
        ("-e ./audit-tool\n", "line 1: pip options (-e) are not supported"),
    ],
)
def test_pip_options_are_refused(tmp_path, text, message):
    result, [extra] = prepare_with(tmp_path, text)
    assert result.returncode == 1
    assert result.stderr == (
        f"bdrc-docker.sh: --requirements {extra} {message}; list the requirements themselves\n"
    )
    assert not (tmp_path / "build").exists(), "refused before anything is made"


@pytest.mark.integration
def test_garbage_is_refused_naming_the_file(tmp_path):
    result, [extra] = prepare_with(tmp_path, "six\nnot a requirement ===\n")
    assert result.returncode == 1
    assert "bdrc-docker.sh: --requirements: a line is not a requirement" in result.stderr
    assert f"Couldn't parse requirement in `{extra}`" in result.stderr
    assert not (tmp_path / "build" / "requirements.txt").exists()


@pytest.mark.integration
@pytest.mark.parametrize(
    ("name", "content", "said"),
    [
        ("tool/conf.ini", "[default]\naws_secret_access_key = abc\n", "conf.ini:2 holds a secret"),
        ("db.properties", "user=a\ndb_password = hunter2\n", "db.properties:2 holds a secret"),
        ("keys.yml", "id: AKIAIOSFODNN7EXAMPLE\n", "keys.yml:1 holds a secret"),
        ("client.yml", "api_key: 0123abcd\n", "client.yml:1 holds a secret"),
        ("deploy", "-----BEGIN OPENSSH PRIVATE KEY-----\nb3Bl\n", "deploy:1 holds a secret"),
        ("tls/server.PEM", "anything", "server.PEM is a credentials or key file"),
        (".aws/credentials", "[default]\n", "credentials is a credentials or key file"),
    ],
)
def test_a_config_dir_holding_credentials_never_enters_the_image(tmp_path, name, content, said):
    """The folder is refused before anything is built, naming the file and line, never the
    value; a folder of plain settings beside passes that check (its build is the test below)."""
    config = tmp_path / "audit-config"
    (config / name).parent.mkdir(parents=True, exist_ok=True)
    (config / name).write_text(content)
    (config / "audit.properties").write_text("db=archive\ntoken_url = \n")
    build = tmp_path / "build"
    result = build_script("--build-dir", build, "--config-dir", config, "--prepare-only")
    assert result.returncode == 1, result.stdout + result.stderr
    [line] = result.stderr.strip().splitlines()
    assert said in line and "keep it out of the image" in line, line
    for secret in ("abc", "hunter2", "AKIAIOSFODNN7EXAMPLE", "0123abcd", "b3Bl"):
        assert secret not in line.split(str(config))[-1]
    assert not build.exists(), "refused before the build folder is made"


# The image's wheelhouse is built (pip wheel of every locked package, ~1 min): the
# docker tier, with the image builds it feeds.
@pytest.mark.docker
def test_build_folder_holds_scripts_config_and_resolved_requirements(tmp_path):
    scripts = tmp_path / "archive-scripts"
    scripts.mkdir()
    (scripts / "syncOneWork.sh").write_text("#!/bin/bash\necho the archive's own\n")
    (scripts / "syncAnything.sh").write_text("#!/bin/bash\n")
    config = tmp_path / "audit-config"
    config.mkdir()
    (config / "audit.properties").write_text("db=archive\n")
    extra = tmp_path / "audit-requirements.txt"
    extra.write_text("six>=1.0\nRequests[socks]<3  # proxies\nBoto3>=1.40\n")
    build = tmp_path / "build"
    build.mkdir()
    (build / "stale.txt").write_text("from an earlier build")
    result = build_script(
        "--build-dir",
        build,
        "--rebuild",
        "--sync-scripts",
        scripts,
        "--config-dir",
        config,
        "--requirements",
        extra,
        "--requirements",
        BASE_LOCK,  # the lock again: it resolves with itself
        "--prepare-only",
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert not (build / "stale.txt").exists(), "--rebuild wipes the build folder"
    assert "the archive's own" in (build / "sync-scripts" / "syncOneWork.sh").read_text()
    assert (build / "sync-scripts" / "syncAnything.sh").is_file()
    assert (build / "config" / "audit.properties").read_text() == "db=archive\n"
    resolved, base = pins((build / "requirements.txt").read_text()), pins(BASE_LOCK.read_text())
    assert resolved["apache-airflow"] == "3.3.2"
    assert base.items() <= resolved.items(), "every pin of base.lock is kept"
    assert set(resolved) - set(base) == {"pysocks"}, "requests[socks] brings PySocks, pinned"
    wheels = {p.name.split("-")[0].lower() for p in (build / "wheels").iterdir()}
    assert {"apache_airflow", "boto3", "bagit", "six", "pysocks", "glacier_sync"} <= wheels
    assert sorted(p.name for p in (build / "dags").iterdir()) == [
        "down_scheduled_dag.py",
        "restore_request_dag.py",
        "sqs_event_dag.py",
        "sqs_scheduled_dag.py",
    ]
    assert (build / "Dockerfile-bdrc").is_file() and (build / "bdrc-docker-compose.yml").is_file()
    env = dict(line.split("=", 1) for line in (build / "build.env").read_text().splitlines())
    assert env["COMPOSE_BUILD_DIR"] == str(build) and env["PY_REQS"] == "requirements.txt"
    whole_config = build_script(
        "--build-dir", build, "--config-dir", Path.home() / ".config", "--prepare-only"
    )
    if (Path.home() / ".config").is_dir():
        assert whole_config.returncode == 1 and "not" in whole_config.stderr


@pytest.mark.integration
def test_build_only_refuses_what_it_cannot_build_before_touching_docker(tmp_path):
    """--build-only builds a prepared folder as it was prepared: options that would have
    changed it, a folder never prepared, or a build.env it did not write are refused in one
    line each, and no build starts (no Docker engine is needed to see it)."""
    build = tmp_path / "build"
    build.mkdir()
    for extra in (
        ["--image", "x:1"],
        ["--rebuild"],
        ["--prepare-only"],
        ["--base-image", "y"],
        ["--sync-scripts", "/nowhere"],
        ["--config-dir", "/nowhere"],
    ):
        result = build_script("--build-dir", build, "--build-only", *extra)
        assert result.returncode == 1, result.stderr
        assert f"leave out {extra[0]} (give them to the --prepare-only run)" in result.stderr
        assert "building" not in result.stdout
    result = build_script("--build-dir", build, "--build-only")
    assert result.returncode == 1 and result.stderr.count("\n") == 1, result.stderr
    assert f"{build}/build.env is missing; fill {build} first with --prepare-only" in result.stderr
    (build / "build.env").write_text("BDRC_IMAGE=x:1\nPATH=/nowhere\n")
    result = build_script("--build-dir", build, "--build-only")
    assert result.returncode == 1, result.stderr
    assert "line 'PATH=...' is not one bdrc-docker.sh writes" in result.stderr
    assert "building" not in result.stdout


# -- deploy.sh user|backup|restore: what they refuse before touching Docker ---------------------


@pytest.mark.integration
def test_admin_subcommands_need_an_instance(tmp_path):
    for sub in ("user", "backup", "restore"):
        result = deploy(sub, "--dest", tmp_path / "nothing", *(["list"] if sub == "user" else []))
        assert result.returncode == 2, result.stderr
        assert "is not an instance made by deploy.sh" in result.stderr
        assert deploy(sub, "-h").stdout.startswith("deploy.sh user|backup|restore - ")


@pytest.mark.integration
def test_user_commands_need_fab_sign_in(inputs):
    assert deploy(*_args(inputs)).returncode == 0
    result = deploy("user", "--dest", inputs["dest"], "add", "alice", "--role", "Op")
    assert result.returncode == 2 and "re-deploy it with --auth fab" in result.stderr


@pytest.mark.integration
def test_restore_refuses_what_is_not_a_backup(inputs, tmp_path):
    assert deploy(*_args(inputs)).returncode == 0
    bogus = tmp_path / "bogus.tar"
    bogus.write_bytes(b"not a tar")
    result = deploy("restore", "--dest", inputs["dest"], "--from", bogus)
    assert result.returncode == 2 and "is not a backup made by deploy.sh backup" in result.stderr
    result = deploy("restore", "--dest", inputs["dest"])
    assert result.returncode == 2 and "--from FILE is required" in result.stderr
    result = deploy("backup", "--dest", inputs["dest"], "--ot", "x.tar")
    assert result.returncode == 2 and "unknown option --ot" in result.stderr


def _env(dest: Path) -> dict[str, str]:
    return dict(
        line.split("=", 1)
        for line in (dest / ".env").read_text().splitlines()
        if line and not line.startswith("#")
    )


@pytest.mark.integration
def test_celery_executor_workers_and_flower_are_written_and_inherited(inputs):
    first = deploy(*_args(inputs, "--executor", "celery", "--workers", "3", "--flower", "on"))
    assert first.returncode == 0, first.stderr
    env = _env(inputs["dest"])
    assert env["AIRFLOW_EXECUTOR"] == "CeleryExecutor" and env["CELERY_WORKERS"] == "3"
    assert env["COMPOSE_PROFILES"] == "celery,flower" and env["FLOWER_PORT"] == "5555"
    assert "user flower, password in" in first.stdout
    instance = env["GLACIER_SYNC_INSTANCE_ID"]
    assert re.fullmatch(r"gs-[0-9a-f]{16}", instance)
    assert (inputs["dest"] / "secrets" / "flower_password").stat().st_size >= 32
    redis_password = (inputs["dest"] / "secrets" / "redis_password").read_text().strip()
    assert len(redis_password) >= 32
    redis_conf = (inputs["dest"] / "secrets" / "redis_conf").read_text()
    assert f"requirepass {redis_password}\n" in redis_conf, "the broker asks for the password"

    again = deploy(*_args(inputs))
    assert again.returncode == 0 and ".env: unchanged" in again.stdout, again.stdout
    assert _env(inputs["dest"]) == env, "a re-deploy keeps executor, workers, Flower and id"

    fewer = deploy(*_args(inputs, "--workers", "2", "--flower", "off"))
    assert fewer.returncode == 0, fewer.stderr
    env = _env(inputs["dest"])
    assert (env["CELERY_WORKERS"], env["COMPOSE_PROFILES"]) == ("2", "celery")
    assert env["GLACIER_SYNC_INSTANCE_ID"] == instance, "the instance keeps its id"

    local = deploy(*_args(inputs, "--executor", "local"))
    assert local.returncode == 0, local.stderr
    env = _env(inputs["dest"])
    assert env["AIRFLOW_EXECUTOR"] == "LocalExecutor" and env["COMPOSE_PROFILES"] == ""
    assert env["CELERY_WORKERS"] == "0"


@pytest.mark.integration
@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--executor", "kubernetes"], "--executor must be local or celery, not 'kubernetes'"),
        (["--workers", "2"], "--workers 2 needs --executor celery"),
        (["--flower", "on"], "--flower on needs --executor celery"),
        (["--executor", "celery", "--workers", "many"], "--workers must be a number of workers"),
        (["--executor", "celery", "--workers", "65"], "--workers must be a number of workers"),
        (["--executor", "celery", "--flower", "yes"], "--flower must be on or off, not 'yes'"),
    ],
)
def test_executor_options_refuse_bad_values_before_writing(inputs, extra, message):
    result = deploy(*_args(inputs, *extra))
    assert result.returncode == 2 and message in result.stderr, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert not inputs["dest"].exists()


@pytest.mark.integration
def test_statsd_is_off_by_default_then_on_and_inherited(inputs):
    assert deploy(*_args(inputs)).returncode == 0
    env = _env(inputs["dest"])
    assert (env["STATSD_ON"], env["STATSD_HOST"], env["GLACIER_SYNC_STATSD_HOST"]) == (
        "False",
        "",
        "",
    )
    assert deploy(*_args(inputs, "--statsd", "statsd.example.org:9125")).returncode == 0
    env = _env(inputs["dest"])
    assert (env["STATSD_ON"], env["STATSD_HOST"], env["STATSD_PORT"]) == (
        "True",
        "statsd.example.org",
        "9125",
    )
    assert env["GLACIER_SYNC_STATSD_HOST"] == "statsd.example.org"
    again = deploy(*_args(inputs))
    assert again.returncode == 0 and ".env: unchanged" in again.stdout, "kept on a re-deploy"
    assert deploy(*_args(inputs, "--statsd", "off")).returncode == 0
    assert _env(inputs["dest"])["STATSD_ON"] == "False"


@pytest.mark.integration
@pytest.mark.parametrize("value", ["statsd.example.org", "host:port", "h:70000", ":8125"])
def test_statsd_refuses_a_malformed_address(inputs, value):
    result = deploy(*_args(inputs, "--statsd", value))
    assert result.returncode == 2 and "--statsd" in result.stderr, result.stderr
    assert not inputs["dest"].exists()


@pytest.mark.integration
def test_the_secrets_table_lists_every_file_deploy_writes_with_its_mode(inputs):
    """docs/operations.md's `secrets/` row names every file a deploy writes there, and the
    mode of each that is not 0600 (a drift test: it fails when a secret is added unsaid)."""
    assert deploy(*_args(inputs)).returncode == 0
    row = next(
        line
        for line in (REPO / "docs" / "operations.md").read_text().splitlines()
        if line.startswith("| `secrets/` (0700) |")
    )
    for path in sorted((inputs["dest"] / "secrets").iterdir()):
        mode = f"{path.stat().st_mode & 0o777:04o}"
        assert f"`{path.name}`" in row, f"secrets/{path.name} is not in docs/operations.md"
        said = "mode 0600" if mode == "0600" else f"`{path.name}` (mode {mode}"
        assert said in row, f"secrets/{path.name} is mode {mode}; the docs do not say so"


@pytest.mark.unit
def test_the_revision_table_lists_every_migration():
    """docs/upgrading.md's table has a row for every revision the code ships."""
    from glacier_sync.records.progress_db import known_revisions

    text = (REPO / "docs" / "upgrading.md").read_text()
    missing = [revision for revision in known_revisions() if f"| `{revision}` |" not in text]
    assert not missing, f"docs/upgrading.md's revision table lacks {missing}"


# -- deploy.sh: the notice settings (e-mail through SMTP, a webhook) ----------------------------


def _container_settings(dest: Path, monkeypatch):
    """The pipeline's settings as the stack's containers get them: the Compose file's
    environment with the instance's .env interpolated (``${X:-default}``), its secrets read
    from ``secrets/`` where Compose mounts them under /run/secrets."""
    compose = yaml.safe_load((dest / "docker-compose.yaml").read_text())
    values = _env(dest)

    def interpolate(text: str) -> str:
        return re.sub(
            r"\$\{(\w+)(?::-([^}]*))?\}",
            lambda m: values.get(m.group(1)) or (m.group(2) or ""),
            text,
        ).replace("/run/secrets/", f"{dest}/secrets/")

    for name in [n for n in os.environ if n.startswith("GLACIER_SYNC_")]:
        monkeypatch.delenv(name)
    environment = compose["x-airflow-common"]["environment"]
    for name, value in environment.items():
        if name.startswith("GLACIER_SYNC_") and name not in {
            "GLACIER_SYNC_CONFIG",
            "GLACIER_SYNC_DATA_ROOT",
            "GLACIER_SYNC_WORK_ROOT",
            "GLACIER_SYNC_ARCHIVE_ROOT",
        }:
            monkeypatch.setenv(name, interpolate(str(value)))
    return load_settings(config_file=dest / "config" / "glacier-sync.toml")


@pytest.mark.integration
def test_notice_settings_reach_the_pipeline_and_the_secrets_stay_secrets(inputs, monkeypatch):
    """deploy.sh's e-mail and webhook options become the pipeline's alert settings in the
    containers (the password and the webhook URL as 0600 secrets, never in .env); a re-deploy
    keeps them; `off` turns them off; the config file decides what deploy.sh left unset."""
    tmp = inputs["dest"].parent
    password, hook = tmp / "smtp-password", tmp / "webhook-url"
    password.write_text("mail-s3cret\n")
    hook.write_text("https://hooks.example.org/T0/abc-token\n")
    alerts = [
        "--alert-email-to", "ops@archive.example,lead@archive.example",
        "--alert-email-from", "glacier-sync@archive.example",
        "--smtp", "mail.archive.example:587",
        "--smtp-user", "glacier",
        "--smtp-password-file", password,
        "--alert-webhook-url-file", hook,
    ]  # fmt: skip
    result = deploy(*_args(inputs, *alerts))
    assert result.returncode == 0, result.stderr
    dest = inputs["dest"]
    env_text = (dest / ".env").read_text()
    assert "mail-s3cret" not in env_text and "abc-token" not in env_text
    assert "mail-s3cret" not in result.stdout + result.stderr
    for secret in ("alert_smtp_password", "alert_webhook_url"):
        assert stat.S_IMODE((dest / "secrets" / secret).stat().st_mode) == 0o600
    settings = _container_settings(dest, monkeypatch)
    assert settings.alert_email_to == ["ops@archive.example", "lead@archive.example"]
    assert settings.alert_email_from == "glacier-sync@archive.example"
    assert (settings.alert_smtp_host, settings.alert_smtp_port) == ("mail.archive.example", 587)
    assert settings.alert_smtp_user == "glacier" and settings.alert_smtp_starttls is True
    assert settings.alert_smtp_password_file.read_text().strip() == "mail-s3cret"
    assert settings.webhook_url().get_secret_value() == "https://hooks.example.org/T0/abc-token"
    assert settings.ui_base_url == "http://localhost:8080"

    assert "abc-token" not in result.stdout + result.stderr
    again = deploy("--dest", dest)
    assert again.returncode == 0, again.stderr
    assert _container_settings(dest, monkeypatch).alert_smtp_user == "glacier", "kept"
    assert (dest / "secrets" / "alert_smtp_password").read_text().strip() == "mail-s3cret"
    dry = deploy("--dest", dest, "--smtp-user", "off", "--dry-run")
    assert dry.returncode == 0 and "would: empty secrets/alert_smtp_password" in dry.stdout
    assert (dest / "secrets" / "alert_smtp_password").read_text().strip() == "mail-s3cret"
    off = deploy(
        "--dest", dest, "--alert-email-to", "off", "--smtp-user", "off",
        "--alert-webhook-url-file", "off",
    )  # fmt: skip
    assert off.returncode == 0, off.stderr
    settings = _container_settings(dest, monkeypatch)
    assert settings.alert_email_to == [] and settings.webhook_url() is None
    assert (dest / "secrets" / "alert_smtp_password").read_text() == ""
    assert (dest / "secrets" / "alert_webhook_url").read_text() == ""
    # What deploy.sh leaves unset, the pipeline's config file decides (an empty variable is
    # no setting).
    config = dest / "config" / "glacier-sync.toml"
    config.write_text('alert_webhook_url = "https://other.example.org/hook"\n' + config.read_text())
    settings = _container_settings(dest, monkeypatch)
    assert settings.webhook_url().get_secret_value() == "https://other.example.org/hook"


@pytest.mark.integration
@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--alert-email-to", "ops@x.org"], "--alert-email-to needs --smtp HOST:PORT"),
        (["--alert-email-to", "ops", "--smtp", "m:25", "--alert-email-from", "a@b"],
         "'ops' is not an address"),
        (["--smtp", "mail.example.org"], "--smtp must be HOST:PORT"),
        (["--smtp", "m:25", "--smtp-user", "u"], "--smtp-user u needs --smtp-password-file"),
        (["--smtp", "m:25", "--smtp-user", "u", "--smtp-starttls", "off",
          "--smtp-password-file", "PASSWORD"], "the password must not cross the network in clear"),
        (["--smtp-password-file", "PASSWORD"], "--smtp-password-file needs --smtp-user"),
        (["--alert-webhook-url-file", "HOOK"], "must hold one line, one http(s) URL"),
        (["--alert-webhook-url-file", "TWO-LINES"], "must hold one line, one http(s) URL"),
        (["--alert-email-to", "a@b.org\nAIRFLOW_AUTH_MANAGER=x", "--smtp", "m:25",
          "--alert-email-from", "c@d.org"], "take one line each"),
        (["--alert-email-to", "a@b.org,", "--smtp", "m:25", "--alert-email-from", "c@d.org"],
         "separated by single commas"),
        (["--alert-email-to", '"q"@b.org', "--smtp", "m:25", "--alert-email-from", "c@d.org"],
         "is not an address"),
        (["--smtp", "m:25", "--smtp-user", "u ser"], "--smtp-user: use letters"),
        (["--smtp", "m:123456789012345678901"], "--smtp must be HOST:PORT"),
    ],
)  # fmt: skip
def test_each_bad_notice_option_is_one_line_and_writes_nothing(inputs, extra, message):
    tmp = inputs["dest"].parent
    (tmp / "password").write_text("pw\n")
    (tmp / "hook").write_text("https://user:xyzzy-9@hooks.example.org/x\n")
    (tmp / "two-lines").write_text("# the team's hook\nhttps://hooks.example.org/xyzzy-9\n")
    files = {"PASSWORD": "password", "HOOK": "hook", "TWO-LINES": "two-lines"}
    extra = [str(tmp / files[a]) if a in files else a for a in extra]
    result = deploy(*_args(inputs, *extra))
    assert result.returncode == 2, result.stderr
    assert message in result.stderr and result.stderr.count("\n") == 1, result.stderr
    assert "xyzzy-9" not in result.stderr, "the webhook's URL is never printed"
    assert not inputs["dest"].exists()
