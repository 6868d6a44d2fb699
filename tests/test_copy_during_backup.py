"""Copy while the backup runs (issue 15, item 1): the endpoint announces every pack and index
file as it lands, the watcher copies them at once, so that when the snapshot lands only the
snapshot (and the last moments' files) remain. The whole server for real: runit supervises
the client's endpoint (triplicate serve) and its syncd; restic backs up through the endpoint,
slowed with --limit-upload so that the backup lasts several seconds."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

from tests.support.repository import restic_env, snapshot_files
from tests.support.server import Site, http_status
from tests.support.wait import wait_until

BACKUP_MB = 24
UPLOAD_KIB_PER_SECOND = 3000  # about 8 s for the backup: long enough to look inside it


def packs(repo: Path) -> set[str]:
    folder = repo / "data"
    return {path.name for path in folder.glob("*/*") if path.is_file()} if folder.is_dir() else set()


def test_packs_reach_the_replica_before_the_snapshot_lands_and_it_follows_within_seconds(tmp_path: Path) -> None:
    site = Site(tmp_path / "site", ports=2)
    # A long rescan interval: what copies during the backup is the endpoint's word, not a poll.
    text = site.config_path.read_text().replace('ports = "', 'poll_interval = "10m"\nports = "', 1)
    site.config_path.write_text(text)
    assert site.cli("init").code == 0
    site.start_supervision()
    try:
        url = str(site.add_client("alpha", "usb")["url"])
        base = "http://" + url.removeprefix("rest:http://").partition("@")[2].split("/", 1)[0]
        wait_until(lambda: http_status("GET", f"{base}/alpha/config") == 401, 20, "alpha's endpoint")
        assert site.restic(url, "init").returncode == 0
        primary, replica = site.root / "repos" / "alpha", site.root / "usb" / "alpha"
        data = site.root / "data" / "alpha"
        data.mkdir(parents=True)
        for index in range(BACKUP_MB):
            (data / f"file-{index}").write_bytes(os.urandom(1 << 20))  # incompressible
        backup = subprocess.Popen(
            ["restic", "--no-cache", "--limit-upload", str(UPLOAD_KIB_PER_SECOND), "backup", "-q", str(data)],
            env=restic_env(url, site.restic_password), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            # Packs are on the replica while the backup still runs (no snapshot in the primary yet).
            wait_until(lambda: len(packs(replica)) >= 2 or backup.poll() is not None, 60, "packs on the replica")
            assert backup.poll() is None and not snapshot_files(primary), \
                "the replica received packs only after the backup ended"
            during = packs(replica)
            assert during <= packs(primary)
            # status says what has been copied ahead of the snapshot.
            status = site.cli("status", "alpha", "--json").json()["clients"]["alpha"]
            usb = status["locations"]["usb"]
            assert usb["copying"] and usb["copying"].startswith("copying during backup ("), usb
            assert "copying during backup" in site.cli("status", "alpha").out
            # The replica is a valid repository at this moment (restic accepts packs no index names).
            check = subprocess.run(["restic", "--no-cache", "--no-lock", "check"],
                                   env=restic_env(replica, site.restic_password), capture_output=True, text=True)
            assert check.returncode == 0, check.stdout + check.stderr
            _, stderr = backup.communicate(timeout=120)
            assert backup.returncode == 0, stderr
        finally:
            if backup.poll() is None:
                backup.kill()
        landed = time.monotonic()
        (snapshot,) = snapshot_files(primary)
        wait_until(lambda: snapshot in snapshot_files(replica), 30, "the snapshot on the replica")
        latency = time.monotonic() - landed
        # Generous for a loaded 2-core machine; docs/benchmarks.md has the measured figure.
        assert latency < 10, f"the snapshot reached the replica {latency:.1f}s after the backup ended"
        assert packs(replica) == packs(primary)
        check = subprocess.run(["restic", "--no-cache", "check", "--read-data"],
                               env=restic_env(replica, site.restic_password), capture_output=True, text=True)
        assert check.returncode == 0, check.stdout + check.stderr
        print(f"\nMEASURED copy during backup: {len(during)} packs on the replica mid-backup; "
              f"snapshot there {latency:.2f}s after restic returned")
    finally:
        leftovers = site.stop_supervision()
    assert leftovers == []
