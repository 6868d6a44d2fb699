"""What audits know: when each replica file was last verified, and every audit's outcome.

Two uses: the rotating verification sample (least recently verified first, so
repeated audits cover every file), and the last audit per client and location
for ``status``, notifications and metrics.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from triplicate.state.db import Store, locked, one_reading

SCHEMA = """
CREATE TABLE IF NOT EXISTS verify_stamps (
    client      TEXT NOT NULL,
    location    TEXT NOT NULL,
    type        TEXT NOT NULL,          -- 'keys', 'data', 'index' or 'snapshots'
    name        TEXT NOT NULL,
    verified_at REAL NOT NULL,          -- when its SHA-256 was last compared with its name
    ok          INTEGER NOT NULL,       -- 0: it did not match (corrupt) or could not be read
    PRIMARY KEY (client, location, type, name)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS audits (
    id       INTEGER PRIMARY KEY,
    client   TEXT NOT NULL,
    started  REAL NOT NULL,
    finished REAL NOT NULL,
    status   TEXT NOT NULL,             -- 'OK', 'WARNING', 'CRITICAL' or 'UNKNOWN'
    reason   TEXT NOT NULL,
    report   TEXT NOT NULL              -- the client's part of `audit --json`
);
CREATE INDEX IF NOT EXISTS audits_by_client ON audits (client, id);
CREATE TABLE IF NOT EXISTS audit_locations (
    audit_id INTEGER NOT NULL REFERENCES audits (id) ON DELETE CASCADE,
    location TEXT NOT NULL,
    status   TEXT NOT NULL,
    reason   TEXT NOT NULL,
    report   TEXT NOT NULL,             -- the location's part of `audit --json`
    PRIMARY KEY (audit_id, location)
);
"""

# Audits kept per client: enough history to see a change of state, bounded for a daemon
# that audits every few minutes for years.
HISTORY = 50


@dataclass(frozen=True, slots=True)
class Stamp:
    """The last verification of one file."""

    verified_at: float
    ok: bool


@dataclass(frozen=True, slots=True)
class Verification:
    """One file's verification, to be stored."""

    type: str
    name: str
    verified_at: float
    ok: bool


@dataclass(frozen=True)
class LocationAuditRecord:
    status: str
    reason: str
    report: dict[str, Any]


@dataclass(frozen=True)
class AuditRecord:
    """One stored audit of a client: its overall status and each location's."""

    client: str
    started: float
    finished: float
    status: str
    reason: str
    report: dict[str, Any]
    locations: dict[str, LocationAuditRecord] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        """The client's part of ``audit --json`` as it was, locations included (for metrics)."""
        return {**self.report, "locations": {name: result.report for name, result in self.locations.items()}}


class AuditState(Store):
    """Reads and writes the audit tables; safe to share between an audit's threads."""

    SCHEMA = SCHEMA

    @locked
    def stamps(self, client: str, location: str) -> dict[tuple[str, str], Stamp]:
        """(type, name) -> last verification of every file ever verified at the location."""
        rows = self.connection.execute(
            "SELECT type, name, verified_at, ok FROM verify_stamps WHERE client=? AND location=?",
            (client, location),
        ).fetchall()
        return {(row[0], row[1]): Stamp(row[2], bool(row[3])) for row in rows}

    @locked
    def record_verifications(self, client: str, location: str, done: list[Verification]) -> None:
        with self.connection:
            self.connection.executemany(
                "INSERT INTO verify_stamps (client, location, type, name, verified_at, ok)"
                " VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (client, location, type, name)"
                " DO UPDATE SET verified_at=excluded.verified_at, ok=excluded.ok",
                [(client, location, item.type, item.name, item.verified_at, int(item.ok)) for item in done],
            )

    @locked
    def forget_stamps(self, client: str, location: str, gone: list[tuple[str, str]]) -> None:
        """Drop the stamps of files no longer at the location (pruned)."""
        with self.connection:
            self.connection.executemany(
                "DELETE FROM verify_stamps WHERE client=? AND location=? AND type=? AND name=?",
                [(client, location, file_type, name) for file_type, name in gone],
            )

    @locked
    def record_audit(self, record: AuditRecord) -> None:
        """Store one client's audit (and its locations'); keep the last HISTORY per client."""
        with self.connection:
            cursor = self.connection.execute(
                "INSERT INTO audits (client, started, finished, status, reason, report)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                (record.client, record.started, record.finished, record.status, record.reason,
                 json.dumps(record.report)),
            )
            self.connection.executemany(
                "INSERT INTO audit_locations (audit_id, location, status, reason, report)"
                " VALUES (?, ?, ?, ?, ?)",
                [(cursor.lastrowid, name, result.status, result.reason, json.dumps(result.report))
                 for name, result in record.locations.items()],
            )
            self.connection.execute(
                "DELETE FROM audits WHERE client=? AND id NOT IN"
                " (SELECT id FROM audits WHERE client=? ORDER BY id DESC LIMIT ?)",
                (record.client, record.client, HISTORY),
            )

    @locked
    def last_audit(self, client: str) -> AuditRecord | None:
        """The client's most recent audit, or None when it was never audited."""
        with one_reading(self.connection):  # the audit and its locations as one writer left them
            row = self.connection.execute(
                "SELECT * FROM audits WHERE client=? ORDER BY id DESC LIMIT 1", (client,)
            ).fetchone()
            return None if row is None else self._record(row)

    @locked
    def last_audits(self) -> dict[str, AuditRecord]:
        """Every audited client's most recent audit."""
        with one_reading(self.connection):
            rows = self.connection.execute(
                "SELECT * FROM audits WHERE id IN (SELECT MAX(id) FROM audits GROUP BY client) ORDER BY client"
            ).fetchall()
            return {row["client"]: self._record(row) for row in rows}

    def _record(self, row: Any) -> AuditRecord:
        locations = self.connection.execute(
            "SELECT location, status, reason, report FROM audit_locations WHERE audit_id=? ORDER BY rowid",
            (row["id"],),
        ).fetchall()
        return AuditRecord(
            client=row["client"], started=row["started"], finished=row["finished"], status=row["status"],
            reason=row["reason"], report=json.loads(row["report"]),
            locations={
                item["location"]: LocationAuditRecord(item["status"], item["reason"], json.loads(item["report"]))
                for item in locations
            },
        )


def last_audit(state_dir: Path, client: str) -> AuditRecord | None:
    """The client's most recent audit (for ``status``), or None when never audited."""
    with AuditState.opened(state_dir) as state:
        return state.last_audit(client)


def last_audits(state_dir: Path) -> dict[str, AuditRecord]:
    """Every audited client's most recent audit (for ``status`` and metrics); reads only (a missing
    database is an empty one, never created)."""
    with AuditState.opened(state_dir, create=False) as state:
        return state.last_audits()
