"""Where notices go: e-mail through an SMTP server, and a JSON POST to a webhook.

Each send has a timeout; a server that cannot be reached, or refuses, raises ``ChannelDown``
(the caller tries again at its next check). Nothing here retries or sleeps.
"""

from __future__ import annotations

import json
import smtplib
import ssl
import urllib.error
import urllib.parse
import urllib.request
from email.message import EmailMessage
from pathlib import Path

from glacier_sync.alerts.notices import Notice
from glacier_sync.errors import ConfigError


class ChannelDown(Exception):
    """The channel could not take the notice now."""


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
        try:
            with smtplib.SMTP(self.host, self.port, timeout=self.timeout) as smtp:
                if self.starttls:
                    smtp.starttls(context=ssl.create_default_context())
                if self.user:
                    smtp.login(self.user, password or "")
                smtp.send_message(message)
        except (OSError, smtplib.SMTPException) as exc:
            raise ChannelDown(f"e-mail via {self.host}:{self.port}: {exc}") from exc


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
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:  # noqa: S310
                response.read()
        except urllib.error.HTTPError as exc:
            raise ChannelDown(f"webhook at {host}: HTTP {exc.code}") from None
        except OSError as exc:  # TimeoutError and URLError are OSErrors
            raise ChannelDown(f"webhook at {host}: {getattr(exc, 'reason', exc)}") from None
