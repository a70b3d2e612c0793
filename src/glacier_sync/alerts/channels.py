"""Where notices go: e-mail through an SMTP server, and a JSON POST to a webhook.

A send is bounded as a whole by its timeout (``bounded``: the send runs in a thread the caller
stops waiting for). A server that cannot be reached, does not answer in time or answers that it
is busy raises ``ChannelDown`` (the channel's other notices wait too); one that refuses this
notice raises ``NoticeRefused`` (the others still go). Messages name the host, never the URL
(it may hold a token). Nothing here retries or sleeps.
"""

from __future__ import annotations

import http.client
import json
import smtplib
import ssl
import threading
import urllib.error
import urllib.parse
import urllib.request
from email.message import EmailMessage
from pathlib import Path

from glacier_sync.alerts.notices import Notice
from glacier_sync.errors import ConfigError


class ChannelDown(Exception):
    """The channel could not take the notice now (nor, likely, any other)."""


class NoticeRefused(Exception):
    """The channel answered, and refused this notice."""


def bounded(send, notice: Notice, seconds: float) -> None:
    """``send(notice)`` given at most ``seconds`` in all (a server that answers a byte at a
    time cannot hold the caller); the send's own exception is raised here."""
    outcome: list[BaseException | None] = []

    def attempt() -> None:
        try:
            send(notice)
            outcome.append(None)
        except BaseException as exc:  # noqa: BLE001 - handed to the caller
            outcome.append(exc)

    worker = threading.Thread(target=attempt, daemon=True, name="notice-send")
    worker.start()
    worker.join(seconds)
    if not outcome:
        raise ChannelDown(f"no answer within {seconds:g} s")
    if outcome[0] is not None:
        raise outcome[0]


class EmailChannel:
    """An SMTP server (optionally STARTTLS and a login) and the addresses."""

    name = "email"

    def __init__(
        self,
        host: str,
        port: int,
        sender: str,
        recipients: list[str],
        *,
        starttls: bool = False,
        user: str | None = None,
        password_file: Path | None = None,
        timeout: float = 10,
    ) -> None:
        self.host, self.port, self.sender, self.recipients = host, port, sender, recipients
        self.starttls, self.user, self.password_file = starttls, user, password_file
        self.timeout = timeout

    def _password(self) -> str | None:
        if self.password_file is None:
            return None
        try:
            return self.password_file.read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise ConfigError(
                f"setting `alert_smtp_password_file`: cannot read {self.password_file} "
                f"({exc.strerror}); write the SMTP password into it or unset the setting"
            ) from exc

    def send(self, notice: Notice) -> None:
        message = EmailMessage()
        message["From"], message["To"] = self.sender, ", ".join(self.recipients)
        message["Subject"] = f"[glacier-sync] {notice.subject}"
        message.set_content(notice.text + (f"\n\n{notice.link}\n" if notice.link else "\n"))
        password = self._password()
        where = f"e-mail via {self.host}:{self.port}"
        try:
            with smtplib.SMTP(self.host, self.port, timeout=self.timeout) as smtp:
                if self.starttls:
                    smtp.starttls(context=ssl.create_default_context())
                if self.user:
                    smtp.login(self.user, password or "")
                smtp.send_message(message)
        except smtplib.SMTPResponseException as exc:
            if 400 <= exc.smtp_code < 500:  # busy, try later
                raise ChannelDown(f"{where}: {exc.smtp_code} {exc.smtp_error!r}") from None
            raise NoticeRefused(f"{where}: {exc.smtp_code} {exc.smtp_error!r}") from None
        except smtplib.SMTPRecipientsRefused as exc:
            raise NoticeRefused(f"{where}: recipients refused {sorted(exc.recipients)}") from None
        except (OSError, smtplib.SMTPException) as exc:
            raise ChannelDown(f"{where}: {type(exc).__name__}: {exc}") from None


class WebhookChannel:
    """A URL that takes the notice as a JSON POST (the URL may hold a token: never logged)."""

    name = "webhook"

    def __init__(self, url: str, timeout: float = 10) -> None:
        self.url, self.timeout = url, timeout

    def send(self, notice: Notice) -> None:
        body = json.dumps(notice.as_json()).encode()
        request = urllib.request.Request(
            self.url, data=body, method="POST", headers={"Content-Type": "application/json"}
        )
        host = urllib.parse.urlsplit(self.url).hostname
        opener = urllib.request.build_opener(_NoRedirect)
        try:
            with opener.open(request, timeout=self.timeout) as response:
                response.read()
        except urllib.error.HTTPError as exc:
            if exc.code >= 500 or exc.code in (408, 429):
                raise ChannelDown(f"webhook at {host}: HTTP {exc.code}") from None
            raise NoticeRefused(f"webhook at {host}: HTTP {exc.code}") from None
        except (OSError, ValueError, http.client.HTTPException) as exc:
            # URLError and timeouts are OSErrors; a malformed answer an HTTPException. The
            # exception's text may quote the URL (a token): only its type is said.
            if isinstance(exc, OSError):
                said = str(getattr(exc, "reason", None) or exc)  # refused, unknown host, timeout
            else:
                said = f"{type(exc).__name__} (a malformed URL or answer)"
            raise ChannelDown(f"webhook at {host}: {said}") from None


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """A redirect is an answer the notice did not reach (urllib would re-send it as a GET)."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        raise urllib.error.HTTPError(req.full_url, code, f"redirected ({code})", headers, fp)
