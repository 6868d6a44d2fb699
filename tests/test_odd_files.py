"""Odd files in a repository (a FIFO, a link to a device, a link loop, a denied folder) are refused by name.

Each fault is made for real on the file system and ``triplicate sync`` runs as a
separate process with a timeout: a hang (a FIFO waiting for a writer, a link to
/dev/zero read for ever) fails the test instead of hanging it.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.support.repository import AS_NOBODY, Server, age_file, repository_files
from tests.support.syncd import DaemonProcess
from triplicate.storage.handle import FileType, Handle

# Named as a pack would be, so that the listing takes it for one.
ODD_NAME = "ab" + "0123456789abcdef" * 3 + "0123456789abcd"
SYNC_TIMEOUT = 60


def run_sync(config: Path, *args: str, as_nobody: bool = False) -> tuple[int, str, str, float]:
    """``triplicate sync`` in its own process (as nobody when asked); returns code, out, err, seconds."""
    prefix = AS_NOBODY if as_nobody else []
    started = time.monotonic()
    done = subprocess.run([*prefix, sys.executable, "-m", "triplicate", "-c", str(config), "sync", *args], check=False,
                          capture_output=True, text=True, timeout=SYNC_TIMEOUT)
    return done.returncode, done.stdout, done.stderr, time.monotonic() - started


def odd_fifo(path: Path) -> None:
    os.mkfifo(path)


def odd_link_to_zero(path: Path) -> None:
    path.symlink_to("/dev/zero")


def odd_link_loop(path: Path) -> None:
    path.symlink_to(path.name)  # points at itself


def odd_device(path: Path) -> None:
    os.mknod(path, 0o600 | 0o020000, os.makedev(1, 5))  # a character device: /dev/zero's numbers


@pytest.mark.parametrize("make_odd", [odd_fifo, odd_link_to_zero, odd_link_loop, odd_device],
                         ids=["fifo", "link-to-dev-zero", "link-loop", "device"])
def test_an_odd_file_in_the_primary_is_refused_by_name_and_everything_else_is_copied(
        server: Server, make_odd: Callable[[Path], None]) -> None:
    folder = server.primary() / "data" / ODD_NAME[:2]
    folder.mkdir(exist_ok=True)
    odd = folder / ODD_NAME
    make_odd(odd)
    code, out, err, seconds = run_sync(server.config_path, "web01", "--json")
    assert seconds < SYNC_TIMEOUT / 2
    assert code == 1, err
    assert "Traceback" not in err
    report = json.loads(out)
    regular = {path: size for path, size in repository_files(server.primary()).items()
               if not path.endswith(ODD_NAME)}
    for location in ("usb", "nas"):
        outcome = report["locations"][location]
        assert not outcome["ok"]
        [line] = outcome["unreadable_files"]
        assert line.startswith(f"{odd}: ") and line.endswith(", not a regular file"), line
        # Every other file arrived, the snapshot too: with the client's key restic tells that no
        # index names the odd "pack", so it holds nothing back (docs/daemon.md, narrow hold-back).
        replica = repository_files(server.replica(location))
        assert {path: size for path, size in replica.items() if not path.startswith("index/")} == {
            path: size for path, size in regular.items() if not path.startswith("index/")}
        assert not (server.replica(location) / "data" / ODD_NAME[:2] / ODD_NAME).exists()
        assert not any((server.replica(location) / ".triplicate-partial").iterdir())
    # The summary names the file whole, on its own line per location; status shows the failure.
    code, out, err, _ = run_sync(server.config_path, "web01")
    assert code == 1 and "Traceback" not in err, err
    named = [line for line in out.splitlines() if str(odd) in line]
    assert [line.split(":")[0] for line in named] == ["usb", "nas"] or [
        line.split(":")[0] for line in named] == ["nas", "usb"], out
    status = server.cli("status", "web01", "--json")
    assert status.code == 1, status.out


def test_a_fifo_in_place_of_a_replicas_config_fails_that_location_only(server: Server) -> None:
    usb = server.replica("usb")
    usb.mkdir()
    os.mkfifo(usb / "config")
    code, out, err, seconds = run_sync(server.config_path, "web01", "--json")
    assert seconds < SYNC_TIMEOUT / 2 and code == 1 and "Traceback" not in err, err
    report = json.loads(out)
    assert not report["locations"]["usb"]["ok"]
    assert "a FIFO, not a regular file" in report["locations"]["usb"]["error"]
    assert report["locations"]["nas"]["ok"] and report["locations"]["nas"]["complete"]
    assert repository_files(server.replica("nas")) == repository_files(server.primary())
    assert server.check_read_data(server.replica("nas")).returncode == 0


def test_a_location_path_that_is_a_file_says_so(server: Server) -> None:
    shutil.rmtree(server.root / "usb")
    (server.root / "usb").write_text("not a folder")
    result = server.cli("sync", "web01", "--json")
    assert result.code == 1
    error = result.json()["locations"]["usb"]["error"]
    assert error == f"location folder {server.root / 'usb'} is a file, not a folder"
    assert result.json()["locations"]["nas"]["complete"]


def test_an_unsearchable_data_folder_of_a_replica_fails_that_location_only(unprivileged_server: Server) -> None:
    server = unprivileged_server
    first = run_sync(server.config_path, "web01", as_nobody=True)
    assert first[0] == 0, first
    denied = next((server.replica("usb") / "data").iterdir())
    denied.chmod(0)
    more = server.primary() / "snapshots"
    # A new snapshot: the healthy location must still receive it.
    subprocess.run([*AS_NOBODY, "restic", "--no-cache",
                    "-r", str(server.primary()), "--password-file", str(server.password_file), "backup", "-q",
                    str(server.password_file)], check=True, capture_output=True)
    code, out, err, seconds = run_sync(server.config_path, "web01", "--json", as_nobody=True)
    assert seconds < SYNC_TIMEOUT / 2 and code == 1 and "Traceback" not in err, err
    report = json.loads(out)
    assert report["locations"]["usb"]["error"] == f"{denied}: permission denied"
    assert report["locations"]["nas"]["complete"]
    assert len(list(more.iterdir())) == 2
    assert repository_files(server.replica("nas")) == repository_files(server.primary())


def test_an_unsearchable_data_folder_of_the_primary_is_one_line(unprivileged_server: Server) -> None:
    server = unprivileged_server
    denied = next((server.primary() / "data").iterdir())
    denied.chmod(0)
    code, _, err, seconds = run_sync(server.config_path, "web01", as_nobody=True)
    assert seconds < SYNC_TIMEOUT / 2 and code == 1, err
    assert err.strip() == f"triplicate: client 'web01': {denied}: permission denied"


def test_plain_text_output_never_cuts_a_file_name(server: Server, monkeypatch: pytest.MonkeyPatch) -> None:
    """sync, audit and status print a file name whole on one line, even on a narrow terminal."""
    monkeypatch.setenv("COLUMNS", "60")
    folder = server.primary() / "data" / ODD_NAME[:2]
    folder.mkdir(exist_ok=True)
    os.mkfifo(folder / ODD_NAME)
    for path in server.primary().rglob("*"):
        age_file(path)  # old enough to be judged, not "being written"
    sync = server.cli("sync", "web01")
    assert sync.code == 1
    assert sum(str(folder / ODD_NAME) in line for line in sync.out.splitlines()) == 2, sync.out
    audit = server.cli("audit", "web01")
    assert audit.code == 2
    # the primary's own problem, and each location's missing file
    assert sum(f"data/{ODD_NAME[:2]}/{ODD_NAME}" in line for line in audit.out.splitlines()) == 3, audit.out
    status = server.cli("status", "web01")
    assert status.code == 1
    assert any(f"data/{ODD_NAME[:2]}/{ODD_NAME}" in line for line in status.out.splitlines()), status.out


def test_the_daemon_names_an_odd_file_at_once_and_stops_promptly(server: Server) -> None:
    """Under syncd a FIFO and a link to /dev/zero neither hang a location nor grow a temporary file."""
    folder = server.primary() / "data" / ODD_NAME[:2]
    folder.mkdir(exist_ok=True)
    os.mkfifo(folder / ODD_NAME)
    zero = server.primary() / "data" / "cd"
    zero.mkdir(exist_ok=True)
    (zero / ("cd" + ODD_NAME[2:])).symlink_to("/dev/zero")
    daemon = DaemonProcess(server.config_path, "--no-events").started()
    try:
        for location in ("usb", "nas"):
            daemon.wait_for_log(rf"web01 -> {location}.*{ODD_NAME}: a FIFO, not a regular file", timeout=20)
            daemon.wait_for_log(rf"web01 -> {location}.*{zero / ('cd' + ODD_NAME[2:])}: a symbolic link", timeout=20)
        for location in ("usb", "nas"):
            partial = server.replica(location) / ".triplicate-partial"
            assert sum(path.stat().st_size for path in partial.iterdir()) == 0
    finally:
        code, seconds = daemon.terminate(timeout=30)
    assert code == 0 and seconds < 10
    assert "Traceback" not in daemon.log


def test_a_loaded_primary_file_still_tells_its_path_to_rclone(server: Server) -> None:
    """The rclone kind has rclone copy a verified local file by its path: the limited reader keeps it."""
    from triplicate.storage.local import LocalBackend
    from triplicate.storage.rclone import _local_file

    pack = next((server.primary() / "data").glob("*/*"))
    backend = LocalBackend(server.primary())
    with backend.load(Handle(FileType.DATA, pack.name)) as reader:
        assert _local_file(reader) == pack.resolve()
        assert len(reader.read()) == pack.stat().st_size
