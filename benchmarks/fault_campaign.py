"""Randomized crash campaign: SIGKILL ``glacier-sync run-once`` at random instants, then verify.

    python benchmarks/fault_campaign.py [--works 200] [--kills 100] [--seconds 600] [--seed N]
                                        [--keep] [--small]

Starts its own moto S3/SQS server on 127.0.0.1 (a free port) and its own temporary folders. It
uploads N random bag zips as DEEP_ARCHIVE objects, restores them (moto puts
ObjectRestore:Completed in the queue on the first HEAD after the restore) and sends some event
bodies again, verbatim (at-least-once delivery). Then it runs ``glacier-sync run-once`` again and
again, each in its own process group, and kills the group with SIGKILL after a random delay or at
a random fault point (GLACIER_SYNC_FAULT_FILE), now and then with a second run beside it. After K
kills (or when the time bound nears) plain re-runs finish the works. Finally it checks that every
work was archived exactly once and byte for byte, that nothing else is in the archive, that the
data root holds no leftovers and that no message is left in the queue; it prints the figures and
exits 0 only when nothing was lost, duplicated, different or left over.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
import zipfile
from collections import Counter
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tools"))
BIN = Path(sys.executable).parent

from demo_world import (  # noqa: E402
    World,
    create_world,
    moto_server,
    settings_env,
    write_bag_zip,
)

from glacier_sync.claimants import this_host  # noqa: E402
from glacier_sync.faults import FAULT_FILE_ENV  # noqa: E402
from glacier_sync.settings import DEFAULT_SYNC_COMMAND  # noqa: E402

# Fault points (glacier_sync.faults and the default sync script) and the highest pass number
# drawn for each: a run passes some points once per work, others once per file or per commit.
# The points in use are read from the sources (fault_points()); one not listed here gets
# DEFAULT_PASSES, "sync:swapping" is left out (only a replacing sync, -A, passes it).
FAULT_POINTS: dict[str, int] = {
    "poll:recorded": 15,  # recorded, message not deleted yet
    "download:chunk": 4,  # inside a download
    "download:renamed": 3,  # zip in place, its completion record not yet
    "progress:before-commit": 20,  # inside a progress update
    "debag:member": 40,  # inside an extraction
    "debag:placed": 3,  # work folder in place, no marker yet
    "debag:marked": 3,  # marker written, debag not recorded
    "sync:before-script": 3,
    "sync:copied": 1,  # staging copy in the archive, not verified (bash: first pass only)
    "sync:before-rename": 1,  # staging verified, not renamed (bash)
    "sync:renamed": 1,  # archive copy in place, success list not written (bash)
    "sync:after-script": 3,  # script done, sync not recorded
    "sync:recorded": 3,  # recorded, clean-up not started
    "cleanup:file": 40,  # inside a clean-up: work folder half deleted
}
DEFAULT_PASSES = 3
NOT_PASSED = {"sync:swapping"}
SYNC_SCRIPT = DEFAULT_SYNC_COMMAND
CAMPAIGN_MESSAGES_PER_RUN = 25
CLEAN_MESSAGES_PER_RUN = 100
VISIBILITY_SECONDS = 2
CONCURRENT_SHARE = 0.15  # rounds with a second run beside the first
FAULT_SHARE = 0.3  # rounds whose first run carries a fault point
EARLY_SHARE = 0.2  # timer kills in the start-up or poll (the others: after a first claim)
DUPLICATE_SHARE = 0.1  # Completed bodies sent once or twice more
RUN_TIMEOUT = 300.0  # a campaign run still alive after this is killed and counted as hung
MAX_CLEAN_RUNS = 40
INSIDE = ("download:", "debag:", "sync:", "clean-up")
TIBETAN = "བོད་ཡིག"


@dataclass(frozen=True)
class Bag:
    """One work: its S3 key, its zip, and the files its archived tree must hold."""

    work_id: str
    key: str
    zip_path: Path
    expected: dict[str, bytes]  # path relative to the archive root -> content

    @property
    def group(self) -> str:
        """The archive folder that receives the work (``Archive0/NN``)."""
        return str(PurePosixPath(self.key).parent.parent)


@dataclass
class Ctx:
    """The campaign's world, folders, settings and timing estimates."""

    args: argparse.Namespace
    world: World
    tmp: Path
    bags: list[Bag]
    env: dict[str, str]
    started: float
    startup: float = 2.0
    per_work: float = 0.4
    pace: float = 1.0  # corrects the estimates from what the rounds achieve
    share: float = 1.0  # works each killed run may finish, for the kills to spread over all
    synced: int = 0  # works synced before the round
    points: dict[str, int] = field(default_factory=dict)  # fault point -> highest pass drawn

    @property
    def data(self) -> Path:
        """The data root (progress database, incoming, work, logs)."""
        return self.tmp / "data"

    @property
    def archive(self) -> Path:
        """The archive root."""
        return self.tmp / "archive"

    @property
    def db(self) -> Path:
        """The SQLite progress database."""
        return self.data / "progress.sqlite"

    def elapsed(self) -> float:
        """Seconds since the campaign began."""
        return time.monotonic() - self.started

    def time_left(self) -> float:
        """Seconds left before the wall-clock bound."""
        return self.args.seconds - self.elapsed()


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


# -- the emulator ---------------------------------------------------------------------------
# -- bags -----------------------------------------------------------------------------------
def random_files(rng: random.Random, small: bool) -> dict[str, bytes]:
    """Payload files of one bag: a few to ~40 files, 1 KB-300 KB in all (tiny with --small)."""
    count = rng.randint(1, 4) if small else rng.randint(3, 40)
    total = rng.randint(64, 2048) if small else rng.randint(1024, 300 * 1024)
    weights = [rng.random() + 0.05 for _ in range(count)]
    scale = total / sum(weights)
    files: dict[str, bytes] = {}
    for index, weight in enumerate(weights):
        size = max(1, int(weight * scale))
        roll = rng.random()
        if roll < 0.1:
            name = f"sources/{TIBETAN}-{index}.txt"
        elif roll < 0.2:
            name = f"archive/scan notes {index}.txt"
        elif roll < 0.35:
            name = f"images/sub{index % 3}/I{index:04d}.tif"
        else:
            name = f"images/I{index:04d}.tif"
        if rng.random() < 0.25:
            content = (b"scan line %d " % index) * (size // 12 + 1)
            files[name] = content[:size]
        else:
            files[name] = rng.randbytes(size)
    return files


def expected_tree(zip_path: Path, work_id: str, group: str) -> dict[str, bytes]:
    """The archived work as it must be: payload at <work>/<path>, tags at <work>/<work>.bag/."""
    tree: dict[str, bytes] = {}
    with zipfile.ZipFile(zip_path) as zf:
        for info in zf.infolist():
            if info.is_dir():
                continue
            name = info.filename
            rel = name[len("data/") :] if name.startswith("data/") else f"{work_id}.bag/{name}"
            tree[f"{group}/{work_id}/{rel}"] = zf.read(info)
    return tree


def build_bags(
    rng: random.Random, count: int, folder: Path, small: bool, prefix: str = "W1FC"
) -> list[Bag]:
    """Write ``count`` bag zips with random content; keys ``Archive0/NN/W…/W….bag.zip``."""
    bags = []
    for index in range(count):
        work_id = f"{prefix}{index:05d}"
        group = f"Archive0/{rng.randrange(100):02d}"
        key = f"{group}/{work_id}/{work_id}.bag.zip"
        zip_path = write_bag_zip(folder / f"{work_id}.bag.zip", random_files(rng, small))
        bags.append(Bag(work_id, key, zip_path, expected_tree(zip_path, work_id, group)))
    return bags


def publish(world: World, bags: list[Bag], rng: random.Random) -> tuple[int, int]:
    """Upload the bags as DEEP_ARCHIVE, restore them, re-send some Completed bodies verbatim;
    return (Completed events seen, duplicate bodies sent)."""
    restore_bags(world, bags)
    sqs = world.client("sqs")
    received = receive_all(sqs, world.queue_url)
    completed = [m["Body"] for m in received if "ObjectRestore:Completed" in m["Body"]]
    duplicates = 0
    for body in completed:
        if rng.random() < DUPLICATE_SHARE:
            for _ in range(rng.randint(1, 2)):
                sqs.send_message(QueueUrl=world.queue_url, MessageBody=body)
                duplicates += 1
    for start in range(0, len(received), 10):
        entries = [
            {"Id": str(i), "ReceiptHandle": m["ReceiptHandle"], "VisibilityTimeout": 0}
            for i, m in enumerate(received[start : start + 10])
        ]
        sqs.change_message_visibility_batch(QueueUrl=world.queue_url, Entries=entries)
    return len(completed), duplicates


def restore_bags(world: World, bags: list[Bag]) -> None:
    """Upload the bags as DEEP_ARCHIVE objects and restore them (Completed events queued)."""
    s3 = world.client("s3")
    for bag in bags:
        s3.upload_file(
            str(bag.zip_path), world.bucket, bag.key, ExtraArgs={"StorageClass": "DEEP_ARCHIVE"}
        )
        s3.restore_object(
            Bucket=world.bucket,
            Key=bag.key,
            RestoreRequest={"Days": 1, "GlacierJobParameters": {"Tier": "Bulk"}},
        )
        s3.head_object(Bucket=world.bucket, Key=bag.key)  # moto: ObjectRestore:Completed now


def receive_all(sqs: Any, queue_url: str) -> list[dict[str, Any]]:
    """Every message of the queue, held invisible for a while (to copy their bodies)."""
    messages: dict[str, dict[str, Any]] = {}
    while True:
        batch = sqs.receive_message(
            QueueUrl=queue_url, MaxNumberOfMessages=10, WaitTimeSeconds=0, VisibilityTimeout=300
        ).get("Messages", [])
        if not batch:
            return list(messages.values())
        for message in batch:
            messages.setdefault(message["MessageId"], message)


# -- runs -----------------------------------------------------------------------------------
def base_env(world: World, data: Path, archive: Path) -> dict[str, str]:
    """The runs' environment: this process's, without GLACIER_SYNC_*, plus the world's."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("GLACIER_SYNC_")}
    env.update(settings_env(world, data, archive))
    env["GLACIER_SYNC_SQS_WAIT_SECONDS"] = "0"
    env["GLACIER_SYNC_SQS_VISIBILITY_TIMEOUT"] = str(VISIBILITY_SECONDS)
    env["GLACIER_SYNC_MAX_MESSAGES_PER_RUN"] = str(CAMPAIGN_MESSAGES_PER_RUN)
    return env


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


# -- where a kill landed ----------------------------------------------------------------------
def read_rows(db: Path) -> list[dict[str, Any]]:
    """Every progress row, read-only (no write lock taken); [] before the database exists."""
    if not db.exists():
        return []
    uri = f"file:{db}?mode=ro"
    try:
        with sqlite3.connect(uri, uri=True, timeout=60) as conn:
            conn.row_factory = sqlite3.Row
            rows = conn.execute("SELECT * FROM glacier_sync_progress ORDER BY id").fetchall()
    except sqlite3.OperationalError:
        return []
    result = []
    for row in rows:
        item = dict(row)
        item["history"] = json.loads(item["history"] or "[]")
        result.append(item)
    return result


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
    for source in (REPO / "src" / "glacier_sync").glob("*.py"):
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


# -- the report -----------------------------------------------------------------------------
def print_list(title: str, items: list[str], limit: int = 15) -> None:
    """A count and the first items of a list."""
    print(f"{title}: {len(items)}")
    for item in items[:limit]:
        print(f"    {item}")
    if len(items) > limit:
        print(f"    ... and {len(items) - limit} more")


def print_kills(tally: Tally) -> None:
    """Kills by kind and by where they landed."""
    kills = tally.kills
    inside = [k for k in kills if k.where.startswith(INSIDE)]
    faults = [k for k in kills if k.how.startswith("fault")]
    beside = [k for k in kills if k.beside]
    print(
        f"kills done: {len(kills)} (timer {len(kills) - len(faults)}, fault points "
        f"{len(faults)}; {len(beside)} of a second, concurrent run); inside a phase "
        f"{len(inside)}, between {len(kills) - len(inside)}"
    )
    if kills:
        delays = [k.after for k in kills if not k.how.startswith("fault")]
        if delays:
            print(f"    timer delays {min(delays):.2f}-{max(delays):.2f} s")
    for where, count in Counter(k.where for k in kills).most_common():
        print(f"    {count:4d}  {where}")
    fired = Counter(k.how.removeprefix("fault ") for k in faults)
    if fired:
        print("    fault points fired: " + ", ".join(f"{p} x{n}" for p, n in sorted(fired.items())))


def print_lines(title: str, lines: Counter[str], limit: int = 12) -> None:
    """The most frequent of some output lines."""
    if lines:
        print(f"{title} (distinct; folder, work ids and numbers masked):")
        for line, count in lines.most_common(limit):
            print(f"    {count:4d}x {line}")


def print_report(ctx: Ctx, tally: Tally, verdict: Verdict, ok: bool) -> None:
    """The campaign's figures."""
    print(
        f"runs: {tally.runs} ({tally.rounds} rounds, {tally.concurrent_rounds} with two runs at "
        f"once; {tally.clean_runs} clean re-runs, stopped: {tally.clean_stop}); finished "
        f"unkilled {tally.finished_ok} ok, {tally.finished_failed} with a failure; faults not "
        f"reached {tally.unfired_faults}; hung {tally.hung}; stopped killing: {tally.stop_reason}"
    )
    print_kills(tally)
    print_lines("failure lines in the runs' output", tally.failures)
    print_lines("warnings in the runs' output", tally.warnings)
    print(f"works synced: {verdict.synced}/{len(ctx.bags)}")
    print_list("works lost (not synced / missing in the archive)", verdict.lost)
    print_list("works duplicated", verdict.duplicated)
    print_list("archive trees that differ from their bag", verdict.differing)
    print_list("anything else in the archive", verdict.archive_extra)
    print_list("leftovers in the data root", verdict.leftovers)
    print_list("rows not finished (claim held, clean-up not recorded)", verdict.unfinished)
    print(f"messages left: queue {verdict.queue_left}, dead-letter queue {verdict.dlq_left}")
    print(f"wall time: {ctx.elapsed():.1f} s (bound {ctx.args.seconds} s)")
    print("RESULT: " + ("OK" if ok else "PROBLEMS FOUND"))


# -- main -----------------------------------------------------------------------------------
def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The command line."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--works", type=int, default=200, help="bags to restore (default 200)")
    parser.add_argument("--kills", type=int, default=100, help="SIGKILLs to land (default 100)")
    parser.add_argument("--seconds", type=float, default=600, help="wall-clock bound (600)")
    parser.add_argument("--seed", type=int, default=None, help="random seed (default: random)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folders")
    parser.add_argument("--small", action="store_true", help="tiny bags, for a quick run")
    args = parser.parse_args(argv)
    if args.seed is None:
        args.seed = random.SystemRandom().randrange(1_000_000)
    return args


def setup(
    args: argparse.Namespace, endpoint: str, tmp: Path, rng: random.Random, started: float
) -> Ctx:
    """The world, the bags, the calibration; the restore events in the queue."""
    world = create_world(  # a high receive count: no dead-lettering of messages held by kills
        endpoint, bucket="campaign.archive.example", queue="campaign-restores", max_receive=1000
    )
    for name in ("data", "archive", "bags"):
        (tmp / name).mkdir()
    bags = build_bags(rng, args.works, tmp / "bags", args.small)
    env = base_env(world, tmp / "data", tmp / "archive")
    ctx = Ctx(args, world, tmp, bags, env, started)
    ctx.share = max(0.5, 0.8 * len(bags) / max(args.kills, 1))
    ctx.points = fault_points()
    calibrate(ctx, rng)
    completed, duplicates = publish(world, bags, rng)
    files = sum(len(b.expected) for b in bags)
    size = sum(b.zip_path.stat().st_size for b in bags)
    print(
        f"{len(bags)} bags ({files} archived files, {size / 1e6:.1f} MB of zips) restored: "
        f"{completed} Completed events, {duplicates} duplicate bodies re-sent; "
        f"{world.queue_count()} messages queued; set-up {time.monotonic() - started:.1f} s"
    )
    low, high = early_window(ctx)
    print(
        f"run start-up {ctx.startup:.2f} s, {ctx.per_work:.2f} s per work; kill delays uniform "
        f"in {low:.2f}-{high:.2f} s after the start ({EARLY_SHARE:.0%}) or in "
        f"0-{work_window(ctx):.2f} s after the run's first claim (adapted as works get synced)"
    )
    print(f"fault points ({len(ctx.points)}): {', '.join(ctx.points)}")
    return ctx


def main(argv: list[str] | None = None) -> int:
    """Run the campaign; exit 0 only when nothing was lost, duplicated, different or left."""
    started = time.monotonic()
    args = parse_args(argv)
    rng = random.Random(args.seed)
    tmp = Path(tempfile.mkdtemp(prefix="glacier-sync-campaign-"))
    print(
        f"fault campaign: seed {args.seed}, {args.works} works{' (small)' if args.small else ''}, "
        f"up to {args.kills} kills, bound {args.seconds:.0f} s, folder {tmp}",
        flush=True,
    )
    try:
        with moto_server(tmp / "moto.log") as endpoint:
            ctx = setup(args, endpoint, tmp, rng, started)
            tally = Tally()
            campaign(ctx, rng, tally)
            print(
                f"  [{ctx.elapsed():5.0f} s] killing stopped ({tally.stop_reason}); clean re-runs",
                flush=True,
            )
            clean_reruns(ctx, tally)
            verdict = verify(ctx)
            ok = verdict.ok() and tally.hung == 0
            print_report(ctx, tally, verdict, ok)
    finally:
        if args.keep:
            print(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
