"""The storage layer: one backend interface, one implementation per kind of location."""

from __future__ import annotations

import os
import posixpath
import shlex
import shutil
from pathlib import Path
from urllib.parse import quote, urlsplit, urlunsplit

from triplicate.config.model import (
    Config, LocalLocation, RcloneLocation, RestLocation, S3Location, SftpLocation,
)
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
    """The client's replica at a configured location (``<path or prefix>/<client>``).

    Opening does no I/O and never fails: an unreachable server or unreadable
    credentials surface as StorageError from the backend's first call (prepare), so
    one bad location never stops the others. Remote kinds retry transient failures.
    """
    settings = config.locations[location]
    workers = settings.workers or config.server.workers
    if isinstance(settings, LocalLocation):
        return LocalBackend(settings.path / client, f"{location} ({settings.path / client})", workers,
                            mount_point=settings.mount_point)
    from triplicate.storage.retry import RetryingBackend

    return RetryingBackend(_open_remote(settings, location, client, workers))


def _open_remote(settings: SftpLocation | S3Location | RestLocation | RcloneLocation, location: str, client: str,
                 workers: int) -> Backend:
    # Each kind's library is imported only when a location of that kind is used.
    if isinstance(settings, SftpLocation):
        from triplicate.storage.sftp import SftpBackend, SftpTarget

        target = SftpTarget(settings.host, settings.port, settings.user, settings.path, settings.identity_file,
                            _known_hosts(settings))
        return SftpBackend(target, client, f"{location} ({_sftp_url(settings, client)})", workers)
    if isinstance(settings, S3Location):
        from triplicate.storage.s3 import S3Backend, S3Target

        s3_target = S3Target(settings.endpoint, settings.bucket, settings.prefix, settings.region,
                             settings.credentials_file)
        return S3Backend(s3_target, client, f"{location} (s3://{settings.bucket}/{_s3_key(settings, client)})",
                         workers)
    if isinstance(settings, RestLocation):
        from triplicate.storage.rest import RestBackend, RestTarget

        rest_target = RestTarget(settings.url, settings.username, settings.password_file, settings.cacert)
        return RestBackend(rest_target, client, f"{location} ({settings.url.rstrip('/')}/{client}/)", workers)
    from triplicate.storage.rclone import RcloneBackend, join_remote

    return RcloneBackend(settings.remote, settings.rclone_config, client,
                         f"{location} ({join_remote(settings.remote, client)})", workers)


def restic_repository(config: Config, location: str | None, client: str) -> tuple[str, dict[str, str]]:
    """How restic itself opens the client's repository at ``location`` (None: the primary).

    Returns restic's repository string (a path, or ``sftp:``/``s3:``/``rest:``/``rclone:``
    for remote kinds) and the environment variables it needs on top of the current
    one: credentials travel there, never in argv. Give the string to restic as
    RESTIC_REPOSITORY, never as ``-r``: a REST location's string holds its password
    (restic 0.14 reads REST credentials only from the URL); mask it in logs.
    For SFTP, restic runs ``ssh`` from PATH: the environment's PATH starts with a
    folder (under the state folder) whose ``ssh`` adds the location's port, identity
    and known_hosts, with host keys checked strictly. Raises StorageError when a
    credentials file cannot be read.
    """
    if location is None:
        return str(config.primary_dir(client)), {}
    settings = config.locations[location]
    if isinstance(settings, LocalLocation):
        return str(settings.path / client), {}
    if isinstance(settings, SftpLocation):
        user = f"{settings.user}@" if settings.user else ""
        wrapper = _ssh_wrapper(config.server.state_dir / "ssh" / location, settings)
        path = os.pathsep.join([str(wrapper), os.environ.get("PATH", os.defpath)])
        return f"sftp:{user}{settings.host}:{posixpath.join(settings.path, client)}", {"PATH": path}
    if isinstance(settings, S3Location):
        from triplicate.storage.s3 import read_credentials

        environment = read_credentials(settings.credentials_file) if settings.credentials_file else {}
        if settings.region:
            environment["AWS_DEFAULT_REGION"] = settings.region
        endpoint = (settings.endpoint or "https://s3.amazonaws.com").rstrip("/")
        return f"s3:{endpoint}/{settings.bucket}/{_s3_key(settings, client)}", environment
    if isinstance(settings, RestLocation):
        from triplicate.storage.rest import read_password

        parts = urlsplit(settings.url.rstrip("/") + f"/{client}/")
        netloc = parts.netloc
        environment = {"SSL_CERT_FILE": str(settings.cacert)} if settings.cacert else {}
        if settings.username is not None:
            password = read_password(settings.password_file) if settings.password_file else ""
            netloc = f"{quote(settings.username, safe='')}:{quote(password, safe='')}@{netloc}"
            # Where restic >= 0.16 reads them; here they also tell callers which value to mask.
            environment.update(RESTIC_REST_USERNAME=settings.username, RESTIC_REST_PASSWORD=password)
        return "rest:" + urlunsplit(parts._replace(netloc=netloc)), environment
    from triplicate.storage.rclone import join_remote, rclone_environment

    return f"rclone:{join_remote(settings.remote, client)}", rclone_environment(settings.rclone_config)


def _known_hosts(settings: SftpLocation) -> Path:
    return settings.known_hosts_file or Path.home() / ".ssh" / "known_hosts"


def _sftp_url(settings: SftpLocation, client: str) -> str:
    user = f"{settings.user}@" if settings.user else ""
    path = posixpath.join(settings.path, client)
    return f"sftp://{user}{settings.host}:{settings.port}{'' if path.startswith('/') else '/~/'}{path}"


def _s3_key(settings: S3Location, client: str) -> str:
    return "/".join(part for part in (settings.prefix.strip("/"), client) if part)


def _ssh_wrapper(folder: Path, settings: SftpLocation) -> Path:
    """Write ``folder/ssh``, the ssh restic runs for this location; returns ``folder``."""
    from triplicate.fsutil import atomic_write

    ssh = shutil.which("ssh") or "/usr/bin/ssh"
    argv = [ssh, "-F", "/dev/null", "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=yes",
            "-o", f"UserKnownHostsFile={_known_hosts(settings)}", "-p", str(settings.port)]
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
