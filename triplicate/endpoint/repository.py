"""A client's primary repository as the endpoint writes it: verified, durable, append-only.

An upload is streamed into a temporary file in the repository's partial folder
(``.triplicate-partial/``, which restic and the mirror never read), hashed on
the way, and only when its SHA-256 is its name is it fsynced, hard-linked under
its final name (which fails when the name exists: two concurrent uploads of one
name cannot both land, and nothing is ever overwritten), and the folder fsynced.
A crash at any instant leaves either nothing or the whole file under the final
name; what is left in the partial folder is removed when the endpoint starts.
"""

from __future__ import annotations

import errno
import hashlib
import os
import tempfile
import threading
from pathlib import Path

from triplicate.fsutil import fsync_directory
from triplicate.storage.backend import FileInfo
from triplicate.storage.handle import FileType, Handle
from triplicate.storage.local import PARTIAL_DIR, LocalBackend

FOLDERS = ("keys", "locks", "snapshots", "index", "data")


class Exists(Exception):
    """The name is taken (append-only): HTTP 403."""


class HashMismatch(Exception):
    """The body's SHA-256 is not the file's name: HTTP 400."""


class QuotaExceeded(Exception):
    """The upload would take the repository past its quota: HTTP 507."""


class Repository:
    """One client's repository folder, with the bytes it holds and reserves counted for the quota."""

    def __init__(self, root: Path, quota: int | None = None) -> None:
        self.root = root
        self.quota = quota
        self.backend = LocalBackend(root)
        self._lock = threading.Lock()
        self._used: int | None = None  # bytes of final files, counted on first need
        self._reserved = 0  # bytes of uploads in flight

    @property
    def partial_dir(self) -> Path:
        return self.root / PARTIAL_DIR

    def exists(self) -> bool:
        return self.root.is_dir()

    def discard_partial_uploads(self) -> None:
        """Remove what crashed uploads left in the partial folder (called at start)."""
        if self.root.is_dir():
            self.backend.discard_partial_saves()

    def create(self) -> bool:
        """Create the repository's folders; return False (changing nothing) when it has a config already."""
        if (self.root / "config").exists():
            return False
        self.root.mkdir(mode=0o700, parents=True, exist_ok=True)
        for name in FOLDERS:
            folder = self.root / name
            if not folder.is_dir():
                folder.mkdir(mode=0o700)
        fsync_directory(self.root)
        return True

    def listing(self, file_type: FileType) -> list[FileInfo]:
        """The final files of one type (data from every sub-folder)."""
        return list(self.backend.list(file_type))

    def used(self) -> int:
        """Bytes held in final files (walked once, then kept up to date by the uploads)."""
        with self._lock:
            if self._used is not None:
                return self._used
        # Walked without the lock, which the event loop takes to end an upload.
        total = sum(info.size for file_type in FileType for info in self.backend.list(file_type))
        with self._lock:
            if self._used is None:
                self._used = total
            return self._used

    def reserve(self, size: int) -> None:
        """Count ``size`` bytes against the quota for an upload; raises QuotaExceeded naming the figures."""
        used = self.used()
        with self._lock:
            if self.quota is not None and used + self._reserved + size > self.quota:
                raise QuotaExceeded(
                    f"{size} bytes would pass the quota of {self.quota} bytes "
                    f"({used} used, {self._reserved} being uploaded)"
                )
            self._reserved += size

    def release(self, size: int, landed: bool) -> None:
        """End a reservation; a landed file's bytes now count as used."""
        with self._lock:
            self._reserved -= size
            if landed and self._used is not None:
                self._used += size

    def forget_usage(self) -> None:
        """Count the used bytes again on next need (a file was deleted, or retention ran)."""
        with self._lock:
            self._used = None

    def open_upload(self, handle: Handle) -> Upload:
        """A temporary file for ``handle`` in the partial folder; raises OSError (disk full...)."""
        if not self.partial_dir.is_dir():
            self.partial_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
            fsync_directory(self.root)
        return Upload(self.root, handle)

    def remove_lock(self, name: str) -> bool:
        """Delete a lock file; return False when there was none."""
        folder = self.root / "locks"
        path = folder / Handle(FileType.LOCK, name).name
        try:
            size = path.stat().st_size
            os.unlink(path)
        except FileNotFoundError:
            return False
        fsync_directory(folder)
        with self._lock:
            if self._used is not None:
                self._used -= size
        return True


class Upload:
    """One file being received: written and hashed chunk by chunk, then committed or discarded."""

    def __init__(self, root: Path, handle: Handle) -> None:
        self.root = root
        self.handle = handle
        self.size = 0
        self._digest = hashlib.sha256()
        descriptor, temporary = tempfile.mkstemp(dir=root / PARTIAL_DIR, prefix=f"{handle.name[:12] or 'config'}.")
        self._descriptor: int | None = descriptor
        self.temporary = Path(temporary)

    def write(self, chunk: bytes) -> None:
        """Append ``chunk``; raises OSError (ENOSPC...)."""
        assert self._descriptor is not None
        self._digest.update(chunk)
        view = memoryview(chunk)
        while view:
            written = os.write(self._descriptor, view)
            view = view[written:]
        self.size += len(chunk)

    def commit(self) -> None:
        """Verify, fsync, link under the final name, fsync the folder.

        Raises HashMismatch when the content is not its name, Exists when the name is
        taken, OSError on a failing disk; in every case the temporary file is removed.
        """
        try:
            if self.handle.content_addressed and self._digest.hexdigest() != self.handle.name:
                raise HashMismatch(f"content hashes to {self._digest.hexdigest()[:16]}..., not its name")
            assert self._descriptor is not None
            os.fsync(self._descriptor)
            target = self.root / self.handle.relative_path()
            if not target.parent.is_dir():
                target.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
                fsync_directory(target.parent.parent)
            try:
                os.link(self.temporary, target)  # never replaces: EEXIST when the name is taken
            except FileExistsError:
                raise Exists(f"{self.handle} exists already") from None
            except OSError as error:
                if error.errno not in (errno.EPERM, errno.ENOTSUP, errno.EMLINK):
                    raise
                # A file system without hard links: check, then rename (not atomic against a
                # concurrent upload of the same name, whose content is the same anyway).
                if target.exists():
                    raise Exists(f"{self.handle} exists already") from None
                os.rename(self.temporary, target)
            fsync_directory(target.parent)
        finally:
            self.discard()

    def discard(self) -> None:
        """Close and remove the temporary file (idempotent)."""
        if self._descriptor is not None:
            os.close(self._descriptor)
            self._descriptor = None
        try:
            os.unlink(self.temporary)
        except FileNotFoundError:
            pass
