"""Opening the state database. Feature modules declare their own tables.

The database lives at ``<state_dir>/state.db`` in WAL mode so that the daemon,
the CLI and a metrics scrape can read while one of them writes.
"""

from __future__ import annotations

import functools
import sqlite3
import stat
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, TypeVar

from triplicate.errors import CannotRun

DATABASE_NAME = "state.db"
# The primary repository's name in tables keyed by location (no location name can
# contain '@', so it never clashes with a configured one).
PRIMARY = "@primary"


def database_path(state_dir: Path) -> Path:
    return state_dir / DATABASE_NAME


class StateDatabaseError(CannotRun):
    """The state database cannot be used (damaged, unreadable, read-only, not a folder): exit 3."""


def database_problem(error: sqlite3.Error | OSError, path: Path) -> StateDatabaseError:
    """The one-line error for ``error`` met using the database at ``path``: what it is and the fix."""
    reason = str(error) if isinstance(error, sqlite3.Error) else (error.strerror or str(error))
    if type(error) is sqlite3.DatabaseError or "malformed" in reason or "not a database" in reason:
        return StateDatabaseError(f"state database {path} is damaged ({reason}); move it aside to start "
                                  "afresh, arrival times will be re-learned")
    if "locked" in reason or "busy" in reason:
        return StateDatabaseError(f"state database {path} is locked by another process ({reason}); "
                                  "try again when it is done")
    return StateDatabaseError(f"state database {path} cannot be used ({reason}): the commands and the "
                              f"daemon need to read and write it and its folder {path.parent}")


def _converts_errors(method: Callable[..., Any]) -> Callable[..., Any]:
    """Turn what SQLite raises about the database file itself into StateDatabaseError.

    Errors of the SQL (a constraint, a misuse) are the program's own and go through.
    """

    @functools.wraps(method)
    def wrapper(self: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return method(self, *args, **kwargs)
        except (sqlite3.IntegrityError, sqlite3.ProgrammingError, sqlite3.InterfaceError):
            raise
        except sqlite3.DatabaseError as error:
            path = self.database_path if isinstance(self, _Connection) else self.connection.database_path
            raise database_problem(error, path) from None

    return wrapper


class _Cursor(sqlite3.Cursor):
    """A cursor whose every step reports a damaged or unusable database file in one line."""

    execute = _converts_errors(sqlite3.Cursor.execute)
    executemany = _converts_errors(sqlite3.Cursor.executemany)
    executescript = _converts_errors(sqlite3.Cursor.executescript)
    fetchone = _converts_errors(sqlite3.Cursor.fetchone)
    fetchmany = _converts_errors(sqlite3.Cursor.fetchmany)
    fetchall = _converts_errors(sqlite3.Cursor.fetchall)
    __next__ = _converts_errors(sqlite3.Cursor.__next__)


class _Connection(sqlite3.Connection):
    """A connection that knows its file, for the one-line errors of its cursors, and whose
    ``with connection:`` block is one transaction.

    The connection runs in autocommit (``isolation_level=None``), where sqlite3's own ``with``
    begins nothing: each statement of a block was its own transaction, so another process read
    half a record (an audit without its locations) and two writers' blocks interleaved. A block
    now begins with ``BEGIN IMMEDIATE`` (the write lock at once, waiting out the busy timeout:
    a read that later writes could otherwise fail as "locked" at once) and commits at its end,
    or rolls back on an exception; a block inside another, or inside a transaction begun
    otherwise (:func:`one_reading`), joins it and leaves its end to it.
    """

    database_path: Path
    _depth = 0  # ``with`` blocks open (used under the caller's lock, as every statement is)
    _began = False  # whether the outermost block began the transaction (else it joined one)

    def __enter__(self) -> _Connection:
        if self._depth == 0:
            self._began = not self.in_transaction
            if self._began:
                self.execute("BEGIN IMMEDIATE")
        self._depth += 1
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 trace: TracebackType | None, /) -> Literal[False]:
        self._depth -= 1
        if self._depth == 0 and self._began:  # a joined transaction ends where it began
            super().__exit__(kind, error, trace)
        return False

    def cursor(self, factory: Any = _Cursor) -> Any:
        return super().cursor(factory)

    def execute(self, sql: str, parameters: Any = (), /) -> Any:
        return self.cursor().execute(sql, parameters)

    def executemany(self, sql: str, parameters: Iterable[Any], /) -> Any:
        return self.cursor().executemany(sql, parameters)

    def executescript(self, script: str, /) -> Any:
        return self.cursor().executescript(script)

    commit = _converts_errors(sqlite3.Connection.commit)


BUSY_TIMEOUT = 30.0  # seconds a statement waits for another process's write


def _use_wal(connection: _Connection) -> None:
    """Put the database in WAL mode (kept in the file, so a no-op after the first time).

    When two processes create the database at once (two watchers started together), SQLite
    answers "locked" to the second one's switch at once, without waiting out the busy timeout:
    it is tried again, for up to that timeout.
    """
    deadline = time.monotonic() + BUSY_TIMEOUT
    delay = 0.001
    while True:
        try:
            sqlite3.Connection.execute(connection, "PRAGMA journal_mode=WAL")
            return
        except sqlite3.DatabaseError as error:  # damaged, unreadable, or locked
            if "locked" not in str(error) or time.monotonic() >= deadline:
                raise database_problem(error, connection.database_path) from None
        time.sleep(delay)  # a retry's pause: SQLite gives no event to wait on
        delay = min(delay * 2, 0.05)


def connect(state_dir: Path, schema: str = "", create: bool = True) -> sqlite3.Connection:
    """Open (creating when needed) the database and make sure ``schema`` exists.

    ``schema`` is idempotent DDL (``CREATE TABLE IF NOT EXISTS``) of the caller's
    tables. The connection may be shared across threads with the caller's lock.
    Without ``create`` (a command that only reads, such as ``status``) a missing
    database is an empty one in memory: a mistyped ``state_dir`` creates nothing.
    Raises StateDatabaseError (one line: the file and the fix) when the folder or the
    database cannot be used, then and at any later query.
    """
    path = database_path(state_dir)
    try:
        if not stat.S_ISDIR(state_dir.stat().st_mode):
            raise StateDatabaseError(f"server.state_dir {state_dir} is not a folder; point it at a folder "
                                     "(it is made when missing)")
    except FileNotFoundError:
        pass
    except OSError as error:
        raise database_problem(error, path) from None
    try:
        if create:
            state_dir.mkdir(parents=True, exist_ok=True, mode=0o750)
        where = str(path) if create or path.exists() else ":memory:"
    except OSError as error:
        raise database_problem(error, path) from None
    try:
        connection = sqlite3.connect(where, timeout=BUSY_TIMEOUT, isolation_level=None, check_same_thread=False,
                                     factory=_Connection)
    except sqlite3.Error as error:
        raise database_problem(error, path) from None
    assert isinstance(connection, _Connection)
    connection.database_path = path
    try:
        connection.row_factory = sqlite3.Row
        _use_wal(connection)
        connection.execute("PRAGMA synchronous=NORMAL")
        connection.execute("PRAGMA foreign_keys=ON")
        if schema:
            connection.executescript(schema)
    except BaseException:
        connection.close()
        raise
    return connection


@contextmanager
def one_reading(connection: sqlite3.Connection) -> Iterator[None]:
    """Make the block's queries read one state of the database (a deferred transaction: in WAL
    mode a snapshot, which no writer waits for), not each the state after another process's
    latest write. Inside a transaction already, that one is used."""
    if connection.in_transaction:
        yield
        return
    connection.execute("BEGIN")
    try:
        yield
    finally:
        connection.execute("COMMIT")  # nothing written: ends the snapshot


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
