"""Answers computed from the state database, kept until the database changes or they get old.

A thousand clients make a scrape or a grid cost a few hundred milliseconds of
queries and rendering; between two backups nothing changes but the clock. An
answer is reused while SQLite's ``PRAGMA data_version`` (which moves whenever
another connection commits) and the configuration are the same, for at most
``max_age`` seconds, so that time-based values (a lag, an age) stay fresh.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Callable, Hashable
from pathlib import Path
from typing import Any

from triplicate.state.db import database_path, database_problem


class DatabaseVersion:
    """A read-only connection that tells whether anyone committed since the last look."""

    def __init__(self, state_dir: Path) -> None:
        self._path = database_path(state_dir)
        self._connection: sqlite3.Connection | None = None
        self._lock = threading.Lock()

    def current(self) -> tuple[int, int]:
        """An opaque value that changes with every commit by another connection ((0, 0): no database).

        Raises StateDatabaseError (one line: the file and the fix) when the database cannot be read.
        """
        with self._lock:
            try:
                if self._connection is None:
                    if not self._path.exists():
                        return (0, 0)
                    self._connection = sqlite3.connect(f"file:{self._path}?mode=ro", uri=True,
                                                       check_same_thread=False)
                return (id(self._connection), int(self._connection.execute("PRAGMA data_version").fetchone()[0]))
            except sqlite3.Error as error:  # damaged, unreadable: the one-line error; opened afresh next time
                if self._connection is not None:
                    self._connection.close()
                    self._connection = None
                raise database_problem(error, self._path) from None

    def close(self) -> None:
        with self._lock:
            if self._connection is not None:
                self._connection.close()
                self._connection = None


class Cached:
    """One value per key, recomputed when the database version or key changes, or after ``max_age`` s.

    A value that is only old (the database did not change) is still answered at once
    while a background thread computes the fresh one; a value the database changed
    under is computed before answering, so a change always shows at the next request.
    """

    def __init__(self, version: DatabaseVersion, max_age: float) -> None:
        self._version = version
        self._max_age = max_age
        self._entries: dict[Hashable, tuple[tuple[int, int], float, Any]] = {}
        self._refreshing: set[Hashable] = set()
        self._lock = threading.Lock()

    def get(self, key: Hashable, compute: Callable[[], Any]) -> Any:
        """The value for ``key``: the stored one while still valid, else ``compute()`` (stored)."""
        version = self._version.current()
        with self._lock:
            entry = self._entries.get(key)
            if entry is not None and entry[0] == version:
                if time.monotonic() - entry[1] >= self._max_age and key not in self._refreshing:
                    self._refreshing.add(key)
                    threading.Thread(target=self._refresh, args=(key, compute, version), daemon=True).start()
                return entry[2]
        return self._store(key, compute, version)

    def _store(self, key: Hashable, compute: Callable[[], Any], version: tuple[int, int]) -> Any:
        started = time.monotonic()
        value = compute()
        with self._lock:
            self._entries[key] = (version, started, value)
        return value

    def _refresh(self, key: Hashable, compute: Callable[[], Any], version: tuple[int, int]) -> None:
        try:
            self._store(key, compute, version)
        except Exception:  # the next request computes it in the foreground and reports the error
            with self._lock:
                self._entries.pop(key, None)
        finally:
            with self._lock:
                self._refreshing.discard(key)
