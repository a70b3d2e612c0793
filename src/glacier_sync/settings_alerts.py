"""The notice settings' own checks (``glacier_sync.alerts``): settings that cannot work are
refused at start in one line, and the webhook URL read from its secret file."""

from __future__ import annotations

import re
from typing import Any

from pydantic import SecretStr
from pydantic_settings import EnvSettingsSource

# Notice settings whose empty environment variable (Compose's `${X:-}` for what deploy.sh left
# unset) is no setting, so that the config file's value stands.
EMPTY_IS_ABSENT = frozenset(
    {
        "alert_email_to",
        "alert_email_from",
        "alert_smtp_host",
        "alert_smtp_port",
        "alert_smtp_starttls",
        "alert_smtp_user",
        "alert_smtp_password_file",
        "alert_webhook_url_file",
        "ui_base_url",
    }
)
WEBHOOK_URL = re.compile(r"https?://[^/@\s]+(/\S*)?")


class NoticeEnvSource(EnvSettingsSource):
    """The environment, where an empty notice variable is absent (EMPTY_IS_ABSENT)."""

    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:
        value, key, is_complex = super().get_field_value(field, field_name)
        if field_name in EMPTY_IS_ABSENT and isinstance(value, str) and not value.strip():
            return None, key, is_complex
        return value, key, is_complex


def check_alert_settings(settings: Any) -> None:
    """Notice settings that cannot work are refused at start, in one line."""
    if settings.alert_webhook_url is not None and settings.alert_webhook_url_file is not None:
        raise ValueError("set only one of `alert_webhook_url` and `alert_webhook_url_file`")
    named = [("alert_email_to", a) for a in settings.alert_email_to]
    for setting, address in [*named, ("alert_email_from", settings.alert_email_from or "x@y")]:
        if not re.fullmatch(r"[^@\s,]+@[^@\s,]+", address):
            raise ValueError(f"`{setting}`: {address!r} is not an address (name@host)")
    if settings.alert_email_to and not (settings.alert_smtp_host and settings.alert_email_from):
        raise ValueError(
            "`alert_email_to` is set: set `alert_smtp_host` and `alert_email_from` too "
            "(or unset `alert_email_to` to send no e-mail)"
        )
    if settings.alert_smtp_user:
        _check_smtp_login(settings)
    url = webhook_url(settings)
    if url and not WEBHOOK_URL.fullmatch(url.get_secret_value()):
        raise ValueError(
            "`alert_webhook_url` is not an http(s) URL without a user or password in it "
            "(put a token in the path or the query)"
        )
    if settings.ui_base_url and not re.match(r"https?://[^/\s]+", settings.ui_base_url):
        raise ValueError(
            f"`ui_base_url` {settings.ui_base_url!r} is not an http(s) URL (the UI's address)"
        )


def _check_smtp_login(settings: Any) -> None:
    """A login needs its password file, readable and not empty, and STARTTLS (the
    password never crosses the network in clear)."""
    file = settings.alert_smtp_password_file
    if file is None:
        raise ValueError(
            "`alert_smtp_user` is set: set `alert_smtp_password_file` to the file that "
            "holds its password (a secret, never the password itself)"
        )
    try:
        empty = not file.read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise ValueError(
            f"`alert_smtp_password_file`: cannot read {file} ({exc.strerror}); "
            "write the SMTP password into it"
        ) from None
    if empty:
        raise ValueError(f"`alert_smtp_password_file`: {file} is empty; write the password")
    if not settings.alert_smtp_starttls:
        raise ValueError(
            "`alert_smtp_user` is set: set `alert_smtp_starttls = true`, so that the "
            "password is not sent in clear"
        )


def webhook_url(settings: Any) -> SecretStr | None:
    """``alert_webhook_url``, or the URL in ``alert_webhook_url_file`` (a secret: the URL may
    carry a token; an empty file: no webhook). Read when asked, so a rotated file is used."""
    file = settings.alert_webhook_url_file
    if file is None:
        return settings.alert_webhook_url
    try:
        text = file.read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise ValueError(
            f"`alert_webhook_url_file`: cannot read {file} ({exc.strerror}); write the "
            "webhook's URL into it (or leave it empty for no webhook)"
        ) from None
    return SecretStr(text) if text else None
