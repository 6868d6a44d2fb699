"""Processes that open the state database at once (watchers started together by runsvdir,
a ``sync`` by hand beside them) all get it, the very first time too."""

from __future__ import annotations

import multiprocessing
import shutil
from multiprocessing.synchronize import Barrier
from pathlib import Path

from triplicate.state.db import connect

PROCESSES = 3
ROUNDS = 100


def _open_at_once(state_dir: Path, barrier: Barrier) -> None:
    barrier.wait()
    connection = connect(state_dir, "CREATE TABLE IF NOT EXISTS seen (process INTEGER);")
    connection.execute("INSERT INTO seen VALUES (1)")
    connection.close()


def test_processes_creating_the_state_database_at_once_all_open_it(tmp_path: Path) -> None:
    """SQLite answers 'locked' at once, without its busy timeout, to a second process making a
    new database WAL; before the fix about one round in twenty failed so."""
    context = multiprocessing.get_context("fork")
    for round_ in range(ROUNDS):
        state_dir = tmp_path / "state"
        shutil.rmtree(state_dir, ignore_errors=True)
        barrier = context.Barrier(PROCESSES)
        processes = [context.Process(target=_open_at_once, args=(state_dir, barrier)) for _ in range(PROCESSES)]
        for process in processes:
            process.start()
        for process in processes:
            process.join(60)
        assert [process.exitcode for process in processes] == [0] * PROCESSES, f"round {round_}"
        connection = connect(state_dir)
        assert connection.execute("SELECT count(*) FROM seen").fetchone()[0] == PROCESSES
        assert connection.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        connection.close()
