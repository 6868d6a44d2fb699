#!/usr/bin/env python3
"""Benchmark how closely a location's ``bwlimit`` is held, against ``rclone copy --bwlimit``.

Not a test. Builds a restic repository of about --size-mb (random data, real restic),
then copies it, side by side in one run, with the same limit:

- ``triplicate sync`` to a local location with ``bwlimit`` (its token bucket);
- two clients (two copies of that repository) synced at once to one location: they
  share the limit, so together they should take twice as long;
- ``triplicate sync`` to an rclone location with ``bwlimit`` (rclone's own limiter,
  given ``--bwlimit``);
- ``rclone copy --bwlimit`` of the repository's folder: the alternative.

Prints a Markdown report: each one's bytes over elapsed time against the limit.

    .venv/bin/python bench/bench_bwlimit.py --size-mb 100 --bwlimit 20MB/s

Needs: restic, rclone (Debian packages).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

from triplicate.actions.sync import sync_client
from triplicate.config.load import load_config
from triplicate.units import parse_rate

PASSWORD = "benchmark"


def size_of(folder: Path) -> int:
    return sum(path.stat().st_size for path in folder.rglob("*") if path.is_file())


def timed(action: Callable[[], object]) -> float:
    started = time.monotonic()
    action()
    return time.monotonic() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mb", type=int, default=100)
    parser.add_argument("--bwlimit", default="20MB/s")
    args = parser.parse_args()
    limit = parse_rate(args.bwlimit) or 0
    with tempfile.TemporaryDirectory(prefix="bench-bwlimit.") as folder:
        root = Path(folder)
        data = root / "data"
        data.mkdir()
        for index in range(max(1, args.size_mb // 10)):
            (data / f"file-{index}").write_bytes(os.urandom(10_000_000))
        repos = root / "repos"
        env = {**os.environ, "RESTIC_REPOSITORY": str(repos / "one"), "RESTIC_PASSWORD": PASSWORD}
        subprocess.run(["restic", "-q", "init"], env=env, check=True, stdout=subprocess.DEVNULL)
        subprocess.run(["restic", "-q", "backup", str(data)], env=env, check=True, stdout=subprocess.DEVNULL)
        shutil.copytree(repos / "one", repos / "two")
        size = size_of(repos / "one")
        (root / "rclone.conf").write_text("[far]\ntype = local\n")
        for name in ("local", "shared", "rclone", "plain"):
            (root / name).mkdir()
        (root / "password").write_text(PASSWORD)
        clients = "".join(f'[clients.{name}]\nreplicate_to = ["local", "shared", "far"]\n'
                          f'password_file = "{root}/password"\n\n' for name in ("one", "two"))
        (root / "triplicate.toml").write_text(
            f'[server]\nstate_dir = "{root}/state"\nrepos_dir = "{repos}"\n\n'
            f'[locations.local]\ntype = "local"\npath = "{root}/local"\nbwlimit = "{args.bwlimit}"\n\n'
            f'[locations.shared]\ntype = "local"\npath = "{root}/shared"\nbwlimit = "{args.bwlimit}"\n\n'
            f'[locations.far]\ntype = "rclone"\nremote = "far:{root}/rclone"\nrclone_config = "{root}/rclone.conf"\n'
            f'bwlimit = "{args.bwlimit}"\n\n{clients}')
        config = load_config(root / "triplicate.toml")
        results: dict[str, tuple[int, float]] = {}
        results["triplicate sync, local location"] = (size, timed(lambda: sync_client(config, "one", ["local"])))

        def both() -> None:
            threads = [threading.Thread(target=sync_client, args=(config, name, ["shared"])) for name in ("one", "two")]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()

        results["triplicate sync, two clients at once to one location"] = (2 * size, timed(both))
        results["triplicate sync, rclone location (rclone's limiter)"] = (
            size, timed(lambda: sync_client(config, "one", ["far"])))
        rclone_limit = f"{limit}B"
        results["rclone copy --bwlimit (the alternative)"] = (size, timed(lambda: subprocess.run(
            ["rclone", "copy", "--config", str(root / "rclone.conf"), "--bwlimit", rclone_limit,
             str(repos / "one"), str(root / "plain")], check=True)))
    print(f"A restic repository of {size / 1e6:.0f} MB copied with a limit of {args.bwlimit} "
          f"({limit / 1e6:.1f} MB/s); rate = bytes copied / elapsed time.\n")
    print("| copy | bytes | seconds | rate | rate / limit |")
    print("|---|---|---|---|---|")
    for name, (count, seconds) in results.items():
        rate = count / seconds
        print(f"| {name} | {count / 1e6:.0f} MB | {seconds:.2f} | {rate / 1e6:.2f} MB/s | {rate / limit:.2f} |")


if __name__ == "__main__":
    main()
