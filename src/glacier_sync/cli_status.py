"""``glacier-sync status``: the progress rows as an operator reads them (the named works, all,
or the stuck ones), with each work's error, expiry, hold, claim, fixity evidence and archive
path (the host's too, when the stack says where the archive is mounted)."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from glacier_sync.cli_common import EXIT_FAILED, EXIT_OK, settings_from


def cmd_status(args: argparse.Namespace) -> int:
    """Show progress rows: the named works, all, or the stuck ones."""
    from datetime import timedelta

    from glacier_sync.archive.root import archive_host_path, archive_host_root
    from glacier_sync.records.progress import expires_soon, expiry_note
    from glacier_sync.runner import open_store

    settings = settings_from(args)
    store = open_store(settings)
    margin = timedelta(hours=settings.expiry_warning_hours)
    if args.stuck:
        rows = store.stuck(timedelta(hours=args.hours), settings.max_attempts, margin)
    else:
        rows = store.find(args.works or None)
    if args.works and not rows:
        print(f"no progress row for {', '.join(args.works)}", file=sys.stderr)
        return EXIT_FAILED
    host_root = archive_host_root()
    if args.json:
        summaries = [r.summary() for r in rows]
        if host_root:
            for summary in summaries:
                summary["archive_host_path"] = archive_host_path(
                    summary["archive_path"], settings.archive_root, host_root
                )
        print(json.dumps(summaries, indent=2))
        return EXIT_OK
    print(f"{'ID':>5}  {'WORK':<16} {'STATE':<10} {'PHASE':<9} {'TRIES':>5}  {'UPDATED':<19}  KEY")
    now = store.clock()
    for row in rows:
        print(
            f"{row.id:>5}  {row.work_id:<16} {row.state:<10} {row.failed_phase or '':<9} "
            f"{row.attempts:>5}  {row.updated_at:%Y-%m-%d %H:%M:%S}  {row.object_key}"
        )
        if row.last_error and (args.works or args.stuck):
            print(f"       error: {row.last_error}")
        if (args.works or args.stuck) and expires_soon(row, now, margin):
            print(f"       {expiry_note(row)}")
        if row.needs_attention and (args.works or args.stuck):
            print(
                f"       needs attention: a permanent failure (in {row.failed_run}); no run takes "
                f"it again until you fix the cause and run `glacier-sync retry {row.work_id}` "
                "(or clear that run's failed task in the UI)"
            )
        if row.claimed_by and (args.works or args.stuck):
            print(f"       {_claim_note(row, now)}")
        if row.fixity and args.works:
            for line in _fixity_lines(row.fixity):
                print(f"       {line}")
        if row.archive_path and args.works:
            host = archive_host_path(row.archive_path, settings.archive_root, host_root)
            print(f"       archive: {row.archive_path}" + (f" (host: {host})" if host else ""))
    return EXIT_OK


def _fixity_lines(fixity: dict[str, Any]) -> list[str]:
    """The fixity evidence of a work, readable: what its debag proved and when."""
    lines = [
        f"fixity: {fixity.get('files')} files, {fixity.get('bytes')} bytes checked against "
        f"{', '.join(fixity.get('algorithms') or [])} at {fixity.get('validated_at')}"
        + (f" (Payload-Oxum {fixity['payload_oxum']})" if fixity.get("payload_oxum") else "")
    ]
    for name, digest in (fixity.get("manifest_sha256") or {}).items():
        lines.append(f"  {name} sha256 {digest}")
    return lines


def _claim_note(row, now) -> str:
    from glacier_sync.records.claimants import is_dead_local_run

    until = row.claimed_until
    if is_dead_local_run(row.claimed_by):
        return f"held by {row.claimed_by}, whose process is gone; the next run takes it over"
    if until is not None and until < now:
        return (
            f"held by {row.claimed_by}, which stopped renewing its claim at {until:%H:%M:%S} UTC "
            "(a dead run); the next run takes the work over"
        )
    return f"being processed by {row.claimed_by} (lease until {until:%H:%M:%S} UTC)"
