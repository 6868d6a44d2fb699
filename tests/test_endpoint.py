"""triplicate's REST endpoint for real: ``triplicate serve`` on 127.0.0.1, the real restic, raw HTTP.

One endpoint process serves three clients for the module: alpha (restic's
backups), beta (a 1 MB quota) and gamma (its repository on a 2 MB tmpfs, when
we are root). Each test leaves the repositories valid for the next.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.endpoint import Endpoint, final_files, misnamed_files, partial_files, read_status, sha
from tests.support.ports import free_port_range
from tests.support.repository import restic_env, write_files
from tests.support.server import Site
from tests.support.wait import wait_until

pytestmark = pytest.mark.slow

V2 = "application/vnd.x.restic.rest.v2"
ROOT = os.geteuid() == 0


@pytest.fixture(scope="module")
def endpoint(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Endpoint]:
    site = Site(tmp_path_factory.mktemp("endpoint"))
    # (no rescan during the module: a watcher here learns of new snapshots from the endpoint)
    text = site.config_path.read_text().replace("[server]\n", '[server]\nendpoint_idle_timeout = "2s"\n'
                                                'poll_interval = "1h"\n')
    site.config_path.write_text(text)
    assert site.cli("init").code == 0
    site.clients = {name: site.add_client(name, "usb") for name in ("alpha", "beta", "gamma")}
    site.config_path.write_text(site.config_path.read_text().replace("[clients.beta]\n",
                                                                     '[clients.beta]\nquota = "1MB"\n'))
    tmpfs = site.root / "repos" / "gamma"
    if ROOT:
        subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(tmpfs)], check=True)
    server = Endpoint(site, "alpha", "beta", "gamma")
    server.start()
    try:
        yield server
    finally:
        server.stop()
        if ROOT:
            subprocess.run(["umount", str(tmpfs)], check=True)


def restic(endpoint: Endpoint, client: str, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return endpoint.site.restic(str(endpoint.site.clients[client]["url"]), *args, timeout=timeout)


@pytest.fixture(scope="module")
def alpha_repository(endpoint: Endpoint) -> Path:
    """alpha's repository, initialised by restic through the endpoint, with two backups."""
    assert restic(endpoint, "alpha", "init").returncode == 0
    data = endpoint.site.root / "data"
    write_files(data, "first", count=3, size=1 << 20)
    for round_ in ("first", "second"):
        if round_ == "second":
            write_files(data, "second", count=2, size=1 << 19)
        backup = restic(endpoint, "alpha", "backup", "-q", str(data))
        assert backup.returncode == 0, backup.stderr
    return endpoint.site.root / "repos" / "alpha"


def test_restic_backs_up_checks_and_restores_through_the_endpoint(endpoint: Endpoint, alpha_repository: Path) -> None:
    snapshots = json.loads(restic(endpoint, "alpha", "snapshots", "--json").stdout)
    assert len(snapshots) >= 2
    check = restic(endpoint, "alpha", "check", "--read-data")
    assert check.returncode == 0, check.stderr
    target = endpoint.site.root / "restored"
    restore = restic(endpoint, "alpha", "restore", "latest", "--target", str(target))
    assert restore.returncode == 0, restore.stderr
    source = endpoint.site.root / "data"
    for path in source.rglob("*"):
        if path.is_file():
            assert (target / path.relative_to("/")).read_bytes() == path.read_bytes()
    # Every file landed verified and durable: its content is its name, nothing is left half-written.
    assert misnamed_files(alpha_repository) == []
    assert partial_files(alpha_repository) == []


def test_forget_is_refused_and_unlock_works(endpoint: Endpoint, alpha_repository: Path) -> None:
    snapshot = sorted(os.listdir(alpha_repository / "snapshots"))[0]
    env = restic_env(str(endpoint.site.clients["alpha"]["url"]), endpoint.site.restic_password)
    forget = subprocess.Popen(["restic", "--no-cache", "forget", snapshot], env=env, text=True,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    log_seen = lambda: f"403 snapshots/{snapshot}" in endpoint.log()  # noqa: E731
    try:
        wait_until(log_seen, 30, "the endpoint to refuse the deletion")
    finally:
        forget.send_signal(signal.SIGINT)  # restic 0.14 retries for ~44 s; it removes its lock on SIGINT
        forget.wait(timeout=20)
    assert forget.returncode != 0
    assert (alpha_repository / "snapshots" / snapshot).is_file()

    # A backup killed with -9 leaves its lock; unlock --remove-all deletes it through the endpoint.
    blocked = subprocess.Popen(["restic", "--no-cache", "backup", "--stdin", "--stdin-filename", "x"], env=env,
                               stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_until(lambda: os.listdir(alpha_repository / "locks"), 20, "restic's lock")
    finally:
        blocked.kill()
        blocked.wait()
    unlock = restic(endpoint, "alpha", "unlock", "--remove-all")
    assert unlock.returncode == 0, unlock.stderr
    assert os.listdir(alpha_repository / "locks") == []


def test_the_watcher_is_told_of_a_new_snapshot_without_file_events(endpoint: Endpoint,
                                                                    alpha_repository: Path) -> None:
    site = endpoint.site
    log_path = site.root / "syncd.log"
    with open(log_path, "wb") as log:
        metrics_port = free_port_range(1)[0]
        watcher = subprocess.Popen([sys.executable, "-m", "triplicate", "-c", str(site.config_path), "syncd",
                                    "alpha", "--no-events", "--metrics-listen", f"127.0.0.1:{metrics_port}"],
                                   stdout=log, stderr=log, stdin=subprocess.DEVNULL)
    try:
        replica = site.root / "usb" / "alpha" / "snapshots"
        wait_until(lambda: replica.is_dir() and len(os.listdir(replica)) == 2, 30, "the first two snapshots in usb")
        assert restic(endpoint, "alpha", "backup", "-q", str(site.config_path)).returncode == 0
        done = time.monotonic()
        wait_until(lambda: len(os.listdir(replica)) == 3, 10, "the third snapshot, announced by the endpoint")
        assert time.monotonic() - done < 5  # no file events, no rescan for an hour: only the announcement
        # Started by the endpoint's word: a snapshot's ([announce]), or a pack's during the backup ([backup]).
        assert "[announce]" in log_path.read_text() or "[backup]" in log_path.read_text()
        # The daemon's metrics show what the endpoint counted.
        wait_until(lambda: 'triplicate_endpoint_received_files_total{client="alpha"}' in _metrics(metrics_port), 15,
                 "the endpoint's counts in the daemon's metrics")
        assert 'triplicate_endpoint_requests_total{client="alpha",method="POST",status="200"}' in _metrics(metrics_port)
    finally:
        watcher.terminate()
        watcher.wait(timeout=30)
    assert not (site.root / "state" / "announce" / "alpha.sock").exists()  # removed at the stop


def _metrics(port: int) -> str:
    return urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()


def test_listings_v1_and_v2_and_loads_with_ranges(endpoint: Endpoint, alpha_repository: Path) -> None:
    v1 = endpoint.request("alpha", "GET", "/alpha/snapshots/")
    assert v1.status == 200 and sorted(json.loads(v1.body)) == sorted(os.listdir(alpha_repository / "snapshots"))
    v2 = endpoint.request("alpha", "GET", "/alpha/data/", headers={"Accept": V2})
    assert v2.status == 200 and v2.headers["Content-Type"] == V2
    packs = {path.name: path.stat().st_size for path in (alpha_repository / "data").rglob("*") if path.is_file()}
    assert {row["name"]: row["size"] for row in json.loads(v2.body)} == packs
    assert endpoint.request("alpha", "GET", "/alpha/locks/").body == b"[]"

    name, size = next(iter(packs.items()))
    content = (alpha_repository / "data" / name[:2] / name).read_bytes()
    head = endpoint.request("alpha", "HEAD", f"/alpha/data/{name}")
    assert head.status == 200 and int(head.headers["Content-Length"]) == size
    whole = endpoint.request("alpha", "GET", f"/alpha/data/{name}")
    assert whole.body == content
    part = endpoint.request("alpha", "GET", f"/alpha/data/{name}", headers={"Range": "bytes=10-99"})
    assert part.status == 206 and part.body == content[10:100]
    tail = endpoint.request("alpha", "GET", f"/alpha/data/{name}", headers={"Range": f"bytes={size - 5}-"})
    assert tail.body == content[-5:]
    assert endpoint.request("alpha", "GET", "/alpha/config").body == (alpha_repository / "config").read_bytes()
    assert endpoint.request("alpha", "HEAD", "/alpha/config").status == 200
    assert endpoint.request("alpha", "GET", "/alpha/keys/" + "0" * 64).status == 404


BAD_PATHS = [
    "/alpha/snapshots/" + "A" * 64,  # upper-case hex is not a restic name
    "/alpha/snapshots/" + "a" * 63,
    "/alpha/snapshots/" + "a" * 65,
    "/alpha/snapshots/../config",
    "/alpha/../beta/config",
    "/alpha/snapshots/..%2f..%2fbeta%2fconfig",
    "/alpha/snapshots%2F" + "a" * 64,
    "/alpha/%2e%2e/beta/config",
    "/alpha//snapshots/" + "a" * 64,
    "/alpha/secrets/" + "a" * 64,
    "/alpha/data/aa/" + "a" * 64,
    "/alpha/.triplicate-partial/" + "a" * 64,
    "/Alpha/config",
]


@pytest.mark.parametrize("path", BAD_PATHS)
def test_a_malformed_path_is_400_and_writes_nothing(endpoint: Endpoint, path: str) -> None:
    before = sorted(str(p) for p in endpoint.site.root.joinpath("repos").rglob("*"))
    body = b"x" * 10
    assert endpoint.request("alpha", "POST", path, body=body).status == 400
    assert endpoint.request("alpha", "GET", path).status == 400
    assert sorted(str(p) for p in endpoint.site.root.joinpath("repos").rglob("*")) == before
    assert f"alpha: 400 {path[:60]}" in endpoint.log()


def test_append_only_no_overwrite_no_delete_and_create_changes_nothing(endpoint: Endpoint,
                                                                      alpha_repository: Path) -> None:
    snapshot = sorted(os.listdir(alpha_repository / "snapshots"))[0]
    path = alpha_repository / "snapshots" / snapshot
    content = path.read_bytes()
    assert endpoint.request("alpha", "POST", f"/alpha/snapshots/{snapshot}", body=content).status == 403
    assert endpoint.request("alpha", "DELETE", f"/alpha/snapshots/{snapshot}").status == 403
    assert endpoint.request("alpha", "DELETE", "/alpha/").status == 403
    config = (alpha_repository / "config").read_bytes()
    assert endpoint.request("alpha", "POST", "/alpha/config", body=b"replaced").status == 403
    before = sorted(str(p) for p in alpha_repository.rglob("*"))
    created = endpoint.request("alpha", "POST", "/alpha/?create=true")
    assert created.status == 403 and b"exists already" in created.body
    assert sorted(str(p) for p in alpha_repository.rglob("*")) == before
    assert path.read_bytes() == content and (alpha_repository / "config").read_bytes() == config
    # Locks alone may be deleted.
    lock = b"a lock"
    assert endpoint.request("alpha", "POST", f"/alpha/locks/{sha(lock)}", body=lock).status == 200
    assert endpoint.request("alpha", "DELETE", f"/alpha/locks/{sha(lock)}").status == 200
    assert not (alpha_repository / "locks" / sha(lock)).exists()


def test_methods_the_protocol_does_not_have_are_405(endpoint: Endpoint, alpha_repository: Path) -> None:
    before = sorted(str(p) for p in alpha_repository.rglob("*"))
    for method, path in (("GET", "/alpha/"), ("POST", "/alpha/"), ("PUT", "/alpha/config"),
                         ("POST", "/alpha/keys/"), ("DELETE", "/alpha/keys/"), ("PATCH", "/alpha/keys/" + "0" * 64)):
        body = b"x" if method in ("POST", "PUT", "PATCH") else None
        assert endpoint.request("alpha", method, path, body=body).status == 405, (method, path)
    assert sorted(str(p) for p in alpha_repository.rglob("*")) == before
    assert endpoint.request("alpha", "GET", "/alpha/keys/").status == 200  # and it goes on serving


def test_a_hash_mismatch_is_400_and_leaves_nothing(endpoint: Endpoint, alpha_repository: Path) -> None:
    body = os.urandom(100_000)
    name = sha(b"something else")
    reply = endpoint.request("alpha", "POST", f"/alpha/data/{name}", body=body)
    assert reply.status == 400
    assert not (alpha_repository / "data" / name[:2] / name).exists()
    assert partial_files(alpha_repository) == []
    assert f"alpha: 400 data/{name[:2]}/{name}: content hashes to" in endpoint.log()
    # The same content under its right name lands, under its two-character folder.
    assert endpoint.request("alpha", "POST", f"/alpha/data/{sha(body)}", body=body).status == 200
    assert (alpha_repository / "data" / sha(body)[:2] / sha(body)).read_bytes() == body


def test_a_body_shorter_than_announced_leaves_nothing(endpoint: Endpoint, alpha_repository: Path) -> None:
    body = os.urandom(50_000)
    name = sha(body)
    with endpoint.raw("alpha") as connection:
        connection.sendall(endpoint.upload_head("alpha", f"/alpha/index/{name}", 100_000) + body)
        connection.shutdown(1)  # the client stops sending: the body is short
        assert read_status(connection) in (0, 400)
    wait_until(lambda: "alpha: 400 index/" in endpoint.log() and partial_files(alpha_repository) == [], 10,
             "the short upload to be refused and removed")
    assert not (alpha_repository / "index" / name).exists()


def test_never_more_than_content_length_is_written(endpoint: Endpoint, alpha_repository: Path) -> None:
    announced, extra = os.urandom(1000), os.urandom(1000)
    # Bytes past the announced length are not part of the file: hashed with them, the name is wrong.
    whole = sha(announced + extra)
    with endpoint.raw("alpha") as connection:
        connection.sendall(endpoint.upload_head("alpha", f"/alpha/index/{whole}", 1000) + announced + extra)
        assert read_status(connection) == 400
    assert not (alpha_repository / "index" / whole).exists()
    # The announced bytes land; what follows is another (malformed) request, refused.
    good = sha(announced)
    with endpoint.raw("alpha") as connection:
        connection.sendall(endpoint.upload_head("alpha", f"/alpha/index/{good}", 1000) + announced)
        assert read_status(connection) == 200
        connection.sendall(extra)
    assert (alpha_repository / "index" / good).read_bytes() == announced
    assert partial_files(alpha_repository) == []


def test_an_upload_without_content_length_is_411(endpoint: Endpoint, alpha_repository: Path) -> None:
    body = b"chunked body"
    head = endpoint.upload_head("alpha", f"/alpha/index/{sha(body)}", 0).replace(
        b"Content-Length: 0", b"Transfer-Encoding: chunked")
    with endpoint.raw("alpha") as connection:
        connection.sendall(head + b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body))
        assert read_status(connection) == 411
    assert not (alpha_repository / "index" / sha(body)).exists()


def test_a_slow_client_is_cut_off_after_the_idle_timeout(endpoint: Endpoint, alpha_repository: Path) -> None:
    body = os.urandom(10_000)
    name = sha(body)
    with endpoint.raw("alpha") as slow_body, endpoint.raw("alpha") as slow_head:
        slow_head.sendall(b"GET /alpha/config HTTP/1.1\r\nHost: x\r\n")  # never finishes its headers
        slow_body.sendall(endpoint.upload_head("alpha", f"/alpha/index/{name}", len(body)) + body[:100])
        started = time.monotonic()
        # Meanwhile everyone else is served.
        assert endpoint.request("beta", "GET", "/beta/keys/").status in (200, 404)
        assert read_status(slow_body) in (0, 408)
        assert read_status(slow_head) == 0
        assert time.monotonic() - started < 10
    wait_until(lambda: partial_files(alpha_repository) == [], 5, "the slow upload's temporary file to go")
    assert not (alpha_repository / "index" / name).exists()
    assert f"alpha: 408 index/{name}: no data for 2s" in endpoint.log()


def test_concurrent_uploads_of_one_name_one_wins_the_other_is_403(endpoint: Endpoint,
                                                                  alpha_repository: Path) -> None:
    body = os.urandom(200_000)
    name = sha(body)
    path = f"/alpha/data/{name}"
    first, second = endpoint.raw("alpha"), endpoint.raw("alpha")
    with first, second:
        for connection in (first, second):  # both are receiving when either finishes
            connection.sendall(endpoint.upload_head("alpha", path, len(body)) + body[:100_000])
        wait_until(lambda: len(partial_files(alpha_repository)) == 2, 10, "both uploads to be in flight")
        statuses: list[int] = []

        def finish(connection: socket.socket) -> None:
            connection.sendall(body[100_000:])
            statuses.append(read_status(connection))

        threads = [threading.Thread(target=finish, args=(connection,)) for connection in (first, second)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    assert sorted(statuses) == [200, 403]
    assert (alpha_repository / "data" / name[:2] / name).read_bytes() == body
    assert partial_files(alpha_repository) == []


def test_an_upload_over_quota_is_507_before_anything_is_written(endpoint: Endpoint) -> None:
    repository = endpoint.site.root / "repos" / "beta"
    assert endpoint.request("beta", "POST", "/beta/?create=true").status == 200
    small = os.urandom(600_000)
    assert endpoint.request("beta", "POST", f"/beta/data/{sha(small)}", body=small).status == 200
    big = os.urandom(600_000)  # 1.2 MB in all: over beta's 1 MB
    reply = endpoint.request("beta", "POST", f"/beta/data/{sha(big)}", body=big)
    assert reply.status == 507 and b"over quota" in reply.body
    assert not (repository / "data" / sha(big)[:2] / sha(big)).exists()
    assert partial_files(repository) == []
    assert f"beta: 507 data/{sha(big)[:2]}/{sha(big)}: over quota" in endpoint.log()


@pytest.mark.skipif(not ROOT, reason="mounting a tmpfs needs root")
def test_a_full_disk_is_507_and_the_temporary_file_is_removed(endpoint: Endpoint) -> None:
    repository = endpoint.site.root / "repos" / "gamma"
    assert endpoint.request("gamma", "POST", "/gamma/?create=true").status == 200
    big = os.urandom(3_000_000)  # the tmpfs holds 2 MB
    reply = endpoint.request("gamma", "POST", f"/gamma/data/{sha(big)}", body=big)
    assert reply.status == 507 and b"disk full" in reply.body
    assert not (repository / "data" / sha(big)[:2] / sha(big)).exists()
    assert partial_files(repository) == []
    assert "gamma: 507 data/" in endpoint.log()
    small = os.urandom(1000)  # and the endpoint goes on serving
    assert endpoint.request("gamma", "POST", f"/gamma/keys/{sha(small)}", body=small).status == 200
    assert endpoint.request("alpha", "GET", "/alpha/keys/").status == 200


def test_only_a_clients_own_credentials_reach_its_repository(endpoint: Endpoint, alpha_repository: Path) -> None:
    beta_password = endpoint.password("beta")
    before = sorted(str(p) for p in alpha_repository.rglob("*"))
    probe = "/alpha/config"
    assert endpoint.request("alpha", "GET", probe, user=None).status == 401
    assert endpoint.request("alpha", "GET", probe, user="alpha", password="guessed").status == 401
    assert endpoint.request("alpha", "GET", probe, user="alpha", password="").status == 401
    assert endpoint.request("alpha", "GET", probe, user="beta", password=beta_password).status == 401
    assert endpoint.request("alpha", "GET", probe, headers={"Authorization": "Basic !!!"}, user=None).status == 401
    assert endpoint.request("alpha", "GET", probe, headers={"Authorization": "Bearer x"}, user=None).status == 401
    # beta on its own port, asking for alpha's repository: 403, reading, listing, writing, creating.
    for method, path in (("GET", "/alpha/config"), ("GET", "/alpha/keys/"), ("POST", "/alpha/keys/" + "0" * 64),
                         ("POST", "/alpha/?create=true"), ("DELETE", "/alpha/locks/" + "0" * 64)):
        body = b"x" if method == "POST" else None
        assert endpoint.request("beta", method, path, body=body).status == 403, (method, path)
    assert sorted(str(p) for p in alpha_repository.rglob("*")) == before
    # Failed logins are logged in one stable line (fail2ban) naming the client tried and the source.
    assert "authentication failed: endpoint=alpha user=beta from=127.0.0.1" in endpoint.log()
    assert "authentication failed: endpoint=alpha user=- from=127.0.0.1" in endpoint.log()


def test_status_shows_what_the_endpoint_counted(endpoint: Endpoint, alpha_repository: Path) -> None:
    site = endpoint.site

    def counted(client: str) -> dict[str, Any]:
        counts = site.cli("status", client, "--json").json()["clients"][client]["endpoint"]
        return counts or {}

    def rejected(counts: dict[str, Any], reason: str) -> int:
        return int(counts.get("rejected", {}).get(reason, 0))

    before_alpha, before_beta = counted("alpha"), counted("beta")
    # What this test counts on, whichever tests ran before in this process (pytest -n splits a module).
    assert endpoint.request("alpha", "GET", "/alpha/config", user="alpha", password="wrong").status == 401
    assert endpoint.request("alpha", "GET", "/alpha/keys/" + "A" * 64).status == 400
    assert endpoint.request("beta", "GET", "/alpha/config").status == 403
    mismatch = os.urandom(1000)
    assert endpoint.request("alpha", "POST", f"/alpha/keys/{sha(b'other')}", body=mismatch).status == 400
    snapshot = sorted(os.listdir(alpha_repository / "snapshots"))[0]
    assert endpoint.request("alpha", "POST", f"/alpha/snapshots/{snapshot}", body=b"x").status == 403
    assert endpoint.request("beta", "POST", "/beta/?create=true").status in (200, 403)
    big = os.urandom(1_100_000)  # over beta's 1 MB whatever it holds
    assert endpoint.request("beta", "POST", f"/beta/data/{sha(big)}", body=big).status == 507
    # (the endpoint writes its counts to the state database every few seconds)
    wait_until(lambda: all(rejected(counted("alpha"), reason) > rejected(before_alpha, reason)
                         for reason in ("hash", "exists", "bad_request")), 15, "alpha's counts in the state database")
    alpha = counted("alpha")
    on_disk = sum(path.stat().st_size for path in final_files(alpha_repository))
    assert alpha["repository_bytes"] == on_disk
    assert alpha["files"] >= len(final_files(alpha_repository))  # (and the locks, deleted since)
    assert alpha["received_bytes"] >= on_disk
    assert alpha["newest_snapshot_age_seconds"] is not None
    assert alpha["failed_logins"] > before_alpha.get("failed_logins", 0)
    requests = alpha["requests"]
    assert isinstance(requests, dict) and requests["POST 200"] >= 10 and requests["GET 401"] >= 1
    wait_until(lambda: rejected(counted("beta"), "quota") > rejected(before_beta, "quota")
             and rejected(counted("beta"), "forbidden") > rejected(before_beta, "forbidden"), 15, "beta's counts")
    beta = counted("beta")
    beta_files = final_files(endpoint.site.root / "repos" / "beta")
    assert beta["quota_bytes"] == 1_000_000
    assert beta["repository_bytes"] == sum(path.stat().st_size for path in beta_files)
    text = site.cli("status", "beta")
    assert "endpoint" in text.out and "1.0 MB" in text.out, text.out  # (code 1: nothing is supervised here)


def test_serve_refuses_unknown_clients_and_a_taken_port(endpoint: Endpoint) -> None:
    site = endpoint.site
    unknown = site.cli("serve", "nobody")
    assert unknown.code == 2 and "unknown client 'nobody'" in unknown.err
    # alpha's port is the module's endpoint's: a second one cannot listen there (exit 3, runit retries).
    second = subprocess.run([sys.executable, "-m", "triplicate", "-c", str(site.config_path), "serve", "alpha"],
                            capture_output=True, text=True, timeout=60)
    assert second.returncode == 3 and "could not open the endpoint of alpha" in second.stderr
    assert "Traceback" not in second.stderr
