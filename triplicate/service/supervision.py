"""The top-level runsvdir: starting it in the foreground, stopping it cleanly, its systemd unit."""

from __future__ import annotations

import os
import shlex
import signal
import sys
from dataclasses import dataclass, field
from pathlib import Path

from triplicate import execute
from triplicate.config.model import Config
from triplicate.errors import CannotRun
from triplicate.service import runit
from triplicate.service.layout import Layout
from triplicate.service.scripts import Programs, triplicate_command
from triplicate.service.tree import client_names, reconcile, stop_client, stop_unit


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
    # A runsvdir that was killed (not HUP'd) leaves its runsv processes behind; a new
    # runsvdir's runsv would fail on their locks forever. Stop them first, keeping the links.
    for name in client_names(layout.clients_root):
        if any(runit.runsv_running(folder) for folder in layout.supervised_dirs(name)):
            print(f"triplicate: stopping {name}'s services left by an earlier supervisor", file=sys.stderr)
            stop_client(layout, name, unlink=False)
    for folder, what in ((layout.shared_syncd, "shared watcher"), (layout.web, "web service")):
        unit = [folder, folder / "log"]
        if any(runit.runsv_running(supervised) for supervised in unit):
            print(f"triplicate: stopping the {what} left by an earlier supervisor", file=sys.stderr)
            stop_unit(folder, None, unit)
    execute.replace_process([programs.runsvdir, str(layout.top)])


def stop_supervision(config: Config, timeout: float) -> StopReport:
    """HUP the top runsvdir (it then TERMs each client's runsv) and wait until every runsv is gone.

    What is still running after ``timeout`` seconds is killed and reported.
    """
    layout = Layout(config.server.state_dir)
    pid = runit.find_runsvdir(layout.top) if layout.top.is_dir() else None
    if pid is not None:
        os.kill(pid, signal.SIGHUP)
    folders = layout.all_supervised_dirs(client_names(layout.clients_root))

    def all_gone() -> bool:
        return (pid is None or not runit.process_alive(pid)) and \
            not any(runit.runsv_running(folder) for folder in folders)

    if runit.wait_until(all_gone, timeout):
        return StopReport(pid is not None)
    killed = runit.kill_leftovers(folders)
    runit.wait_until(all_gone, 5.0)
    return StopReport(pid is not None, killed)


SYSTEMD_UNIT = """\
# triplicate's supervision: per-client restic REST endpoints and watchers under runit.
# Install: triplicate -c {config} systemd-unit > /etc/systemd/system/triplicate.service
#          systemctl daemon-reload && systemctl enable --now triplicate
[Unit]
Description=triplicate backup server (per-client REST endpoints and replication)
After=network-online.target local-fs.target
Wants=network-online.target

[Service]
Type=simple
ExecStart={command} supervise
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

[Install]
WantedBy=multi-user.target
"""


def systemd_unit(config_path: Path) -> str:
    """A unit file that runs ``triplicate supervise`` for the configuration at ``config_path``."""
    command = shlex.join([*triplicate_command(), "-c", str(config_path)])
    return SYSTEMD_UNIT.format(config=shlex.quote(str(config_path)), command=command)
