"""kill -9 of the endpoint at random moments of a ``restic backup``: never a final name that is not whole."""

from __future__ import annotations

import json
import random
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests.support.endpoint import Endpoint, final_files, misnamed_files, partial_files
from tests.support.repository import restic_env, write_files
from tests.support.server import Site
from tests.support.wait import wait_until

pytestmark = pytest.mark.slow

KILLS = 20


def test_kill_9_during_backups_never_leaves_a_file_that_is_not_its_name(tmp_path: Path) -> None:
    site = Site(tmp_path / "site", ports=2)
    assert site.cli("init").code == 0
    site.clients = {"alpha": site.add_client("alpha", "usb")}
    url = str(site.clients["alpha"]["url"])
    repository = site.root / "repos" / "alpha"
    endpoint = Endpoint(site, "alpha")
    endpoint.start()
    try:
        assert site.restic(url, "init").returncode == 0
        seed = random.randrange(1 << 30)
        chance = random.Random(seed)
        interrupted = cut_uploads = 0
        for round_ in range(KILLS):
            write_files(site.root / "data" / str(round_), "fresh", count=2, size=4 << 20)
            # (at 4 MB/s, the 8 MB of a round take about 1.2 s to upload: a window kills can hit)
            backup = subprocess.Popen(["restic", "--no-cache", "--limit-upload", "4096", "backup", "-q",
                                       str(site.root / "data")],
                                      env=restic_env(url, site.restic_password),
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            # Once an upload is being received, at a random moment of the next 0.8 s (the fault's timing).
            wait_until(lambda: partial_files(repository) or backup.poll() is not None, 20,  # noqa: B023
                     "an upload in flight")
            time.sleep(chance.uniform(0, 0.8))
            endpoint.stop(signal.SIGKILL)
            interrupted += backup.poll() is None
            backup.kill()
            backup.wait()
            assert misnamed_files(repository) == [], f"seed {seed}, round {round_}"
            cut_uploads += bool(partial_files(repository))  # killed mid-upload: its temporary file is left
            endpoint.start()  # and the restart removes what the killed uploads left
            assert partial_files(repository) == [], f"seed {seed}, round {round_}"
        assert interrupted >= KILLS // 2, f"only {interrupted} kills hit a running backup (seed {seed})"
        assert cut_uploads >= 3, f"only {cut_uploads} kills cut an upload (seed {seed})"
        # The repository is sound: a last backup completes and checks with every byte read.
        last = site.restic(url, "backup", "-q", str(site.root / "data"), timeout=120)
        assert last.returncode == 0, last.stderr
        assert site.restic(url, "unlock", "--remove-all").returncode == 0  # the killed backups' locks
        check = site.restic(url, "check", "--read-data", timeout=120)
        assert check.returncode == 0, check.stderr
        assert json.loads(site.restic(url, "snapshots", "--json").stdout)
        assert misnamed_files(repository) == [] and len(final_files(repository)) > 5
    finally:
        endpoint.stop(signal.SIGKILL)
