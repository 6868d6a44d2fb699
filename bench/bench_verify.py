#!/usr/bin/env python3
"""Benchmark `triplicate audit --verify 100` (keyless SHA-256) against `restic check --read-data`.

Not a test. Builds a restic repository of about --size-mb of random data with the
real restic, replicates it with `triplicate sync`, then times on that same replica,
side by side in one hyperfine run: triplicate's keyless verification of every
file, `restic check --read-data`, `sha256sum` over every file (2 processes) and
a bare Python hashlib loop (2 threads, the ceiling for triplicate's approach).
Then times a keyless audit without verification of --clients clients with
--locations locations each (hard-linked copies of a small real repository).
Prints a Markdown report with ratios and the medians behind them.

    .venv/bin/python bench/bench_verify.py --size-mb 1100 --runs 5 > docs/benchmarks-audit.md

Needs: restic, hyperfine (Debian packages). Page cache warm for every tool (a warm-up round).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from statistics import median

PASSWORD = "benchmark"
HASHLIB_CEILING = """
import hashlib, sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
files = [p for p in Path(sys.argv[1]).rglob("*") if p.is_file() and p.name != "config"]
def digest(path):
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest() == path.name
with ThreadPoolExecutor(2) as pool:
    assert all(pool.map(digest, files))
"""


def sh(command: str) -> None:
    subprocess.run(command, shell=True, check=True, stdout=subprocess.DEVNULL)


def hyperfine(commands: dict[str, str], rounds: int, workdir: Path) -> dict[str, list[float]]:
    """Seconds per named command, one per round, after one warm-up round.

    Rounds interleave the commands (hyperfine runs each once per round, one after the
    other), so that load from other work on the machine falls on all of them alike
    rather than on whichever happened to run during it.
    """
    export = workdir / "hyperfine.json"
    times: dict[str, list[float]] = {name: [] for name in commands}
    for round_number in range(rounds + 1):
        argv = ["hyperfine", "--style", "none", "--runs", "1", "--export-json", str(export)]
        for name, command in commands.items():
            argv += ["--command-name", name, command]
        subprocess.run(argv, check=True, stdout=sys.stderr)
        if round_number:  # the first round warms the page cache
            for result in json.loads(export.read_text())["results"]:
                times[result["command"]] += result["times"]
    return times


def make_data(folder: Path, megabytes: int) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for index in range(0, megabytes, 64):
        (folder / f"file-{index:05d}.bin").write_bytes(os.urandom(min(64, megabytes - index) << 20))


def repository_bytes(repo: Path) -> tuple[int, int]:
    files = [path for path in repo.rglob("*") if path.is_file() and path.name != "config"
             and ".triplicate-partial" not in path.parts]
    return len(files), sum(path.stat().st_size for path in files)


def link_tree(source: Path, target: Path) -> None:
    shutil.copytree(source, target, copy_function=os.link)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("--size-mb", type=int, default=1100, help="size of the backed-up data")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--clients", type=int, default=100)
    parser.add_argument("--locations", type=int, default=3)
    parser.add_argument("--snapshots", type=int, default=10, help="snapshots in each small client repository")
    parser.add_argument("--workdir", type=Path, default=None, help="where to build (default: a temp folder)")
    arguments = parser.parse_args()
    triplicate = shutil.which("triplicate") or str(Path(sys.executable).parent / "triplicate")
    work = Path(arguments.workdir or tempfile.mkdtemp(prefix="triplicate-bench-verify-"))
    work.mkdir(parents=True, exist_ok=True)
    os.environ.update(RESTIC_PASSWORD=PASSWORD)
    q = shlex.quote
    try:
        print(f"building a {arguments.size_mb} MB repository in {work}", file=sys.stderr)
        repos, location = work / "repos", work / "location"
        location.mkdir(parents=True, exist_ok=True)
        make_data(work / "data", arguments.size_mb)
        sh(f"restic init -q -r {q(str(repos / 'bench'))}")
        sh(f"restic -q -r {q(str(repos / 'bench'))} backup {q(str(work / 'data'))}")
        shutil.rmtree(work / "data")
        config = work / "triplicate.toml"
        # in_progress_grace 0: every file is judged although it was written a moment ago.
        config.write_text(
            f'[server]\nstate_dir = "{work}/state"\nrepos_dir = "{repos}"\nin_progress_grace = "0s"\n'
            f'[locations.usb]\ntype = "local"\npath = "{location}"\n'
            f'[clients.bench]\nreplicate_to = ["usb"]\n'
        )
        sh(f"{q(triplicate)} -c {q(str(config))} sync bench")
        replica = location / "bench"
        files, size = repository_bytes(replica)
        commands = {
            "triplicate audit --verify 100": f"{q(triplicate)} -c {q(str(config))} audit --verify 100 --json"
                                             " > /dev/null",
            "restic check --read-data": f"restic -q --no-cache --no-lock -r {q(str(replica))} check --read-data",
            "sha256sum (2 processes)": f"find {q(str(replica))} -type f ! -name config -print0 | "
                                       "xargs -0 -n 8 -P 2 sha256sum > /dev/null",
            "Python hashlib (2 threads)": f"{q(sys.executable)} -c {q(HASHLIB_CEILING)} {q(str(replica))}",
        }
        verify = hyperfine(commands, arguments.runs, work)

        print(f"building {arguments.clients} clients x {arguments.locations} locations", file=sys.stderr)
        small = work / "small"
        sh(f"restic init -q -r {q(str(small))}")
        for index in range(arguments.snapshots):
            make_data(work / "small-data" / str(index), 1)
            sh(f"restic -q -r {q(str(small))} backup {q(str(work / 'small-data'))}")
        small_files, _ = repository_bytes(small)
        many = work / "many"
        lines = [f'[server]\nstate_dir = "{many}/state"\nrepos_dir = "{many}/repos"\n']
        for number in range(arguments.locations):
            lines.append(f'[locations.l{number}]\ntype = "local"\npath = "{many}/l{number}"\n')
        for client in range(arguments.clients):
            name = f"c{client:03d}"
            link_tree(small, many / "repos" / name)
            for number in range(arguments.locations):
                link_tree(small, many / f"l{number}" / name)
            targets = ", ".join(f'"l{number}"' for number in range(arguments.locations))
            lines.append(f'[clients.{name}]\nreplicate_to = [{targets}]\n')
        many_config = many / "triplicate.toml"
        many_config.write_text("\n".join(lines))
        presence = hyperfine({"audit": f"{q(triplicate)} -c {q(str(many_config))} audit --json > /dev/null"},
                             arguments.runs, work)["audit"]
    finally:
        shutil.rmtree(work, ignore_errors=True)
    report(arguments, files, size, verify, presence, small_files)


def report(arguments: argparse.Namespace, files: int, size: int, verify: dict[str, list[float]],
           presence: list[float], small_files: int) -> None:
    ours = verify["triplicate audit --verify 100"]
    restic = verify["restic check --read-data"]
    ceiling = verify["Python hashlib (2 threads)"]
    print("# Benchmark: `triplicate audit`\n")
    print(f"Machine: {os.cpu_count()} cores, Python {platform.python_version()}, "
          f"{subprocess.run(['restic', 'version'], capture_output=True, text=True).stdout.split(' compiled')[0]}. "
          "Page cache warm for every tool (one warm-up round). The commands run interleaved, one of each per "
          "round, so that other work on the machine weighs on all of them alike.\n")
    print("Command (one run, every number below):\n")
    print("    .venv/bin/python bench/bench_verify.py " + " ".join(
        f"--{key.replace('_', '-')} {value}" for key, value in vars(arguments).items()
        if key != "workdir") + "\n")
    print(f"## Keyless verification of one replica: {files} files, {size / 1e6:.0f} MB, {arguments.runs} rounds\n")
    print("| command | median s | min s | max s | MB/s (median) |")
    print("|---|---:|---:|---:|---:|")
    for name, times in verify.items():
        print(f"| {name} | {median(times):.2f} | {min(times):.2f} | {max(times):.2f} | "
              f"{size / 1e6 / median(times):.0f} |")
    against_restic = median([theirs / mine for theirs, mine in zip(restic, ours, strict=True)])
    against_ceiling = median([bare / mine for bare, mine in zip(ceiling, ours, strict=True)])
    print(f"\nThroughput of `triplicate audit --verify 100` / `restic check --read-data`, median of the "
          f"rounds' ratios: **{against_restic:.1f}x** (target: at least 3x).")
    print(f"Throughput of `triplicate audit --verify 100` / the bare hashlib loop: **{against_ceiling:.0%}** "
          "(the audit also starts the CLI, lists and compares both repositories and stores a stamp per file).\n")
    print(f"## Keyless audit without verification: {arguments.clients} clients x {arguments.locations} "
          f"locations\n")
    print(f"Each repository: {small_files} files ({arguments.snapshots} snapshots), so "
          f"{arguments.clients * (arguments.locations + 1) * small_files} files listed in all.\n")
    print(f"`triplicate audit --json`: median **{median(presence):.2f} s** "
          f"(min {min(presence):.2f}, max {max(presence):.2f}) (target: seconds).")


if __name__ == "__main__":
    main()
