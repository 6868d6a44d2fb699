"""Overhead of ``triplicate restore-check`` over a plain ``restic restore`` of the same files.

Builds a server in a temporary folder (a primary with one snapshot of large and small
files, replicated to two local locations), then, for several rounds: runs the real
CLI ``triplicate restore-check`` (a new random sample each time), reads from its JSON
which files it sampled, and restores exactly those files from every location with
plain ``restic restore`` (with and without ``--verify``), after a warm-up round so
that both read from a warm page cache. Prints a Markdown table of medians, fastest
runs and the ratios.

    .venv/bin/python bench/bench_restore.py [--rounds 5] [--large 10] [--large-size 64MB] [--small 400]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, NamedTuple

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.support.repository import BASE_CONFIG, restic_env  # noqa: E402  (the tests' server: primary, usb, nas)
from triplicate.restic import include_pattern  # noqa: E402  (the pattern restore-check itself uses)
from triplicate.units import format_bytes, parse_size  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--large", type=int, default=10, help="number of large files")
    parser.add_argument("--large-size", default="64MB")
    parser.add_argument("--small", type=int, default=400, help="number of small files (1 kB to 1 MB)")
    parser.add_argument("--workdir", default="/var/tmp", help="where the temporary server goes")
    options = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="bench-restore-", dir=options.workdir))
    try:
        snapshot, total = build_server(root, options.large, parse_size(options.large_size), options.small)
        print(f"snapshot {snapshot[:8]}: {format_bytes(total)}; {options.rounds} rounds", file=sys.stderr)
        scenarios = {
            "3 locations (default)": [],
            "primary only": ["--location", "primary"],
        }
        rows = []
        for title, arguments in scenarios.items():
            rows.append((title, measure(root, snapshot, arguments, options.rounds)))
        print_table(rows, options, total)
    finally:
        shutil.rmtree(root, ignore_errors=True)


def build_server(root: Path, large: int, large_size: int, small: int) -> tuple[str, int]:
    """Back up the benchmark data into the primary and sync it; return the snapshot ID and its size."""
    for folder in ("usb", "nas", "data", "repos"):
        (root / folder).mkdir()
    (root / "password").write_text("benchmark password")
    (root / "triplicate.toml").write_text(BASE_CONFIG.format(root=root))
    rng = random.Random(7)
    total = 0
    for index in range(large):
        (root / "data" / f"large-{index:02}.bin").write_bytes(os.urandom(large_size))
        total += large_size
    for index in range(small):
        size = int(10 ** rng.uniform(3, 6))  # log-uniform: 1 kB to 1 MB
        (root / "data" / "small" / f"{index % 20:02}").mkdir(parents=True, exist_ok=True)
        (root / "data" / "small" / f"{index % 20:02}" / f"file-{index:04}.bin").write_bytes(os.urandom(size))
        total += size
    env = restic_env(root / "repos" / "web01", root / "password")
    subprocess.run(["restic", "init"], env=env, check=True, capture_output=True)
    subprocess.run(["restic", "backup", "-q", str(root / "data")], env=env, check=True, capture_output=True)
    subprocess.run(triplicate(root, "sync", "web01"), check=True, capture_output=True)
    snapshots = json.loads(subprocess.run(["restic", "snapshots", "--json"], env=env, check=True,
                                          capture_output=True, text=True).stdout)
    return snapshots[0]["id"], total


def triplicate(root: Path, *arguments: str) -> list[str]:
    return [str(ROOT / ".venv" / "bin" / "triplicate"), "-c", str(root / "triplicate.toml"), *arguments]


class Cost(NamedTuple):
    wall: float  # seconds on the clock
    cpu: float  # user + system seconds of every process involved: robust on a busy machine

    def __add__(self, other: object) -> Cost:  # type: ignore[override]
        assert isinstance(other, Cost)
        return Cost(self.wall + other.wall, self.cpu + other.cpu)

    def __str__(self) -> str:
        return f"{self.wall:.2f} s ({self.cpu:.2f} CPU s)"


def run_costed(command: list[str], env: dict[str, str] | None = None) -> tuple[Cost, str]:
    """Run ``command``; its cost (with all its descendants, e.g. restore-check's restics) and stdout."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    output = subprocess.run(command, env=env, check=True, capture_output=True, text=True).stdout
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return Cost(wall, (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)), output


def measure(root: Path, snapshot: str, location_arguments: list[str], rounds: int) -> dict[str, list[Cost]]:
    """Per round: the cost of restore-check and of plain restores (with and without --verify) of its sample.

    One unmeasured warm-up round first, so that every measured run reads from a warm page cache.
    """
    costs: dict[str, list[Cost]] = {"check": [], "plain_verify": [], "plain": []}
    for round_number in range(rounds + 1):
        check, output = run_costed(triplicate(root, "restore-check", "web01", *location_arguments, "--json"))
        report = json.loads(output)
        sample = [item["path"] for item in report["sample"]]
        plain_verify = plain_restores(root, snapshot, sample, list(report["locations"]), verify=True)
        plain = plain_restores(root, snapshot, sample, list(report["locations"]), verify=False)
        if round_number == 0:
            continue
        for key, cost in (("check", check), ("plain_verify", plain_verify), ("plain", plain)):
            costs[key].append(cost)
        size = sum(item["size"] for item in report["sample"])
        print(f"round {round_number}: {format_bytes(size)}: check {check}, plain --verify {plain_verify}, "
              f"plain {plain}", file=sys.stderr)
    return costs


def plain_restores(root: Path, snapshot: str, paths: list[str], locations: list[str], verify: bool) -> Cost:
    """The cost of restoring ``paths`` from each location in turn with restic, as restore-check does.

    Same flags as restore-check (replicas read with --no-lock), and the restored files
    are removed within the measurement, as restore-check removes its own.
    """
    total = Cost(0.0, 0.0)
    for location in locations:
        repository = root / "repos" / "web01" if location == "@primary" else root / location / "web01"
        lock = [] if location == "@primary" else ["--no-lock"]
        target = Path(tempfile.mkdtemp(dir=root))
        command = ["restic", "--no-cache", *lock, "restore", snapshot, "--target", str(target)]
        for path in paths:
            command += ["--include", include_pattern(path)]
        if verify:
            command.append("--verify")
        cost, _ = run_costed(command, restic_env(repository, root / "password"))
        started, cpu = time.perf_counter(), time.process_time()
        shutil.rmtree(target)
        total += cost + Cost(time.perf_counter() - started, time.process_time() - cpu)
    return total


def print_table(rows: list[tuple[str, dict[str, list[Cost]]]], options: argparse.Namespace, total: int) -> None:
    print(f"Data: {options.large} x {options.large_size} + {options.small} files of 1 kB-1 MB "
          f"({format_bytes(total)}); default sample (20 files); {options.rounds} rounds after a warm-up.\n")
    print("Medians over the rounds; ratios are medians of the per-round ratios. CPU = user + system "
          "seconds of every process (restore-check's restics included).\n")
    print("| scenario | measure | restore-check | restic restore --verify | restic restore "
          "| check / restore --verify | check / restore |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for title, costs in rows:
        for measure_name in ("wall", "cpu"):
            def value(key: str, costs: dict[str, list[Any]] = costs, measure_name: str = measure_name) -> float:
                return statistics.median(getattr(cost, measure_name) for cost in costs[key])

            def ratio(key: str, costs: dict[str, list[Any]] = costs, measure_name: str = measure_name) -> float:
                return statistics.median(getattr(check, measure_name) / getattr(plain, measure_name)
                                         for check, plain in zip(costs["check"], costs[key], strict=True))

            print(f"| {title} | {measure_name} s | {value('check'):.2f} | {value('plain_verify'):.2f} "
                  f"| {value('plain'):.2f} | {ratio('plain_verify'):.2f} | {ratio('plain'):.2f} |")


if __name__ == "__main__":
    main()
