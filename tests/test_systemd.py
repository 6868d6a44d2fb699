"""The systemd unit (hardened, from the configuration), `supervise --reload`, and journald logging."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.ports import accepts_connections, free_port_range
from tests.support.processes import command_line
from tests.support.repository import Server
from tests.support.server import Site
from tests.support.wait import wait_until
from triplicate.config.load import load_config
from triplicate.service import runit
from triplicate.service.scripts import Programs
from triplicate.service.tree import reconcile

needs_systemd_analyze = pytest.mark.skipif(shutil.which("systemd-analyze") is None,
                                           reason="systemd-analyze is not installed")


def unit_lines(server: Server) -> list[str]:
    result = server.cli("systemd-unit")
    assert result.code == 0, result.err
    return result.out.splitlines()


def with_mount_point(server: Server) -> None:
    text = server.config_path.read_text().replace(f'path = "{server.root}/usb"\n',
                                                  f'path = "{server.root}/usb"\nmount_point = true\n')
    server.config_path.write_text(text)


# Where a real server keeps its files: the tests' own folder is under /tmp, which keeps PrivateTmp off.
DEPLOYED = "/srv/site"


def deployed(server: Server) -> str:
    """Point the configuration's paths at :data:`DEPLOYED` (the unit only names them); return it."""
    server.config_path.write_text(server.config_path.read_text().replace(str(server.root), DEPLOYED))
    return DEPLOYED


def test_the_unit_writes_only_where_the_configuration_says(server: Server) -> None:
    with_mount_point(server)
    root = deployed(server)
    lines = unit_lines(server)
    assert f"ReadWritePaths={root}/state {root}/repos -{root}/usb -{root}/nas" in lines
    assert f"RequiresMountsFor={root}/usb" in lines and not any(f"{root}/nas" in line for line in lines
                                                                 if line.startswith("RequiresMountsFor"))
    for wanted in ("ProtectSystem=strict", "NoNewPrivileges=yes", "PrivateTmp=yes", "ProtectHome=read-only",
                   "KillSignal=SIGHUP", "KillMode=mixed"):
        assert wanted in lines, wanted
    assert any(line.startswith("ExecReload=") and line.endswith(f"-c {server.config_path} supervise --reload")
               for line in lines)


def test_a_path_under_tmp_keeps_tmp_shared(server: Server) -> None:
    lines = unit_lines(server)  # the tests' folder is under /tmp: a private /tmp would hide every path
    assert "PrivateTmp=yes" not in lines and any("PrivateTmp is off" in line for line in lines)
    deployed(server)
    text = server.config_path.read_text().replace(f'path = "{DEPLOYED}/nas"', 'path = "/var/tmp/nas"')
    server.config_path.write_text(text)
    lines = unit_lines(server)
    assert "PrivateTmp=yes" not in lines and any(line.startswith("ReadWritePaths=") and "-/var/tmp/nas" in line
                                                 for line in lines)


def test_a_location_under_home_keeps_home_writable(server: Server) -> None:
    text = server.config_path.read_text().replace(f'path = "{server.root}/nas"', 'path = "/home/backup/nas"')
    server.config_path.write_text(text)
    lines = unit_lines(server)
    assert "ProtectHome=read-only" not in lines and any("ProtectHome is off" in line for line in lines)
    assert any(line.startswith("ReadWritePaths=") and "-/home/backup/nas" in line for line in lines)


@needs_systemd_analyze
def test_systemd_analyze_verifies_the_unit_and_rates_it_at_most_5(server: Server, tmp_path: Path) -> None:
    with_mount_point(server)
    deployed(server)
    unit = tmp_path / "triplicate.service"
    unit.write_text(server.cli("systemd-unit").out)
    verified = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True,
                              timeout=60, check=False)
    assert verified.returncode == 0, verified.stderr
    assert "triplicate.service" not in verified.stderr, verified.stderr  # no warning about the unit
    rated = subprocess.run(["systemd-analyze", "security", "--offline=yes", str(unit)], capture_output=True,
                           text=True, timeout=60, check=False)
    match = re.search(r"Overall exposure level for triplicate.service: (\d+\.\d)", rated.stdout)
    assert match, rated.stdout + rated.stderr
    assert float(match.group(1)) <= 5.0, rated.stdout


def test_journald_logging_tags_each_service_with_client_and_service(server: Server) -> None:
    programs = Programs.find()
    if programs.systemd_cat is None:
        pytest.skip("systemd-cat is not installed")
    text = server.config_path.read_text().replace("[server]\n", '[server]\nlog = "journald"\n', 1)
    server.config_path.write_text(text + '\n[web]\nlisten = "127.0.0.1:8200"\n')
    reconcile(load_config(server.config_path), server.config_path, programs)
    state = server.root / "state"
    log_run = (state / "clients" / "web01" / "services" / "syncd" / "log" / "run").read_text()
    assert log_run.rstrip().endswith(f"exec {programs.systemd_cat} -t triplicate-web01-syncd")
    assert (state / "shared" / "web" / "log" / "run").read_text().rstrip().endswith("-t triplicate-_shared-web")
    assert "svlogd" not in log_run
    lines = unit_lines(server)
    assert any("journalctl -t triplicate-CLIENT-SERVICE" in line for line in lines)


@pytest.fixture
def site(tmp_path: Path) -> Iterator[Site]:
    instance = Site(tmp_path / "site", ports=3)
    assert instance.cli("init").code == 0
    yield instance
    assert instance.stop_supervision() == []


def test_reload_starts_the_web_service_and_hups_the_watchers(site: Site) -> None:
    site.add_client("web01", "usb")
    site.start_supervision()
    syncd = site.layout.service_dir("web01", "syncd")
    wait_until(lambda: site.service_pid("web01", "syncd"), 30, "web01's watcher to run")
    started = site.layout.log_dir("web01", "syncd") / "current"  # its HUP handler is installed by then
    wait_until(lambda: started.exists() and "syncd started" in started.read_text(), 30, "web01's watcher to start")
    port = free_port_range(1)[0]
    site.config_path.write_text(site.config_path.read_text() + f'\n[web]\nlisten = "127.0.0.1:{port}"\n')
    pid = site.service_pid("web01", "syncd")
    result = site.cli("supervise", "--reload")
    assert result.code == 0, result.err
    assert "enabled the web service" in result.err and f"reloaded {syncd}" in result.err
    wait_until(lambda: accepts_connections(port), 30, "the web service under runit")
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/v1/clients", timeout=20) as response:
        assert list(json.load(response)["clients"]) == ["web01"]
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=20) as response:
        assert b"triplicate_build_info" in response.read()
    log = site.layout.log_dir("web01", "syncd") / "current"
    wait_until(lambda: log.exists() and "reload: configuration applied" in log.read_text(), 30, "the watcher's reload")
    assert site.service_pid("web01", "syncd") == pid  # reloaded, not restarted

    # A new [web] listen: the same reload moves the running web service there, without a restart.
    web_pid = runit.service_state(site.layout.web).pid
    moved = free_port_range(1)[0]
    site.config_path.write_text(site.config_path.read_text().replace(f"127.0.0.1:{port}", f"127.0.0.1:{moved}"))
    result = site.cli("supervise", "--reload")
    assert result.code == 0 and f"reloaded {site.layout.web}" in result.err, result.err
    wait_until(lambda: accepts_connections(moved), 30, "the web service on its new address")
    wait_until(lambda: not accepts_connections(port), 10, "the old address to close")
    with urllib.request.urlopen(f"http://127.0.0.1:{moved}/api/v1/clients", timeout=20) as response:
        assert list(json.load(response)["clients"]) == ["web01"]
    assert runit.service_state(site.layout.web).pid == web_pid  # reloaded, not restarted


def test_a_reload_sent_while_the_watcher_starts_neither_kills_nor_restarts_it(site: Site) -> None:
    site.add_client("web01", "usb")
    site.start_supervision()
    pid = wait_until(lambda: site.service_pid("web01", "syncd"), 30, "web01's watcher to run")
    # Once the run script has exec'd Python (after its trap), and while Python still imports:
    # its own handler is not installed yet.
    # (Not just "syncd" in it: runsv's child is "runsv syncd" until it execs ./run.)
    wait_until(lambda: (command_line(pid) or [])[-3:] == [str(site.config_path), "syncd", "web01"], 30,
               "the run script to exec the watcher")
    os.kill(pid, signal.SIGHUP)
    started = site.layout.log_dir("web01", "syncd") / "current"
    wait_until(lambda: started.exists() and "syncd started" in started.read_text(), 30, "web01's watcher to start")
    assert site.service_pid("web01", "syncd") == pid, started.read_text()
    assert "trap '' HUP" in (site.layout.service_dir("web01", "syncd") / "run").read_text()
