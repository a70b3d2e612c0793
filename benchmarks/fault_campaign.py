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
import random
import shutil
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # its sibling modules

from campaign_checks import (  # noqa: E402
    Verdict,
    verify,
)
from campaign_kills import (  # noqa: E402
    Tally,
    calibrate,
    campaign,
    clean_reruns,
    early_window,
    fault_points,
    work_window,
)
from campaign_world import (  # noqa: E402
    EARLY_SHARE,
    INSIDE,
    Ctx,
    base_env,
    build_bags,
    publish,
)
from demo_world import create_world, moto_server  # noqa: E402


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
