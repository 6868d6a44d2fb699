"""Advisory locks so that one (client, location) is written by one process at a time."""

from __future__ import annotations

import fcntl
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path


class LockBusy(Exception):
    """Another process or thread holds the lock (raised only when asked not to wait)."""


@contextmanager
def location_lock(state_dir: Path, client: str, location: str, *,
                  on_wait: Callable[[], None] | None = None, wait: bool = True) -> Iterator[None]:
    """Hold the lock of ``client``'s replica at ``location``; waits while another holds it.

    ``on_wait`` is called once before waiting, so that a command can say why it does
    nothing. Without ``wait`` a held lock raises LockBusy instead.
    """
    folder = state_dir / "locks"
    folder.mkdir(parents=True, exist_ok=True)
    descriptor = os.open(folder / f"{client}@{location}.lock", os.O_RDWR | os.O_CREAT, 0o600)
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
