"""What the daemon looks at to notice a new snapshot: the primary's snapshot file names, and
whether a new snapshot file is whole (it hashes to its name: a few kB). Opens regular files
only, without blocking, so that a FIFO never hangs the daemon."""

from __future__ import annotations

import hashlib
import logging
import os
import stat
from pathlib import Path

from triplicate.engine.judgement import Outcome, judge_mismatch
from triplicate.storage.handle import is_id

log = logging.getLogger("triplicate.daemon")

# Snapshot files are a few kB; a bigger one is left to the mirror's own verification.
MAX_HASHED_SNAPSHOT = 64 << 20


def snapshot_names(folder: Path) -> set[str]:
    """The snapshot IDs in ``folder`` (names of 64 hex digits); empty when it cannot be listed."""
    try:
        return {name for name in os.listdir(folder) if is_id(name)}
    except (FileNotFoundError, NotADirectoryError):
        return set()
    except OSError as error:
        log.warning("cannot list %s: %s", folder, error.strerror)
        return set()


def unchanged(path: Path, size: int, mtime: float | None) -> bool:
    """Whether the file still has this size and modification time (one stat)."""
    try:
        status = os.stat(path, follow_symlinks=False)
    except OSError:
        return False
    return status.st_size == size and status.st_mtime == mtime


def snapshot_status(path: Path, now: float, grace: float) -> Outcome | None:
    """None when the snapshot file hashes to its name (or cannot be judged here: the run will
    read it and report it), else :func:`judge_mismatch`'s outcome (VANISHED when it is gone).
    Opens regular files only, without blocking (a FIFO never hangs the daemon)."""
    try:
        descriptor = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except FileNotFoundError:
        return Outcome.VANISHED
    except OSError:
        return None
    try:
        status = os.fstat(descriptor)
        if not stat.S_ISREG(status.st_mode) or status.st_size > MAX_HASHED_SNAPSHOT:
            return None
        with os.fdopen(descriptor, "rb", closefd=False) as file:
            content = file.read(MAX_HASHED_SNAPSHOT + 1)
    except OSError:
        return None
    finally:
        os.close(descriptor)
    if hashlib.sha256(content).hexdigest() == path.name:
        return None
    return judge_mismatch(status.st_mtime, now, grace)
