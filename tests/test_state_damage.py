"""A damaged or unusable state database: one line naming the file and the fix, exit 3, from every command.

Each command runs as its own process (the daemon too), so that a traceback, a hang
or an exit status other than 3 shows as it would to an operator.
"""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.support.repository import AS_NOBODY, Server

COMMANDS = [("status",), ("sync", "web01"), ("audit", "web01"), ("syncd", "--no-events")]


def run_command(config: Path, *args: str, as_nobody: bool = False) -> subprocess.CompletedProcess[str]:
    prefix = AS_NOBODY if as_nobody else []
    return subprocess.run([*prefix, sys.executable, "-m", "triplicate", "-c", str(config), *args],
                          capture_output=True, text=True, timeout=60, check=False)


def assert_one_line_exit_3(config: Path, expected: str, as_nobody: bool = False) -> None:
    for command in COMMANDS:
        done = run_command(config, *command, as_nobody=as_nobody)
        assert done.returncode == 3, (command, done.stdout, done.stderr)
        assert done.stderr.splitlines() == [expected], (command, done.stderr)


def database(server: Server) -> Path:
    return server.root / "state" / "state.db"


def settle(path: Path) -> None:
    """Fold the write-ahead log into the file and drop it: the damage is to the file itself."""
    connection = sqlite3.connect(path)
    connection.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    connection.execute("PRAGMA journal_mode=DELETE")
    connection.close()


def garbage(path: Path) -> str:
    path.write_bytes(os.urandom(64 << 10))
    return "file is not a database"


def truncated(path: Path) -> str:
    connection = sqlite3.connect(path)  # enough rows to span many pages
    connection.execute("CREATE TABLE filler (text TEXT)")
    connection.executemany("INSERT INTO filler VALUES (?)", [("x" * 500,)] * 2000)
    connection.commit()
    connection.close()
    with open(path, "r+b") as file:
        file.truncate(os.path.getsize(path) // 3)
    return "database disk image is malformed"


def overwritten_pages(path: Path) -> str:
    page = 4096
    with open(path, "r+b") as file:  # page 1 (the header) stays; the schema's pages are garbage
        file.seek(page)
        file.write(os.urandom(os.path.getsize(path) - page))
    return "database disk image is malformed"


@pytest.mark.parametrize("damage", [garbage, truncated, overwritten_pages],
                         ids=["garbage", "truncated", "overwritten-pages"])
def test_a_damaged_state_database_is_one_line_naming_the_file_and_the_fix(
        server: Server, damage: Callable[[Path], str]) -> None:
    assert server.cli("sync", "web01").code == 0
    path = database(server)
    settle(path)
    reason = damage(path)
    assert_one_line_exit_3(server.config_path, f"triplicate: state database {path} is damaged ({reason}); "
                           "move it aside to start afresh, arrival times will be re-learned")


def test_state_dir_pointing_at_a_file_is_one_line(server: Server) -> None:
    (server.root / "state").write_text("not a folder")
    assert_one_line_exit_3(server.config_path, f"triplicate: server.state_dir {server.root / 'state'} is not "
                           "a folder; point it at a folder (it is made when missing)")


def test_an_unreadable_state_database_is_one_line(unprivileged_server: Server) -> None:
    server = unprivileged_server
    assert run_command(server.config_path, "sync", "web01", as_nobody=True).returncode == 0
    path = database(server)
    settle(path)
    path.chmod(0)
    assert_one_line_exit_3(server.config_path, f"triplicate: state database {path} cannot be used (unable to "
                           f"open database file): the commands and the daemon need to read and write it and "
                           f"its folder {path.parent}", as_nobody=True)


def test_a_read_only_state_database_is_one_line(unprivileged_server: Server) -> None:
    server = unprivileged_server
    assert run_command(server.config_path, "sync", "web01", as_nobody=True).returncode == 0
    path = database(server)
    settle(path)
    path.chmod(0o444)
    path.parent.chmod(0o555)
    done = run_command(server.config_path, "sync", "web01", as_nobody=True)
    assert done.returncode == 3 and len(done.stderr.splitlines()) == 1, done.stderr
    assert done.stderr.startswith(f"triplicate: state database {path} cannot be used ("), done.stderr


def test_a_locks_folder_that_is_a_file_is_one_line_exit_3(server: Server) -> None:
    (server.root / "state").mkdir()
    (server.root / "state" / "locks").write_text("not a folder")
    done = run_command(server.config_path, "sync", "web01")
    assert done.returncode == 3, done.stderr
    [line] = done.stderr.splitlines()
    assert line.startswith(f"triplicate: cannot open the lock file {server.root}/state/locks/web01@"), line


@pytest.fixture
def read_only_state(server: Server) -> Iterator[Path]:
    """The state folder after one sync, then mounted read-only over itself (a real read-only mount)."""
    if os.geteuid() != 0:
        pytest.skip("needs root to mount")
    assert server.cli("sync", "web01").code == 0
    state = server.root / "state"
    settle(database(server))
    subprocess.run(["mount", "--bind", str(state), str(state)], check=True)
    try:
        subprocess.run(["mount", "-o", "remount,bind,ro", str(state)], check=True)
        yield state
    finally:
        subprocess.run(["umount", str(state)], check=True)


def test_a_state_database_on_a_read_only_mount_is_one_line(server: Server, read_only_state: Path) -> None:
    path = read_only_state / "state.db"
    for command in COMMANDS:
        done = run_command(server.config_path, *command)
        assert done.returncode == 3, (command, done.stdout, done.stderr)
        [line] = done.stderr.splitlines()
        assert line.startswith(f"triplicate: state database {path} cannot be used ("), (command, line)
