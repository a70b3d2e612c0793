"""The ``glacier-sync`` command: operate the pipeline without Airflow.

Heavy imports (boto3, SQLAlchemy, pydantic) happen inside the commands, so ``--help`` is fast.
Exit status: 0 success, 1 a work or an operation failed, 2 invalid settings or usage.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from glacier_sync.cli_common import EXIT_CONFIG, EXIT_FAILED, EXIT_OK, settings_from
from glacier_sync.cli_status import cmd_status


def cmd_check_config(args: argparse.Namespace) -> int:
    """Validate the settings, print them with secrets masked, optionally reach the database."""
    settings = settings_from(args)
    print(json.dumps(settings.public_dict(), indent=2, default=str))
    settings.database_url()
    if not settings.sync_command.is_file():
        print(f"warning: sync_command {settings.sync_command} does not exist", file=sys.stderr)
    if args.connect:
        from glacier_sync.runner import open_store

        open_store(settings)
        print("progress database: reachable and migrated")
    print("settings: OK")
    return EXIT_OK


def _print_outcomes(outcomes) -> int:
    failed = 0
    for outcome in outcomes:
        phases = ", ".join(f"{k} {v:.2f}s" for k, v in outcome.seconds.items())
        if outcome.ok:
            print(f"OK     {outcome.work_id} -> {outcome.archive_path} ({phases})")
        else:
            failed += 1
            print(f"FAILED {outcome.work_id} (row {outcome.progress_id}): {outcome.error}")
    return EXIT_FAILED if failed else EXIT_OK


def cmd_run_once(args: argparse.Namespace) -> int:
    """Poll every queue once and carry each restored work to the archive."""
    from glacier_sync.runner import Pipeline

    settings = settings_from(args)
    settings.require_archive_root()
    pipeline = Pipeline(settings)
    report, outcomes = pipeline.run_once()
    print(
        f"poll: {report.received} messages, {report.recorded} new works, "
        f"{report.duplicates} duplicate events, {len(report.skipped)} skipped records, "
        f"{len(report.malformed)} malformed messages left in the queue"
    )
    for note in report.malformed:
        print(f"  {note}")
    if not outcomes:
        print("no work to process")
    status = _print_outcomes(outcomes)
    return EXIT_FAILED if report.malformed and status == EXIT_OK and args.strict else status


def cmd_process_bag(args: argparse.Namespace) -> int:
    """Debag and sync one bag zip from disk."""
    from glacier_sync.records.states import State
    from glacier_sync.runner import Pipeline

    settings = settings_from(args, archive_root=args.archive_root)
    if not args.zip.is_file():
        print(f"error: bag zip {args.zip} does not exist", file=sys.stderr)
        return EXIT_FAILED
    if not args.archive_root.is_dir():
        print(
            f"error: archive root {args.archive_root} does not exist; create it first",
            file=sys.stderr,
        )
        return EXIT_FAILED
    pipeline = Pipeline(settings)
    pipeline.archive_root()
    progress_id = pipeline.register_bag(args.zip, args.key)
    claimed = pipeline.claim("local", ids=[progress_id])
    if not claimed:
        row = pipeline.store.get(progress_id)
        print(
            f"work {row.work_id} (row {progress_id}) is {row.state}"
            + (" and claimed by another run" if row.claimed_by else "")
            + "; nothing to do (`glacier-sync retry` to force another attempt)"
        )
        return EXIT_OK if row.state == State.SYNCED else EXIT_FAILED
    return _print_outcomes([pipeline.process(progress_id)])


def cmd_request_restore(args: argparse.Namespace) -> int:
    """Ask S3 to restore works' bags from Glacier / Deep Archive, one result line per work."""
    from glacier_sync.intake.restore_requests import (
        RECORDED,
        RestoreRequester,
        parse_items,
        pick_queue,
        summary,
    )
    from glacier_sync.runner import open_store

    settings = settings_from(args)
    items = parse_items(" ".join(args.works)) if args.works else [args.key]
    requester = RestoreRequester(
        settings, open_store(settings), queue=pick_queue(settings, args.queue), bucket=args.bucket
    )
    results = requester.request_all(
        items, args.tier or settings.restore_tier, args.days or settings.restore_days
    )
    for result in results:
        print(result.line(), file=sys.stdout if result.outcome in RECORDED else sys.stderr)
    if len(results) > 1:
        print(f"summary: {summary(results)}")
    return EXIT_OK if all(r.outcome in RECORDED for r in results) else EXIT_FAILED


def cmd_retry(args: argparse.Namespace) -> int:
    """Make a failed work eligible again and, unless --reset-only, process it now."""
    from glacier_sync.runner import Pipeline

    settings = settings_from(args)
    pipeline = Pipeline(settings)
    if not args.reset_only:
        pipeline.archive_root()  # before any claim or reset: the archive must be there
    pipeline.finish_cleanups()
    ids = pipeline.store.reset_for_retry(args.work)
    if args.reset_only:
        print(f"work {args.work}: rows {ids} will be picked up by the next run")
        return EXIT_OK
    outcomes = []
    for source in ("s3", "local"):
        outcomes += pipeline.process_pending(source, ids=ids)
    if not outcomes:
        held = [r for r in pipeline.store.find([args.work]) if r.id in ids and r.claimed_by]
        until = max((r.claimed_until for r in held if r.claimed_until), default=None)
        print(
            f"work {args.work}: rows {ids} are claimed by a running job"
            + (f" until {until:%Y-%m-%d %H:%M:%S} UTC" if until else "")
            + "; try again later"
        )
        return EXIT_FAILED
    return _print_outcomes(outcomes)


def _open_unmigrated(args: argparse.Namespace):
    """The settings' progress database, opened without migrating (UnknownRevision when a newer
    glacier-sync migrated it), and its masked URL."""
    from glacier_sync.records.progress import ProgressStore
    from glacier_sync.settings import mask_url

    url = settings_from(args).database_url()
    return ProgressStore(url, auto_migrate=False), mask_url(url)


def cmd_db_current(args: argparse.Namespace) -> int:
    """Print the database's schema revision and the newest this glacier-sync knows."""
    from glacier_sync.records.progress import HEAD_REVISION

    store, where = _open_unmigrated(args)
    current = store.current_revision()
    print(f"progress database: {where}")
    print(f"revision:          {current or 'none (never migrated)'}")
    print(f"newest known:      {HEAD_REVISION}")
    if current == HEAD_REVISION:
        print("up to date")
    else:
        print("upgrade due: run `glacier-sync db upgrade`")
    return EXIT_OK


def cmd_db_upgrade(args: argparse.Namespace) -> int:
    """Migrate the progress database to the newest revision (nothing to do when current)."""
    from glacier_sync.records.progress import HEAD_REVISION

    store, where = _open_unmigrated(args)
    before = store.current_revision()
    if before == HEAD_REVISION:
        print(f"progress database {where}: at revision {HEAD_REVISION} already; nothing to do")
        return EXIT_OK
    store.migrate()
    print(
        f"progress database {where}: upgraded from {before or 'an empty database'} to "
        f"revision {HEAD_REVISION}"
    )
    return EXIT_OK


def cmd_db_downgrade(args: argparse.Namespace) -> int:
    """Take the progress database back to an older revision, for an older image."""
    from glacier_sync.records.progress import require_known

    require_known(args.revision)
    store, where = _open_unmigrated(args)
    before = store.downgrade(args.revision)
    if before == args.revision:
        print(f"progress database {where}: at revision {args.revision} already; nothing to do")
        return EXIT_OK
    print(
        f"progress database {where}: downgraded from {before} to revision {args.revision}. "
        "This glacier-sync migrates it up again whenever it opens it: deploy the older image "
        "before the stack runs again"
    )
    return EXIT_OK


def cmd_shared_mark(args: argparse.Namespace) -> int:
    """Mark the shared folders with the instance id (airflow-init, once per `up`)."""
    from glacier_sync.shared_storage import mark_shared_roots

    written = mark_shared_roots(settings_from(args))
    for marker in written:
        print(f"marked {marker.parent} for instance {marker.read_text().strip()}")
    if not written:
        print("shared folders: marked for this instance already")
    return EXIT_OK


def cmd_shared_check(args: argparse.Namespace) -> int:
    """Exit 1 unless this machine sees the instance's shared folders (a worker's start)."""
    from glacier_sync.shared_storage import check_shared_roots, shared_roots

    settings = settings_from(args)
    if not settings.instance_id:
        print("shared folders: not checked (instance_id is not set)")
        return EXIT_OK
    check_shared_roots(settings)
    where = ", ".join(str(root) for root in shared_roots(settings).values())
    print(f"shared folders: {where} belong to instance {settings.instance_id}")
    return EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every subcommand."""
    parser = argparse.ArgumentParser(
        prog="glacier-sync",
        description="Restore pipeline of the archive: S3 restore events -> download -> debag -> "
        "sync, recorded in the progress database. Settings: docs/configuration.md.",
    )
    parser.add_argument(
        "--config", type=Path, help="TOML config file (default $GLACIER_SYNC_CONFIG)"
    )
    parser.add_argument("--env", choices=["dev", "prod"], help="profile (default: the config's)")
    parser.add_argument("-v", "--verbose", action="store_true", help="log every step")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--data-dir",
        type=Path,
        help="data root: progress DB (SQLite default), downloads, work folders, logs",
    )

    p = sub.add_parser(
        "check-config", parents=[common], help="validate and print the settings (secrets masked)"
    )
    p.add_argument("--connect", action="store_true", help="also open and migrate the database")
    p.set_defaults(func=cmd_check_config)

    p = sub.add_parser(
        "run-once", parents=[common], help="poll -> download -> debag -> sync, without Airflow"
    )
    p.add_argument(
        "--strict", action="store_true", help="exit 1 when a malformed message was left in a queue"
    )
    p.set_defaults(func=cmd_run_once)

    p = sub.add_parser("process-bag", parents=[common], help="debag and sync one bag zip from disk")
    p.add_argument("zip", type=Path, help="the bag zip, e.g. W1NLM4700.bag.zip")
    p.add_argument("--archive-root", type=Path, required=True, help="root of the archive tree")
    p.add_argument(
        "--key",
        help="archive key of the zip (places the work: "
        "Archive0/00/W1NLM4700/W1NLM4700.bag.zip -> <root>/Archive0/00/W1NLM4700)",
    )
    p.set_defaults(func=cmd_process_bag)

    p = sub.add_parser("status", parents=[common], help="show works in the progress database")
    p.add_argument("works", nargs="*", metavar="WORK", help="work ids (default: all)")
    p.add_argument(
        "--stuck",
        action="store_true",
        help="only unsynced works untouched for --hours, failed past max_attempts, or held by "
        "a dead run",
    )
    p.add_argument("--hours", type=float, default=24.0, help="age that counts as stuck (24)")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_status)

    p = sub.add_parser(
        "request-restore", parents=[common], help="request the restore of a work's bag from Glacier"
    )
    target = p.add_mutually_exclusive_group(required=True)
    target.add_argument(
        "works",
        nargs="*",
        default=[],
        metavar="WORK",
        help="work ids known to the progress database, or keys (several allowed)",
    )
    target.add_argument("--key", help="object key, e.g. Archive0/00/W1NLM4700/W1NLM4700.bag.zip")
    p.add_argument("--bucket", help="bucket (default: the queue entry's `bucket`)")
    p.add_argument("--queue", help="queue entry giving region and profile (default: the first)")
    p.add_argument("--days", type=int, help="days the restored copy stays (default restore_days)")
    p.add_argument("--tier", choices=["Standard", "Bulk"], help="retrieval tier")
    p.set_defaults(func=cmd_request_restore)

    p = sub.add_parser(
        "retry", parents=[common], help="retry a failed work now (no new SQS message needed)"
    )
    p.add_argument("work", help="work id")
    p.add_argument(
        "--reset-only", action="store_true", help="only make it eligible for the next scheduled run"
    )
    p.set_defaults(func=cmd_retry)

    p = sub.add_parser(
        "db", help="the progress database's schema revision: current, upgrade, downgrade"
    )
    db = p.add_subparsers(dest="db_command", required=True, metavar="ACTION")
    q = db.add_parser(
        "current",
        parents=[common],
        help="print the database's revision and the newest this glacier-sync knows",
    )
    q.set_defaults(func=cmd_db_current)
    q = db.add_parser(
        "upgrade",
        parents=[common],
        help="migrate to the newest revision (nothing to do when current)",
    )
    q.set_defaults(func=cmd_db_upgrade)
    q = db.add_parser(
        "downgrade",
        parents=[common],
        help="migrate back to REV, so that an older image can run on the database",
    )
    q.add_argument(
        "revision", metavar="REV", help="the newest revision of the older image, e.g. 0002"
    )
    q.set_defaults(func=cmd_db_downgrade)

    p = sub.add_parser(
        "shared-folders",
        help="mark or check the data and work folders every worker of the instance must share",
    )
    shared = p.add_subparsers(dest="shared_command", required=True, metavar="ACTION")
    q = shared.add_parser(
        "mark", parents=[common], help="write the instance id into each shared folder"
    )
    q.set_defaults(func=cmd_shared_mark)
    q = shared.add_parser(
        "check",
        parents=[common],
        help="exit 1 unless each shared folder carries this instance's id (a worker's start)",
    )
    q.set_defaults(func=cmd_shared_check)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``glacier-sync`` console script."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    from glacier_sync.errors import ConfigError, GlacierSyncError

    try:
        return args.func(args)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except GlacierSyncError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except Exception as exc:
        if type(exc).__module__.startswith(("botocore", "boto3")):
            print(f"error: AWS: {exc}", file=sys.stderr)
            return EXIT_FAILED
        raise


if __name__ == "__main__":
    sys.exit(main())
