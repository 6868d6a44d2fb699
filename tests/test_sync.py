"""``triplicate sync`` against repositories made by the real restic."""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.repository import Server, age_file, file_hash_matches_name, flip_byte, repository_files, write_files
from triplicate.engine.mirror import MirrorOptions, list_source, mirror
from triplicate.storage import FileType, Handle
from triplicate.storage.backend import FileInfo
from triplicate.storage.local import LocalBackend


def test_full_sync_makes_valid_replicas_with_the_same_snapshots(server: Server) -> None:
    result = server.cli("sync", "web01", "--json")
    assert result.code == 0, result.err
    report = result.json()
    assert report["client"] == "web01" and report["ok"] is True
    expected = server.snapshot_ids(server.primary())
    for location in ("usb", "nas"):
        outcome = report["locations"][location]
        assert outcome["ok"] and outcome["error"] is None and outcome["corrupt_files"] == []
        assert outcome["files_copied"] == len(repository_files(server.primary()))
        assert server.snapshot_ids(server.replica(location)) == expected
        check = server.check_read_data(server.replica(location))
        assert check.returncode == 0, check.stderr
        assert repository_files(server.replica(location)) == repository_files(server.primary())


def test_incremental_sync_copies_only_new_files_and_a_rerun_copies_nothing(server: Server, tmp_path: Path) -> None:
    assert server.cli("sync", "web01").code == 0
    before = repository_files(server.primary())
    write_files(tmp_path / "more", "two", count=2, size=1 << 20)
    server.backup(tmp_path / "more")
    new_files = set(repository_files(server.primary())) - set(before)
    report = server.cli("sync", "web01", "--json").json()
    for location in ("usb", "nas"):
        assert report["locations"][location]["files_copied"] == len(new_files)
        assert server.snapshot_ids(server.replica(location)) == server.snapshot_ids(server.primary())
    again = server.cli("sync", "web01", "--json").json()
    assert all(outcome["files_copied"] == 0 for outcome in again["locations"].values())


def test_to_selects_locations(server: Server) -> None:
    report = server.cli("sync", "web01", "--to", "nas", "--json").json()
    assert list(report["locations"]) == ["nas"]
    assert not server.replica("usb").exists()


def test_corrupt_source_pack_is_not_propagated_and_new_snapshots_are_held_back(
    server: Server, tmp_path: Path
) -> None:
    assert server.cli("sync", "web01").code == 0
    write_files(tmp_path / "more", "two", count=2, size=1 << 20)
    server.backup(tmp_path / "more")
    new_packs = sorted(set(repository_files(server.primary())) - set(repository_files(server.replica("usb"))))
    pack = next(server.primary() / path for path in new_packs if path.startswith("data/"))
    flip_byte(pack)
    age_file(pack)

    result = server.cli("sync", "web01", "--json")
    assert result.code == 1
    outcome = result.json()["locations"]["usb"]
    relative = pack.relative_to(server.primary()).as_posix()
    assert outcome["corrupt_files"] == [relative]
    assert not (server.replica("usb") / relative).exists()
    assert any(path.startswith("snapshots/") for path in outcome["held_back"])
    assert any(path.startswith("index/") for path in outcome["held_back"])
    # The replica still holds exactly the first snapshot and is a valid repository.
    assert len(server.snapshot_ids(server.replica("usb"))) == 1
    check = server.check_read_data(server.replica("usb"))
    assert check.returncode == 0, check.stderr
    assert "corrupt" in server.cli("sync", "web01").out


def test_a_pack_still_being_written_holds_back_what_may_need_it(server: Server) -> None:
    # A pack whose content does not (yet) match its name, modified just now: rclone's
    # REST server writes in place, or a recent upload went wrong.
    pack = next(path for path in (server.primary() / "data").rglob("*") if path.is_file())
    content = pack.read_bytes()
    pack.write_bytes(content[: len(content) // 2])
    result = server.cli("sync", "web01", "--json")
    assert result.code == 1, "incomplete: exit 1 until everything is copied"
    outcome = result.json()["locations"]["usb"]
    assert outcome["ok"] is True and outcome["complete"] is False and outcome["corrupt_files"] == []
    assert outcome["files_skipped_in_progress"] == 1
    assert any(path.startswith("index/") for path in outcome["held_back"])
    assert any(path.startswith("snapshots/") for path in outcome["held_back"])
    assert not (server.replica("usb") / pack.relative_to(server.primary())).exists()
    assert server.check_read_data(server.replica("usb")).returncode == 0, "the replica stays valid"

    pack.write_bytes(content)  # the upload completes
    again = server.cli("sync", "web01", "--json")
    assert again.code == 0 and again.json()["complete"] is True
    assert server.snapshot_ids(server.replica("usb")) == server.snapshot_ids(server.primary())
    assert server.check_read_data(server.replica("usb")).returncode == 0


class PruningSource(LocalBackend):
    """A primary on which `restic prune` runs between the index and the data listings."""

    def __init__(self, root: Path, server: Server) -> None:
        super().__init__(root)
        self.server = server
        self.pruned = False

    def list(self, file_type: FileType):  # type: ignore[no-untyped-def]
        if file_type is FileType.DATA and not self.pruned:
            self.pruned = True
            self.server.restic(self.root, "prune")
        return super().list(file_type)


def test_a_prune_during_the_sync_never_leaves_a_snapshot_without_its_index(server: Server, tmp_path: Path) -> None:
    write_files(tmp_path / "more", "two", count=2, size=1 << 20)
    server.backup(tmp_path / "more")
    (tmp_path / "more" / "two-0.bin").unlink()
    server.backup(tmp_path / "more")
    oldest = server.snapshot_ids(server.primary())
    server.restic(server.primary(), "forget", "--keep-last", "1")
    source = PruningSource(server.primary(), server)
    result = mirror(source, LocalBackend(server.replica("usb")), list_source(source), MirrorOptions())
    assert result.ok and not result.complete and result.files_vanished > 0
    assert any(path.startswith("snapshots/") for path in result.held_back)
    check = server.check_read_data(server.replica("usb"))
    assert check.returncode == 0, check.stderr
    assert set(server.snapshot_ids(server.replica("usb"))) <= set(oldest)
    again = server.cli("sync", "web01", "--to", "usb", "--json")
    assert again.code == 0, again.out
    assert server.snapshot_ids(server.replica("usb")) == server.snapshot_ids(server.primary())
    assert server.check_read_data(server.replica("usb")).returncode == 0


class SizedReplica(LocalBackend):
    """A local replica whose listing gives sizes, as every remote kind's does."""

    def list(self, file_type: FileType) -> Iterator[FileInfo]:
        return iter([FileInfo(info.name, info.size, info.mtime) for info in super().list(file_type)])


def test_a_replica_file_cut_short_is_copied_again_but_not_one_the_primary_pruned_since(server: Server) -> None:
    assert server.cli("sync", "web01", "--to", "usb").code == 0
    replica = server.replica("usb")
    packs = sorted((replica / "data").rglob("*/*"))
    short = packs[0]
    short.write_bytes(short.read_bytes()[:100])
    pruned = server.primary() / packs[1].relative_to(replica)
    listing = list_source(LocalBackend(server.primary()))
    pruned.unlink()  # gone from the primary after the listing, as a prune would do it
    result = mirror(LocalBackend(server.primary()), SizedReplica(replica), listing, MirrorOptions())
    assert result.ok and result.complete and result.files_vanished == 0, result
    assert result.files_copied == 1 and file_hash_matches_name(short)


def test_a_missing_location_folder_fails_alone_and_is_never_created(server: Server) -> None:
    (server.root / "usb").rmdir()
    result = server.cli("sync", "web01", "--json")
    assert result.code == 1
    report = result.json()
    assert report["locations"]["usb"]["ok"] is False
    assert "does not exist" in report["locations"]["usb"]["error"]
    assert not (server.root / "usb").exists()
    assert report["locations"]["nas"]["ok"] is True
    assert server.check_read_data(server.replica("nas")).returncode == 0


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores folder permissions")
def test_a_read_only_location_fails_alone_unprivileged(server: Server) -> None:
    (server.root / "usb").chmod(0o500)
    report = server.cli("sync", "web01", "--json").json()
    assert report["locations"]["usb"]["ok"] is False and report["locations"]["nas"]["ok"] is True


def test_a_full_or_unwritable_location_fails_alone(server: Server) -> None:
    # A file where the client's folder should be: every write there fails, as on a broken disk.
    (server.replica("usb")).write_text("not a folder")
    result = server.cli("sync", "web01", "--json")
    assert result.code == 1
    report = result.json()
    assert report["locations"]["usb"]["ok"] is False and report["locations"]["usb"]["error"]
    assert report["locations"]["nas"]["ok"] is True


def test_a_replica_of_another_repository_is_refused(server: Server, tmp_path: Path) -> None:
    other = server.replica("usb")
    subprocess.run(["restic", "init", "-r", str(other), "--password-file", str(server.password_file)],
                   check=True, capture_output=True)
    report = server.cli("sync", "web01", "--json").json()
    assert "different restic repository" in report["locations"]["usb"]["error"]
    assert report["locations"]["nas"]["ok"]


def test_sync_of_a_client_without_repository(server: Server) -> None:
    import shutil

    shutil.rmtree(server.primary())
    result = server.cli("sync", "web01")
    assert result.code == 1 and "no repository" in result.err and "Traceback" not in result.err


class RecordingBackend(LocalBackend):
    """A local backend that records the order of lists and saves."""

    def __init__(self, root: Path, log: list[str]) -> None:
        super().__init__(root)
        self.log = log

    def list(self, file_type: FileType):  # type: ignore[no-untyped-def]
        self.log.append(f"list {file_type.value}")
        return super().list(file_type)

    def save(self, handle: Handle, source: io.BufferedIOBase) -> int:  # type: ignore[override]
        self.log.append(f"save {handle.type.value}")
        return super().save(handle, source)


def test_order_lists_snapshots_first_and_writes_them_last(server: Server) -> None:
    source_log: list[str] = []
    replica_log: list[str] = []
    source = RecordingBackend(server.primary(), source_log)
    replica = RecordingBackend(server.replica("usb"), replica_log)
    result = mirror(source, replica, list_source(source), MirrorOptions(workers=4))
    assert result.ok
    assert source_log[:3] == ["list snapshots", "list index", "list data"]
    kinds = [entry.split()[1] for entry in replica_log if entry.startswith("save")]
    rank = {"config": 0, "keys": 1, "data": 2, "index": 3, "snapshots": 4}
    assert kinds == sorted(kinds, key=rank.__getitem__)
    assert kinds[0] == "config" and kinds[-1] == "snapshots"


def test_kill_9_in_the_middle_then_rerun_completes_a_valid_replica(server: Server, tmp_path: Path) -> None:
    write_files(tmp_path / "big", "big", count=12, size=16 << 20)
    server.backup(tmp_path / "big")
    server.write_config(server.config_path.read_text().replace(
        f'path = "{server.root}/usb"', f'path = "{server.root}/usb"\nworkers = 1'))
    process = subprocess.Popen(
        [sys.executable, "-m", "triplicate", "-c", str(server.config_path), "sync", "web01", "--to", "usb"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    data = server.replica("usb") / "data"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and process.poll() is None:
        if data.is_dir() and sum(1 for _ in data.rglob("*") if _.is_file()) >= 3:
            break
        time.sleep(0.005)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert process.returncode == -signal.SIGKILL, "the sync finished before it could be killed"
    assert not (server.replica("usb") / "snapshots").exists() or len(server.snapshot_ids(server.replica("usb"))) < 2
    for path in server.replica("usb").glob("*/**/*"):
        if path.is_file() and path.parent.name != ".triplicate-partial" and len(path.name) == 64:
            assert file_hash_matches_name(path), f"partial file under a final name: {path}"
    result = server.cli("sync", "web01", "--to", "usb", "--json")
    assert result.code == 0, result.out
    assert server.snapshot_ids(server.replica("usb")) == server.snapshot_ids(server.primary())
    assert server.check_read_data(server.replica("usb")).returncode == 0
    assert not any((server.replica("usb") / ".triplicate-partial").iterdir())


def test_an_interrupted_run_is_history_but_not_a_failure(server: Server) -> None:
    import threading

    from triplicate.actions.sync import sync_client
    from triplicate.config.load import load_config
    from triplicate.state.replication import ReplicationState

    config = load_config(server.config_path)
    stop = threading.Event()
    stop.set()  # asked to stop before the first file
    report = sync_client(config, "web01", ["usb"], options=MirrorOptions(stop=stop))
    assert report.locations["usb"].interrupted and not report.ok
    state = ReplicationState(server.root / "state")
    try:
        health = state.location_health("web01")["usb"]
        assert health["consecutive_failures"] == 0 and health["last_error"] == "interrupted"
        runs = state.connection.execute("SELECT ok, error FROM runs WHERE location='usb'").fetchall()
        assert [tuple(run) for run in runs] == [(0, "interrupted")]
    finally:
        state.close()


def test_a_replica_file_the_audit_found_corrupt_is_repaired_by_the_next_sync(server: Server) -> None:
    assert server.cli("sync", "web01").code == 0
    pack = next(path for path in (server.replica("usb") / "data").rglob("*") if path.is_file())
    flip_byte(pack)  # bit rot on the usb disk
    age_file(pack)
    audit = server.cli("audit", "web01", "--verify", "100", "--json")
    assert audit.code == 2, audit.out
    assert server.cli("sync", "web01", "--json").json()["locations"]["usb"]["files_repaired"] == 1
    assert file_hash_matches_name(pack)
    assert server.cli("sync", "web01", "--json").json()["locations"]["usb"]["files_copied"] == 0, "repaired once"
    age_file(pack)
    again = server.cli("audit", "web01", "--verify", "100", "--json")
    assert again.code == 0, again.out
    assert server.check_read_data(server.replica("usb")).returncode == 0


def test_a_location_that_must_be_a_mount_point_is_refused_when_not_mounted(server: Server) -> None:
    server.write_config(server.config_path.read_text().replace(
        f'path = "{server.root}/usb"', f'path = "{server.root}/usb"\nmount_point = true'))
    report = server.cli("sync", "web01", "--json").json()
    assert "not a mount point" in report["locations"]["usb"]["error"]
    assert not server.replica("usb").exists(), "nothing written onto the disk below the mount folder"
    assert report["locations"]["nas"]["ok"]
    audit = server.cli("audit", "web01", "--json").json()["clients"]["web01"]["locations"]["usb"]
    assert audit["status"] == "UNKNOWN" and "not a mount point" in audit["reasons"][0], "unreachable, not empty"
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", str(server.root / "usb")],
                             capture_output=True)
    if mounted.returncode != 0:
        pytest.skip("cannot mount a tmpfs here")
    try:
        again = server.cli("sync", "web01", "--json").json()
        assert again["locations"]["usb"]["ok"], again
        assert server.snapshot_ids(server.replica("usb")) == server.snapshot_ids(server.primary())
    finally:
        subprocess.run(["umount", str(server.root / "usb")], check=True)
