"""``triplicate syncd``: the watcher daemon, against real restic backups into watched repositories."""

from __future__ import annotations

import asyncio
import shutil
import signal
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from tests.support.ports import free_port
from tests.support.processes import children_of, exists
from tests.support.repository import BASE_CONFIG, PASSWORD, Server, snapshot_files, write_files
from tests.support.syncd import (
    HOOK_SCRIPT,
    DaemonProcess,
    InProcessDaemon,
    LogRecorder,
    NotificationSink,
    metric_values,
    read_hook_calls,
)
from tests.support.wait import wait_until
from triplicate.actions import JSON_VERSION
from triplicate.daemon.runner import LocationRunner, RunOutcome, backoff_delay
from triplicate.daemon.scheduler import Job, Scheduler
from triplicate.state.daemon import DaemonState

# Generous for a loaded 2-core machine; the benchmark measures the real latency.
ARRIVAL_TIMEOUT = 10.0


def configure(server: Server, server_keys: str = "", extra: str = "") -> None:
    """The fixture's configuration with more [server] keys and more sections."""
    text = BASE_CONFIG.replace("[server]\n", "[server]\n" + server_keys + "\n", 1) + "\n" + extra
    server.write_config(text)


def replicated_everywhere(server: Server, client: str = "web01", locations: tuple[str, ...] = ("usb", "nas")) -> bool:
    wanted = snapshot_files(server.primary(client))
    # Replicas keep what the primary forgot (nothing is ever deleted there): a subset check.
    return bool(wanted) and all(wanted <= snapshot_files(server.replica(location, client))
                                for location in locations)


def start(daemons: list[DaemonProcess], server: Server, *args: str) -> DaemonProcess:
    process = DaemonProcess(server.config_path, *args)
    daemons.append(process)
    return process.started()


def test_a_backup_is_on_every_location_within_seconds_and_metrics_show_it(
    server: Server, daemons: list[DaemonProcess], tmp_path: Path
) -> None:
    port = free_port()
    daemon = start(daemons, server, "--metrics-listen", f"127.0.0.1:{port}")
    # The snapshot that was there before the daemon started is caught up on at once.
    daemon.wait_until(lambda: replicated_everywhere(server), ARRIVAL_TIMEOUT, "the catch-up on start")
    write_files(tmp_path / "more", "two", count=2, size=256 << 10)
    server.backup(tmp_path / "more")
    arrived = time.monotonic()
    daemon.wait_until(lambda: replicated_everywhere(server), ARRIVAL_TIMEOUT, "the new snapshot everywhere")
    assert time.monotonic() - arrived < ARRIVAL_TIMEOUT
    daemon.wait_for_log(r"web01 -> usb: copied \d+ file.*\[event\]")
    for location in ("usb", "nas"):
        assert server.snapshot_ids(server.replica(location)) == server.snapshot_ids(server.primary())
    assert server.check_read_data(server.replica("nas")).returncode == 0

    metrics = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    values = metric_values(metrics)
    for location in ("usb", "nas"):
        labels = f'client="web01",location="{location}"'
        assert values[f"triplicate_snapshots_replicated{{{labels}}}"] == 2
        assert values[f"triplicate_last_success_timestamp_seconds{{{labels}}}"] > time.time() - 60
        assert values[f"triplicate_bytes_copied_total{{{labels}}}"] > 512 << 10
        assert values[f"triplicate_failures_total{{{labels}}}"] == 0
        assert values[f"triplicate_replication_lag_seconds{{{labels}}}"] == 0
        assert values[f"triplicate_queue_length{{{labels}}}"] == 0
    assert values['triplicate_primary_snapshots{client="web01"}'] == 2
    assert PASSWORD not in daemon.log


def test_sigterm_exits_0_promptly_and_a_restart_catches_up(
    server: Server, daemons: list[DaemonProcess], tmp_path: Path
) -> None:
    daemon = start(daemons, server)
    daemon.wait_until(lambda: replicated_everywhere(server), ARRIVAL_TIMEOUT, "the catch-up on start")
    code, seconds = daemon.terminate()
    assert code == 0, daemon.log
    assert seconds < 3, f"took {seconds:.1f}s to stop"
    assert "stopped" in daemon.lines[-1]

    write_files(tmp_path / "while-down", "down", count=2, size=128 << 10)
    server.backup(tmp_path / "while-down")
    assert not replicated_everywhere(server)
    daemon = start(daemons, server)
    daemon.wait_until(lambda: replicated_everywhere(server), ARRIVAL_TIMEOUT, "the catch-up after a restart")


def test_sigterm_in_the_middle_of_a_big_copy_stops_between_files(
    server: Server, daemons: list[DaemonProcess], tmp_path: Path
) -> None:
    write_files(tmp_path / "big", "big", count=8, size=16 << 20)
    server.backup(tmp_path / "big")
    # One copy worker and one location: the copy takes long enough to be interrupted.
    configure(server, "workers = 1")
    daemon = start(daemons, server, "--no-events")
    data = server.replica("usb") / "data"
    daemon.wait_until(lambda: data.is_dir() and any(path.is_file() for path in data.rglob("*")), 30, "copying")
    code, seconds = daemon.terminate()
    assert code == 0 and seconds < 6, (code, seconds, daemon.log)
    assert not replicated_everywhere(server), "the copy finished before SIGTERM: make it bigger"
    # What was copied is whole: a rerun completes a valid replica.
    assert server.cli("sync", "web01").code == 0
    assert server.check_read_data(server.replica("usb")).returncode == 0


def test_a_location_that_is_down_recovers_by_itself_and_people_are_told_once(
    server: Server, daemons: list[DaemonProcess]
) -> None:
    sink = NotificationSink()
    try:
        (server.root / "usb").rmdir()  # not mounted
        server.replica("nas").write_text("a file where the client's folder should be")
        configure(server, 'retry_max_backoff = "1s"',
                  f'[notify]\nurls = ["{sink.url}"]\nafter_failures = 2\n')
        daemon = start(daemons, server)
        daemon.wait_for_log(r"web01 -> usb: failed \(1 in a row.*does not exist")
        daemon.wait_for_log(r"web01 -> nas: failed \(\d+ in a row")
        # Retries go on with backoff, and people hear about each location once, not per retry.
        daemon.wait_for_log(r"web01 -> usb: failed \(4 in a row", timeout=15)
        daemon.wait_for_log(r"web01 -> nas: failed \(4 in a row", timeout=15)
        daemon.wait_until(lambda: len(sink.received) >= 2, 10, "two notifications")
        assert sorted(sink.titles()) == ["triplicate: web01 -> nas is failing",
                                         "triplicate: web01 -> usb is failing"]

        (server.root / "usb").mkdir()
        server.replica("nas").unlink()
        daemon.wait_until(lambda: replicated_everywhere(server), ARRIVAL_TIMEOUT, "recovery of both locations")
        daemon.wait_until(lambda: len(sink.received) >= 4, 10, "recovery notifications")
        assert sorted(sink.titles()[2:]) == ["triplicate: web01 -> nas recovered",
                                             "triplicate: web01 -> usb recovered"]
        assert server.check_read_data(server.replica("usb")).returncode == 0
        assert "Traceback" not in daemon.log
    finally:
        sink.close()


def test_hooks_get_the_ids_added_and_removed_since_their_last_run(
    server: Server, daemons: list[DaemonProcess], tmp_path: Path
) -> None:
    script = tmp_path / "hook.py"
    script.write_text(HOOK_SCRIPT)
    calls = tmp_path / "calls.jsonl"
    configure(server, f'on_change = ["{sys.executable}", "{script}", "{calls}"]')
    first = server.snapshot_ids(server.primary())
    daemon = start(daemons, server)
    # The hook never ran: everything there is new to it.
    daemon.wait_until(lambda: len(read_hook_calls(calls)) == 1, ARRIVAL_TIMEOUT, "the first hook run")
    call = read_hook_calls(calls)[0]
    assert call["env"] == {"TRIPLICATE_CLIENT": "web01", "TRIPLICATE_SNAPSHOTS_ADDED": " ".join(first),
                           "TRIPLICATE_SNAPSHOTS_REMOVED": "", "TRIPLICATE_RESULT": "ok"}
    assert call["stdin"]["snapshots_added"] == first and call["stdin"]["result"] == "ok"
    assert call["stdin"]["version"] == JSON_VERSION  # the version every JSON output carries
    assert call["stdin"]["locations"] == {"usb": {"ok": True, "error": None}, "nas": {"ok": True, "error": None}}
    assert replicated_everywhere(server), "the hook ran before replication finished"
    daemon.wait_for_log(r"hook web01: \| hook saw 1 new snapshot")

    write_files(tmp_path / "second", "second", count=1, size=64 << 10)
    server.backup(tmp_path / "second")
    second = sorted(set(server.snapshot_ids(server.primary())) - set(first))
    daemon.wait_until(lambda: len(read_hook_calls(calls)) == 2, ARRIVAL_TIMEOUT, "the hook after a backup")
    call = read_hook_calls(calls)[1]
    assert call["env"]["TRIPLICATE_SNAPSHOTS_ADDED"] == " ".join(second)
    assert call["env"]["TRIPLICATE_SNAPSHOTS_REMOVED"] == "" and call["env"]["TRIPLICATE_RESULT"] == "ok"
    assert call["stdin"]["snapshots_added"] == second

    server.restic(server.primary(), "forget", first[0])
    daemon.wait_until(lambda: len(read_hook_calls(calls)) == 3, ARRIVAL_TIMEOUT, "the hook after a forget")
    call = read_hook_calls(calls)[2]
    assert call["env"]["TRIPLICATE_SNAPSHOTS_ADDED"] == ""
    assert call["env"]["TRIPLICATE_SNAPSHOTS_REMOVED"] == first[0]
    assert call["stdin"]["snapshots_removed"] == [first[0]]

    # Stopped, a backup arrives: after the restart the hook hears of it, once, and of nothing else.
    assert daemon.terminate()[0] == 0
    write_files(tmp_path / "third", "third", count=1, size=64 << 10)
    server.backup(tmp_path / "third")
    third = sorted(set(server.snapshot_ids(server.primary())) - set(second))
    daemon = start(daemons, server)
    daemon.wait_until(lambda: len(read_hook_calls(calls)) == 4, ARRIVAL_TIMEOUT, "the hook after a restart")
    assert read_hook_calls(calls)[3]["stdin"]["snapshots_added"] == third
    assert read_hook_calls(calls)[3]["stdin"]["snapshots_removed"] == []
    assert replicated_everywhere(server)


def test_a_failing_hook_is_logged_and_replication_goes_on(
    server: Server, daemons: list[DaemonProcess], tmp_path: Path
) -> None:
    failing = "import sys; print('boom', file=sys.stderr); sys.exit(3)"
    configure(server, f'on_change = ["{sys.executable}", "-c", "{failing}"]')
    daemon = start(daemons, server)
    daemon.wait_for_log(r"WARNING triplicate.hooks: hook web01: .* exited with status 3")
    daemon.wait_for_log(r"hook web01: \| boom")
    write_files(tmp_path / "more", "more", count=1, size=64 << 10)
    server.backup(tmp_path / "more")
    daemon.wait_until(lambda: replicated_everywhere(server), ARRIVAL_TIMEOUT, "replication after a failed hook")
    assert daemon.process.poll() is None


def test_a_hook_that_hangs_is_killed_after_hook_timeout(server: Server, daemons: list[DaemonProcess]) -> None:
    configure(server, f'on_change = ["{sys.executable}", "-c", "import time; time.sleep(60)"]\nhook_timeout = "1s"')
    daemon = start(daemons, server)
    daemon.wait_for_log(r"WARNING triplicate.hooks: hook web01: .*timed out after 1s")
    assert daemon.terminate()[0] == 0


def test_a_file_edited_while_the_daemon_starts_is_applied_once_it_listens(
    server: Server, template_repository: Path
) -> None:
    # The run script ignores HUP until the daemon's handler is installed (a reload must not
    # kill a starting watcher), so an edit made meanwhile is noticed by the file itself.
    shutil.copytree(template_repository, server.primary("web02"))
    good = server.config_path.read_text()
    starting = InProcessDaemon(server.config_path)  # reads the file now
    server.config_path.write_text(good + "\n[clients.web02]\nreplicate_to = ['usb']\n")
    with LogRecorder() as log, starting:
        log.wait_for_log(r"reload: configuration applied, 2 client\(s\) served")
        wait_until(lambda: replicated_everywhere(server, "web02", ("usb",)), ARRIVAL_TIMEOUT, "the added client")


def test_sighup_keeps_running_on_a_broken_file_and_applies_a_good_one(
    server: Server, daemons: list[DaemonProcess], tmp_path: Path, template_repository: Path
) -> None:
    daemon = start(daemons, server)
    daemon.wait_until(lambda: replicated_everywhere(server), ARRIVAL_TIMEOUT, "the catch-up on start")
    good = server.config_path.read_text()
    server.config_path.write_text(good + "\n[clients.web02]\nreplicate_to = ['usb', 'ofsite']\nbogus = 1\n")
    daemon.signal(signal.SIGHUP)
    line = daemon.wait_for_log(r"reload: .*keeping the previous configuration")[0]
    assert "clients.web02.replicate_to[1]: unknown location 'ofsite'" in line and "bogus" in line
    write_files(tmp_path / "more", "more", count=1, size=64 << 10)
    server.backup(tmp_path / "more")
    daemon.wait_until(lambda: replicated_everywhere(server), ARRIVAL_TIMEOUT, "replication after a bad reload")

    # A good file: a new client is served, and a disabled one no longer.
    shutil.copytree(template_repository, server.primary("web02"))
    server.config_path.write_text(
        good.replace("[clients.web01]", "[clients.web01]\nenabled = false")
        + "\n[clients.web02]\nreplicate_to = ['usb']\n")
    daemon.signal(signal.SIGHUP)
    daemon.wait_for_log(r"reload: configuration applied, 1 client\(s\) served")
    daemon.wait_until(lambda: replicated_everywhere(server, "web02", ("usb",)), ARRIVAL_TIMEOUT, "the new client")
    daemon.wait_for_log(r"client web01: no longer served")
    server.backup(tmp_path / "more")  # web01's new backup is left alone
    server.backup(tmp_path / "more", client="web02")
    daemon.wait_until(lambda: replicated_everywhere(server, "web02", ("usb",)), ARRIVAL_TIMEOUT, "web02's backup")
    assert not replicated_everywhere(server, "web01")
    assert daemon.process.poll() is None


def test_polling_only_mode_replicates_on_the_rescan_for_the_named_client_only(
    server: Server, daemons: list[DaemonProcess], tmp_path: Path, template_repository: Path
) -> None:
    configure(server, 'poll_interval = "1s"', "[clients.web02]\nreplicate_to = ['usb', 'nas']\n")
    shutil.copytree(template_repository, server.primary("web02"))
    daemon = start(daemons, server, "--no-events", "web01")
    assert "detection by rescans only" in daemon.log and "watching" not in daemon.log
    assert "1 client(s)" in daemon.log
    daemon.wait_until(lambda: replicated_everywhere(server), ARRIVAL_TIMEOUT, "the catch-up on start")
    write_files(tmp_path / "more", "more", count=1, size=64 << 10)
    server.backup(tmp_path / "more")
    daemon.wait_until(lambda: replicated_everywhere(server), ARRIVAL_TIMEOUT, "replication by the rescan")
    daemon.wait_for_log(r"web01 -> nas: copied \d+ file.*\[poll\]")
    assert not server.replica("usb", "web02").exists() and "web02" not in daemon.log


def test_a_client_whose_repository_appears_later_is_picked_up_by_events(
    server: Server, daemons: list[DaemonProcess], tmp_path: Path
) -> None:
    configure(server, 'poll_interval = "1h"', "[clients.web02]\nreplicate_to = ['usb', 'nas']\n")
    shutil.rmtree(server.root / "repos")  # not even repos_dir exists yet
    daemon = start(daemons, server)
    (server.root / "repos").mkdir()
    server.restic(server.primary("web02"), "init")
    write_files(tmp_path / "data", "data", count=1, size=64 << 10)
    server.backup(tmp_path / "data", client="web02")
    daemon.wait_until(lambda: replicated_everywhere(server, "web02"), ARRIVAL_TIMEOUT, "the new repository's snapshot")
    assert daemon.wait_for_log(r"web02 -> usb: copied .*\[(event|rescan)\]")


def test_a_snapshot_still_being_written_in_place_is_copied_once_complete(
    server: Server, daemons: list[DaemonProcess], tmp_path: Path
) -> None:
    # Make a backup elsewhere, then land it as rclone's REST server would: packs and index
    # first, then the snapshot file written in place under its final name, in two parts.
    elsewhere = tmp_path / "elsewhere"
    shutil.copytree(server.primary(), elsewhere)
    write_files(tmp_path / "data", "data", count=1, size=64 << 10)
    server.restic(elsewhere, "backup", "-q", str(tmp_path / "data"))
    daemon = start(daemons, server)
    daemon.wait_until(lambda: replicated_everywhere(server), ARRIVAL_TIMEOUT, "the catch-up on start")
    new_snapshot = (snapshot_files(elsewhere) - snapshot_files(server.primary())).pop()
    for folder in ("data", "index"):
        shutil.copytree(elsewhere / folder, server.primary() / folder, dirs_exist_ok=True)
    content = (elsewhere / "snapshots" / new_snapshot).read_bytes()
    with open(server.primary() / "snapshots" / new_snapshot, "wb") as partial:
        partial.write(content[: len(content) // 2])
        partial.flush()
        daemon.wait_for_log(r"web01: snapshot .* still being written")
        assert new_snapshot not in snapshot_files(server.replica("usb"))
        partial.write(content[len(content) // 2:])
    daemon.wait_until(lambda: replicated_everywhere(server), ARRIVAL_TIMEOUT, "the completed snapshot")
    assert server.check_read_data(server.replica("usb")).returncode == 0


def test_named_clients_only_and_an_unknown_name_is_a_usage_error(server: Server) -> None:
    result = server.cli("syncd", "web01", "nope")
    assert result.code == 2
    assert "unknown client 'nope' (known: web01)" in result.err and "Traceback" not in result.err
    assert server.cli("syncd", "--metrics-listen", "nowhere").code == 2


def test_events_that_cannot_start_fall_back_to_polling(
    server: Server, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # Fault injection: inotify refusing to start (its limits reached) cannot be provoked here
    # without changing the machine's limits for everyone, so watchfiles' native start fails.
    import watchfiles.main

    real = watchfiles.main.RustNotify

    def refuse_native(paths, debug, force_polling, *rest):  # type: ignore[no-untyped-def]
        if not force_polling:
            raise OSError(28, "inotify watch limit reached")
        return real(paths, debug, force_polling, *rest)

    monkeypatch.setattr(watchfiles.main, "RustNotify", refuse_native)
    configure(server, 'poll_interval = "1h"')
    with LogRecorder() as log, InProcessDaemon(server.config_path) as running:
        log.wait_for_log(r"file events unavailable \(OSError: .*inotify watch limit reached\); falling back to polling")
        log.wait_for_log(r"watching 1 folder\(s\) for new snapshots \(polling\)")
        wait_until(lambda: replicated_everywhere(server), ARRIVAL_TIMEOUT, "the catch-up")
        write_files(tmp_path / "more", "more", count=1, size=64 << 10)
        server.backup(tmp_path / "more")
        wait_until(lambda: replicated_everywhere(server), ARRIVAL_TIMEOUT, "replication by polled events")
        assert running.daemon.watcher is not None and running.daemon.watcher.force_polling


# ---- the scheduling pieces on their own ------------------------------------------------------


def test_runner_runs_one_at_a_time_queues_exactly_one_follow_up_and_backs_off() -> None:
    async def scenario() -> None:
        started: list[str] = []
        release = asyncio.Event()
        outcomes = [True, True, False, False, True]
        finished: list[RunOutcome] = []

        async def execute(runner: LocationRunner, trigger: str) -> RunOutcome:
            started.append(trigger)
            await release.wait()
            release.clear()
            ok = outcomes.pop(0)
            return RunOutcome(ok, None if ok else "down", trigger)

        runner = LocationRunner("web01", "usb", execute, lambda _r, outcome: finished.append(outcome),
                                lambda: 0.05)
        runner.request("event")
        for _ in range(5):  # a burst while running: one follow-up
            runner.request("event")
        await asyncio.sleep(0)
        assert started == ["event"] and runner.queue_length == 2
        release.set()
        await _until(lambda: len(started) == 2)
        assert runner.queue_length == 1
        release.set()
        await _until(lambda: len(finished) == 2 and not runner.running)
        assert len(started) == 2  # no third run: the follow-up saw every request
        runner.request("event")  # this one fails, and its retry too
        await _until(lambda: runner.running)
        release.set()
        await _until(lambda: runner.waiting_to_retry)
        assert runner.failures == 1 and runner.retry_delay == 0.05
        runner.request("event")  # while backing off, requests wait for the retry
        assert not runner.running
        await _until(lambda: len(started) == 4)
        assert started[-1] == "retry"  # not a run for the request made while backing off
        release.set()
        await _until(lambda: runner.failures == 2 and runner.waiting_to_retry)
        await _until(lambda: len(started) == 5)
        release.set()
        await _until(lambda: runner.failures == 0 and not runner.running)
        assert not runner.waiting_to_retry

    asyncio.run(asyncio.wait_for(scenario(), 10))
    assert [backoff_delay(n, 3600) for n in (1, 2, 3, 4)] == [5, 10, 20, 40]
    assert backoff_delay(30, 3600) == 3600 and backoff_delay(3, 1) == 1


def test_periodic_jobs_remember_their_last_run_across_restarts(tmp_path: Path, server: Server) -> None:
    from triplicate.config.load import load_config

    config = load_config(server.config_path)
    ran: list[str] = []

    async def daily_action(client: str) -> None:
        ran.append(f"daily {client}")

    async def often_action(client: str) -> None:
        ran.append(f"often {client}")

    daily = Job("daily", lambda _config, _client: 86400.0, daily_action)
    often = Job("often", lambda _config, _client: 0.05, often_action, persist=False)

    async def first_life() -> None:
        scheduler = Scheduler(DaemonState(tmp_path / "state"), first_run_spread=0)
        scheduler.add_job(daily)
        scheduler.add_job(often)
        scheduler.schedule(config, ["web01"])
        await _until(lambda: ran.count("often web01") >= 4 and "daily web01" in ran)
        for task in scheduler.stop():
            await asyncio.gather(task, return_exceptions=True)

    async def second_life() -> float | None:
        scheduler = Scheduler(DaemonState(tmp_path / "state"))
        scheduler.add_job(daily)
        scheduler.schedule(config, ["web01"])
        due = scheduler.due("web01", "daily")
        scheduler.stop()
        return due

    asyncio.run(first_life())
    assert ran.count("daily web01") == 1  # never ran before: due at once (no spread), then in a day
    stamp = DaemonState(tmp_path / "state").job_last_run("web01", "daily")
    assert stamp is not None and time.time() - stamp < 10
    due = asyncio.run(second_life())  # a restart: due a day after the last run, not now
    assert due == pytest.approx(stamp + 86400)


async def _until(condition, timeout: float = 5.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.005)


def test_an_incomplete_run_is_followed_up_without_a_new_snapshot(
    server: Server, daemons: list[DaemonProcess]
) -> None:
    # One pack of the fixture's snapshot is still being written (rclone's REST server
    # writes in place): the snapshot must wait for it, and the daemon must come back
    # for it by itself, since no new snapshot file will announce that the pack is done.
    pack = next(path for path in (server.primary() / "data").rglob("*") if path.is_file())
    content = pack.read_bytes()
    pack.write_bytes(content[: len(content) // 2])
    daemon = start(daemons, server)
    daemon.wait_for_log(r"web01 -> usb: .*incomplete")
    assert not snapshot_files(server.replica("usb")), "the snapshot waits for its pack"
    pack.write_bytes(content)
    daemon.wait_until(lambda: replicated_everywhere(server), 30, "the follow-up run")
    assert server.check_read_data(server.replica("usb")).returncode == 0


def test_an_rclone_location_keeps_one_rclone_across_runs_stopped_with_the_daemon(
    server: Server, daemons: list[DaemonProcess], tmp_path: Path
) -> None:
    from tests.support.remote import rclone_local_config, rclone_location_toml

    far = server.root / "far-rclone"
    far.mkdir()
    server.write_config(BASE_CONFIG.replace('replicate_to = ["usb", "nas"]', 'replicate_to = ["usb", "far"]')
                        + "\n" + rclone_location_toml("far", f"far:{far}", rclone_local_config(tmp_path)))
    daemon = start(daemons, server)
    on_far = lambda: snapshot_files(server.primary()) <= snapshot_files(far / "web01")  # noqa: E731
    daemon.wait_until(on_far, ARRIVAL_TIMEOUT, "the catch-up on start")
    rclone = set(children_of(daemon.process.pid, "rclone"))
    assert len(rclone) == 1, rclone
    write_files(tmp_path / "more", "two", count=2, size=128 << 10)
    server.backup(tmp_path / "more")
    daemon.wait_until(on_far, ARRIVAL_TIMEOUT, "the new snapshot on the rclone location")
    assert set(children_of(daemon.process.pid, "rclone")) == rclone, "the same rclone served the second run"
    code, _ = daemon.terminate()
    assert code == 0, daemon.log
    assert not exists(rclone.pop()), "rclone stopped with the daemon"
