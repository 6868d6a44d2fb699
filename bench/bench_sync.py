#!/usr/bin/env python3
"""Benchmark `triplicate sync` against cp -a && sync, rsync -a, rclone sync and restic copy.

Not a test. Builds a restic repository of about --size-mb with the real restic,
then times, side by side in one run with hyperfine, a full copy, an incremental
copy and a no-change run, plus a no-change run over a synthetic repository of
50,000 files, and `triplicate --help`. Prints a Markdown report of ratios (the
numbers that matter across machines) with the medians behind them.

    .venv/bin/python bench/bench_sync.py --size-mb 1100 --runs 5 > bench/out/sync.md
    .venv/bin/python bench/bench_sync.py --size-mb 1100 --runs 5 --data mixed > bench/out/sync-mixed.md

Needs: restic, rclone, rsync, hyperfine (Debian packages).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

PASSWORD = "benchmark"


def sh(command: str, env: dict[str, str] | None = None) -> None:
    subprocess.run(command, shell=True, check=True, env=env, stdout=subprocess.DEVNULL)


def hyperfine(commands: dict[str, str], runs: int, prepare: dict[str, str] | None, workdir: Path,
              warmup: int = 0) -> dict[str, float]:
    """Median seconds per named command."""
    export = workdir / "hyperfine.json"
    argv = ["hyperfine", "--style", "none", "--runs", str(runs), "--warmup", str(warmup),
            "--export-json", str(export)]
    for name, command in commands.items():
        if prepare:
            argv += ["--prepare", prepare[name]]
        argv += ["--command-name", name, command]
    subprocess.run(argv, check=True, stdout=sys.stderr)
    results = json.loads(export.read_text())["results"]
    return {result["command"]: result["median"] for result in results}


def make_data(folder: Path, megabytes: int, prefix: str, kind: str = "random") -> None:
    """``random``: 64 MB files of random bytes (incompressible: the worst case for the
    ratios, as restic copy then does the least work per byte). ``mixed``: half of it
    such files, half text files of 64 kB to 1 MB that compress as documents and logs do."""
    import random

    folder.mkdir(parents=True, exist_ok=True)
    chunk = 64
    random_part = megabytes if kind == "random" else megabytes // 2
    for index in range(0, random_part, chunk):
        size = min(chunk, random_part - index)
        (folder / f"{prefix}-{index:05d}.bin").write_bytes(os.urandom(size << 20))
    if kind == "random":
        return
    generator = random.Random(f"{prefix}{megabytes}")
    vocabulary = ["".join(generator.choices("abcdefghijklmnopqrstuvwxyz", k=generator.randint(2, 10)))
                  for _ in range(20_000)]
    text = folder / f"{prefix}-text"
    text.mkdir(exist_ok=True)
    written, number = 0, 0
    while written < (megabytes - random_part) << 20:
        words = generator.choices(vocabulary, k=generator.randint(10_000, 150_000))
        content = " ".join(words).encode()
        (text / f"{number:06d}.txt").write_bytes(content)
        written += len(content)
        number += 1


def make_synthetic_repository(root: Path, files: int) -> None:
    """A repository-shaped tree of `files` small files named by their SHA-256."""
    for folder in ("keys", "index", "snapshots", "data"):
        (root / folder).mkdir(parents=True, exist_ok=True)
    (root / "config").write_bytes(os.urandom(155))
    for index in range(files):
        content = os.urandom(64)
        name = hashlib.sha256(content).hexdigest()
        kind = "data/" + name[:2] if index < files - 1100 else ("index" if index < files - 100 else "snapshots")
        (root / kind).mkdir(exist_ok=True)
        (root / kind / name).write_bytes(content)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("--size-mb", type=int, default=1100, help="size of the first backup")
    parser.add_argument("--increment-mb", type=int, default=110, help="size of the second backup")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--synthetic-files", type=int, default=50_000)
    parser.add_argument("--workdir", type=Path, default=None, help="where to build (default: a temp folder)")
    parser.add_argument("--data", choices=("random", "mixed"), default="random",
                        help="random: incompressible files; mixed: half of it compressible text")
    arguments = parser.parse_args()
    triplicate = shutil.which("triplicate") or str(Path(sys.executable).parent / "triplicate")
    work = Path(arguments.workdir or tempfile.mkdtemp(prefix="triplicate-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "RESTIC_PASSWORD": PASSWORD, "RCLONE_CONFIG": "/dev/null"}
    env.pop("AWS_CA_BUNDLE", None)
    os.environ.update(env)
    repos, location = work / "repos", work / "location"
    source = repos / "bench"
    location.mkdir(parents=True, exist_ok=True)
    config = work / "triplicate.toml"
    config.write_text(
        f'[server]\nstate_dir = "{work}/state"\nrepos_dir = "{repos}"\n'
        f'[locations.bench]\ntype = "local"\npath = "{location}"\n'
        f'[clients.bench]\nreplicate_to = ["bench"]\n'
        f'[clients.synth]\nreplicate_to = ["bench"]\n'
    )
    q = shlex.quote
    print(f"building a {arguments.size_mb} MB repository in {work}", file=sys.stderr)
    make_data(work / "data", arguments.size_mb, "first", arguments.data)
    sh(f"restic init -q -r {q(str(source))}")
    sh(f"restic -q -r {q(str(source))} backup {q(str(work / 'data'))}")

    destinations = {name: work / f"dst-{name}" for name in ("triplicate", "cp", "rsync", "rclone", "restic")}
    destinations["triplicate"] = location / "bench"
    commands = {
        "triplicate sync": f"{q(triplicate)} -c {q(str(config))} sync bench --json > /dev/null",
        "cp -a && sync": f"cp -a {q(str(source))} {q(str(destinations['cp']))} && sync",
        "rsync -a": f"rsync -a {q(str(source))}/ {q(str(destinations['rsync']))}/",
        "rclone sync": f"rclone sync -q {q(str(source))} {q(str(destinations['rclone']))}",
        "restic copy": f"restic -q -r {q(str(destinations['restic']))} copy --from-repo {q(str(source))}"
                       f" --from-password-file {q(str(work / 'password'))}",
    }
    (work / "password").write_text(PASSWORD)
    keys = dict(zip(commands, ("triplicate", "cp", "rsync", "rclone", "restic"), strict=True))

    def reset(name: str, base: Path | None) -> str:
        destination = destinations[keys[name]]
        if keys[name] == "restic" and base is None:
            return (f"rm -rf {q(str(destination))} && restic init -q -r {q(str(destination))} "
                    f"--from-repo {q(str(source))} --from-password-file {q(str(work / 'password'))} "
                    f"--copy-chunker-params && sync")
        if base is None:
            return f"rm -rf {q(str(destination))} && sync"
        return f"rm -rf {q(str(destination))} && cp -a {q(str(base))} {q(str(destination))} && sync"

    size = sum(path.stat().st_size for path in source.rglob("*") if path.is_file())
    full = hyperfine(commands, arguments.runs, {name: reset(name, None) for name in commands}, work)

    # Bases for the incremental run: each tool's own copy of the first snapshot.
    bases = {}
    for name in commands:
        base = work / f"base-{keys[name]}"
        sh(f"rm -rf {q(str(base))} && cp -a {q(str(destinations[keys[name]]))} {q(str(base))}")
        bases[name] = base
    make_data(work / "data", arguments.increment_mb, "second", arguments.data)
    sh(f"restic -q -r {q(str(source))} backup {q(str(work / 'data'))}")
    incremental = hyperfine(commands, arguments.runs, {name: reset(name, bases[name]) for name in commands}, work)
    for name in commands:  # bring every destination up to date for the no-change run
        sh(commands[name])
    no_change = hyperfine(commands, arguments.runs, None, work, warmup=1)

    synthetic = repos / "synth"
    make_synthetic_repository(synthetic, arguments.synthetic_files)
    small = {
        "triplicate sync": f"{q(triplicate)} -c {q(str(config))} sync synth --json > /dev/null",
        "rsync -a": f"rsync -a {q(str(synthetic))}/ {q(str(work / 'synth-rsync'))}/",
        "rclone sync": f"rclone sync -q {q(str(synthetic))} {q(str(work / 'synth-rclone'))}",
    }
    for command in small.values():
        sh(command)
    many = hyperfine(small, max(5, arguments.runs), None, work, warmup=1)
    help_time = hyperfine({"triplicate --help": f"{q(triplicate)} --help > /dev/null"}, 10, None, work, warmup=2)

    report(arguments, size, full, incremental, no_change, many, help_time)
    shutil.rmtree(work, ignore_errors=True)


def report(arguments: argparse.Namespace, size: int, full: dict[str, float], incremental: dict[str, float],
           no_change: dict[str, float], many: dict[str, float], help_time: dict[str, float]) -> None:
    t = "triplicate sync"
    print(f"Repository: {size / 1e6:.0f} MB ({arguments.size_mb} MB of {arguments.data} data), then a "
          f"{arguments.increment_mb} MB increment; {arguments.runs} runs each; medians.\n")
    print("| run | " + " | ".join(full) + " |")
    print("|---|" + "---:|" * len(full))
    for label, results in (("full copy", full), ("incremental", incremental), ("no change", no_change)):
        print(f"| {label} (s) | " + " | ".join(f"{results[name]:.2f}" for name in full) + " |")
    print("| full copy (MB/s) | " + " | ".join(f"{size / 1e6 / full[name]:.0f}" for name in full) + " |")
    print("\nRatios (time of the other tool / time of triplicate; above 1 means triplicate is faster):\n")
    print("| run | " + " | ".join(name for name in full if name != t) + " |")
    print("|---|" + "---:|" * (len(full) - 1))
    for label, results in (("full copy", full), ("incremental", incremental), ("no change", no_change)):
        print(f"| {label} | " + " | ".join(f"{results[name] / results[t]:.2f}" for name in full if name != t) + " |")
    print(f"\nNo change over {arguments.synthetic_files:,} files (s): " +
          ", ".join(f"{name} {seconds:.3f}" for name, seconds in many.items()))
    print(f"Ratios: rclone sync / triplicate = {many['rclone sync'] / many[t]:.2f}; "
          f"triplicate / rsync -a = {many[t] / many['rsync -a']:.2f}")
    print(f"\n`triplicate --help`: {help_time['triplicate --help'] * 1000:.0f} ms")
    print("\nTargets: full copy >= 1.3x rclone sync throughput, <= 1.5x the time of cp -a && sync, "
          ">= 8x faster than restic copy; 50,000-file no-change run <= rclone sync and <= 2x rsync -a; "
          "--help < 0.3 s.")
    print("\n| target | measured | met |\n|---|---:|---|")
    rows = [
        ("throughput vs rclone sync >= 1.3", full["rclone sync"] / full[t], full["rclone sync"] / full[t] >= 1.3),
        ("time vs cp -a && sync <= 1.5", full[t] / full["cp -a && sync"], full[t] / full["cp -a && sync"] <= 1.5),
        ("faster than restic copy >= 8", full["restic copy"] / full[t], full["restic copy"] / full[t] >= 8),
        ("50k no-change vs rclone sync <= 1", many[t] / many["rclone sync"], many[t] <= many["rclone sync"]),
        ("50k no-change vs rsync -a <= 2", many[t] / many["rsync -a"], many[t] <= 2 * many["rsync -a"]),
        ("--help seconds < 0.3", help_time["triplicate --help"], help_time["triplicate --help"] < 0.3),
    ]
    for label, value, met in rows:
        print(f"| {label} | {value:.2f} | {'yes' if met else 'NO'} |")


if __name__ == "__main__":
    main()
