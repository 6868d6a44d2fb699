"""``triplicate audit --nagios``: the monitoring-plugin line, worst first, with perfdata and exit 0/1/2/3."""

from __future__ import annotations

import shutil
from pathlib import Path

from tests.support.repository import Server, age_file, write_files


def nagios(server: Server, *args: str) -> tuple[int, list[str]]:
    result = server.cli("audit", "--nagios", *args)
    assert "Traceback" not in result.err, result.err
    return result.code, result.out.splitlines()


def synced(server: Server, *clients: str) -> None:
    for client in clients or ("web01",):
        assert server.cli("sync", client).code == 0


def add_clients(server: Server, *names: str) -> None:
    text = server.config_path.read_text()
    for name in names:
        shutil.copytree(server.primary("web01"), server.primary(name))
        text += f'\n[clients.{name}]\nreplicate_to = ["usb", "nas"]\npassword_file = "{server.password_file}"\n'
    server.config_path.write_text(text)


def test_ok_is_one_line_with_perfdata_for_every_location(server: Server) -> None:
    synced(server)
    code, lines = nagios(server)
    assert code == 0
    assert lines[0] == ("TRIPLICATE OK - 1 of 1 clients OK | web01_usb_lag=0s;300;3600;0 "
                        "web01_usb_missing_snapshots=0;;1;0 web01_nas_lag=0s;300;3600;0 "
                        "web01_nas_missing_snapshots=0;;1;0")
    assert lines[1:] == ["web01: OK"]


def test_warning_names_the_late_location_and_its_lag(server: Server, tmp_path: Path) -> None:
    synced(server)
    write_files(tmp_path / "more", "two", count=1, size=1 << 16)
    server.backup(tmp_path / "more")
    (new,) = set(server.snapshot_ids(server.primary())) - set(server.snapshot_ids(server.replica("usb")))
    age_file(server.primary() / "snapshots" / new, 30 * 60)
    code, lines = nagios(server)
    assert code == 1
    head, perfdata = lines[0].split(" | ")
    assert head.startswith("TRIPLICATE WARNING - 1 of 1 clients warning: web01 -> usb 1 snapshot not replicated yet")
    assert "web01 -> nas" in head  # nas lacks it too
    lag = next(item for item in perfdata.split() if item.startswith("web01_usb_lag="))
    assert 1790 <= int(lag.split("=")[1].split("s")[0]) <= 1900
    assert "web01_usb_missing_snapshots=1;;1;0" in perfdata
    assert lines[1].startswith("WARNING: web01 -> usb") and lines[-1] == "web01: WARNING"


def test_critical_names_the_lost_snapshot(server: Server) -> None:
    synced(server)
    (snapshot,) = server.snapshot_ids(server.primary())
    (server.replica("usb") / "snapshots" / snapshot).unlink()
    code, lines = nagios(server)
    assert code == 2
    assert lines[0].startswith("TRIPLICATE CRITICAL - 1 of 1 clients critical: web01 -> usb 1 snapshot lost")
    assert snapshot[:8] in lines[0]


def test_unknown_when_a_location_cannot_be_read_and_for_a_bad_configuration(server: Server) -> None:
    synced(server)
    (server.root / "nas").rename(server.root / "nas-unmounted")
    code, lines = nagios(server)
    assert code == 3
    assert lines[0].startswith("TRIPLICATE UNKNOWN - 1 of 1 clients unknown: web01 -> nas could not be read")
    server.config_path.write_text(server.config_path.read_text() + "\n[server.nonsense]\n")
    code, lines = nagios(server)
    assert code == 3 and lines[0].startswith("TRIPLICATE UNKNOWN - ") and len(lines) == 1


def test_a_mix_puts_the_worst_client_first_whatever_the_order_of_names(server: Server) -> None:
    add_clients(server, "web02", "web03")
    synced(server, "web01", "web02", "web03")
    (snapshot,) = server.snapshot_ids(server.primary("web03"))
    (server.replica("usb", "web03") / "snapshots" / snapshot).unlink()  # web03: CRITICAL
    shutil.rmtree(server.primary("web02"))  # web02: UNKNOWN
    code, lines = nagios(server)
    assert code == 2
    assert lines[0].startswith("TRIPLICATE CRITICAL - 1 of 3 clients critical, 1 unknown: web03 -> usb 1 snapshot lost")
    assert "web02: primary repository" in lines[0]
    statuses = [line.split(":")[0] for line in lines[1:] if not line.startswith("web")]
    assert statuses == sorted(statuses, key=["CRITICAL", "UNKNOWN", "WARNING"].index)
    assert lines[-3:] == ["web03: CRITICAL", "web02: UNKNOWN", "web01: OK"]
    assert "web01_nas_lag=0s;300;3600;0" in lines[0] and "web03_usb_missing_snapshots=1;;1;0" in lines[0]


def test_unknown_with_its_reason_when_the_state_database_is_damaged(server: Server) -> None:
    synced(server)
    database = server.root / "state" / "state.db"
    for leftover in database.parent.glob("state.db-*"):
        leftover.unlink()
    database.write_bytes(b"not a database " * 1000)
    code, lines = nagios(server)
    assert code == 3  # a plugin's answer is its standard output's first line, never empty
    assert lines == [f"TRIPLICATE UNKNOWN - state database {database} is damaged (file is not a database); "
                     "move it aside to start afresh, arrival times will be re-learned"]
