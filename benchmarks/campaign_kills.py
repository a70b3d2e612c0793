"""The fault campaign's kill scheduler: runs of ``glacier-sync run-once`` launched in their own
process groups, killed by a timer or at a fault point, each kill placed by the phase it hit;
then plain re-runs finish the works."""

from __future__ import annotations

import os
import random
import re
import shutil
import signal
import sqlite3
import subprocess
import time
from collections import Counter
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from campaign_world import (  # noqa: E402
    BIN,
    CAMPAIGN_MESSAGES_PER_RUN,
    CLEAN_MESSAGES_PER_RUN,
    CONCURRENT_SHARE,
    DEFAULT_PASSES,
    EARLY_SHARE,
    FAULT_POINTS,
    FAULT_SHARE,
    MAX_CLEAN_RUNS,
    NOT_PASSED,
    REPO,
    RUN_TIMEOUT,
    SYNC_SCRIPT,
    VISIBILITY_SECONDS,
    Ctx,
    base_env,
    build_bags,
    read_rows,
    restore_bags,
)

from glacier_sync.faults import FAULT_FILE_ENV  # noqa: E402
from glacier_sync.records.claimants import this_host  # noqa: E402


@dataclass
class Kill:
    """One run killed: by the timer or a fault point, where it was, after how long."""

    how: str
    where: str
    after: float
    beside: bool


@dataclass
class Tally:
    """What the campaign did."""

    kills: list[Kill] = field(default_factory=list)
    rounds: int = 0
    runs: int = 0
    concurrent_rounds: int = 0
    unfired_faults: int = 0
    finished_ok: int = 0
    finished_failed: int = 0
    hung: int = 0
    clean_runs: int = 0
    failures: Counter[str] = field(default_factory=Counter)
    warnings: Counter[str] = field(default_factory=Counter)
    stop_reason: str = "kills done"
    clean_stop: str = "every work synced, queue empty"


@dataclass
class Plan:
    """A run to launch in a round: when, whether and when to kill it, which fault point."""

    offset: float  # seconds after the round began
    kill_after: float | None  # seconds after the trigger (None: never killed by the timer)
    on_claim: bool  # trigger: the run's first claim of a work (else: its start)
    fault: tuple[str, int] | None
    beside: bool


@dataclass
class Launch:
    """A running ``glacier-sync run-once``."""

    plan: Plan
    proc: subprocess.Popen
    started: float
    output: Path
    armed: float | None = None  # when the kill timer started


def launch(ctx: Ctx, plan: Plan, index: int, env: dict[str, str]) -> Launch:
    """Start ``glacier-sync run-once`` in its own process group, output to a file."""
    output = ctx.tmp / "runs" / f"run-{index:04d}.out"
    output.parent.mkdir(exist_ok=True)
    with output.open("w") as out:
        proc = subprocess.Popen(
            [str(BIN / "glacier-sync"), "run-once"],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    return Launch(plan, proc, time.monotonic(), output)


def kill_group(run: Launch) -> int:
    """SIGKILL the run's process group and reap the run; return its exit status."""
    with suppress(ProcessLookupError):
        os.killpg(run.proc.pid, signal.SIGKILL)
    return run.proc.wait()


def note_output(run: Launch, tally: Tally, tmp: Path) -> None:
    """Count the distinct failure and warning lines of a run (killed or not), with the folder,
    the work ids and the numbers masked."""
    try:
        text = run.output.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return
    for line in text.splitlines():
        logged = re.match(r"^[\d-]+ [\d:,]+ (?P<level>[A-Z]+) (?P<rest>.*)$", line)
        level = logged["level"] if logged else ""
        line = logged["rest"] if logged else line
        masked = re.sub(r"\d{2,}", "N", re.sub(r"W1FC\d{5}", "W…", line.replace(str(tmp), "…")))
        if line.startswith(("FAILED", "error:", "Traceback")) or level in ("ERROR", "CRITICAL"):
            tally.failures[masked[:200]] += 1
        elif level == "WARNING":
            tally.warnings[masked[:200]] += 1


def phase_of(ctx: Ctx, row: dict[str, Any]) -> str:
    """Which part of a work's processing the disk and the row show (for a held row)."""
    work, key = row["work_id"], row["object_key"]
    zip_path = ctx.data / "incoming" / key
    group = ctx.archive / PurePosixPath(key).parent.parent
    if zip_path.parent.is_dir() and any(zip_path.parent.glob(f".{zip_path.name}.part*")):
        return "download: transfer"
    if (ctx.data / "work" / f".debag-{work}").exists():
        return "debag: extracting"
    if group.is_dir() and any(group.glob(f".{work}.syncing.*")):
        return "sync: copying"
    state = row["state"]
    if state == "restored" and zip_path.exists():
        return "download: zip in place, not recorded"
    if state == "downloaded" and (ctx.data / "work" / work).is_dir():
        return "debag: placed, not recorded"
    if state == "debagged" and (group / work).is_dir():
        return "sync: archived, not recorded"
    last = row["history"][-1]["event"] if row["history"] else "nothing"
    if last == "download started":
        return "download: before the transfer"
    return f"claimed, between phases (after '{last}')"


def holds_claim(ctx: Ctx, pid: int) -> bool:
    """True when the run with process id ``pid`` holds a claim on a work (read-only query)."""
    if not ctx.db.exists():
        return False
    try:
        with sqlite3.connect(f"file:{ctx.db}?mode=ro", uri=True, timeout=5) as conn:
            found = conn.execute(
                "SELECT 1 FROM glacier_sync_progress WHERE claimed_by LIKE ? OR claimed_by LIKE ?"
                " LIMIT 1",
                tuple(f"glacier-sync@{this_host()}:{pid}{sep}%" for sep in (":", ".")),
            ).fetchone()
    except sqlite3.OperationalError:
        return False
    return found is not None


def where_killed(ctx: Ctx, pid: int) -> str:
    """Where the run with process id ``pid`` was when it died."""
    rows = read_rows(ctx.db)
    owner = re.compile(rf"^glacier-sync@{re.escape(this_host())}:{pid}[.:]")
    held = [r for r in rows if owner.match(r["claimed_by"] or "")]
    if held:
        return phase_of(ctx, held[0])
    if any(r["state"] == "synced" and r["cleaned_at"] is None for r in rows):
        return "clean-up"
    return "no work held (start-up, poll, between works)"


# -- the campaign ---------------------------------------------------------------------------
def early_window(ctx: Ctx) -> tuple[float, float]:
    """Delays after the start for kills in the start-up, the clean-ups it finishes, the poll."""
    return 0.7 * ctx.startup, ctx.startup + 0.015 * CAMPAIGN_MESSAGES_PER_RUN


def work_window(ctx: Ctx) -> float:
    """The longest delay after a run's first claim: twice the time of the works each killed run
    may finish (``share``), so that the kills spread over all the works."""
    return 2 * ctx.pace * ctx.share * ctx.per_work


def fault_points() -> dict[str, int]:
    """The fault points the library and the default sync script pass, with their pass bounds
    (the run ids, staging names and points change as the library does: read them)."""
    points = set()
    for source in (REPO / "src" / "glacier_sync").rglob("*.py"):
        points |= set(re.findall(r'checkpoint\("([^"]+)"\)', source.read_text(encoding="utf-8")))
    script = SYNC_SCRIPT.read_text(encoding="utf-8")
    points |= {f"sync:{name}" for name in re.findall(r"^\s*fault_point ([\w-]+)", script, re.M)}
    return {p: FAULT_POINTS.get(p, DEFAULT_PASSES) for p in sorted(points - NOT_PASSED)}


def plan_run(ctx: Ctx, rng: random.Random, offset: float, beside: bool) -> Plan:
    """A run killed early (start-up, poll) or, mostly, at a random instant of its works."""
    if rng.random() < EARLY_SHARE:
        return Plan(offset, rng.uniform(*early_window(ctx)), False, None, beside)
    return Plan(offset, rng.uniform(0.0, work_window(ctx)), True, None, beside)


def plan_round(ctx: Ctx, rng: random.Random, kills_left: int) -> list[Plan]:
    """One or two runs, each killed by a timer, the first maybe at a fault point instead."""
    first = plan_run(ctx, rng, 0.0, beside=False)
    if rng.random() < FAULT_SHARE:
        point = rng.choice(sorted(ctx.points))
        first.fault = (point, rng.randint(1, ctx.points[point]))
        first.on_claim = True  # the timer is a fallback: the fault point may not be reached
        first.kill_after = 1.5 * work_window(ctx)
    plans = [first]
    if rng.random() < CONCURRENT_SHARE and kills_left >= 2:
        plans.append(plan_run(ctx, rng, rng.uniform(0.0, 1.5), beside=True))
    return plans


def run_round(ctx: Ctx, rng: random.Random, tally: Tally) -> None:
    """Launch the round's runs, kill them as planned, record where each kill landed."""
    plans = plan_round(ctx, rng, ctx.args.kills - len(tally.kills))
    tally.rounds += 1
    tally.concurrent_rounds += len(plans) > 1
    fault_file = ctx.tmp / "fault"
    began, active = time.monotonic(), []
    waiting = list(plans)
    while waiting or active:
        now = time.monotonic()
        for plan in [p for p in waiting if now - began >= p.offset]:
            waiting.remove(plan)
            env = dict(ctx.env)
            if plan.fault:
                fault_file.write_text(f"{plan.fault[0]} {plan.fault[1]}\n")
                env[FAULT_FILE_ENV] = str(fault_file)
            tally.runs += 1
            active.append(launch(ctx, plan, tally.runs, env))
        for run in list(active):
            if settle(ctx, run, tally, fault_file):
                active.remove(run)
        time.sleep(0.01)
    for path in (fault_file, Path(f"{fault_file}.fired")):
        path.unlink(missing_ok=True)


def settle(ctx: Ctx, run: Launch, tally: Tally, fault_file: Path) -> bool:
    """Kill the run when its time came; record its end. True once the run is over."""
    now = time.monotonic()
    age = now - run.started
    status = run.proc.poll()
    how = None
    if status is None:
        if run.armed is None and (not run.plan.on_claim or holds_claim(ctx, run.proc.pid)):
            run.armed = now
        due = run.armed is not None and run.plan.kill_after is not None
        if due and now - run.armed >= run.plan.kill_after and len(tally.kills) < ctx.args.kills:
            status, how = kill_group(run), "timer"
        elif age > RUN_TIMEOUT:
            kill_group(run)
            tally.hung += 1
            note_output(run, tally, ctx.tmp)
            return True
        else:
            return False
    fired = Path(f"{fault_file}.fired")
    if how is None and status == -signal.SIGKILL and run.plan.fault and fired.exists():
        how = "fault " + " #".join(map(str, run.plan.fault))
    if how is not None:
        tally.kills.append(Kill(how, where_killed(ctx, run.proc.pid), age, run.plan.beside))
        note_output(run, tally, ctx.tmp)
        return True
    if run.plan.fault and not fired.exists():
        tally.unfired_faults += 1
    if status == 0:
        tally.finished_ok += 1
    else:
        tally.finished_failed += 1
    note_output(run, tally, ctx.tmp)
    return True


def all_synced(ctx: Ctx) -> bool:
    """True when every work has a synced, cleaned row."""
    done = {r["object_key"] for r in read_rows(ctx.db) if r["state"] == "synced"}
    return all(bag.key in done for bag in ctx.bags)


def adjust_pace(ctx: Ctx, tally: Tally, kills: int) -> None:
    """After a round with ``kills`` kills: shorten the kill window when more works got synced
    than planned, lengthen it when fewer; re-plan the works per kill for the kills left."""
    synced = sum(r["state"] == "synced" for r in read_rows(ctx.db))
    gained, planned = synced - ctx.synced, ctx.share * max(kills, 1)
    if gained > 1.5 * planned + 1:
        ctx.pace = max(0.1, ctx.pace * 0.8)
    elif gained < 0.5 * planned:
        ctx.pace = min(6.0, ctx.pace * 1.2)
    ctx.synced = synced
    kills_left = max(ctx.args.kills - len(tally.kills), 1)
    ctx.share = max(0.5, 0.8 * (len(ctx.bags) - synced) / kills_left)


def reserve(ctx: Ctx) -> float:
    """Seconds to keep for the clean re-runs and the checks."""
    unsynced = len(ctx.bags) - sum(r["state"] == "synced" for r in read_rows(ctx.db))
    return 30.0 + 1.5 * unsynced * ctx.per_work + 2 * ctx.startup


def campaign(ctx: Ctx, rng: random.Random, tally: Tally) -> None:
    """Rounds of killed runs until K kills, every work synced, or the time bound nears."""
    last_report = 0
    while len(tally.kills) < ctx.args.kills:
        if ctx.time_left() < reserve(ctx):
            tally.stop_reason = "time bound near"
            return
        if tally.rounds and all_synced(ctx):
            tally.stop_reason = "every work synced: nothing left to kill"
            return
        before = len(tally.kills)
        run_round(ctx, rng, tally)
        adjust_pace(ctx, tally, len(tally.kills) - before)
        if len(tally.kills) >= last_report + 10:
            last_report = len(tally.kills) // 10 * 10
            synced = sum(r["state"] == "synced" for r in read_rows(ctx.db))
            print(
                f"  [{ctx.elapsed():5.0f} s] kills {len(tally.kills)}/{ctx.args.kills}, "
                f"runs {tally.runs}, synced {synced}/{len(ctx.bags)}, "
                f"kill window after a claim 0-{work_window(ctx):.2f} s",
                flush=True,
            )


def clean_reruns(ctx: Ctx, tally: Tally) -> None:
    """Plain runs (no kill, no fault) until every work is synced and the queue is empty."""
    env = {**ctx.env, "GLACIER_SYNC_MAX_MESSAGES_PER_RUN": str(CLEAN_MESSAGES_PER_RUN)}
    time.sleep(VISIBILITY_SECONDS + 0.5)  # the killed runs' messages come back
    idle = 0
    for _ in range(MAX_CLEAN_RUNS):
        queued = ctx.world.queue_count()
        if all_synced(ctx) and queued == 0:
            return
        if ctx.time_left() < 5 or idle >= 3:
            tally.clean_stop = "time bound" if idle < 3 else "no progress in 3 re-runs"
            return
        before = (sum(r["state"] == "synced" for r in read_rows(ctx.db)), queued)
        tally.runs += 1
        tally.clean_runs += 1
        run = launch(ctx, Plan(0.0, None, False, None, False), tally.runs, env)
        try:
            status = run.proc.wait(timeout=max(ctx.time_left(), 30))
        except subprocess.TimeoutExpired:
            status = kill_group(run)
            tally.hung += 1
        if status != 0:
            tally.finished_failed += 1
        note_output(run, tally, ctx.tmp)
        after = (sum(r["state"] == "synced" for r in read_rows(ctx.db)), ctx.world.queue_count())
        idle = idle + 1 if after == before else 0
    tally.clean_stop = f"{MAX_CLEAN_RUNS} re-runs"


def timed_run(env: dict[str, str]) -> float:
    """Seconds of one unkilled ``glacier-sync run-once``."""
    started = time.monotonic()
    subprocess.run(
        [str(BIN / "glacier-sync"), "run-once"],
        env=env,
        capture_output=True,
        check=True,
        timeout=300,
    )
    return time.monotonic() - started


def calibrate(ctx: Ctx, rng: random.Random) -> None:
    """Time runs in roots of their own: on the empty queue (start-up; the first run migrates
    its database), then on three bags (seconds per work)."""
    folder = ctx.tmp / "calibration"
    (folder / "archive").mkdir(parents=True)
    env = base_env(ctx.world, folder / "data", folder / "archive")
    timed_run(env)
    ctx.startup = timed_run(env)
    bags = build_bags(rng, 3, folder / "bags", ctx.args.small, prefix="W1CAL")
    restore_bags(ctx.world, bags)
    ctx.per_work = max(0.05, (timed_run(env) - ctx.startup) / len(bags))
    shutil.rmtree(folder)
