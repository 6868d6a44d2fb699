#!/usr/bin/env python3
"""Benchmark a location's shared limits: a small snapshot's latency behind other clients' first copies.

Not a test. One local location with a ``bwlimit`` (so that a first copy lasts long
without gigabytes of data) and ``workers`` copy slots; ``--big`` clients are seeded
at once (each a restic repository plus ``--big-mb`` of pack files), and while they
copy, a small client makes a new snapshot (real restic) and syncs it, ``--samples``
times. The same run is made twice: with the slots favouring the copy that has
saved least (triplicate's), and with plain first-come first-served slots (the
alternative). Prints a Markdown report: the small snapshot's latency in each,
their ratio, and the rate the big copies reached against the bwlimit.

    .venv/bin/python bench/bench_fairness.py --big 2 --big-mb 400 --bwlimit 40MB/s --samples 5

Needs: restic (Debian package).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import statistics
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from triplicate.actions.sync import sync_client
from triplicate.config.load import load_config
from triplicate.storage import throttle
from triplicate.units import parse_rate

PASSWORD = "benchmark"
PACK = 8 * 1000 * 1000


def restic(repo: Path, *args: str) -> None:
    env = {**os.environ, "RESTIC_REPOSITORY": str(repo), "RESTIC_PASSWORD": PASSWORD}
    subprocess.run(["restic", "--no-cache", "-q", *args], env=env, check=True, stdout=subprocess.DEVNULL)


def make_client(repos: Path, name: str, data: Path, extra_mb: int) -> None:
    """A restic repository with one snapshot of ``data``, plus ``extra_mb`` of (unreferenced) packs."""
    repo = repos / name
    restic(repo, "init")
    restic(repo, "backup", str(data))
    for _ in range(extra_mb * 1000 * 1000 // PACK):
        content = os.urandom(PACK)
        digest = hashlib.sha256(content).hexdigest()
        (repo / "data" / digest[:2]).mkdir(parents=True, exist_ok=True)
        (repo / "data" / digest[:2] / digest).write_bytes(content)


@contextmanager
def first_come_first_served() -> Iterator[None]:
    """The alternative: every copy asks for a slot with the same priority."""
    original = throttle.PrioritySlots.acquire

    def acquire(self: throttle.PrioritySlots, priority: float) -> None:
        original(self, 0)

    throttle.PrioritySlots.acquire = acquire  # type: ignore[method-assign]  # a benchmark's swap
    try:
        yield
    finally:
        throttle.PrioritySlots.acquire = original  # type: ignore[method-assign]


def run(root: Path, mode: str, args: argparse.Namespace, bigs: list[str]) -> tuple[list[float], float]:
    """Small-snapshot latencies (s) and the big copies' combined rate (bytes/s) in one mode."""
    location = root / f"location-{mode}"
    location.mkdir()
    text = (root / "base.toml").read_text().replace("@LOCATION@", str(location))
    (root / f"{mode}.toml").write_text(text)
    config = load_config(root / f"{mode}.toml")
    sync_client(config, "small", ["far"])  # the small client's replica exists; its new snapshots are small
    started = time.monotonic()
    threads = [threading.Thread(target=sync_client, args=(config, name, ["far"])) for name in bigs]
    for thread in threads:
        thread.start()
    time.sleep(2)  # let the first copies get under way
    latencies = []
    for sample in range(args.samples):
        data = root / f"small-{mode}-{sample}"
        data.mkdir()
        (data / "new.bin").write_bytes(os.urandom(200_000))
        restic(root / "repos" / "small", "backup", str(data))
        before = time.monotonic()
        sync_client(config, "small", ["far"])
        latencies.append(time.monotonic() - before)
        if not any(thread.is_alive() for thread in threads):
            raise SystemExit("the big copies ended before every sample: raise --big-mb or lower --bwlimit")
    for thread in threads:
        thread.join()
    elapsed = time.monotonic() - started
    copied = sum(path.stat().st_size for name in bigs for path in (location / name).rglob("*") if path.is_file())
    return latencies, copied / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--big", type=int, default=2, help="clients seeded at once")
    parser.add_argument("--big-mb", type=int, default=400, help="each big client's first copy, MB")
    parser.add_argument("--bwlimit", default="40MB/s")
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--samples", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-fairness.") as folder:
        root = Path(folder)
        data = root / "data"
        data.mkdir()
        (data / "file.bin").write_bytes(os.urandom(1_000_000))
        bigs = [f"big{index}" for index in range(args.big)]
        clients = "".join(f'[clients.{name}]\nreplicate_to = ["far"]\npassword_file = "{root}/password"\n\n'
                          for name in [*bigs, "small"])
        (root / "password").write_text(PASSWORD)
        (root / "base.toml").write_text(
            f'[server]\nstate_dir = "{root}/state"\nrepos_dir = "{root}/repos"\n\n'
            f'[locations.far]\ntype = "local"\npath = "@LOCATION@"\nbwlimit = "{args.bwlimit}"\n'
            f"workers = {args.workers}\n\n{clients}")
        for name in bigs:
            make_client(root / "repos", name, data, args.big_mb)
        make_client(root / "repos", "small", data, 0)
        results = {"least saved first (triplicate)": run(root, "priority", args, bigs)}
        with first_come_first_served():
            results["first come, first served"] = run(root, "fifo", args, bigs)
    limit = parse_rate(args.bwlimit)
    print(f"{args.big} clients' first copies of {args.big_mb} MB each to one local location "
          f"(bwlimit {args.bwlimit}, workers {args.workers}); a small client syncs a new snapshot "
          f"(one 200 kB file) {args.samples} times meanwhile.\n")
    print(f"| slots | small snapshot latency, median | max | big copies' rate{' / bwlimit' if limit else ''} |")
    print("|---|---|---|---|")
    for mode, (latencies, rate) in results.items():
        rate_text = f"{rate / limit:.2f}" if limit else f"{rate / 1e6:.0f} MB/s"  # "off": no limit to compare
        print(f"| {mode} | {statistics.median(latencies):.2f} s | {max(latencies):.2f} s | {rate_text} |")
    (ours, _), (theirs, _) = results.values()
    print(f"\nratio of medians (first come / least saved): "
          f"{statistics.median(theirs) / statistics.median(ours):.1f}")


if __name__ == "__main__":
    main()
