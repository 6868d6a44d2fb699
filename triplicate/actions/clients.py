"""Client management: add, enable, disable, remove, list.

Every command validates everything before it changes anything; the configuration
file is the source of truth and the service tree is reconciled from it.
"""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from triplicate.config.edit import ConfigEditor, config_lock
from triplicate.config.model import Config, check_name
from triplicate.errors import TriplicateError, UsageError
from triplicate.fsutil import atomic_write
from triplicate.service import htpasswd
from triplicate.service.layout import Layout
from triplicate.service.ports import allocate_port, check_port
from triplicate.service.runit import find_runsvdir, port_answers, supervisors_below
from triplicate.service.scripts import Programs, address
from triplicate.service.tree import (
    check_service_settings,
    make_folder,
    owner_ids,
    reconcile,
    reload_shared_syncd,
    start_wait,
    stop_client,
)


@dataclass(frozen=True)
class AddedClient:
    name: str
    port: int
    password: str
    url: str
    enabled: bool
    running: bool  # its services are supervised now
    reused_repository: bool

    def to_json(self) -> dict[str, object]:
        return {"client": self.name, "url": self.url, "user": self.name, "password": self.password,
                "port": self.port}

    @property
    def restic_init(self) -> str:
        """The one line to run on the client (the URL goes by environment, not argv)."""
        return f"RESTIC_REPOSITORY='{self.url}' restic init"


@dataclass(frozen=True)
class EnableOutcome:
    name: str
    enabled: bool
    running: bool  # enable: its services are supervised; disable: some of its processes are left
    supervised: bool  # a runsvdir watches the top folder
    killed: tuple[int, ...] = ()  # disable: pids of services that ignored TERM and were killed
    port_answers: bool = False  # disable: its port still accepts connections


def repository_url(config: Config, name: str, password: str | None = None) -> str:
    """``rest:http(s)://NAME[:PASSWORD]@HOST:PORT/NAME/`` as a client's restic takes it."""
    scheme = "https" if config.server.tls_cert is not None else "http"
    user = f"{name}:{password}" if password is not None else name
    port = config.clients[name].port
    return f"rest:{scheme}://{user}@{address(config.server.public_host, port or 0)}/{name}/"


def add_client(config_path: Path, name: str, replicate_to: list[str], *, enable: bool = True,
               port: int | None = None, save_password: Path | None = None) -> AddedClient:
    """Add a client: repository folder, credentials, port, configuration, service folder, enabled.

    Raises UsageError (nothing changed) for a bad or existing name, an unknown
    location, a full port range, an existing --save-password file or a bad configuration.
    """
    why = check_name(name)
    if why:
        raise UsageError(f"NAME: {why}")
    with config_lock(config_path):
        editor = ConfigEditor(config_path)
        config = editor.config
        if name in config.clients:
            raise UsageError(f"client '{name}' already exists (see 'triplicate client list')")
        for location in replicate_to:
            if location not in config.locations:
                known = ", ".join(sorted(config.locations)) or "none configured"
                raise UsageError(f"--replicate-to {location}: unknown location (known: {known})")
        if save_password is not None and save_password.exists():
            raise UsageError(f"--save-password {save_password}: exists already (it is never overwritten)")
        if save_password is not None and not save_password.parent.is_dir():
            raise UsageError(f"--save-password {save_password}: no such folder {save_password.parent}")
        if port is not None:
            check_port(config, port)
        else:
            port = allocate_port(config)
        programs = Programs.find()
        values: dict[str, object] = {"replicate_to": list(replicate_to), "port": port}
        if not enable:
            values["enabled"] = False
        editor.add_client(name, values)
        new_config = editor.validated()
        check_service_settings(new_config, str(config_path))
        layout = Layout(new_config.server.state_dir)
        password = htpasswd.generate_password()
        owner = owner_ids(new_config)

        repository = new_config.primary_dir(name)
        reused = repository.is_dir()
        created_repository = make_folder(repository, owner, 0o700)
        try:
            make_folder(layout.htpasswd_root, owner, 0o750)
            htpasswd.write_file(layout.htpasswd(name), name, password, owner)
            if save_password is not None:
                atomic_write(save_password, password + "\n", mode=0o600)
            changed_at = time.time()
            editor.save()
            reconcile(new_config, config_path.absolute(), programs)
        except BaseException:
            _undo_add(config_path, editor.original, layout, name, repository if created_repository else None,
                      save_password)
            raise
    _reload_watcher(new_config, changed_at)
    running = enable and start_wait(layout, name)
    url = repository_url(new_config, name, password)
    return AddedClient(name, port, password, url, enable, running, reused)


def _undo_add(config_path: Path, original: bytes, layout: Layout, name: str, repository: Path | None,
              save_password: Path | None) -> None:
    """Put back what a failed add changed (best effort: the first error is the one reported)."""
    if config_path.read_bytes() != original:
        atomic_write(config_path, original, mode=config_path.stat().st_mode & 0o777)
    stop_client(layout, name)
    shutil.rmtree(layout.client_dir(name), ignore_errors=True)
    for path in (layout.htpasswd(name), save_password):
        if path is not None:
            path.unlink(missing_ok=True)
    if repository is not None:
        shutil.rmtree(repository, ignore_errors=True)


def set_enabled(config_path: Path, name: str, enabled: bool) -> EnableOutcome:
    """Enable or disable a client in the configuration and in supervision.

    Disabling returns once none of the client's processes is left (or after a
    timeout, then running=True says some are). Raises UsageError for an unknown client.
    """
    with config_lock(config_path):
        editor = ConfigEditor(config_path)
        editor.config.client(name)
        changed_at = time.time()
        if editor.config.clients[name].enabled != enabled:
            editor.set_client(name, "enabled", enabled)
            check_service_settings(editor.validated(), str(config_path))  # refuse before writing anything
            editor.save()
        config = editor.config
        report = reconcile(config, config_path.absolute())
    _reload_watcher(config, changed_at)
    layout = Layout(config.server.state_dir)
    supervised = _supervised(layout)
    if enabled:
        return EnableOutcome(name, True, supervised and start_wait(layout, name), supervised)
    stopped = report.stopped.get(name) or stop_client(layout, name)
    # Success only when seen: no supervisor of its folder lives, whoever its parent, and its port is closed.
    left = not stopped.stopped or bool(supervisors_below(layout.client_dir(name)))
    answers = _still_answers(config.server.listen_host, config.clients[name].port)
    return EnableOutcome(name, False, left or answers, supervised, tuple(stopped.forced), answers)


def remove_client(config_path: Path, name: str, purge: bool = False) -> list[Path]:
    """Stop a client and remove it from the configuration; return the paths deleted.

    Without ``purge`` its primary repository and logs stay; with it they go too.
    Replicas at the locations are never deleted. Raises UsageError for an unknown client,
    TriplicateError (after removing it) when one of its processes lives or its port answers.
    """
    with config_lock(config_path):
        editor = ConfigEditor(config_path)
        editor.config.client(name)
        port = editor.config.clients[name].port
        editor.remove_client(name)
        check_service_settings(editor.validated(), str(config_path))  # refuse before writing anything
        changed_at = time.time()
        config = editor.save()
        layout = Layout(config.server.state_dir)
        stopped = stop_client(layout, name)
        reconcile(config, config_path.absolute())
    _reload_watcher(config, changed_at)
    deleted = [layout.htpasswd(name)] if layout.htpasswd(name).exists() else []
    layout.htpasswd(name).unlink(missing_ok=True)
    if purge:
        for path in (config.primary_dir(name), layout.log_root / name):
            if path.exists():
                shutil.rmtree(path)
                deleted.append(path)
    if not stopped.stopped:
        raise TriplicateError(f"{name} removed from the configuration, but some of its processes are still "
                              "running (see 'triplicate status')")
    if _still_answers(config.server.listen_host, port):
        raise TriplicateError(f"{name} removed from the configuration, but its port {port} still answers")
    return deleted


@dataclass(frozen=True)
class ClientEntry:
    """One line of ``client list``: the URL is without the client's password."""

    name: str
    enabled: bool
    port: int | None
    replicate_to: list[str]
    url: str | None


def list_clients(config: Config) -> list[ClientEntry]:
    """Each configured client, by name."""
    return [
        ClientEntry(name, client.enabled, client.port, list(client.replicate_to),
                    repository_url(config, name) if client.port is not None else None)
        for name, client in sorted(config.clients.items())
    ]


def _reload_watcher(config: Config, changed_at: float) -> None:
    """A shared watcher or endpoint learns of a changed client set by reloading its configuration (HUP)."""
    layout = Layout(config.server.state_dir)
    if config.server.syncd == "shared":
        reload_shared_syncd(layout, changed_at)
    if config.server.endpoint == "shared":
        reload_shared_syncd(layout, changed_at, layout.shared_rest)


# A shared endpoint closes a disabled client's listener on its reload (HUP): give it this long.
PORT_CLOSE_TIMEOUT = 10.0


def _still_answers(host: str, port: int | None, timeout: float = PORT_CLOSE_TIMEOUT) -> bool:
    """Whether ``port`` still answers after up to ``timeout`` seconds of looking."""
    if port is None:
        return False
    deadline = time.monotonic() + timeout
    while port_answers(host, port):
        if time.monotonic() >= deadline:
            return True
        time.sleep(0.1)
    return False


def _supervised(layout: Layout) -> bool:
    return find_runsvdir(layout.top) is not None

