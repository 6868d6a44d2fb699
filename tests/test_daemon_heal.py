"""The daemon heals by itself: what a scheduled audit finds damaged, at the primary too, with real restic."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.repository import BASE_CONFIG, Server, age_file, file_hash_matches_name, flip_byte
from tests.support.syncd import DaemonProcess, NotificationSink
from triplicate.state.audit import AuditState, last_audit
from triplicate.state.daemon import DaemonState

TIMEOUT = 90.0


@pytest.fixture
def sink() -> Iterator[NotificationSink]:
    receiver = NotificationSink()
    yield receiver
    receiver.close()


def start(daemons: list[DaemonProcess], server: Server, sink: NotificationSink) -> DaemonProcess:
    """syncd with an audit every second that re-reads every file, at the primary and each location."""
    server.write_config(BASE_CONFIG.replace(
        'password_file = "{root}/password"\n',
        'password_file = "{root}/password"\naudit_every = "1s"\naudit_verify_percent = 100\n',
    ) + f'[notify]\nurls = ["{sink.url}"]\n')
    process = DaemonProcess(server.config_path)
    daemons.append(process)
    return process.started()


def heal_runs(server: Server) -> list[tuple[str, float, bool, str | None]]:
    state = DaemonState(server.root / "state")
    try:
        return [run for run in state.job_runs("web01") if run[0] == "heal"]
    finally:
        state.close()


def heal_rows(server: Server) -> list[dict[str, object]]:
    """The status rows of the automatic heal ("scheduled checks")."""
    scheduled = server.cli("status", "web01", "--json").json()["clients"]["web01"]["scheduled"]
    return [scheduled["heal"]] if "heal" in scheduled else []


def a_replicated_pack(server: Server) -> tuple[Path, str]:
    assert server.cli("sync", "web01").code == 0
    pack = max((path for path in (server.primary() / "data").rglob("*") if path.is_file()),
               key=lambda path: path.stat().st_size)
    return pack, pack.relative_to(server.primary()).as_posix()


def test_rot_in_a_replicated_primary_pack_is_healed_without_a_command(
    server: Server, daemons: list[DaemonProcess], sink: NotificationSink
) -> None:
    pack, relative = a_replicated_pack(server)
    good = pack.read_bytes()
    flip_byte(pack)  # bit rot on the server's disk, long after the backup
    age_file(pack)
    bad = pack.read_bytes()

    daemon = start(daemons, server, sink)
    daemon.wait_until(lambda: file_hash_matches_name(pack), TIMEOUT, "the daemon to heal the primary's pack")
    assert pack.read_bytes() == good
    kept = [path for path in (server.root / "state" / "quarantine" / "web01").rglob("*") if path.is_file()]
    assert [path.read_bytes() for path in kept] == [bad], "the bad copy is kept aside, never deleted"
    assert pack.name in kept[0].name or relative in kept[0].as_posix()
    check = server.check_read_data(server.primary())
    assert check.returncode == 0, check.stderr

    daemon.wait_until(lambda: any(message["type"] == "success" and "healed 1 file" in message["title"]
                                  for message in list(sink.received)), TIMEOUT,
                      f"a success notification; got {sink.titles()}")
    ((_, _, ok, error),) = heal_runs(server)
    assert ok and error is None
    (row,) = heal_rows(server)
    assert row["result"] == "ok" and row["error"] is None, "status shows the last automatic heal"
    # The audit that found it reported it under @primary, as the locations' are. (Not the last
    # audit: by now that may be the heal's own, which does not re-read the primary's files.)
    with AuditState.opened(server.root / "state") as audits:
        found = [row[0] for row in audits.connection.execute(
            "SELECT report FROM audit_locations WHERE location='@primary' AND status='CRITICAL'")]
    assert any(pack.name in report for report in found), found

    def no_longer_found() -> bool:
        """The last audit no longer finds the pack bad: one that re-read the primary says OK; the
        heal's own (a share of 0, the healed file stamped good) leaves @primary out."""
        record = last_audit(server.root / "state", "web01")
        primary = None if record is None else record.locations.get("@primary")
        return record is not None and (primary is None or primary.status == "OK")

    daemon.wait_until(no_longer_found, TIMEOUT, "an audit that no longer finds the primary's pack bad")
    assert all(message["type"] != "failure" for message in sink.received if "heal" in message["title"]
               or "lost" in message["title"])
    assert "Traceback" not in daemon.log


def test_a_pack_bad_at_every_copy_alarms_once_and_is_not_retried(
    server: Server, daemons: list[DaemonProcess], sink: NotificationSink
) -> None:
    pack, relative = a_replicated_pack(server)
    for repo in (server.primary(), server.replica("usb"), server.replica("nas")):
        flip_byte(repo / relative)
        age_file(repo / relative)

    daemon = start(daemons, server, sink)
    daemon.wait_until(lambda: any(message["type"] == "failure" and "no good copy anywhere" in message["title"]
                                  for message in list(sink.received)), TIMEOUT,
                      f"a failure notification; got {sink.titles()}")
    alarm = next(message for message in sink.received if "no good copy anywhere" in message["title"])
    (snapshot,) = server.snapshot_ids(server.primary())
    assert relative in alarm["message"] and f"snapshots that may need it: {snapshot[:8]}" in alarm["message"]
    ((_, healed_at, ok, error),) = heal_runs(server)
    assert not ok and error is not None and f"lost {relative}" in error
    (row,) = heal_rows(server)
    assert row["result"] == "failed" and f"lost {relative}" in row["error"]

    # Three more audits find the same file bad again: no new heal, no new alarm.
    def audit_finished() -> float:
        record = last_audit(server.root / "state", "web01")
        return 0.0 if record is None else record.finished

    for _ in range(3):
        finished = audit_finished()
        daemon.wait_until(lambda after=finished: audit_finished() > after, TIMEOUT, "one more audit")
    assert heal_runs(server)[0][1] == healed_at, "not retried while nothing changed"
    assert sum("no good copy anywhere" in title for title in sink.titles()) == 1
    assert not file_hash_matches_name(pack) and pack.exists(), "a lost file is left as it is"
    assert "Traceback" not in daemon.log


def test_a_damaged_primary_pack_a_run_trips_on_is_healed_from_the_location_that_has_it(
    server: Server, daemons: list[DaemonProcess], sink: NotificationSink
) -> None:
    assert server.cli("sync", "web01", "--to", "usb").code == 0  # nas has not got it yet
    pack = max((path for path in (server.primary() / "data").rglob("*") if path.is_file()),
               key=lambda path: path.stat().st_size)
    relative = pack.relative_to(server.primary()).as_posix()
    good = pack.read_bytes()
    flip_byte(pack)
    age_file(pack)
    server.write_config(BASE_CONFIG + f'[notify]\nurls = ["{sink.url}"]\n')  # no scheduled audit at all
    daemon = DaemonProcess(server.config_path)
    daemons.append(daemon)
    daemon.started()
    daemon.wait_for_log(r"web01 -> nas: failed", TIMEOUT)  # the run to nas reads the primary's bad pack
    daemon.wait_until(lambda: file_hash_matches_name(pack), TIMEOUT, "the heal of the primary's pack from usb")
    assert pack.read_bytes() == good
    nas_copy = server.replica("nas") / relative
    daemon.wait_until(lambda: nas_copy.exists() and file_hash_matches_name(nas_copy), TIMEOUT,
                      "the pack replicated to nas once healed")
    daemon.wait_until(lambda: server.snapshot_ids(server.replica("nas")) == server.snapshot_ids(server.primary()),
                      TIMEOUT, "the snapshot at nas")
    assert server.check_read_data(server.replica("nas")).returncode == 0
    audit = last_audit(server.root / "state", "web01")  # none scheduled: the one the heal recorded afterwards
    assert audit is not None and "@primary" not in audit.locations, "healed without re-reading every file"
    ((_, _, ok, _),) = heal_runs(server)
    assert ok


def test_a_pack_gone_from_the_primarys_disk_is_put_back_with_the_key(
    server: Server, daemons: list[DaemonProcess], sink: NotificationSink
) -> None:
    # Keyless, a pack missing at the primary looks like one a prune removed; the index says otherwise.
    pack, relative = a_replicated_pack(server)
    good = pack.read_bytes()
    pack.unlink()  # lost from the server's disk (a bad sector, a mistaken rm), long after the backup

    daemon = start(daemons, server, sink)
    daemon.wait_until(pack.exists, TIMEOUT, "the daemon to put the primary's pack back")
    assert pack.read_bytes() == good
    check = server.check_read_data(server.primary())
    assert check.returncode == 0, check.stderr
    daemon.wait_until(lambda: any(message["type"] == "success" and "healed 1 file" in message["title"]
                                  for message in list(sink.received)), TIMEOUT,
                      f"a success notification; got {sink.titles()}")
    assert relative in next(message["message"] for message in sink.received if "healed" in message["title"])
    assert "Traceback" not in daemon.log


def test_damage_a_manual_audit_found_is_healed_at_the_next_rescan(
    server: Server, daemons: list[DaemonProcess], sink: NotificationSink
) -> None:
    pack, relative = a_replicated_pack(server)
    replica_pack = server.replica("usb") / relative
    flip_byte(replica_pack)
    age_file(replica_pack)
    # No scheduled audit; the daemon rescans every second.
    server.write_config(BASE_CONFIG.replace('password_file = "{root}/password"\n',
                                            'password_file = "{root}/password"\npoll_interval = "1s"\n')
                        + f'[notify]\nurls = ["{sink.url}"]\n')
    daemon = DaemonProcess(server.config_path)
    daemons.append(daemon)
    daemon.started()
    audit = server.cli("audit", "web01", "--verify", "100")
    assert audit.code == 2 and "corrupt" in audit.out, audit.out + audit.err
    daemon.wait_until(lambda: file_hash_matches_name(replica_pack), TIMEOUT, "the daemon to heal usb's pack")
    daemon.wait_until(lambda: any(message["type"] == "success" and "healed 1 file" in message["title"]
                                  for message in list(sink.received)), TIMEOUT,
                      f"a success notification; got {sink.titles()}")
    assert file_hash_matches_name(pack) and "Traceback" not in daemon.log
    # The heal audits the client again: status and the notifications say it is well, no audit due for that.
    daemon.wait_until(lambda: {"triplicate: audit of web01 is OK", "triplicate: audit of web01 at usb is OK"}
                      <= set(sink.titles()), TIMEOUT, f"the recovery notified; got {sink.titles()}")
    status = server.cli("status", "web01", "--json").json()["clients"]["web01"]
    assert status["audit"]["status"] == "OK", status["audit"]
    assert not any("audit" in problem for problem in status["problems"]), status["problems"]
