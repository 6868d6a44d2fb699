"""The web service for real: ``triplicate web`` as a process, HTTP on loopback, promtool, chromium."""

from __future__ import annotations

import base64
import json
import shutil
import signal
import ssl
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import bcrypt
import jsonschema
import openapi_spec_validator
import pytest

from tests.support.endpoint import Endpoint
from tests.support.ports import accepts_connections, free_port_range, listening_on
from tests.support.repository import Server, write_files
from tests.support.server import Site
from tests.support.wait import wait_until
from tests.support.web import browser, dump_dom, three_clients, web_service
from triplicate.actions import JSON_VERSION
from triplicate.config.load import load_config
from triplicate.service.layout import Layout
from triplicate.service.scripts import Programs
from triplicate.service.tree import reconcile
from triplicate.state.replication import ReplicationState, RunRecord
from triplicate.units import format_bytes

DOCS = Path(__file__).resolve().parent.parent / "docs"
ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"


def _metric(text: str, name: str, **labels: str) -> float:
    wanted = name + "{" + ",".join(f'{key}="{value}"' for key, value in labels.items()) + "}"
    for line in text.splitlines():
        if line.startswith(wanted + " "):
            return float(line.split()[-1])
    raise AssertionError(f"{wanted} not exported")


def test_api_shows_each_location_live_and_a_failing_one_as_down(server: Server) -> None:
    port = three_clients(server)
    with web_service(server, port) as web:
        overview = web.json("/api/v1/clients")
        assert overview["version"] == JSON_VERSION
        clients = overview["clients"]
        assert list(clients) == ["web01", "web02", "web03"]  # keyed by name, in name order
        status = server.cli("status", "--json").json()  # the same things, the same keys, as the CLI's
        assert status["version"] == overview["version"] and list(status["clients"]) == list(clients)
        for name in clients:
            assert list(clients[name]["locations"]) == list(status["clients"][name]["locations"]) == \
                ["@primary", "usb", "nas"]
        assert [clients[name]["state"] for name in ("web01", "web02", "web03")] == ["ok", "failed", "ok"]
        usb = clients["web02"]["locations"]["usb"]
        assert usb["state"] == "failed" and usb["up"] is False and usb["error"]
        assert usb["lag_seconds"] > 0  # an unreadable location never reports lag 0
        assert clients["web01"]["locations"]["usb"]["up"] is True
        assert clients["web01"]["locations"]["@primary"]["snapshots"] == 1

        detail = web.json("/api/v1/clients/web01")
        assert detail["client"] == "web01" and len(detail["charts"]["arrivals"]) == 1
        assert set(detail["charts"]["latency"]) == {"usb", "nas"}
        assert {run["location"] for run in detail["runs"]} == {"usb", "nas"}
        assert detail["endpoint"]["services"]["syncd"]["state"] == "absent"  # never reconciled here
        assert detail["endpoint"]["url"] is None  # no port in this configuration: no REST endpoint

        runs = web.json("/api/v1/runs?client=web02")["runs"]
        assert {(run["location"], run["ok"]) for run in runs} == {("usb", False), ("nas", True)}
        assert web.json("/api/v1/audits")["audits"] == []
        server_info = web.json("/api/v1/server")
        assert server_info["location_names"] == ["nas", "usb"] and server_info["client_count"] == 3
        locations = web.json("/api/v1/locations")["locations"]
        assert locations["usb"]["client_names"] == ["web01", "web02", "web03"]
        for path in ("/api/v1/restore-checks", "/api/v1/retention-runs"):
            assert web.json(path)["version"] == JSON_VERSION

        status, body, _ = web.get("/api/v1/clients/nobody")
        assert status == 404 and "unknown client 'nobody'" in json.loads(body)["error"]
        status, body, _ = web.get("/api/v1/runs?limit=0")
        assert status == 400 and json.loads(body)["error"].startswith("limit:")

        # Cached answers never hide a change: fixing the location shows at the next request.
        assert 'triplicate_location_up{client="web02",location="usb"} 0.0' in web.get("/metrics")[1].decode()
        (server.root / "usb" / "web02").unlink()
        assert server.cli("sync", "web02").code == 0
        fixed = web.json("/api/v1/clients")["clients"]["web02"]
        assert fixed["state"] == "ok" and fixed["locations"]["usb"]["lag_seconds"] == 0
        assert 'triplicate_location_up{client="web02",location="usb"} 1.0' in web.get("/metrics")[1].decode()

        spec = web.json("/api/v1/openapi.json")
        openapi_spec_validator.validate(spec)
        # Each answer is what the description says (the shapes of docs/json.md: clients keyed by name...).
        for path in ("/api/v1/clients", "/api/v1/clients/{name}", "/api/v1/locations", "/api/v1/runs",
                     "/api/v1/audits", "/api/v1/restore-checks", "/api/v1/retention-runs", "/api/v1/server"):
            schema = spec["paths"][path]["get"]["responses"]["200"]["content"]["application/json"]["schema"]
            jsonschema.validate(web.json(path.replace("{name}", "web02")), {**schema, "components": spec["components"]})


def test_the_client_api_and_page_show_the_last_recovery_drill(server: Server) -> None:
    port = free_port_range(1)[0]
    server.config_path.write_text(server.config_path.read_text() + f'\n[web]\nlisten = "127.0.0.1:{port}"\n')
    assert server.cli("sync", "web01").code == 0
    with web_service(server, port) as web:
        assert web.json("/api/v1/clients/web01")["recover_drill"] is None  # never drilled
        drill = server.cli("recover", "web01", "--drill", "--json")
        assert drill.code == 0, drill.out + drill.err
        shown = web.json("/api/v1/clients/web01")["recover_drill"]
        assert shown["ok"] is True and shown["restic_check"] == "passed" and shown["error"] is None
        assert shown["recovery_seconds"] == pytest.approx(drill.json()["recovery_seconds"], abs=0.001)
        assert shown["bytes"] == drill.json()["rebuild"]["bytes_copied"] > 0
        page = web.get("/client/web01")[1].decode()
        assert "recovery drill: <b>passed</b>" in page
        spec = web.json("/api/v1/openapi.json")
        schema = spec["paths"]["/api/v1/clients/{name}"]["get"]["responses"]["200"]["content"]["application/json"]
        jsonschema.validate(web.json("/api/v1/clients/web01"), {**schema["schema"], "components": spec["components"]})


def test_a_clients_page_and_api_show_what_its_endpoint_counted(tmp_path: Path) -> None:
    site = Site(tmp_path)
    assert site.cli("init").code == 0
    site.clients = {"web01": site.add_client("web01", "usb")}
    endpoint = Endpoint(site, "web01")
    endpoint.start()
    try:
        url = str(site.clients["web01"]["url"])
        write_files(site.root / "data", "one", count=2, size=1 << 18)
        for args in (("init",), ("backup", "-q", str(site.root / "data"))):
            assert site.restic(url, *args).returncode == 0
        assert endpoint.request("web01", "GET", "/web01/config", user="web01", password="wrong").status == 401
    finally:
        assert endpoint.stop() == 0  # (its counts are written to the state database on the way out)
    port = free_port_range(1)[0]
    site.config_path.write_text(site.config_path.read_text() + f'\n[web]\nlisten = "127.0.0.1:{port}"\n')
    on_disk = sum(path.stat().st_size for path in (site.root / "repos" / "web01").rglob("*") if path.is_file())
    with web_service(site, port) as web:
        detail = web.json("/api/v1/clients/web01")
        status, page, _ = web.get("/client/web01")
        spec = web.json("/api/v1/openapi.json")
    statistics = detail["endpoint"]["statistics"]
    assert statistics["repository_bytes"] == on_disk and statistics["received_bytes"] >= on_disk
    assert statistics["files"] >= 5 and statistics["failed_logins"] == 1
    assert statistics["requests"]["GET 401"] == 1 and statistics["requests"]["POST 200"] >= 5
    assert time.time() - 600 < statistics["newest_snapshot"] <= time.time()
    schema = spec["paths"]["/api/v1/clients/{name}"]["get"]["responses"]["200"]["content"]["application/json"]
    jsonschema.validate(detail, {**schema["schema"], "components": spec["components"]})
    text = page.decode()
    assert status == 200 and '<li data-endpoint="failed-logins">failed logins: 1;' in text
    assert f'<li data-endpoint="received">received {format_bytes(statistics["received_bytes"])} in ' in text
    assert "GET 401: 1" in text


def test_the_web_service_never_creates_the_state_database_and_sees_it_once_made(tmp_path: Path) -> None:
    site = Site(tmp_path)  # no 'init' yet: no state folder
    port = free_port_range(1)[0]
    site.config_path.write_text(site.config_path.read_text() + '\n[clients.web01]\nreplicate_to = ["usb"]\n'
                                f'\n[web]\nlisten = "127.0.0.1:{port}"\n')
    state_dir = site.root / "state"
    with web_service(site, port) as web:
        for path in ("/", "/client/web01", "/metrics", "/api/v1/clients", "/api/v1/clients/web01", "/api/v1/runs"):
            assert web.get(path)[0] == 200, path
        assert not state_dir.exists()  # read-only: a mistyped state_dir shows nothing, creates nothing
        assert "triplicate_location_up{" not in web.get("/metrics")[1].decode()
        now = time.time()
        with ReplicationState.opened(state_dir) as replication:  # the first run, by whoever runs it
            replication.record_run(RunRecord("web01", "usb", "backup", now - 1, now, True, 3, 3000, 0, [], None))
        assert _metric(web.get("/metrics")[1].decode(), "triplicate_location_up", client="web01", location="usb") == 1
        assert web.json("/api/v1/clients")["clients"]["web01"]["locations"]["usb"]["up"] is True


def test_a_damaged_state_database_is_a_one_line_503_not_a_traceback(server: Server) -> None:
    port = three_clients(server)
    database = server.root / "state" / "state.db"
    for leftover in database.parent.glob("state.db-*"):
        leftover.unlink()
    database.write_bytes(b"not a database " * 1000)  # a damaged disk, a bad restore
    with web_service(server, port) as web:
        for path in ("/", "/client/web01", "/metrics", "/api/v1/clients", "/api/v1/clients/web01", "/api/v1/runs"):
            status, body, _ = web.get(path)
            assert status == 503, (path, status, body[:200])
            assert f"state database {database} is damaged" in body.decode(), path
        assert json.loads(web.get("/api/v1/clients")[1])["error"].startswith("state database")
    log = web.process.stderr.read().decode()  # type: ignore[union-attr]
    assert "Traceback" not in log and f"/metrics: state database {database} is damaged" in log


def test_a_shared_endpoint_and_watcher_show_as_the_clients_services(tmp_path: Path) -> None:
    site = Site(tmp_path, ports=1)
    port = free_port_range(1)[0]
    site.config_path.write_text(site.config_path.read_text().replace(
        "[server]\n", '[server]\nendpoint = "shared"\nsyncd = "shared"\n') + f'\n[web]\nlisten = "127.0.0.1:{port}"\n')
    assert site.cli("init").code == 0
    site.add_client("web01", "usb")
    site.start_supervision()
    try:
        wait_until(lambda: accepts_connections(port), 30, "the web service under runit")

        def services() -> dict[str, str]:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/v1/clients/web01", timeout=20) as response:
                shown = json.load(response)["endpoint"]["services"]
            return {service: row["state"] for service, row in shown.items()}

        wait_until(lambda: services() == {"rest": "run", "syncd": "run"}, 30, "the shared services shown running")
    finally:
        assert site.stop_supervision() == []


def test_metrics_pass_promtool_and_carry_the_alerting_gauges(server: Server, tmp_path: Path) -> None:
    port = three_clients(server)
    with web_service(server, port) as web:
        status, body, headers = web.get("/metrics")
    assert status == 200 and headers["Content-Type"].startswith("text/plain; version=0.0.4")
    checked = subprocess.run(["promtool", "check", "metrics"], input=body, capture_output=True, timeout=60,
                             check=False)
    assert checked.returncode == 0, checked.stdout.decode() + checked.stderr.decode()
    text = body.decode()
    assert _metric(text, "triplicate_location_up", client="web02", location="usb") == 0
    assert _metric(text, "triplicate_location_up", client="web02", location="nas") == 1
    assert _metric(text, "triplicate_replication_lag_seconds", client="web02", location="usb") > 0
    assert _metric(text, "triplicate_replication_lag_seconds", client="web01", location="usb") == 0
    newest = _metric(text, "triplicate_newest_snapshot_timestamp_seconds", client="web01", location="usb")
    assert newest == _metric(text, "triplicate_newest_snapshot_timestamp_seconds", client="web01",
                             location="@primary")
    assert time.time() - 600 < newest <= time.time()
    assert 'triplicate_newest_snapshot_timestamp_seconds{client="web02",location="usb"}' not in text
    assert _metric(text, "triplicate_last_success_timestamp_seconds", client="web01", location="nas") > 0
    assert _metric(text, "triplicate_failures_total", client="web02", location="usb") == 1
    assert _metric(text, "triplicate_bytes_copied_total", client="web01", location="usb") > 1_000_000
    assert "process_resident_memory_bytes" in text
    assert 'triplicate_build_info{python="' in text and "queue_length" not in text


def test_the_example_alert_rules_pass_promtool(tmp_path: Path) -> None:
    rules = DOCS / "prometheus-alerts.yml"
    checked = subprocess.run(["promtool", "check", "rules", str(rules)], capture_output=True, text=True,
                             timeout=60, check=False)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "SUCCESS" in checked.stdout
    text = rules.read_text()
    for metric in ("triplicate_newest_snapshot_timestamp_seconds", "triplicate_location_up",
                   "triplicate_replication_overdue_seconds", "triplicate_restore_check_ok", "triplicate_audit_status"):
        assert metric in text, metric


# promtool's unit test of the example rules: each alert fires on the series it is for, and only then.
# Time starts at 0: web01's newest snapshot arrived at 0 and nothing since (backups stopped);
# web02's usb is down from the start; web01's usb is up throughout.
RULE_TESTS = """\
rule_files: [{rules}]
evaluation_interval: 1m
tests:
  - interval: 1m
    input_series:
      - series: 'triplicate_newest_snapshot_timestamp_seconds{{client="web01",location="@primary"}}'
        values: '0x2300'
      - series: 'triplicate_location_up{{client="web02",location="usb"}}'
        values: '0x2300'
      - series: 'triplicate_location_up{{client="web01",location="usb"}}'
        values: '1x2300'
      - series: 'triplicate_build_info{{version="0",python="3"}}'
        values: '1x2300'
    alert_rule_test:
      - {{eval_time: 20m, alertname: TriplicateLocationDown, exp_alerts: []}}
      - eval_time: 45m
        alertname: TriplicateLocationDown
        exp_alerts:
          - exp_labels: {{severity: warning, client: web02, location: usb}}
            exp_annotations: {{summary: "web02 -> usb: replication failing"}}
      - {{eval_time: 36h, alertname: TriplicateBackupsStopped, exp_alerts: []}}
      - eval_time: 37h
        alertname: TriplicateBackupsStopped
        exp_alerts:
          - exp_labels: {{severity: critical, client: web01, location: "@primary"}}
            exp_annotations: {{summary: "web01: no new backup for 1d 13h 0m 0s"}}
      - {{eval_time: 37h, alertname: TriplicateMetricsMissing, exp_alerts: []}}
"""


def test_the_example_alerts_fire_on_what_they_are_for(tmp_path: Path) -> None:
    tests = tmp_path / "alerts-test.yml"
    tests.write_text(RULE_TESTS.format(rules=json.dumps(str(DOCS / "prometheus-alerts.yml"))))
    tested = subprocess.run(["promtool", "test", "rules", str(tests)], capture_output=True, text=True,
                            timeout=60, check=False)
    assert tested.returncode == 0, tested.stdout + tested.stderr


def _save_screenshot(name: str, shot: Path) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    if shot.exists():
        shutil.copy(shot, ARTIFACTS / name)


def test_the_dashboard_in_a_real_browser(server: Server, tmp_path: Path) -> None:
    port = three_clients(server)
    shot = tmp_path / "dashboard.png"
    with web_service(server, port) as web, browser() as chromium:
        try:
            grid = chromium.visit(web.base + "/", {
                "failed": "getComputedStyle(document.querySelector('[data-cell=\"web02/usb\"]')).backgroundColor",
                "fine": "getComputedStyle(document.querySelector('[data-cell=\"web02/nas\"]')).backgroundColor",
                "rows": "document.querySelectorAll('table.grid tbody tr').length",
                "phone": "document.querySelector('meta[name=viewport]').content",
            }, screenshot=shot)
            assert grid["failed"] == "rgb(229, 62, 62)"  # --failed: red
            assert grid["fine"] == "rgb(56, 161, 105)"  # --ok: green
            assert grid["rows"] == 3 and "width=device-width" in grid["phone"]
            page = chromium.visit(web.base + "/client/web01", {
                "charts": "document.querySelectorAll('svg.chart').length",
                "dots": "document.querySelectorAll('svg.chart circle').length",
                "width": "document.querySelector('svg.chart').getBoundingClientRect().width",
                "bars": "document.querySelectorAll('svg.chart rect').length",
            }, screenshot=tmp_path / "client.png")
            assert page["charts"] == 3
            assert page["dots"] == 3  # one arrival, and its latency at usb and at nas
            assert page["bars"] == 2 and page["width"] > 100  # bytes per day, per location; drawn
            for path in ("/", "/client/web02"):  # on a phone: nothing wider than the screen but the tables' scroll
                phone = chromium.visit(web.base + path, {
                    "page": "document.documentElement.scrollWidth <= window.innerWidth",
                    "text": "parseFloat(getComputedStyle(document.body).fontSize)",
                    "chart": "(document.querySelector('svg.chart') || {getBoundingClientRect: () => ({width: 1})})"
                             ".getBoundingClientRect().width <= window.innerWidth",
                }, screenshot=tmp_path / "phone.png", phone=True)
                assert phone == {"page": True, "text": 15, "chart": True}, (path, phone)
        except BaseException:
            _save_screenshot("web-dashboard.png", shot)
            _save_screenshot("web-client.png", tmp_path / "client.png")
            _save_screenshot("web-phone.png", tmp_path / "phone.png")
            raise
        dom = dump_dom(web.base + "/")  # the exact command an operator can run
        assert 'data-cell="web02/usb" data-state="failed"' in dom


def _bcrypt(password: str) -> str:
    return bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds=4)).decode()


def test_logins_and_tls_with_the_servers_certificate(server: Server, tmp_path: Path) -> None:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj",
                    "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key),
                    "-out", str(cert)], check=True, capture_output=True, timeout=60)
    port = three_clients(server, web=f'users = {{ admin = "{_bcrypt("s3cret pass")}" }}\n')
    text = server.config_path.read_text().replace(
        "[server]\n", f'[server]\ntls_cert = "{cert}"\ntls_key = "{key}"\n', 1)
    server.config_path.write_text(text.replace('listen = "127.0.0.1', 'listen = "0.0.0.0'))
    trusted = ssl.create_default_context(cafile=str(cert))
    with web_service(server, port, scheme="https") as web:
        status, _, headers = web.get("/api/v1/clients", context=trusted)
        assert status == 401 and headers["WWW-Authenticate"].startswith("Basic")
        wrong = {"Authorization": "Basic " + base64.b64encode(b"admin:nope").decode()}
        assert web.get("/metrics", wrong, context=trusted)[0] == 401
        right = {"Authorization": "Basic " + base64.b64encode(b"admin:s3cret pass").decode()}
        for path in ("/", "/client/web02", "/metrics", "/api/v1/clients", "/api/v1/locations"):
            status, body, _ = web.get(path, right, context=trusted)
            assert status == 200, path
            assert b"password" not in body.replace(b"password_", b""), path  # no secret, not even a path
            assert str(server.password_file).encode() not in body, path
    with pytest.raises((urllib.error.URLError, ConnectionError)):  # plain HTTP is not served
        urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=10)


def test_web_refuses_an_open_address_without_users_and_an_unset_listen(server: Server) -> None:
    result = server.cli("web")
    assert result.code == 2 and "web.listen: not set" in result.err
    port = free_port_range(1)[0]
    server.config_path.write_text(server.config_path.read_text() + f'\n[web]\nlisten = "0.0.0.0:{port}"\n')
    result = server.cli("web")
    assert result.code == 2 and "reachable from other machines" in result.err
    server.config_path.write_text(server.config_path.read_text().replace(f"0.0.0.0:{port}", "nowhere"))
    result = server.cli("web")
    assert result.code == 2 and "web.listen:" in result.err and "expected ADDR:PORT" in result.err


def test_the_service_tree_runs_the_web_service_when_listen_is_set(server: Server) -> None:
    port = free_port_range(1)[0]
    base = server.config_path.read_text()
    server.config_path.write_text(base + f'\n[web]\nlisten = "127.0.0.1:{port}"\n')
    layout = Layout(server.root / "state")
    programs = Programs.find()
    report = reconcile(load_config(server.config_path), server.config_path, programs)
    run = (layout.web / "run").read_text()
    assert run.rstrip().endswith(f"-c {server.config_path} web")
    assert layout.web_link.is_symlink() and (layout.web / "log" / "run").exists()
    assert any("enabled the web service" in change for change in report.changes)
    assert not reconcile(load_config(server.config_path), server.config_path, programs).changes
    server.config_path.write_text(base)
    report = reconcile(load_config(server.config_path), server.config_path, programs)
    assert not layout.web.exists() and not layout.web_link.is_symlink()


def test_sighup_reloads_clients_and_users(server: Server) -> None:
    port = three_clients(server, web=f'users = {{ admin = "{_bcrypt("first")}" }}\n')
    login = {"Authorization": "Basic " + base64.b64encode(b"admin:first").decode()}
    with web_service(server, port) as web:
        assert web.get("/api/v1/server", login)[0] == 200
        text = server.config_path.read_text().replace(_first_hash(server), _bcrypt("second"))
        server.config_path.write_text(text + '\n[clients.web04]\nreplicate_to = ["usb"]\n')
        web.process.send_signal(signal.SIGHUP)
        second = {"Authorization": "Basic " + base64.b64encode(b"admin:second").decode()}
        wait_until(lambda: web.get("/api/v1/server", second)[0] == 200, 20, "the new password to be accepted")
        assert web.get("/api/v1/server", login)[0] == 401
        _, body, _ = web.get("/api/v1/clients", second)
        assert list(json.loads(body)["clients"])[-1] == "web04"
        server.config_path.write_text("[server\n")  # a broken file is refused, the running one kept
        web.process.send_signal(signal.SIGHUP)
        assert web.get("/api/v1/server", second)[0] == 200 and web.process.poll() is None


def _get(url: str, context: ssl.SSLContext | None = None) -> int:
    """The status of a GET on ``url``, 0 when nothing answers there."""
    try:
        with urllib.request.urlopen(url, timeout=10, context=context) as response:
            return int(response.status)
    except urllib.error.HTTPError as error:
        return error.code
    except (urllib.error.URLError, ConnectionError, OSError):
        return 0


def test_sighup_moves_the_service_to_a_new_listen_address(server: Server) -> None:
    low, _ = free_port_range(3)
    first, second, taken = low, low + 1, low + 2
    server.config_path.write_text(server.config_path.read_text() + f'\n[web]\nlisten = "127.0.0.1:{first}"\n')
    with web_service(server, first) as web:
        assert web.get("/api/v1/server")[0] == 200
        server.config_path.write_text(server.config_path.read_text().replace(f":{first}", f":{second}"))
        web.process.send_signal(signal.SIGHUP)
        wait_until(lambda: _get(f"http://127.0.0.1:{second}/api/v1/server") == 200, 20, "the new address to answer")
        wait_until(lambda: not accepts_connections(first), 10, "the old address to close")

        # A taken address keeps the service where it is; the rest of the file (a new client) applies.
        with listening_on(taken):
            text = server.config_path.read_text().replace(f":{second}", f":{taken}")
            server.config_path.write_text(text + '\n[clients.web04]\nreplicate_to = ["usb"]\n')
            web.process.send_signal(signal.SIGHUP)

            def web04_listed() -> bool:
                with urllib.request.urlopen(f"http://127.0.0.1:{second}/api/v1/clients", timeout=10) as response:
                    return "web04" in json.load(response)["clients"]

            wait_until(web04_listed, 20, "the reload to apply the new client")
        assert web.process.poll() is None and _get(f"http://127.0.0.1:{second}/api/v1/server") == 200
    log = web.process.stderr.read().decode()  # type: ignore[union-attr]
    assert f"now serving on http://127.0.0.1:{second} (was 127.0.0.1:{first})" in log, log
    assert f"web.listen 127.0.0.1:{taken}: " in log and f"still serving on http://127.0.0.1:{second}" in log, log


def _certificate(folder: Path, name: str) -> tuple[Path, Path]:
    cert, key = folder / f"{name}.pem", folder / f"{name}.key"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj",
                    f"/CN={name}", "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key),
                    "-out", str(cert)], check=True, capture_output=True, timeout=60)
    return cert, key


def _served_certificate(port: int) -> bytes:
    return ssl.PEM_cert_to_DER_cert(ssl.get_server_certificate(("127.0.0.1", port), timeout=10))


def test_sighup_switches_tls_on_and_serves_a_renewed_certificate(server: Server, tmp_path: Path) -> None:
    port = free_port_range(1)[0]
    cert, key = _certificate(tmp_path, "first")
    plain = server.config_path.read_text() + f'\n[web]\nlisten = "127.0.0.1:{port}"\n'
    server.config_path.write_text(plain)
    with web_service(server, port) as web:
        assert web.get("/api/v1/server")[0] == 200
        server.config_path.write_text(plain.replace("[server]\n", f'[server]\ntls_cert = "{cert}"\n'
                                                                  f'tls_key = "{key}"\n', 1))
        web.process.send_signal(signal.SIGHUP)
        trusted = ssl.create_default_context(cafile=str(cert))
        wait_until(lambda: _get(f"https://127.0.0.1:{port}/api/v1/server", trusted) == 200, 20,
                   "HTTPS on the same address")
        assert _get(f"http://127.0.0.1:{port}/api/v1/server") == 0  # plain HTTP is no longer served

        # A renewed certificate in the same files (as certbot writes it) is served after the reload.
        renewed, renewed_key = _certificate(tmp_path, "renewed")
        shutil.copyfile(renewed_key, key)
        shutil.copyfile(renewed, cert)
        assert _served_certificate(port) != ssl.PEM_cert_to_DER_cert(renewed.read_text())  # not before the reload
        web.process.send_signal(signal.SIGHUP)
        wait_until(lambda: _served_certificate(port) == ssl.PEM_cert_to_DER_cert(renewed.read_text()), 20,
                   "the renewed certificate to be served")
        assert _get(f"https://127.0.0.1:{port}/api/v1/server", ssl.create_default_context(cafile=str(renewed))) == 200


def _first_hash(server: Server) -> str:
    return server.config_path.read_text().split('admin = "', 1)[1].split('"', 1)[0]
