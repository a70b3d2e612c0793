"""S3 event notification records, as delivered in SQS message bodies."""

from __future__ import annotations

import fnmatch
import hashlib
import json
import re
from dataclasses import asdict, dataclass, field
from pathlib import PurePosixPath
from typing import Any
from urllib.parse import unquote_plus

from glacier_sync.errors import MalformedMessage

_WORK_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]*$")
BAG_SUFFIX = ".zip"  # bag zips are <work>.bag.zip or <work>.zip


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
    """What one SQS message body held: the wanted records, why others were skipped, and why
    others were unusable (``invalid``: the message must then stay for its dead-letter queue)."""

    records: list[RestoreEvent]
    skipped: list[str]
    invalid: list[str] = field(default_factory=list)


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


class _UnusableRecord(ValueError):
    """One record of a message cannot be used; the message says why."""


def _record(raw: Any, index: int) -> RestoreEvent:
    """One record as a RestoreEvent; raise _UnusableRecord naming the record and the problem."""
    if not isinstance(raw, dict):
        raise _UnusableRecord(f"record {index} is not a JSON object")
    try:
        return _record_fields(raw)
    except KeyError as exc:
        raise _UnusableRecord(f"record {index} lacks field {exc}") from None
    except (TypeError, ValueError, AttributeError) as exc:
        raise _UnusableRecord(f"record {index} has a field of the wrong type ({exc})") from None


def _record_fields(raw: dict[str, Any]) -> RestoreEvent:
    s3 = raw["s3"]
    obj = s3["object"]
    bucket = s3["bucket"]["name"]
    key = unquote_plus(obj["key"])
    name = raw["eventName"]
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


def _json_object(text: Any, what: str) -> dict[str, Any]:
    try:
        data = json.loads(text)
    except (json.JSONDecodeError, TypeError) as exc:
        raise MalformedMessage(f"{what} is not JSON ({exc})") from None
    if not isinstance(data, dict):
        raise MalformedMessage(f"{what} is JSON but not an object")
    return data


def _unwrap_sns(data: dict[str, Any]) -> dict[str, Any]:
    """An S3 notification sent through SNS (S3 -> SNS -> SQS) is the envelope's ``Message``."""
    if "Records" in data or data.get("Type") != "Notification" or "Message" not in data:
        return data
    return _json_object(data["Message"], "the SNS envelope's Message")


def _triage(raw: Any, index: int, event_patterns: list[str]) -> tuple[str, Any]:
    """``("record", event)``, ``("skipped", reason)`` or ``("invalid", reason)``."""
    try:
        record = _record(raw, index)
    except _UnusableRecord as exc:
        return "invalid", str(exc)
    where = f"s3://{record.bucket}/{record.key}"
    if not event_name_matches(record.event_name, event_patterns):
        return "skipped", f"skipped {record.event_name} for {where}"
    if not record.key.endswith(BAG_SUFFIX):
        return "skipped", f"skipped {where}: not a bag zip (.bag.zip or .zip)"
    try:
        work_id_from_key(record.key)
    except ValueError as exc:
        return "invalid", f"record {index}: {exc}"
    return "record", record


def parse_message_body(body: str, event_patterns: list[str]) -> ParsedBody:
    """Parse one message body; raise MalformedMessage when it is not an S3 notification.

    An SNS envelope is unwrapped first. Bodies without records (``s3:TestEvent``) give no records
    and a skip reason; records whose event name matches none of ``event_patterns``, or whose key
    is not a zip, are skipped with a reason; unusable records are listed in ``invalid`` while the
    usable ones are still returned.
    """
    data = _unwrap_sns(_json_object(body, "body"))
    if "Records" not in data:
        kind = data.get("Event") or data.get("Type") or "a body without Records"
        return ParsedBody([], [f"skipped {kind}"])
    raw_records = data["Records"]
    if not isinstance(raw_records, list):
        raise MalformedMessage("`Records` is not a list")
    found: dict[str, list[Any]] = {"record": [], "skipped": [], "invalid": []}
    for index, raw in enumerate(raw_records):
        kind, value = _triage(raw, index, event_patterns)
        found[kind].append(value)
    return ParsedBody(found["record"], found["skipped"], found["invalid"])
