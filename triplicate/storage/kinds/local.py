"""``type = "local"``: a folder on this machine (another disk, a mounted share)."""

from __future__ import annotations

from typing import Literal

from pydantic import StrictBool

from triplicate.config.types import AbsolutePath, LocationSettings
from triplicate.storage.backend import Backend
from triplicate.storage.kinds.kind import LocationKind, Opening, ResticTarget


class LocalLocation(LocationSettings):
    """A folder on this machine: another disk, a mounted share."""

    type: Literal["local"]
    path: AbsolutePath
    # Refuse to write unless ``path`` is a mount point: for a removable or network
    # disk, whose empty mount folder must never receive a replica on the root disk.
    mount_point: StrictBool = False


def _open(settings: LocalLocation, opening: Opening) -> Backend:
    from triplicate.storage.local import LocalBackend

    folder = settings.path / opening.client
    return LocalBackend(folder, f"{opening.location} ({folder})", opening.workers, mount_point=settings.mount_point)


def _restic(settings: LocalLocation, opening: Opening) -> ResticTarget:
    return ResticTarget(str(settings.path / opening.client))


KIND = LocationKind("local", LocalLocation, _open, _restic, remote=False)
