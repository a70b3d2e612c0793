"""Exceptions of the pipeline: each says what failed and how to fix it."""

from __future__ import annotations


class GlacierSyncError(Exception):
    """Base class of every error the pipeline raises on purpose."""


class ConfigError(GlacierSyncError):
    """The settings are invalid; the message names the setting and the fix."""


class NoRestoredWork(GlacierSyncError):
    """No restore event is waiting and no earlier work needs a retry (the poll task retries)."""


class MalformedMessage(GlacierSyncError):
    """An SQS message body that is not an S3 event notification."""


class DownloadError(GlacierSyncError):
    """An object could not be downloaded from S3."""


class BagError(GlacierSyncError):
    """A bag zip was refused; ``problems`` lists each failing file or check."""

    def __init__(self, message: str, problems: list[str] | None = None) -> None:
        self.problems = list(problems or [])
        shown = self.problems[:50]
        detail = "".join(f"\n  - {p}" for p in shown)
        if len(self.problems) > len(shown):
            detail += f"\n  ... and {len(self.problems) - len(shown)} more"
        super().__init__(message + detail)


class SyncError(GlacierSyncError):
    """The sync command failed; the work folder is kept for a retry."""


class ProgressDatabaseError(GlacierSyncError):
    """The progress database cannot be reached or migrated."""


class WorkNotFound(GlacierSyncError):
    """No progress row matches the work the operator named."""
