"""A repository in a local folder (a second disk, a mounted share)."""

from __future__ import annotations

import errno
import os
import stat
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

from triplicate.fsutil import fsync_directory
from triplicate.storage.backend import (
    FileInfo,
    NoRepository,
    NotAFolder,
    NotFound,
    StorageError,
    UnreadableFile,
    copy_verified,
)
from triplicate.storage.handle import FileType, Handle, is_id

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
        try:
            self._prepare(create)
        except OSError as error:
            raise _storage_error(error, self.root) from None

    def _prepare(self, create: bool) -> None:
        parent = self.root.parent
        if create:
            _require_folder(parent, "location folder", "; triplicate never creates it")
            if self.mount_point and not os.path.ismount(parent):
                raise StorageError(f"location folder {parent} is not a mount point (disk not mounted?)")
            self._require_no_stranger()
            try:
                self.root.mkdir(mode=0o700, exist_ok=True)
            except OSError as error:
                raise _storage_error(error, self.root) from None
        elif not self.root.is_dir():
            _require_folder(parent, "folder", "")
            if self.mount_point and not os.path.ismount(parent):
                raise StorageError(f"location folder {parent} is not a mount point (disk not mounted?)")
            self._require_no_stranger()
            raise NoRepository(f"no repository at {self.root}")

    def _require_no_stranger(self) -> None:
        """Raise NotAFolder when something other than a folder is where the client's folder goes."""
        if not self.root.is_dir() and (self.root.exists() or self.root.is_symlink()):
            raise NotAFolder(f"{self.root} is not a folder: nothing can be replicated there (move it aside)")

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
        """Open a regular file for reading, never more than its size when opened.

        Never follows a symbolic link as the file itself and never waits on a FIFO
        or a device: those raise UnreadableFile at once, as does any other error
        reading this one file. Raises NotFound.
        """
        path = self.root / handle.relative_path()
        file = _open_regular(path, f"{self.description}: {handle}")
        with file:
            size = os.fstat(file.fileno()).st_size
            if offset:
                file.seek(offset)
            remaining = max(0, size - offset)
            yield _Limited(file, remaining if length is None else min(length, remaining), path)  # type: ignore[misc]

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
            status = os.lstat(path)
        except FileNotFoundError:
            raise NotFound(f"{self.description}: {handle} does not exist") from None
        except OSError as error:
            raise _unreadable(error, path) from None
        if not stat.S_ISREG(status.st_mode):
            raise UnreadableFile(f"{path}: {_kind(status.st_mode)}, not a regular file")
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
            try:
                _unlink_quietly(entry.path)
            except OSError as error:
                raise _storage_error(error, Path(entry.path)) from None

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
    """A reader of an open file that stops after ``remaining`` bytes (its size when opened).

    Keeps ``name``, ``fileno`` and ``tell`` of the file: a backend that has a local
    file copied by another program (rclone) finds its path through them.
    """

    def __init__(self, file: BinaryIO, remaining: int, path: Path) -> None:
        self._file = file
        self._remaining = remaining
        self._path = path
        self.name = str(path)  # the path, as open() would give it: fdopen gives the descriptor

    def read(self, size: int = -1) -> bytes:
        """Up to ``size`` bytes (all that is left when negative); raises UnreadableFile."""
        if size < 0 or size > self._remaining:
            size = self._remaining
        try:
            data = self._file.read(size) if size else b""
        except OSError as error:
            raise _unreadable(error, self._path) from None
        self._remaining -= len(data)
        return data

    def readinto(self, buffer: bytearray | memoryview) -> int:
        """Fill ``buffer``'s start; returns the byte count (0 at the end); raises UnreadableFile."""
        view = memoryview(buffer)[:self._remaining]
        try:
            count = self._file.readinto(view) if len(view) else 0  # type: ignore[attr-defined]
        except OSError as error:
            raise _unreadable(error, self._path) from None
        self._remaining -= count or 0
        return count or 0

    def fileno(self) -> int:
        return self._file.fileno()

    def tell(self) -> int:
        return self._file.tell()


def lock_times(repository: Path) -> list[float]:
    """The modification times of the restic lock files in a local ``repository``'s ``locks/``
    (restic holds one for a whole backup and refreshes it); empty when there is no such folder."""
    times = []
    try:
        with os.scandir(repository / "locks") as entries:
            for entry in entries:
                if is_id(entry.name):
                    try:
                        times.append(entry.stat(follow_symlinks=False).st_mtime)
                    except OSError:
                        continue  # gone meanwhile: restic removed it
    except OSError:
        return []
    return times


def _open_regular(path: Path, what: str) -> BinaryIO:
    """Open ``path`` for reading if it is a regular file; raises NotFound or UnreadableFile.

    O_NOFOLLOW: a symbolic link in place of the file is refused, never followed (to a
    device, or round in a loop); O_NONBLOCK: opening a FIFO never waits for a writer;
    the type is checked on the opened descriptor, so nothing swapped in between is read.
    """
    try:
        descriptor = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        raise NotFound(f"{what} does not exist") from None
    except OSError as error:
        if error.errno == errno.ELOOP:
            raise UnreadableFile(f"{path}: a symbolic link, not a regular file") from None
        raise _unreadable(error, path) from None
    try:
        mode = os.fstat(descriptor).st_mode
        if not stat.S_ISREG(mode):
            raise UnreadableFile(f"{path}: {_kind(mode)}, not a regular file")
        return os.fdopen(descriptor, "rb")
    except BaseException as error:
        os.close(descriptor)
        if isinstance(error, OSError):
            raise _unreadable(error, path) from None
        raise


def _kind(mode: int) -> str:
    """What a file that is not a regular file is, in words."""
    kinds = ((stat.S_ISDIR, "a folder"), (stat.S_ISLNK, "a symbolic link"), (stat.S_ISFIFO, "a FIFO"),
             (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
             (stat.S_ISSOCK, "a socket"))
    return next((name for test, name in kinds if test(mode)), "a special file")


def _require_folder(path: Path, what: str, hint: str) -> None:
    """Raise StorageError unless ``path`` is a folder (symbolic links followed), saying what it is."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        raise StorageError(f"{what} {path} does not exist (not mounted?){hint}") from None
    except OSError as error:
        raise _storage_error(error, path) from None
    if not stat.S_ISDIR(mode):
        kind = "a file" if stat.S_ISREG(mode) else _kind(mode)
        raise StorageError(f"{what} {path} is {kind}, not a folder")


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
            status = os.lstat(os.path.join(self._folder, self.name))
        except OSError:  # removed since the listing, or unreadable: loading it says which
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


def _unreadable(error: OSError, path: Path) -> UnreadableFile:
    """One file could not be read: the location itself may be fine."""
    return UnreadableFile(str(_storage_error(error, path)))


def _storage_error(error: OSError, path: Path) -> StorageError:
    """A one-line StorageError naming ``path`` and the reason in words."""
    reasons = {
        errno.ENOSPC: "disk full",
        errno.EDQUOT: "quota exceeded",
        errno.EACCES: "permission denied",
        errno.EPERM: "permission denied",
        errno.EROFS: "read-only file system",
        errno.ENOENT: "no such file or folder",
        errno.EIO: "input/output error",
        errno.ELOOP: "too many levels of symbolic links",
    }
    reason = reasons.get(error.errno or 0, error.strerror or str(error))
    return StorageError(f"{path}: {reason}")


