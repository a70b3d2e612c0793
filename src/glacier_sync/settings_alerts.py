"""The notice settings' own checks (``glacier_sync.alerts``): settings that cannot work are
refused at start in one line, and the webhook URL read from its secret file."""

from __future__ import annotations

import re
from typing import Any

from pydantic import SecretStr


def check_alert_settings(settings: Any) -> None:
    """Notice settings that cannot work are refused at start, in one line."""
    _read_webhook_file(settings)
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
    url = settings.alert_webhook_url.get_secret_value() if settings.alert_webhook_url else ""
    if url and not re.match(r"https?://[^/@\s]+(/|$)", url):
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
            "holds its password (a secret, never the password itsettings)"
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


def _read_webhook_file(settings: Any) -> None:
    """``alert_webhook_url_file`` (a secret: the URL may carry a token) gives the webhook's URL;
    an empty file means no webhook."""
    file = settings.alert_webhook_url_file
    if file is None:
        return
    if settings.alert_webhook_url is not None:
        raise ValueError("set only one of `alert_webhook_url` and `alert_webhook_url_file`")
    try:
        text = file.read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise ValueError(
            f"`alert_webhook_url_file`: cannot read {file} ({exc.strerror}); write the "
            "webhook's URL into it (or leave it empty for no webhook)"
        ) from None
    settings.alert_webhook_url = SecretStr(text) if text else None
