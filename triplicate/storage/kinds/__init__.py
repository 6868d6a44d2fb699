"""The registry of location kinds: each kind's module declares its configuration section,
how triplicate opens it and how restic reaches it. config/model.py builds the
``[locations.*]`` schema from it, storage/__init__.py opens locations through it.

Adding a kind: a backend module implementing storage.backend.Backend, a module here with
its ``KIND``, an entry in ``KINDS`` below, and an entry in the conformance suite
(tests/test_storage_conformance.py). Nothing else dispatches on the kind.
Kind modules stay light: a backend's library is imported only when a location of
that kind is opened.
"""

from __future__ import annotations

from typing import Any

from triplicate.storage.kinds import local, rclone, rest, s3, sftp
from triplicate.storage.kinds.kind import LocationKind, Opening, ResticTarget

__all__ = ["KINDS", "LocationKind", "Opening", "ResticTarget", "kind_of"]

KINDS: dict[str, LocationKind[Any]] = {kind.name: kind for kind in (local.KIND, sftp.KIND, s3.KIND, rest.KIND,
                                                                     rclone.KIND)}


def kind_of(settings: Any) -> LocationKind[Any]:
    """The kind a validated location section belongs to (by its ``type``)."""
    return KINDS[settings.type]
