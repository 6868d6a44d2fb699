"""What restore checks remember: one row per (client, location) check, for ``status`` and metrics."""

from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass

from triplicate.state.db import Store

SCHEMA = """
CREATE TABLE IF NOT EXISTS restore_checks (
    id                             INTEGER PRIMARY KEY,
    client                         TEXT NOT NULL,
    location                       TEXT NOT NULL,    -- a location's name, or '@primary'
    time                           REAL NOT NULL,    -- when the check finished
    ok                             INTEGER NOT NULL,
    snapshot                       TEXT,             -- full ID; NULL when none could be chosen
    files_checked                  INTEGER NOT NULL,
    bytes_restored                 INTEGER NOT NULL,
    seconds                        REAL NOT NULL,    -- the whole check at this location
    throughput                     REAL,             -- bytes per second of the restore; NULL if none
    estimated_full_restore_seconds REAL,             -- snapshot size / throughput (an estimate)
    failures                       TEXT NOT NULL     -- JSON list of {"path", "reason"}
);
CREATE INDEX IF NOT EXISTS restore_checks_by_location ON restore_checks (client, location, time);
"""


@dataclass(frozen=True)
class RestoreCheckRecord:
    client: str
    location: str
    time: float
    ok: bool
    snapshot: str | None
    files_checked: int
    bytes_restored: int
    seconds: float
    throughput: float | None
    estimated_full_restore_seconds: float | None
    failures: list[dict[str, str | None]]


class RestoreCheckState(Store):
    """Reads and writes the ``restore_checks`` table; safe to share between threads."""

    SCHEMA = SCHEMA

    def record(self, record: RestoreCheckRecord) -> bool | None:
        """Store one location's result; return the previous result's ``ok`` (None: first check).

        The previous outcome is what a notifier needs to tell a failure from a recovery.
        """
        with self._lock, self.connection:
            previous = self.connection.execute(
                "SELECT ok FROM restore_checks WHERE client=? AND location=? ORDER BY time DESC, id DESC"
                " LIMIT 1", (record.client, record.location),
            ).fetchone()
            self.connection.execute(
                "INSERT INTO restore_checks (client, location, time, ok, snapshot, files_checked,"
                " bytes_restored, seconds, throughput, estimated_full_restore_seconds, failures)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    record.client, record.location, record.time, int(record.ok), record.snapshot,
                    record.files_checked, record.bytes_restored, record.seconds, record.throughput,
                    record.estimated_full_restore_seconds, json.dumps(record.failures),
                ),
            )
        return None if previous is None else bool(previous[0])

    def last_restore_checks(self, client: str) -> dict[str, RestoreCheckRecord]:
        """The newest check of each of ``client``'s locations, by location name ('@primary' too)."""
        with self._lock:
            rows = self.connection.execute(
                "SELECT * FROM restore_checks AS r WHERE client=? AND id = (SELECT id FROM restore_checks"
                " WHERE client=r.client AND location=r.location ORDER BY time DESC, id DESC LIMIT 1)"
                " ORDER BY location", (client,),
            ).fetchall()
        return {row["location"]: _record(row) for row in rows}

    def last_results(self) -> dict[tuple[str, str], tuple[bool, float]]:
        """(client, location) -> (passed, when) of the newest check of every pair, in one query."""
        with self._lock:
            rows = self.connection.execute(
                "SELECT client, location, ok, time FROM restore_checks AS r WHERE id = (SELECT id FROM"
                " restore_checks WHERE client=r.client AND location=r.location ORDER BY time DESC, id DESC LIMIT 1)"
            ).fetchall()
        return {(row[0], row[1]): (bool(row[2]), row[3]) for row in rows}

    def last_successes(self) -> dict[tuple[str, str], float]:
        """(client, location) -> time of the newest passed check, for every pair that ever passed."""
        with self._lock:
            rows = self.connection.execute(
                "SELECT client, location, MAX(time) FROM restore_checks WHERE ok=1 GROUP BY client, location"
            ).fetchall()
        return {(row[0], row[1]): row[2] for row in rows}


def _record(row: sqlite3.Row) -> RestoreCheckRecord:
    return RestoreCheckRecord(
        client=row["client"], location=row["location"], time=row["time"], ok=bool(row["ok"]),
        snapshot=row["snapshot"], files_checked=row["files_checked"], bytes_restored=row["bytes_restored"],
        seconds=row["seconds"], throughput=row["throughput"],
        estimated_full_restore_seconds=row["estimated_full_restore_seconds"],
        failures=json.loads(row["failures"]),
    )
