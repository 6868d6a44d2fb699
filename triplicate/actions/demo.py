"""A self-contained demonstration server in a temporary folder, the real flow end to end.

``init``, supervision (runsvdir) in the background, two clients added with
``client add``, real ``restic backup`` runs through their REST endpoints, their
watchers replicating to two local locations, ``status``, and the replicas proved
valid with ``restic check --read-data``. Every process started is stopped at the end.
"""

from __future__ import annotations

import os
import secrets
import socket
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from triplicate import execute
from triplicate.actions.clients import AddedClient, add_client
from triplicate.actions.init import InitOptions, init_server
from triplicate.actions.status import ClientStatus, collect_status
from triplicate.config.load import load_config
from triplicate.config.model import Config, LocalLocation
from triplicate.restic import restic, restic_environment, restic_json
from triplicate.service.layout import Layout
from triplicate.service.ports import port_is_free
from triplicate.service.runit import find_runsvdir, wait_until
from triplicate.service.supervision import stop_supervision

CLIENTS = ("web01", "db01")
LOCATIONS = ("usb", "nas")
DEMO_CONFIG = """\
# A demonstration server made by 'triplicate demo'.
[server]
state_dir = "{root}/state"
repos_dir = "{root}/repos"
listen_host = "127.0.0.1"
public_host = "127.0.0.1"
ports = "{low}-{high}"

[locations.usb]
type = "local"
path = "{root}/usb"

[locations.nas]
type = "local"
path = "{root}/nas"
"""


@dataclass(frozen=True)
class DemoView:
    """How the demo shows its steps (the CLI passes its own renderers)."""

    say: Callable[[str], None]
    show_added: Callable[[AddedClient], None]
    show_status: Callable[[list[ClientStatus]], None]


def run_demo(root: Path, view: DemoView) -> bool:
    """Run the demonstration in ``root`` (an empty folder); True when every check passed.

    Raises TriplicateError when a step cannot run (restic, rclone or runit missing).
    """
    for folder in (*LOCATIONS, "data"):
        (root / folder).mkdir()
    config_path = root / "triplicate.toml"
    low, high = _free_ports(len(CLIENTS))
    config_path.write_text(DEMO_CONFIG.format(root=root, low=low, high=high))
    init_server(config_path, InitOptions())
    config = load_config(config_path)
    view.say(f"Server folder: {root}\nConfiguration: {config_path}")

    supervisor = execute.start([sys.executable, "-m", "triplicate", "-c", str(config_path), "supervise"])
    try:
        top = Layout(config.server.state_dir).top
        if not wait_until(lambda: find_runsvdir(top) is not None or supervisor.poll() is not None, 20) \
                or supervisor.poll() is not None:
            view.say("Supervision did not start.")
            return False
        view.say(f"Supervision runs: runsvdir over {top}")
        added = {}
        for name in CLIENTS:
            added[name] = add_client(config_path, name, list(LOCATIONS))
            view.show_added(added[name])
        for client in added.values():
            _back_up(root, client, view.say)
        view.say("Their watchers replicate each new snapshot to usb and nas:")
        config = load_config(config_path)
        replicated = wait_until(lambda: all(_replicated(config, name) for name in CLIENTS), 60)
        view.show_status(collect_status(config))
        return replicated and all(_check_replicas(root, config, name, view.say) for name in CLIENTS)
    finally:
        stopped = stop_supervision(config, timeout=30)
        supervisor.wait()
        view.say("Supervision stopped: every endpoint and watcher exited." if not stopped.killed
                 else f"Supervision stopped; killed {len(stopped.killed)} process(es) that did not exit.")


def _free_ports(count: int) -> tuple[int, int]:
    """A range of ``count`` free ports on 127.0.0.1 (the kernel's pick, so demos do not clash)."""
    for _ in range(100):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            low = probe.getsockname()[1]
        if low + count <= 65535 and all(port_is_free("127.0.0.1", port) for port in range(low, low + count)):
            return low, low + count - 1
    raise RuntimeError("no free ports on 127.0.0.1")


def _back_up(root: Path, client: AddedClient, say: Callable[[str], None]) -> None:
    """What the client machine does: restic init and two backups through its URL."""
    host, port = "127.0.0.1", client.port
    wait_until(lambda: not port_is_free(host, port), 10)  # rclone listening
    password_file = root / f"{client.name}.restic-password"  # the client's own key, never the server's
    password_file.write_text(secrets.token_urlsafe(24))
    password_file.chmod(0o600)
    environment = restic_environment(client.url, password_file)
    restic(["init"], environment)
    for generation in ("first", "second"):
        _write_sample_files(root / "data" / client.name, generation)
        restic(["backup", str(root / "data" / client.name)], environment)
    say(f"{client.name}: restic init and two backups through {client.url.replace(client.password, '***')}")


def _replica_dir(config: Config, location: str, client: str) -> Path:
    settings = config.locations[location]
    assert isinstance(settings, LocalLocation)  # the demo's locations are local folders
    return settings.path / client


def _replicated(config: Config, name: str) -> bool:
    """True when every location has the snapshot files of the client's primary."""
    primary = {path.name for path in (config.primary_dir(name) / "snapshots").iterdir()}
    for location in LOCATIONS:
        folder = _replica_dir(config, location, name) / "snapshots"
        if not folder.is_dir() or not primary <= {path.name for path in folder.iterdir()}:
            return False
    return bool(primary)


def _check_replicas(root: Path, config: Config, name: str, say: Callable[[str], None]) -> bool:
    """Open each replica with restic: the same snapshots, and check --read-data passes."""
    password_file = root / f"{name}.restic-password"
    primary = restic_environment(str(config.primary_dir(name)), password_file)
    expected = sorted(snapshot["id"] for snapshot in restic_json(["snapshots"], primary))
    good = True
    for location in LOCATIONS:
        replica_dir = _replica_dir(config, location, name)
        replica = restic_environment(str(replica_dir), password_file)
        found = sorted(snapshot["id"] for snapshot in restic_json(["snapshots"], replica))
        check = restic(["check", "--read-data"], replica, check=False)
        ok = found == expected and check.returncode == 0
        good = good and ok
        say(f"{name} at {location}: {len(found)} of {len(expected)} snapshots; restic check --read-data: "
            f"{'ok' if check.returncode == 0 else 'FAILED'}")
    return good


def _write_sample_files(folder: Path, generation: str) -> None:
    (folder / "etc").mkdir(parents=True, exist_ok=True)
    (folder / "etc" / "hostname").write_text(f"{folder.name}\n")
    (folder / f"{generation}-notes.txt").write_text(f"{generation} backup\n" * 1000)
    (folder / f"{generation}-blob.bin").write_bytes(os.urandom(3 << 20))
