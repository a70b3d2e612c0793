"""The Works view's data: the archive's works by what an operator must know of them.

From the progress database only (no Airflow): counts per state, the works held for attention
(phase, reason, fix), the works in flight (phase, claimant, age), recently archived works
(archive path, fixity evidence), restored copies that expire before their work is archived, a
search by work id, and each work's runs (the DAG runs that handled it, from its history).
Everything is plain JSON-able data; ``glacier_sync_airflow.works_view`` serves it.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import and_, func, not_, or_, select

from glacier_sync.records.claimants import airflow_run_id
from glacier_sync.records.models import Progress
from glacier_sync.records.progress_views import (
    StatusViews,
    expires_soon,
    expiring_clause,
    expiry_note,
)
from glacier_sync.records.states import PENDING, State

SECTION_LIMIT = 200  # rows per section; the counts say how many there are in all
SEARCH_LIMIT = 100


@dataclass(frozen=True)
class BoardRules:
    """What makes a work worth an operator's look (from the settings)."""

    max_attempts: int
    expiry_margin: timedelta


def works_board(store: StatusViews, rules: BoardRules, now: datetime) -> dict[str, Any]:
    """Counts per state and the four sections of the Works view, newest first; each section
    a query of its own, at most SECTION_LIMIT rows (the counts say how many there are)."""
    pending = Progress.state.in_(PENDING)
    attention = or_(
        Progress.needs_attention.is_(True),
        and_(Progress.state == State.FAILED, Progress.attempts >= rules.max_attempts),
    )
    sections = {
        "attention": select(Progress).where(pending, attention),
        "in_flight": select(Progress).where(
            pending, not_(attention), Progress.claimed_until >= now
        ),
        # Preselected in SQL; expires_soon (the one rule, shared with status) decides.
        "expiring": select(Progress).where(expiring_clause(now, rules.expiry_margin)),
    }
    board: dict[str, Any] = {"now": _iso(now)}
    with store.session() as session:
        counts = dict(
            session.execute(select(Progress.state, func.count()).group_by(Progress.state)).all()
        )
        held = session.scalar(select(func.count()).where(Progress.needs_attention.is_(True)))
        for name, query in sections.items():
            rows = session.scalars(
                query.order_by(Progress.updated_at.desc(), Progress.id.desc()).limit(SECTION_LIMIT)
            )
            board[name] = [work_entry(r, rules, now) for r in rows]
        archived = session.scalars(
            select(Progress)
            .where(Progress.state == State.SYNCED)
            .order_by(Progress.synced_at.desc(), Progress.id.desc())
            .limit(SECTION_LIMIT)
        )
        board["archived"] = [work_entry(r, rules, now) for r in archived]
    board["counts"] = {**{state: counts.get(state, 0) for state in State}, "held": held or 0}
    board["expiring"] = [w for w in board["expiring"] if w["expiry"]]
    return board


def search_works(store: StatusViews, text: str, rules: BoardRules, now: datetime) -> list[dict]:
    """The works whose id contains ``text`` (any case), newest first, at most SEARCH_LIMIT."""
    pattern = (
        "%"
        + text.strip().lower().replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
        + "%"
    )
    query = (
        select(Progress)
        .where(func.lower(Progress.work_id).like(pattern, escape="\\"))
        .order_by(Progress.updated_at.desc())
        .limit(SEARCH_LIMIT)
    )
    with store.session() as session:
        return [work_entry(r, rules, now) for r in session.scalars(query)]


def work_entry(row: Progress, rules: BoardRules, now: datetime) -> dict[str, Any]:
    """One work as the view shows it: where it is, why it waits, what to do, its evidence."""
    entry: dict[str, Any] = {
        "id": row.id,
        "work_id": row.work_id,
        "state": row.state,
        "phase": row.failed_phase or row.state,
        "attempts": row.attempts,
        "key": row.object_key,
        "updated_at": _iso(row.updated_at),
        "age_seconds": max(0, int((now - row.updated_at).total_seconds())),
        "claimed_by": row.claimed_by,
        "claimed_until": _iso(row.claimed_until),
        "reason": row.last_error,
        "held": bool(row.needs_attention),
        "needs_attention": _needs_attention(row, rules),
        "fix": _fix(row, rules),
        "expires_at": _iso(row.restore_expires_at),
        "expiry": expiry_note(row) if expires_soon(row, now, rules.expiry_margin) else None,
        "archive_path": row.archive_path,
        "synced_at": _iso(row.synced_at),
        "fixity": _fixity(row.fixity),
        "runs": work_runs(row),
        "retryable": row.state in PENDING and not held_by_a_live_run(row, now),
    }
    return entry


def work_runs(row: Progress) -> list[dict[str, str | None]]:
    """The runs that handled the work, oldest first (from its history and its hold): each
    claimant as recorded and, for an Airflow task's, its DAG run id (what the UI links to)."""
    claimants: list[str] = []
    for event in row.history or []:
        for name in ("run", "failed_run"):
            run = event.get(name)
            if isinstance(run, str) and run and run not in claimants:
                claimants.append(run)
    if row.failed_run and row.failed_run not in claimants:
        claimants.append(row.failed_run)
    return [{"claimant": c, "dag_run_id": airflow_run_id(c)} for c in claimants]


def held_by_a_live_run(row: Progress, now: datetime) -> bool:
    """A run holds the work's claim and its lease still runs: a retry would not reach it."""
    return bool(row.claimed_by) and row.claimed_until is not None and row.claimed_until >= now


def _needs_attention(row: Progress, rules: BoardRules) -> bool:
    """Held for an operator, or failed as often as a run may try it."""
    return bool(row.needs_attention) or (
        row.state == State.FAILED and row.attempts >= rules.max_attempts
    )


def _fix(row: Progress, rules: BoardRules) -> str | None:
    """What an operator does about the work, in one line (None when nothing is asked)."""
    if _needs_attention(row, rules):
        return (
            f"fix the cause named in the reason, then Retry (or `glacier-sync retry {row.work_id}`)"
            ": no run takes it again before"
        )
    if row.state == State.FAILED:
        return "none: the next run tries it again (a fault of the network or of S3 is retried)"
    return None


def _fixity(fixity: dict[str, Any] | None) -> dict[str, Any] | None:
    """The debag's evidence: files, bytes, algorithms, when, the manifests' SHA-256."""
    if not fixity:
        return None
    keep = ("files", "bytes", "algorithms", "validated_at", "payload_oxum", "manifest_sha256")
    return {name: fixity.get(name) for name in keep if fixity.get(name) is not None}


def _iso(value: datetime | None) -> str | None:
    return value.isoformat(timespec="seconds") + "Z" if value else None
