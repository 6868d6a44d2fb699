"""Opening the state database. Feature modules declare their own tables.

The database lives at ``<state_dir>/state.db`` in WAL mode so that the daemon,
the CLI and a metrics scrape can read while one of them writes.
"""

from __future__ import annotations

import functools
import sqlite3
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

DATABASE_NAME = "state.db"
# The primary repository's name in tables keyed by location (no location name can
# contain '@', so it never clashes with a configured one).
PRIMARY = "@primary"


def database_path(state_dir: Path) -> Path:
    return state_dir / DATABASE_NAME


def connect(state_dir: Path, schema: str = "", create: bool = True) -> sqlite3.Connection:
    """Open (creating when needed) the database and make sure ``schema`` exists.

    ``schema`` is idempotent DDL (``CREATE TABLE IF NOT EXISTS``) of the caller's
    tables. The connection may be shared across threads with the caller's lock.
    Without ``create`` (a command that only reads, such as ``status``) a missing
    database is an empty one in memory: a mistyped ``state_dir`` creates nothing.
    """
    if create:
        state_dir.mkdir(parents=True, exist_ok=True, mode=0o750)
    where = database_path(state_dir) if create or database_path(state_dir).exists() else ":memory:"
    connection = sqlite3.connect(where, timeout=30, isolation_level=None, check_same_thread=False)
    connection.row_factory = sqlite3.Row
    connection.execute("PRAGMA journal_mode=WAL")
    connection.execute("PRAGMA synchronous=NORMAL")
    connection.execute("PRAGMA foreign_keys=ON")
    if schema:
        connection.executescript(schema)
    return connection


class Store:
    """A feature's view of the database: its own tables, one shared connection.

    Subclasses set ``SCHEMA`` (idempotent DDL). The connection may be used by
    several threads (a sync's locations, a metrics scrape): methods hold
    ``self._lock`` (or are decorated with :func:`locked`) so that transactions
    never interleave.
    """

    SCHEMA = ""

    def __init__(self, state_dir: Path, create: bool = True) -> None:
        self.connection = connect(state_dir, self.SCHEMA, create)
        self._lock = threading.RLock()

    def close(self) -> None:
        self.connection.close()

    @classmethod
    @contextmanager
    def opened(cls: type[StoreType], state_dir: Path, create: bool = True) -> Iterator[StoreType]:
        """The store, open for the ``with`` block: ``with AuditState.opened(dir) as state:``."""
        store = cls(state_dir, create)
        try:
            yield store
        finally:
            store.close()


StoreType = TypeVar("StoreType", bound=Store)
Method = TypeVar("Method", bound=Callable[..., Any])


def locked(method: Method) -> Method:
    """Run a Store method under the store's lock: one transaction at a time."""

    @functools.wraps(method)
    def wrapper(self: Store, *args: Any, **kwargs: Any) -> Any:
        with self._lock:
            return method(self, *args, **kwargs)

    return wrapper  # type: ignore[return-value]
