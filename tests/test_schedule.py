"""Per-client replication schedules (engine/schedule.py), with an injected clock: no waiting."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from tests.support.repository import BASE_CONFIG, Server, write_files
from triplicate.config.load import load_config
from triplicate.engine.schedule import Schedule

HOUR = 3600.0


def at(day: int, hour: int, minute: int = 0) -> float:
    """A local time in January 2026 as a timestamp (the schedule's times are local)."""
    return time.mktime((2026, 1, day, hour, minute, 0, 0, 0, -1))


def _schedule(server: Server, keys: str) -> Schedule:
    server.write_config(BASE_CONFIG + keys)
    config = load_config(server.config_path)
    return Schedule.of(config.client("web01"))


def test_the_default_is_immediate(server: Server) -> None:
    schedule = _schedule(server, "")
    assert schedule.immediate and schedule.describe() == "immediate"
    assert schedule.next_allowed(at(5, 14), at(5, 13)) == at(5, 14)
    assert schedule.due(at(5, 14)) == at(5, 14)
    assert _schedule(server, 'replicate = "immediate"\n').immediate


def test_every_waits_that_long_after_the_last_run(server: Server) -> None:
    schedule = _schedule(server, 'replicate_every = "6h"\n')
    assert schedule.describe() == "every 6h"
    assert schedule.next_allowed(at(5, 14), None) == at(5, 14), "never run: at once"
    assert schedule.next_allowed(at(5, 14), at(5, 10)) == at(5, 16)
    assert schedule.next_allowed(at(5, 17), at(5, 10)) == at(5, 17)
    assert schedule.due(at(5, 14)) == at(5, 20)
    assert schedule.overdue(at(5, 14), at(5, 19)) == 0
    assert schedule.overdue(at(5, 14), at(5, 21)) == HOUR


def test_at_runs_once_a_time_has_passed_since_the_last_run(server: Server) -> None:
    schedule = _schedule(server, 'replicate_at = ["14:00", "2:00"]\n')
    assert schedule.describe() == "at 02:00, 14:00"
    assert schedule.next_allowed(at(5, 10), at(5, 2)) == at(5, 14), "02:00's run done: wait for 14:00"
    assert schedule.next_allowed(at(5, 15), at(5, 2)) == at(5, 15), "14:00 passed since: at once"
    assert schedule.next_allowed(at(5, 15), at(5, 14, 30)) == at(6, 2), "over midnight"
    assert schedule.next_allowed(at(5, 15), None) == at(6, 2), "never run: the next time"
    assert schedule.due(at(5, 3)) == at(5, 14)
    assert schedule.due(at(5, 23)) == at(6, 2)


def test_a_window_allows_runs_inside_it_and_is_judged_at_its_end(server: Server) -> None:
    schedule = _schedule(server, 'replicate_window = "01:00-05:00"\n')
    assert schedule.describe() == "within 01:00-05:00"
    assert schedule.next_allowed(at(5, 14), None) == at(6, 1)
    assert schedule.next_allowed(at(5, 0, 59), at(4, 2)) == at(5, 1)
    assert schedule.next_allowed(at(5, 1), None) == at(5, 1)
    assert schedule.next_allowed(at(5, 4, 59), None) == at(5, 4, 59)
    assert schedule.next_allowed(at(5, 5), None) == at(6, 1), "the end is outside"
    assert schedule.due(at(5, 14)) == at(6, 5), "arrived in the afternoon: due when the night's window ends"
    assert schedule.due(at(5, 2)) == at(5, 5)
    assert schedule.overdue(at(5, 14), at(6, 4, 59)) == 0, "lag within the schedule is no problem"
    assert schedule.overdue(at(5, 14), at(6, 6)) == HOUR, "a missed window is"


def test_a_window_past_midnight(server: Server) -> None:
    schedule = _schedule(server, 'replicate_window = "22:00-04:00"\n')
    assert schedule.inside_window(at(5, 23)) and schedule.inside_window(at(6, 3))
    assert not schedule.inside_window(at(6, 4)) and not schedule.inside_window(at(5, 21, 59))
    assert schedule.next_allowed(at(5, 12), None) == at(5, 22)
    assert schedule.due(at(5, 23)) == at(6, 4)


@pytest.mark.parametrize(("keys", "named"), [
    ('replicate_every = "6h"\nreplicate_window = "01:00-05:00"\n', "replicate_every and replicate_window"),
    ('replicate = "immediate"\nreplicate_at = ["02:00"]\n', "replicate and replicate_at"),
    ('replicate = "later"\n', "replicate"),
    ('replicate_at = ["25:00"]\n', "replicate_at"),
    ('replicate_at = []\n', "replicate_at"),
    ('replicate_window = "01:00"\n', "replicate_window"),
    ('replicate_window = "01:00-01:00"\n', "replicate_window"),
    ('replicate_every = "0s"\n', "replicate_every"),
])
def test_schedule_keys_are_checked_with_errors_naming_the_keys(server: Server, keys: str, named: str) -> None:
    server.write_config(BASE_CONFIG + keys)
    result = server.cli("status")
    assert result.code == 2
    assert named in result.err and "Traceback" not in result.err, result.err


def _window_hours_from(moment: float, start_in: float, length: float) -> str:
    """A replicate_window opening ``start_in`` hours after ``moment`` (local time), ``length`` hours long."""
    def clock(seconds: float) -> str:
        local = time.localtime(seconds)
        return f"{local.tm_hour:02d}:{local.tm_min:02d}"

    return f"{clock(moment + start_in * HOUR)}-{clock(moment + (start_in + length) * HOUR)}"


def test_status_and_audit_judge_lag_against_the_window(server: Server, tmp_path: Path) -> None:
    from triplicate.actions.audit import AuditOptions, run_audit
    from triplicate.actions.status import collect_status

    assert server.cli("sync", "web01").code == 0  # both locations have run once
    write_files(tmp_path / "new", "new", count=1, size=10_000)
    server.backup(tmp_path / "new")
    assert server.cli("sync", "web01", "--to", "nas").code == 0  # the new snapshot is known; usb lacks it
    arrived = time.time()
    server.write_config(BASE_CONFIG + f'replicate_window = "{_window_hours_from(arrived, 3, 1)}"\n')
    config = load_config(server.config_path)
    schedule = Schedule.of(config.client("web01"))
    due = schedule.due(arrived)
    assert 3.9 * HOUR < due - arrived < 4.1 * HOUR

    def problems(now: float) -> list[str]:
        """Status's lag problems (the test server runs no services: those are problems too)."""
        return [problem for problem in collect_status(config, ["web01"], now=now)[0].problems if "lag" in problem]

    def dashboard(now: float) -> tuple[str, list[str]]:
        """The web dashboard's (and /api/v1/clients') state of usb, and its lag problems."""
        from triplicate.web.data import overview

        client = overview(config, now=now)["clients"]["web01"]
        return client["locations"]["usb"]["state"], [problem for problem in client["problems"] if "lag" in problem]

    def usb_audit(now: float) -> tuple[str, str]:
        report = run_audit(config, ["web01"], ["usb"], AuditOptions(record=False, clock=lambda: now))
        location = report.clients["web01"].locations["usb"]
        return location.status.value, " / ".join(finding.text for finding in location.findings)

    # Two hours late by the clock (max_lag is 1h), but the window has not even opened: no problem.
    assert problems(arrived + 2 * HOUR) == []
    assert dashboard(arrived + 2 * HOUR) == ("ok", [])
    status, reasons = usb_audit(arrived + 2 * HOUR)
    assert status == "OK" and "waiting for the client's schedule (within" in reasons, reasons
    # Within max_lag of the window's end: a warning at most, no problem in status.
    assert problems(due + 0.5 * HOUR) == []
    assert usb_audit(due + 0.5 * HOUR)[0] == "WARNING"
    # The window was missed by more than max_lag: a problem, saying so.
    missed = problems(due + 1.5 * HOUR)
    assert len(missed) == 1 and "usb: replication lag" in missed[0] and "past its schedule (within" in missed[0]
    state, missed = dashboard(due + 1.5 * HOUR)
    assert state == "late" and len(missed) == 1 and "past its schedule (within" in missed[0], missed
    status, reasons = usb_audit(due + 1.5 * HOUR)
    assert status == "CRITICAL" and "past its schedule" in reasons, reasons


def test_the_daemon_replicates_a_windowed_client_only_inside_its_window_and_sync_runs_at_once(
        server: Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from tests.support.repository import snapshot_files
    from tests.support.syncd import InProcessDaemon, LogRecorder
    from tests.support.wait import wait_until
    from triplicate.daemon import schedule_wait

    server.write_config(BASE_CONFIG + 'replicate_window = "01:00-05:00"\n')
    fake_now = [at(5, 14)]  # 14:00: outside the window
    looks = [0]  # how many times the waiting runs looked at the clock

    def clock() -> float:
        looks[0] += 1
        return fake_now[0]

    monkeypatch.setattr(schedule_wait, "clock", clock)
    monkeypatch.setattr(schedule_wait, "RECHECK_SECONDS", 0.1)
    primary = snapshot_files(server.primary())

    def replicated(location: str) -> bool:
        return primary <= snapshot_files(server.replica(location))

    with LogRecorder() as log, InProcessDaemon(server.config_path):
        for location in ("usb", "nas"):
            log.wait_for_log(rf"web01 -> {location}: replicates within 01:00-05:00; waiting until 2026-01-06 01:00")
        # The runs wait: after they looked at the clock twenty times more, nothing has been copied.
        seen = looks[0]
        wait_until(lambda: looks[0] >= seen + 20, 10, "the waiting runs to look again")
        assert not replicated("usb") and not replicated("nas")
        fake_now[0] = at(6, 1, 30)  # inside the window
        wait_until(lambda: replicated("usb") and replicated("nas"), 30, "the copy inside the window")
        log.wait_for_log(r"web01 -> usb: within its schedule: replicating")

        # Outside the window again, a new backup waits for the next night ...
        fake_now[0] = at(6, 14)
        write_files(tmp_path / "afternoon", "more", count=1, size=100_000)
        server.backup(tmp_path / "afternoon")
        primary = snapshot_files(server.primary())
        wait_until(lambda: len([line for line in log.messages if "waiting until 2026-01-07 01:00" in line]) >= 2,
                   30, "the new snapshot's runs to wait")
        assert not replicated("usb")
        # ... unless an operator syncs by hand: at once.
        assert server.cli("sync", "web01").code == 0
        assert replicated("usb") and replicated("nas")


def test_while_a_scheduled_run_waits_status_knows_the_new_snapshot_and_judges_its_lag(
        server: Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The daemon's run waiting for the schedule still records the primary's new snapshots, so
    that status (and the metrics) count the lag from their arrival, not from the scheduled run."""
    from tests.support.repository import snapshot_files
    from tests.support.syncd import InProcessDaemon, LogRecorder
    from tests.support.wait import wait_until
    from triplicate.actions.status import collect_status
    from triplicate.daemon import schedule_wait

    server.write_config(BASE_CONFIG + 'replicate_every = "6h"\n')
    assert server.cli("sync", "web01").code == 0  # the last run: the next one is due in 6 hours
    write_files(tmp_path / "new", "new", count=1, size=100_000)
    server.backup(tmp_path / "new")
    arrived = time.time()
    primary = snapshot_files(server.primary())
    monkeypatch.setattr(schedule_wait, "RECHECK_SECONDS", 0.1)

    def locations() -> dict[str, dict[str, object]]:
        rows: dict[str, dict[str, object]] = server.cli("status", "web01", "--json").json()["clients"]["web01"][
            "locations"]
        return rows

    with LogRecorder() as log, InProcessDaemon(server.config_path):
        log.wait_for_log(r"web01 -> usb: replicates every 6h; waiting until")
        wait_until(lambda: locations()["@primary"]["snapshots"] == len(primary), 20,
                   "status to count the primary's new snapshot", context=lambda: str(locations()))
        assert locations()["usb"]["snapshots"] == len(primary) - 1, "the run still waits for the schedule"
    config = load_config(server.config_path)

    def lag_problems(now: float) -> list[str]:
        return [problem for problem in collect_status(config, ["web01"], now=now)[0].problems if "lag" in problem]

    assert lag_problems(arrived + 5 * HOUR) == [], "within the schedule"
    missed = lag_problems(arrived + 7.5 * HOUR)  # due 6h after its arrival; max_lag is 1h
    assert len(missed) == 2 and all("past its schedule (every 6h)" in problem for problem in missed), missed


def test_the_overdue_gauge_judges_the_lag_against_the_schedule(server: Server) -> None:
    """triplicate_replication_overdue_seconds (what the example alert rule watches): a snapshot
    waiting for the client's window is lag, not overdue; for a client replicated at once the two
    are the same."""
    from triplicate.metrics import ReplicationCollector

    assert server.cli("sync", "web01", "--to", "nas").code == 0  # usb lacks the snapshot since the sync's listing

    def gauges(keys: str) -> dict[str, float]:
        server.write_config(BASE_CONFIG + keys)
        config = load_config(server.config_path)
        collector = ReplicationCollector(config.server.state_dir, lambda: [("web01", "usb")],
                                         schedule=lambda client: Schedule.of(config.client(client)))
        return {sample.name: sample.value for family in collector.collect() for sample in family.samples
                if sample.name in ("triplicate_replication_lag_seconds", "triplicate_replication_overdue_seconds")}

    window = _window_hours_from(time.time(), 3, 1)  # opens in three hours
    scheduled = gauges(f'replicate_window = "{window}"\n')
    assert scheduled["triplicate_replication_lag_seconds"] > 0
    assert scheduled["triplicate_replication_overdue_seconds"] == 0, "within the schedule: not overdue"
    immediate = gauges("")
    assert immediate["triplicate_replication_overdue_seconds"] > 0
    assert immediate["triplicate_replication_overdue_seconds"] == pytest.approx(
        immediate["triplicate_replication_lag_seconds"], abs=0.01)


def test_replicate_every_counts_from_the_last_runs_start(server: Server) -> None:
    """As documented: a run that started 7 hours ago and took 5 makes a 6-hourly client due now
    (counted from its end, it would wait 4 more hours)."""
    from tests.support.repository import snapshot_files
    from tests.support.syncd import InProcessDaemon
    from tests.support.wait import wait_until
    from triplicate.state.replication import ReplicationState, RunRecord

    server.write_config(BASE_CONFIG + 'replicate_every = "6h"\n')
    now = time.time()
    state = ReplicationState(load_config(server.config_path).server.state_dir)
    try:
        for location in ("usb", "nas"):
            state.record_run(RunRecord("web01", location, "cli", started=now - 7 * HOUR, finished=now - 2 * HOUR,
                                       ok=True, files_copied=0, bytes_copied=0, files_skipped_in_progress=0,
                                       corrupt_files=[], error=None))
    finally:
        state.close()
    primary = snapshot_files(server.primary())
    with InProcessDaemon(server.config_path):
        wait_until(lambda: primary <= snapshot_files(server.replica("usb"))
                   and primary <= snapshot_files(server.replica("nas")), 30, "the copy due 6h after the last start")
