"""The progress database: one row per restored object, every phase recorded, claims per run.

``ProgressStore`` is what callers use; its methods live by concern: ``progress_db`` (the
connection, the schema's revision, sessions, one row), ``progress_intake`` (events, restore
requests, zips found on disk), ``progress_claims`` (claims and leases), ``progress_records``
(phase records, clean-up, retry) and ``progress_views`` (status queries).
"""

from glacier_sync.records.progress_claims import Claims
from glacier_sync.records.progress_db import (
    HEAD_REVISION,
    MIGRATIONS,
    VERSION_TABLE,
    known_revisions,
    require_known,
)
from glacier_sync.records.progress_intake import EventIntake, parse_event_time
from glacier_sync.records.progress_records import PhaseRecords
from glacier_sync.records.progress_views import StatusViews, expires_soon, expiry_note


class ProgressStore(EventIntake, Claims, PhaseRecords, StatusViews):
    """Reads and writes progress rows; every write is its own committed transaction."""


__all__ = [
    "HEAD_REVISION",
    "MIGRATIONS",
    "VERSION_TABLE",
    "ProgressStore",
    "expires_soon",
    "expiry_note",
    "known_revisions",
    "parse_event_time",
    "require_known",
]
