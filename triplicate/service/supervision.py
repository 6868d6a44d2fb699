"""The top-level runsvdir: starting it in the foreground, stopping it cleanly, its systemd unit."""

from __future__ import annotations

import functools
import os
import shlex
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from triplicate import execute
from triplicate.config.model import Config
from triplicate.errors import CannotRun
from triplicate.service import runit
from triplicate.service.layout import Layout
from triplicate.service.scripts import Programs, triplicate_command
from triplicate.service.tree import client_names, owner_ids, reconcile, stop_client, stop_unit


class AlreadySupervised(CannotRun):
    """Another supervise runs over the same tree: exit status 3."""


@dataclass(frozen=True)
class StopReport:
    was_running: bool
    killed: list[int] = field(default_factory=list)


def run_supervision(config: Config, config_path: Path) -> None:
    """Reconcile the tree, stop orphans of an earlier supervisor, then exec runsvdir. Never returns.

    Raises AlreadySupervised when a runsvdir watches the top folder already (two
    would fight over every service's lock).
    """
    layout = Layout(config.server.state_dir)
    running = runit.find_runsvdir(layout.top) if layout.top.is_dir() else None
    if running is not None:
        raise AlreadySupervised(f"{layout.top} is supervised already by runsvdir (pid {running})")
    programs = Programs.find()
    for change in reconcile(config, config_path, programs).changes:
        print(f"triplicate: {change}", file=sys.stderr)
    _give_cache_to_services(config)
    # A runsvdir that was killed (not HUP'd) leaves its runsv processes behind; a new
    # runsvdir's runsv would fail on their locks forever. Stop them first, keeping the links.
    for name in client_names(layout.clients_root):
        if any(runit.runsv_running(folder) for folder in layout.supervised_dirs(name)) or \
                runit.supervisors_below(layout.client_dir(name)):
            print(f"triplicate: stopping {name}'s services left by an earlier supervisor", file=sys.stderr)
            stop_client(layout, name, unlink=False)
    for unit, what in ((layout.shared_syncd, "shared watcher"), (layout.shared_rest, "shared endpoint"),
                       (layout.web, "web service")):
        shared = [unit, unit / "log"]
        if any(runit.runsv_running(folder) for folder in shared) or runit.supervisors_below(unit):
            print(f"triplicate: stopping the {what} left by an earlier supervisor", file=sys.stderr)
            stop_unit(unit, None, shared)
    execute.replace_process([programs.runsvdir, str(layout.top)])


def _give_cache_to_services(config: Config) -> None:
    """Under the systemd unit, its ``CacheDirectory=`` (systemd names it in ``CACHE_DIRECTORY``)
    is root's: give it to server.user, whose services keep restic's and rclone's caches there."""
    owner = owner_ids(config)
    if owner is None:
        return
    for folder in filter(None, os.environ.get("CACHE_DIRECTORY", "").split(":")):
        try:
            if Path(folder).is_dir() and os.stat(folder).st_uid != owner[0]:
                os.chown(folder, *owner)
        except OSError as error:  # the services then run without a cache: slower, not broken
            print(f"triplicate: {folder}: {error.strerror or error}; restic and rclone run without "
                  "a cache", file=sys.stderr)


def stop_supervision(config: Config, timeout: float) -> StopReport:
    """HUP the top runsvdir (it then TERMs each client's runsv) and wait until every runsv is gone.

    Orphans (a client's runsvdir whose runsv was killed, living on under init) are
    stopped first and whatever is left at the end, whoever its parent. What is still
    running after ``timeout`` seconds is killed and reported.
    """
    layout = Layout(config.server.state_dir)
    # A runsvdir whose runsv was killed lives on under init, out of the top runsvdir's reach.
    below = (layout.clients_root, layout.shared_syncd.parent)
    killed = [pid for folder in below for pid in runit.end_supervisors(folder, timeout, only_orphans=True)]
    pid = runit.find_runsvdir(layout.top) if layout.top.is_dir() else None
    if pid is not None:
        os.kill(pid, signal.SIGHUP)
    folders = layout.all_supervised_dirs(client_names(layout.clients_root))

    def all_gone() -> bool:
        return (pid is None or not runit.process_alive(pid)) and \
            not any(runit.runsv_running(folder) for folder in folders)

    if not runit.wait_until(all_gone, timeout):
        killed += runit.kill_leftovers(folders)
        runit.wait_until(all_gone, 5.0)
    for folder in below:  # whatever is left, whoever its parent
        killed += runit.end_supervisors(folder, timeout)
    return StopReport(pid is not None, killed)


SYSTEMD_UNIT = """\
# triplicate's supervision: per-client restic REST endpoints and watchers under runit.
# Install: triplicate -c {config} systemd-unit > /etc/systemd/system/triplicate.service
#          systemctl daemon-reload && systemctl enable --now triplicate
# Generated from the configuration (the writable paths, the mount points): generate it again
# after adding a location. Check it: systemd-analyze security triplicate.service
[Unit]
Description=triplicate backup server (per-client REST endpoints and replication)
After=network-online.target local-fs.target
Wants=network-online.target
{requires_mounts}
[Service]
Type=simple
ExecStart={command} supervise
# Reconcile the service tree with the edited configuration, then HUP every watcher and the
# web service (they reload it); runsvdir itself must never get a HUP (it stops everything).
ExecReload={command} supervise --reload
# runsvdir stops every service on HUP; on TERM it would exit and orphan them. ExecStop
# sends that HUP and waits until every service has exited; KillMode=mixed then kills
# only what is left, instead of signalling every process of the group at once.
ExecStop={command} supervise --stop --timeout 60
KillSignal=SIGHUP
KillMode=mixed
TimeoutStopSec=90
# runsvdir exits with 111 after a HUP: that is how it stops.
SuccessExitStatus=111
Restart=on-failure
RestartSec=5
{log}
# Hardening (docs/server.md, "systemd"): the whole file system is read-only but for the
# paths the configuration writes; no new privileges, no kernel or device access.
ProtectSystem=strict
ReadWritePaths={read_write}
{protect_home}
{private_tmp}
PrivateDevices=yes
PrivateMounts=yes
NoNewPrivileges=yes
# root for runsvdir/runsv; chpst -u drops to server.user (SETUID/SETGID); the tree is
# chowned to it (CHOWN, FOWNER); sv signals its processes (KILL); root reads its files
# (DAC_*); ports below 1024 need NET_BIND_SERVICE.
CapabilityBoundingSet=CAP_CHOWN CAP_DAC_OVERRIDE CAP_DAC_READ_SEARCH CAP_FOWNER CAP_KILL CAP_SETUID CAP_SETGID CAP_NET_BIND_SERVICE
ProtectKernelTunables=yes
ProtectKernelModules=yes
ProtectKernelLogs=yes
ProtectControlGroups=yes
ProtectClock=yes
ProtectHostname=yes
RestrictSUIDSGID=yes
RestrictRealtime=yes
RestrictNamespaces=yes
LockPersonality=yes
RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6
SystemCallArchitectures=native
SystemCallFilter=@system-service
SystemCallErrorNumber=EPERM
UMask=0027
# rclone's and restic's caches (the home folder is read-only); supervise gives it to server.user
CacheDirectory=triplicate
Environment=XDG_CACHE_HOME=/var/cache/triplicate

[Install]
WantedBy=multi-user.target
"""

# Folders under which systemd's ProtectHome applies.
HOMES = (Path("/home"), Path("/root"), Path("/run/user"))
# Folders PrivateTmp replaces with empty private ones (a path there would be hidden from the services).
TEMPORARY = (Path("/tmp"), Path("/var/tmp"))


def systemd_unit(config: Config, config_path: Path) -> str:
    """A hardened unit file that runs ``triplicate supervise`` for ``config`` (at ``config_path``).

    ``ReadWritePaths=`` lists state_dir, repos_dir and every local location (a location
    that may be absent, such as an unmounted disk, with systemd's '-' prefix);
    ``RequiresMountsFor=`` every ``mount_point`` location; ``ProtectHome=read-only``
    unless a writable path is under a home folder, ``PrivateTmp=yes`` unless one is
    under /tmp or /var/tmp.
    """
    from triplicate.config.model import LocalLocation

    command = shlex.join([*triplicate_command(), "-c", str(config_path)])
    writable = [str(config.server.state_dir), str(config.server.repos_dir)]
    mounts = []
    for location in config.locations.values():
        if isinstance(location, LocalLocation):
            writable.append(f"-{location.path}")
            if location.mount_point:
                mounts.append(str(location.path))
    paths = [Path(item.lstrip("-")) for item in writable]
    protect_home = ("# ProtectHome is off: a writable path is under /home, /root or /run/user."
                    if _any_under(paths, HOMES) else "ProtectHome=read-only")
    private_tmp = ("# PrivateTmp is off: a writable path is under /tmp or /var/tmp (a private one would hide it)."
                   if _any_under(paths, TEMPORARY) else "PrivateTmp=yes")
    return SYSTEMD_UNIT.format(
        config=shlex.quote(str(config_path)), command=command,
        requires_mounts="".join(f"RequiresMountsFor={_unit_path(path)}\n" for path in sorted(set(mounts))),
        read_write=" ".join(_unit_path(item) for item in dict.fromkeys(writable)),
        protect_home=protect_home, private_tmp=private_tmp,
        log=("# server.log = \"journald\": the services log to systemd-cat: journalctl -t triplicate-CLIENT-SERVICE\n"
             if config.server.log == "journald" else ""),
    )


def _any_under(paths: list[Path], folders: tuple[Path, ...]) -> bool:
    """Whether one of ``paths`` is one of ``folders`` or inside one."""
    return any(path == folder or folder in path.parents for path in paths for folder in folders)


def _up_for_a_second(since: float) -> bool:
    return time.time() - since >= 1.0


def _unit_path(path: str) -> str:
    """A path as a unit file's word: spaces and backslashes escaped as systemd expects."""
    return path.replace("\\", "\\x5c").replace(" ", "\\x20")


def reload_supervision(config: Config, config_path: Path) -> list[str]:
    """Reconcile the tree, then HUP every running watcher and the web service; return what was done.

    ``systemctl reload``'s command: runsvdir itself is never signalled (a HUP stops it).
    """
    layout = Layout(config.server.state_dir)
    done = list(reconcile(config, config_path).changes)
    folders = [layout.service_dir(name, "syncd") for name in client_names(layout.clients_root)]
    folders += [layout.shared_syncd, layout.web]
    for folder in folders:
        state = runit.service_state(folder) if folder.is_dir() else None
        if state is None or not state.running:
            continue
        if state.since is not None:  # Python installs its HUP handler at start: give it that second
            runit.wait_until(functools.partial(_up_for_a_second, state.since), 1.5)
        runit.sv("hup", folder)
        done.append(f"reloaded {folder}")
    return done
