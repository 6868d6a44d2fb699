"""What quarantine remembers: every damaged primary file kept aside, where it went and why."""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass

from triplicate.state.db import Store, locked

SCHEMA = """
CREATE TABLE IF NOT EXISTS quarantine (
    id            INTEGER PRIMARY KEY,
    client        TEXT NOT NULL,
    file          TEXT NOT NULL,    -- its path in the repository: data/ab/<id>, snapshots/<id>...
    kept_at       TEXT NOT NULL,    -- where it is now: state_dir/quarantine/<client>/...
    time          REAL NOT NULL,
    size          INTEGER NOT NULL,
    actual_sha256 TEXT,             -- what the content hashed to; NULL: unreadable, or not hashed again (heal)
    reason        TEXT NOT NULL     -- 'quarantine' (the command) or 'heal: replaced from <location>'
);
CREATE INDEX IF NOT EXISTS quarantine_by_client ON quarantine (client, time);
"""


@dataclass(frozen=True)
class QuarantineEntry:
    client: str
    file: str
    kept_at: str
    time: float
    size: int
    actual_sha256: str | None
    reason: str

    def to_json(self) -> dict[str, object]:
        return {"file": self.file, "kept_at": self.kept_at, "time": self.time, "size": self.size,
                "actual_sha256": self.actual_sha256, "reason": self.reason}


class QuarantineState(Store):
    """Reads and writes the ``quarantine`` table."""

    SCHEMA = SCHEMA

    @locked
    def record(self, entry: QuarantineEntry) -> None:
        with self.connection:
            self.connection.execute(
                "INSERT INTO quarantine (client, file, kept_at, time, size, actual_sha256, reason)"
                " VALUES (?, ?, ?, ?, ?, ?, ?)",
                (entry.client, entry.file, entry.kept_at, entry.time, entry.size, entry.actual_sha256,
                 entry.reason),
            )

    @locked
    def entries(self, client: str) -> list[QuarantineEntry]:
        """Every file of ``client`` kept aside, oldest first."""
        rows = self.connection.execute("SELECT * FROM quarantine WHERE client=? ORDER BY time, id",
                                       (client,)).fetchall()
        return [_entry(row) for row in rows]


def _entry(row: sqlite3.Row) -> QuarantineEntry:
    return QuarantineEntry(row["client"], row["file"], row["kept_at"], row["time"], row["size"],
                           row["actual_sha256"], row["reason"])
