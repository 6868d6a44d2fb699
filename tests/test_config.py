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
    assert "Traceback" not in result.err and list(result.json()["clients"]) == ["web01"]
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


def test_numbers_that_are_not_numbers_are_refused_with_their_keys() -> None:
    problems = problems_of("""
[server]
poll_interval = inf
in_progress_grace = nan
max_lag = -5
hook_timeout = "-1m"
workers = true
audit_verify_percent = nan
[locations.usb]
type = "local"
path = "/mnt/usb"
workers = false
[clients.web01]
replicate_to = ["usb"]
port = true
[clients.web01.retention]
keep_last = true
""")
    assert sorted(problems) == sorted([
        "server.poll_interval: a duration must be a finite number of seconds, not inf",
        "server.in_progress_grace: a duration must be a finite number of seconds, not nan",
        "server.max_lag: a duration cannot be negative",
        "server.hook_timeout: '-1m' is not a duration such as '60s', '5m', '1h' or '1d'",
        "server.workers: expected a number, not true",
        "server.audit_verify_percent: Input should be a finite number",
        "locations.usb.workers: expected a number, not false",
        "clients.web01.port: expected a number, not true",
        "clients.web01.retention.keep_last: expected a number, not true",
    ])


def test_a_duration_of_a_wrong_type_or_beyond_any_clock_is_refused() -> None:
    assert problems_of("[server]\nmax_lag = [1]\n") == [
        "server.max_lag: expected a duration such as '60s', '5m', '1h' or '1d'"]
    assert problems_of("[server]\npoll_interval = 1e300\n") == [
        "server.poll_interval: a duration cannot be longer than 100 years"]
    assert problems_of('[clients.web01.restore_check]\ncanaries = [{ path = "/x", min_size = 1.5 }]\n') == [
        "clients.web01.restore_check.canaries[0].min_size: expected a size such as '1MB' or '512KiB'"]


def test_a_nul_in_a_path_is_refused() -> None:
    assert problems_of('[server]\nrepos_dir = "/srv/\\u0000restic"\n') == [
        "server.repos_dir: a path cannot contain a NUL character"]


def test_locations_that_are_no_separate_copy_are_refused(tmp_path: Path) -> None:
    repos = tmp_path / "repos"
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "link").symlink_to(repos)  # reached through a symbolic link: still the same folder
    problems = problems_of(f"""
[server]
repos_dir = "{repos}"
[locations.same]
type = "local"
path = "{tmp_path}/link"
[locations.inside]
type = "local"
path = "{repos}/replicas"
[locations.around]
type = "local"
path = "{tmp_path}"
[locations.usb]
type = "local"
path = "{tmp_path}/usb"
[locations.twin]
type = "local"
path = "{tmp_path}/usb/"
[locations.fine]
type = "local"
path = "/mnt/fine"
""")
    why = "a replica there is no separate copy; give each location its own folder, apart from repos_dir"
    assert f"locations.same.path: {repos} is the same folder as server.repos_dir ({repos}): {why}" in problems
    assert f"locations.inside.path: {repos}/replicas is inside server.repos_dir ({repos}): {why}" in problems
    assert f"locations.around.path: {tmp_path} contains server.repos_dir ({repos}): {why}" in problems
    assert (f"locations.twin.path: {tmp_path}/usb is the same folder as locations.usb.path ({tmp_path}/usb): "
            f"{why}") in problems
    assert not any("locations.fine" in problem for problem in problems)


def test_cli_a_configuration_file_that_is_not_utf8_is_one_line_exit_2(server: Server) -> None:
    server.config_path.write_bytes(server.config_path.read_bytes().replace(b"[locations.usb]",
                                                                           b"# caf\xe9\n[locations.usb]"))
    result = server.cli("status")
    offset = server.config_path.read_bytes().index(b"\xe9")
    assert result.code == 2 and "Traceback" not in result.err
    assert result.err == (f"triplicate: {server.config_path}: not UTF-8 text (byte 0xe9 at offset {offset}): "
                          "save it as UTF-8\n")


def test_cli_a_location_inside_repos_dir_exits_2_and_changes_nothing(server: Server) -> None:
    server.write_config(server.config_path.read_text().replace(f'path = "{server.root}/usb"',
                                                               f'path = "{server.root}/repos"'))
    result = server.cli("sync", "web01")
    assert result.code == 2 and "locations.usb.path" in result.err and "is the same folder as" in result.err
    assert not (server.root / "state").exists()
