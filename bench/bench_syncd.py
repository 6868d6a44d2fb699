"""Benchmark of ``triplicate syncd`` against the alternative it replaces (a periodic sync).

Two measurements, each against the real alternative in the same run:

1. latency: from a snapshot file's arrival in the primary repository (restic
   backups of small data, the file seen by a 2 ms poller) to its presence in
   every location, over --backups backups. The daemon (file events) against a
   cron-style loop running ``triplicate sync`` every --cron-interval seconds
   (what a "wake up every minute and compare" script does, shortened so that it
   fits in a run; its latency scales with the interval).
2. idle: --clients clients (copies of one small repository) in one daemon, after
   its start-up catch-up: CPU over --idle-seconds from /proc, and peak resident
   memory (VmHWM). Against the CPU one periodic pass of ``sync`` over every
   client costs (in-process, the cheapest form of the alternative), which a
   cron job would spend every interval.

Usage: .venv/bin/python bench/bench_syncd.py [--part latency|idle|all] [--backups 50]
       [--clients 1000] [--idle-seconds 60] [--cron-backups 20] [--cron-interval 5]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import resource
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

PASSWORD = "benchmark password"
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.support.wait import wait_until  # noqa: E402 (after the path is set)


def restic(repo: Path, *args: str) -> None:
    env = {key: value for key, value in os.environ.items() if not key.startswith("RESTIC_")}
    env.update(RESTIC_REPOSITORY=str(repo), RESTIC_PASSWORD=PASSWORD)
    subprocess.run(["restic", "--no-cache", "-q", *args], env=env, check=True, capture_output=True)


def make_server(root: Path, clients: list[str], **server: object) -> Path:
    """A configuration with locations usb and nas under ``root`` and ``clients`` replicating to both."""
    import tomlkit

    for folder in ("usb", "nas", "repos"):
        (root / folder).mkdir(parents=True, exist_ok=True)
    document = {
        "server": {"state_dir": str(root / "state"), "repos_dir": str(root / "repos"), **server},
        "locations": {name: {"type": "local", "path": str(root / name)} for name in ("usb", "nas")},
        "clients": {name: {"replicate_to": ["usb", "nas"]} for name in clients},
    }
    config = root / "triplicate.toml"
    config.write_text(tomlkit.dumps(document))
    return config


class Daemon:
    """``triplicate syncd`` as a process; its log in a file."""

    def __init__(self, config: Path, *args: str) -> None:
        self.log_path = config.parent / "syncd.log"
        self.log = open(self.log_path, "w")  # noqa: SIM115 - the daemon writes it until stop()
        self.process = subprocess.Popen(
            [sys.executable, "-m", "triplicate", "-c", str(config), "syncd", *args],
            stdout=subprocess.DEVNULL, stderr=self.log,
        )
        wait_until(lambda: "syncd started" in self.log_path.read_text(), 60, "the daemon to start")

    def stop(self) -> int:
        self.process.send_signal(signal.SIGTERM)
        code = self.process.wait(60)
        self.log.close()
        return code


class ArrivalPoller:
    """Notes the first time each snapshot name is seen in each folder (every 2 ms)."""

    def __init__(self, folders: dict[str, Path]) -> None:
        self.folders = folders
        self.seen: dict[str, dict[str, float]] = {label: {} for label in folders}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            now = time.monotonic()
            for label, folder in self.folders.items():
                try:
                    names = os.listdir(folder)
                except FileNotFoundError:
                    continue
                seen = self.seen[label]
                for name in names:
                    if len(name) == 64 and name not in seen:
                        seen[name] = now
            time.sleep(0.002)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(fraction * (len(ordered) - 1))))
    return ordered[index]


def backups_latency(root: Path, count: int, before_each: float = 0.0) -> list[float]:
    """Make ``count`` backups; return each snapshot's arrival-to-everywhere latency in seconds."""
    repo = root / "repos" / "web01"
    poller = ArrivalPoller({"primary": repo / "snapshots", "usb": root / "usb" / "web01" / "snapshots",
                            "nas": root / "nas" / "web01" / "snapshots"})
    data = root / "data"
    data.mkdir(exist_ok=True)
    latencies = []
    measured: set[str] = set()
    try:
        for index in range(count):
            if before_each:
                time.sleep(random.uniform(0, before_each))  # arrive at a random phase of the cron
            (data / f"file-{index}").write_bytes(os.urandom(16 << 10))
            restic(repo, "backup", str(data))
            new = wait_until(lambda: set(poller.seen["primary"]) - measured, 10, "the snapshot's arrival")
            (snapshot,) = new
            measured.add(snapshot)
            wait_until(lambda snapshot=snapshot: all(snapshot in poller.seen[label] for label in ("usb", "nas")), 600,
                     "replication")
            arrived = poller.seen["primary"][snapshot]
            latencies.append(max(poller.seen[label][snapshot] for label in ("usb", "nas")) - arrived)
    finally:
        poller.stop()
    return latencies


def event_run_seconds(state_dir: Path) -> list[float]:
    """How long each event-triggered run took (listing + copy + recording), from the state DB."""
    with sqlite3.connect(state_dir / "state.db") as connection:
        rows = connection.execute("SELECT finished - started FROM runs WHERE trigger='event'").fetchall()
    return [row[0] for row in rows]


def bench_latency(backups: int, cron_backups: int, cron_interval: float) -> dict[str, object]:
    results: dict[str, object] = {}
    with tempfile.TemporaryDirectory(prefix="bench-syncd-") as folder:
        root = Path(folder)
        config = make_server(root, ["web01"])
        restic(root / "repos" / "web01", "init")
        daemon = Daemon(config)
        try:
            latencies = backups_latency(root, backups)
        finally:
            daemon.stop()
        runs = event_run_seconds(root / "state")
        results["syncd"] = summary(latencies) | {"run_p50": statistics.median(runs) if runs else None}

    with tempfile.TemporaryDirectory(prefix="bench-cron-") as folder:
        root = Path(folder)
        config = make_server(root, ["web01"])
        restic(root / "repos" / "web01", "init")
        stop = threading.Event()

        def cron() -> None:  # the alternative: `triplicate sync` every cron_interval seconds
            while not stop.wait(cron_interval):
                subprocess.run([sys.executable, "-m", "triplicate", "-c", str(config), "sync", "web01"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

        loop = threading.Thread(target=cron, daemon=True)
        loop.start()
        try:
            latencies = backups_latency(root, cron_backups, before_each=cron_interval)
        finally:
            stop.set()
            loop.join()
        results["cron"] = summary(latencies) | {"interval": cron_interval}
    return results


def summary(latencies: list[float]) -> dict[str, float]:
    return {
        "count": len(latencies),
        "p50": statistics.median(latencies),
        "p99": percentile(latencies, 0.99),
        "max": max(latencies),
        "mean": statistics.fmean(latencies),
    }


def proc_cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def proc_status(pid: int, key: str) -> int:
    match = re.search(rf"^{key}:\s+(\d+) kB", Path(f"/proc/{pid}/status").read_text(), re.M)
    return int(match.group(1)) * 1024 if match else 0


def bench_idle(clients: int, seconds: float) -> dict[str, object]:
    names = [f"c{index:04d}" for index in range(clients)]
    with tempfile.TemporaryDirectory(prefix="bench-idle-") as folder:
        root = Path(folder)
        config = make_server(root, names)
        template = root / "template"
        restic(template, "init")
        (root / "data").mkdir()
        (root / "data" / "file").write_bytes(os.urandom(4 << 10))
        restic(template, "backup", str(root / "data"))
        started = time.monotonic()
        for name in names:
            subprocess.run(["cp", "-a", str(template), str(root / "repos" / name)], check=True)
        setup = time.monotonic() - started
        snapshot = os.listdir(template / "snapshots")[0]

        daemon = Daemon(config)
        started = time.monotonic()
        wait_until(lambda: all((root / location / name / "snapshots" / snapshot).exists()
                             for location in ("usb", "nas") for name in names), 1800, "the catch-up")
        catch_up = time.monotonic() - started
        wait_until(lambda: _quiet(daemon.log_path, 3.0), 120, "the log to go quiet")
        pid = daemon.process.pid
        cpu_before, wall_before = proc_cpu_seconds(pid), time.monotonic()
        time.sleep(seconds)  # the measurement: the daemon idles, rescanning every client once a minute
        cpu = proc_cpu_seconds(pid) - cpu_before
        wall = time.monotonic() - wall_before
        rss_peak, rss_now = proc_status(pid, "VmHWM"), proc_status(pid, "VmRSS")
        threads = len(os.listdir(f"/proc/{pid}/task"))
        daemon.stop()

        # The alternative: one periodic pass of sync over every client (what cron runs each minute).
        from triplicate.actions.sync import sync_client
        from triplicate.config.load import load_config

        loaded = load_config(config)
        before = resource.getrusage(resource.RUSAGE_SELF)
        wall_pass = time.monotonic()
        for name in names:
            sync_client(loaded, name, ["usb", "nas"], trigger="cron")
        after = resource.getrusage(resource.RUSAGE_SELF)
        pass_cpu = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
        pass_wall = time.monotonic() - wall_pass
    return {
        "clients": clients, "setup_seconds": setup, "catch_up_seconds": catch_up,
        "idle_seconds": wall, "idle_cpu_seconds": cpu, "idle_cpu_percent_of_one_core": 100 * cpu / wall,
        "rss_peak_mb": rss_peak / 1e6, "rss_idle_mb": rss_now / 1e6, "threads": threads,
        "cron_pass_cpu_seconds": pass_cpu, "cron_pass_wall_seconds": pass_wall,
    }


def _quiet(log: Path, seconds: float) -> bool:
    return time.time() - log.stat().st_mtime > seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--part", choices=("latency", "idle", "all"), default="all")
    parser.add_argument("--backups", type=int, default=50)
    parser.add_argument("--cron-backups", type=int, default=20)
    parser.add_argument("--cron-interval", type=float, default=5.0)
    parser.add_argument("--clients", type=int, default=1000)
    parser.add_argument("--idle-seconds", type=float, default=60.0)
    arguments = parser.parse_args()
    results: dict[str, object] = {"load_average_before": os.getloadavg()}
    if arguments.part in ("latency", "all"):
        results["latency"] = bench_latency(arguments.backups, arguments.cron_backups, arguments.cron_interval)
        syncd, cron = results["latency"]["syncd"], results["latency"]["cron"]  # type: ignore[index]
        results["latency"]["ratio_p50_cron_over_syncd"] = cron["p50"] / syncd["p50"]  # type: ignore[index]
    if arguments.part in ("idle", "all"):
        idle = bench_idle(arguments.clients, arguments.idle_seconds)
        idle["ratio_cron_cpu_per_minute_over_syncd"] = (
            idle["cron_pass_cpu_seconds"] / (idle["idle_cpu_seconds"] * 60 / idle["idle_seconds"]))  # type: ignore[operator]
        results["idle"] = idle
    results["load_average_after"] = os.getloadavg()
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
