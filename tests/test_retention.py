"""``triplicate retention``: restic's policy, judged by arrival time, with guards, against real restic."""

from __future__ import annotations

import json
import subprocess
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import ClassVar

import pytest

from tests.support.repository import Server, restic_env
from triplicate.config.load import load_config
from triplicate.state.db import PRIMARY
from triplicate.state.replication import ReplicationState

CLIENT = """
[clients.db01]
password_file = "{root}/password"
[clients.db01.retention]
{policy}
"""


@pytest.fixture(autouse=True)
def utc(monkeypatch: pytest.MonkeyPatch) -> None:
    """Day and hour boundaries in one zone for restic and for triplicate."""
    monkeypatch.setenv("TZ", "UTC")
    time.tzset()


def add_client(server: Server, policy: str) -> Path:
    server.write_config(server.config_path.read_text().replace("{", "{{").replace("}", "}}")
                        + CLIENT.replace("{policy}", policy))
    repo = server.primary("db01")
    subprocess.run(["restic", "init"], env=restic_env(repo, server.password_file), check=True, capture_output=True)
    return repo


def backup_at(server: Server, repo: Path, data: Path, own_time: datetime) -> str:
    """A backup whose snapshot carries ``own_time`` (what a client can forge); returns its ID."""
    data.mkdir(exist_ok=True)
    (data / "file").write_text(own_time.isoformat())
    server.restic(repo, "backup", "-q", "--time", own_time.strftime("%Y-%m-%d %H:%M:%S"), str(data))
    snapshots = json.loads(server.restic(repo, "snapshots", "--json").stdout)
    return max(snapshots, key=lambda snapshot: snapshot["time"] if snapshot["time"] == _restic_time(own_time)
               else "")["id"]


def _restic_time(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def arrive(server: Server, snapshot_ids: list[str], at: datetime) -> None:
    """Record in the state database that these snapshots were on the primary at ``at``."""
    state = ReplicationState(server.root / "state")
    try:
        state.record_snapshots("db01", PRIMARY, set(snapshot_ids), at.timestamp())
    finally:
        state.close()


def make_history(server: Server, repo: Path, tmp_path: Path, times: list[datetime]) -> list[str]:
    """Snapshots whose own times are also their arrival times, oldest first."""
    ids: list[str] = []
    for moment in times:
        ids.append(backup_at(server, repo, tmp_path / "data", moment))
        arrive(server, ids, moment)
    return ids


NOW = datetime.now(UTC).replace(microsecond=0)
HISTORY = [NOW - timedelta(hours=hours) for hours in (24 * 40, 24 * 9, 24 * 8, 50, 49, 26, 25, 3, 2, 1)]
POLICIES = {
    "last": ("keep_last = 3", ["--keep-last", "3"]),
    "daily-weekly": ("keep_daily = 3\nkeep_weekly = 2", ["--keep-daily", "3", "--keep-weekly", "2"]),
    "hourly-monthly": ("keep_hourly = 2\nkeep_monthly = 2", ["--keep-hourly", "2", "--keep-monthly", "2"]),
    "within": ('keep_within = "2d"', ["--keep-within", "2d"]),
}


def test_policies_keep_exactly_what_restic_forget_keeps(server: Server, tmp_path: Path) -> None:
    repo = add_client(server, "keep_last = 1\nmax_remove_percent = 100")
    make_history(server, repo, tmp_path, HISTORY)
    for name, (policy, restic_flags) in POLICIES.items():
        server.write_config(server.config_path.read_text().split("[clients.db01.retention]")[0]
                            + f"[clients.db01.retention]\n{policy}\nmax_remove_percent = 100\n")
        ours = server.cli("retention", "db01", "--dry-run", "--json")
        assert ours.code == 0, (name, ours.err)
        kept = {verdict["id"] for verdict in ours.json()["kept"]}
        forget = json.loads(server.restic(repo, "forget", "--dry-run", "--json", *restic_flags).stdout)
        assert kept == {snapshot["id"] for group in forget for snapshot in group["keep"]}, name
        assert len(ours.json()["removed"]) == len(HISTORY) - len(kept)
    assert len(server.snapshot_ids(repo)) == len(HISTORY), "dry runs removed nothing"


def test_forged_times_are_judged_by_arrival(server: Server, tmp_path: Path) -> None:
    repo = add_client(server, "keep_last = 2\nmax_remove_percent = 100\nprune = true")
    data = tmp_path / "data"
    old = backup_at(server, repo, data, NOW - timedelta(days=10))
    arrive(server, [old], NOW - timedelta(days=10))
    middle = backup_at(server, repo, data, NOW - timedelta(days=5))
    arrive(server, [old, middle], NOW - timedelta(days=5))
    forged_future = backup_at(server, repo, data, NOW + timedelta(days=365))
    arrive(server, [old, middle, forged_future], NOW - timedelta(days=4))
    forged_past = backup_at(server, repo, data, NOW - timedelta(days=365))
    arrive(server, [old, middle, forged_future, forged_past], NOW - timedelta(days=1))
    newest = backup_at(server, repo, data, NOW)

    result = server.cli("retention", "db01", "--json")
    assert result.code == 0, result.err
    report = result.json()
    assert {verdict["id"] for verdict in report["kept"]} == {newest, forged_past}
    assert {verdict["id"] for verdict in report["removed"]} == {old, middle, forged_future}
    sources = {verdict["id"]: verdict["time_source"] for verdict in report["kept"] + report["removed"]}
    assert sources.pop(old).startswith("snapshot (predates")  # there when triplicate first looked
    assert set(sources.values()) == {"arrival"}
    assert server.snapshot_ids(repo) == sorted([newest, forged_past])
    assert report["pruned"] is True and report["reclaimed_bytes"] >= 0
    check = server.check_read_data(repo)
    assert check.returncode == 0, check.stderr


def test_snapshots_that_predate_the_database_fall_back_to_their_own_time(server: Server, tmp_path: Path) -> None:
    repo = add_client(server, "keep_last = 1\nmax_remove_percent = 100")
    first = backup_at(server, repo, tmp_path / "data", NOW - timedelta(days=3))
    second = backup_at(server, repo, tmp_path / "data", NOW - timedelta(days=2))
    report = server.cli("retention", "db01", "--dry-run", "--json").json()
    assert [verdict["id"] for verdict in report["kept"]] == [second]
    assert [verdict["id"] for verdict in report["removed"]] == [first]
    assert report["removed"][0]["time_source"].startswith("snapshot (predates")


def test_a_first_backup_made_while_triplicate_watched_is_judged_by_arrival(server: Server, tmp_path: Path) -> None:
    repo = add_client(server, "keep_last = 1\nmax_remove_percent = 100")
    arrive(server, [], NOW - timedelta(days=30))  # the daemon listed the empty repository
    honest = backup_at(server, repo, tmp_path / "data", NOW - timedelta(hours=12))
    arrive(server, [honest], NOW - timedelta(hours=12))
    forged = backup_at(server, repo, tmp_path / "data", NOW - timedelta(days=400))  # arrived an hour ago
    arrive(server, [honest, forged], NOW - timedelta(hours=1))
    report = server.cli("retention", "db01", "--dry-run", "--json").json()
    assert [verdict["id"] for verdict in report["kept"]] == [forged], "the newest arrival, whatever its time says"
    assert {verdict["time_source"] for verdict in report["kept"] + report["removed"]} == {"arrival"}


def test_the_guard_refuses_a_mass_removal_unless_forced(server: Server, tmp_path: Path) -> None:
    repo = add_client(server, "keep_last = 1")
    ids = make_history(server, repo, tmp_path, HISTORY[-4:])
    refused = server.cli("retention", "db01")
    assert refused.code == 1 and "refusing to remove 3 of 4 snapshots" in refused.out
    assert server.snapshot_ids(repo) == sorted(ids)
    forced = server.cli("retention", "db01", "--force", "--json")
    assert forced.code == 0, forced.err
    assert server.snapshot_ids(repo) == [ids[-1]]


def test_without_a_key_or_a_policy(server: Server) -> None:
    no_policy = server.cli("retention", "web01")
    assert no_policy.code == 2 and "no retention policy" in no_policy.err
    server.write_config(server.config_path.read_text().replace(f'password_file = "{server.password_file}"', "")
                        + "[clients.web01.retention]\nkeep_last = 1\n")
    no_key = server.cli("retention", "web01")
    assert no_key.code == 3 and "no key" in no_key.err


# --- replicas: append-only by default, deletions propagated only when asked -------------------

PROPAGATING = 'path = "{root}/nas"\npropagate_deletes = "7d"'


def age_absences(server: Server, days: float) -> None:
    """Pretend the primary has lacked the replicas' extra files for ``days`` longer."""
    import sqlite3

    with sqlite3.connect(server.root / "state" / "state.db") as connection:
        connection.execute("UPDATE absent_files SET absent_since = absent_since - ?", (days * 86400,))


def expire_all_but_newest(server: Server, tmp_path: Path) -> tuple[list[str], str]:
    """web01 gets two more snapshots, everything is replicated, then the older two are forgotten and pruned."""
    from tests.support.repository import write_files

    write_files(tmp_path / "more", "two", count=2, size=1 << 20)
    server.backup(tmp_path / "more")
    (tmp_path / "more" / "two-0.bin").unlink()
    server.backup(tmp_path / "more")
    assert server.cli("sync", "web01").code == 0
    ids = server.snapshot_ids(server.primary())
    newest = json.loads(server.restic(server.primary(), "snapshots", "--latest", "1", "--json").stdout)[0]["id"]
    server.restic(server.primary(), "forget", *[i for i in ids if i != newest])
    server.restic(server.primary(), "prune")
    return ids, newest


def test_replicas_stay_append_only_unless_asked(server: Server, tmp_path: Path) -> None:
    server.write_config(server.config_path.read_text().replace(f'path = "{server.root}/nas"',
                                                               PROPAGATING.format(root=server.root)))
    ids, newest = expire_all_but_newest(server, tmp_path)
    before = {location: set(p.relative_to(server.replica(location)).as_posix()
                            for p in server.replica(location).rglob("*") if p.is_file())
              for location in ("usb", "nas")}

    report = server.cli("sync", "web01", "--json").json()  # just gone from the primary: not yet due
    assert report["locations"]["nas"]["files_removed"] == 0
    age_absences(server, 8)
    report = server.cli("sync", "web01", "--json").json()
    assert report["locations"]["usb"]["files_removed"] == 0
    assert report["locations"]["nas"]["files_removed"] > 0
    assert server.snapshot_ids(server.replica("usb")) == ids, "usb is append-only: it keeps everything"
    assert server.snapshot_ids(server.replica("nas")) == [newest]
    after_nas = {p.relative_to(server.replica("nas")).as_posix() for p in server.replica("nas").rglob("*")
                 if p.is_file()}
    primary = {p.relative_to(server.primary()).as_posix() for p in server.primary().rglob("*")
               if p.is_file() and not p.relative_to(server.primary()).as_posix().startswith("locks")}
    assert after_nas == primary, "nas now mirrors the primary exactly"
    assert before["usb"] <= {p.relative_to(server.replica("usb")).as_posix()
                             for p in server.replica("usb").rglob("*") if p.is_file()}
    for location in ("usb", "nas"):
        check = server.check_read_data(server.replica(location))
        assert check.returncode == 0, (location, check.stderr)


def test_no_propagated_deletion_while_the_primary_is_locked(server: Server, tmp_path: Path) -> None:
    import signal

    server.write_config(server.config_path.read_text().replace(f'path = "{server.root}/nas"',
                                                               PROPAGATING.format(root=server.root)))
    ids, newest = expire_all_but_newest(server, tmp_path)
    server.cli("sync", "web01")
    age_absences(server, 8)
    # A prune killed as soon as it holds its exclusive lock: the lock stays behind.
    server.restic(server.primary(), "forget", newest)
    prune = subprocess.Popen(["restic", "--no-cache", "prune"], env=restic_env(server.primary(), server.password_file),
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    locks = server.primary() / "locks"
    deadline = time.monotonic() + 30
    def held() -> bool:  # a lock under its final name (not restic's -tmp- file being written)
        return locks.is_dir() and any(len(path.name) == 64 for path in locks.iterdir())

    while not held() and time.monotonic() < deadline:
        time.sleep(0.002)
    prune.send_signal(signal.SIGKILL)
    prune.wait()
    assert held(), "the prune's lock should be left behind"
    report = server.cli("sync", "web01", "--json").json()
    assert report["locations"]["nas"]["files_removed"] == 0
    assert "locked" in report["locations"]["nas"]["removals_deferred"]
    assert server.check_read_data(server.replica("nas")).returncode == 0
    server.restic(server.primary(), "unlock", "--remove-all")
    server.restic(server.primary(), "prune")
    report = server.cli("sync", "web01", "--json").json()
    assert report["locations"]["nas"]["ok"] and report["locations"]["nas"]["files_removed"] > 0
    assert server.snapshot_ids(server.replica("nas")) == [newest], "forgotten just now: not due for 7 days"
    assert server.check_read_data(server.replica("nas")).returncode == 0
    assert server.snapshot_ids(server.replica("usb")) == ids


def test_deletions_follow_restics_order(server: Server, tmp_path: Path) -> None:
    from triplicate.engine.mirror import MirrorOptions, list_source, mirror
    from triplicate.storage import FileType, Handle
    from triplicate.storage.local import LocalBackend

    class Immediate:
        delay = 0.0

        def absent_since(self, file_type: FileType, extra: set[str], now: float) -> dict[str, float]:
            return {name: now for name in extra}

        def forget(self, file_type: FileType, names: list[str]) -> None:
            pass

    class Recording(LocalBackend):
        removed: ClassVar[list[str]] = []

        def remove(self, handle: Handle) -> None:
            self.removed.append(handle.type.value)
            super().remove(handle)

    _ids, _newest = expire_all_but_newest(server, tmp_path)
    source = LocalBackend(server.primary())
    replica = Recording(server.replica("nas"))
    result = mirror(source, replica, list_source(source), MirrorOptions(deletions=Immediate()))
    assert result.ok and result.files_removed == len(replica.removed) > 0
    rank = {"snapshots": 0, "index": 1, "data": 2}
    assert replica.removed == sorted(replica.removed, key=rank.__getitem__)
    assert set(replica.removed) == {"snapshots", "index", "data"}


def test_a_retention_interrupted_by_the_daemons_stop_is_not_recorded(server: Server) -> None:
    import threading

    from triplicate import execute
    from triplicate.actions.retention import run_retention
    from triplicate.state.retention import RetentionState

    server.write_config(server.config_path.read_text() + "\n[clients.web01.retention]\nkeep_last = 1\n")
    stop = threading.Event()
    stop.set()  # the daemon is stopping: restic is not started, and that is no failure to record
    with execute.stoppable(stop), pytest.raises(execute.Interrupted):
        run_retention(load_config(server.config_path), "web01")
    with RetentionState.opened(server.root / "state") as state:
        assert state.connection.execute("SELECT COUNT(*) FROM retention_runs").fetchone()[0] == 0
