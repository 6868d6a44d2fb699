"""Opening the state database. Feature modules declare their own tables.

The database lives at ``<state_dir>/state.db`` in WAL mode so that the daemon,
the CLI and a metrics scrape can read while one of them writes.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

DATABASE_NAME = "state.db"
# The primary repository's name in tables keyed by location (no location name can
# contain '@', so it never clashes with a configured one).
PRIMARY = "@primary"


def database_path(state_dir: Path) -> Path:
    return state_dir / DATABASE_NAME


def connect(state_dir: Path, schema: str = "") -> sqlite3.Connection:
    """Open (creating when needed) the database and make sure ``schema`` exists.

    ``schema`` is idempotent DDL (``CREATE TABLE IF NOT EXISTS``) of the caller's
    tables. The connection may be shared across threads with the caller's lock.
    """
    state_dir.mkdir(parents=True, exist_ok=True, mode=0o750)
    connection = sqlite3.connect(
        database_path(state_dir), timeout=30, isolation_level=None, check_same_thread=False
    )
    connection.row_factory = sqlite3.Row
    connection.execute("PRAGMA journal_mode=WAL")
    connection.execute("PRAGMA synchronous=NORMAL")
    connection.execute("PRAGMA foreign_keys=ON")
    if schema:
        connection.executescript(schema)
    return connection
