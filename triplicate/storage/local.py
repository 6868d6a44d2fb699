"""A repository in a local folder (a second disk, a mounted share)."""

from __future__ import annotations

import errno
import os
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

from triplicate.fsutil import fsync_directory
from triplicate.storage.backend import FileInfo, NoRepository, NotFound, StorageError, copy_verified
from triplicate.storage.handle import FileType, Handle

# Saves are written here, inside the repository but in a folder restic never reads,
# and renamed into place: a final name only ever holds a complete, fsynced file.
PARTIAL_DIR = ".triplicate-partial"
_HEX2 = frozenset(f"{value:02x}" for value in range(256))
_HEX = "0123456789abcdef"


class LocalBackend:
    """A repository at ``root``; ``root.parent`` is the location's folder."""

    def __init__(self, root: Path, description: str | None = None, connections: int = 4,
                 mount_point: bool = False) -> None:
        self.root = root
        self.description = description or str(root)
        self.connections = connections
        # The location's folder must be a mount point: an unmounted disk leaves an empty
        # folder on the root file system, which must not receive the replica.
        self.mount_point = mount_point
        self._known_dirs: set[Path] = set()

    def prepare(self, create: bool) -> None:
        if create:
            parent = self.root.parent
            if not parent.is_dir():
                raise StorageError(
                    f"location folder {parent} does not exist (not mounted?); "
                    "triplicate never creates it"
                )
            if self.mount_point and not os.path.ismount(parent):
                raise StorageError(f"location folder {parent} is not a mount point (disk not mounted?)")
            try:
                self.root.mkdir(mode=0o700, exist_ok=True)
            except OSError as error:
                raise _storage_error(error, self.root) from None
        elif not self.root.is_dir():
            parent = self.root.parent
            if not parent.is_dir():
                raise StorageError(f"folder {parent} does not exist (not mounted?)")
            if self.mount_point and not os.path.ismount(parent):
                raise StorageError(f"location folder {parent} is not a mount point (disk not mounted?)")
            raise NoRepository(f"no repository at {self.root}")

    def list(self, file_type: FileType) -> Iterator[FileInfo]:
        if file_type is FileType.CONFIG:
            try:
                yield self.stat(Handle(FileType.CONFIG))
            except NotFound:
                pass
            return
        folder = self.root / file_type.value
        if file_type is FileType.DATA:
            for sub in _scan(folder):
                if sub.name in _HEX2 and sub.is_dir(follow_symlinks=False):
                    yield from _files(sub.path)
        else:
            yield from _files(str(folder))

    @contextmanager
    def load(self, handle: Handle, offset: int = 0, length: int | None = None) -> Iterator[BinaryIO]:
        path = self.root / handle.relative_path()
        try:
            file = open(path, "rb")
        except FileNotFoundError:
            raise NotFound(f"{self.description}: {handle} does not exist") from None
        except OSError as error:
            raise _storage_error(error, path) from None
        with file:
            if offset:
                file.seek(offset)
            yield file if length is None else _Limited(file, length)  # type: ignore[misc]

    def save(self, handle: Handle, source: BinaryIO, before_rename: Callable[[str], None] | None = None) -> int:
        """The protocol's save. ``before_rename(partial path)`` runs once the complete file is
        written, verified and fsynced, just before it replaces the final name (to keep the file
        it replaces aside, or give it an owner); if it raises, nothing is replaced."""
        target = self.root / handle.relative_path()
        partial_dir = self.root / PARTIAL_DIR
        try:
            self._ensure_dir(partial_dir)
            descriptor, partial = tempfile.mkstemp(dir=partial_dir, prefix=f"{handle.name[:12]}.")
        except OSError as error:
            raise _storage_error(error, partial_dir) from None
        try:
            with os.fdopen(descriptor, "wb") as out:
                size = copy_verified(handle, source, out.write)
                out.flush()
                os.fsync(out.fileno())
            self._ensure_dir(target.parent)
            if before_rename is not None:
                before_rename(partial)
            os.rename(partial, target)
            fsync_directory(target.parent)
        except BaseException as error:
            _unlink_quietly(partial)
            if isinstance(error, OSError):
                raise _storage_error(error, target) from None
            raise
        return size

    def stat(self, handle: Handle) -> FileInfo:
        path = self.root / handle.relative_path()
        try:
            status = os.stat(path)
        except FileNotFoundError:
            raise NotFound(f"{self.description}: {handle} does not exist") from None
        except OSError as error:
            raise _storage_error(error, path) from None
        return FileInfo(handle.name, status.st_size, status.st_mtime)

    def remove(self, handle: Handle) -> None:
        path = self.root / handle.relative_path()
        try:
            os.unlink(path)
        except FileNotFoundError:
            return
        except OSError as error:
            raise _storage_error(error, path) from None
        fsync_directory(path.parent)

    def discard_partial_saves(self) -> None:
        for entry in _scan(self.root / PARTIAL_DIR):
            _unlink_quietly(entry.path)

    def close(self) -> None:
        pass

    def _ensure_dir(self, path: Path) -> None:
        if path in self._known_dirs:
            return
        if not path.is_dir():
            path.mkdir(mode=0o700, parents=True, exist_ok=True)
            fsync_directory(path.parent)
        self._known_dirs.add(path)


class _Limited:
    """A reader that stops after ``remaining`` bytes."""

    def __init__(self, file: BinaryIO, remaining: int) -> None:
        self._file = file
        self._remaining = remaining

    def read(self, size: int = -1) -> bytes:
        if size < 0 or size > self._remaining:
            size = self._remaining
        data = self._file.read(size)
        self._remaining -= len(data)
        return data


def _scan(folder: Path | str) -> list[os.DirEntry[str]]:
    try:
        with os.scandir(folder) as entries:
            return list(entries)
    except FileNotFoundError:
        return []
    except OSError as error:
        raise _storage_error(error, Path(folder)) from None


class _ListedFile(FileInfo):
    """A listed file whose size and time are read (one stat) only when asked for."""

    __slots__ = ("_folder",)

    def __init__(self, name: str, folder: str) -> None:
        self.name = name
        self._folder = folder
        self._size = None
        self._mtime = None

    def _resolve(self) -> None:
        try:
            status = os.stat(os.path.join(self._folder, self.name))
        except FileNotFoundError:  # removed since the listing: an empty file that loads as NotFound
            self._size, self._mtime = 0, None
            return
        self._size, self._mtime = status.st_size, status.st_mtime


def _files(folder: str) -> list[FileInfo]:
    try:
        names = os.listdir(folder)
    except FileNotFoundError:
        return []
    except OSError as error:
        raise _storage_error(error, Path(folder)) from None
    # is_id inlined: this loop runs once per file of the repository.
    return [_ListedFile(name, folder) for name in names if len(name) == 64 and not name.strip(_HEX)]


def _unlink_quietly(path: str | Path) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def _storage_error(error: OSError, path: Path) -> StorageError:
    reasons = {
        errno.ENOSPC: "disk full",
        errno.EDQUOT: "quota exceeded",
        errno.EACCES: "permission denied",
        errno.EPERM: "permission denied",
        errno.EROFS: "read-only file system",
        errno.ENOENT: "no such file or folder",
        errno.EIO: "input/output error",
    }
    reason = reasons.get(error.errno or 0, error.strerror or str(error))
    return StorageError(f"{path}: {reason}")


