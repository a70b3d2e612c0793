"""S3 event notification records, as delivered in SQS message bodies."""

from __future__ import annotations

import fnmatch
import hashlib
import json
import re
from dataclasses import asdict, dataclass
from pathlib import PurePosixPath
from typing import Any
from urllib.parse import unquote_plus

from glacier_sync.errors import MalformedMessage

_WORK_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]*$")


@dataclass(frozen=True)
class RestoreEvent:
    """One S3 event record about one object."""

    event_name: str
    region: str
    bucket: str
    key: str
    size: int | None
    etag: str
    version_id: str | None = None
    sequencer: str | None = None
    event_time: str | None = None
    expiry_time: str | None = None
    storage_class: str | None = None

    @property
    def work_id(self) -> str:
        """The work id: the key's file name with every suffix removed."""
        return work_id_from_key(self.key)

    @property
    def dedup_key(self) -> str:
        """Identity of the object version: bucket, key and version id (or eTag)."""
        return dedup_key(self.bucket, self.key, self.version_id or self.etag)

    def to_dict(self) -> dict[str, Any]:
        """Plain data for JSON (progress history, XCom)."""
        return asdict(self)


@dataclass(frozen=True)
class ParsedBody:
    """What one SQS message body held: the wanted records and why others were skipped."""

    records: list[RestoreEvent]
    skipped: list[str]


def dedup_key(bucket: str, key: str, version: str) -> str:
    """A fixed-length identity for (bucket, key, version) usable as a unique index."""
    return hashlib.sha256(f"{bucket}\0{key}\0{version}".encode()).hexdigest()


def work_id_from_key(key: str) -> str:
    """``Archive0/00/W1NLM4700/W1NLM4700.bag.zip`` -> ``W1NLM4700``."""
    name = PurePosixPath(key).name
    work_id = name.split(".", 1)[0]
    if not _WORK_ID.match(work_id):
        raise ValueError(
            f"cannot derive a work id from key {key!r}: the file name must start with the work id "
            "(letters, digits, '_' or '-'), e.g. W1NLM4700.bag.zip"
        )
    return work_id


def event_name_matches(name: str, patterns: list[str]) -> bool:
    """True when ``name`` matches one pattern; ``ObjectRestore:*`` matches by prefix."""
    return any(fnmatch.fnmatchcase(name, pattern) for pattern in patterns)


def _record(raw: Any, index: int) -> RestoreEvent:
    if not isinstance(raw, dict):
        raise MalformedMessage(f"record {index} is not a JSON object")
    try:
        s3 = raw["s3"]
        obj = s3["object"]
        bucket = s3["bucket"]["name"]
        key = unquote_plus(obj["key"])
        name = raw["eventName"]
    except (KeyError, TypeError) as exc:
        raise MalformedMessage(f"record {index} lacks field {exc}") from None
    restore = (raw.get("glacierEventData") or {}).get("restoreEventData") or {}
    size = obj.get("size")
    return RestoreEvent(
        event_name=str(name),
        region=str(raw.get("awsRegion", "")),
        bucket=str(bucket),
        key=key,
        size=int(size) if size is not None else None,
        etag=str(obj.get("eTag") or obj.get("etag") or "").strip('"'),
        version_id=obj.get("versionId") or None,
        sequencer=obj.get("sequencer"),
        event_time=raw.get("eventTime"),
        expiry_time=restore.get("lifecycleRestorationExpiryTime"),
        storage_class=restore.get("lifecycleRestoreStorageClass"),
    )


def parse_message_body(body: str, event_patterns: list[str]) -> ParsedBody:
    """Parse one message body; raise MalformedMessage when it is not an S3 notification.

    Bodies without records (``s3:TestEvent``) give no records and a skip reason; records whose
    event name matches none of ``event_patterns`` are skipped with a reason too.
    """
    try:
        data = json.loads(body)
    except (json.JSONDecodeError, TypeError) as exc:
        raise MalformedMessage(f"body is not JSON ({exc})") from None
    if not isinstance(data, dict):
        raise MalformedMessage("body is JSON but not an object")
    if "Records" not in data:
        kind = data.get("Event") or "a body without Records"
        return ParsedBody([], [f"skipped {kind}"])
    raw_records = data["Records"]
    if not isinstance(raw_records, list):
        raise MalformedMessage("`Records` is not a list")
    records, skipped = [], []
    for index, raw in enumerate(raw_records):
        record = _record(raw, index)
        if not event_name_matches(record.event_name, event_patterns):
            skipped.append(f"skipped {record.event_name} for s3://{record.bucket}/{record.key}")
            continue
        try:
            work_id_from_key(record.key)
        except ValueError as exc:
            raise MalformedMessage(str(exc)) from None
        records.append(record)
    return ParsedBody(records, skipped)
