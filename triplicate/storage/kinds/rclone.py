"""``type = "rclone"``: any rclone remote, reached through ``rclone rcd``."""

from __future__ import annotations

import re
from typing import Annotated, Literal

from pydantic import AfterValidator

from triplicate.config.types import AbsolutePath, LocationSettings
from triplicate.storage.backend import Backend
from triplicate.storage.kinds.kind import LocationKind, Opening, ResticTarget


def _rclone_remote(value: str) -> str:
    if not re.fullmatch(r"[^:\s/][^:]*:\S*", value):
        raise ValueError("expected an rclone remote such as 'b2:bucket/path' (a configured remote's name, ':', a path)")
    if "]" in value or "//" in value.split(":", 1)[1]:
        # rclone's object server (loads) addresses a file as "[remote]/path": it cannot name these.
        raise ValueError("']' and '//' are not supported in an rclone remote")
    return value


RcloneRemote = Annotated[str, AfterValidator(_rclone_remote)]


class RcloneLocation(LocationSettings):
    """Any rclone remote, reached through ``rclone rcd``; docs/locations.md."""

    type: Literal["rclone"]
    remote: RcloneRemote
    rclone_config: AbsolutePath | None = None


def _open(settings: RcloneLocation, opening: Opening) -> Backend:
    from triplicate.storage.rclone import RcloneBackend, join_remote

    return RcloneBackend(settings.remote, settings.rclone_config, opening.client,
                         f"{opening.location} ({join_remote(settings.remote, opening.client)})", opening.workers,
                         bwlimit=settings.bwlimit, location=opening.location, state_dir=opening.state_dir)


def _restic(settings: RcloneLocation, opening: Opening) -> ResticTarget:
    from triplicate.storage.rclone import join_remote, rclone_environment

    return ResticTarget(f"rclone:{join_remote(settings.remote, opening.client)}",
                        rclone_environment(settings.rclone_config))


# rclone copies the files itself: it is given the bwlimit (storage/rclone_server.py).
KIND = LocationKind("rclone", RcloneLocation, _open, _restic, own_bandwidth=True)
