"""What replication knows: snapshots per location, each location's health, the run history."""

from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass
from typing import Any

from triplicate.state.db import PRIMARY, Store, locked

SCHEMA = """
CREATE TABLE IF NOT EXISTS snapshots (
    client      TEXT NOT NULL,
    location    TEXT NOT NULL,          -- a location's name, or '@primary'
    snapshot_id TEXT NOT NULL,
    first_seen  REAL NOT NULL,          -- when triplicate first saw it there (arrival)
    last_seen   REAL NOT NULL,
    gone_since  REAL,                   -- set when it disappeared; NULL while present
    PRIMARY KEY (client, location, snapshot_id)
);
CREATE TABLE IF NOT EXISTS first_scans (
    client   TEXT NOT NULL,
    location TEXT NOT NULL,
    at       REAL NOT NULL,                 -- triplicate's first listing there, even an empty one
    PRIMARY KEY (client, location)
);
CREATE TABLE IF NOT EXISTS location_state (
    client               TEXT NOT NULL,
    location             TEXT NOT NULL,
    last_attempt         REAL,
    last_success         REAL,
    last_error           TEXT,
    consecutive_failures INTEGER NOT NULL DEFAULT 0,
    failure_notified     INTEGER NOT NULL DEFAULT 0,
    bytes_copied_total   INTEGER NOT NULL DEFAULT 0,
    files_copied_total   INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (client, location)
);
CREATE TABLE IF NOT EXISTS runs (
    id                        INTEGER PRIMARY KEY,
    client                    TEXT NOT NULL,
    location                  TEXT NOT NULL,
    trigger                   TEXT NOT NULL,     -- 'cli', 'event', 'poll', 'start', 'retry'
    started                   REAL NOT NULL,
    finished                  REAL NOT NULL,
    ok                        INTEGER NOT NULL,
    files_copied              INTEGER NOT NULL,
    bytes_copied              INTEGER NOT NULL,
    files_skipped_in_progress INTEGER NOT NULL,
    corrupt_files             TEXT NOT NULL,     -- JSON list of paths
    error                     TEXT
);
CREATE INDEX IF NOT EXISTS runs_by_location ON runs (client, location, started);
CREATE TABLE IF NOT EXISTS unsettled_files (
    client     TEXT NOT NULL,
    path       TEXT NOT NULL,               -- in the primary: data/ab/<id>, index/<id>...
    outcome    TEXT NOT NULL,               -- engine.judgement.Outcome's value at the last look
    size       INTEGER NOT NULL,
    mtime      REAL,
    first_seen REAL NOT NULL,               -- unsettled and unchanged (size, mtime) since
    last_seen  REAL NOT NULL,
    PRIMARY KEY (client, path)
);
"""

# A run's error that is about the primary's files, not the location's (status tells them apart).
PRIMARY_PROBLEM_PREFIX = "the primary's "
# The trigger of a run asked for by a pack or index file the endpoint announced during a backup.
BACKUP_TRIGGER = "backup"


@dataclass(frozen=True)
class SnapshotChange:
    added: list[str]
    removed: list[str]


@dataclass(frozen=True)
class UnsettledRow:
    """A primary file not copied as listed, remembered across runs."""

    path: str
    outcome: str
    size: int
    mtime: float | None
    first_seen: float
    last_seen: float


@dataclass(frozen=True)
class RunRecord:
    client: str
    location: str
    trigger: str
    started: float
    finished: float
    ok: bool
    files_copied: int
    bytes_copied: int
    files_skipped_in_progress: int
    corrupt_files: list[str]
    error: str | None
    # Stopped on request (the daemon's SIGTERM): in the history, but neither a success
    # nor a failure of the location, so a restart does not count it towards notifying.
    interrupted: bool = False


class ReplicationState(Store):
    """Reads and writes the replication tables. Every method is one transaction."""

    SCHEMA = SCHEMA

    @locked
    def record_snapshots(self, client: str, location: str, present: set[str], now: float) -> SnapshotChange:
        """Store the snapshot IDs now at a location; return what changed since last time."""
        with self.connection:
            rows = self.connection.execute(
                "SELECT snapshot_id FROM snapshots WHERE client=? AND location=? AND gone_since IS NULL",
                (client, location),
            ).fetchall()
            known = {row[0] for row in rows}
            self.connection.execute(
                "INSERT INTO first_scans (client, location, at) VALUES (?, ?, ?)"
                " ON CONFLICT (client, location) DO NOTHING", (client, location, now))
            added = sorted(present - known)
            removed = sorted(known - present)
            self.connection.executemany(
                "INSERT INTO snapshots (client, location, snapshot_id, first_seen, last_seen)"
                " VALUES (?, ?, ?, ?, ?) ON CONFLICT (client, location, snapshot_id)"
                " DO UPDATE SET last_seen=excluded.last_seen, gone_since=NULL",
                [(client, location, snapshot, now, now) for snapshot in added],
            )
            self.connection.executemany(
                "UPDATE snapshots SET gone_since=? WHERE client=? AND location=? AND snapshot_id=?",
                [(now, client, location, snapshot) for snapshot in removed],
            )
            self.connection.execute(
                "UPDATE snapshots SET last_seen=? WHERE client=? AND location=? AND gone_since IS NULL",
                (now, client, location),
            )
        return SnapshotChange(added, removed)

    @locked
    def known_snapshots(self, client: str, location: str = PRIMARY) -> dict[str, float]:
        """Snapshot IDs present at the last look, with their arrival (first seen) times."""
        rows = self.connection.execute(
            "SELECT snapshot_id, first_seen FROM snapshots"
            " WHERE client=? AND location=? AND gone_since IS NULL",
            (client, location),
        ).fetchall()
        return {row[0]: row[1] for row in rows}

    @locked
    def ever_held(self, client: str, location: str) -> set[str]:
        """Snapshot IDs ever seen at a location, present or lost since."""
        rows = self.connection.execute(
            "SELECT snapshot_id FROM snapshots WHERE client=? AND location=?", (client, location)).fetchall()
        return {row[0] for row in rows}

    @locked
    def record_run(self, run: RunRecord) -> int:
        """Append a run and update the location's health; return its consecutive failures."""
        with self.connection:
            self.connection.execute(
                "INSERT INTO runs (client, location, trigger, started, finished, ok, files_copied,"
                " bytes_copied, files_skipped_in_progress, corrupt_files, error)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    run.client, run.location, run.trigger, run.started, run.finished, int(run.ok),
                    run.files_copied, run.bytes_copied, run.files_skipped_in_progress,
                    json.dumps(run.corrupt_files), run.error,
                ),
            )
            self.connection.execute(
                "INSERT INTO location_state (client, location) VALUES (?, ?)"
                " ON CONFLICT (client, location) DO NOTHING",
                (run.client, run.location),
            )
            self.connection.execute(
                "UPDATE location_state SET last_attempt=?,"
                " last_success=CASE WHEN ? THEN ? ELSE last_success END,"
                " last_error=?,"
                " consecutive_failures=CASE WHEN ? THEN 0 WHEN ? THEN consecutive_failures"
                " ELSE consecutive_failures + 1 END,"
                " bytes_copied_total=bytes_copied_total + ?, files_copied_total=files_copied_total + ?"
                " WHERE client=? AND location=?",
                (
                    run.finished, int(run.ok), run.finished, _run_error(run), int(run.ok), int(run.interrupted),
                    run.bytes_copied, run.files_copied, run.client, run.location,
                ),
            )
            row = self.connection.execute(
                "SELECT consecutive_failures FROM location_state WHERE client=? AND location=?",
                (run.client, run.location),
            ).fetchone()
        return int(row[0])

    @locked
    def note_unsettled(self, client: str, files: dict[str, tuple[str, int, float | None]],
                       settled: list[str], now: float) -> dict[str, float]:
        """Remember the primary files a run could not take ({path: (outcome, size, mtime)}) and
        forget the ``settled`` ones; return since when each of ``files`` has been unsettled
        (reset when its size or time changed: it is being written)."""
        with self.connection:
            self.connection.executemany("DELETE FROM unsettled_files WHERE client=? AND path=?",
                                        [(client, path) for path in settled])
            for path, (outcome, size, mtime) in files.items():
                self.connection.execute(
                    "INSERT INTO unsettled_files (client, path, outcome, size, mtime, first_seen, last_seen)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (client, path) DO UPDATE SET"
                    " first_seen=CASE WHEN size IS excluded.size AND mtime IS excluded.mtime"
                    "  THEN first_seen ELSE excluded.first_seen END,"
                    " outcome=excluded.outcome, size=excluded.size, mtime=excluded.mtime,"
                    " last_seen=excluded.last_seen",
                    (client, path, outcome, size, mtime, now, now))
            rows = self.connection.execute(
                "SELECT path, first_seen FROM unsettled_files WHERE client=?", (client,)).fetchall()
        return {row[0]: row[1] for row in rows if row[0] in files}

    @locked
    def unsettled_files(self, client: str) -> list[UnsettledRow]:
        """The client's primary files the last runs could not take, oldest first."""
        rows = self.connection.execute(
            "SELECT path, outcome, size, mtime, first_seen, last_seen FROM unsettled_files"
            " WHERE client=? ORDER BY first_seen, path", (client,)).fetchall()
        return [UnsettledRow(*row) for row in rows]

    @locked
    def forget_unsettled(self, client: str, paths: list[str]) -> None:
        """The files are settled or gone from the primary."""
        with self.connection:
            self.connection.executemany("DELETE FROM unsettled_files WHERE client=? AND path=?",
                                        [(client, path) for path in paths])

    @locked
    def last_clean_run_start(self, client: str, location: str) -> float | None:
        """When the location's last run that left nothing behind started; None when never."""
        row = self.connection.execute(
            "SELECT MAX(started) FROM runs WHERE client=? AND location=? AND ok=1"
            " AND files_skipped_in_progress=0 AND corrupt_files='[]'", (client, location)).fetchone()
        return None if row is None or row[0] is None else float(row[0])

    @locked
    def last_run_start(self, client: str, location: str) -> float | None:
        """When the location's last run (of the daemon or the CLI, whatever its outcome) started;
        None when never."""
        row = self.connection.execute("SELECT MAX(started) FROM runs WHERE client=? AND location=?",
                                      (client, location)).fetchone()
        return None if row is None or row[0] is None else float(row[0])

    @locked
    def location_health(self, client: str) -> dict[str, sqlite3.Row]:
        rows = self.connection.execute("SELECT * FROM location_state WHERE client=?", (client,)).fetchall()
        return {row["location"]: row for row in rows}

    @locked
    def set_failure_notified(self, client: str, location: str, notified: bool) -> None:
        with self.connection:
            self.connection.execute(
                "UPDATE location_state SET failure_notified=? WHERE client=? AND location=?",
                (int(notified), client, location),
            )

    @locked
    def replication_lag(self, client: str, location: str, now: float) -> float:
        """Seconds since the oldest primary snapshot the location lacks arrived; 0 when none."""
        row = self.connection.execute(
            "SELECT MIN(p.first_seen) FROM snapshots p WHERE p.client=? AND p.location=?"
            " AND p.gone_since IS NULL AND NOT EXISTS (SELECT 1 FROM snapshots r"
            "  WHERE r.client=p.client AND r.location=? AND r.snapshot_id=p.snapshot_id"
            "  AND r.gone_since IS NULL)",
            (client, PRIMARY, location),
        ).fetchone()
        return max(0.0, now - row[0]) if row and row[0] is not None else 0.0

    @locked
    def location_metrics(self, now: float, client: str | None = None) -> dict[tuple[str, str], dict[str, Any]]:
        """Per (client, location) that has run at least once: the numbers metrics export.

        Keys of each value: last_success (0 when never), consecutive_failures,
        failed_runs, bytes_copied_total, files_copied_total, snapshots (present at
        the location at its last listing), lag (seconds, as :meth:`replication_lag`),
        newest (the arrival on the server of the newest snapshot the location holds,
        None when it holds none), last_attempt, last_error and first_run (when its
        first recorded run started).
        One query for every pair (or ``client``'s), so a scrape of a thousand clients stays cheap.
        """
        rows = self.connection.execute(
            "SELECT ls.client, ls.location, ls.last_success, ls.consecutive_failures,"
            " ls.bytes_copied_total, ls.files_copied_total, ls.last_attempt, ls.last_error,"
            " (SELECT MIN(r.started) FROM runs r WHERE r.client=ls.client AND r.location=ls.location)"
            "  AS first_run,"
            " (SELECT MAX(COALESCE(p.first_seen, s.first_seen)) FROM snapshots s LEFT JOIN snapshots p"
            "  ON p.client=s.client AND p.location=? AND p.snapshot_id=s.snapshot_id"
            "  WHERE s.client=ls.client AND s.location=ls.location AND s.gone_since IS NULL) AS newest,"
            " (SELECT COUNT(*) FROM runs r WHERE r.client=ls.client AND r.location=ls.location"
            "  AND r.ok=0) AS failed_runs,"
            " (SELECT COUNT(*) FROM snapshots s WHERE s.client=ls.client AND s.location=ls.location"
            "  AND s.gone_since IS NULL) AS snapshots,"
            " (SELECT MIN(p.first_seen) FROM snapshots p WHERE p.client=ls.client AND p.location=?"
            "  AND p.gone_since IS NULL AND NOT EXISTS (SELECT 1 FROM snapshots r"
            "   WHERE r.client=p.client AND r.location=ls.location AND r.snapshot_id=p.snapshot_id"
            "   AND r.gone_since IS NULL)) AS oldest_missing"
            " FROM location_state ls WHERE ? IS NULL OR ls.client=?",
            (PRIMARY, PRIMARY, client, client),
        ).fetchall()
        return {
            (row["client"], row["location"]): {
                "last_success": row["last_success"] or 0.0,
                "consecutive_failures": row["consecutive_failures"],
                "failed_runs": row["failed_runs"],
                "bytes_copied_total": row["bytes_copied_total"],
                "files_copied_total": row["files_copied_total"],
                "snapshots": row["snapshots"],
                "lag": 0.0 if row["oldest_missing"] is None else max(0.0, now - row["oldest_missing"]),
                "newest": row["newest"],
                "last_attempt": row["last_attempt"],
                "last_error": row["last_error"],
                "first_run": row["first_run"],
            }
            for row in rows
        }

    @locked
    def source_corrupt_files(self, client: str) -> set[str]:
        """The primary's files the newest run to each location found corrupt (paths in the repository)."""
        rows = self.connection.execute(
            "SELECT corrupt_files FROM runs AS r WHERE client=? AND id = (SELECT MAX(id) FROM runs"
            " WHERE client=r.client AND location=r.location)", (client,),
        ).fetchall()
        return {path for row in rows for path in json.loads(row[0])}


    @locked
    def newest_primary_snapshots(self) -> dict[str, float]:
        """Client -> arrival of the newest snapshot present in its primary (clients with one)."""
        return {client: newest for client, (_count, newest) in self.primary_snapshots().items()}

    @locked
    def primary_snapshots(self) -> dict[str, tuple[int, float]]:
        """Client -> (snapshots present in its primary, arrival of the newest), in one query."""
        rows = self.connection.execute(
            "SELECT client, COUNT(*), MAX(first_seen) FROM snapshots WHERE location=? AND gone_since IS NULL"
            " GROUP BY client", (PRIMARY,),
        ).fetchall()
        return {row[0]: (row[1], row[2]) for row in rows}

    @locked
    def arrivals(self, client: str, since: float) -> dict[str, dict[str, float]]:
        """Location ('@primary' too) -> {snapshot ID: first seen there} for snapshots seen since ``since``."""
        rows = self.connection.execute(
            "SELECT location, snapshot_id, first_seen FROM snapshots WHERE client=? AND first_seen>=?"
            " ORDER BY first_seen", (client, since),
        ).fetchall()
        found: dict[str, dict[str, float]] = {}
        for row in rows:
            found.setdefault(row[0], {})[row[1]] = row[2]
        return found

    @locked
    def copied_since(self, client: str, location: str, since: float, trigger: str) -> tuple[int, int]:
        """(files, bytes) copied to ``location`` by runs of ``trigger`` started since ``since``."""
        row = self.connection.execute(
            "SELECT COALESCE(SUM(files_copied), 0), COALESCE(SUM(bytes_copied), 0) FROM runs"
            " WHERE client=? AND location=? AND trigger=? AND started>=?", (client, location, trigger, since),
        ).fetchone()
        return int(row[0]), int(row[1])

    def recent_runs(self, client: str | None, since: float, limit: int) -> list[sqlite3.Row]:
        """The newest runs started since ``since`` (of one client, or all), newest first."""
        where, parameters = ("client=? AND ", [client]) if client is not None else ("", [])
        return self.connection.execute(
            f"SELECT * FROM runs WHERE {where}started>=? ORDER BY started DESC LIMIT ?",
            [*parameters, since, limit],
        ).fetchall()


def _run_error(run: RunRecord) -> str | None:
    if run.error:
        return run.error
    if run.corrupt_files:
        return f"{len(run.corrupt_files)} corrupt file(s) in the source: {', '.join(run.corrupt_files[:3])}"
    return None
