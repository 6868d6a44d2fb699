"""``triplicate syncd`` never silently stops protecting a client: it converges or raises the alarm.

Each fault is made for real under a running daemon (a replica emptied with
``rm -rf``, a pack in the wrong folder, a dangling symlink, a damaged pack with a
future time, junk uploaded as a pack or a snapshot), and each test asserts the
alarm (a notification received by apprise's ``json://``, a ``status`` problem, a
metric) and, where the daemon can, the convergence (``restic check`` passes).
The times measured here are the ones in docs/reliability.md.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.support.ports import free_port
from tests.support.repository import (
    BASE_CONFIG,
    Server,
    flip_byte,
    put_a_file_in_place_of,
    snapshot_files,
    take_away,
    write_files,
)
from tests.support.syncd import DaemonProcess, NotificationSink, metric_values

POLL = 2.0  # poll_interval in these tests
GRACE = 3.0  # in_progress_grace in these tests
MARGIN = 8.0  # a loaded 2-core machine: restic, the daemon and the test share it


@pytest.fixture
def sink() -> Iterator[NotificationSink]:
    receiver = NotificationSink()
    yield receiver
    receiver.close()


def configure(server: Server, sink: NotificationSink, extra_server: str = "", after_failures: int = 1,
              max_backoff: str = "2s") -> None:
    text = BASE_CONFIG.replace('in_progress_grace = "5m"', f'in_progress_grace = "{GRACE:g}s"\n'
                               f'poll_interval = "{POLL:g}s"\nretry_max_backoff = "{max_backoff}"\n'
                               f'{extra_server}')
    server.write_config(text + f'\n[notify]\nurls = ["{sink.url}"]\nafter_failures = {after_failures}\n')


def start(daemons: list[DaemonProcess], server: Server, *args: str) -> DaemonProcess:
    process = DaemonProcess(server.config_path, *args)
    daemons.append(process)
    return process.started()


def on_replica(server: Server, location: str = "usb") -> bool:
    wanted = snapshot_files(server.primary())
    return bool(wanted) and wanted <= snapshot_files(server.replica(location))


def status(server: Server) -> dict:  # type: ignore[type-arg]
    result = server.cli("status", "--json")
    return json.loads(result.out)["clients"]["web01"]  # type: ignore[no-any-return]


def location_row(server: Server, location: str) -> dict:  # type: ignore[type-arg]
    return status(server)["locations"][location]  # type: ignore[no-any-return]


def scrape(port: int) -> dict[str, float]:
    return metric_values(urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode())


def test_a_replica_emptied_under_the_daemon_is_refilled_and_reported_within_one_poll(
    server: Server, daemons: list[DaemonProcess], sink: NotificationSink
) -> None:
    configure(server, sink)
    daemon = start(daemons, server)
    daemon.wait_until(lambda: on_replica(server) and on_replica(server, "nas"), 15, "the catch-up on start")
    daemon.wait_until(lambda: location_row(server, "usb")["snapshots"] == 1, 10, "usb recorded")

    take_away(server.replica("usb"))  # a swapped or reformatted disk
    emptied = time.monotonic()
    daemon.wait_until(lambda: on_replica(server), POLL + MARGIN, "the refill")
    refilled = time.monotonic() - emptied
    daemon.wait_until(lambda: "triplicate: web01 -> usb lost 1 snapshot (its folder is gone); refilling"
                      in sink.titles(), POLL + MARGIN, "the notification")
    reported = time.monotonic() - emptied
    daemon.wait_for_log(r"web01 -> usb: copied \d+ file.*\[refill\]")
    assert server.check_read_data(server.replica("usb")).returncode == 0
    assert [(message["title"], message["type"]) for message in list(sink.received) if "lost" in message["title"]] == [
        ("triplicate: web01 -> usb lost 1 snapshot (its folder is gone); refilling", "warning")], "told once, a warning"
    print(f"\nMEASURED emptied replica: reported after {reported:.1f}s, refilled after {refilled:.1f}s "
          f"(poll_interval {POLL:g}s)")


def test_a_replica_emptied_while_the_daemon_was_down_is_refilled_on_start(
    server: Server, daemons: list[DaemonProcess], sink: NotificationSink
) -> None:
    configure(server, sink)
    daemon = start(daemons, server)
    daemon.wait_until(lambda: on_replica(server) and on_replica(server, "nas"), 15, "the catch-up on start")
    assert daemon.terminate()[0] == 0
    shutil.rmtree(server.replica("nas"))
    daemon = start(daemons, server)
    daemon.wait_until(lambda: on_replica(server, "nas"), MARGIN, "the refill on start")
    daemon.wait_until(lambda: "triplicate: web01 -> nas lost 1 snapshot (its folder is gone); refilling"
                      in sink.titles(), MARGIN, "the notification")
    assert server.check_read_data(server.replica("nas")).returncode == 0


def test_a_location_that_becomes_unreadable_with_no_backup_coming_shows_down_within_one_poll(
    server: Server, daemons: list[DaemonProcess], sink: NotificationSink
) -> None:
    configure(server, sink)
    port = free_port()
    daemon = start(daemons, server, "--metrics-listen", f"127.0.0.1:{port}")
    daemon.wait_until(lambda: on_replica(server, "nas") and location_row(server, "nas")["last_sync"] == "ok",
                      15, "the catch-up on start")
    # The disk is gone, something else in its place; nothing new to copy.
    put_a_file_in_place_of(server.root / "nas", server.root / "nas-unplugged", "not the disk\n")
    gone = time.monotonic()
    daemon.wait_until(lambda: location_row(server, "nas")["last_sync"] == "failed", 2 * POLL + MARGIN,
                      "nas shown failing (not ok with lag 0) without a new backup")
    print(f"\nMEASURED unreadable location: shown failing after {time.monotonic() - gone:.1f}s "
          f"(poll_interval {POLL:g}s)")
    assert "is a file, not a folder" in location_row(server, "nas")["error"]
    metrics = scrape(port)
    assert metrics['triplicate_location_up{client="web01",location="nas"}'] == 0
    assert metrics['triplicate_replication_lag_seconds{client="web01",location="nas"}'] > 0
    daemon.wait_until(lambda: "triplicate: web01 -> nas is failing" in sink.titles(), MARGIN, "the notification")
    assert location_row(server, "usb")["last_sync"] == "ok"
    assert "Traceback" not in daemon.log


def test_status_and_metrics_show_what_a_location_really_holds(
    server: Server, daemons: list[DaemonProcess], sink: NotificationSink, tmp_path: Path
) -> None:
    port = free_port()
    configure(server, sink)
    daemon = start(daemons, server, "--metrics-listen", f"127.0.0.1:{port}")
    daemon.wait_until(lambda: on_replica(server) and on_replica(server, "nas"), 15, "the catch-up on start")
    daemon.wait_until(lambda: location_row(server, "usb")["snapshots"] == 1, 10, "usb recorded")
    # The disk is swapped for one that cannot take the client's folder (a file in its place):
    # nothing can be refilled, and status and the metrics must say so rather than remember.
    put_a_file_in_place_of(server.replica("usb"), server.root / "usb-old")
    daemon.wait_until(lambda: location_row(server, "usb")["snapshots"] == 0, POLL + MARGIN, "status")
    daemon.wait_until(lambda: scrape(port)['triplicate_snapshots_replicated{client="web01",'
                                                  'location="usb"}'] == 0, 10, "the metric")
    problems = daemon.wait_until(lambda: [problem for problem in status(server)["problems"]
                                          if problem.startswith("usb:")], POLL + MARGIN, "a usb problem")
    assert any("last sync failed" in problem for problem in problems), problems
    assert location_row(server, "nas")["snapshots"] == 1
    daemon.wait_until(lambda: any("usb lost 1 snapshot" in title for title in sink.titles()), 10, "told")

    server.replica("usb").unlink()
    daemon.wait_until(lambda: on_replica(server), POLL + MARGIN + 5, "the refill once the disk is fixed")
    daemon.wait_until(lambda: location_row(server, "usb")["snapshots"] == 1, 10, "status after the refill")
    assert server.check_read_data(server.replica("usb")).returncode == 0


def a_pack(repo: Path) -> Path:
    return sorted(path for path in (repo / "data").glob("*/*") if path.is_file())[0]


Fix = Callable[[], None]


def pack_in_the_wrong_sub_folder(repo: Path) -> tuple[str, str, Fix]:
    pack = a_pack(repo)
    wrong = repo / "data" / ("00" if pack.parent.name != "00" else "01")
    wrong.mkdir(exist_ok=True)
    pack.rename(wrong / pack.name)
    # Named where restic expects it; fixed by moving it there.
    return f"data/{pack.parent.name}/{pack.name}", "vanished", lambda: (wrong / pack.name).rename(pack)


def dangling_symlink(repo: Path) -> tuple[str, str, Fix]:
    pack = a_pack(repo)
    content = pack.read_bytes()
    pack.unlink()
    pack.symlink_to(repo / "gone" / pack.name)

    def fix() -> None:
        pack.unlink()
        pack.write_bytes(content)

    # The storage layer opens no symbolic link: named at once as one, not a regular file.
    return f"data/{pack.parent.name}/{pack.name}", "unreadable", fix


def damaged_pack_with_a_future_time(repo: Path) -> tuple[str, str, Fix]:
    pack = a_pack(repo)
    content = pack.read_bytes()
    flip_byte(pack)
    later = time.time() + 86400
    os.utime(pack, (later, later))
    return f"data/{pack.parent.name}/{pack.name}", "modified in the future", lambda: pack.write_bytes(content)


def junk_pack(repo: Path) -> tuple[str, str, Fix]:
    # What a client can upload through its endpoint (rclone accepts any content under any name).
    name = os.urandom(32).hex()
    (repo / "data" / name[:2]).mkdir(exist_ok=True)
    junk = repo / "data" / name[:2] / name
    junk.write_bytes(os.urandom(300 << 10))
    # Moved aside, as `triplicate quarantine` does.
    return f"data/{name[:2]}/{name}", "corrupt", lambda: junk.rename(repo.parent / name)


@pytest.mark.parametrize("fault", [pack_in_the_wrong_sub_folder, dangling_symlink, damaged_pack_with_a_future_time,
                                   junk_pack])
def test_a_file_that_never_settles_becomes_a_failure_within_grace_and_one_poll(
    server: Server, daemons: list[DaemonProcess], sink: NotificationSink, fault: object
) -> None:
    configure(server, sink)
    path, kind, fix = fault(server.primary())  # type: ignore[operator]
    port = free_port()
    daemon = start(daemons, server, "--metrics-listen", f"127.0.0.1:{port}")
    started = time.monotonic()
    notified = daemon.wait_until(lambda: [message for message in list(sink.received)
                                          if message.get("title") == "triplicate: web01 -> usb is failing"],
                                 GRACE + POLL + MARGIN, "the failure notification")
    alarm = time.monotonic() - started
    body = notified[0]["message"]
    assert f"{path} is {kind}" in body, body
    assert f"triplicate quarantine web01 {path}" in body or kind == "vanished", body
    daemon.wait_for_log(rf"web01 -> usb: failed .*{path}")
    problems = status(server)["problems"]
    assert any(problem.startswith(f"the primary's {path} is {kind}") for problem in problems), problems
    # The primary's problem is reported as the primary's, once, not as each replica's.
    assert not any(problem.startswith(("usb:", "nas:")) for problem in problems), problems
    assert location_row(server, "@primary")["error"] == f"{path} {kind}"
    values = scrape(port)
    assert values['triplicate_primary_unsettled_files{client="web01"}'] >= 1
    assert values['triplicate_primary_unsettled_seconds{client="web01"}'] > 0
    assert values['triplicate_consecutive_failures{client="web01",location="usb"}'] >= 1
    audit = server.cli("audit", "--json")
    assert path in audit.out and audit.code == 2, audit.out
    print(f"\nMEASURED {fault.__name__}: alarm {alarm:.1f}s after the daemon started "  # type: ignore[attr-defined]
          f"(in_progress_grace {GRACE:g}s, poll_interval {POLL:g}s)")

    # Fixed, it converges: every snapshot everywhere, no problem left, and people are told.
    fix()
    daemon.wait_until(lambda: on_replica(server) and on_replica(server, "nas"), POLL + MARGIN, "convergence")
    daemon.wait_until(lambda: "triplicate: web01 -> usb recovered" in sink.titles(), POLL + MARGIN, "recovery")
    # (the audit run above keeps its finding until the next audit; no supervision runs here)
    daemon.wait_until(lambda: location_row(server, "@primary")["error"] is None, POLL + MARGIN, "no problem left")
    assert not [problem for problem in status(server)["problems"] if problem.startswith(("the primary's", "usb:"))]
    assert server.check_read_data(server.replica("usb")).returncode == 0


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def test_a_junk_snapshot_holds_nothing_back_is_hashed_once_and_runs_stay_few(
    server: Server, daemons: list[DaemonProcess], sink: NotificationSink, tmp_path: Path
) -> None:
    configure(server, sink, max_backoff="1h")
    # 128 MiB of junk under a snapshot's name, as a client could upload through its endpoint.
    junk = server.primary() / "snapshots" / os.urandom(32).hex()
    with open(junk, "wb") as file:
        for _ in range(128):
            file.write(os.urandom(1 << 20))
    daemon = start(daemons, server)
    daemon.wait_until(lambda: "triplicate: web01 -> usb is failing" in sink.titles(), GRACE + POLL + MARGIN,
                      "the failure notification")
    assert any(f"snapshots/{junk.name} is corrupt" in problem for problem in status(server)["problems"])

    # A valid backup made now reaches both replicas within seconds: the junk holds nothing back
    # and the failure puts no location into a backoff that new snapshots would wait for.
    # (restic itself refuses to back up next to a snapshot it cannot decrypt: the backup is
    # made in a copy and lands in the primary in restic's order, packs and index, then snapshot.)
    elsewhere = tmp_path / "elsewhere"
    shutil.copytree(server.primary(), elsewhere, ignore=lambda folder, names: [junk.name])
    write_files(tmp_path / "more", "more", count=2, size=128 << 10)
    server.restic(elsewhere, "backup", "-q", str(tmp_path / "more"))
    for folder in ("data", "index", "snapshots"):
        shutil.copytree(elsewhere / folder, server.primary() / folder, dirs_exist_ok=True)
    landed = time.monotonic()
    valid = snapshot_files(server.primary()) - {junk.name}
    daemon.wait_until(lambda: all(valid <= snapshot_files(server.replica(location)) for location in ("usb", "nas")),
                      MARGIN, "the new snapshot on both replicas")
    arrival = time.monotonic() - landed
    assert server.check_read_data(server.replica("usb")).returncode == 0

    # Runs do not multiply: retries back off, and neither rescans nor looks ask for runs for the junk.
    def runs() -> int:
        return len([line for line in list(daemon.lines) if "web01 -> usb: " in line])

    before = runs()
    window = 20.0
    time.sleep(window)  # measuring a rate: the window itself is the point
    in_window = runs() - before
    assert in_window <= 4, f"{in_window} runs in {window:g}s:\n{daemon.log}"

    # The unchanged junk is not hashed again: three runs of each location (SIGHUP cuts the
    # backoff short) cost far less than hashing 128 MiB once per run (about 0.3 s each here).
    cpu_before = cpu_seconds(daemon.process.pid)
    for _ in range(3):
        count = runs()
        daemon.signal(signal.SIGHUP)
        daemon.wait_until(lambda count=count: runs() > count, 10, "a run after SIGHUP")  # type: ignore[misc]
    daemon.wait_for_log(r"reload: configuration applied", count=3)
    cpu = cpu_seconds(daemon.process.pid) - cpu_before
    assert cpu < 0.5, f"{cpu:.2f} CPU seconds for 6 runs: the junk was hashed again"
    print(f"\nMEASURED junk snapshot: new backup on both replicas {arrival:.1f}s after it landed; "
          f"{in_window} run(s) of usb in {window:g}s; {cpu:.2f} CPU s for 3 runs of each location")


def test_incomplete_runs_keep_one_follow_up_chain_per_location() -> None:
    from triplicate.daemon.runner import LocationRunner, RunOutcome

    async def main() -> list[str]:
        triggers: list[str] = []

        async def execute(runner: LocationRunner, trigger: str) -> RunOutcome:
            triggers.append(trigger)
            return RunOutcome(True, trigger=trigger, incomplete=True)

        runner = LocationRunner("web01", "usb", execute, lambda runner, outcome: None, lambda: 60.0)
        # Every rescan's run ends incomplete and asks for a follow-up: one is kept, not one each.
        assert runner.follow_up(0.05)
        assert not runner.follow_up(0.05) and not runner.follow_up(0.01)
        await asyncio.sleep(0.3)
        assert runner.follow_up(0.05), "a new chain once the last follow-up ran"
        runner.close()
        await asyncio.sleep(0.1)
        return triggers

    assert asyncio.run(main()) == ["incomplete"]


def test_a_sync_waiting_for_another_says_so(server: Server) -> None:
    import subprocess
    import sys

    from triplicate.state.locks import location_lock

    with location_lock(server.root / "state", "web01", "usb"):  # another sync of web01 -> usb
        process = subprocess.Popen([sys.executable, "-m", "triplicate", "-c", str(server.config_path), "sync",
                                    "web01", "--to", "usb", "--json"],
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        assert process.stderr is not None
        line = process.stderr.readline()  # blocks until it says something: it must say why it waits
        assert line.strip() == "triplicate: waiting for another sync of web01 -> usb"
        assert process.poll() is None, "it waits for the lock"
    out, _ = process.communicate(timeout=60)
    assert process.returncode == 0 and json.loads(out)["complete"]


def test_a_junk_pack_uploaded_through_the_clients_endpoint_is_reported(tmp_path: Path, sink: NotificationSink) -> None:
    """The whole server for real: runit supervises the client's endpoint (rclone serve restic) and
    its syncd; the client uploads junk under a pack's name with curl, as any client can."""
    import subprocess

    from tests.support.server import Site, http_status
    from tests.support.wait import wait_until as wait_for

    site = Site(tmp_path / "site", ports=2)
    text = site.config_path.read_text().replace(
        'ports = "', f'in_progress_grace = "{GRACE:g}s"\npoll_interval = "{POLL:g}s"\n'
        # triplicate's own endpoint refuses such an upload (400: not its name, test_endpoint.py);
        # rclone's accepts any content under any name.
        'endpoint_program = "rclone"\nports = "', 1)
    site.config_path.write_text(text + f'\n[notify]\nurls = ["{sink.url}"]\nafter_failures = 1\n')
    assert site.cli("init").code == 0
    site.start_supervision()
    try:
        url = str(site.add_client("alpha", "usb", "nas")["url"])
        user, _, rest = url.removeprefix("rest:http://").partition(":")
        password, _, address = rest.partition("@")
        base = "http://" + address.split("/", 1)[0]
        wait_for(lambda: http_status("GET", f"{base}/alpha/config") == 401, 20, "alpha's endpoint")
        assert site.restic(url, "init").returncode == 0
        write_files(site.root / "data", "alpha", count=2, size=256 << 10)
        assert site.restic(url, "backup", "-q", str(site.root / "data")).returncode == 0
        wait_for(lambda: snapshot_files(site.root / "usb" / "alpha"), 30, "the backup on usb")

        junk = tmp_path / "junk"
        junk.write_bytes(os.urandom(200 << 10))
        name = os.urandom(32).hex()
        upload = subprocess.run(["curl", "-sS", "-o", "/dev/null", "-w", "%{http_code}", "-u", f"{user}:{password}",
                                 "--data-binary", f"@{junk}", f"{base}/alpha/data/{name}"],
                                capture_output=True, text=True, timeout=30)
        assert upload.stdout == "200", upload
        uploaded = time.monotonic()
        path = f"data/{name[:2]}/{name}"
        assert (site.root / "repos" / "alpha" / path).is_file(), "rclone accepted the junk"
        wait_for(lambda: any(path in str(message.get("message")) for message in list(sink.received)),
                 GRACE + POLL + MARGIN, "the failure notification naming the junk pack")
        alarm = time.monotonic() - uploaded
        report = site.cli("status", "alpha", "--json")
        assert report.code == 1
        assert any(problem.startswith(f"the primary's {path} is corrupt")
                   for problem in report.json()["clients"]["alpha"]["problems"]), report.out
        print(f"\nMEASURED junk pack through the endpoint: alarm {alarm:.1f}s after the upload")
    finally:
        leftovers = site.stop_supervision()
    assert leftovers == []
