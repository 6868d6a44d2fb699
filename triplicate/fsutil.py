"""File-system helpers: durable writes (temporary name, fsync, rename, fsync the folder),
private temporary folders that a killed process's successor cleans, and file hashes."""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def fsync_directory(path: Path) -> None:
    """Make a rename or unlink inside ``path`` durable."""
    descriptor = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def atomic_write(path: Path, data: bytes | str, mode: int = 0o644) -> None:
    """Replace ``path`` with ``data`` so that readers see the old or the new file, never a mix."""
    payload = data.encode("utf-8") if isinstance(data, str) else data
    descriptor, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(descriptor, "wb") as handle:
            handle.write(payload)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(temporary, mode)
        os.replace(temporary, path)
    except BaseException:
        _unlink_quietly(temporary)
        raise
    fsync_directory(path.parent)


def folder_owner(folder: Path) -> tuple[int, int] | None:
    """Whose a file or folder made in ``folder`` must be: the folder's owner when we are root and
    it is another's (a command run by root beside services running as the service user, which
    must still open what root made). None: leave it as made."""
    if os.geteuid() != 0:
        return None
    status = os.stat(folder)
    return None if status.st_uid == 0 else (status.st_uid, status.st_gid)


def open_owned(path: Path, flags: int = os.O_RDWR, mode: int = 0o640) -> int:
    """A descriptor of ``path``, created when missing and then given its folder's owner
    (:func:`folder_owner`). Raises OSError."""
    descriptor = os.open(path, flags | os.O_CREAT, mode)
    try:
        owner = folder_owner(path.parent)
        if owner is not None and os.fstat(descriptor).st_uid != owner[0]:
            os.fchown(descriptor, *owner)
    except OSError:
        os.close(descriptor)
        raise
    return descriptor


def _unlink_quietly(path: str | Path) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def sha256_of(path: Path) -> str:
    """The SHA-256 of a file's content, hex. Raises OSError."""
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def make_private_folder(parent: Path, prefix: str) -> Path:
    """A new folder only this user can enter (0700) under ``parent``; the caller removes it.

    Its name carries this process's ID so that :func:`remove_stale_folders` can tell
    a folder left by a killed process from one in use.
    """
    parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    return Path(tempfile.mkdtemp(prefix=f"{prefix}{os.getpid()}-", dir=parent))


@contextmanager
def private_folder(parent: Path, prefix: str) -> Iterator[Path]:
    """:func:`make_private_folder`, removed whatever happens."""
    folder = make_private_folder(parent, prefix)
    try:
        yield folder
    finally:
        remove_tree(folder)


def remove_tree(folder: Path) -> None:
    """Remove ``folder`` and everything in it, even the read-only folders restic restored."""
    try:
        shutil.rmtree(folder)
    except FileNotFoundError:
        return
    except OSError:
        _make_folders_writable(folder)
        shutil.rmtree(folder)


def _make_folders_writable(folder: Path) -> None:
    os.chmod(folder, 0o700)
    for entry in os.scandir(folder):
        if entry.is_dir(follow_symlinks=False):
            _make_folders_writable(Path(entry.path))


def remove_stale_folders(parent: Path, prefix: str) -> None:
    """Remove the folders :func:`make_private_folder` made with ``prefix`` under ``parent``
    whose process is gone (killed, crashed)."""
    if not parent.is_dir():
        return
    for entry in parent.iterdir():
        match = re.fullmatch(re.escape(prefix) + r"(\d+)-.*", entry.name)
        if match and entry.is_dir() and not _process_alive(int(match.group(1))):
            remove_tree(entry)


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
