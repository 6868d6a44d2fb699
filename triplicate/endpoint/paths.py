"""What a request path names: a repository, its config, a type folder or one file.

Only the raw request target is read (never a decoded or normalised form), and a
path is accepted only when every segment is one restic could have sent: the
repository's name, a type folder, 64 lowercase hex characters or ``config``. So
``..``, ``%2F``, upper-case hex and doubled slashes are all refused before any
file-system path exists; the paths the endpoint touches are built from the
validated parts alone.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from triplicate.config.model import NAME_PATTERN
from triplicate.storage.handle import FileType, Handle, is_id

TYPE_FOLDERS = {file_type.value: file_type for file_type in FileType if file_type is not FileType.CONFIG}


class BadPath(ValueError):
    """The request path is not one of the restic protocol's: HTTP 400."""


@dataclass(frozen=True)
class Target:
    """A parsed request path: the repository, then a type folder and file, or neither."""

    repository: str
    file_type: FileType | None = None  # None: the repository itself
    name: str | None = None  # None: the type's folder (a listing); "" for config

    @property
    def handle(self) -> Handle | None:
        """The file addressed, or None for the repository or a folder."""
        if self.file_type is FileType.CONFIG:
            return Handle(FileType.CONFIG)
        if self.file_type is None or self.name is None:
            return None
        return Handle(self.file_type, self.name)

    def describe(self) -> str:
        """The path inside the repository, for log lines: ``data/ab12...``, ``keys/``, ``/``."""
        handle = self.handle
        if handle is not None:
            return handle.relative_path()
        return f"{self.file_type.value}/" if self.file_type is not None else "/"


def parse(raw_path: str) -> Target:
    """Parse the raw request path (no query); raises BadPath naming what is wrong."""
    if not raw_path.startswith("/"):
        raise BadPath("the path must start with '/'")
    segments = raw_path[1:].split("/")
    if segments and segments[-1] == "":
        segments.pop()  # one trailing slash: "/repo/" and "/repo/keys/"
    if not segments:
        raise BadPath("no repository in the path")
    repository, rest = segments[0], segments[1:]
    if not NAME_PATTERN.fullmatch(repository):
        raise BadPath(f"invalid repository name {_shown(repository)}")
    if not rest:
        return Target(repository)
    if rest == ["config"] and not raw_path.endswith("/"):
        return Target(repository, FileType.CONFIG, "")
    file_type = TYPE_FOLDERS.get(rest[0])
    if file_type is None:
        raise BadPath(f"unknown file type {_shown(rest[0])}")
    if len(rest) == 1:
        return Target(repository, file_type)
    if len(rest) > 2 or raw_path.endswith("/"):
        raise BadPath("too many path segments")
    if not is_id(rest[1]):
        raise BadPath(f"invalid file name {_shown(rest[1])}: not 64 lowercase hexadecimal characters")
    return Target(repository, file_type, rest[1])


def file_path(repository_dir: Path, handle: Handle) -> Path:
    """Where ``handle`` lives in the repository (data under its two-character sub-folder)."""
    return repository_dir / handle.relative_path()


def _shown(segment: str) -> str:
    """A segment quoted for an error message, cut short."""
    return repr(segment[:80])
