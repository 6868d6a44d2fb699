"""Notification types and heartbeat pings from a real ``triplicate syncd``, received on loopback."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from tests.support.repository import BASE_CONFIG, Server, put_a_file_in_place_of, write_files
from tests.support.syncd import DaemonProcess, NotificationSink
from triplicate.state.db import connect

TIMEOUT = 30.0


class PingReceiver:
    """A loopback HTTP server that records (path, body) of every ping, as healthchecks.io receives them."""

    def __init__(self) -> None:
        pings: list[tuple[str, str]] = []
        self.pings = pings

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0))).decode()
                pings.append((self.path, body))
                self._answer()

            def do_GET(self) -> None:
                pings.append((self.path, ""))
                self._answer()

            def _answer(self) -> None:
                self.send_response(200)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"OK")

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/ping/web01-token"

    def paths(self) -> list[str]:
        return [path for path, _ in list(self.pings)]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver() -> Iterator[PingReceiver]:
    instance = PingReceiver()
    yield instance
    instance.close()


@pytest.fixture
def sink() -> Iterator[NotificationSink]:
    instance = NotificationSink()
    yield instance
    instance.close()


def configure(server: Server, client_keys: str = "", server_keys: str = "", extra: str = "") -> None:
    text = BASE_CONFIG.replace("[server]\n", "[server]\n" + server_keys + "\n", 1)
    key = 'password_file = "{root}/password"\n'
    text = text.replace(key, key + client_keys + "\n")
    server.write_config(text + "\n" + extra)


def start(daemons: list[DaemonProcess], server: Server) -> DaemonProcess:
    process = DaemonProcess(server.config_path)
    daemons.append(process)
    return process.started()


def test_notifications_carry_the_type_of_the_event(server: Server, daemons: list[DaemonProcess],
                                                    sink: NotificationSink) -> None:
    server.replica("usb").write_text("a file where the client's folder should be")
    configure(server, server_keys='retry_max_backoff = "1s"',
              extra=f'[notify]\nurls = ["{sink.url}"]\nafter_failures = 1\n')
    daemon = start(daemons, server)
    daemon.wait_until(lambda: sink.received, TIMEOUT, "the failure notification")
    assert [(message["title"], message["type"]) for message in sink.received] == [
        ("triplicate: web01 -> usb is failing", "failure")]
    server.replica("usb").unlink()
    daemon.wait_until(lambda: len(sink.received) >= 2, TIMEOUT, "the recovery notification")
    assert (sink.received[1]["title"], sink.received[1]["type"]) == ("triplicate: web01 -> usb recovered", "success")


def test_heartbeat_pings_start_then_success_or_fail_around_replication(
        server: Server, daemons: list[DaemonProcess], receiver: PingReceiver, tmp_path: Path) -> None:
    configure(server, client_keys=f'heartbeat_url = "{receiver.url}"', server_keys='retry_max_backoff = "1s"')
    daemon = start(daemons, server)
    daemon.wait_until(lambda: len(receiver.pings) >= 2, TIMEOUT, "the start-up catch-up's pings")
    assert receiver.paths()[:2] == ["/ping/web01-token/start", "/ping/web01-token"]
    assert receiver.pings[1][1] == "replicated to 2 location(s)"

    # usb breaks, then a backup arrives: the replication fails at usb and says so.
    put_a_file_in_place_of(server.replica("usb"), server.root / "usb-replica-taken-away",
                           "a file where the client's folder should be")
    before = len(receiver.pings)
    write_files(tmp_path / "more", "two", count=1, size=1 << 16)
    server.backup(tmp_path / "more")
    daemon.wait_until(lambda: any(path.endswith("/fail") for path in receiver.paths()[before:]), TIMEOUT,
                      "a fail ping")
    new = receiver.pings[before:]
    assert new[0][0] == "/ping/web01-token/start"
    fail = next(body for path, body in new if path.endswith("/fail"))
    assert fail.startswith("usb: ") and "nas" not in fail
    assert "Traceback" not in daemon.log


def test_a_client_without_a_recent_backup_pings_fail(server: Server, daemons: list[DaemonProcess],
                                                     receiver: PingReceiver) -> None:
    configure(server, client_keys=f'heartbeat_url = "{receiver.url}"\nexpect_backup_every = "20s"')
    assert server.cli("sync", "web01").code == 0
    database = connect(server.root / "state")
    with database:  # the primary's only snapshot arrived an hour ago
        database.execute("UPDATE snapshots SET first_seen=? WHERE client='web01'", (time.time() - 3600,))
    database.close()
    daemon = start(daemons, server)
    daemon.wait_until(lambda: any(path.endswith("/fail") and "expect_backup_every" in body
                                  for path, body in list(receiver.pings)), TIMEOUT, "a fail ping for the old backup")
    body = next(body for path, body in receiver.pings if "expect_backup_every" in body)
    assert body.startswith("newest backup 1h") and "more than expect_backup_every (20s)" in body


def test_an_uptime_kuma_push_url_gets_up_and_down(server: Server, daemons: list[DaemonProcess],
                                                   receiver: PingReceiver) -> None:
    push = f"http://127.0.0.1:{receiver.server.server_address[1]}/api/push/AbC123"
    server.replica("nas").write_text("a file where the client's folder should be")
    configure(server, client_keys=f'heartbeat_url = "{push}"', server_keys='retry_max_backoff = "1s"')
    daemon = start(daemons, server)
    daemon.wait_until(lambda: receiver.pings, TIMEOUT, "the push")
    path = receiver.paths()[0]
    assert path.startswith("/api/push/AbC123?status=down&msg=nas%3A+"), path  # no /start: Kuma has none
    server.replica("nas").unlink()
    daemon.wait_until(lambda: any("status=up" in path for path in receiver.paths()), TIMEOUT, "the up push")


def test_a_scheduled_audit_pings_start_then_success_or_fail(server: Server, daemons: list[DaemonProcess],
                                                             receiver: PingReceiver) -> None:
    configure(server, client_keys=f'heartbeat_url = "{receiver.url}"\naudit_every = "1s"')
    daemon = start(daemons, server)

    def audit_pings() -> list[tuple[str, str]]:
        return [(path, body) for path, body in list(receiver.pings) if body.startswith("audit ")]

    daemon.wait_until(lambda: ("/ping/web01-token", "audit passed") in audit_pings(), TIMEOUT, "a passed audit")
    assert audit_pings()[:2] == [("/ping/web01-token/start", "audit started"), ("/ping/web01-token", "audit passed")]
    # Replicated first: what is taken away below was really there.
    nas_snapshots = server.replica("nas") / "snapshots"
    daemon.wait_until(lambda: nas_snapshots.is_dir() and any(nas_snapshots.iterdir()), TIMEOUT, "nas's copy")
    # A lost replica that cannot be refilled: CRITICAL or UNKNOWN.
    put_a_file_in_place_of(server.replica("nas"), server.root / "nas-replica-taken-away",
                           "a file where the client's folder should be")
    daemon.wait_until(lambda: any(path.endswith("/fail") for path, _ in audit_pings()), TIMEOUT, "a failed audit")
    fail = next(body for path, body in audit_pings() if path.endswith("/fail"))
    assert fail.startswith("audit failed: CRITICAL") or fail.startswith("audit failed: UNKNOWN"), fail
    assert "Traceback" not in daemon.log
