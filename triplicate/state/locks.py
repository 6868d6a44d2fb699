"""Advisory locks so that one (client, location) is written by one process at a time."""

from __future__ import annotations

import fcntl
import os
from collections.abc import Callable, Iterable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

from triplicate.errors import CannotRun
from triplicate.fsutil import open_owned
from triplicate.state.db import PRIMARY


class LockBusy(Exception):
    """Another process or thread holds the lock (raised only when asked not to wait)."""


@contextmanager
def location_lock(state_dir: Path, client: str, location: str, *,
                  on_wait: Callable[[], None] | None = None, wait: bool = True) -> Iterator[None]:
    """Hold the lock of ``client``'s replica at ``location``; waits while another holds it.

    ``on_wait`` is called once before waiting, so that a command can say why it does
    nothing. Without ``wait`` a held lock raises LockBusy instead. Raises CannotRun (one
    line naming the file) when the lock file cannot be made or opened.
    """
    folder = state_dir / "locks"
    path = folder / f"{client}@{location}.lock"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        descriptor = open_owned(path, mode=0o600)  # made by root: the service user's, as its folder
    except OSError as error:
        raise CannotRun(f"cannot open the lock file {path}: {error.strerror or error}") from None
    try:
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if not wait:
                raise LockBusy(f"{client} -> {location}") from None
            if on_wait is not None:
                on_wait()
            fcntl.flock(descriptor, fcntl.LOCK_EX)
        yield
    finally:
        os.close(descriptor)


@contextmanager
def client_locks(state_dir: Path, client: str, locations: Iterable[str]) -> Iterator[None]:
    """Hold the locks of every given location of ``client`` (and of its primary, '@primary').

    Taken in sorted order: a sync holds one lock at a time, so this never deadlocks with
    one. Heal, recover and quarantine hold them so that nothing else writes meanwhile.
    """
    with ExitStack() as stack:
        for location in sorted({*locations, PRIMARY}):
            stack.enter_context(location_lock(state_dir, client, location))
        yield
