"""Notices (glacier_sync.alerts) reach a real SMTP server and a real HTTP listener on 127.0.0.1,
once per event; a channel that is down never fails or holds up the caller; settings that cannot
work are one line at start."""

from __future__ import annotations

import email
import email.policy
import json
import os
import socketserver
import subprocess
import threading
import time
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from helpers import free_port
from pydantic import ValidationError

from glacier_sync.alerts.dispatch import send_due_notices, send_run_failure
from glacier_sync.records.models import utcnow
from glacier_sync.records.progress import ProgressStore
from glacier_sync.settings import Settings

pytestmark = pytest.mark.integration
VENV_BIN = Path(__file__).resolve().parents[1] / ".venv" / "bin"


class _SmtpHandler(socketserver.StreamRequestHandler):
    """Just enough SMTP (RFC 5321) to take a message: each one's text is kept."""

    def handle(self) -> None:
        self._say("220 test SMTP")
        data: list[bytes] | None = None
        while line := self.rfile.readline():
            if data is not None:
                if line.rstrip(b"\r\n") == b".":
                    parsed = email.message_from_bytes(b"".join(data), policy=email.policy.default)
                    self.server.messages.append(
                        f"Subject: {parsed['Subject']}\n" + parsed.get_content()
                    )
                    data = None
                    self._say("250 queued")
                else:
                    data.append(line[1:] if line.startswith(b"..") else line)
                continue
            verb = line[:4].upper()
            if verb == b"EHLO":
                self._say("250 test")
            elif verb == b"DATA":
                data = []
                self._say("354 go on")
            elif verb == b"QUIT":
                self._say("221 bye")
                return
            else:
                self._say("250 ok")

    def _say(self, text: str) -> None:
        self.wfile.write(text.encode() + b"\r\n")


class _Listener(BaseHTTPRequestHandler):
    def do_POST(self) -> None:  # noqa: N802 - the stdlib's name
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self.server.posts.append(json.loads(body))
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def servers():
    smtp = socketserver.ThreadingTCPServer(("127.0.0.1", 0), _SmtpHandler)
    smtp.messages = []
    http = ThreadingHTTPServer(("127.0.0.1", 0), _Listener)
    http.posts = []
    for server in (smtp, http):
        threading.Thread(target=server.serve_forever, daemon=True).start()
    yield smtp, http
    for server in (smtp, http):
        server.shutdown()
        server.server_close()


def _settings(tmp_path, smtp_port: int, http_port: int, **more) -> Settings:
    return Settings(
        data_root=tmp_path / "data",
        alert_email_to=["ops@archive.example"],
        alert_email_from="glacier-sync@archive.example",
        alert_smtp_host="127.0.0.1",
        alert_smtp_port=smtp_port,
        alert_webhook_url=f"http://127.0.0.1:{http_port}/hook?token=s3cret-token",
        alert_timeout_seconds=3,
        ui_base_url="http://airflow.example:8080",
        **more,
    )


def _held_work(store: ProgressStore, tmp_path, work: str, run: str) -> int:
    zip_path = tmp_path / f"{work}.bag.zip"
    zip_path.write_bytes(b"zip")
    row_id, _ = store.register_local(zip_path, f"Archive0/00/{work}/{work}.bag.zip", work)
    store.update_row(
        row_id,
        "debag failed for good",
        state="failed",
        failed_phase="debag",
        last_error="manifest-sha512.txt: data/a.txt does not match",
        needs_attention=True,
        failed_run=run,
    )
    return row_id


def _notices(store: ProgressStore, row_id: int) -> list[dict]:
    return [e for e in store.get(row_id).history if e["event"] == "notice"]


def test_a_held_work_is_told_once_per_hold_by_mail_and_webhook(tmp_path, servers):
    smtp, http = servers
    settings = _settings(tmp_path, smtp.server_address[1], http.server_address[1])
    store = ProgressStore(f"sqlite:///{tmp_path / 'progress.sqlite'}")
    # As an Airflow task records it: its DAG run's id after "airflow:" (the link drops it).
    held = _held_work(store, tmp_path, "W1HELD", "airflow:run-1")

    assert send_due_notices(store, settings) == {"email": 1, "webhook": 1}
    assert send_due_notices(store, settings) == {"email": 0, "webhook": 0}, "once per event"
    assert len(smtp.messages) == 1 and len(http.posts) == 1
    mail = smtp.messages[0]
    assert "Subject: [glacier-sync] W1HELD needs attention (debag phase)" in mail
    assert "data/a.txt does not match" in mail and "glacier-sync retry W1HELD" in mail
    assert "The run that held it: http://airflow.example:8080/dag_runs?run_id_pattern=run-1" in mail
    works_view = "http://airflow.example:8080/glacier-works/?q=W1HELD"
    assert mail.rstrip().endswith(works_view), "the link to the Works view, the work searched"
    post = http.posts[0]
    assert post["kind"] == "held" and post["work_id"] == "W1HELD"
    assert post["link"] == works_view
    assert {(n["channel"], n["kind"]) for n in _notices(store, held)} == {
        ("email", "held"),
        ("webhook", "held"),
    }

    # The failed task Cleared: the same run tries again and holds it again, one attempt later.
    store.update_row(held, "debag failed for good again", count_attempt=True)
    assert send_due_notices(store, settings) == {"email": 1, "webhook": 1}
    smtp.messages.clear()
    http.posts.clear()
    # Retried by an operator and held again by another run: a new event, one more notice each.
    store.reset_for_retry("W1HELD")
    assert send_due_notices(store, settings) == {"email": 0, "webhook": 0}
    store.update_row(held, "held again", needs_attention=True, failed_run="run-2")
    assert send_due_notices(store, settings) == {"email": 1, "webhook": 1}
    assert len(smtp.messages) == 1 and len(http.posts) == 1


def test_a_copy_that_expires_before_it_is_archived_is_told_once(tmp_path, servers):
    smtp, http = servers
    settings = _settings(tmp_path, smtp.server_address[1], http.server_address[1])
    store = ProgressStore(f"sqlite:///{tmp_path / 'progress.sqlite'}")
    zip_path = tmp_path / "W1EXP.bag.zip"
    zip_path.write_bytes(b"zip")
    row_id, _ = store.register_local(zip_path, "Archive0/00/W1EXP/W1EXP.bag.zip", "W1EXP")
    later = tmp_path / "W1LATER.bag.zip"
    later.write_bytes(b"zip")
    far, _ = store.register_local(later, "Archive0/00/W1LATER/W1LATER.bag.zip", "W1LATER")
    store.update_row(row_id, "expiry", restore_expires_at=utcnow() + timedelta(hours=3))
    store.update_row(far, "expiry", restore_expires_at=utcnow() + timedelta(hours=48))

    assert send_due_notices(store, settings) == {"email": 1, "webhook": 1}
    assert send_due_notices(store, settings) == {"email": 0, "webhook": 0}
    assert http.posts[0]["kind"] == "expiring" and http.posts[0]["work_id"] == "W1EXP"
    assert "expires" in http.posts[0]["text"], http.posts[0]
    # A new restore, a new expiry date: a new event.
    store.update_row(row_id, "restored again", restore_expires_at=utcnow() + timedelta(hours=5))
    assert send_due_notices(store, settings) == {"email": 1, "webhook": 1}


def test_an_unreachable_mail_server_fails_nothing_and_its_notice_waits(tmp_path, servers):
    smtp, http = servers
    closed = free_port()
    settings = _settings(tmp_path, closed, http.server_address[1])
    store = ProgressStore(f"sqlite:///{tmp_path / 'progress.sqlite'}")
    held = _held_work(store, tmp_path, "W1DOWN", "run-1")
    _held_work(store, tmp_path, "W1DOWN2", "run-1")

    started = time.monotonic()
    assert send_due_notices(store, settings) == {"email": 0, "webhook": 2}
    assert time.monotonic() - started < 5, "a refused connection costs no wait"
    assert send_run_failure(settings, "sqs_event_dag", "manual__1", "2 task(s) failed") == 1
    assert [n["channel"] for n in _notices(store, held)] == ["webhook"], "e-mail not recorded"

    up = _settings(tmp_path, smtp.server_address[1], http.server_address[1])
    assert send_due_notices(store, up) == {"email": 2, "webhook": 0}, "the waiting mail goes"
    assert send_run_failure(up, "sqs_event_dag", "manual__1", "2 task(s) failed") == 2
    assert "run manual__1 of sqs_event_dag failed" in smtp.messages[-1]
    assert http.posts[-1]["link"] == "http://airflow.example:8080/dags/sqs_event_dag/runs/manual__1"


def test_a_webhook_that_hangs_costs_its_timeout_only(tmp_path):
    silent = __import__("socket").create_server(("127.0.0.1", 0))  # accepts, never answers
    try:
        seconds = _seconds_to_a_silent_webhook(tmp_path, silent, ["W1SLOW", "W1SLOW2"])
        assert seconds < 3, "one timeout, then the channel waits its turn"
    finally:
        silent.close()


def _seconds_to_a_silent_webhook(tmp_path, server, works: list[str]) -> float:
    """The time a check takes whose webhook on ``server`` takes nothing (timeout 1 s)."""
    settings = Settings(
        data_root=tmp_path / "data",
        alert_webhook_url=f"http://127.0.0.1:{server.getsockname()[1]}/hook",
        alert_timeout_seconds=1,
    )
    store = ProgressStore(f"sqlite:///{tmp_path / 'progress.sqlite'}")
    for work in works:
        _held_work(store, tmp_path, work, "run-1")
    started = time.monotonic()
    assert send_due_notices(store, settings) == {"webhook": 0}
    return time.monotonic() - started


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"GLACIER_SYNC_ALERT_EMAIL_TO": '["ops@archive.example"]'}, "alert_smtp_host"),
        (
            {
                "GLACIER_SYNC_ALERT_EMAIL_TO": '["ops@archive.example"]',
                "GLACIER_SYNC_ALERT_SMTP_HOST": "mail.example",
                "GLACIER_SYNC_ALERT_EMAIL_FROM": "not-an-address",
            },
            "not-an-address",
        ),
        (
            {
                "GLACIER_SYNC_ALERT_SMTP_USER": "mailer",
                "GLACIER_SYNC_ALERT_EMAIL_TO": '["ops@archive.example"]',
                "GLACIER_SYNC_ALERT_SMTP_HOST": "mail.example",
                "GLACIER_SYNC_ALERT_EMAIL_FROM": "gs@archive.example",
            },
            "alert_smtp_password_file",
        ),
        ({"GLACIER_SYNC_ALERT_WEBHOOK_URL": "ftp://hooks.example/x"}, "alert_webhook_url"),
        (
            {"GLACIER_SYNC_ALERT_WEBHOOK_URL": "https://hook:s3cretTOKEN@hooks.example/x"},
            "alert_webhook_url",
        ),
        (
            {
                "GLACIER_SYNC_ALERT_SMTP_USER": "mailer",
                "GLACIER_SYNC_ALERT_SMTP_PASSWORD_FILE": "/nonexistent/smtp-password",
            },
            "cannot read /nonexistent/smtp-password",
        ),
        (
            {
                "GLACIER_SYNC_ALERT_SMTP_USER": "mailer",
                "GLACIER_SYNC_ALERT_SMTP_PASSWORD_FILE": __file__,
            },
            "alert_smtp_starttls",
        ),
    ],
)
def test_settings_that_cannot_work_are_one_line_at_start(tmp_path, env, named):
    base = {k: v for k, v in os.environ.items() if not k.startswith("GLACIER_SYNC_")}
    result = subprocess.run(
        [str(VENV_BIN / "glacier-sync"), "check-config"],
        env={**base, "GLACIER_SYNC_DATA_ROOT": str(tmp_path), **env},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2, result.stdout + result.stderr
    assert result.stderr.startswith("error: ") and "Traceback" not in result.stderr
    # The house form: "error: invalid settings:", then the one problem on one line.
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 2 and named in lines[1], result.stderr
    assert "s3cretTOKEN" not in result.stderr


def test_no_channel_configured_sends_nothing_and_reads_nothing(tmp_path):
    settings = Settings(data_root=tmp_path / "data")
    assert send_due_notices(None, settings) == {}  # the store is not even touched
    with pytest.raises(ValidationError):
        Settings(data_root=tmp_path, ui_base_url="airflow.example")


def test_the_dags_failure_notifier_tells_the_channels_once_per_call(tmp_path, servers):
    from glacier_sync_airflow.arguments import dag_arguments
    from glacier_sync_airflow.notifier import RunFailureNotifier

    smtp, http = servers
    settings = _settings(tmp_path, smtp.server_address[1], http.server_address[1])
    notifier = dag_arguments(settings, None, None)["on_failure_callback"]
    assert isinstance(notifier, RunFailureNotifier)
    assert "on_failure_callback" not in dag_arguments(Settings(data_root=tmp_path), None, None)

    run = type("Run", (), {"dag_id": "sqs_event_dag", "run_id": "asset_triggered__1"})()
    notifier({"dag_run": run, "reason": "task_failure"})  # as the dag-processor calls it
    assert len(smtp.messages) == 1 and len(http.posts) == 1
    assert http.posts[0]["subject"] == "run asset_triggered__1 of sqs_event_dag failed"
    assert "task_failure" in smtp.messages[0]


class _PickyListener(BaseHTTPRequestHandler):
    """Refuses (400) the notice of W1BAD, redirects that of W1MOVED, takes the others."""

    def do_POST(self) -> None:  # noqa: N802 - the stdlib's name
        post = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        if post["work_id"] == "W1MOVED":
            self.send_response(302)
            self.send_header("Location", "/elsewhere")
            self.end_headers()
            return
        self.server.posts.append(post)
        self.send_response(400 if post["work_id"] == "W1BAD" else 204)
        self.end_headers()

    def do_GET(self) -> None:  # noqa: N802 - the redirect's target
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args) -> None:
        pass


def test_a_refused_notice_does_not_hold_up_the_others_and_a_redirect_is_not_sent(tmp_path):
    http = ThreadingHTTPServer(("127.0.0.1", 0), _PickyListener)
    http.posts = []
    threading.Thread(target=http.serve_forever, daemon=True).start()
    try:
        settings = Settings(
            data_root=tmp_path / "data",
            alert_webhook_url=f"http://127.0.0.1:{http.server_address[1]}/hook",
        )
        store = ProgressStore(f"sqlite:///{tmp_path / 'progress.sqlite'}")
        bad = _held_work(store, tmp_path, "W1BAD", "run-1")
        moved = _held_work(store, tmp_path, "W1MOVED", "run-1")
        good = _held_work(store, tmp_path, "W1GOOD", "run-1")
        assert send_due_notices(store, settings) == {"webhook": 1}
        assert [p["work_id"] for p in http.posts] == ["W1BAD", "W1GOOD"]
        assert _notices(store, bad) == [] and _notices(store, moved) == []
        assert len(_notices(store, good)) == 1
    finally:
        http.shutdown()
        http.server_close()


def test_a_webhook_that_answers_a_byte_at_a_time_costs_its_timeout_only(tmp_path):
    server = __import__("socket").create_server(("127.0.0.1", 0))

    def drip() -> None:
        conn, _ = server.accept()
        with conn:
            conn.recv(65536)
            for byte in b"HTTP/1.1 204 No Content\r\n\r\n":
                time.sleep(0.5)
                try:
                    conn.sendall(bytes([byte]))
                except OSError:
                    return

    threading.Thread(target=drip, daemon=True).start()
    try:
        seconds = _seconds_to_a_silent_webhook(tmp_path, server, ["W1DRIP"])
        assert seconds < 2.5, "bounded as a whole, not per byte"
    finally:
        server.close()


def test_an_error_quoting_the_webhook_url_never_reaches_the_log(tmp_path, caplog):
    settings = Settings(
        data_root=tmp_path / "data",
        alert_webhook_url="http://127.0.0.1:99999/hook?token=s3cretTOKEN",  # no such port
    )
    store = ProgressStore(f"sqlite:///{tmp_path / 'progress.sqlite'}")
    _held_work(store, tmp_path, "W1LEAK", "run-1")
    with caplog.at_level("WARNING"):
        assert send_due_notices(store, settings) == {"webhook": 0}
    assert "not sent" in caplog.text and "127.0.0.1" in caplog.text
    assert "s3cretTOKEN" not in caplog.text, caplog.text


class _KilledBeforeTheRecord(ProgressStore):
    """Stands in for a kill -9 between a notice's send and its record: the write never comes."""

    def update_row(self, *args, **kwargs):
        raise KeyboardInterrupt("killed before the notice was recorded")


def test_killed_between_send_and_record_the_notice_goes_again_then_once(tmp_path, servers):
    smtp, http = servers
    settings = _settings(tmp_path, smtp.server_address[1], http.server_address[1])
    url = f"sqlite:///{tmp_path / 'progress.sqlite'}"
    held = _held_work(ProgressStore(url), tmp_path, "W1KILL", "run-1")
    with pytest.raises(KeyboardInterrupt):
        send_due_notices(_KilledBeforeTheRecord(url), settings)
    assert len(smtp.messages) == 1, "sent before the kill"
    store = ProgressStore(url)  # the next run: nothing recorded, so at least once, not never
    assert _notices(store, held) == []
    assert send_due_notices(store, settings) == {"email": 1, "webhook": 1}
    assert send_due_notices(store, settings) == {"email": 0, "webhook": 0}
    assert len(smtp.messages) == 2 and len(http.posts) == 1


def test_the_webhook_url_comes_from_its_secret_file(tmp_path):
    """`alert_webhook_url_file` (deploy.sh's secret) gives the URL; an empty file is no
    webhook; with `alert_webhook_url` too, or unreadable, it is refused in one line."""
    hook = tmp_path / "alert_webhook_url"
    hook.write_text("https://hooks.example.org/T0/abc-token\n")
    settings = Settings(data_root=tmp_path, alert_webhook_url_file=hook)
    assert settings.webhook_url().get_secret_value() == "https://hooks.example.org/T0/abc-token"
    assert "abc-token" not in repr(settings)
    hook.write_text("")
    assert Settings(data_root=tmp_path, alert_webhook_url_file=hook).webhook_url() is None
    hook.write_text("# the team's hook\nhttps://hooks.example.org/x\n")
    with pytest.raises(ValidationError, match="without a user or password"):
        Settings(data_root=tmp_path, alert_webhook_url_file=hook)
    hook.write_text("https://bob:pw@hooks.example.org/x\n")
    with pytest.raises(ValidationError, match="without a user or password"):
        Settings(data_root=tmp_path, alert_webhook_url_file=hook)
    with pytest.raises(ValidationError, match="set only one of"):
        Settings(data_root=tmp_path, alert_webhook_url_file=hook, alert_webhook_url="https://x/")
    with pytest.raises(ValidationError, match="cannot read"):
        Settings(data_root=tmp_path, alert_webhook_url_file=tmp_path / "absent")
