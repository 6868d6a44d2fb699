#!/usr/bin/env python3
"""Benchmark copy during backup: from a snapshot's arrival to every location holding it.

Not a test. For each size in --sizes (MB), twice (in one run, "before" then "after"):
a fresh server (``triplicate init``, ``client add``), triplicate's endpoint
(``triplicate serve alpha``) and the watcher (``triplicate syncd alpha``) as
processes, and restic backing up that much fresh random data through the endpoint
at --upload (``restic --limit-upload``). The client replicates to three locations:

- usb:  a local folder, no limit;
- slow: SFTP through OpenSSH's sshd on loopback, ``bwlimit`` --slow (below the upload);
- fast: SFTP, ``bwlimit`` --fast (above the upload).

Measured: the seconds from the snapshot file's arrival in the primary (polled every
2 ms) to its arrival at each location, and how much of the backup each location held
when restic returned. "after" is triplicate as it is (the endpoint announces each pack
and the watcher copies it at once; with --endpoint rclone, the watcher sees restic's
lock and polls for new packs); "before" is the same watcher with
``copy_during_backup`` made a no-op (a benchmark's swap, as before issue 15: the copy
starts when the snapshot lands). Prints a Markdown report with the ratios.

    .venv/bin/python bench/bench_copy_during_backup.py --sizes 100,1000,5000 \\
        --upload 20MB/s --slow 15MB/s --fast 40MB/s

Sizes the disk cannot hold (data, primary and three replicas: five times the size,
plus a margin) are left out, and the report says so. Needs: restic, openssh-server, rclone.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from statistics import median

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "bench")]

from bench_endpoint import init_server  # noqa: E402 - after the path is set
from bench_syncd import ArrivalPoller  # noqa: E402

from tests.support.remote import SshServer, start_sshd, stop  # noqa: E402
from tests.support.wait import wait_until  # noqa: E402
from triplicate.config.load import load_config  # noqa: E402
from triplicate.service.scripts import Programs, rest_command  # noqa: E402
from triplicate.units import parse_rate  # noqa: E402

TRIPLICATE = [sys.executable, "-m", "triplicate"]
# The watcher as before issue 15: the same daemon, announcements of packs ignored.
BEFORE_SYNCD = [sys.executable, "-c",
                "import sys; from triplicate.daemon.main import Daemon; "
                "Daemon.copy_during_backup = lambda self, client: None; "
                "from triplicate.cli import main; main()"]
LOCATIONS = ("usb", "slow", "fast")
MB = 1000 * 1000
DISK_MARGIN = 2000 * MB


def make_data(folder: Path, megabytes: int) -> None:
    """``megabytes`` of incompressible files of up to 64 MB."""
    folder.mkdir(parents=True)
    for index in range(0, megabytes, 64):
        (folder / f"file-{index:05d}.bin").write_bytes(os.urandom(min(64, megabytes - index) * MB))


def make_server(root: Path, ssh: SshServer, slow: str, fast: str, endpoint: str) -> tuple[Path, str]:
    """A server with client alpha replicating to usb, slow and fast; return the configuration
    and alpha's repository URL."""
    config = init_server(root)
    for name in LOCATIONS:
        (root / name).mkdir()
    # The rescan (the safety net, every poll_interval) also copies what a location lacks, packs of
    # a backup under way included: a day keeps it out of the measured minutes.
    config.write_text(config.read_text().replace(
        "[server]\n", f'[server]\npoll_interval = "24h"\nendpoint_program = "{endpoint}"\n')
                      + f'\n[locations.usb]\ntype = "local"\npath = "{root / "usb"}"\n\n'
                      + ssh.location_toml("slow", root / "slow", bwlimit=slow) + "\n"
                      + ssh.location_toml("fast", root / "fast", bwlimit=fast))
    added = subprocess.run([*TRIPLICATE, "-c", str(config), "client", "add", "alpha", "--no-enable", "--json",
                            *[argument for name in LOCATIONS for argument in ("--replicate-to", name)]],
                           check=True, capture_output=True, text=True)
    # --no-enable: no service tree is started (this benchmark runs the endpoint and the watcher
    # itself); the client is served all the same.
    text = config.read_text()
    assert text.count("enabled = false\n") == 1, text
    config.write_text(text.replace("enabled = false\n", ""))
    return config, str(json.loads(added.stdout)["url"])


def restic(url: str, password: Path, *args: str) -> None:
    env = {key: value for key, value in os.environ.items() if not key.startswith("RESTIC_")}
    env.update(RESTIC_REPOSITORY=url, RESTIC_PASSWORD_FILE=str(password))
    subprocess.run(["restic", "--no-cache", "-q", *args], env=env, check=True, stdout=subprocess.DEVNULL)


def held_bytes(folder: Path) -> int:
    """Bytes of the pack files under ``folder/data``."""
    return sum(path.stat().st_size for path in (folder / "data").glob("*/*") if len(path.name) == 64)


def one_run(work: Path, mode: str, megabytes: int, data: Path, ssh: SshServer,
            args: argparse.Namespace) -> dict[str, float]:
    """One backup with a fresh server; return seconds per location from the snapshot's arrival
    ("every": the last of them), restic's seconds, and the MB each location held as restic returned."""
    root = work / f"{mode}-{megabytes}"
    root.mkdir()
    processes: list[subprocess.Popen[bytes]] = []
    try:
        config, url = make_server(root, ssh, args.slow, args.fast, args.endpoint)
        # The client's endpoint as its service runs it: triplicate serve, or rclone serve restic.
        serve = rest_command(load_config(config), config, "alpha", Programs.find())
        with (root / "endpoint.log").open("wb") as endpoint_log:
            processes.append(subprocess.Popen(serve, stdout=subprocess.DEVNULL, stderr=endpoint_log))
        syncd_log = root / "syncd.log"
        watcher = BEFORE_SYNCD if mode == "before" else TRIPLICATE
        with syncd_log.open("wb") as log:
            processes.append(subprocess.Popen([*watcher, "-c", str(config), "syncd", "alpha"],
                                              stdout=subprocess.DEVNULL, stderr=log))
        wait_until(lambda: "syncd started" in syncd_log.read_text(), 60, "the watcher to start")
        password = root / "password"
        password.write_text("benchmark\n")
        wait_until(lambda: _listening(url), 30, "the endpoint")
        restic(url, password, "init")
        replicas = {name: root / name / "alpha" for name in LOCATIONS}
        poller = ArrivalPoller({"primary": root / "repos" / "alpha" / "snapshots",
                                **{name: folder / "snapshots" for name, folder in replicas.items()}})
        try:
            started = time.monotonic()
            restic(url, password, f"--limit-upload={(parse_rate(args.upload) or 0) // 1024}", "backup", str(data))
            returned = time.monotonic()
            ahead = {name: held_bytes(folder) / MB for name, folder in replicas.items()}
            (snapshot,) = wait_until(lambda: set(poller.seen["primary"]), 10, "the snapshot in the primary")
            slowest = parse_rate(args.slow) or MB
            wait_until(lambda: all(snapshot in poller.seen[name] for name in LOCATIONS),
                       megabytes * MB / slowest * 3 + 120, "the snapshot at every location",
                       context=lambda: syncd_log.read_text()[-4000:])
        finally:
            poller.stop()
        arrived = poller.seen["primary"][snapshot]
        result = {name: poller.seen[name][snapshot] - arrived for name in LOCATIONS}
        result["every"] = max(result.values())
        result["backup"] = returned - started
        result |= {f"{name} ahead MB": value for name, value in ahead.items()}
        print(f"{mode} {megabytes} MB: " + ", ".join(f"{key} {value:.2f}" for key, value in result.items()),
              file=sys.stderr)
        return result
    finally:
        for process in reversed(processes):
            process.send_signal(signal.SIGTERM)
            process.wait(60)
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)


def _listening(url: str) -> bool:
    """Whether the endpoint of ``url`` (rest:http://user:password@127.0.0.1:PORT/alpha/) accepts connections."""
    import socket

    port = int(url.rpartition("@")[2].split("/")[0].rpartition(":")[2])
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except OSError:
        return False
    return True


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="100,1000,5000", help="backup sizes in MB, comma-separated")
    parser.add_argument("--upload", default="20MB/s", help="the client's upload rate (restic --limit-upload)")
    parser.add_argument("--slow", default="15MB/s", help="bwlimit of location slow (below --upload)")
    parser.add_argument("--fast", default="40MB/s", help="bwlimit of location fast (above --upload)")
    parser.add_argument("--work", default=tempfile.gettempdir(), help="where the data and servers go")
    parser.add_argument("--endpoint", choices=("triplicate", "rclone"), default="triplicate",
                        help="server.endpoint_program: announcements, or rclone and the watch on locks/")
    parser.add_argument("--keep", action="store_true", help="keep each run's server (logs, repositories)")
    args = parser.parse_args()
    sizes = [int(size) for size in args.sizes.split(",")]
    work = Path(tempfile.mkdtemp(prefix="bench-copy-during-backup.", dir=args.work))
    free = shutil.disk_usage(work).free
    fitting = [size for size in sizes if 5 * size * MB + DISK_MARGIN <= free]
    left_out = [size for size in sizes if size not in fitting]
    results: dict[int, dict[str, dict[str, float]]] = {}
    ssh = start_sshd(work / "sshd")
    try:
        for size in fitting:
            data = work / f"data-{size}"
            make_data(data, size)
            results[size] = {mode: one_run(work, mode, size, data, ssh, args) for mode in ("before", "after")}
            shutil.rmtree(data)
    finally:
        stop(ssh.process)
        if args.keep:
            print(f"kept: {work}", file=sys.stderr)
        else:
            shutil.rmtree(work, ignore_errors=True)
    report(args, results, left_out, free)
    return 0


def report(args: argparse.Namespace, results: dict[int, dict[str, dict[str, float]]], left_out: list[int],
           free: int) -> None:
    endpoint = "triplicate's endpoint" if args.endpoint == "triplicate" else "rclone serve restic"
    print(f"Client upload {args.upload} (restic --limit-upload) through {endpoint}; locations: "
          f"usb (local, no limit), slow (SFTP, bwlimit {args.slow}), fast (SFTP, bwlimit {args.fast}). "
          f"Seconds from the snapshot's arrival in the primary to its arrival at each location; "
          f"before: copy starts when the snapshot lands; after: copy during the backup.\n")
    if left_out:
        print(f"Left out for want of disk ({free / MB:.0f} MB free, 5x the size needed): "
              f"{', '.join(f'{size} MB' for size in left_out)}\n")
    print("| backup | restic s (before / after) | location | before s | after s | before / after "
          "| held when restic returned, after (MB) |")
    print("|---|---:|---|---:|---:|---:|---:|")
    for size, modes in results.items():
        before, after = modes["before"], modes["after"]
        for name in (*LOCATIONS, "every"):
            ratio = before[name] / after[name] if after[name] > 0 else float("inf")
            held = f"{after[f'{name} ahead MB']:.0f}" if name != "every" else ""
            print(f"| {size} MB | {before['backup']:.1f} / {after['backup']:.1f} | {name} | {before[name]:.2f} "
                  f"| {after[name]:.2f} | {ratio:.1f}x | {held} |")
    keeping_pace = ("usb", "fast")  # the locations at least as fast as the upload
    goal = [size for size, modes in results.items() if max(modes["after"][name] for name in keeping_pace) <= 2]
    pace = [modes["after"][name] for modes in results.values() for name in keeping_pace]
    print(f"\nGoal (a location at least as fast as the upload holds the snapshot within 2 s): met for "
          f"{', '.join(f'{size} MB' for size in goal) or 'no size'} of {', '.join(f'{size} MB' for size in results)}"
          + (f"; median after, usb and fast: {median(pace):.2f} s" if pace else ""))


if __name__ == "__main__":
    sys.exit(main())
