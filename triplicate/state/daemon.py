"""What the daemon remembers across restarts: the last on_change hook run, and periodic job stamps.

Replication itself (snapshots per location, health, runs) lives in
state/replication.py; these tables only hold what the scheduler needs to honour
"since the last hook run" and "every 1d" after a restart.
"""

from __future__ import annotations

from triplicate.state.db import Store

SCHEMA = """
CREATE TABLE IF NOT EXISTS hook_runs (
    client     TEXT PRIMARY KEY,
    last_run   REAL NOT NULL,          -- when the client's on_change hook last ran
    last_ok    INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS hook_snapshots (
    client      TEXT NOT NULL,         -- the primary's snapshot IDs as of that run: the next
    snapshot_id TEXT NOT NULL,         -- run is told what was added and removed since
    PRIMARY KEY (client, snapshot_id)
);
CREATE TABLE IF NOT EXISTS job_runs (
    client     TEXT NOT NULL,
    job        TEXT NOT NULL,          -- 'audit', 'restore-check', ...
    last_run   REAL NOT NULL,          -- when its last run started
    last_ok    INTEGER NOT NULL,
    last_error TEXT,
    PRIMARY KEY (client, job)
);
"""



class DaemonState(Store):
    """Reads and writes the daemon's tables. Every method is one transaction."""

    SCHEMA = SCHEMA

    def hook_baseline(self, client: str) -> set[str] | None:
        """The primary's snapshot IDs when the client's hook last ran; None if it never ran."""
        with self._lock:
            if self.connection.execute("SELECT 1 FROM hook_runs WHERE client=?", (client,)).fetchone() is None:
                return None
            rows = self.connection.execute("SELECT snapshot_id FROM hook_snapshots WHERE client=?", (client,))
            return {row[0] for row in rows}

    def record_hook_run(self, client: str, snapshots: set[str], when: float, ok: bool) -> None:
        """Remember that the hook ran for ``snapshots`` (the new baseline)."""
        with self._lock, self.connection:
            self.connection.execute(
                "INSERT INTO hook_runs (client, last_run, last_ok) VALUES (?, ?, ?)"
                " ON CONFLICT (client) DO UPDATE SET last_run=excluded.last_run, last_ok=excluded.last_ok",
                (client, when, int(ok)),
            )
            self.connection.execute("DELETE FROM hook_snapshots WHERE client=?", (client,))
            self.connection.executemany(
                "INSERT INTO hook_snapshots (client, snapshot_id) VALUES (?, ?)",
                [(client, snapshot) for snapshot in sorted(snapshots)],
            )

    def job_last_run(self, client: str, job: str) -> float | None:
        """When ``job`` last started for ``client`` (and finished); None if never."""
        with self._lock:
            row = self.connection.execute(
                "SELECT last_run FROM job_runs WHERE client=? AND job=?", (client, job)
            ).fetchone()
            return None if row is None else float(row[0])

    def hook_last_run(self, client: str) -> tuple[float, bool] | None:
        """When the client's on_change hook last ran and whether it succeeded; None if never."""
        with self._lock:
            row = self.connection.execute("SELECT last_run, last_ok FROM hook_runs WHERE client=?",
                                          (client,)).fetchone()
            return None if row is None else (float(row[0]), bool(row[1]))

    def job_runs(self, client: str) -> list[tuple[str, float, bool, str | None]]:
        """Each scheduled job's last finished run for ``client``: (job, started, ok, error), by job."""
        with self._lock:
            rows = self.connection.execute(
                "SELECT job, last_run, last_ok, last_error FROM job_runs WHERE client=? ORDER BY job", (client,))
            return [(row[0], float(row[1]), bool(row[2]), row[3]) for row in rows]

    def record_job_run(self, client: str, job: str, started: float, ok: bool, error: str | None) -> None:
        with self._lock, self.connection:
            self.connection.execute(
                "INSERT INTO job_runs (client, job, last_run, last_ok, last_error) VALUES (?, ?, ?, ?, ?)"
                " ON CONFLICT (client, job) DO UPDATE SET last_run=excluded.last_run,"
                " last_ok=excluded.last_ok, last_error=excluded.last_error",
                (client, job, started, int(ok), error),
            )
