"""Configuration: where it is found, what it accepts, and how it refuses bad input."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.repository import Server
from triplicate.config.load import config_path, parse_config
from triplicate.errors import ConfigError


def problems_of(text: str) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        parse_config(text)
    return caught.value.problems


def test_minimal_configuration_has_sane_defaults() -> None:
    config = parse_config('[locations.usb]\ntype = "local"\npath = "/mnt/usb"\n'
                          '[clients.web01]\nreplicate_to = ["usb"]\npoll_interval = "1h30m"\n')
    assert config.server.repos_dir == Path("/srv/restic")
    assert config.server.state_dir == Path("/var/lib/triplicate")
    assert config.clients["web01"].poll_interval == 5400
    assert config.settings("web01").poll_interval == 5400
    assert config.primary_dir("web01") == Path("/srv/restic/web01")


def test_every_problem_is_reported_at_once_with_its_key() -> None:
    problems = problems_of("""
[server]
state_dir = "relative/path"
colour = "blue"
[locations.usb]
type = "local"
path = "/mnt/usb"
[locations.tape]
type = "ftp"
[clients.web01]
replicate_to = ["usb", "ofsite"]
poll_interval = "soon"
""")
    assert "clients.web01.replicate_to[1]: unknown location 'ofsite'" in problems
    assert any(p.startswith("server.state_dir:") and "absolute" in p for p in problems)
    assert any(p.startswith("server.colour: unknown key") for p in problems)
    assert any(p.startswith("locations.tape: unknown location type 'ftp'") for p in problems)
    assert any(p.startswith("clients.web01.poll_interval:") for p in problems)
    assert len(problems) == 5


@pytest.mark.parametrize("name", ["../etc", "", "Web01", "web 01", "-web", "a" * 64, "web/01"])
def test_bad_client_and_location_names_are_refused(name: str) -> None:
    problems = problems_of(f'[clients."{name}"]\n[locations."{name}"]\ntype = "local"\npath = "/x"\n')
    assert sum(f"invalid name {name!r}" in p for p in problems) == 2


def test_invalid_toml_is_one_clear_problem() -> None:
    problems = problems_of("[server\n")
    assert len(problems) == 1 and problems[0].startswith("not valid TOML")


def test_config_path_precedence(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TRIPLICATE_CONFIG", "/from/env.toml")
    assert config_path("/explicit.toml") == Path("/explicit.toml")
    assert config_path(None) == Path("/from/env.toml")
    monkeypatch.delenv("TRIPLICATE_CONFIG")
    assert config_path(None) == Path("/etc/triplicate/triplicate.toml")


def test_cli_reports_config_errors_with_exit_2_and_no_traceback(server: Server) -> None:
    server.write_config(server.config_path.read_text().replace('["usb", "nas"]', '["usb", "ofsite"]'))
    result = server.cli("sync", "web01")
    assert result.code == 2
    assert "clients.web01.replicate_to[1]: unknown location 'ofsite'" in result.err
    assert "Traceback" not in result.err
    assert not (server.root / "state").exists(), "a bad configuration must change nothing"


def test_cli_missing_config_file(server: Server) -> None:
    server.config_path.unlink()
    result = server.cli("sync", "web01")
    assert result.code == 2 and "no configuration file" in result.err


def test_cli_unknown_client_and_location(server: Server) -> None:
    unknown_client = server.cli("sync", "db01")
    assert unknown_client.code == 2 and "unknown client 'db01'" in unknown_client.err
    unknown_location = server.cli("sync", "web01", "--to", "tape")
    assert unknown_location.code == 2 and "--to tape" in unknown_location.err
    assert not (server.root / "usb" / "web01").exists()


def test_status_reads_and_creates_nothing(server: Server) -> None:
    server.write_config(server.config_path.read_text().replace(f"{server.root}/state", f"{server.root}/typo/state"))
    result = server.cli("status", "--json")
    assert "Traceback" not in result.err and result.json()["clients"][0]["name"] == "web01"
    assert not (server.root / "typo").exists(), "a read-only command must not create the state folder"


@pytest.mark.parametrize(("addition", "key"), [
    ('password_command = ["cat", "/x"]', "password_file and password_command"),
    ('enabled = "yes"', "clients.web01.enabled"),
    ("poll_interval = 0", "clients.web01.poll_interval"),
    ('[clients.web01.restore_check]\ncanaries = [{{ path = "etc/hostname" }}]', "canaries[0].path"),
])
def test_values_that_would_only_fail_later_are_refused_now(server: Server, addition: str, key: str) -> None:
    server.write_config(server.config_path.read_text() + addition + "\n")
    result = server.cli("sync", "web01")
    assert result.code == 2 and key in result.err, result.err
