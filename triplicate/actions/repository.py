"""How restic reaches one client's repository at one location, with the client's key:
the one place the actions (audit, restore check, retention, ...) get restic's
environment, the secrets to mask and whether restic may lock."""

from __future__ import annotations

from dataclasses import dataclass

from triplicate.config.model import Config
from triplicate.restic import restic_environment
from triplicate.storage import restic_target


@dataclass(frozen=True)
class ResticRepository:
    """restic's view of one repository: its full environment (repository, key, backend
    credentials), the secrets to mask in every log line and message, and ``lock``: False
    for replicas, which only triplicate writes, so that reading one never writes to it."""

    location: str | None  # None: the primary
    environment: dict[str, str]
    secrets: list[str]
    lock: bool


def restic_repository(config: Config, client: str, location: str | None) -> ResticRepository:
    """The client's repository at ``location`` (None: the primary), opened with its key.

    Raises StorageError when a location's credentials file cannot be read.
    """
    target = restic_target(config, location, client)
    section = config.client(client)
    environment = restic_environment(target.repository, section.password_file, section.password_command)
    environment.update(target.environment)
    secrets = [secret for secret in target.secrets if len(secret) >= 4]
    return ResticRepository(location, environment, secrets, lock=location is None)
