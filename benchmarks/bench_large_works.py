"""Large works: the resumable download side by side with plain S3 clients, and what a crash costs.

    python benchmarks/bench_large_works.py [--size 4G] [--reps 2] [--workdir DIR]
                                           [--concurrency 4] [--chunk-mb 64] [--kill-at 0.63]
                                           [--link-mbps 2500]

Starts ``s3rver`` (npm; installed into ``benchmarks/.s3rver`` on first use) on 127.0.0.1 with its
data under the work folder: it serves ranged GETs from disk, unlike moto, which copies the whole
object for each. Uploads one random object of ``--size``, then runs, alternating the contenders
in every repetition, each in a child process of its own (wall time and peak RSS are its own):

* ``glacier_sync md5``  the pipeline's download (ranges, journal, fsync per range, whole-object
                        check: s3rver's eTag is the MD5 of the object, so the in-order MD5);
* ``glacier_sync crc64nvme*`` the same, checked by the full-object CRC64NVME that S3 gives a new
                        multi-GB upload by default: s3rver has no checksums, so the benchmark
                        hands the value (computed while writing the object) to the download in
                        the HEAD answer, as S3 would give it (``*`` in the table says so);
* ``glacier_sync etag-parts*`` the same, checked by the multipart eTag of boto3's 8 MiB parts
                        (each part's MD5 in the thread that fetched it, ranges of whole parts):
                        the eTag and the part sizes handed the same way;
* ``boto3 NxM``         boto3's ``download_file`` with ``TransferConfig`` of N threads, M MB parts;
* ``aws s3 cp``         the AWS CLI (PyPI ``awscli``, in ``benchmarks/.awscli-venv``), tuned to
                        the same concurrency and part size through its config file.

CPU seconds per GiB (user and system, the contender's process and its children) stand beside
each figure: s3rver shares the two cores, so a client's CPU is the server's loss. On loopback a
client that hashes what it fetches is bound by the CPU; ``--link-mbps N`` (root, ``tc``) runs the
same contenders again with what s3rver sends limited to N Mbit/s (``link_shaping.py``), as a
network between S3 and the archive's machine would, and prints a second table.

Then a crash: a download killed (``kill -9``) after ``--kill-at`` of the object was journaled is
resumed, and the bytes fetched again are printed (the object's size before resumable downloads).
With ``--bags big:8G:8,small:400M:100000`` (label:bytes:files, ``--bags-only`` skips the
side-by-side) each bag also goes end to end through ``--paths process-bag,run-once,services``
(see ``large_bags.py``; ``process-bag``: the debag and the sync of the zip on disk, no
download): per phase its MB/s and seconds, debag against the SHA-512 floor of the same zip
(``bench_debag.py``'s contenders, in the same run), the peak RSS of every process by role, the
archive checked against the bag, and a line of issue 33's limits, each met or not (peak RSS
under 200 MB for every process; the debag within 1.1 x the floor, or 2 x for a bag of 10,000
files or more).

Loopback only; bounded in time by ``--size``, ``--reps`` and the bags; the disk is checked
before anything is built (refused in one line when the work folder lacks the room). Prints
figures, never fails on speed.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

import link_shaping

REPO = Path(__file__).resolve().parents[1]
S3RVER_DIR = REPO / "benchmarks" / ".s3rver"
AWSCLI_VENV = REPO / "benchmarks" / ".awscli-venv"
BUCKET = "bench"
KEY = "Archive0/00/W1LARGE/W1LARGE.bag.zip"
CREDS = {"AWS_ACCESS_KEY_ID": "S3RVER", "AWS_SECRET_ACCESS_KEY": "S3RVER"}
MIB = 1024 * 1024
PART_MB = 8  # boto3's default part size: the handed multipart eTag's


def parse_size(text: str) -> int:
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    return int(float(text[:-1]) * units[text[-1].upper()]) if text[-1].isalpha() else int(text)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def ensure_s3rver() -> Path:
    binary = S3RVER_DIR / "node_modules" / ".bin" / "s3rver"
    if not binary.exists():
        S3RVER_DIR.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            ["npm", "install", "--prefix", str(S3RVER_DIR), "--no-audit", "--no-fund",
             "s3rver@3.7.1"],
            check=True,
            stdout=subprocess.DEVNULL,
        )  # fmt: skip
    return binary


def ensure_awscli() -> Path:
    aws = AWSCLI_VENV / "bin" / "aws"
    if not aws.exists():
        subprocess.run([sys.executable, "-m", "venv", str(AWSCLI_VENV)], check=True)
        subprocess.run(
            [str(AWSCLI_VENV / "bin" / "pip"), "install", "-q", "awscli"],
            check=True,
        )
    return aws


def start_s3rver(data: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    data.mkdir(parents=True, exist_ok=True)
    proc = subprocess.Popen(
        [str(ensure_s3rver()), "-d", str(data), "-a", "127.0.0.1", "-p", str(port), "-s",
         "--configure-bucket", BUCKET],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    for _ in range(100):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return proc, f"http://127.0.0.1:{port}"
        except OSError:
            time.sleep(0.1)
    proc.kill()
    raise SystemExit("bench_large_works: s3rver did not start")


def client(endpoint: str, threads: int = 10):
    import boto3
    from botocore.config import Config

    return boto3.client(
        "s3",
        endpoint_url=endpoint,
        region_name="us-east-1",
        config=Config(max_pool_connections=threads + 4),
        aws_access_key_id=CREDS["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=CREDS["AWS_SECRET_ACCESS_KEY"],
    )


def upload(endpoint: str, workdir: Path, size: int) -> None:
    from boto3.s3.transfer import TransferConfig

    source = workdir / "source.bin"
    if not source.exists() or source.stat().st_size != size:
        with source.open("wb") as out:
            left = size
            while left:
                block = os.urandom(min(left, 16 * MIB))
                out.write(block)
                left -= len(block)
    config = TransferConfig(multipart_threshold=64 * MIB, multipart_chunksize=64 * MIB)
    client(endpoint).upload_file(str(source), BUCKET, KEY, Config=config)
    crc, etag = checks_of(source)
    (workdir / "crc64nvme").write_text(crc)
    (workdir / "etag-parts").write_text(etag)
    source.unlink()


def checks_of(path: Path) -> tuple[str, str]:
    """The base64 full-object CRC64NVME of a file and its multipart eTag for ``PART_MB`` parts,
    as S3 gives them."""
    import base64
    import hashlib

    from awscrt import checksums

    value, md5s = 0, []
    with path.open("rb") as source:
        while block := source.read(PART_MB * MIB):
            value = checksums.crc64nvme(block, value)
            md5s.append(hashlib.md5(block).digest())
    etag = f"{hashlib.md5(b''.join(md5s)).hexdigest()}-{len(md5s)}"
    return base64.b64encode(value.to_bytes(8, "big")).decode(), etag


class HandedParts:
    """An S3 client that answers as S3 does for an upload of ``PART_MB`` parts, which s3rver
    cannot: the multipart eTag (computed while writing the object) and each part's size for
    ``HEAD ?partNumber=N``; the GETs' ``If-Match`` carries s3rver's own eTag."""

    def __init__(self, s3, etag: str) -> None:
        self._s3, self._etag = s3, etag
        self._real = s3.head_object(Bucket=BUCKET, Key=KEY)["ETag"].strip('"')

    def __getattr__(self, name):
        return getattr(self._s3, name)

    def head_object(self, **kwargs):
        number = kwargs.pop("PartNumber", None)
        head = self._s3.head_object(**kwargs)
        head["ETag"] = f'"{self._etag}"'
        if number:
            size, part = int(head["ContentLength"]), PART_MB * MIB
            head["ContentLength"] = min(part, size - (number - 1) * part)
            head["PartsCount"] = -(-size // part)
        return head

    def get_object(self, **kwargs):
        if "IfMatch" in kwargs:
            kwargs["IfMatch"] = f'"{self._real}"'
        return self._s3.get_object(**kwargs)


class HandedChecksum:
    """An S3 client whose HEAD answer carries a full-object CRC64NVME that s3rver cannot give."""

    def __init__(self, s3, value: str) -> None:
        self._s3, self._value = s3, value

    def __getattr__(self, name):
        return getattr(self._s3, name)

    def head_object(self, **kwargs):
        head = self._s3.head_object(**kwargs)
        if kwargs.get("ChecksumMode") == "ENABLED":
            head.update(ChecksumCRC64NVME=self._value, ChecksumType="FULL_OBJECT")
        return head


# -- contenders (each runs in a child process) ---------------------------------------------------
def run_ours(endpoint: str, out: Path, threads: int, chunk_mb: int, handed: str = "") -> None:
    """The pipeline's download, checked by s3rver's own eTag or by a ``handed`` check."""
    sys.path.insert(0, str(REPO / "src"))
    from glacier_sync.transfer import object_download

    s3 = client(endpoint, threads)
    value = (out.parent.parent / handed).read_text() if handed else ""
    if handed == "crc64nvme":
        s3 = HandedChecksum(s3, value)
    elif handed == "etag-parts":
        s3 = HandedParts(s3, value)
    etag = s3.head_object(Bucket=BUCKET, Key=KEY)["ETag"].strip('"')
    report: dict = {}
    object_download.download_object(
        s3, BUCKET, KEY, etag, out, "W1LARGE", threads, chunk_mb, report=report
    )
    want = handed or "etag-md5"
    if report["check"] != want:
        raise SystemExit(f"bench_large_works: checked by {report['check']}, not {want}")


def run_ours_crc64nvme(endpoint: str, out: Path, threads: int, chunk_mb: int) -> None:
    run_ours(endpoint, out, threads, chunk_mb, handed="crc64nvme")


def run_ours_etag_parts(endpoint: str, out: Path, threads: int, chunk_mb: int) -> None:
    run_ours(endpoint, out, threads, chunk_mb, handed="etag-parts")


def run_boto3(endpoint: str, out: Path, threads: int, chunk_mb: int) -> None:
    from boto3.s3.transfer import TransferConfig

    config = TransferConfig(
        multipart_threshold=chunk_mb * MIB, multipart_chunksize=chunk_mb * MIB,
        max_concurrency=threads,
    )  # fmt: skip
    client(endpoint, threads).download_file(BUCKET, KEY, str(out), Config=config)


def run_awscli(endpoint: str, out: Path, threads: int, chunk_mb: int) -> None:
    config = out.parent / "awscli.config"
    config.write_text(
        "[default]\nregion = us-east-1\ns3 =\n"
        f"  max_concurrent_requests = {threads}\n  multipart_chunksize = {chunk_mb}MB\n"
        f"  multipart_threshold = {chunk_mb}MB\n"
    )
    env = {**os.environ, **CREDS, "AWS_CONFIG_FILE": str(config)}
    subprocess.run(
        [str(ensure_awscli()), "s3", "cp", "--only-show-errors", "--endpoint-url", endpoint,
         f"s3://{BUCKET}/{KEY}", str(out)],
        check=True,
        env=env,
    )  # fmt: skip


CONTENDERS = {
    "glacier_sync md5": run_ours,
    "glacier_sync crc64nvme*": run_ours_crc64nvme,
    "glacier_sync etag-parts*": run_ours_etag_parts,
    "boto3": run_boto3,
    "aws s3 cp": run_awscli,
}


def child(name: str, endpoint: str, out: str, threads: int, chunk_mb: int) -> None:
    started = time.perf_counter()
    CONTENDERS[name](endpoint, Path(out), threads, chunk_mb)
    seconds = time.perf_counter() - started
    usage = [resource.getrusage(who) for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)]
    rss = max(u.ru_maxrss for u in usage)
    cpu = sum(u.ru_utime + u.ru_stime for u in usage)
    print(json.dumps({"seconds": seconds, "rss_mb": rss / 1024, "cpu_s": cpu}))


def measure(name: str, endpoint: str, workdir: Path, threads: int, chunk_mb: int) -> dict:
    out = workdir / "out" / "W1LARGE.bag.zip"
    shutil.rmtree(out.parent, ignore_errors=True)
    out.parent.mkdir(parents=True)
    proc = subprocess.run(
        [sys.executable, __file__, "--child", name, endpoint, str(out), str(threads),
         str(chunk_mb)],
        check=True,
        capture_output=True,
        text=True,
    )  # fmt: skip
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    shutil.rmtree(out.parent, ignore_errors=True)
    return result


def crash_cost(endpoint: str, workdir: Path, size: int, threads: int, chunk_mb: int, at: float):
    """Kill a download once ``at`` of it is journaled; return (journaled, refetched) bytes."""
    sys.path.insert(0, str(REPO / "src"))
    from glacier_sync.transfer import object_download

    out = workdir / "out" / "W1LARGE.bag.zip"
    shutil.rmtree(out.parent, ignore_errors=True)
    out.parent.mkdir(parents=True)
    ranges = -(-size // (chunk_mb * MIB))
    fault = workdir / "fault"
    fault.write_text(f"download:range {max(1, int(ranges * at))}")
    Path(str(fault) + ".fired").unlink(missing_ok=True)
    env = {**os.environ, "GLACIER_SYNC_FAULT_FILE": str(fault)}
    proc = subprocess.run(
        [sys.executable, __file__, "--child", "glacier_sync md5", endpoint, str(out), str(threads),
         str(chunk_mb)],
        env=env,
        start_new_session=True,
        capture_output=True,
    )  # fmt: skip
    if proc.returncode != -signal.SIGKILL:
        raise SystemExit(f"bench_large_works: the killed download ended with {proc.returncode}")
    journal = out.with_name(f".{out.name}.part.journal").read_text().splitlines()
    journaled = (len(journal) - 1) * chunk_mb * MIB
    s3 = client(endpoint, threads)
    counted = {"bytes": 0}
    s3.meta.events.register(
        "after-call.s3.GetObject",
        lambda parsed, **_: counted.__setitem__(
            "bytes", counted["bytes"] + int(parsed.get("ContentLength", 0))
        ),
    )
    etag = s3.head_object(Bucket=BUCKET, Key=KEY)["ETag"].strip('"')
    started = time.perf_counter()
    object_download.download_object(s3, BUCKET, KEY, etag, out, "W1LARGE", threads, chunk_mb)
    seconds = time.perf_counter() - started
    shutil.rmtree(out.parent, ignore_errors=True)
    return journaled, counted["bytes"], seconds


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        name, endpoint, out, threads, chunk = sys.argv[2:7]
        child(name, endpoint, out, int(threads), int(chunk))
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="4G")
    parser.add_argument("--reps", type=int, default=2)
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/bench-large-works"))
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--chunk-mb", type=int, default=64)
    parser.add_argument("--kill-at", type=float, default=0.63)
    parser.add_argument("--bags", default="", help="label:size:files,... end to end")
    parser.add_argument("--paths", default="run-once,services")
    parser.add_argument("--bags-only", action="store_true", help="skip the side-by-side")
    parser.add_argument(
        "--link-mbps", type=int, default=0, help="the side-by-side again on a link of this speed"
    )
    args = parser.parse_args()
    size = parse_size(args.size)
    if args.link_mbps:
        refused = link_shaping.refusal()
        if refused:
            raise SystemExit(f"bench_large_works: {refused}")
    shutil.rmtree(args.workdir, ignore_errors=True)
    if not args.bags_only:  # the object, its copy in s3rver and one download at a time
        sys.path.insert(0, str(REPO / "tools"))
        from machine_room import require_disk

        require_disk(args.workdir, int(size * 3.1), f"--size {args.size}")
    args.workdir.mkdir(parents=True)
    if not args.bags_only:  # the side-by-side races the AWS CLI too
        ensure_awscli()
    server, endpoint = start_s3rver(args.workdir / "s3rver")
    try:
        if not args.bags_only:
            side_by_side(endpoint, size, args)
        if args.bags:
            end_to_end(endpoint, args)
    finally:
        server.terminate()
        server.wait()
        shutil.rmtree(args.workdir, ignore_errors=True)


def side_by_side(endpoint: str, size: int, args: argparse.Namespace) -> None:
    """The download against boto3 and the AWS CLI, then the crash's cost."""
    upload(endpoint, args.workdir, size)
    configs = [(name, args.concurrency, args.chunk_mb) for name in CONTENDERS if "sync" in name]
    configs += [("boto3", t, c) for t, c in ((4, 64), (8, 64), (8, 8), (10, 8))]
    configs += [("aws s3 cp", args.concurrency, args.chunk_mb), ("aws s3 cp", 10, 8)]
    report(race(configs, endpoint, args), size, args, "loopback, no link in between")
    if args.link_mbps:
        port = int(endpoint.rsplit(":", 1)[1])
        with link_shaping.shaped(port, args.link_mbps):
            results = race(configs, endpoint, args)
        link = f"a link of {args.link_mbps} Mbit/s ({args.link_mbps / 8:.0f} MB/s) from the server"
        report(results, size, args, link)
    journaled, refetched, seconds = crash_cost(
        endpoint, args.workdir, size, args.concurrency, args.chunk_mb, args.kill_at
    )
    print(
        f"\ncrash at {args.kill_at:.0%}: {journaled / MIB:.0f} MiB journaled; the resume "
        f"fetched {refetched / MIB:.0f} MiB ({refetched / size:.2f} x the object; before "
        f"resumable downloads: 1.00 x) in {seconds:.1f} s, the journaled ranges re-hashed"
    )
    client(endpoint).delete_object(Bucket=BUCKET, Key=KEY)


def race(configs: list, endpoint: str, args: argparse.Namespace) -> dict[str, list[dict]]:
    """Each contender ``--reps`` times, alternating: the figures by contender."""
    results: dict[str, list[dict]] = {}
    for _ in range(args.reps):
        for name, threads, chunk in configs:
            label = f"{name} {threads}x{chunk}MB"
            got = measure(name, endpoint, args.workdir, threads, chunk)
            results.setdefault(label, []).append(got)
    return results


def end_to_end(endpoint: str, args: argparse.Namespace) -> None:
    """Each bag of ``--bags`` through each path of ``--paths``; one table row per pair."""
    import bench_debag
    import large_bags
    from demo_world import moto_server
    from machine_room import require_disk

    bags = [
        large_bags.Bag(label, parse_size(total), int(files))
        for label, total, files in (item.split(":") for item in args.bags.split(","))
    ]
    paths = args.paths.split(",")
    unknown = [p for p in paths if p not in large_bags.PATHS]
    if unknown:
        raise SystemExit(
            f"bench_large_works: unknown --paths {unknown}; use {list(large_bags.PATHS)}"
        )
    require_disk(args.workdir, large_bags.disk_needed(bags, paths), f"--bags {args.bags}")
    s3 = client(endpoint)
    print(f"\n{'bag':<22} {'path':<9} {'total s':>8} " + " ".join(
        f"{p + ' s':>9} {'MB/s':>6}" for p in large_bags.PHASES
    ) + f" {'debag/floor':>11} {'peak RSS MB (role)':<40}")  # fmt: skip
    with moto_server(args.workdir / "moto.log") as moto:
        for bag in bags:
            zip_path = large_bags.build(bag, args.workdir / "bags")
            size = zip_path.stat().st_size
            floor = bench_debag.measure("sha512 floor", zip_path, args.workdir)["seconds"]
            # Twice each, alternating, the faster kept: on this VM the first writes of fresh
            # pages cost several times the later ones, whichever contender meets them.
            runs: dict[str, list[dict]] = {"sha512+write floor": [], "glacier_sync": []}
            for _ in range(2):
                for name, got in runs.items():
                    got.append(bench_debag.measure(name, zip_path, args.workdir))
            written = min(r["seconds"] for r in runs["sha512+write floor"])
            alone = min(runs["glacier_sync"], key=lambda r: r["seconds"])
            etag = large_bags.upload(s3, BUCKET, bag, zip_path)
            shape = f"{bag.label} {bag.total / MIB:.0f}MiB/{bag.files}"
            print(
                f"{shape:<22} debag alone {alone['seconds']:.2f} s, SHA-512 floor {floor:.2f} s "
                f"({alone['seconds'] / floor:.2f} x), with each file written {written:.2f} s "
                f"({alone['seconds'] / written:.2f} x), debag peak RSS "
                f"{alone['max_rss_kb'] / 1024:.0f} MB"
            )
            for path in paths:
                scene = large_bags.scene_for(
                    bag, path, args.workdir, moto, endpoint, BUCKET, etag, size
                )
                scene.zip_path = zip_path
                with large_bags.PeakRss() as rss:
                    total = large_bags.PATHS[path](scene)
                seconds = large_bags.phase_seconds(scene.progress_url, bag.work_id)
                intact = large_bags.archived_matches(scene, bag)
                shutil.rmtree(scene.folder, ignore_errors=True)
                role, peak = max(rss.peaks.items(), key=lambda item: item[1])
                cells = " ".join(
                    f"{seconds[p]:>9.2f} {size / max(seconds[p], 1e-9) / 1e6:>6.0f}"
                    if p in seconds
                    else f"{'-':>9} {'-':>6}"  # not a phase of this path (process-bag: no download)
                    for p in large_bags.PHASES
                )
                print(
                    f"{shape:<22} {path:<9} {total:>8.1f} {cells} "
                    f"{seconds.get('debag', 0) / floor:>11.2f} {peak / MIB:>6.0f} ({role})"
                    + ("" if intact else "  ARCHIVE DIFFERS FROM THE BAG")
                )
                for name, value in sorted(rss.peaks.items(), key=lambda item: -item[1])[:8]:
                    own = rss.own.get(name, 0) / MIB
                    print(f"{'':<33}peak RSS {value / MIB:>6.0f} MB (own {own:>4.0f} MB)  {name}")
                debag_s = seconds.get("debag", 0)
                print(
                    f"{'':<33}limits: "
                    f"{large_bags.verdict(bag, rss.peaks, debag_s / floor, debag_s / written)}"
                )
            zip_path.unlink()
            s3.delete_object(Bucket=BUCKET, Key=bag.key)


def report(results: dict[str, list[dict]], size: int, args: argparse.Namespace, link: str) -> None:
    print(f"\nmachine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores")
    print(f"object: {size / MIB:.0f} MiB on s3rver (127.0.0.1), {args.reps} repetition(s)")
    print(f"between them: {link}\n")
    print(
        f"{'contender':<32} {'median s':>9} {'MB/s':>7} {'CPU s/GiB':>10} {'peak RSS MB':>12} "
        f"{'ratio':>6}"
    )
    medians = {k: statistics.median(r["seconds"] for r in v) for k, v in results.items()}
    best_plain = min(v for k, v in medians.items() if not k.startswith("glacier_sync"))
    for label, seconds in medians.items():
        rss = max(r["rss_mb"] for r in results[label])
        cpu = statistics.median(r["cpu_s"] for r in results[label]) / (size / (1 << 30))
        ratio = best_plain / seconds
        print(
            f"{label:<32} {seconds:>9.2f} {size / seconds / 1e6:>7.0f} {cpu:>10.2f} "
            f"{rss:>12.0f} {ratio:>6.2f}"
        )
    print("(ratio: the best plain client's time over this one's; above 1 is faster than it;")
    print(" * the checksum handed to the download, as S3 would give it: s3rver gives none)")


if __name__ == "__main__":
    main()
