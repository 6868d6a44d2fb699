"""``type = "sftp"``: a folder on another machine over SFTP (asyncssh; restic runs ssh)."""

from __future__ import annotations

import os
import posixpath
import shlex
import shutil
from pathlib import Path
from typing import Literal

from pydantic import Field

from triplicate.config.types import AbsolutePath, LocationSettings
from triplicate.storage.backend import Backend, StorageError
from triplicate.storage.kinds.kind import LocationKind, Opening, ResticTarget


class SftpLocation(LocationSettings):
    """A folder on another machine over SFTP; docs/locations.md."""

    type: Literal["sftp"]
    host: str = Field(min_length=1)
    port: int = Field(default=22, ge=1, le=65535)
    user: str | None = None
    path: str = Field(min_length=1)
    identity_file: AbsolutePath | None = None
    known_hosts_file: AbsolutePath | None = None

    def known_hosts(self) -> Path:
        """The known_hosts file host keys are checked against (strictly)."""
        return self.known_hosts_file or Path.home() / ".ssh" / "known_hosts"

    def url(self, client: str) -> str:
        user = f"{self.user}@" if self.user else ""
        path = posixpath.join(self.path, client)
        return f"sftp://{user}{self.host}:{self.port}{'' if path.startswith('/') else '/~/'}{path}"


def _open(settings: SftpLocation, opening: Opening) -> Backend:
    from triplicate.storage.sftp import SftpBackend, SftpTarget

    target = SftpTarget(settings.host, settings.port, settings.user, settings.path, settings.identity_file,
                        settings.known_hosts())
    return SftpBackend(target, opening.client, f"{opening.location} ({settings.url(opening.client)})",
                       opening.workers)


def _restic(settings: SftpLocation, opening: Opening) -> ResticTarget:
    """restic's sftp: repository. restic runs ``ssh`` from PATH: the environment's PATH
    starts with a folder (under the state folder) whose ``ssh`` adds the location's port,
    identity and known_hosts, with host keys checked strictly."""
    user = f"{settings.user}@" if settings.user else ""
    wrapper = _ssh_wrapper(opening.state_dir / "ssh" / opening.location, settings)
    path = os.pathsep.join([str(wrapper), os.environ.get("PATH", os.defpath)])
    return ResticTarget(f"sftp:{user}{settings.host}:{posixpath.join(settings.path, opening.client)}",
                        {"PATH": path})


def _ssh_wrapper(folder: Path, settings: SftpLocation) -> Path:
    """Write ``folder/ssh``, the ssh restic runs for this location, when it differs; returns ``folder``."""
    from triplicate.fsutil import atomic_write

    ssh = shutil.which("ssh") or "/usr/bin/ssh"
    argv = [ssh, "-F", "/dev/null", "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=yes",
            "-o", f"UserKnownHostsFile={settings.known_hosts()}", "-p", str(settings.port)]
    if settings.identity_file is not None:
        argv += ["-o", "IdentitiesOnly=yes", "-i", str(settings.identity_file)]
    script = ("#!/bin/sh\n# Written by triplicate for restic's sftp: backend (docs/locations.md).\n"
              f'exec {shlex.join(argv)} "$@"\n')
    path = folder / "ssh"
    try:
        if not path.exists() or path.read_text() != script:
            folder.mkdir(parents=True, exist_ok=True)
            atomic_write(path, script, mode=0o755)
    except OSError as error:
        raise StorageError(f"cannot write {path}: {error.strerror or error}") from None
    return folder


KIND = LocationKind("sftp", SftpLocation, _open, _restic)
