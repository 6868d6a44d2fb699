"""``triplicate config check``: every problem at once with its key path, exit 0/2, as text or JSON."""

from __future__ import annotations

import json
import socket
import subprocess
from pathlib import Path

from tests.support.repository import Server
from tests.support.server import Site
from triplicate.actions import JSON_VERSION


def test_a_good_configuration_is_ok(server: Server) -> None:
    result = server.cli("config", "check")
    assert result.code == 0 and result.out.strip() == f"{server.config_path}: OK (1 clients, 2 locations)"
    data = server.cli("config", "check", "--json").json()
    assert data == {"version": JSON_VERSION, "ok": True, "config": str(server.config_path), "client_count": 1,
                    "location_count": 2, "problems": []}


def test_every_problem_of_the_file_is_listed_with_its_key(server: Server) -> None:
    text = server.config_path.read_text().replace('replicate_to = ["usb", "nas"]',
                                                  'replicate_to = ["usb", "offsite"]\nwokers = 3')
    server.config_path.write_text(text + '\n[locations.tape]\ntype = "tape"\n')
    result = server.cli("config", "check", "--json")
    assert result.code == 2
    problems = {(problem["key"], problem["message"]) for problem in result.json()["problems"]}
    assert ("clients.web01.replicate_to[1]", "unknown location 'offsite'") in problems
    assert any(key == "clients.web01.wokers" and "unknown key" in message for key, message in problems)
    assert any(key == "locations.tape" and "unknown location type 'tape'" in message for key, message in problems)
    text_result = server.cli("config", "check")
    assert text_result.code == 2 and "3 problem(s)" in text_result.err
    assert "clients.web01.replicate_to[1]: unknown location 'offsite'" in text_result.err


def test_what_supervise_and_client_add_would_refuse_is_found_too(server: Server) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        taken_port = probe.getsockname()[1]
    text = server.config_path.read_text().replace("[server]\n", f'[server]\nports = "{taken_port}-{taken_port}"\n'
                                                  f'tls_cert = "{server.root}/cert.pem"\nuser = "nobody-here"\n', 1)
    text = text.replace('password_file = "', f"port = {taken_port}\npassword_file = \"")
    text += (f'\n[clients.web02]\nport = {taken_port}\nreplicate_to = []\n'
             f'password_file = "{server.root}/missing-key"\n[web]\nlisten = "0.0.0.0:8200"\n')
    server.config_path.write_text(text)
    result = server.cli("config", "check", "--json")
    assert result.code == 2
    problems = [f"{problem['key']}: {problem['message']}" for problem in result.json()["problems"]]
    expected = [f"clients.web02.port: {taken_port} is already client 'web01's",
                "server.tls_cert, server.tls_key: set both or neither",
                "server.user: no such user 'nobody-here'",
                "clients.web02.password_file: no such file",
                "server.tls_cert: no such file",
                "web.listen: '0.0.0.0:8200' is reachable from other machines"]
    for wanted in expected:
        assert any(problem.startswith(wanted) for problem in problems), (wanted, problems)
    assert len(problems) == len(expected), problems


def test_an_unreadable_or_missing_file_is_a_problem_without_key(server: Server) -> None:
    server.config_path.write_text("[server\n")
    result = server.cli("config", "check", "--json")
    assert result.code == 2
    (problem,) = result.json()["problems"]
    assert problem["key"] is None and problem["message"].startswith("not valid TOML")
    server.config_path.unlink()
    result = server.cli("config", "check")
    assert result.code == 2 and "no configuration file" in result.err
    assert json.loads(server.cli("config", "check", "--json").out)["ok"] is False


def test_the_web_service_and_a_client_never_share_a_port(tmp_path: Path) -> None:
    site = Site(tmp_path, ports=3)
    assert site.cli("init").code == 0
    site.config_path.write_text(site.config_path.read_text() + f'\n[web]\nlisten = "127.0.0.1:{site.low}"\n')
    # client add never hands out, nor takes, the web service's port (even while the service is not running)
    assert site.add_client("web01", "usb")["port"] == site.low + 1
    taken = site.cli("client", "add", "web02", "--replicate-to", "usb", "--port", str(site.low))
    assert taken.code == 2 and f"--port {site.low}: the web service's ([web] listen)" in taken.err
    # moved by hand onto the client's port: refused, naming the key, before anything fights for it
    site.config_path.write_text(site.config_path.read_text().replace(f"127.0.0.1:{site.low}\"",
                                                                     f"127.0.0.1:{site.low + 1}\""))
    result = site.cli("config", "check", "--json")
    assert result.code == 2
    assert result.json()["problems"] == [
        {"key": "web.listen", "message": f"port {site.low + 1} is client 'web01's REST endpoint's (on 127.0.0.1)"}]
    refused = site.cli("web")
    assert refused.code == 2 and f"web.listen: port {site.low + 1} is client 'web01's" in refused.err


def test_a_certificate_that_does_not_load_is_a_problem(server: Server, tmp_path: Path) -> None:
    cert, key, other_key = tmp_path / "cert.pem", tmp_path / "key.pem", tmp_path / "other.pem"
    for certificate, private in ((cert, key), (tmp_path / "unused.pem", other_key)):
        subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj",
                        "/CN=127.0.0.1", "-keyout", str(private), "-out", str(certificate)],
                       check=True, capture_output=True, timeout=60)
    base = server.config_path.read_text()
    server.config_path.write_text(base.replace("[server]\n", f'[server]\ntls_cert = "{cert}"\ntls_key = "{key}"\n', 1))
    assert server.cli("config", "check").code == 0
    server.config_path.write_text(base.replace("[server]\n", f'[server]\ntls_cert = "{cert}"\n'
                                               f'tls_key = "{other_key}"\n', 1))  # a renewal left the old key
    result = server.cli("config", "check", "--json")
    assert result.code == 2
    (problem,) = result.json()["problems"]
    assert problem["key"] == "server.tls_cert, server.tls_key"
    assert problem["message"].startswith(f"cannot load {cert} with {other_key}: ")
