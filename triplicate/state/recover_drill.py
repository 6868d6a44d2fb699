"""What recovery drills remember: per client, how long rebuilding its repository from the locations took."""

from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass

from triplicate.state.db import Store, locked

SCHEMA = """
CREATE TABLE IF NOT EXISTS recover_drills (
    id            INTEGER PRIMARY KEY,
    client        TEXT NOT NULL,
    time          REAL NOT NULL,     -- when the drill finished
    ok            INTEGER NOT NULL,
    seconds       REAL NOT NULL,     -- the rebuild alone: the recovery time objective measured
    check_seconds REAL,              -- restic check on the rebuilt repository; NULL when not run
    files         INTEGER NOT NULL,
    bytes         INTEGER NOT NULL,
    restic_check  TEXT NOT NULL,     -- 'passed', 'failed' or 'not run' (no key)
    sources       TEXT NOT NULL,     -- JSON {location: bytes taken from it}
    error         TEXT
);
CREATE INDEX IF NOT EXISTS recover_drills_by_client ON recover_drills (client, time);
"""


@dataclass(frozen=True)
class DrillRecord:
    client: str
    time: float
    ok: bool
    seconds: float
    check_seconds: float | None
    files: int
    bytes: int
    restic_check: str
    sources: dict[str, int]
    error: str | None


class RecoverDrillState(Store):
    """Reads and writes the ``recover_drills`` table."""

    SCHEMA = SCHEMA

    @locked
    def record(self, record: DrillRecord) -> bool | None:
        """Store one drill; return the previous drill's ``ok`` (None: the first)."""
        with self.connection:
            previous = self.connection.execute(
                "SELECT ok FROM recover_drills WHERE client=? ORDER BY time DESC, id DESC LIMIT 1", (record.client,),
            ).fetchone()
            self.connection.execute(
                "INSERT INTO recover_drills (client, time, ok, seconds, check_seconds, files, bytes, restic_check,"
                " sources, error) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (record.client, record.time, int(record.ok), record.seconds, record.check_seconds, record.files,
                 record.bytes, record.restic_check, json.dumps(record.sources), record.error),
            )
        return None if previous is None else bool(previous[0])

    @locked
    def last_drill(self, client: str) -> DrillRecord | None:
        row = self.connection.execute(
            "SELECT * FROM recover_drills WHERE client=? ORDER BY time DESC, id DESC LIMIT 1", (client,),
        ).fetchone()
        return None if row is None else _record(row)

    @locked
    def last_drills(self) -> dict[str, DrillRecord]:
        """The newest drill of every client ever drilled (for metrics)."""
        rows = self.connection.execute(
            "SELECT * FROM recover_drills AS d WHERE id = (SELECT id FROM recover_drills WHERE client=d.client"
            " ORDER BY time DESC, id DESC LIMIT 1)").fetchall()
        return {row["client"]: _record(row) for row in rows}


def _record(row: sqlite3.Row) -> DrillRecord:
    return DrillRecord(row["client"], row["time"], bool(row["ok"]), row["seconds"], row["check_seconds"],
                       row["files"], row["bytes"], row["restic_check"], json.loads(row["sources"]), row["error"])
