"""The pipeline's own metrics, sent as StatsD lines over UDP (off unless a host is set).

Names (under ``metrics_prefix``, default ``glacier_sync``; docs/operations.md lists them):
``phase.<phase>.works`` and ``phase.<phase>.bytes`` (counters), ``phase.<phase>.seconds``
(a timer, in ms), ``phase.<phase>.failures.<transient|permanent|other>`` (counters),
``poll.messages``, ``poll.new_works``, ``poll.duplicates`` (counters) and
``queue.<queue>.visible`` (a gauge: the messages waiting). Sending never fails or slows a phase:
UDP, fire and forget, every error swallowed.
"""

from __future__ import annotations

import logging
import re
import socket
from functools import cache

from glacier_sync.settings import Settings

log = logging.getLogger(__name__)
_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]")


class Metrics:
    """A StatsD client for one destination; every method is a no-op when it has none."""

    def __init__(self, host: str | None, port: int = 8125, prefix: str = "glacier_sync") -> None:
        self.prefix = prefix.rstrip(".")
        self._target: tuple[str, int] | None = None
        self._sock: socket.socket | None = None
        if host:
            try:
                family, _, _, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_DGRAM)[0]
                self._sock = socket.socket(family, socket.SOCK_DGRAM)
                self._sock.setblocking(False)
                self._target = address[:2]
            except OSError as exc:  # an unresolvable host: metrics off, the pipeline runs on
                log.warning(
                    "metrics: cannot reach StatsD at %s:%s (%s); none are sent", host, port, exc
                )

    @property
    def enabled(self) -> bool:
        """True when lines are sent somewhere."""
        return self._sock is not None

    def incr(self, name: str, value: int = 1) -> None:
        """Add ``value`` to a counter."""
        self._send(name, f"{int(value)}|c")

    def timing(self, name: str, seconds: float) -> None:
        """A duration (sent in milliseconds)."""
        self._send(name, f"{seconds * 1000:.3f}|ms")

    def gauge(self, name: str, value: float) -> None:
        """The current value of a gauge."""
        self._send(name, f"{value:g}|g")

    def _send(self, name: str, payload: str) -> None:
        if self._sock is None or self._target is None:
            return
        line = f"{self.prefix}.{_UNSAFE.sub('_', name)}:{payload}"
        try:
            self._sock.sendto(line.encode(), self._target)
        except OSError as exc:
            log.debug("metrics: %s not sent: %s", line, exc)


@cache
def _metrics(host: str | None, port: int, prefix: str) -> Metrics:
    return Metrics(host, port, prefix)


def metrics_for(settings: Settings) -> Metrics:
    """The process's client for these settings (the host resolved once)."""
    return _metrics(
        settings.metrics_statsd_host, settings.metrics_statsd_port, settings.metrics_prefix
    )
