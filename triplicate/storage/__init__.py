"""The storage layer: one backend interface, one implementation per kind of location."""

from __future__ import annotations

from triplicate.config.model import Config
from triplicate.storage.backend import Backend, FileInfo, NotFound, StorageError
from triplicate.storage.handle import FileType, Handle
from triplicate.storage.local import LocalBackend

__all__ = [
    "Backend", "FileInfo", "FileType", "Handle", "NotFound", "StorageError",
    "open_location", "open_primary", "restic_repository",
]


def open_primary(config: Config, client: str) -> Backend:
    """The client's primary repository on this server."""
    return LocalBackend(config.primary_dir(client), f"primary repository {config.primary_dir(client)}")


def open_location(config: Config, location: str, client: str) -> Backend:
    """The client's replica at a configured location (``<path>/<client>``)."""
    settings = config.locations[location]
    workers = settings.workers or config.server.workers
    return LocalBackend(settings.path / client, f"{location} ({settings.path / client})", workers)


def restic_repository(config: Config, location: str | None, client: str) -> tuple[str, dict[str, str]]:
    """How restic itself opens the client's repository at ``location`` (None: the primary).

    Returns restic's repository string (a path, or ``sftp:``/``s3:``/``rest:``/``rclone:``
    for remote kinds) and the environment variables it needs (credentials travel
    there, never in argv).
    """
    if location is None:
        return str(config.primary_dir(client)), {}
    settings = config.locations[location]
    return str(settings.path / client), {}
