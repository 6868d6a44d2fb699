"""The configuration's schema: pydantic models, one per section of the TOML file.

docs/configuration.md documents every key; keep the two in step.
"""

from __future__ import annotations

import re
import socket
from pathlib import Path
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, StrictBool, model_validator

from triplicate.units import parse_duration, parse_size

NAME_PATTERN = re.compile(r"[a-z0-9][a-z0-9_-]{0,62}")
NAME_RULE = "lowercase letters, digits, '-' and '_', starting with a letter or digit, at most 63"


def check_name(name: object) -> str | None:
    """Return why ``name`` is not a valid client or location name, or None when it is."""
    if not isinstance(name, str) or not NAME_PATTERN.fullmatch(name):
        return f"invalid name {name!r}: use {NAME_RULE}"
    return None


def _duration(value: object) -> float:
    return parse_duration(value)  # type: ignore[arg-type]


def _size(value: object) -> int:
    return parse_size(value)  # type: ignore[arg-type]


def _port_range(value: object) -> tuple[int, int]:
    if isinstance(value, (list, tuple)) and len(value) == 2:
        low, high = value
    elif isinstance(value, str) and re.fullmatch(r"\d+-\d+", value.strip()):
        low, high = (int(part) for part in value.strip().split("-"))
    else:
        raise ValueError("expected a port range such as '8100-8199'")
    if not (1 <= int(low) <= int(high) <= 65535):
        raise ValueError("ports must satisfy 1 <= first <= last <= 65535")
    return int(low), int(high)


def _command(value: list[str]) -> list[str]:
    if value and not value[0]:
        raise ValueError("the program (first element) must not be empty")
    return value


def _absolute(path: Path) -> Path:
    if not path.is_absolute():
        raise ValueError(f"'{path}' must be an absolute path")
    return path


Duration = Annotated[float, BeforeValidator(_duration)]
Size = Annotated[int, BeforeValidator(_size)]
PortRange = Annotated[tuple[int, int], BeforeValidator(_port_range)]
Command = Annotated[list[str], AfterValidator(_command)]
AbsolutePath = Annotated[Path, AfterValidator(_absolute)]
Percent = Annotated[float, Field(ge=0, le=100)]


class Section(BaseModel):
    """Every section refuses unknown keys, so a typo is an error, not a silent default."""

    model_config = ConfigDict(extra="forbid", frozen=True)


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


class LocationSettings(Section):
    """Keys every kind of location has."""

    # files copied at once to this location (its connection limit); server.workers when unset
    workers: int | None = Field(default=None, ge=1, le=64)
    # Replicas are append-only unless this is set: a file gone from the primary for
    # this long is then removed from the replica too (docs/retention.md). At least an
    # hour, so that a listing taken during a prune is never acted on by itself.
    propagate_deletes: Annotated[Duration, Field(ge=3600)] | None = None


class LocalLocation(LocationSettings):
    """A folder on this machine: another disk, a mounted share."""

    type: Literal["local"]
    path: AbsolutePath
    # Refuse to write unless ``path`` is a mount point: for a removable or network
    # disk, whose empty mount folder must never receive a replica on the root disk.
    mount_point: StrictBool = False


def _http_url(value: str) -> str:
    if not re.fullmatch(r"https?://[^/@\s]+(/\S*)?", value):
        raise ValueError("expected an http:// or https:// URL without user or password (those go in "
                         "username and password_file / credentials_file)")
    return value


def _rclone_remote(value: str) -> str:
    if not re.fullmatch(r"[^:\s/][^:]*:\S*", value):
        raise ValueError("expected an rclone remote such as 'b2:bucket/path' (a configured remote's name, ':', a path)")
    if "]" in value or "//" in value.split(":", 1)[1]:
        # rclone's object server (loads) addresses a file as "[remote]/path": it cannot name these.
        raise ValueError("']' and '//' are not supported in an rclone remote")
    return value


def _bucket(value: str) -> str:
    if not re.fullmatch(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]", value):
        raise ValueError("a bucket name is 3 to 63 lowercase letters, digits, '.' and '-'")
    return value


HttpUrl = Annotated[str, AfterValidator(_http_url)]
RcloneRemote = Annotated[str, AfterValidator(_rclone_remote)]
BucketName = Annotated[str, AfterValidator(_bucket)]


class SftpLocation(LocationSettings):
    """A folder on another machine over SFTP; docs/locations.md."""

    type: Literal["sftp"]
    host: str = Field(min_length=1)
    port: int = Field(default=22, ge=1, le=65535)
    user: str | None = None
    path: str = Field(min_length=1)
    identity_file: AbsolutePath | None = None
    known_hosts_file: AbsolutePath | None = None


class S3Location(LocationSettings):
    """A bucket (and prefix) of an S3-compatible object store; docs/locations.md."""

    type: Literal["s3"]
    endpoint: HttpUrl | None = None
    bucket: BucketName
    prefix: str = ""
    region: str | None = None
    credentials_file: AbsolutePath | None = None


class RestLocation(LocationSettings):
    """Another restic REST server (rest-server, rclone serve restic, triplicate); docs/locations.md."""

    type: Literal["rest"]
    url: HttpUrl
    username: str | None = None
    password_file: AbsolutePath | None = None
    cacert: AbsolutePath | None = None


class RcloneLocation(LocationSettings):
    """Any rclone remote, reached through ``rclone rcd``; docs/locations.md."""

    type: Literal["rclone"]
    remote: RcloneRemote
    rclone_config: AbsolutePath | None = None


Location = Annotated[
    LocalLocation | SftpLocation | S3Location | RestLocation | RcloneLocation, Field(discriminator="type")
]
LOCATION_TYPES = ("local", "sftp", "s3", "rest", "rclone")


class Canary(Section):
    path: Annotated[str, Field(pattern=r"^/", description="an absolute path, as restic lists it")]
    min_size: Size = 0
    sha256: Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")] | None = None


class RestoreCheckSettings(Section):
    canaries: list[Canary] = []
    files: int = Field(default=20, ge=1)


class ClientSettings(Section):
    enabled: StrictBool = True
    replicate_to: list[str] = []
    port: int | None = Field(default=None, ge=1, le=65535)
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
    # healthchecks.io-style ping URL: /start, success, /fail (docs/daemon.md, "Heartbeats")
    heartbeat_url: HttpUrl | None = None

    @model_validator(mode="after")
    def _one_key_source(self) -> ClientSettings:
        if self.password_file is not None and self.password_command is not None:
            raise ValueError("password_file and password_command: set one, not both (restic refuses both)")
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
    clients: dict[str, ClientSettings] = {}
    notify: NotifySettings = NotifySettings()
    web: WebSettings = WebSettings()

    def client(self, name: str) -> ClientSettings:
        """The client's settings; raises UsageError naming the client when unknown."""
        from triplicate.errors import UsageError

        try:
            return self.clients[name]
        except KeyError:
            known = ", ".join(sorted(self.clients)) or "none configured"
            raise UsageError(f"unknown client '{name}' (known: {known})") from None

    def primary_dir(self, client: str) -> Path:
        return self.server.repos_dir / client

    def effective(self, client: str, key: str) -> object:
        """A client's own value for ``key``, else the server-wide default."""
        value = getattr(self.client(client), key)
        return getattr(self.server, key) if value is None else value
