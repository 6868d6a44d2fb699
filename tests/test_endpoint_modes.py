"""The endpoint's shared mode under runit: one process, a listener per enabled client.

(Per-client mode, the default, is what tests/test_server.py runs: enable,
disable, kill -9 and status with one endpoint in each client's unit.)
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

from tests.support.processes import processes_mentioning
from tests.support.server import Site, http_status, runsv_pid
from tests.support.wait import wait_until

pytestmark = pytest.mark.slow


def _answers(site: Site, client: str) -> bool:
    return http_status("GET", f"http://127.0.0.1:{site.clients[client]['port']}/{client}/config") == 401


def test_one_shared_endpoint_serves_every_client_and_follows_enable_disable_and_kill(tmp_path: Path) -> None:
    site = Site(tmp_path / "shared", ports=2)
    site.config_path.write_text(site.config_path.read_text().replace("[server]\n", '[server]\nendpoint = "shared"\n'))
    assert site.cli("init").code == 0
    site.clients = {name: site.add_client(name, "usb") for name in ("east", "west")}
    assert not site.layout.service_dir("east", "rest").exists()  # no endpoint in the clients' units
    site.start_supervision()
    try:
        unit = site.layout.shared_rest
        wait_until(lambda: runsv_pid(unit), 15, "the shared endpoint")
        wait_until(lambda: _answers(site, "east") and _answers(site, "west"), 15, "both listeners")
        servers = [p for p in processes_mentioning(str(site.config_path)) if p.cmdline.endswith(" serve")]
        assert len(servers) == 1
        url = str(site.clients["west"]["url"])
        assert site.restic(url, "init").returncode == 0
        assert site.restic(url, "backup", "-q", str(site.config_path)).returncode == 0
        snapshot = next((site.root / "repos" / "west" / "snapshots").iterdir()).name
        wait_until((site.root / "usb" / "west" / "snapshots" / snapshot).is_file, 20, "west's snapshot in usb")

        pid = runsv_pid(unit)
        assert site.cli("client", "disable", "east").code == 0
        wait_until(lambda: http_status("GET", f"http://127.0.0.1:{site.clients['east']['port']}/") == 0, 10,
                 "east's listener to close")
        assert processes_mentioning(*site.markers("east", int(str(site.clients["east"]["port"])))) == []
        assert runsv_pid(unit) == pid and _answers(site, "west")  # reloaded, not restarted
        status = site.cli("status", "--json").json()
        services = {service: row["state"] for service, row in status["clients"]["west"]["services"].items()}
        assert services == {"supervisor": "run", "rest (shared)": "run", "syncd": "run"}
        assert status["ok"] is True

        assert site.cli("client", "enable", "east").code == 0
        wait_until(lambda: _answers(site, "east"), 10, "east's listener to open again")
        assert runsv_pid(unit) == pid

        os.kill(pid, signal.SIGKILL)  # type: ignore[arg-type]
        wait_until(lambda: runsv_pid(unit) not in (None, pid), 5, "runit to restart the shared endpoint")
        wait_until(lambda: _answers(site, "east") and _answers(site, "west"), 10, "both listeners after the restart")
        log = (site.root / "state" / "log" / "_shared" / "rest" / "current").read_text()
        assert "reload: configuration applied, 1 client(s) served" in log
    finally:
        assert site.stop_supervision() == []
