"""``triplicate init``: the server's folders and a first configuration, idempotently."""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass, field
from pathlib import Path

import tomlkit

from triplicate.config.load import load_config, parse_config
from triplicate.config.model import Config
from triplicate.errors import UsageError
from triplicate.fsutil import atomic_write
from triplicate.service.scripts import Programs
from triplicate.service.tree import check_service_settings, make_folder, owner_ids, reconcile
from triplicate.state.db import connect, database_path

INITIAL_CONFIG = """\
# triplicate's configuration, made by 'triplicate init'. Every key: docs/configuration.md,
# serving clients: docs/server.md.

[server]
state_dir = {state_dir}   # state database, service tree, htpasswd files, logs
repos_dir = {repos_dir}   # primary repositories, one folder per client
# Each client gets its own append-only REST endpoint on a port of this range:
#   rest:http://NAME:PASSWORD@{public_host_plain}:PORT/NAME/   (https when tls_cert and tls_key are set)
listen_host = {listen_host}
public_host = {public_host}
ports = {ports}
{user_line}
# tls_cert = "/etc/triplicate/tls/fullchain.pem"
# tls_key = "/etc/triplicate/tls/privkey.pem"

# Where replicas go, one section per location:
# [locations.usb]
# type = "local"
# path = "/mnt/usb/restic"

# Clients: 'triplicate client add NAME --replicate-to LOCATION' writes their sections here.
"""


@dataclass
class InitReport:
    config_path: Path
    config_written: bool
    changes: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class InitOptions:
    state_dir: Path | None = None
    repos_dir: Path | None = None
    listen_host: str | None = None
    public_host: str | None = None
    ports: str | None = None
    user: str | None = None


def init_server(config_path: Path, options: InitOptions) -> InitReport:
    """Write a first configuration at ``config_path`` unless one exists, then create the folders.

    Running it again changes nothing. Raises ConfigError for an invalid existing
    file, UsageError when an option contradicts the existing file.
    """
    exists = config_path.exists()
    if exists:
        config = load_config(config_path)
        _check_options_match(config, options)
    else:
        text = initial_config(options)
        config = parse_config(text, str(config_path))
    # Refuse what cannot be served before writing anything.
    check_service_settings(config, str(config_path))
    programs = Programs.find()
    owner = owner_ids(config)
    if not exists:
        config_path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(config_path, text, mode=0o640)
        if owner is not None:  # the services read it as that user
            os.chown(config_path, 0, owner[1])
    report = InitReport(config_path, not exists)
    for folder in (config.server.state_dir, config.server.repos_dir):
        if make_folder(folder, owner, 0o750):
            report.changes.append(f"created {folder}")
    if owner is not None:
        report.changes += _hand_state_to(config.server.state_dir, owner)
    report.changes += reconcile(config, config_path.absolute(), programs).changes
    return report


def _hand_state_to(state_dir: Path, owner: tuple[int, int]) -> list[str]:
    """Make the state database and the locks and limits folders the service user's.

    The watchers run as that user and write both; made by root later they would be
    root's. (SQLite, when root opens a database, gives its journal files the
    database's owner, so root's commands keep working on a user-owned database.)
    """
    changes = []
    database = database_path(state_dir)
    if not database.exists():
        connect(state_dir).close()
        changes.append(f"created {database}")
    if (database.stat().st_uid, database.stat().st_gid) != owner:
        os.chown(database, *owner)
    for folder in (state_dir / "locks", state_dir / "limits"):
        if make_folder(folder, owner, 0o750):
            changes.append(f"created {folder}")
    return changes


def initial_config(options: InitOptions) -> str:
    user_line = '# user = "triplicate"   # services run as this user (when started as root)'
    if options.user:
        user_line = f"user = {_toml(options.user)}   # services run as this user (when started as root)"
    public_host = options.public_host or socket.gethostname()  # the model's default, as documented
    return INITIAL_CONFIG.format(
        state_dir=_toml(options.state_dir or "/var/lib/triplicate"),
        repos_dir=_toml(options.repos_dir or "/srv/restic"),
        listen_host=_toml(options.listen_host or "0.0.0.0"),
        public_host=_toml(public_host),
        public_host_plain=public_host,
        ports=_toml(options.ports or "8100-8199"),
        user_line=user_line,
    )


def _toml(value: object) -> str:
    """``value`` as a TOML string, quoted and escaped."""
    return tomlkit.string(str(value)).as_string()


def _check_options_match(config: Config, options: InitOptions) -> None:
    """An option that contradicts the existing file is a mistake, not an edit."""
    server = config.server
    given = {
        "state_dir": (options.state_dir, server.state_dir),
        "repos_dir": (options.repos_dir, server.repos_dir),
        "listen_host": (options.listen_host, server.listen_host),
        "public_host": (options.public_host, server.public_host),
        "user": (options.user, server.user),
    }
    for key, (wanted, current) in given.items():
        if wanted is not None and str(wanted) != str(current):
            raise UsageError(f"--{key.replace('_', '-')} {wanted}: the configuration exists and says "
                             f"server.{key} = {current!s}; edit the file to change it")
    if options.ports is not None and options.ports.replace(" ", "") != f"{server.ports[0]}-{server.ports[1]}":
        raise UsageError(f"--ports {options.ports}: the configuration exists and says server.ports = "
                         f"{server.ports[0]}-{server.ports[1]}; edit the file to change it")
