"""Send what is due, once per event and channel, without ever failing or holding up a run.

``send_due_notices`` is called at the end of every restore run: it reads the works held for
attention and the restored copies about to expire, sends each notice a channel has not sent
yet, and writes what it sent into the work's history. A channel that is down is left for this
round after one warning (the notices wait for the next), a notice it refuses is tried again at the
next check without holding up the others. A notice is recorded after it was sent, so a crash in
between, or two runs ending at the same moment, may send it twice: at least once, never lost.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta
from typing import Protocol

from glacier_sync.alerts.channels import (
    ChannelDown,
    EmailChannel,
    NoticeRefused,
    WebhookChannel,
    bounded,
)
from glacier_sync.alerts.notices import NOTICE_EVENT, Notice, already_sent, due
from glacier_sync.errors import ConfigError
from glacier_sync.records.models import utcnow
from glacier_sync.records.progress import ProgressStore
from glacier_sync.settings import Settings

log = logging.getLogger(__name__)


class Channel(Protocol):
    name: str

    def send(self, notice: Notice) -> None: ...


def channels_from(settings: Settings) -> list[Channel]:
    """The channels the settings configure (none: notices are off)."""
    found: list[Channel] = []
    if settings.alert_email_to:
        found.append(
            EmailChannel(
                settings.alert_smtp_host or "",
                settings.alert_smtp_port,
                settings.alert_email_from or "",
                settings.alert_email_to,
                starttls=settings.alert_smtp_starttls,
                user=settings.alert_smtp_user,
                password_file=settings.alert_smtp_password_file,
                timeout=settings.alert_timeout_seconds,
            )
        )
    webhook = settings.webhook_url()
    if webhook is not None:
        url = webhook.get_secret_value()
        found.append(WebhookChannel(url, timeout=settings.alert_timeout_seconds))
    return found


def send_due_notices(
    store: ProgressStore, settings: Settings, now: datetime | None = None
) -> dict[str, int]:
    """Send each due notice on each channel that has not sent it; the count sent by channel."""
    channels = channels_from(settings)
    if not channels:
        return {}
    now = now or utcnow()
    margin = timedelta(hours=settings.expiry_warning_hours)
    rows = {row.id: row for row in store.notice_candidates(now, margin)}
    pending = due(list(rows.values()), now, margin, settings.ui_base_url)
    sent: dict[str, int] = {}
    for channel in channels:
        sent[channel.name] = 0
        for row_id, notice in pending:
            if already_sent(rows[row_id], notice, channel.name):
                continue
            outcome = _try_send(channel, notice, settings.alert_timeout_seconds)
            if outcome == "down":
                break  # the rest wait for the next round
            if outcome == "refused":
                continue  # this one is tried again next round; the others still go
            store.update_row(
                row_id,
                NOTICE_EVENT,
                details={"kind": notice.kind, "key": notice.key, "channel": channel.name},
            )
            sent[channel.name] += 1
    return sent


def send_run_failure(settings: Settings, dag_id: str, run_id: str, reason: str) -> int:
    """Tell every channel that a run failed (called once per failed run); the count sent."""
    base = (settings.ui_base_url or "").rstrip("/")
    notice = Notice(
        kind="run-failed",
        key=f"run:{dag_id}:{run_id}",
        work_id=None,
        subject=f"run {run_id} of {dag_id} failed",
        text=f"The run {run_id} of {dag_id} failed: {reason}",
        link=f"{base}/dags/{dag_id}/runs/{run_id}" if base else None,
    )
    timeout = settings.alert_timeout_seconds
    return sum(_try_send(channel, notice, timeout) == "sent" for channel in channels_from(settings))


def _try_send(channel: Channel, notice: Notice, timeout: float) -> str:
    """Send within ``timeout`` in all: "sent", "refused" (this notice) or "down" (the channel);
    a failure is one log line, never raised: a run is never failed or held by a notice."""
    try:
        bounded(channel.send, notice, timeout)
        return "sent"
    except NoticeRefused as exc:
        log.warning("notice %s refused (%s); tried again at the next check", notice.key, exc)
        return "refused"
    except (ChannelDown, ConfigError) as exc:
        log.warning("notice %s not sent (%s); tried again at the next check", notice.key, exc)
    except Exception as exc:  # noqa: BLE001 - a notice must never fail the pipeline
        # Only the type: the text of an unexpected error may quote a secret (a webhook URL).
        log.warning("notice %s not sent (%s)", notice.key, type(exc).__name__)
    return "down"
