"""A location's limits across processes: files under ``state_dir/limits/<location>/``.

With one watcher process per client (``server.syncd = "per-client"``), and a
``triplicate sync`` run by hand beside them, a location's ``bwlimit`` and ``workers``
hold for the whole server only if the processes share them. They do through small
files, made on demand:

- ``slot-0`` .. ``slot-<workers-1>``: a copy holds one with ``fcntl.flock`` for one
  save. The kernel lets go of it when the holder's process dies, even by kill -9.
- ``waiting/<priority>-<time>-<pid>-<n>``: a copy waiting for a slot publishes its
  priority (the bytes its run has saved) as a file it holds locked; a file nobody holds
  is a dead waiter's and is removed by whoever sees it. A free slot is taken only by a
  copy with fewer waiters ahead of it than slots free, so a small new snapshot of one
  process overtakes another process's long first copy between two of its files.
- ``copier-<pid>``: held locked by a process while it copies to a location whose kind
  limits its bandwidth itself (rclone), so that each takes an even share
  (storage/rclone_server.py).
- ``bucket``: the token bucket's state (tokens, time of ``time.monotonic``, which on
  Linux is one clock for every process), read and rewritten under ``flock`` for each
  chunk paid for.

Waiting for a slot polls every :data:`POLL_SECONDS` (a lock held by another process
wakes no one here, and ``flock`` can neither wait for any one of several files nor let
a waiter with a lower priority go first); a slot released in this process wakes its
waiters at once.
"""

from __future__ import annotations

import contextlib
import fcntl
import itertools
import logging
import os
import struct
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from triplicate.fsutil import folder_owner, open_owned

log = logging.getLogger("triplicate.sync")

POLL_SECONDS = 0.05
LIMITS_DIR = "limits"
_BUCKET = struct.Struct("<dd")  # tokens, time.monotonic() of the last payment
_T = TypeVar("_T")
_warned: set[Path] = set()
_warned_lock = threading.Lock()


def limits_folder(state_dir: Path, location: str) -> Path | None:
    """``state_dir/limits/<location>`` (and its ``waiting`` folder), made when missing (each
    owned as the folder it is made in); None, logged once, when it cannot be made (the limits
    then hold in this process only)."""
    folder = state_dir / LIMITS_DIR / location
    try:
        for path in (state_dir / LIMITS_DIR, folder, folder / "waiting"):
            if not path.is_dir():
                path.mkdir(mode=0o750, exist_ok=True)
                owner = folder_owner(path.parent)
                if owner is not None:
                    os.chown(path, *owner)
        return folder
    except OSError as error:
        warn_once(folder, error)
        return None


def warn_once(path: Path, error: OSError) -> None:
    with _warned_lock:
        if path in _warned:
            return
        _warned.add(path)
    log.warning("%s: limits hold in this process only: %s", path, error.strerror or error)


def _publish(path: Path) -> int:
    """Make ``path`` as a file this process holds locked (made under a dot-name, then renamed,
    so nobody sees it unlocked); returns the descriptor, whose closing lets it go. Raises OSError."""
    partial = path.with_name(f".{path.name}")
    descriptor = open_owned(partial, os.O_RDONLY)
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX)
        os.rename(partial, path)
    except OSError:
        _withdraw(partial, descriptor)
        raise
    return descriptor


def _withdraw(path: Path, descriptor: int) -> None:
    """Remove a file made by :func:`_publish`, then let go of it (removed first: a file seen
    unlocked is a dead process's)."""
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    os.close(descriptor)


def _alive(path: Path) -> bool:
    """Whether a process holds ``path`` (made by :func:`_publish`); a file nobody holds is a dead
    process's and is removed.

    A live holder removes its file before letting go (:func:`_withdraw`), and may publish it
    again under the same name (``copier-<pid>``): a file found unlocked but already removed
    was withdrawn between our opening and our lock, so the name is looked at again rather
    than removed (that would remove the holder's new file, or fail on a name already gone).
    """
    while True:
        try:
            descriptor = os.open(path, os.O_RDONLY)
        except FileNotFoundError:
            return False
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        else:
            if os.fstat(descriptor).st_nlink == 0:
                continue  # withdrawn meanwhile: the name is gone, or another file now
            with contextlib.suppress(FileNotFoundError):  # another looker removed it first
                os.unlink(path)  # its process died
            return False
        finally:
            os.close(descriptor)


class Copiers:
    """The processes copying to a location now: each holds ``copier-<pid>`` in the location's
    limits folder while it has a copy in flight (for a kind that limits its bandwidth itself
    and takes its share of the ``bwlimit``: storage/rclone_server.py)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self._lock = threading.Lock()
        self._active = 0
        self._descriptor: int | None = None

    def enter(self) -> None:
        """One more copy of this process in flight. Raises OSError."""
        with self._lock:
            if self._active == 0:
                self._descriptor = _publish(self.folder / f"copier-{os.getpid()}")
            self._active += 1

    def leave(self) -> None:
        """One copy of this process fewer in flight."""
        with self._lock:
            self._active -= 1
            if self._active == 0 and self._descriptor is not None:
                _withdraw(self.folder / f"copier-{os.getpid()}", self._descriptor)
                self._descriptor = None

    def count(self) -> int:
        """How many processes copy to the location now (this one included when it does)."""
        return sum(_alive(self.folder / name) for name in os.listdir(self.folder) if name.startswith("copier-"))


class BucketFile:
    """A token bucket's state shared by every process: ``(tokens, last)`` in ``<folder>/bucket``,
    where ``folder()`` (called at the first payment) is the location's limits folder, or None
    when there is none."""

    def __init__(self, folder: Callable[[], Path | None]) -> None:
        self._folder = folder
        self.path: Path | None = None
        self._descriptor: int | None = None

    def transact(self, change: Callable[[float, float], tuple[float, float, _T]],
                 monotonic: Callable[[], float] = time.monotonic) -> _T | None:
        """Apply ``change(tokens, last)`` -> ``(tokens, last, result)`` under the file's lock;
        returns ``result``, or None (nothing applied) when there is no folder. A missing or empty
        file, or one from before a reboot (``last`` after ``monotonic()`` read under the lock), is an
        idle bucket: ``(0, now)``.
        The caller excludes its own threads (flock is per open file, shared by every thread of the
        process). Raises OSError."""
        if self._descriptor is None:
            folder = self._folder()
            if folder is None:
                return None
            self.path = folder / "bucket"
            self._descriptor = open_owned(self.path)
        descriptor = self._descriptor
        fcntl.flock(descriptor, fcntl.LOCK_EX)
        try:
            now = monotonic()
            data = os.pread(descriptor, _BUCKET.size, 0)
            tokens, last = _BUCKET.unpack(data) if len(data) == _BUCKET.size else (0.0, now)
            if last > now:
                tokens, last = 0.0, now
            tokens, last, result = change(tokens, last)
            os.pwrite(descriptor, _BUCKET.pack(tokens, last), 0)
            return result
        finally:
            fcntl.flock(descriptor, fcntl.LOCK_UN)

    def close(self) -> None:
        if self._descriptor is not None:
            os.close(self._descriptor)
            self._descriptor = None


class SharedSlots:
    """``count`` copy slots of one location shared by every process (the module's doc)."""

    def __init__(self, folder: Path, count: int) -> None:
        self.folder = folder
        self.count = count
        self._descriptors: dict[int, int] = {}  # slot number -> this process's descriptor of its file
        self._held: set[int] = set()  # slots held by this process's threads
        self._condition = threading.Condition()
        self._order = itertools.count()

    def acquire(self, priority: float) -> int:
        """Wait for a slot, letting waiters with a lower priority (then the earlier) go first;
        returns the slot's number, for :meth:`release`. Raises OSError when the files cannot
        be made."""
        ticket = f"{int(priority):020d}-{time.monotonic_ns():020d}-{os.getpid()}-{next(self._order)}"
        waiting = self.folder / "waiting"
        descriptor = _publish(waiting / ticket)  # held while waiting: the ticket is alive
        try:
            with self._condition:
                while True:
                    ahead = self._ahead(waiting, ticket)
                    slot = None if ahead >= self.count else self._take(ahead)
                    if slot is not None:
                        return slot
                    self._condition.wait(POLL_SECONDS)
        finally:
            _withdraw(waiting / ticket, descriptor)

    def release(self, slot: int) -> None:
        with self._condition:
            fcntl.flock(self._descriptors[slot], fcntl.LOCK_UN)
            self._held.discard(slot)
            self._condition.notify_all()

    def _ahead(self, waiting: Path, ticket: str) -> int:
        """How many live waiters go before ``ticket``, counted up to the number of slots (with
        that many ahead none is ours: each poll opens a few files, however many wait); removes
        dead waiters' tickets."""
        ahead = 0
        for name in sorted(os.listdir(waiting)):
            if name >= ticket or ahead >= self.count:
                break
            if not name.startswith(".") and _alive(waiting / name):
                ahead += 1
        return ahead

    def _take(self, ahead: int) -> int | None:
        """A free slot, taken, when more are free than waiters go before us; else None."""
        free = 0
        for slot in range(self.count):
            if slot in self._held:
                continue
            descriptor = self._descriptors.get(slot)
            if descriptor is None:
                descriptor = self._descriptors[slot] = open_owned(self.folder / f"slot-{slot}")
            try:
                fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                continue
            free += 1
            if free > ahead:
                self._held.add(slot)
                return slot
            fcntl.flock(descriptor, fcntl.LOCK_UN)  # left for a waiter ahead
        return None

    def resize(self, count: int) -> None:
        with self._condition:
            self.count = count
            self._condition.notify_all()
