"""``triplicate restore-check`` against repositories made and read by the real restic."""

from __future__ import annotations

import dataclasses
import hashlib
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.support.processes import children_of, command_line, exists
from tests.support.repository import Server, repository_files, write_files
from triplicate.actions.restore_check import (
    TEMPORARY_PREFIX,
    LocationCheck,
    SnapshotFile,
    choose_files,
    compare_across_locations,
)
from triplicate.fsutil import private_folder
from triplicate.state.restore_check import RestoreCheckState

TEMPLATE_FILES = {f"one-{index}.bin" for index in range(3)}  # the template repository's snapshot: 3 x 1 MiB


def temporary_parent(server: Server) -> Path:
    return server.root / "state" / "tmp"


def leftovers(server: Server) -> list[Path]:
    parent = temporary_parent(server)
    return sorted(parent.iterdir()) if parent.exists() else []


def add_restore_check_settings(server: Server, text: str) -> None:
    server.config_path.write_text(server.config_path.read_text() + "\n[clients.web01.restore_check]\n" + text)


def test_a_healthy_client_passes_on_every_location_and_is_recorded(server: Server) -> None:
    assert server.cli("sync", "web01").code == 0
    stale = temporary_parent(server) / "restore-check-999999999-left-by-a-killed-run"  # no such process
    (stale / "tmp").mkdir(parents=True)
    replica_before = sorted(server.replica("usb").rglob("*"))

    result = server.cli("restore-check", "web01", "--json")

    assert result.code == 0, result.err
    report = result.json()
    snapshot = server.snapshot_ids(server.primary())[0]
    assert report["ok"] is True and report["snapshot"] == snapshot
    assert report["snapshot_files"] == 3 and report["snapshot_bytes"] == 3 << 20
    assert {Path(item["path"]).name for item in report["sample"]} == TEMPLATE_FILES
    assert list(report["locations"]) == ["@primary", "usb", "nas"]
    for outcome in report["locations"].values():
        assert outcome["ok"] is True and outcome["failures"] == [] and outcome["snapshot"] == snapshot
        assert outcome["files_checked"] == 3 and outcome["bytes_restored"] == 3 << 20
        assert outcome["seconds"] > 0 and outcome["throughput_bytes_per_second"] > 0
        assert outcome["estimated_full_restore_seconds"] > 0
    assert leftovers(server) == []
    assert sorted(server.replica("usb").rglob("*")) == replica_before, "reading a replica wrote to it"

    state = RestoreCheckState(server.root / "state")
    try:
        records = state.last_restore_checks("web01")
        assert set(records) == {"@primary", "usb", "nas"}
        assert all(record.ok and record.snapshot == snapshot and record.files_checked == 3
                   for record in records.values())
        assert set(state.last_successes()) == {("web01", "@primary"), ("web01", "usb"), ("web01", "nas")}
        passed_at = records["usb"].time
        failed = dataclasses.replace(records["usb"], ok=False, time=passed_at + 1,
                                     failures=[{"path": None, "reason": "x"}])
        assert state.record(failed) is True  # the previous check passed: this is a new failure
        assert state.last_restore_checks("web01")["usb"].failures == [{"path": None, "reason": "x"}]
        assert state.last_successes()[("web01", "usb")] == passed_at
    finally:
        state.close()

    people = server.cli("restore-check", "web01", "--location", "usb", "--files", "1")
    assert people.code == 0, people.err
    assert "usb" in people.out and "ok" in people.out and "estimate" in people.out


@pytest.mark.slow  # restic 0.14 retries a missing pack for about 45 s before it gives up
def test_a_pack_deleted_from_one_replica_fails_that_location_only_naming_the_file(
    server: Server, tmp_path: Path
) -> None:
    before = set(repository_files(server.primary()))
    write_files(tmp_path / "big", "big", count=1, size=6 << 20)  # its own packs, nothing shared
    server.backup(tmp_path / "big")
    assert server.cli("sync", "web01").code == 0
    added = {path: size for path, size in repository_files(server.primary()).items()
             if path not in before and path.startswith("data/")}
    data_pack = max(added, key=added.__getitem__)  # the big file's data; the small one holds trees
    (server.replica("usb") / data_pack).unlink()

    result = server.cli("restore-check", "web01", "--json")

    assert result.code == 1, result.err
    report = result.json()
    big = str(tmp_path / "big" / "big-0.bin")
    assert [item["path"] for item in report["sample"]] == [big]  # the newest snapshot holds only it
    assert report["locations"]["@primary"]["ok"] and report["locations"]["nas"]["ok"]
    usb = report["locations"]["usb"]
    assert usb["ok"] is False and usb["files_checked"] == 1 and usb["bytes_restored"] == 0
    assert [failure["path"] for failure in usb["failures"]] == [big]
    assert "could not restore" in usb["failures"][0]["reason"]
    assert leftovers(server) == []


def test_canaries_missing_too_small_or_changed_fail_with_their_paths(
    server: Server, template_repository: Path
) -> None:
    good = template_repository.parent / "data" / "one-0.bin"
    digest = hashlib.sha256(good.read_bytes()).hexdigest()
    add_restore_check_settings(server, f"""canaries = [
  {{path = "{good}", min_size = "1MiB", sha256 = "{digest}"}},
  {{path = "/etc/not-in-the-snapshot"}},
  {{path = "{good.with_name('one-1.bin')}", min_size = "2MB"}},
  {{path = "{good.with_name('one-2.bin')}", sha256 = "{'0' * 64}"}},
]
""")
    result = server.cli("restore-check", "web01", "--location", "primary", "--files", "0", "--json")

    assert result.code == 1, result.err
    report = result.json()
    assert sorted(Path(item["path"]).name for item in report["sample"]) == sorted(TEMPLATE_FILES)
    failures = {failure["path"]: failure["reason"] for failure in report["locations"]["@primary"]["failures"]}
    assert failures == {
        "/etc/not-in-the-snapshot": "canary missing from the snapshot",
        str(good.with_name("one-1.bin")): "canary is 1048576 bytes, less than its min_size 2000000",
        str(good.with_name("one-2.bin")): "canary's content does not match its sha256",
    }
    human = server.cli("restore-check", "web01", "--location", "primary", "--files", "0")
    assert human.code == 1 and "/etc/not-in-the-snapshot: canary missing" in human.out

    server.write_config(server.config_path.read_text().split("[clients.web01.restore_check]")[0])
    add_restore_check_settings(server, 'canaries = [{path = "/etc/not-in-the-snapshot"}]\n')
    only_missing = server.cli("restore-check", "web01", "--location", "primary", "--files", "0", "--json")
    assert only_missing.code == 1 and only_missing.json()["sample"] == []
    assert only_missing.json()["locations"]["@primary"]["failures"] == [
        {"path": "/etc/not-in-the-snapshot", "reason": "canary missing from the snapshot"}]


def test_a_wrong_key_or_no_key_cannot_run(server: Server) -> None:
    assert server.cli("sync", "web01").code == 0
    server.password_file.write_text("not the password")
    wrong = server.cli("restore-check", "web01", "--json")
    assert wrong.code == 3
    assert "cannot open any repository with the configured key" in wrong.err
    assert "Traceback" not in wrong.err  # with --json the error is also one JSON object (docs/json.md)
    assert wrong.json()["exit_code"] == 3 and "configured key" in wrong.json()["error"]

    server.write_config(server.config_path.read_text().replace(
        f'password_file = "{server.password_file}"', ""))
    keyless = server.cli("restore-check", "web01")
    assert keyless.code == 3
    assert "has no key for restore checks: set password_file or password_command" in keyless.err
    assert leftovers(server) == []


def test_a_password_command_is_a_key_too(server: Server) -> None:
    server.password_file.rename(server.root / "secret")
    server.write_config(server.config_path.read_text().replace(
        f'password_file = "{server.password_file}"', f'password_command = ["cat", "{server.root}/secret"]'))
    result = server.cli("restore-check", "web01", "--location", "primary", "--json")
    assert result.code == 0, result.err
    assert result.json()["locations"]["@primary"]["files_checked"] == 3


def test_snapshot_choice(server: Server, tmp_path: Path) -> None:
    first = server.snapshot_ids(server.primary())[0]
    assert server.cli("sync", "web01", "--to", "usb").code == 0
    write_files(tmp_path / "later", "later", count=1, size=1000)
    server.backup(tmp_path / "later")  # only in the primary: the common snapshot stays the first
    common = server.cli("restore-check", "web01", "--location", "primary", "--location", "usb", "--json")
    assert common.code == 0, common.err
    assert common.json()["snapshot"] == first

    latest = server.cli("restore-check", "web01", "--location", "primary", "--location", "usb",
                        "--snapshot", "latest", "--json")
    assert latest.code == 1
    outcome = latest.json()["locations"]
    assert outcome["@primary"]["ok"] and "is not at this location" in outcome["usb"]["failures"][0]["reason"]

    by_prefix = server.cli("restore-check", "web01", "--location", "usb", "--snapshot", first[:8], "--json")
    assert by_prefix.code == 0 and by_prefix.json()["snapshot"] == first
    assert server.cli("restore-check", "web01", "--snapshot", "ffffffff").code == 3
    bad = server.cli("restore-check", "web01", "--snapshot", "yesterday")
    assert bad.code == 2 and "--snapshot yesterday" in bad.err


def test_file_names_with_glob_characters_are_restored_exactly(server: Server, tmp_path: Path) -> None:
    data = tmp_path / "odd"
    data.mkdir()
    names = ["a*b[1].bin", "what?.bin", "back\\slash.bin", "plain.bin"]
    for name in names:
        (data / name).write_bytes(os.urandom(2000))
    server.backup(data)
    result = server.cli("restore-check", "web01", "--location", "primary", "--files", "10", "--json")
    assert result.code == 0, result.out + result.err
    assert sorted(Path(item["path"]).name for item in result.json()["sample"]) == sorted(names)
    assert result.json()["locations"]["@primary"]["files_checked"] == len(names)


def test_no_snapshot_common_to_the_locations_cannot_run(server: Server) -> None:
    assert server.cli("sync", "web01", "--to", "usb").code == 0
    for path in (server.replica("usb") / "snapshots").iterdir():
        path.unlink()
    result = server.cli("restore-check", "web01", "--location", "primary", "--location", "usb")
    assert result.code == 3 and "no snapshot that every location has" in result.err


def test_a_location_without_repository_fails_alone(server: Server) -> None:
    result = server.cli("restore-check", "web01", "--location", "primary", "--location", "nas", "--json")
    assert result.code == 1
    outcome = result.json()["locations"]
    assert outcome["@primary"]["ok"] is True
    assert outcome["nas"]["failures"][0]["path"] is None
    assert "cannot open repository" in outcome["nas"]["failures"][0]["reason"]
    unknown = server.cli("restore-check", "web01", "--location", "nowhere")
    assert unknown.code == 2 and "--location nowhere" in unknown.err


def _running_restore(pid: int) -> int | None:
    """The ``restic restore`` that process ``pid`` started, if any."""
    for child in children_of(pid):
        argv = command_line(child)
        if argv and argv[0].endswith("restic") and "restore" in argv:
            return child
    return None


@pytest.mark.parametrize("signum, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_an_interrupted_check_stops_restic_and_removes_its_temporary_folder(
    server: Server, signum: int, code: int
) -> None:
    assert server.cli("sync", "web01", "--to", "usb").code == 0
    # A FIFO in place of the data pack: restic blocks opening it, so the restore is surely running.
    packs = {path: size for path, size in repository_files(server.replica("usb")).items()
             if path.startswith("data/")}
    data_pack = server.replica("usb") / max(packs, key=packs.__getitem__)
    data_pack.unlink()
    os.mkfifo(data_pack)
    process = subprocess.Popen(
        [sys.executable, "-m", "triplicate", "-c", str(server.config_path), "restore-check", "web01",
         "--location", "usb"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 30
        restic = None
        while time.monotonic() < deadline and process.poll() is None:
            restic = _running_restore(process.pid)
            if restic is not None and leftovers(server):
                break
            time.sleep(0.01)
        assert restic is not None and leftovers(server), "the restore never started"
        process.send_signal(signum)
        _, stderr = process.communicate(timeout=30)
    finally:
        process.kill()
    assert process.returncode == code, stderr
    assert b"Traceback" not in stderr
    assert leftovers(server) == []
    assert not exists(restic), "restic was left running (or not waited for)"


def test_the_sample_draws_large_and_small_files_plus_every_canary() -> None:
    listing = [SnapshotFile("/big", 100 << 20), SnapshotFile("/empty", 0), SnapshotFile("/canary", 5)]
    listing += [SnapshotFile(f"/small/{index:03}", 1000) for index in range(200)]
    for seed in range(20):
        sample = choose_files(listing, 4, ["/canary", "/not-there"], random.Random(seed))
        paths = [item.path for item in sample]
        assert paths == sorted(paths) and len(paths) == 5
        assert "/canary" in paths and "/big" in paths
    everything = choose_files(listing, 1000, [], random.Random(1))
    assert len(everything) == len(listing)
    draws = [tuple(item.path for item in choose_files(listing, 4, [], random.Random(seed))) for seed in range(5)]
    assert len(set(draws)) > 1, "the small files must be drawn at random"


def test_the_private_folder_is_0700_and_removed_even_when_read_only(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError), private_folder(tmp_path / "tmp", TEMPORARY_PREFIX) as folder:
        assert folder.stat().st_mode & 0o777 == 0o700
        locked = folder / "restored" / "read-only"
        locked.mkdir(parents=True)
        (locked / "file").write_text("x")
        locked.chmod(0o500)
        (folder / "restored").chmod(0o500)
        raise RuntimeError("interrupted")
    assert list((tmp_path / "tmp").iterdir()) == []


def test_a_copy_that_differs_from_the_majority_fails_and_a_tie_fails_both() -> None:
    sample = [SnapshotFile("/a", 1), SnapshotFile("/b", 1)]
    results = [LocationCheck(name) for name in ("@primary", "usb", "nas")]
    for result in results:
        result.hashes = {"/a": "1" * 64, "/b": "2" * 64}
    results[1].hashes["/a"] = "f" * 64
    del results[2].hashes["/b"]  # failed earlier: not counted
    results[2].hashes["/a"] = "1" * 64
    results[1].hashes["/b"] = "e" * 64
    compare_across_locations(sample, results)
    assert results[0].failures[0].path == "/b" and "another location's" in results[0].failures[0].reason
    assert [failure.path for failure in results[1].failures] == ["/a", "/b"]
    assert "the other locations'" in results[1].failures[0].reason
    assert results[2].ok
