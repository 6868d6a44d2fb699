"""Benchmark `triplicate recover` against `rclone copy` from the same location, and time the drill.

Not a test. Builds a restic repository of about --size-mb (random, incompressible
data) with the real restic, replicates it with `triplicate sync` to a local
location, then, in interleaved rounds (so that a busy machine weighs on both
alike), removes the primary and rebuilds it with `triplicate recover` (every
byte hashed against its name, each file fsynced and renamed, in restic's order)
and copies the same replica with `rclone copy` (no fsync; an md5 check after each
file). Finally runs `triplicate recover --drill` (rebuild into a scratch folder
plus `restic check`) and reports its recorded times. Prints a Markdown report.

    .venv/bin/python bench/bench_recover.py --size-mb 1024 --rounds 3
    .venv/bin/python bench/bench_recover.py --size-mb 512 --rounds 3 --kind sftp

With ``--kind sftp`` the location is a folder behind the tests' loopback sshd
(OpenSSH), and rclone copies from an rclone sftp remote of the same folder.

Needs: restic, rclone (and openssh-server for sftp).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT)]

from tests.support.remote import LOOPBACK, start_sshd, stop  # noqa: E402 - after the path is set

PASSWORD = "benchmark"


def run(argv: list[str], env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, check=True, env=env, capture_output=True, text=True)


def timed(argv: list[str]) -> float:
    started = time.monotonic()
    run(argv)
    return time.monotonic() - started


def folder_bytes(folder: Path) -> int:
    return sum(path.stat().st_size for path in folder.rglob("*") if path.is_file())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mb", type=int, default=1024)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--kind", choices=("local", "sftp"), default="local")
    arguments = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="bench-recover-", dir=arguments.workdir))
    try:
        report(root, arguments.size_mb, arguments.rounds, arguments.kind)
    finally:
        shutil.rmtree(root, ignore_errors=True)


def report(root: Path, size_mb: int, rounds: int, kind: str) -> None:
    (root / "password").write_text(PASSWORD)
    (root / "usb").mkdir()
    config = root / "triplicate.toml"
    ssh = start_sshd(root / "sshd") if kind == "sftp" else None
    if ssh is None:
        location = f'[locations.usb]\ntype = "local"\npath = "{root}/usb"\n'
        rclone_source = [str(root / "usb" / "web01")]
    else:
        location = ssh.location_toml("usb", root / "usb")
        (root / "rclone.conf").write_text(
            f"[far]\ntype = sftp\nhost = {LOOPBACK}\nport = {ssh.port}\nuser = {ssh.user}\n"
            f"key_file = {ssh.identity_file}\nknown_hosts_file = {ssh.known_hosts_file}\n")
        rclone_source = ["--config", str(root / "rclone.conf"), f"far:{root / 'usb' / 'web01'}"]
    try:
        measure(root, config, location, rclone_source, size_mb, rounds, kind)
    finally:
        if ssh is not None:
            stop(ssh.process)


def measure(root: Path, config: Path, location: str, rclone_source: list[str], size_mb: int, rounds: int,
            kind: str) -> None:
    config.write_text(f"""[server]
state_dir = "{root}/state"
repos_dir = "{root}/repos"

{location}
[clients.web01]
replicate_to = ["usb"]
password_file = "{root}/password"
""")
    primary = root / "repos" / "web01"
    data = root / "data"
    data.mkdir()
    for index in range(0, size_mb, 64):
        (data / f"part-{index:05d}.bin").write_bytes(os.urandom(min(64, size_mb - index) << 20))
    env = {**os.environ, "RESTIC_REPOSITORY": str(primary), "RESTIC_PASSWORD_FILE": str(root / "password")}
    run(["restic", "init"], env)
    run(["restic", "backup", "-q", str(data)], env)
    shutil.rmtree(data)
    triplicate = [sys.executable, "-m", "triplicate", "-c", str(config)]
    run([*triplicate, "sync", "web01"])
    size = folder_bytes(root / "usb" / "web01")
    files = sum(1 for path in (root / "usb" / "web01").rglob("*") if path.is_file())
    rclone_target = root / "rclone-copy"
    times: dict[str, list[float]] = {"triplicate recover": [], "rclone copy": []}
    for _ in range(rounds):
        shutil.rmtree(primary, ignore_errors=True)
        run(["sync"])
        times["triplicate recover"].append(timed([*triplicate, "recover", "web01", "--from", "usb"]))
        shutil.rmtree(rclone_target, ignore_errors=True)
        run(["sync"])
        config_argument = [] if "--config" in rclone_source else ["--config", "/dev/null"]
        times["rclone copy"].append(timed(["rclone", "copy", *config_argument, *rclone_source, str(rclone_target)]))
    check = run(["restic", "check", "--read-data"], env)
    assert "no errors were found" in check.stdout, check.stdout
    drill = json.loads(run([*triplicate, "recover", "web01", "--drill", "--json"]).stdout)
    median = {name: statistics.median(values) for name, values in times.items()}
    mb = size / 1e6
    print(f"Location: {kind}. Repository: {mb:.0f} MB in {files} files (random data), {rounds} interleaved "
          "rounds, medians.\n")
    print("| tool | seconds | MB/s | all rounds (s) |")
    print("|---|---:|---:|---|")
    for name, seconds in median.items():
        print(f"| {name} | {seconds:.2f} | {mb / seconds:.0f} | {', '.join(f'{value:.2f}' for value in times[name])} |")
    ratio = median["rclone copy"] / median["triplicate recover"]
    print(f"\nThroughput of `triplicate recover` / `rclone copy`: **{ratio:.2f}x** "
          "(above 1: triplicate is faster).\n")
    print(f"Drill (`triplicate recover web01 --drill`): rebuild {drill['recovery_seconds']:.2f} s "
          f"(the recorded recovery time), `restic check` {drill['check_seconds']:.2f} s, "
          f"restic check {drill['restic_check']}.")


if __name__ == "__main__":
    main()
