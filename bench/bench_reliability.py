"""Reliability of ``triplicate syncd``: for each fault, the time to the alarm and to convergence.

Each fault is made for real under a running daemon, with production-like
settings scaled down to fit a run (``poll_interval`` and ``in_progress_grace``
are flags), and notifications delivered to a loopback apprise ``json://``
receiver:

- emptied: ``rm -rf`` of a location's client folder. Alarm: the "lost N
  snapshots; refilling" notification. Converged: every snapshot back there.
- wrong-folder, dangling-symlink, future-mtime, junk-pack: a primary file that
  never settles (a pack moved to another ``data/`` sub-folder, replaced by a
  dangling symlink, damaged with a modification time a day ahead, or junk
  uploaded under a pack's name). Alarm: the "is failing" notification naming the
  file. Converged: after the operator moves the file aside (what ``triplicate
  quarantine`` does), every valid snapshot at every location and the
  "recovered" notification; timed from that fix.
- junk-snapshot: junk under a snapshot's name, then a valid backup. Alarm as
  above; converged: the valid backup at every location, timed from its landing.

The goals (docs/reliability.md): a lost replica refilled and reported within one
``poll_interval``; a non-converging file reported within ``in_progress_grace`` +
one ``poll_interval``. Before this change the daemon never did either.

Usage: .venv/bin/python bench/bench_reliability.py [--poll 10] [--grace 20] [--faults all|NAME,...]
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.bench_syncd import Daemon, make_server, restic  # noqa: E402 (after the path is set)
from tests.support.repository import snapshot_files  # noqa: E402
from tests.support.syncd import NotificationSink  # noqa: E402
from tests.support.wait import wait_until  # noqa: E402

PASSWORD_NAME = "password"


def setup(root: Path, poll: float, grace: float, sink: NotificationSink) -> Path:
    import tomlkit

    config = make_server(root, ["web01"], poll_interval=f"{poll:g}s", in_progress_grace=f"{grace:g}s",
                         retry_max_backoff="1h")
    (root / PASSWORD_NAME).write_text("benchmark password")
    document = tomlkit.parse(config.read_text())
    document["clients"]["web01"]["password_file"] = str(root / PASSWORD_NAME)  # type: ignore[index]
    document["notify"] = {"urls": [sink.url], "after_failures": 1}
    config.write_text(tomlkit.dumps(document))
    repo = root / "repos" / "web01"
    restic(repo, "init")
    for index in range(3):
        data = root / "data" / str(index)
        data.mkdir(parents=True)
        for number in range(3):
            (data / f"file-{number}").write_bytes(os.urandom(256 << 10))
        restic(repo, "backup", str(data))
    return config


def everywhere(root: Path, ignore: set[str] = frozenset()) -> bool:  # type: ignore[assignment]
    wanted = snapshot_files(root / "repos" / "web01") - ignore
    return bool(wanted) and all(wanted <= snapshot_files(root / location / "web01") for location in ("usb", "nas"))


def notified(sink: NotificationSink, start: int, predicate: Callable[[str], bool]) -> bool:
    return any(predicate(title) for title in sink.titles()[start:])


def first_times(alarm: Callable[[], bool], converged: Callable[[], bool], since: float,
                limit: float) -> tuple[float, float]:
    """Seconds from ``since`` until each condition first held (polled every 10 ms)."""
    times: dict[str, float] = {}

    def both() -> bool:
        for label, condition in (("alarm", alarm), ("converged", converged)):
            if label not in times and condition():
                times[label] = time.monotonic() - since
        return len(times) == 2

    wait_until(both, limit, "the alarm and convergence")
    return times["alarm"], times["converged"]


def run_fault(name: str, poll: float, grace: float) -> tuple[float, float]:
    """Make the fault ``name``; return (seconds to the alarm, seconds to convergence)."""
    sink = NotificationSink()
    root = Path(tempfile.mkdtemp(prefix=f"reliability-{name}-"))
    try:
        config = setup(root, poll, grace, sink)
        daemon = Daemon(config)
        try:
            return measure(name, root, poll, grace, sink)
        finally:
            if daemon.process.poll() is None:
                daemon.stop()
    finally:
        sink.close()
        if os.environ.get("KEEP"):
            print(f"kept {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)


def measure(name: str, root: Path, poll: float, grace: float, sink: NotificationSink) -> tuple[float, float]:
    """Make the fault under the running daemon; return (seconds to the alarm, to convergence)."""
    repo = root / "repos" / "web01"
    wait_until(lambda: everywhere(root), 60, "the catch-up")
    time.sleep(poll)  # settled: a rescan has listed the locations
    before = len(sink.titles())
    limit = 10 * (poll + grace)
    if name == "emptied":
        shutil.rmtree(root / "usb" / "web01")
        fault = time.monotonic()
        alarm, converged = first_times(lambda: notified(sink, before, lambda title: "usb lost" in title),
                                       lambda: everywhere(root), fault, limit)
    else:
        # A new backup lands first: the fault holds it back (or must not).
        data = root / "data" / "new"
        data.mkdir(parents=True)
        (data / "file").write_bytes(os.urandom(512 << 10))
        elsewhere = root / "elsewhere"
        shutil.copytree(repo, elsewhere)
        restic(elsewhere, "backup", str(data))
        new_packs = sorted({path.relative_to(elsewhere) for path in (elsewhere / "data").glob("*/*")}
                           - {path.relative_to(repo) for path in (repo / "data").glob("*/*")})
        bad: Path
        aside = root / "aside"
        aside.mkdir()
        junk_name = os.urandom(32).hex()
        if name == "junk-snapshot":
            bad = repo / "snapshots" / junk_name
            bad.write_bytes(os.urandom(4096))
        elif name == "junk-pack":
            bad = repo / "data" / junk_name[:2] / junk_name
            bad.parent.mkdir(exist_ok=True)
            bad.write_bytes(os.urandom(1 << 20))
        fault = time.monotonic()
        for relative in new_packs:
            (repo / relative).parent.mkdir(exist_ok=True)
            shutil.copy2(elsewhere / relative, repo / relative)
        moved = repo / new_packs[0]
        if name == "wrong-folder":
            wrong = repo / "data" / ("00" if moved.parent.name != "00" else "01")
            wrong.mkdir(exist_ok=True)
            bad = wrong / moved.name
            moved.rename(bad)
        elif name == "dangling-symlink":
            bad = moved
            moved.unlink()
            moved.symlink_to(root / "gone" / moved.name)
        elif name == "future-mtime":
            bad = moved
            with open(bad, "r+b") as file:
                file.seek(100)
                byte = file.read(1)
                file.seek(100)
                file.write(bytes([byte[0] ^ 0xFF]))
            later = time.time() + 86400
            os.utime(bad, (later, later))
        shutil.copytree(elsewhere / "index", repo / "index", dirs_exist_ok=True)
        shutil.copytree(elsewhere / "snapshots", repo / "snapshots", dirs_exist_ok=True)
        if name == "junk-snapshot":
            alarm, converged = first_times(
                lambda: notified(sink, before, lambda title: "is failing" in title),
                lambda: everywhere(root, {junk_name}), fault, limit)
        else:
            wait_until(lambda: notified(sink, before, lambda title: "is failing" in title), limit, "the alarm")
            alarm = time.monotonic() - fault
            # The operator moves the file aside (what `triplicate quarantine` does) and, for a
            # pack that was real, puts the good copy back in its place.
            fix = time.monotonic()
            bad.rename(aside / bad.name) if not bad.is_symlink() else bad.unlink()
            if name != "junk-pack":
                shutil.copy2(elsewhere / new_packs[0], repo / new_packs[0])
            wait_until(lambda: everywhere(root) and notified(sink, before, lambda t: "recovered" in t),
                       limit, "convergence after the fix")
            converged = time.monotonic() - fix
    return alarm, converged


FAULTS = ["emptied", "wrong-folder", "dangling-symlink", "future-mtime", "junk-pack", "junk-snapshot"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--poll", type=float, default=10.0, help="poll_interval, seconds")
    parser.add_argument("--grace", type=float, default=20.0, help="in_progress_grace, seconds")
    parser.add_argument("--faults", default="all")
    parser.add_argument("--repeat", type=int, default=1, help="runs per fault (the table shows the worst)")
    args = parser.parse_args()
    chosen = FAULTS if args.faults == "all" else args.faults.split(",")
    print(f"poll_interval {args.poll:g}s, in_progress_grace {args.grace:g}s")
    print("| fault | runs | alarm after (worst) | goal | converged after (worst) |\n|---|---|---|---|---|")
    for name in chosen:
        times = [run_fault(name, args.poll, args.grace) for _ in range(args.repeat)]
        goal = args.poll if name == "emptied" else args.grace + args.poll
        print(f"| {name} | {len(times)} | {max(alarm for alarm, _ in times):.1f} s | {goal:g} s | "
              f"{max(converged for _, converged in times):.1f} s |", flush=True)

if __name__ == "__main__":
    main()
