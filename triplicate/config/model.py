"""The configuration's schema: pydantic models, one per section of the TOML file.

The ``[locations.*]`` sections are the location kinds' own (storage/kinds/).
docs/configuration.md documents every key; keep the two in step.
"""

from __future__ import annotations

import re
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Literal, TypeVar, Union

from pydantic import AfterValidator, Field, StrictBool, model_validator

from triplicate.config.types import (
    AbsolutePath,
    Command,
    Duration,
    HttpUrl,
    LocationSettings,
    Percent,
    PortRange,
    Section,
    Size,
    TimeOfDay,
    TimeWindow,
)
from triplicate.storage.kinds import KINDS
from triplicate.storage.kinds.local import LocalLocation
from triplicate.storage.kinds.rclone import RcloneLocation
from triplicate.storage.kinds.rest import RestLocation
from triplicate.storage.kinds.s3 import S3Location
from triplicate.storage.kinds.sftp import SftpLocation

__all__ = [
    "LOCATION_TYPES", "AbsolutePath", "ClientSection", "ClientSettings", "Command", "Config", "Duration",
    "LocalLocation", "Location",
    "LocationSettings", "Percent", "PortRange", "RcloneLocation", "RestLocation", "S3Location", "Section",
    "SftpLocation", "Size", "check_name",
]

NAME_PATTERN = re.compile(r"[a-z0-9][a-z0-9_-]{0,62}")
NAME_RULE = "lowercase letters, digits, '-' and '_', starting with a letter or digit, at most 63"


def check_name(name: object) -> str | None:
    """Return why ``name`` is not a valid client or location name, or None when it is."""
    if not isinstance(name, str) or not NAME_PATTERN.fullmatch(name):
        return f"invalid name {name!r}: use {NAME_RULE}"
    return None


class RetentionSettings(Section):
    """restic's own policy words, judged against each snapshot's arrival on the server."""

    keep_last: int | None = Field(default=None, ge=1)
    keep_hourly: int | None = Field(default=None, ge=1)
    keep_daily: int | None = Field(default=None, ge=1)
    keep_weekly: int | None = Field(default=None, ge=1)
    keep_monthly: int | None = Field(default=None, ge=1)
    keep_yearly: int | None = Field(default=None, ge=1)
    keep_within: Duration | None = None
    prune: StrictBool = True
    retention_every: Duration = 86400.0
    max_remove_percent: Percent = 50.0


class ServerSettings(Section):
    state_dir: AbsolutePath = Path("/var/lib/triplicate")
    repos_dir: AbsolutePath = Path("/srv/restic")
    # REST endpoints (see docs/configuration.md, "Serving clients")
    listen_host: str = "0.0.0.0"
    public_host: str = Field(default_factory=socket.gethostname)
    ports: PortRange = (8100, 8199)
    user: str | None = None
    tls_cert: AbsolutePath | None = None
    tls_key: AbsolutePath | None = None
    # the REST endpoint (docs/server.md): which program, one process per client or one for all
    endpoint: Literal["per-client", "shared"] = "per-client"
    endpoint_program: Literal["triplicate", "rclone"] = "triplicate"
    endpoint_idle_timeout: Annotated[Duration, Field(gt=0)] = 60.0
    tls_client_ca: AbsolutePath | None = None
    quota: Size | None = None
    # one watcher per client, or one for all (many clients: docs/server.md, "Sizing")
    syncd: Literal["per-client", "shared"] = "per-client"
    # where the services log: svlogd files under state_dir/log, or journald (docs/server.md, "Logs")
    log: Literal["files", "journald"] = "files"
    # replication defaults, overridable per client or location
    workers: int = Field(default=4, ge=1, le=64)
    in_progress_grace: Duration = 300.0
    poll_interval: Annotated[Duration, Field(gt=0)] = 60.0
    on_change: Command = []
    hook_timeout: Annotated[Duration, Field(gt=0)] = 300.0
    retry_max_backoff: Duration = 3600.0
    # checks
    max_lag: Duration = 3600.0
    expect_backup_every: Duration | None = None
    audit_every: Duration | None = None
    audit_verify_percent: Percent = 0.0
    retention: RetentionSettings | None = None
    recover_drill_every: Duration | None = None


# Every registered kind's section, told apart by its ``type`` (storage/kinds/).
if TYPE_CHECKING:
    Location = LocationSettings
else:
    Location = Annotated[Union[tuple(kind.settings for kind in KINDS.values())],  # noqa: UP007
                         Field(discriminator="type")]
LOCATION_TYPES = tuple(KINDS)


class Canary(Section):
    path: Annotated[str, Field(pattern=r"^/", description="an absolute path, as restic lists it")]
    min_size: Size = 0
    sha256: Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")] | None = None


class RestoreCheckSettings(Section):
    canaries: list[Canary] = []
    files: int = Field(default=20, ge=1)


class ClientSection(Section):
    """``[clients.NAME]`` as written: None means the server-wide value (see ClientSettings)."""

    enabled: StrictBool = True
    replicate_to: list[str] = []
    port: int | None = Field(default=None, ge=1, le=65535)
    quota: Size | None = None
    poll_interval: Annotated[Duration, Field(gt=0)] | None = None
    on_change: Command | None = None
    max_lag: Duration | None = None
    expect_backup_every: Duration | None = None
    audit_every: Duration | None = None
    audit_verify_percent: Percent | None = None
    password_file: AbsolutePath | None = None
    password_command: Annotated[Command, Field(min_length=1)] | None = None
    restore_check_every: Duration | None = None
    restore_check: RestoreCheckSettings = RestoreCheckSettings()
    retention: RetentionSettings | None = None
    recover_drill_every: Duration | None = None
    # healthchecks.io-style ping URL: /start, success, /fail (docs/daemon.md, "Heartbeats")
    heartbeat_url: HttpUrl | None = None
    # When the daemon replicates it (one of the four; engine/schedule.py): at once, or on a schedule.
    replicate: Literal["immediate"] | None = None
    replicate_every: Annotated[Duration, Field(gt=0)] | None = None
    replicate_at: Annotated[list[TimeOfDay], Field(min_length=1)] | None = None
    replicate_window: TimeWindow | None = None

    @model_validator(mode="after")
    def _one_key_source(self) -> ClientSection:
        if self.password_file is not None and self.password_command is not None:
            raise ValueError("password_file and password_command: set one, not both (restic refuses both)")
        scheduled = [key for key in ("replicate", "replicate_every", "replicate_at", "replicate_window")
                     if getattr(self, key) is not None]
        if len(scheduled) > 1:
            raise ValueError(f"{' and '.join(scheduled)}: set one of them, not several (a client replicates "
                             "at once, or every so often, or at set times, or within a window)")
        return self


class NotifySettings(Section):
    urls: list[str] = []
    after_failures: int = Field(default=3, ge=1)


def _bcrypt_hash(value: str) -> str:
    if not re.fullmatch(r"\$2[aby]\$\d\d\$[./A-Za-z0-9]{53}", value):
        raise ValueError("expected a bcrypt hash such as the one 'htpasswd -nBC 12 USER' prints after the ':'")
    return value


BcryptHash = Annotated[str, AfterValidator(_bcrypt_hash)]


class WebSettings(Section):
    """The dashboard, JSON API and /metrics (docs/web.md); off unless ``listen`` is set."""

    listen: str | None = None
    # user name -> bcrypt hash; empty: no login, allowed only on a loopback address
    users: dict[str, BcryptHash] = {}


class Config(Section):
    server: ServerSettings = ServerSettings()
    locations: dict[str, Location] = {}
    clients: dict[str, ClientSection] = {}
    notify: NotifySettings = NotifySettings()
    web: WebSettings = WebSettings()

    def client(self, name: str) -> ClientSection:
        """The client's section as written; raises UsageError naming the client when unknown."""
        from triplicate.errors import UsageError

        try:
            return self.clients[name]
        except KeyError:
            known = ", ".join(sorted(self.clients)) or "none configured"
            raise UsageError(f"unknown client '{name}' (known: {known})") from None

    def primary_dir(self, client: str) -> Path:
        return self.server.repos_dir / client

    def settings(self, client: str) -> ClientSettings:
        """The client's settings with every server-wide default applied; raises UsageError
        naming the client when unknown."""
        section = self.client(client)
        server = self.server

        def either(own: _T | None, default: _T) -> _T:
            return default if own is None else own

        return ClientSettings(
            name=client,
            section=section,
            poll_interval=either(section.poll_interval, server.poll_interval),
            on_change=either(section.on_change, server.on_change),
            max_lag=either(section.max_lag, server.max_lag),
            expect_backup_every=either(section.expect_backup_every, server.expect_backup_every),
            audit_every=either(section.audit_every, server.audit_every),
            audit_verify_percent=either(section.audit_verify_percent, server.audit_verify_percent),
            retention=either(section.retention, server.retention),
            recover_drill_every=either(section.recover_drill_every, server.recover_drill_every),
            quota=either(section.quota, server.quota),
        )


_T = TypeVar("_T")


@dataclass(frozen=True)
class ClientSettings:
    """One client's settings resolved once: its own value where it sets one, else the
    server's. Keys with no server-wide default are read from ``section``."""

    name: str
    section: ClientSection
    poll_interval: float
    on_change: list[str]
    max_lag: float
    expect_backup_every: float | None
    audit_every: float | None
    audit_verify_percent: float
    retention: RetentionSettings | None
    recover_drill_every: float | None
    quota: int | None

    @property
    def has_key(self) -> bool:
        """Whether restic can open the client's repositories (password_file or password_command)."""
        return self.section.password_file is not None or bool(self.section.password_command)
