"""Processes that open the state database at once (watchers started together by runsvdir,
a ``sync`` by hand beside them) all get it, the very first time too."""

from __future__ import annotations

import multiprocessing
import shutil
import time
from multiprocessing.synchronize import Barrier, Event
from pathlib import Path

from triplicate.state.db import connect, one_reading

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


LOCATIONS = ("@primary", "usb", "nas")
READS = 1000  # while another process writes


def _record_audits(state_dir: Path, started: Event, stop: Event) -> None:
    """Record audits of web01 (three locations each) until ``stop`` is set (a minute at most)."""
    from triplicate.state.audit import AuditRecord, AuditState, LocationAuditRecord

    deadline = time.monotonic() + 60
    with AuditState.opened(state_dir) as audits:
        started.set()
        index = 0
        while not stop.is_set() and time.monotonic() < deadline:
            index += 1
            audits.record_audit(AuditRecord(
                client="web01", started=index, finished=index, status="OK", reason="", report={},
                locations={name: LocationAuditRecord("OK", "", {}) for name in LOCATIONS}))


def test_a_record_is_read_whole_while_another_process_writes_records(tmp_path: Path) -> None:
    """One method's statements are one transaction, its reads one snapshot: a reader (status, the
    web service, the daemon's notifications) never sees an audit without its locations. The
    connection runs in autocommit, where ``with connection:`` began no transaction; before the fix
    about one read in three here saw an audit with some of its locations, or none (and under load,
    with the writes atomic, a few saw the audit's row, then its locations already evicted)."""
    from triplicate.state.audit import AuditState

    state_dir = tmp_path / "state"
    AuditState(state_dir).close()
    context = multiprocessing.get_context("fork")
    started, stop = context.Event(), context.Event()
    writer = context.Process(target=_record_audits, args=(state_dir, started, stop))
    writer.start()
    read = partial = 0
    try:
        with AuditState.opened(state_dir) as audits:
            assert started.wait(30)
            while read < READS and writer.is_alive():
                record = audits.last_audit("web01")
                if record is not None:
                    read += 1
                    partial += tuple(record.locations) != LOCATIONS
    finally:
        stop.set()
        writer.join(60)
    assert writer.exitcode == 0
    assert read == READS, f"only {read} reads before the writer stopped"
    assert partial == 0, f"{partial} of {read} audits read without all their locations"


def test_a_block_inside_a_transaction_joins_it_and_leaves_its_end_to_it(tmp_path: Path) -> None:
    connection = connect(tmp_path, "CREATE TABLE IF NOT EXISTS seen (process INTEGER);")
    with one_reading(connection):
        with connection:
            connection.execute("SELECT count(*) FROM seen").fetchone()
        assert connection.in_transaction, "the reading's snapshot still holds"
    assert not connection.in_transaction
    with connection:
        with connection:
            connection.execute("INSERT INTO seen VALUES (1)")
        assert connection.in_transaction, "the inner block does not commit the outer one"
    assert not connection.in_transaction
    assert connection.execute("SELECT count(*) FROM seen").fetchone()[0] == 1
    connection.close()
