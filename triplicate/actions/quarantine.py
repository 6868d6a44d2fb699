"""``triplicate quarantine``: move damaged files of a client's primary aside, never deleting them.

A file whose content does not hash to its name holds back every later snapshot
of the client (docs/architecture.md, the mirror). When no location has a good
copy (else ``triplicate heal`` puts one back), moving it into
``state_dir/quarantine/<client>/`` lets replication resume. Heal keeps the
files it replaces there too. Every move is recorded in the state database.
"""

from __future__ import annotations

import errno
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from triplicate.config.model import Config
from triplicate.errors import CannotRun, UsageError
from triplicate.fsutil import fsync_directory
from triplicate.state.locks import client_locks
from triplicate.state.quarantine import QuarantineEntry, QuarantineState
from triplicate.storage import FileType, Handle, StorageError, open_primary
from triplicate.storage.backend import NotFound, hash_file
from triplicate.units import format_duration

QUARANTINE_DIR = "quarantine"


def quarantine_folder(config: Config, client: str) -> Path:
    """Where the client's damaged primary files are kept: ``state_dir/quarantine/<client>``."""
    return config.server.state_dir / QUARANTINE_DIR / client


@dataclass(frozen=True)
class Damaged:
    """A primary file found damaged: its handle, and what its content hashes to (None: unreadable)."""

    handle: Handle
    actual_sha256: str | None


def parse_primary_file(config: Config, client: str, text: str) -> Handle:
    """A FILE argument (``data/ab/<id>``, ``snapshots/<id>``..., or its absolute path in the primary).

    Raises UsageError naming the argument when it is no content-addressed file of a repository.
    """
    path = Path(text)
    if path.is_absolute():
        try:
            path = path.relative_to(config.primary_dir(client))
        except ValueError:
            raise UsageError(f"FILE {text}: not inside {client}'s primary repository "
                             f"{config.primary_dir(client)}") from None
    parts = path.parts
    kinds = {file_type.value: file_type for file_type in (FileType.KEY, FileType.DATA, FileType.INDEX,
                                                           FileType.SNAPSHOT)}
    expected = 3 if parts and parts[0] == FileType.DATA.value else 2
    if len(parts) != expected or parts[0] not in kinds or (expected == 3 and parts[1] != parts[2][:2]):
        raise UsageError(f"FILE {text}: not a file of a restic repository (expected keys/<id>, "
                         "data/<xx>/<id>, index/<id> or snapshots/<id>)")
    try:
        return Handle(kinds[parts[0]], parts[-1])
    except ValueError as error:
        raise UsageError(f"FILE {text}: {error}") from None


def judge_damage(config: Config, client: str, handle: Handle, now: float) -> Damaged:
    """Check that the primary's file is damaged; raises UsageError (nothing done) when it is not.

    A file that cannot be read counts as damaged. A file modified within in_progress_grace
    may still be being written and is refused.
    """
    primary = open_primary(config, client)
    try:
        info = primary.stat(handle)
        grace = config.server.in_progress_grace
        if info.mtime is not None and now - info.mtime < grace:
            raise UsageError(f"FILE {handle}: modified {format_duration(max(0.0, now - info.mtime))} ago, it "
                             f"may still be being written; try again once in_progress_grace "
                             f"({format_duration(grace)}) has passed")
        try:
            actual, _ = hash_file(primary, handle)
        except NotFound:
            raise
        except StorageError:  # unreadable (an I/O error): damaged as far as anyone can tell
            return Damaged(handle, None)
    except StorageError as error:
        raise UsageError(f"FILE {handle}: {error}") from None
    finally:
        primary.close()
    if actual == handle.name:
        raise UsageError(f"FILE {handle}: its content hashes to its name: not damaged, nothing moved")
    return Damaged(handle, actual)


def quarantine_files(config: Config, client: str, files: list[str], now: float | None = None
                     ) -> list[QuarantineEntry]:
    """Move the named damaged primary files into quarantine; return what was moved.

    Every file is judged before any is moved: one good, missing or unknown file raises
    UsageError and nothing moves. Holds the client's replication locks while moving.
    Raises CannotRun when the primary repository is not there.
    """
    config.client(client)
    if not config.primary_dir(client).is_dir():
        raise CannotRun(f"client '{client}': no primary repository at {config.primary_dir(client)}")
    now = time.time() if now is None else now
    handles = list(dict.fromkeys(parse_primary_file(config, client, text) for text in files))
    damaged = [judge_damage(config, client, handle, now) for handle in handles]
    entries = []
    with client_locks(config.server.state_dir, client, config.client(client).replicate_to), \
            QuarantineState.opened(config.server.state_dir) as state:
        for item in damaged:
            entry = keep_aside(config, client, item, "quarantine", move=True)
            state.record(entry)
            entries.append(entry)
    return entries


def keep_aside(config: Config, client: str, damaged: Damaged, reason: str, move: bool,
               source: Path | None = None) -> QuarantineEntry:
    """Put the primary's damaged file (or ``source``, the same file under another name) in quarantine.

    Durably: a hard link (a copy, fsynced, across file systems) under the quarantine folder,
    the folder fsynced, and only then, with ``move``, the primary's name removed. Returns the
    entry to record. Raises StorageError when the file cannot be kept (nothing is removed then).
    """
    original = config.primary_dir(client) / damaged.handle.relative_path()
    path = source or original
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S.%fZ")
    target = quarantine_folder(config, client) / f"{damaged.handle.relative_path()}.{stamp}"
    try:
        size = os.stat(path).st_size
        target.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        _link_or_copy(path, target)
        fsync_directory(target.parent)
        if move:
            os.unlink(path)
            fsync_directory(path.parent)
    except OSError as error:
        raise StorageError(f"cannot keep {original} aside in {target.parent}: "
                           f"{error.strerror or error}") from None
    return QuarantineEntry(client, damaged.handle.relative_path(), str(target), time.time(), size,
                           damaged.actual_sha256, reason)


def _link_or_copy(path: Path, target: Path) -> None:
    """A second name for ``path`` at ``target``: a hard link, else (another file system) a durable copy."""
    try:
        os.link(path, target)
        return
    except OSError as error:
        if error.errno not in (errno.EXDEV, errno.EPERM, errno.EMLINK, errno.ENOTSUP):
            raise
    descriptor, partial = tempfile.mkstemp(dir=target.parent, prefix=".partial.")
    try:
        with os.fdopen(descriptor, "wb") as out, open(path, "rb") as reader:
            shutil.copyfileobj(reader, out, 1 << 20)
            out.flush()
            os.fsync(out.fileno())
        os.rename(partial, target)
    except BaseException:
        try:
            os.unlink(partial)
        except FileNotFoundError:
            pass
        raise
