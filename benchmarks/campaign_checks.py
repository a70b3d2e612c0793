"""The fault campaign's checks: every work archived exactly once and byte for byte, its row
and sync log right, nothing else in the archive, nothing left in the data root."""

from __future__ import annotations

import os
import re
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from campaign_world import (  # noqa: E402
    VISIBILITY_SECONDS,
    Bag,
    Ctx,
    read_rows,
)


@dataclass
class Verdict:
    """The checks after the campaign."""

    synced: int = 0
    lost: list[str] = field(default_factory=list)
    duplicated: list[str] = field(default_factory=list)
    differing: list[str] = field(default_factory=list)
    archive_extra: list[str] = field(default_factory=list)
    leftovers: list[str] = field(default_factory=list)
    unfinished: list[str] = field(default_factory=list)
    queue_left: int = 0
    dlq_left: int = 0

    def ok(self) -> bool:
        """True when nothing was lost, duplicated, different or left over."""
        problems = (
            self.lost,
            self.duplicated,
            self.differing,
            self.archive_extra,
            self.leftovers,
            self.unfinished,
        )
        return not any(problems) and self.queue_left == 0 and self.dlq_left == 0


# -- the checks -----------------------------------------------------------------------------
def check_rows(ctx: Ctx, verdict: Verdict) -> None:
    """One synced, cleaned, unclaimed row per work, synced once."""
    by_key: dict[str, list[dict[str, Any]]] = {}
    for row in read_rows(ctx.db):
        by_key.setdefault(row["object_key"], []).append(row)
    keys = {bag.key for bag in ctx.bags}
    for key in sorted(set(by_key) - keys):
        verdict.duplicated.append(f"{key}: a row for an object that was never restored")
    for bag in ctx.bags:
        rows = by_key.get(bag.key, [])
        if not rows:
            verdict.lost.append(f"{bag.work_id}: no progress row (event never recorded)")
            continue
        if len(rows) > 1:
            verdict.duplicated.append(f"{bag.work_id}: {len(rows)} rows for one object")
        for row in rows:
            check_row(bag, row, verdict)
    verdict.synced = sum(
        any(r["state"] == "synced" for r in by_key.get(bag.key, [])) for bag in ctx.bags
    )


def check_row(bag: Bag, row: dict[str, Any], verdict: Verdict) -> None:
    """A row must be synced once, cleaned and unclaimed."""
    syncs = sum(entry["event"] == "sync done" for entry in row["history"])
    if syncs > 1:
        verdict.duplicated.append(f"{bag.work_id} (row {row['id']}): 'sync done' {syncs} times")
    if row["state"] != "synced":
        error = (row["last_error"] or "").splitlines()[0][:160] if row["last_error"] else ""
        verdict.lost.append(
            f"{bag.work_id} (row {row['id']}): {row['state']}"
            f"{' in ' + row['failed_phase'] if row['failed_phase'] else ''}, attempts "
            f"{row['attempts']}, claimed by {row['claimed_by']}; {error}"
        )
        return
    if row["claimed_by"]:
        verdict.unfinished.append(f"{bag.work_id}: synced but still claimed by {row['claimed_by']}")
    if row["cleaned_at"] is None:
        verdict.unfinished.append(f"{bag.work_id}: synced but its clean-up is not recorded")


def check_sync_logs(ctx: Ctx, verdict: Verdict) -> None:
    """The sync script installed each work once and never beside another sync of it."""
    installs: Counter[str] = Counter()
    for log in ctx.data.glob("logs/sync/*/*.log"):
        text = log.read_text(encoding="utf-8", errors="replace")
        installs[log.stem] += len(re.findall(r": archived$", text, re.MULTILINE))
        if "archived meanwhile by another sync" in text:
            verdict.duplicated.append(f"{log.stem}: two syncs of the work ran at once ({log})")
    for work, count in sorted(installs.items()):
        if count > 1:
            verdict.duplicated.append(f"{work}: installed in the archive {count} times")


def check_archive(ctx: Ctx, verdict: Verdict) -> None:
    """Each work's tree equals its bag, byte for byte; nothing else is in the archive."""
    expected = {rel: data for bag in ctx.bags for rel, data in bag.expected.items()}
    folders = {str(p) for rel in expected for p in PurePosixPath(rel).parents} - {"."}
    seen: dict[str, str] = {}  # relative path -> problem ('' when equal)
    for folder, dirs, files in os.walk(ctx.archive):
        base = Path(folder).relative_to(ctx.archive)
        for name in list(dirs):
            rel = (base / name).as_posix()
            if rel not in folders or (Path(folder) / name).is_symlink():
                verdict.archive_extra.append(rel + "/")
                dirs.remove(name)
        for name in files:
            rel = (base / name).as_posix()
            if rel not in expected:
                verdict.archive_extra.append(rel)
            else:
                same = (Path(folder) / name).read_bytes() == expected[rel]
                seen[rel] = "" if same else "content differs"
    for bag in ctx.bags:
        missing = [rel for rel in bag.expected if rel not in seen]
        differ = [rel for rel in bag.expected if seen.get(rel)]
        if len(missing) == len(bag.expected):
            verdict.lost.append(f"{bag.work_id}: missing in the archive")
        elif missing or differ:
            verdict.differing.append(
                f"{bag.work_id}: {len(missing)} files missing, {len(differ)} differ "
                f"(e.g. {(missing + differ)[0]})"
            )


def check_data_root(ctx: Ctx, verdict: Verdict) -> None:
    """Nothing but progress.sqlite*, logs/, and the empty incoming/ and work/ folders."""
    if not ctx.data.is_dir():
        return
    for entry in sorted(ctx.data.iterdir()):
        if entry.name.startswith("progress.sqlite") or entry.name == "logs":
            continue
        if entry.name in ("incoming", "work") and entry.is_dir() and not entry.is_symlink():
            verdict.leftovers += [
                str(p.relative_to(ctx.data)) + ("/" if p.is_dir() else "")
                for p in sorted(entry.rglob("*"))
            ]
            continue
        verdict.leftovers.append(entry.name)


def verify(ctx: Ctx) -> Verdict:
    """Every check after the campaign."""
    verdict = Verdict()
    check_rows(ctx, verdict)
    check_sync_logs(ctx, verdict)
    check_archive(ctx, verdict)
    check_data_root(ctx, verdict)
    time.sleep(VISIBILITY_SECONDS + 0.5)  # a message still in flight is counted as visible
    verdict.queue_left = ctx.world.queue_count()
    verdict.dlq_left = ctx.world.queue_count(ctx.world.dlq_url)
    return verdict
