"""The daemon's scheduled checks: audit, restore check and retention, with notifications."""

from __future__ import annotations

import os
import threading
import time
import urllib.request
from pathlib import Path

import pytest

from tests.support.ports import free_port
from tests.support.processes import children_of
from tests.support.repository import BASE_CONFIG, Server, take_away, write_files
from tests.support.syncd import DaemonProcess, NotificationSink
from triplicate import execute
from triplicate.state.audit import last_audit
from triplicate.state.restore_check import RestoreCheckState

TIMEOUT = 60.0


@pytest.fixture
def sink() -> NotificationSink:
    receiver = NotificationSink()
    yield receiver
    receiver.close()


def start(daemons: list[DaemonProcess], server: Server, client_keys: str, extra: str, *args: str) -> DaemonProcess:
    server.write_config(BASE_CONFIG.replace('password_file = "{root}/password"\n',
                                            'password_file = "{root}/password"\n' + client_keys + "\n") + extra)
    process = DaemonProcess(server.config_path, *args)
    daemons.append(process)
    return process.started()


def titles(sink: NotificationSink) -> list[str]:
    return sink.titles()


def test_scheduled_audit_and_restore_check_notify_a_broken_location(
    server: Server, daemons: list[DaemonProcess], sink: NotificationSink
) -> None:
    port = free_port()
    daemon = start(daemons, server, 'audit_every = "1s"\nrestore_check_every = "1s"',
                   f'[clients.web01.restore_check]\nfiles = 2\n[notify]\nurls = ["{sink.url}"]\n',
                   "--metrics-listen", f"127.0.0.1:{port}")

    def restore_checks() -> dict[str, object]:
        state = RestoreCheckState(server.root / "state")
        try:
            return state.last_restore_checks("web01")  # type: ignore[return-value]
        finally:
            state.close()

    daemon.wait_until(lambda: (last_audit(server.root / "state", "web01") or None) is not None
                      and last_audit(server.root / "state", "web01").status == "OK", TIMEOUT, "an OK audit")
    daemon.wait_until(lambda: {"usb", "nas"} <= set(restore_checks())
                      and all(record.ok for record in restore_checks().values()), TIMEOUT, "passing restore checks")
    assert titles(sink) == [], "a healthy first audit and restore check notify nobody"
    metrics = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    assert 'triplicate_audit_status{client="web01"} 0.0' in metrics
    assert 'triplicate_audit_location_status{client="web01",location="nas"} 0.0' in metrics
    assert 'triplicate_restore_check_last_success_timestamp_seconds{client="web01",location="usb"}' in metrics

    daemon.terminate()  # (not while a restore reads the replica: restic would retry for a minute)
    # The nas disk loses the client's replica and cannot take it back (a file in its place;
    # a lost replica that can be written is refilled by the daemon at once).
    take_away(server.replica("nas"))
    server.replica("nas").write_text("not a folder")
    daemon = DaemonProcess(server.config_path)
    daemons.append(daemon)
    daemon.started()  # the checks' last runs were stamped: due again a second after them
    daemon.wait_until(lambda: any(title.startswith("triplicate: audit of web01 at nas is ") for title in titles(sink)),
                      TIMEOUT, f"an audit notification; got {titles(sink)}")
    daemon.wait_until(lambda: "triplicate: restore check of web01 at nas FAILED" in titles(sink), TIMEOUT,
                      f"a restore-check notification; got {titles(sink)}")
    assert restore_checks()["usb"].ok and not restore_checks()["nas"].ok
    status = server.cli("status", "web01", "--json")
    shown = status.json()["clients"]["web01"]
    assert shown["restore_check"]["nas"]["result"] == "failed"
    assert shown["audit"]["locations"]["nas"]["status"] in ("CRITICAL", "UNKNOWN")
    assert any("restore check failed" in problem for problem in shown["problems"])
    assert "Traceback" not in daemon.log


def test_scheduled_retention_removes_and_says_so(
    server: Server, daemons: list[DaemonProcess], sink: NotificationSink, tmp_path: Path
) -> None:
    # restic groups snapshots by host and paths: the fixture's snapshot is a group of its
    # own, and two backups of one more folder are another, of which keep_last = 1 keeps one.
    def ids() -> set[str]:
        return set(server.snapshot_ids(server.primary()))

    first = ids()
    write_files(tmp_path / "more", "two", count=1, size=1 << 20)
    server.backup(tmp_path / "more")
    second = ids() - first
    (tmp_path / "more" / "three").write_text("changed")
    server.backup(tmp_path / "more")
    third = ids() - first - second
    daemon = start(daemons, server, "",
                   '[clients.web01.retention]\nkeep_last = 1\nmax_remove_percent = 100\nretention_every = "1s"\n'
                   f'[notify]\nurls = ["{sink.url}"]\n')
    daemon.wait_until(lambda: ids() == first | third, TIMEOUT, "retention")
    daemon.wait_until(lambda: "triplicate: retention removed 1 snapshot(s) of web01" in titles(sink), TIMEOUT,
                      f"a retention notification; got {titles(sink)}")
    assert server.check_read_data(server.primary()).returncode == 0
    status = server.cli("status", "web01", "--json")
    shown = status.json()["clients"]["web01"]
    assert shown["retention"]["result"] == "ok" and shown["retention"]["kept"] == 2
    assert "Traceback" not in daemon.log


def test_a_corrupt_replica_file_found_by_the_scheduled_audit_is_repaired(
    server: Server, daemons: list[DaemonProcess]
) -> None:
    from tests.support.repository import age_file, file_hash_matches_name, flip_byte

    assert server.cli("sync", "web01").code == 0
    pack = next(path for path in (server.replica("nas") / "data").rglob("*") if path.is_file())
    flip_byte(pack)  # bit rot on the nas disk
    age_file(pack)
    daemon = start(daemons, server, 'audit_every = "1s"\naudit_verify_percent = 100', "")
    daemon.wait_until(lambda: file_hash_matches_name(pack), TIMEOUT, "the repair of the corrupt pack")
    daemon.wait_for_log(r"heal web01: 1 file\(s\) healed")  # from a good copy (daemon/healing.py)
    assert server.check_read_data(server.replica("nas")).returncode == 0


def test_sigterm_stops_a_scheduled_restic_at_once(server: Server, daemons: list[DaemonProcess]) -> None:
    """A restic the daemon waits for (here a restore that retries a missing pack for about a
    minute; a prune can take hours) is interrupted, and the daemon exits promptly."""
    daemon = start(daemons, server, 'restore_check_every = "1s"', "[clients.web01.restore_check]\nfiles = 2\n")

    def restore_checks() -> dict[str, object]:
        with RestoreCheckState.opened(server.root / "state") as state:
            return state.last_restore_checks("web01")  # type: ignore[return-value]

    daemon.wait_until(lambda: {"usb", "nas"} <= set(restore_checks()), TIMEOUT, "a first restore check")
    for pack in (server.replica("nas") / "data").rglob("*/*"):
        pack.unlink()  # the next restore from nas retries the missing packs
    daemon.wait_until(lambda: children_of(daemon.process.pid, "restic"), TIMEOUT, "a restic restore running")
    code, seconds = daemon.terminate()
    assert code == 0 and seconds < 10, (code, seconds, daemon.log)
    assert "Traceback" not in daemon.log
    assert restore_checks()["nas"].ok, "an interrupted check is not recorded as a failure"  # type: ignore[attr-defined]


def test_an_interrupted_restic_removes_its_lock(server: Server) -> None:
    """What the daemon does to its restic on SIGTERM: SIGINT, on which restic removes its lock
    (on SIGTERM restic 0.14 leaves it, and clients' backups would wait for a stale lock)."""
    from triplicate.restic import restic_environment

    stop = threading.Event()
    results: list[Exception] = []
    env = restic_environment(str(server.primary()), server.password_file)

    def backup() -> None:  # a long restic holding a lock on the primary
        with execute.stoppable(stop):
            try:
                execute.run(["restic", "--no-cache", "backup", "--stdin"], env=env, stdin=os.urandom(400 << 20),
                            check=False)
            except execute.Interrupted as interrupted:
                results.append(interrupted)

    packs_before = set((server.primary() / "data").rglob("*/*"))
    worker = threading.Thread(target=backup)
    worker.start()
    locks = server.primary() / "locks"

    def well_under_way() -> bool:  # locked, and writing packs (restic registers its lock just after taking it)
        return any(locks.iterdir()) and set((server.primary() / "data").rglob("*/*")) != packs_before

    deadline = time.monotonic() + 30
    while not well_under_way() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert well_under_way(), "restic took its lock and wrote packs"
    assert execute.terminate_running(stop) == 1
    worker.join(10)
    assert not worker.is_alive() and isinstance(results[0], execute.Interrupted), results
    assert results[0].result is not None and results[0].result.returncode == 130
    assert list(locks.iterdir()) == []
    with pytest.raises(execute.Interrupted, match="not started: stopping"), execute.stoppable(stop):
        execute.run(["restic", "version"])
    assert execute.run(["restic", "version"]).returncode == 0, "outside the stopped scope, programs still run"


def test_programs_started_by_an_actions_thread_pool_stay_in_the_daemons_scope() -> None:
    """The checks run restic in their own thread pools (one thread per location): those
    programs are interrupted with the daemon too."""

    stop = threading.Event()
    with execute.stoppable(stop), execute.ScopedPool(max_workers=2) as pool:
        running = [pool.submit(execute.run, ["sleep", "30"]) for _ in range(2)]
        deadline = time.monotonic() + 10
        # Both started and registered in the scope (a child exists a moment before run() records it).
        while (len(children_of(os.getpid(), "sleep")) < 2
               or sum(scope is stop for scope in list(execute._running.values())) < 2) and time.monotonic() < deadline:
            time.sleep(0.01)
        started = time.monotonic()
        assert execute.terminate_running(threading.Event()) == 0, "another scope's programs are left alone"
        assert execute.terminate_running(stop) == 2
        for future in running:
            with pytest.raises(execute.Interrupted):
                future.result(timeout=5)
        assert time.monotonic() - started < 5
