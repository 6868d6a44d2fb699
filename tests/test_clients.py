"""Client management without supervision: init, client add/enable/disable/remove/list, the tree, status."""

from __future__ import annotations

import os
import pwd
import stat
import threading
import tomllib
from pathlib import Path

import pytest

from tests.support.ports import listening_on
from tests.support.server import SITE_COMMENT, Site, run_captured
from triplicate.actions import JSON_VERSION
from triplicate.actions.clients import add_client
from triplicate.config.load import load_config
from triplicate.service import htpasswd
from triplicate.service.tree import reconcile


@pytest.fixture
def site(tmp_path: Path) -> Site:
    instance = Site(tmp_path / "site", ports=3)
    assert instance.cli("init").code == 0
    return instance


def tree_snapshot(root: Path) -> dict[str, tuple[int, float, bytes | str]]:
    """Every path under ``root`` with its mode, modification time and content (or link target)."""
    snapshot = {}
    for path in sorted(root.rglob("*")):
        info = path.lstat()
        if path.is_symlink():
            content: bytes | str = os.readlink(path)
        elif path.is_file():
            content = path.read_bytes()
        else:
            content = ""
        snapshot[str(path.relative_to(root))] = (info.st_mode, info.st_mtime, content)
    return snapshot


def test_init_writes_a_configuration_and_folders_and_a_second_run_changes_nothing(tmp_path: Path) -> None:
    site_config = tmp_path / "etc" / "triplicate.toml"
    arguments = ["-c", str(site_config), "init", "--state-dir", str(tmp_path / "state"),
                 "--repos-dir", str(tmp_path / "repos"), "--public-host", "backup.example.org",
                 "--ports", "9100-9109"]
    first = run_captured(arguments)
    assert first.code == 0, first.err
    config = load_config(site_config)
    assert config.server.public_host == "backup.example.org" and config.server.ports == (9100, 9109)
    for folder in ("state/service", "state/clients", "state/htpasswd", "state/log", "repos"):
        assert (tmp_path / folder).is_dir(), folder
    before = tree_snapshot(tmp_path)
    second = run_captured(arguments)
    assert second.code == 0 and "Nothing to do" in second.out
    assert tree_snapshot(tmp_path) == before

    contradicting = run_captured(["-c", str(site_config), "init", "--ports", "8100-8199"])
    assert contradicting.code == 2 and "server.ports" in contradicting.err
    assert tree_snapshot(tmp_path) == before


def test_client_add_writes_everything_it_needs_and_keeps_the_files_comments(site: Site) -> None:
    result = site.cli("client", "add", "web01", "--replicate-to", "usb", "--replicate-to", "nas", "--json")
    assert result.code == 0, result.err
    added = result.json()
    assert set(added) == {"version", "client", "url", "user", "password", "port"}
    port, password = added["port"], added["password"]
    assert port == site.low and added["user"] == "web01"
    assert added["url"] == f"rest:http://web01:{password}@127.0.0.1:{port}/web01/"

    text = site.config_path.read_text()
    assert text.startswith(SITE_COMMENT + "# A demonstration server made by 'triplicate demo'.\n")
    assert tomllib.loads(text)["clients"]["web01"] == {"replicate_to": ["usb", "nas"], "port": port}

    layout = site.layout
    assert htpasswd.check(layout.htpasswd("web01"), "web01", password)
    assert stat.S_IMODE(layout.htpasswd("web01").stat().st_mode) == 0o600
    assert (site.root / "repos" / "web01").is_dir()
    rest_run = (layout.service_dir("web01", "rest") / "run").read_text()
    # triplicate's own endpoint, which reads the port and htpasswd from the configuration
    assert f"-c {site.config_path} serve web01\n" in rest_run
    assert "syncd web01" in (layout.service_dir("web01", "syncd") / "run").read_text()
    assert "svlogd" in (layout.service_dir("web01", "rest") / "log" / "run").read_text()
    assert 'kill -HUP "$(cat supervise/pid)"' in (layout.client_dir("web01") / "control" / "t").read_text()
    assert os.readlink(layout.link("web01")) == "../clients/web01"
    # The plain password is stored nowhere.
    for path in site.root.rglob("*"):
        if path.is_file():
            assert password.encode() not in path.read_bytes(), path


def test_the_tree_is_reconciled_idempotently_and_follows_edits(site: Site) -> None:
    site.add_client("web01", "usb")
    config = load_config(site.config_path)
    before = tree_snapshot(site.root / "state")
    assert reconcile(config, site.config_path).changes == []
    assert tree_snapshot(site.root / "state") == before

    edited = site.config_path.read_text().replace(f"port = {site.low}", f"port = {site.high}")
    site.config_path.write_text(edited)
    changes = reconcile(load_config(site.config_path), site.config_path).changes
    assert changes == [f"updated {site.layout.service_dir('web01', 'rest') / 'run'}"]
    assert f"127.0.0.1:{site.high}" in (site.layout.service_dir("web01", "rest") / "run").read_text()


def refusal_cases(site: Site) -> dict[str, tuple[list[str], str]]:
    return {
        "bad name": (["client", "add", "Web 01", "--replicate-to", "usb"], "invalid name"),
        "existing name": (["client", "add", "web01", "--replicate-to", "usb"], "already exists"),
        "unknown location": (["client", "add", "db01", "--replicate-to", "tape"], "--replicate-to tape: unknown"),
        "full port range": (["client", "add", "db01", "--replicate-to", "usb"], "no free port"),
        "taken port": (["client", "add", "db01", "--port", str(site.low)], "already client 'web01'"),
        "port outside the range": (["client", "add", "db01", "--port", str(site.high + 1)],
                                   f"--port {site.high + 1}: outside server.ports"),
        "existing password file": (["client", "add", "db01", "--save-password", str(site.config_path)],
                                   "--save-password"),
        "bad configuration": (["client", "add", "db01"], "colour: unknown key"),
    }


@pytest.mark.parametrize("case", ["bad name", "existing name", "unknown location", "full port range",
                                  "taken port", "port outside the range", "existing password file",
                                  "bad configuration"])
def test_a_refused_client_add_changes_nothing_and_says_why(site: Site, case: str) -> None:
    site.add_client("web01", "usb")
    if case == "full port range":  # one port, and web01 has it
        site.config_path.write_text(site.config_path.read_text().replace(
            f'ports = "{site.low}-{site.high}"', f'ports = "{site.low}-{site.low}"'))
    if case == "bad configuration":
        site.config_path.write_text(site.config_path.read_text().replace("[server]\n", '[server]\ncolour = "red"\n'))
    arguments, reason = refusal_cases(site)[case]
    before = tree_snapshot(site.root)
    result = site.cli(*arguments)
    assert result.code == 2, result.out
    assert reason in result.err and len(result.err.strip().splitlines()) == 1 and "Traceback" not in result.err
    assert tree_snapshot(site.root) == before


def test_the_full_port_range_skips_ports_other_programs_use(site: Site) -> None:
    with listening_on(site.low):
        assert site.add_client("web01", "usb")["port"] == site.low + 1


def test_no_enable_then_enable_and_disable_flip_the_link_and_the_configuration(site: Site) -> None:
    result = site.cli("client", "add", "web01", "--replicate-to", "usb", "--no-enable")
    assert result.code == 0, result.err
    assert "not enabled" in result.out
    link = site.layout.link("web01")
    assert not link.is_symlink() and (site.layout.client_dir("web01") / "run").is_file()
    assert tomllib.loads(site.config_path.read_text())["clients"]["web01"]["enabled"] is False

    enabled = site.cli("client", "enable", "web01")
    assert enabled.code == 0 and "supervision is not running" in enabled.out
    assert link.is_symlink()
    assert tomllib.loads(site.config_path.read_text())["clients"]["web01"]["enabled"] is True

    disabled = site.cli("client", "disable", "web01")
    assert disabled.code == 0, disabled.err
    assert not link.is_symlink()
    assert tomllib.loads(site.config_path.read_text())["clients"]["web01"]["enabled"] is False
    assert site.cli("client", "disable", "nosuch").code == 2


def test_remove_keeps_the_repository_unless_purged_and_never_touches_replicas(site: Site) -> None:
    for name in ("web01", "db01"):
        site.add_client(name, "usb")
        (site.root / "repos" / name / "config").write_text("restic's")
        (site.root / "usb" / name).mkdir()
        (site.root / "usb" / name / "config").write_text("replica")
    assert site.cli("client", "remove", "web01").code == 0
    assert (site.root / "repos" / "web01" / "config").exists()
    assert not site.layout.client_dir("web01").exists() and not site.layout.htpasswd("web01").exists()
    assert not site.layout.link("web01").is_symlink()
    assert "web01" not in tomllib.loads(site.config_path.read_text()).get("clients", {})

    purged = site.cli("client", "remove", "db01", "--purge")
    assert purged.code == 0, purged.err
    assert not (site.root / "repos" / "db01").exists()
    for name in ("web01", "db01"):
        assert (site.root / "usb" / name / "config").read_text() == "replica"
    assert site.cli("client", "list", "--json").json() == {"version": JSON_VERSION, "clients": {}}
    # Adding web01 again finds its kept repository.
    again = site.cli("client", "add", "web01", "--replicate-to", "usb")
    assert again.code == 0 and "existed already" in again.out


def test_list_shows_urls_without_passwords(site: Site) -> None:
    added = site.add_client("web01", "usb", "nas")
    site.cli("client", "add", "db01", "--no-enable")
    listed = site.cli("client", "list", "--json").json()["clients"]
    assert listed == {
        "db01": {"enabled": False, "port": site.low + 1, "replicate_to": [],
                 "url": f"rest:http://db01@127.0.0.1:{site.low + 1}/db01/"},
        "web01": {"enabled": True, "port": site.low, "replicate_to": ["usb", "nas"],
                  "url": f"rest:http://web01@127.0.0.1:{site.low}/web01/"},
    }
    assert list(listed) == ["db01", "web01"]  # in name order
    assert str(added["password"]) not in site.cli("client", "list").out


def test_save_password_writes_it_for_root_only(site: Site) -> None:
    target = site.root / "web01.password"
    added = site.cli("client", "add", "web01", "--save-password", str(target), "--json").json()
    assert target.read_text().strip() == added["password"]
    assert stat.S_IMODE(target.stat().st_mode) == 0o600


def test_concurrent_adds_get_distinct_ports(site: Site) -> None:
    ports: dict[str, int] = {}

    def add(name: str) -> None:
        ports[name] = add_client(site.config_path, name, ["usb"]).port

    threads = [threading.Thread(target=add, args=(name,)) for name in ("one", "two", "three")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(ports.values()) == [site.low, site.low + 1, site.low + 2]
    config = load_config(site.config_path)
    assert {name: config.clients[name].port for name in ports} == ports


def test_tls_gives_https_urls_and_half_a_pair_is_refused(site: Site) -> None:
    text = site.config_path.read_text()
    site.config_path.write_text(text.replace("[server]\n", '[server]\ntls_cert = "/etc/ssl/cert.pem"\n'))
    refused = site.cli("client", "add", "web01")
    assert refused.code == 2 and "tls_key" in refused.err
    site.config_path.write_text(text.replace(  # (rclone's endpoint takes the pair as arguments)
        "[server]\n", '[server]\ntls_cert = "/etc/ssl/cert.pem"\ntls_key = "/etc/ssl/key.pem"\n'
        'endpoint_program = "rclone"\n'))
    added = site.add_client("web01")
    assert str(added["url"]).startswith("rest:https://web01:")
    assert "--cert /etc/ssl/cert.pem --key /etc/ssl/key.pem" in (
        site.layout.service_dir("web01", "rest") / "run").read_text()


@pytest.mark.skipif(os.geteuid() != 0, reason="chpst -u needs root")
def test_services_run_as_the_configured_user(site: Site) -> None:
    site.config_path.write_text(site.config_path.read_text().replace("[server]\n", '[server]\nuser = "nobody"\n'))
    site.add_client("web01", "usb")
    for service in ("rest", "syncd"):
        folder = site.layout.service_dir("web01", service)
        assert "chpst -u nobody " in (folder / "run").read_text()
        assert "chpst -u nobody " in (folder / "log" / "run").read_text()
        assert site.layout.log_dir("web01", service).stat().st_uid == pwd.getpwnam("nobody").pw_uid
    assert site.layout.htpasswd("web01").stat().st_uid == pwd.getpwnam("nobody").pw_uid
    assert (site.root / "repos" / "web01").stat().st_uid == pwd.getpwnam("nobody").pw_uid
    site.config_path.write_text(site.config_path.read_text().replace('user = "nobody"', 'user = "nosuchuser"'))
    refused = site.cli("client", "add", "db01")
    assert refused.code == 2 and "server.user: no such user 'nosuchuser'" in refused.err


def test_systemd_unit_runs_supervise_and_stops_it_with_hup(site: Site) -> None:
    unit = site.cli("systemd-unit")
    assert unit.code == 0
    lines = unit.out.splitlines()
    assert "KillSignal=SIGHUP" in lines and "KillMode=mixed" in lines
    assert any(line.startswith("ExecStart=") and line.endswith(f"-c {site.config_path} supervise")
               for line in lines)
    assert any(line.startswith("ExecStop=") and "supervise --stop" in line for line in lines)


def test_status_reports_services_that_should_run_as_problems(site: Site) -> None:
    site.add_client("web01", "usb")
    site.cli("client", "add", "db01", "--no-enable")
    result = site.cli("status", "--json")
    assert result.code == 1
    report = result.json()["clients"]
    assert report["db01"]["ok"] is True and report["db01"]["enabled"] is False
    web01 = report["web01"]
    assert {row["state"] for row in web01["services"].values()} == {"unsupervised"}
    assert "rest: unsupervised (enabled: should run)" in web01["problems"]
    assert list(web01["locations"]) == ["@primary", "usb"]
    assert web01["locations"]["usb"]["last_sync"] == "never"
    assert site.cli("status", "db01").code == 0
    assert site.cli("status", "nosuch").code == 2


def test_status_shows_replication_from_the_state_database(server: object) -> None:
    """With the server fixture (web01 with one snapshot): after a sync, status counts it everywhere."""
    assert server.cli("sync", "web01").code == 0  # type: ignore[attr-defined]
    report = server.cli("status", "web01", "--json").json()["clients"]["web01"]  # type: ignore[attr-defined]
    rows = report["locations"]
    assert rows["@primary"]["snapshots"] == 1
    for location in ("usb", "nas"):
        assert rows[location]["snapshots"] == 1 and rows[location]["last_sync"] == "ok"
        assert rows[location]["lag_seconds"] == 0 and rows[location]["error"] is None



def test_runsv_status_is_decoded_to_unix_time_pid_and_state(tmp_path: Path) -> None:
    """supervise/status: TAI64N (2^62 + 10 + Unix seconds, nanoseconds), pid little endian, flags."""
    from triplicate.service.runit import read_status

    (tmp_path / "supervise").mkdir()
    label = (2**62 + 10 + 1795678104).to_bytes(8, "big") + (500_000_000).to_bytes(4, "big")
    (tmp_path / "supervise" / "status").write_bytes(label + (11881).to_bytes(4, "little") + b"\x00u\x00\x01")
    status = read_status(tmp_path)
    assert status is not None
    assert (status.state, status.pid, status.want, status.since) == ("run", 11881, "up", 1795678104.5)
    assert status.seconds(1795678110.5) == 6.0


def test_disable_and_remove_refused_by_the_service_settings_change_nothing(site: Site) -> None:
    import re

    for name in ("web01", "db01", "app01"):
        assert site.cli("client", "add", name, "--replicate-to", "usb", "--no-enable").code == 0
    text = site.config_path.read_text()
    ports = re.findall(r"^port = (\d+)$", text, flags=re.MULTILINE)
    assert len(ports) == 3
    site.config_path.write_text(text.replace(f"port = {ports[2]}", f"port = {ports[1]}"))  # db01 and app01 clash
    before = tree_snapshot(site.root)
    for command in (["client", "enable", "web01"], ["client", "remove", "web01"]):
        refused = site.cli(*command)
        assert refused.code == 2 and ports[1] in refused.err, (command, refused.err)
        assert tree_snapshot(site.root) == before, f"{command} changed something"
