#!/usr/bin/env python3
"""Benchmark `triplicate sync` to each remote kind against `rclone sync` to the same target.

Not a test. Builds one restic repository of about --size-mb with the real restic,
starts the same loopback servers as the tests (OpenSSH's sshd; moto's S3 emulator,
in memory; `rclone serve restic`), and times side by side in one run, with
hyperfine, a full copy (target emptied before each run) and a no-change run:

- sftp:   triplicate's SFTP location      vs `rclone sync` to an rclone sftp remote, same sshd
- s3:     triplicate's S3 location        vs `rclone sync` to an rclone s3 remote, same emulator
- rest:   triplicate to `rclone serve restic` vs `rclone sync` to `rclone serve webdav` of the
          same disk (rclone has no client for restic's REST protocol: WebDAV is its nearest
          HTTP equivalent, served by the same program with the same htpasswd)
- rclone: triplicate through `rclone serve restic` on a local remote vs `rclone sync` to it
- sftp (no hash check): rclone sync to sftp with --sftp-disable-hashcheck, for reference:
  by default rclone runs md5sum on the server after each upload.

Prints a Markdown report: ratios (rclone's time / triplicate's: above 1 is triplicate
faster) with the medians behind them.

    .venv/bin/python bench/bench_remote.py --size-mb 512 --runs 3 > bench/out/remote.md

Needs: restic, rclone, hyperfine, openssh-server (Debian packages); moto[server] (the test extra).
"""

from __future__ import annotations

import argparse
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "bench")]

from bench_sync import hyperfine  # noqa: E402 - after the path is set

from tests.support.remote import (  # noqa: E402
    LOOPBACK,
    rclone_location_toml,
    start_moto,
    start_rest_server,
    start_sshd,
    stop,
    wait_for_log,
)

PASSWORD = "benchmark"


def make_repository(work: Path, megabytes: int) -> Path:
    data = work / "data"
    data.mkdir()
    for index in range(0, megabytes, 64):
        (data / f"file-{index:05d}.bin").write_bytes(os.urandom(min(64, megabytes - index) << 20))
    repo = work / "repos" / "web01"
    env = {**os.environ, "RESTIC_REPOSITORY": str(repo), "RESTIC_PASSWORD_FILE": str(work / "password")}
    subprocess.run(["restic", "init", "-q"], env=env, check=True)
    subprocess.run(["restic", "backup", "-q", str(data)], env=env, check=True)
    shutil.rmtree(data)
    return repo


def start_webdav(work: Path, root: Path, htpasswd: Path) -> tuple[subprocess.Popen[bytes], str]:
    log = work / "webdav.log"
    process = subprocess.Popen(["rclone", "serve", "webdav", "--addr", f"{LOOPBACK}:0", "--htpasswd", str(htpasswd),
                                str(root)], stdout=log.open("wb"), stderr=subprocess.STDOUT)
    url = wait_for_log(r"WebDav Server started on (http://[\d.:]+/)", process, log).group(1)
    return process, url


def obscure(secret: str) -> str:
    return subprocess.run(["rclone", "obscure", "-"], input=secret.encode(), capture_output=True,
                          check=True).stdout.decode().strip()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("--size-mb", type=int, default=512)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--kinds", default="sftp,s3,rest,rclone", help="comma-separated subset to run")
    arguments = parser.parse_args()
    work = Path(arguments.workdir or tempfile.mkdtemp(prefix="triplicate-bench-remote-"))
    work.mkdir(parents=True, exist_ok=True)
    (work / "password").write_text(PASSWORD)
    triplicate = shutil.which("triplicate") or str(Path(sys.executable).parent / "triplicate")
    targets = work / "targets"
    for name in ("sftp-t", "sftp-r", "sftp-r2", "rest-root", "webdav-root", "rclone-t", "rclone-r"):
        (targets / name).mkdir(parents=True)
    repo = make_repository(work, arguments.size_mb)
    size = sum(path.stat().st_size for path in repo.rglob("*") if path.is_file())
    files = sum(1 for path in repo.rglob("*") if path.is_file())

    ssh = start_sshd(work / "sshd")
    s3 = start_moto(work / "moto")
    # No object cache: the target is emptied on disk between runs.
    rest = start_rest_server(work / "rest", root=targets / "rest-root", extra_args=("--cache-objects=false",))
    webdav, webdav_url = start_webdav(work, targets / "webdav-root", work / "rest" / "htpasswd")
    try:
        s3.create_bucket("bench-t")
        s3.create_bucket("bench-r")
        rclone_config = work / "rclone.conf"
        rclone_config.write_text(f"""\
[sftp]
type = sftp
host = {LOOPBACK}
port = {ssh.port}
user = {ssh.user}
key_file = {ssh.identity_file}
known_hosts_file = {ssh.known_hosts_file}

[s3]
type = s3
provider = Other
endpoint = {s3.endpoint}
access_key_id = {s3.access_key}
secret_access_key = {s3.secret_key}

[webdav]
type = webdav
vendor = other
url = {webdav_url}
user = {rest.username}
pass = {obscure(rest.password_file.read_text().strip())}

[far]
type = local
""")
        # rclone's S3 client fails while this machine's AWS_CA_BUNDLE is set (restic-facts.md);
        # every endpoint here is plain HTTP on loopback.
        os.environ.pop("AWS_CA_BUNDLE", None)
        os.environ["RCLONE_CONFIG"] = str(rclone_config)
        config = work / "triplicate.toml"
        config.write_text(f"""\
[server]
state_dir = "{work / 'state'}"
repos_dir = "{work / 'repos'}"

{ssh.location_toml("sftp", targets / "sftp-t")}
{s3.location_toml("s3", "bench-t")}
{rest.location_toml("rest")}
{rclone_location_toml("rclone", f"far:{targets / 'rclone-t'}", rclone_config)}
[clients.web01]
replicate_to = ["sftp", "s3", "rest", "rclone"]
password_file = "{work / 'password'}"
""")
        sync = f"{shlex.quote(triplicate)} -c {shlex.quote(str(config))} sync web01 --to"
        source = shlex.quote(str(repo))
        cases = {  # kind: (triplicate, its reset, rclone sync, its reset)
            "sftp": (f"{sync} sftp", f"rm -rf {targets / 'sftp-t' / 'web01'}",
                     f"rclone sync {source} sftp:{targets / 'sftp-r' / 'web01'}",
                     f"rm -rf {targets / 'sftp-r' / 'web01'}"),
            "s3": (f"{sync} s3", "rclone delete s3:bench-t", f"rclone sync {source} s3:bench-r/web01",
                   "rclone delete s3:bench-r"),
            # Emptied through the WebDAV server itself: it caches its folder listings.
            "rest": (f"{sync} rest", f"rm -rf {targets / 'rest-root' / 'web01'}", f"rclone sync {source} webdav:web01",
                     "rclone purge webdav:web01 || true"),
            "rclone": (f"{sync} rclone", f"rm -rf {targets / 'rclone-t' / 'web01'}",
                       f"rclone sync {source} far:{targets / 'rclone-r' / 'web01'}",
                       f"rm -rf {targets / 'rclone-r' / 'web01'}"),
        }
        results: dict[str, dict[str, float]] = {}
        for kind, (ours, our_reset, theirs, their_reset) in cases.items():
            if kind not in arguments.kinds.split(","):
                continue
            commands = {f"triplicate {kind}": ours, f"rclone {kind}": theirs}
            if kind == "sftp":
                commands["rclone sftp --sftp-disable-hashcheck"] = (
                    f"rclone sync --sftp-disable-hashcheck {source} sftp:{targets / 'sftp-r2' / 'web01'}")
            resets = {f"triplicate {kind}": our_reset, f"rclone {kind}": their_reset,
                      "rclone sftp --sftp-disable-hashcheck": f"rm -rf {targets / 'sftp-r2' / 'web01'}"}
            full = hyperfine(commands, arguments.runs, {name: resets[name] for name in commands}, work)
            unchanged = hyperfine(commands, arguments.runs, None, work, warmup=1)
            results[kind] = {**{f"full {name}": value for name, value in full.items()},
                             **{f"none {name}": value for name, value in unchanged.items()},
                             "in-process": in_process_no_change(config, kind, arguments.runs * 2)}
    finally:
        for process in (ssh.process, s3.process, rest.process, webdav):
            stop(process)
    report(results, size, files, arguments)


def in_process_no_change(config: Path, kind: str, runs: int) -> float:
    """Median seconds of a no-change sync_client call: what the daemon pays per run (no interpreter start)."""
    import statistics
    import time

    from triplicate.actions.sync import sync_client
    from triplicate.config.load import load_config
    from triplicate.storage.rclone_server import keep_servers

    settings = load_config(config)
    times = []
    with keep_servers():  # as the daemon does: its rclone runs between runs
        sync_client(settings, "web01", [kind])
        for _ in range(runs):
            started = time.perf_counter()
            report = sync_client(settings, "web01", [kind])
            times.append(time.perf_counter() - started)
            assert report.ok and report.locations[kind].files_copied == 0, report.to_json()
    return statistics.median(times)


def report(results: dict[str, dict[str, float]], size: int, files: int, arguments: argparse.Namespace) -> None:
    megabytes = size / 1e6
    print(f"Repository: {megabytes:.0f} MB in {files} files (restic 0.14, one backup of random data); "
          f"{arguments.runs} runs each, medians; ratio = rclone's time / triplicate's (above 1: triplicate faster).\n")
    print("| kind | triplicate full s (MB/s) | rclone sync full s (MB/s) | full ratio "
          "| triplicate no-change s (CLI / daemon) | rclone no-change s | no-change ratio (CLI / daemon) |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for kind, values in results.items():
        rows = [(kind, f"rclone {kind}")]
        if f"full rclone {kind} --sftp-disable-hashcheck" in values:
            rows.append((f"{kind}, rclone --sftp-disable-hashcheck", f"rclone {kind} --sftp-disable-hashcheck"))
        ours, ours_none = values[f"full triplicate {kind}"], values[f"none triplicate {kind}"]
        daemon = values["in-process"]
        for label, theirs_name in rows:
            theirs, theirs_none = values[f"full {theirs_name}"], values[f"none {theirs_name}"]
            print(f"| {label} | {ours:.2f} ({megabytes / ours:.0f}) | {theirs:.2f} ({megabytes / theirs:.0f}) "
                  f"| {theirs / ours:.2f} | {ours_none:.2f} / {daemon:.2f} | {theirs_none:.2f} "
                  f"| {theirs_none / ours_none:.2f} / {theirs_none / daemon:.2f} |")


if __name__ == "__main__":
    main()
