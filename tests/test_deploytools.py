"""deploytools, run as deploy.sh runs it: python -m with PYTHONPATH=src, stdlib only.

Every run uses ``python -S``: no site-packages, so an import of anything outside the standard
library (pydantic, boto3, cryptography, ...) would fail these tests.
"""

from __future__ import annotations

import base64
import json
import os
import socket
import stat
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from helpers import REPO

from glacier_sync import aws
from glacier_sync.errors import ConfigError
from glacier_sync.settings import load_settings

pytestmark = pytest.mark.integration

CREDS = (
    "[default]\naws_access_key_id = AKIADEFAULT\naws_secret_access_key = s3cr3t-default\n"
    "[nlm]\naws_access_key_id = AKIANLM\naws_secret_access_key = s3cr3t-nlm\n"
)
CONFIG = """
[[queues]]
name = "tbrc"
queue_url = "https://sqs.us-east-1.amazonaws.com/123456789012/restores"
region = "us-east-1"

[[profiles.prod.queues]]
name = "nlm"
queue_url = "https://sqs.us-east-1.amazonaws.com/123456789012/nlm"
region = "us-east-1"
profile = "nlm"

[[profiles.prod.queues]]
name = "hooked"
queue_url = "https://sqs.us-east-1.amazonaws.com/123456789012/hooked"
region = "us-east-1"
profile = "absent-but-unused"
aws_conn_id = "aws_hooked"
"""


def tool(*args, stdin: str | None = None, timeout: float = 60) -> subprocess.CompletedProcess:
    env = {
        "PATH": os.environ["PATH"],
        "PYTHONPATH": str(REPO / "src"),
        "PYTHONDONTWRITEBYTECODE": "1",
    }
    return subprocess.run(
        [sys.executable, "-S", "-m", "deploytools", *map(str, args)],
        input=stdin,
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
    )


def test_the_harness_has_no_site_packages():
    """The -S runs below really lack the venv's packages (pydantic is one of them)."""
    result = subprocess.run(
        [sys.executable, "-S", "-c", "import pydantic"], capture_output=True, text=True
    )
    assert result.returncode == 1 and "No module named 'pydantic'" in result.stderr


def test_imports_only_the_standard_library():
    code = (
        "import sys, deploytools.commands, glacier_sync.credentials\n"
        "tops = {name.split('.')[0] for name in sys.modules}\n"
        "ours = {'glacier_sync', 'deploytools', '__main__'}\n"
        "print(sorted(tops - set(sys.stdlib_module_names) - ours))\n"
    )
    result = subprocess.run(
        [sys.executable, "-S", "-c", code],
        capture_output=True,
        text=True,
        env={"PYTHONPATH": str(REPO / "src"), "PYTHONDONTWRITEBYTECODE": "1"},
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_secret():
    first, second = tool("secret"), tool("secret")
    assert first.returncode == 0 and first.stderr == ""
    assert len(first.stdout.strip()) == 43, "32 random bytes, URL-safe base64 without padding"
    assert first.stdout != second.stdout
    short = tool("secret", "12").stdout.strip()
    assert len(short) == 16 and set(short) <= set(
        "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    )
    bad = tool("secret", "0")
    assert bad.returncode == 2 and "'0' is not a positive whole number" in bad.stderr


def test_fernet_key_is_one_cryptography_accepts():
    from cryptography.fernet import Fernet  # in the venv (Airflow's), not in the tool

    result = tool("fernet-key")
    assert result.returncode == 0
    key = result.stdout.strip()
    assert len(base64.urlsafe_b64decode(key)) == 32
    token = Fernet(key.encode()).encrypt(b"conn password")
    assert Fernet(key.encode()).decrypt(token) == b"conn password"
    assert tool("fernet-key").stdout != result.stdout


def test_check_toml(tmp_path):
    good = tmp_path / "good.toml"
    good.write_text(CONFIG)
    assert tool("check-toml", good).returncode == 0
    bad = tmp_path / "bad.toml"
    bad.write_text('[[queues]]\nname = "tbrc\n')
    result = tool("check-toml", bad)
    assert result.returncode == 1
    assert result.stderr.startswith(f"{bad} is not valid TOML: ") and "(at line 2," in result.stderr
    assert len(result.stderr.splitlines()) == 1
    missing = tool("check-toml", tmp_path / "none.toml")
    assert missing.returncode == 1 and "none.toml does not exist" in missing.stderr


@pytest.fixture
def creds(tmp_path):
    path = tmp_path / "aws"
    path.write_text(CREDS)
    config = tmp_path / "glacier-sync.toml"
    config.write_text(CONFIG)
    return path, config


def test_check_aws_credentials_against_every_queue(creds):
    path, config = creds
    result = tool("check-aws-credentials", path, config)
    assert result.returncode == 0 and result.stdout == result.stderr == ""
    assert tool("check-aws-credentials", path).returncode == 0, "without CONFIG: the file alone"


def test_check_aws_credentials_section_named_by_a_queue_profile_missing(creds):
    path, config = creds
    path.write_text(CREDS.split("[nlm]")[0])
    result = tool("check-aws-credentials", path, config)
    assert result.returncode == 1
    assert result.stderr == (
        f"queue 'nlm' uses AWS profile [nlm] but AWS credentials file {path} has no [nlm] "
        "section; add it, or set the queue's `profile` to one of: default\n"
    )
    # The pipeline says the same when it opens the profile's session: one function for both.
    settings = load_settings(aws_credentials_file=path)
    with pytest.raises(ConfigError) as raised:
        aws.profile_session(settings, "nlm", "us-east-1")
    assert str(raised.value) in result.stderr


def test_check_aws_credentials_default_profile_missing(creds):
    path, config = creds
    path.write_text("[nlm]\naws_access_key_id = AKIANLM\naws_secret_access_key = s3cr3t-nlm\n")
    result = tool("check-aws-credentials", path, config)
    assert result.returncode == 1
    assert "queue 'tbrc' uses AWS profile [default]" in result.stderr
    assert "has no [default] section" in result.stderr


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "aws_access_key_id = AKIA\naws_secret_access_key = s3cr3t-value\n",
            "is not valid INI: line 1 comes before any [profile] section header",
        ),
        (
            "[default]\naws_access_key_id = AKIA\ns3cr3t-value\n",
            "is not valid INI: line 3 is not `key = value`",
        ),
        (
            "[default]\naws_access_key_id = AKIA\n[default]\naws_secret_access_key = s3cr3t-v\n",
            "is not valid INI: section [default] appears twice (line 3)",
        ),
        ("[default]\naws_access_key_id = AKIA\n", "[default] lacks aws_secret_access_key"),
        ("", "has no [profile] section; add one such as [default]"),
    ],
)
def test_check_aws_credentials_bad_file(creds, text, message):
    path, config = creds
    path.write_text(text)
    result = tool("check-aws-credentials", path, config)
    assert result.returncode == 1
    assert message in result.stderr and len(result.stderr.splitlines()) == 1, result.stderr
    assert "s3cr3t" not in result.stderr, "no line of the file is quoted: it may hold a secret"


def test_check_aws_credentials_bad_inputs(creds, tmp_path):
    path, config = creds
    missing = tool("check-aws-credentials", tmp_path / "none", config)
    assert missing.returncode == 1
    assert f"AWS credentials file {tmp_path / 'none'} does not exist" in missing.stderr
    config.write_text("queues = [\n")
    bad_config = tool("check-aws-credentials", path, config)
    assert bad_config.returncode == 1 and f"{config} is not valid TOML" in bad_config.stderr


def test_set_and_get_password(tmp_path):
    path = tmp_path / "passwords.json"
    assert tool("set-password", path, "admin", stdin="first pw\n").returncode == 0
    assert json.loads(path.read_text()) == {"admin": "first pw"}
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert tool("set-password", path, "tester", stdin="  spaced  ").returncode == 0
    assert tool("set-password", path, "admin", stdin="second").returncode == 0
    assert json.loads(path.read_text()) == {"admin": "second", "tester": "  spaced  "}
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["passwords.json"], "no temporary left"
    got = tool("get-password", path, "tester")
    assert got.returncode == 0 and got.stdout == "  spaced  \n"
    absent = tool("get-password", path, "nobody")
    assert absent.returncode == 1 and absent.stdout == ""
    assert f"{path} holds no password for nobody" in absent.stderr


def test_set_password_errors(tmp_path):
    path = tmp_path / "passwords.json"
    empty = tool("set-password", path, "admin", stdin="")
    assert empty.returncode == 1 and "give a non-empty password for admin on stdin" in empty.stderr
    assert not path.exists()
    path.write_text("{not json")
    broken = tool("set-password", path, "admin", stdin="pw")
    assert broken.returncode == 1 and "is not valid JSON" in broken.stderr
    assert "fix it or remove it" in broken.stderr and path.read_text() == "{not json"
    assert tool("get-password", path, "admin").returncode == 1


def test_port_free_and_busy():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        sock.listen()
        busy = tool("port-free", port)
        assert busy.returncode == 1 and busy.stdout == busy.stderr == "", "a question: no output"
    assert tool("port-free", port).returncode == 0
    for bad in ("http", "0", "70000"):
        result = tool("port-free", bad)
        assert result.returncode == 2 and "is not a port number" in result.stderr


class _Handler(BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802 (the http.server name)
        self.send_response(200 if self.path == "/health" else 500)
        self.end_headers()

    def log_message(self, *args):
        pass


@pytest.fixture
def http_server():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_wait_url_answers(http_server):
    result = tool("wait-url", f"{http_server}/health", 30, "--pid", os.getpid())
    assert result.returncode == 0 and result.stdout == result.stderr == ""


def test_wait_url_gives_up_after_seconds_on_an_error_status_or_no_server(http_server):
    for url in (f"{http_server}/broken", "http://127.0.0.1:9/"):
        started = time.monotonic()
        result = tool("wait-url", url, 2)
        assert result.returncode == 1 and result.stderr == ""
        assert 1 <= time.monotonic() - started < 10


def test_wait_url_stops_when_the_server_process_has_ended():
    ended = subprocess.Popen(["true"])
    ended.wait()
    started = time.monotonic()
    result = tool("wait-url", "http://127.0.0.1:9/", 60, "--pid", ended.pid)
    assert result.returncode == 1 and time.monotonic() - started < 10


def test_wait_url_bad_arguments():
    result = tool("wait-url", "127.0.0.1:8080", 5)
    assert result.returncode == 2 and "is not an http(s) URL" in result.stderr
    result = tool("wait-url", "http://127.0.0.1:8080", "soon")
    assert result.returncode == 2 and "is not a positive whole number" in result.stderr
