"""The storage layer: one backend interface, one implementation per kind of location.

Which kinds exist, and how each is opened by triplicate and by restic, is the registry's
(storage/kinds/); this module only looks a location up there.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from triplicate.storage.backend import Backend, FileInfo, NotFound, StorageError
from triplicate.storage.handle import FileType, Handle
from triplicate.storage.kinds import Opening, ResticTarget, kind_of
from triplicate.storage.local import LocalBackend

if TYPE_CHECKING:
    from triplicate.config.model import Config

__all__ = [
    "Backend", "FileInfo", "FileType", "Handle", "NotFound", "ResticTarget", "StorageError",
    "open_location", "open_primary", "restic_target",
]


def open_primary(config: Config, client: str) -> Backend:
    """The client's primary repository on this server."""
    return LocalBackend(config.primary_dir(client), f"primary repository {config.primary_dir(client)}")


def _opening(config: Config, location: str, client: str) -> Opening:
    workers = config.locations[location].workers or config.server.workers
    return Opening(location, client, workers, config.server.state_dir)


def open_location(config: Config, location: str, client: str) -> Backend:
    """The client's replica at a configured location (``<path or prefix>/<client>``).

    Opening does no I/O and never fails: an unreachable server or unreadable
    credentials surface as StorageError from the backend's first call (prepare), so
    one bad location never stops the others. Remote kinds retry transient failures.
    Saves share the location's ``bwlimit`` and copy slots with every other client's,
    in this process and in every other one on the server (storage/throttle.py).
    """
    from triplicate.storage.throttle import ThrottledBackend, location_limits

    settings = config.locations[location]
    kind = kind_of(settings)
    opening = _opening(config, location, client)
    backend = kind.open(settings, opening)
    if kind.remote:
        from triplicate.storage.retry import RetryingBackend

        backend = RetryingBackend(backend)
    limits = location_limits(location, settings.bwlimit, opening.workers, opening.state_dir)
    return ThrottledBackend(backend, limits, throttle_source=not kind.own_bandwidth)


def restic_target(config: Config, location: str | None, client: str) -> ResticTarget:
    """How restic itself opens the client's repository at ``location`` (None: the primary).

    The repository string goes to restic as RESTIC_REPOSITORY, never as ``-r`` (a REST
    location's holds its password); credentials travel in the environment, never in
    argv; every one of the target's secrets is masked in logs. Raises StorageError when
    a credentials file cannot be read.
    """
    if location is None:
        return ResticTarget(str(config.primary_dir(client)))
    settings = config.locations[location]
    return kind_of(settings).restic(settings, _opening(config, location, client))
