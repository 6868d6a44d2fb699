"""What retention knows: its runs, and files absent from a primary but still on a replica."""

from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass

from triplicate.state.db import Store

SCHEMA = """
CREATE TABLE IF NOT EXISTS retention_runs (
    id              INTEGER PRIMARY KEY,
    client          TEXT NOT NULL,
    started         REAL NOT NULL,
    finished        REAL NOT NULL,
    ok              INTEGER NOT NULL,
    dry_run         INTEGER NOT NULL,
    kept            INTEGER NOT NULL,
    removed         TEXT NOT NULL,          -- JSON list of snapshot IDs
    reclaimed_bytes INTEGER NOT NULL,
    error           TEXT
);
CREATE INDEX IF NOT EXISTS retention_runs_by_client ON retention_runs (client, started);
CREATE TABLE IF NOT EXISTS absent_files (
    client       TEXT NOT NULL,
    location     TEXT NOT NULL,
    file_type    TEXT NOT NULL,
    name         TEXT NOT NULL,
    absent_since REAL NOT NULL,             -- first seen on the replica but not on the primary
    PRIMARY KEY (client, location, file_type, name)
);
"""


@dataclass(frozen=True)
class RetentionRun:
    client: str
    started: float
    finished: float
    ok: bool
    dry_run: bool
    kept: int
    removed: list[str]
    reclaimed_bytes: int
    error: str | None


class RetentionState(Store):
    """Reads and writes the retention tables; safe to share between threads."""

    SCHEMA = SCHEMA

    def record_run(self, run: RetentionRun) -> None:
        with self._lock, self.connection:
            self.connection.execute(
                "INSERT INTO retention_runs (client, started, finished, ok, dry_run, kept, removed,"
                " reclaimed_bytes, error) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (run.client, run.started, run.finished, int(run.ok), int(run.dry_run), run.kept,
                 json.dumps(run.removed), run.reclaimed_bytes, run.error),
            )

    def last_run(self, client: str) -> sqlite3.Row | None:
        """The client's newest retention run that was not a dry run, or None."""
        with self._lock:
            row: sqlite3.Row | None = self.connection.execute(
                "SELECT * FROM retention_runs WHERE client=? AND dry_run=0 ORDER BY started DESC LIMIT 1",
                (client,),
            ).fetchone()
        return row

    def absent_since(self, client: str, location: str, file_type: str, extra: set[str], now: float) -> dict[str, float]:
        """Note which files the replica has and the primary lacks; return when each went missing.

        Files no longer extra (removed, or back on the primary) are forgotten.
        """
        with self._lock, self.connection:
            rows = self.connection.execute(
                "SELECT name, absent_since FROM absent_files WHERE client=? AND location=? AND file_type=?",
                (client, location, file_type),
            ).fetchall()
            known = {row[0]: row[1] for row in rows}
            self.connection.executemany(
                "DELETE FROM absent_files WHERE client=? AND location=? AND file_type=? AND name=?",
                [(client, location, file_type, name) for name in set(known) - extra],
            )
            self.connection.executemany(
                "INSERT INTO absent_files (client, location, file_type, name, absent_since) VALUES (?, ?, ?, ?, ?)",
                [(client, location, file_type, name, now) for name in extra - set(known)],
            )
        return {name: known.get(name, now) for name in extra}

    def forget_absent(self, client: str, location: str, file_type: str, names: list[str]) -> None:
        with self._lock, self.connection:
            self.connection.executemany(
                "DELETE FROM absent_files WHERE client=? AND location=? AND file_type=? AND name=?",
                [(client, location, file_type, name) for name in names],
            )


def first_scan_time(connection: sqlite3.Connection, client: str, location: str) -> float | None:
    """When triplicate first listed the client's snapshots at ``location`` (None: never).

    Snapshots first seen then were already there: their arrival is unknown.
    """
    row = connection.execute(
        "SELECT at FROM first_scans WHERE client=? AND location=?", (client, location)
    ).fetchone()
    return row[0] if row else None
