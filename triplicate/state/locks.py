"""Advisory locks so that one (client, location) is written by one process at a time."""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def location_lock(state_dir: Path, client: str, location: str) -> Iterator[None]:
    """Hold the lock of ``client``'s replica at ``location``; waits while another holds it."""
    folder = state_dir / "locks"
    folder.mkdir(parents=True, exist_ok=True)
    descriptor = os.open(folder / f"{client}@{location}.lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX)
        yield
    finally:
        os.close(descriptor)
