"""Exceptions of the pipeline: each says what failed and how to fix it."""

from __future__ import annotations

import errno
import re
from collections.abc import Iterator


class GlacierSyncError(Exception):
    """Base class of every error the pipeline raises on purpose."""


class ConfigError(GlacierSyncError):
    """The settings are invalid; the message names the setting and the fix."""


class UnknownRevision(ConfigError):
    """The progress database is at a schema revision this glacier-sync does not know (a newer
    image migrated it): nothing is read, written or migrated until the versions agree."""


class NoRestoredWork(GlacierSyncError):
    """No restore event is waiting and no earlier work needs a retry (the poll task retries)."""


class MalformedMessage(GlacierSyncError):
    """An SQS message body that is not an S3 event notification."""


class PermanentError(GlacierSyncError):
    """A failure of the work itself that no retry changes (a bag that fails validation, a key
    that does not exist, a restored copy that expired): held for an operator."""


class DownloadError(GlacierSyncError):
    """An object could not be downloaded from S3."""


class ObjectUnavailable(DownloadError, PermanentError):
    """The object is gone, changed since its event, or not (any more) restored: only a new
    restore or an operator's fix helps."""


class BagError(PermanentError):
    """A bag zip was refused; ``problems`` lists each failing file or check."""

    def __init__(self, message: str, problems: list[str] | None = None) -> None:
        self.problems = list(problems or [])
        named, counted = [], 0
        for line in self.problems:  # capped lists end in their own count of the rest
            more = re.fullmatch(r"\.\.\. and (\d+) more(?: .*)?", line)
            if more:
                counted += int(more.group(1))
            else:
                named.append(line)
        shown = named[:50]
        detail = "".join(f"\n  - {p}" for p in shown)
        if len(named) + counted > len(shown):
            detail += f"\n  ... and {len(named) + counted - len(shown)} more"
        super().__init__(message + detail)


class SyncError(GlacierSyncError):
    """The sync command failed; the work folder is kept for a retry."""


class ProgressDatabaseError(GlacierSyncError):
    """The progress database cannot be reached or migrated."""


class WorkNotFound(GlacierSyncError):
    """No progress row matches the work the operator named."""


class TransientError(GlacierSyncError):
    """A problem of the environment, not of the work (an unmounted archive, a full disk, a busy
    or lost claim): recorded, retried later, and it spends none of the work's attempts."""


class TransferFault(DownloadError, TransientError):
    """A fault of the network or of the S3 store during a download (an answer that is not the
    range asked for, a range that keeps breaking off, a check that could not be read): retried
    on the next run, no attempt spent, never taken for a fault of the bag."""


class ArchiveUnavailable(TransientError):
    """The archive root is missing, not a folder, not mounted or lacks its marker file."""


class DiskFull(TransientError):
    """A file system has no room for the next step; the message names the path."""


class RoomShortfall(DiskFull):
    """A check before any byte is written found less free space than this work needs (a
    smaller work may still fit: the run goes on with the next one)."""


class WorkBusy(TransientError):
    """Another live run holds the work's claim."""


class LostClaim(TransientError):
    """This run's claim on the work expired and another run took it over."""


class SyncTimeout(TransientError):
    """The sync script ran past ``sync_timeout_seconds`` (a slow archive volume, say)."""


class Stalled(TransientError):
    """A phase made no progress for ``stall_minutes`` (a hung mount or link): stopped, its
    claim given up, and tried again on the next run."""


class AttemptsExhausted(GlacierSyncError):
    """The work failed ``max_attempts`` times; only an operator's retry brings it back."""


class NeedsAttention(GlacierSyncError):
    """The work failed permanently (a bad bag, a missing key): no run takes it again until an
    operator retries it (``glacier-sync retry`` or Clear of the failed task in the UI)."""


def is_disk_full(exc: OSError) -> bool:
    """True for "no space left on device" and "disk quota exceeded"."""
    return exc.errno in (errno.ENOSPC, errno.EDQUOT)


_TRANSIENT_ERRNOS = {
    errno.ENOSPC,
    errno.EDQUOT,
    errno.EIO,
    errno.ETIMEDOUT,
    errno.ESTALE,
    errno.EROFS,
    errno.ENOTCONN,
}
_TRANSIENT_AWS_CODES = {
    "SlowDown",
    "Throttling",
    "ThrottlingException",
    "RequestTimeout",
    "RequestTimeoutException",
    "InternalError",
    "ServiceUnavailable",
    "TooManyRequests",
    "RequestTimeTooSkewed",
    "ExpiredToken",
    "ExpiredTokenException",
    "429",
    "500",
    "502",
    "503",
    "504",
}


# botocore / urllib3 exception classes that mean "the endpoint could not be reached in time".
_TRANSIENT_AWS_ERRORS = {
    "EndpointConnectionError",
    "ConnectionClosedError",
    "ConnectTimeoutError",
    "ReadTimeoutError",
    "ProxyConnectionError",
    "ResponseStreamingError",
    "IncompleteReadError",
    "RetriesExceededError",
    "NoCredentialsError",
}


def is_permanent(exc: BaseException) -> bool:
    """True for a failure of the work itself (held for an operator, never retried by itself);
    a transient cause in the chain wins (the environment may have caused it)."""
    return isinstance(exc, PermanentError) and not is_transient(exc)


def cause_chain(exc: BaseException) -> Iterator[BaseException]:
    """``exc``, then what caused it (``__cause__``, or botocore's ``last_exception`` of a
    RetriesExceededError), each once."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or getattr(current, "last_exception", None)


def caused_by(exc: BaseException, kind: type[BaseException]) -> bool:
    """True when ``exc`` or an exception in its cause chain is a ``kind``."""
    return any(isinstance(current, kind) for current in cause_chain(exc))


def is_transient(exc: BaseException) -> bool:
    """True for failures of the environment (retry without spending an attempt).

    Follows the cause chain, so a DownloadError raised from a connection error counts.
    """
    for current in cause_chain(exc):
        if isinstance(current, TransientError | ProgressDatabaseError):
            return True
        if isinstance(current, OSError) and current.errno in _TRANSIENT_ERRNOS:
            return True
        names = {cls.__name__ for cls in type(current).__mro__}
        if names & _TRANSIENT_AWS_ERRORS:
            return True
        response = getattr(current, "response", None)
        if isinstance(response, dict):
            code = str(response.get("Error", {}).get("Code", ""))
            if code in _TRANSIENT_AWS_CODES:
                return True
    return False
