"""What the REST endpoint counts per client: requests, bytes, files, refusals, the newest snapshot.

The endpoint keeps its counts in memory and adds them here every few seconds
(and when it stops), so a request never waits on the database; a kill -9 loses
at most the last few seconds of counts, never a file.

Counter names: ``bytes_received``, ``files_received``, ``auth_failures``,
``requests:<METHOD>:<status>`` and ``rejected:<reason>`` (hash, quota,
disk_full, exists, short_body, bad_request, forbidden, ...).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from triplicate.state.db import Store, locked

SCHEMA = """
CREATE TABLE IF NOT EXISTS endpoint_counters (
    client  TEXT NOT NULL,
    counter TEXT NOT NULL,
    value   INTEGER NOT NULL,
    PRIMARY KEY (client, counter)
);
CREATE TABLE IF NOT EXISTS endpoint_clients (
    client           TEXT PRIMARY KEY,
    newest_snapshot  REAL,             -- when the newest snapshot file landed
    repository_bytes INTEGER,          -- the repository's size as the endpoint last knew it
    updated          REAL NOT NULL
);
"""


@dataclass
class EndpointCounts:
    """One client's endpoint figures, as ``status`` shows them."""

    counters: dict[str, int] = field(default_factory=dict)
    newest_snapshot: float | None = None
    repository_bytes: int | None = None
    updated: float | None = None

    def requests(self) -> dict[str, int]:
        """``{"POST 200": n, ...}``: requests by method and status."""
        return {name.removeprefix("requests:").replace(":", " "): value
                for name, value in sorted(self.counters.items()) if name.startswith("requests:")}

    def rejected(self) -> dict[str, int]:
        """``{"hash": n, "quota": n, ...}``: refused uploads by reason."""
        return {name.removeprefix("rejected:"): value
                for name, value in sorted(self.counters.items()) if name.startswith("rejected:")}

    def figures(self) -> dict[str, object]:
        """What ``status`` and the web service show of them: received bytes and files, the
        repository's size, failed logins, refused uploads and requests."""
        return {"received_bytes": self.counters.get("bytes_received", 0),
                "files": self.counters.get("files_received", 0),
                "repository_bytes": self.repository_bytes,
                "failed_logins": self.counters.get("auth_failures", 0),
                "rejected": self.rejected(), "requests": self.requests()}


class EndpointState(Store):
    """The endpoint's per-client counters. Every method is one transaction."""

    SCHEMA = SCHEMA

    @locked
    def add(self, client: str, deltas: dict[str, int], newest_snapshot: float | None,
            repository_bytes: int | None, when: float) -> None:
        """Add ``deltas`` to the client's counters and record its newest snapshot and size."""
        with self.connection:
            self.connection.executemany(
                "INSERT INTO endpoint_counters (client, counter, value) VALUES (?, ?, ?)"
                " ON CONFLICT (client, counter) DO UPDATE SET value = value + excluded.value",
                [(client, name, value) for name, value in sorted(deltas.items()) if value],
            )
            self.connection.execute(
                "INSERT INTO endpoint_clients (client, newest_snapshot, repository_bytes, updated)"
                " VALUES (?, ?, ?, ?) ON CONFLICT (client) DO UPDATE SET"
                " newest_snapshot = max(coalesce(newest_snapshot, 0), coalesce(excluded.newest_snapshot, 0)),"
                " repository_bytes = coalesce(excluded.repository_bytes, repository_bytes),"
                " updated = excluded.updated",
                (client, newest_snapshot, repository_bytes, when),
            )

    @locked
    def counts(self, client: str) -> EndpointCounts:
        """The client's figures; empty when its endpoint never reported."""
        rows = self.connection.execute("SELECT counter, value FROM endpoint_counters WHERE client=?", (client,))
        result = EndpointCounts(counters={row[0]: int(row[1]) for row in rows})
        row = self.connection.execute(
            "SELECT newest_snapshot, repository_bytes, updated FROM endpoint_clients WHERE client=?", (client,)
        ).fetchone()
        if row is not None:
            result.newest_snapshot = float(row[0]) if row[0] else None
            result.repository_bytes = None if row[1] is None else int(row[1])
            result.updated = float(row[2])
        return result
