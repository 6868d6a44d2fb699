"""A self-contained demonstration server in a temporary folder.

Builds a configuration with two replica locations, backs up sample files with
the real restic into the primary repository, replicates them, proves that the
replicas are valid restic repositories, and reports each step.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Callable
from pathlib import Path

from triplicate.actions.sync import SyncReport, sync_client
from triplicate.config.load import load_config
from triplicate.restic import restic, restic_environment, restic_json

DEMO_CONFIG = """\
# A demonstration server made by 'triplicate demo'.
[server]
state_dir = "{root}/state"
repos_dir = "{root}/repos"

[locations.usb]
type = "local"
path = "{root}/usb"

[locations.nas]
type = "local"
path = "{root}/nas"

[clients.web01]
replicate_to = ["usb", "nas"]
password_file = "{root}/web01.password"
"""


def run_demo(root: Path, say: Callable[[str], None], show: Callable[[SyncReport], None]) -> bool:
    """Run the demonstration in ``root`` (an empty folder); True when every check passed."""
    for folder in ("usb", "nas", "data"):
        (root / folder).mkdir()
    config_path = root / "triplicate.toml"
    config_path.write_text(DEMO_CONFIG.format(root=root))
    password_file = root / "web01.password"
    password_file.write_text(secrets.token_urlsafe(24))
    password_file.chmod(0o600)
    config = load_config(config_path)
    say(f"Server folder: {root}\nConfiguration: {config_path}")

    _write_sample_files(root / "data", "first")
    primary = restic_environment(str(config.primary_dir("web01")), password_file)
    restic(["init"], primary)
    restic(["backup", str(root / "data")], primary)
    say("Client web01 made its first backup into the primary repository.")
    show(sync_client(config, "web01", ["usb", "nas"]))

    _write_sample_files(root / "data", "second")
    restic(["backup", str(root / "data")], primary)
    say("A second backup changed a few files; only what is new is copied:")
    report = sync_client(config, "web01", ["usb", "nas"])
    show(report)

    expected = sorted(snapshot["id"] for snapshot in restic_json(["snapshots"], primary))
    all_good = report.ok
    for location in ("usb", "nas"):
        replica = restic_environment(str(config.locations[location].path / "web01"), password_file)
        found = sorted(snapshot["id"] for snapshot in restic_json(["snapshots"], replica))
        check = restic(["check", "--read-data"], replica, check=False)
        good = found == expected and check.returncode == 0
        all_good = all_good and good
        say(f"{location}: {len(found)} of {len(expected)} snapshots; restic check --read-data: "
            f"{'ok' if check.returncode == 0 else 'FAILED'}")
    say(f"Try it yourself:  triplicate -c {config_path} sync web01 --json")
    return all_good


def _write_sample_files(folder: Path, generation: str) -> None:
    (folder / "etc").mkdir(exist_ok=True)
    (folder / "etc" / "hostname").write_text("web01\n")
    (folder / f"{generation}-notes.txt").write_text(f"{generation} backup\n" * 1000)
    (folder / f"{generation}-blob.bin").write_bytes(os.urandom(3 << 20))
