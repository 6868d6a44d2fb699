"""Reconciling the runit service tree with the configuration, idempotently.

Every configured client gets its service folder; an enabled client also gets its
link in the top folder, which the top runsvdir picks up within five seconds. A
disabled or removed client is stopped through runsv (so that its ``control/t``
takes every one of its processes down) before its link goes. Running
:func:`reconcile` twice in a row changes nothing the second time.
"""

from __future__ import annotations

import os
import pwd
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

from triplicate.config.model import Config
from triplicate.errors import ConfigError
from triplicate.fsutil import atomic_write
from triplicate.service import runit
from triplicate.service.layout import SERVICES, SHARED_LOGS, Layout
from triplicate.service.scripts import (
    Programs,
    ServiceFile,
    SharedFiles,
    client_files,
    shared_rest_files,
    shared_syncd_files,
    web_files,
)

STOP_TIMEOUT = 15.0


@dataclass(frozen=True)
class StopResult:
    stopped: bool  # True: no process of the client is left
    forced: list[int] = field(default_factory=list)  # pids killed after the timeout


@dataclass
class ReconcileReport:
    changes: list[str] = field(default_factory=list)
    stopped: dict[str, StopResult] = field(default_factory=dict)  # clients stopped, by name


def service_problems(config: Config) -> list[str]:
    """What the configuration gets wrong for serving clients (ports, TLS, user)."""
    problems = []
    owners: dict[int, str] = {}
    for name, client in sorted(config.clients.items()):
        if client.port is None:
            continue
        if client.port in owners:
            problems.append(f"clients.{name}.port: {client.port} is already client '{owners[client.port]}'s")
        owners.setdefault(client.port, name)
    if (config.server.tls_cert is None) != (config.server.tls_key is None):
        problems.append("server.tls_cert, server.tls_key: set both or neither")
    if config.server.tls_client_ca is not None and config.server.tls_cert is None:
        problems.append("server.tls_client_ca: needs server.tls_cert and server.tls_key")
    if config.server.endpoint_program == "rclone":
        if config.server.endpoint == "shared":
            problems.append('server.endpoint = "shared": needs endpoint_program = "triplicate" (rclone serves '
                            'one client per process)')
        keys = [f"clients.{name}.quota" for name, client in sorted(config.clients.items()) if client.quota]
        keys += ["server.quota"] * (config.server.quota is not None) + \
            ["server.tls_client_ca"] * (config.server.tls_client_ca is not None)
        if keys:
            problems.append(f'{", ".join(keys)}: needs endpoint_program = "triplicate" (rclone has no such setting)')
    if config.server.user is not None:
        try:
            pwd.getpwnam(config.server.user)
        except KeyError:
            problems.append(f"server.user: no such user '{config.server.user}'")
    return problems


def check_service_settings(config: Config, source: str) -> None:
    """Raise ConfigError listing :func:`service_problems` and the web service's, if any."""
    from triplicate.web.access import web_problems

    problems = service_problems(config) + web_problems(config)
    if problems:
        raise ConfigError(problems, source)


def run_as(config: Config) -> str | None:
    """The user services run as: server.user when set and we are root, else None (ourselves)."""
    return config.server.user if config.server.user and os.geteuid() == 0 else None


def owner_ids(config: Config) -> tuple[int, int] | None:
    """(uid, gid) to give the files services write or read, or None to leave them ours.

    Raises ConfigError when server.user names no user of this machine (a new server not set up yet).
    """
    user = run_as(config)
    if user is None:
        return None
    try:
        entry = pwd.getpwnam(user)
    except KeyError:
        raise ConfigError([f"server.user: no such user '{user}'"]) from None
    return entry.pw_uid, entry.pw_gid


def make_folder(path: Path, owner: tuple[int, int] | None, mode: int = 0o755) -> bool:
    """Create ``path`` (and parents) if missing, owned by ``owner``; return whether it was created."""
    if path.is_dir():
        return False
    path.mkdir(parents=True, mode=mode)
    if owner is not None:
        os.chown(path, *owner)
    return True


def reconcile(config: Config, config_path: Path, programs: Programs | None = None) -> ReconcileReport:
    """Make the service tree match ``config``; return what changed (nothing on a second run).

    Raises ConfigError for settings that cannot be served (clashing ports, half a
    TLS pair, an unknown user) before touching anything, MissingProgram when
    rclone or runit is not installed.
    """
    check_service_settings(config, str(config_path))
    programs = programs or Programs.find()
    layout = Layout(config.server.state_dir)
    owner = owner_ids(config)
    report = ReconcileReport()
    for folder in (layout.top, layout.clients_root):
        if make_folder(folder, None):
            report.changes.append(f"created {folder}")
    for folder in (layout.htpasswd_root, layout.log_root):
        if make_folder(folder, owner, 0o750):
            report.changes.append(f"created {folder}")

    for name in sorted(set(client_names(layout.clients_root)) - set(config.clients)):
        report.stopped[name] = stop_client(layout, name)
        shutil.rmtree(layout.client_dir(name))
        report.changes.append(f"removed the service folder of {name} (no longer configured)")
    for name in sorted(set(client_names(layout.top)) - set(config.clients)):
        report.stopped[name] = stop_client(layout, name)
        report.changes.append(f"removed the link of {name} (no longer configured)")

    for name, client in sorted(config.clients.items()):
        files = client_files(config, config_path, name, programs, run_as(config))
        changed = _write_files(layout.client_dir(name), files, report)
        for service in SERVICES:
            generated = any(relative.parts[:2] == ("services", service) for relative in files)
            folder = layout.service_dir(name, service)
            if generated:
                _make_log_folder(layout.log_dir(name, service), owner, report)
            elif folder.exists():  # e.g. the port was removed, or the watcher became shared
                _remove_service(folder)
                report.changes.append(f"removed {folder}")
        (layout.client_dir(name) / "services").mkdir(exist_ok=True)  # runsvdir needs it, even empty
        _activate(layout.client_dir(name), layout.link(name), client.enabled, changed, report, name)

    for service, folder, link, shared, make_files in (
        ("syncd", layout.shared_syncd, layout.shared_link, config.server.syncd == "shared", shared_syncd_files),
        ("rest", layout.shared_rest, layout.shared_rest_link, config.server.endpoint == "shared", shared_rest_files),
    ):
        _reconcile_shared(config, config_path, programs, owner, report, service, folder, link, shared, make_files)
    _reconcile_web(config, config_path, programs, layout, owner, report)
    return report


def _reconcile_shared(config: Config, config_path: Path, programs: Programs, owner: tuple[int, int] | None,
                      report: ReconcileReport, service: str, folder: Path, link: Path, shared: bool,
                      make_files: SharedFiles) -> None:
    """The shared watcher's or endpoint's unit: written and linked while some client is enabled."""
    layout = Layout(config.server.state_dir)
    if shared:
        files = make_files(config, config_path, programs, run_as(config))
        changed = _write_files(folder, files, report)
        _make_log_folder(layout.log_dir(SHARED_LOGS, service), owner, report)
    else:
        changed = []
    wanted = shared and any(client.enabled for client in config.clients.values())
    if wanted or link.is_symlink() or runit.runsv_running(folder):
        _activate(folder, link, wanted, changed, report, f"the shared {service}")
    if not shared and folder.exists():
        shutil.rmtree(folder)
        report.changes.append(f"removed {folder}")


def _reconcile_web(config: Config, config_path: Path, programs: Programs, layout: Layout,
                   owner: tuple[int, int] | None, report: ReconcileReport) -> None:
    """The web service: written and linked with [web] listen, stopped and removed without."""
    wanted = config.web.listen is not None
    changed: list[Path] = []
    if wanted:
        changed = _write_files(layout.web, web_files(config, config_path, programs, run_as(config)), report)
        _make_log_folder(layout.log_dir(SHARED_LOGS, "web"), owner, report)
    if wanted or layout.web_link.is_symlink() or runit.runsv_running(layout.web):
        _activate(layout.web, layout.web_link, wanted, changed, report, "the web service")
    if not wanted and layout.web.exists():
        shutil.rmtree(layout.web)
        report.changes.append(f"removed {layout.web}")


def _activate(folder: Path, link: Path, enabled: bool, changed: list[Path], report: ReconcileReport,
              name: str) -> None:
    """Link an enabled unit (restarting what runs an old run script) or stop a disabled one."""
    if enabled:
        if _link(folder, link):
            report.changes.append(f"enabled {name}")
        for service in changed:
            if runit.runsv_running(service):  # running an old run script: restart to take the new one
                runit.sv("restart", service)
                report.changes.append(f"restarted {service}")
    elif link.is_symlink() or runit.runsv_running(folder):
        report.stopped[name] = stop_unit(folder, link, _supervised_below(folder))
        report.changes.append(f"disabled {name}")


def client_names(folder: Path) -> list[str]:
    """Client names in a folder: not the shared watcher ('_'), nor what runsvdir ignores ('.')."""
    try:
        return [entry.name for entry in folder.iterdir() if entry.name[0] not in "._"]
    except FileNotFoundError:
        return []


def _write_files(root: Path, files: dict[Path, ServiceFile], report: ReconcileReport) -> list[Path]:
    """Write the generated files that differ; return the service folders whose run changed."""
    changed_services: list[Path] = []
    for relative, wanted in files.items():
        path = root / relative
        try:
            current = path.read_text()
            mode = path.stat().st_mode & 0o777
        except FileNotFoundError:
            current, mode = None, None
        if current == wanted.text and mode == wanted.mode:
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, wanted.text, mode=wanted.mode)
        report.changes.append(f"{'wrote' if current is None else 'updated'} {path}")
        if relative.name == "run" and current is not None:
            changed_services.append(path.parent)
    return changed_services


def _make_log_folder(folder: Path, owner: tuple[int, int] | None, report: ReconcileReport) -> None:
    if make_folder(folder, owner, 0o750):
        report.changes.append(f"created {folder}")


def _remove_service(folder: Path) -> None:
    """Stop a service and its log, then delete its folder.

    The folder is first renamed to a dotted name, which runsvdir ignores, so the
    client's runsvdir cannot start a new runsv for it between our stop and the deletion.
    """
    hidden = folder.with_name(f".{folder.name}.removed")
    folder.rename(hidden)
    for supervised in (hidden, hidden / "log"):
        if runit.runsv_running(supervised):
            runit.sv("exit", supervised, wait=STOP_TIMEOUT)
    runit.wait_until(lambda: not any(runit.runsv_running(f) for f in (hidden, hidden / "log")), STOP_TIMEOUT)
    shutil.rmtree(hidden)


def _link(folder: Path, link: Path) -> bool:
    """Link ``folder`` into the top folder as ``link``; return whether the link was missing."""
    # Relative, so that it keeps working when the whole state_dir is moved or mounted elsewhere.
    target = Path(os.path.relpath(folder, link.parent))
    if link.is_symlink() and Path(os.readlink(link)) == target:
        return False
    if link.is_symlink() or link.exists():
        link.unlink()
    os.symlink(target, link)
    return True


def _supervised_below(folder: Path) -> list[Path]:
    """``folder`` and every service folder under it that a runsv may supervise."""
    return [folder, *(path.parent.parent for path in folder.glob("**/supervise/ok") if path.parent.parent != folder)]


def stop_client(layout: Layout, name: str, timeout: float = STOP_TIMEOUT, unlink: bool = True) -> StopResult:
    """Stop every process of a client and (with ``unlink``) remove its link; see :func:`stop_unit`."""
    return stop_unit(layout.client_dir(name), layout.link(name) if unlink else None,
                     layout.supervised_dirs(name), timeout)


def stop_unit(folder: Path, link: Path | None, supervised: list[Path], timeout: float = STOP_TIMEOUT) -> StopResult:
    """Stop a unit of the top folder and everything below it; return whether nothing is left.

    ``sv down`` goes through a client's control/t (TERM -> HUP), so its runsvdir
    takes each service down; ``sv exit`` then ends the unit's own runsv at once
    instead of waiting for the top runsvdir to notice the missing link. What still
    runs after ``timeout`` seconds is killed. A runsvdir or runsv working below
    ``folder`` that the tree no longer leads to (its runsv was killed: it lives on
    under init) is stopped first, and whatever is left of them at the end.
    """
    forced = runit.end_supervisors(folder, timeout, only_orphans=True)
    if runit.runsv_running(folder):
        runit.sv("down", folder, wait=timeout)
    if link is not None and link.is_symlink():
        link.unlink()
    if runit.runsv_running(folder):
        runit.sv("exit", folder, wait=timeout)

    def none_left() -> bool:
        return not any(runit.runsv_running(path) for path in supervised)

    if not runit.wait_until(none_left, timeout):
        forced += runit.kill_leftovers(supervised)
        runit.wait_until(none_left, 5.0)
    forced += runit.end_supervisors(folder, timeout)
    return StopResult(none_left() and not runit.supervisors_below(folder), forced)


def start_wait(layout: Layout, name: str, timeout: float = STOP_TIMEOUT) -> bool:
    """Wait until a runsv supervises each of the client's services; True when all do.

    Returns False at once when no runsvdir watches the top folder (nothing would start them).
    """
    if runit.find_runsvdir(layout.top) is None:
        return False
    folders = [folder for folder in layout.supervised_dirs(name) if folder.is_dir()]
    if (layout.shared_link).is_symlink():
        folders.append(layout.shared_syncd)
    if layout.shared_rest_link.is_symlink():
        folders.append(layout.shared_rest)
    return runit.wait_until(lambda: all(runit.runsv_running(folder) for folder in folders), timeout)


def reload_shared_syncd(layout: Layout, changed_at: float, folder: Path | None = None) -> bool:
    """HUP the shared watcher (or the shared unit in ``folder``) when it started before the
    configuration changed; return whether sent.

    A watcher started less than a second ago may not handle HUP yet (Python installs
    its handler at start): wait for that second first.
    """
    folder = folder or layout.shared_syncd
    state = runit.service_state(folder)
    if not state.running or state.since is None or state.since >= changed_at:
        return False
    since = state.since
    runit.wait_until(lambda: time.time() - since >= 1.0, 1.5)
    runit.sv("hup", folder)
    return True
