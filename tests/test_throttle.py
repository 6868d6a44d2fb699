"""Bandwidth limits and copy slots per location (storage/throttle.py), measured on real copies."""

from __future__ import annotations

import io
import json
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.support.remote import configure_locations, kind_location_toml, rclone_local_config, rclone_location_toml
from tests.support.repository import BASE_CONFIG, Server, data_files, seed_primary, write_files
from triplicate.config.load import load_config
from triplicate.storage import Handle, open_location
from triplicate.storage.throttle import PrioritySlots, TokenBucket, location_limits
from triplicate.units import parse_bandwidth

MB = 1000 * 1000


def _save_all(server: Server, location: str, client: str, blobs: list[tuple[Handle, bytes]]) -> None:
    replica = open_location(load_config(server.config_path), location, client)
    try:
        replica.prepare(create=True)
        for handle, content in blobs:
            replica.save(handle, io.BytesIO(content))
    finally:
        replica.close()


def _with_location_settings(server: Server, **settings: str | int) -> None:
    """The test server's configuration, with ``settings`` added to location usb."""
    extra = "".join(f"{key} = {json.dumps(value)}\n" for key, value in settings.items())
    server.write_config(BASE_CONFIG.replace('path = "{root}/usb"\n', 'path = "{root}/usb"\n' + extra))


def test_bwlimit_values_and_errors_naming_the_key(server: Server) -> None:
    assert parse_bandwidth("20MB/s") == ((0, 20 * MB),)
    assert parse_bandwidth("512KiB") == ((0, 512 * 1024),)
    assert parse_bandwidth("19:00,off 08:00,5MB/s") == ((480, 5 * MB), (1140, None))
    for bad in ("fast", "1000", "08:00,512 19:00,off", "0MB/s", "25:00,1MB/s", "08:00,1MB/s 08:00,off", "08:00;1MB/s"):
        _with_location_settings(server, bwlimit=bad)
        result = server.cli("status")
        assert result.code == 2, bad
        assert "bwlimit" in result.err and "Traceback" not in result.err, result.err


def test_a_timetable_switches_rate_at_its_times_with_an_injected_clock() -> None:
    wall = [time.mktime((2026, 1, 5, 7, 59, 0, 0, 0, -1))]  # 07:59 local time
    elapsed = [0.0]

    def sleep(seconds: float) -> None:
        elapsed[0] += seconds

    bucket = TokenBucket(parse_bandwidth("08:00,5MB/s 19:00,off"), clock=lambda: wall[0],
                         monotonic=lambda: elapsed[0], sleep=sleep)
    assert bucket.rate() is None
    assert bucket.consume(100 * MB) == 0.0, "no limit before 08:00 (the 19:00 entry runs over midnight)"
    wall[0] += 60  # 08:00
    assert bucket.rate() == 5 * MB
    waited = sum(bucket.consume(MB) for _ in range(20))
    assert waited == pytest.approx(20 / 5, rel=0.02)
    wall[0] += 11 * 3600  # 19:00
    assert bucket.consume(100 * MB) == 0.0


def test_priority_slots_go_to_the_smallest_waiting_first() -> None:
    slots = PrioritySlots(1)
    slots.acquire(0)
    order: list[int] = []

    def take(priority: int) -> None:
        slots.acquire(priority)
        order.append(priority)
        slots.release()

    threads = [threading.Thread(target=take, args=(priority,)) for priority in (900, 5, 300)]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + 10
    while slots.waiting < 3 and time.monotonic() < deadline:
        time.sleep(0.01)  # polling until the three wait
    slots.release()
    for thread in threads:
        thread.join(10)
    assert order == [5, 300, 900]


def _measured_rate(action: Callable[[], None], total: int) -> float:
    """Bytes per second of ``action``, which moves ``total`` bytes."""
    started = time.monotonic()
    action()
    return total / (time.monotonic() - started)


def test_a_local_location_copies_at_its_bwlimit(server: Server) -> None:
    _with_location_settings(server, bwlimit="8MB/s")
    blobs = data_files(6, 4 * MB)  # 24 MB: three seconds at 8 MB/s
    rate = _measured_rate(lambda: _save_all(server, "usb", "web01", blobs), 24 * MB)
    assert rate == pytest.approx(8 * MB, rel=0.10), f"{rate / MB:.2f} MB/s"
    for handle, content in blobs:
        assert (server.replica("usb") / handle.relative_path()).read_bytes() == content
    # The other location has no limit: the same copy takes a fraction of the time.
    rate = _measured_rate(lambda: _save_all(server, "nas", "web01", data_files(6, 4 * MB)), 24 * MB)
    assert rate > 3 * 8 * MB, f"{rate / MB:.2f} MB/s without a limit"


def test_two_clients_to_one_location_share_its_bwlimit(server: Server) -> None:
    _with_location_settings(server, bwlimit="8MB/s")
    first, second = data_files(3, 4 * MB), data_files(3, 4 * MB)

    def both() -> None:
        threads = [threading.Thread(target=_save_all, args=(server, "usb", client, blobs))
                   for client, blobs in (("web01", first), ("web02", second))]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)

    rate = _measured_rate(both, 24 * MB)
    assert rate == pytest.approx(8 * MB, rel=0.10), f"{rate / MB:.2f} MB/s for both clients together"
    saved = [path for path in (server.replica("usb", "web02") / "data").rglob("*") if path.is_file()]
    assert len(saved) == 3  # (two of the random packs may share a folder)


def test_copies_to_one_location_are_bounded_across_clients(server: Server) -> None:
    _with_location_settings(server, bwlimit="16MB/s", workers=2)
    limits = location_limits("usb", "16MB/s", 2)
    most = [0]
    stop = threading.Event()

    def watch() -> None:
        while not stop.is_set():
            most[0] = max(most[0], limits.slots.count - limits.slots._free)
            time.sleep(0.005)  # sampling, not synchronisation

    watcher = threading.Thread(target=watch)
    watcher.start()
    threads = []
    for client in ("a", "b", "c"):
        for blobs in (data_files(2, 2 * MB), data_files(2, 2 * MB)):
            threads.append(threading.Thread(target=_save_all, args=(server, "usb", client, blobs)))
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    stop.set()
    watcher.join()
    assert most[0] == 2, "six writers, two slots: never more than two copies at once, and both used"


def test_rclone_is_given_the_bwlimit(server: Server, tmp_path: Path) -> None:
    from triplicate.storage.rclone_server import rclone_bwlimit

    assert rclone_bwlimit("4MB/s") == "4000000B"
    assert rclone_bwlimit("19:00,off 8:00,1MiB/s") == "08:00,1048576B 19:00,off"  # rclone's own syntax
    folder = tmp_path / "far"
    folder.mkdir()
    server.write_config(BASE_CONFIG + rclone_location_toml("far", f"far:{folder}", rclone_local_config(tmp_path),
                                                           bwlimit="4MB/s").replace(str(server.root), "{root}"))
    blobs = data_files(4, 4 * MB)  # 16 MB: four seconds at 4 MB/s (rclone's own bucket allows a burst)
    started = time.monotonic()
    _save_all(server, "far", "web01", blobs)
    elapsed = time.monotonic() - started
    assert elapsed > 0.6 * 16 / 4, f"{elapsed:.1f}s: rclone copied unthrottled"
    rate = 16 * MB / elapsed
    assert rate < 1.1 * 4 * MB, f"{rate / MB:.2f} MB/s"
    for handle, content in blobs:
        assert (folder / "web01" / handle.relative_path()).read_bytes() == content


def _add_client(server: Server, name: str) -> None:
    with server.config_path.open("a") as config:
        config.write(f'\n[clients.{name}]\nreplicate_to = ["usb"]\npassword_file = "{server.password_file}"\n')


def test_a_small_new_snapshot_overtakes_another_clients_first_copy(server: Server, template_repository: Path,
                                                                   tmp_path: Path) -> None:
    from triplicate.actions.sync import sync_client

    _with_location_settings(server, bwlimit="8MB/s", workers=2)
    _add_client(server, "big")
    seed_primary(server, "big", template_repository, packs=16, size=4 * MB)  # 64 MB: 8 s at 8 MB/s
    config = load_config(server.config_path)
    assert sync_client(config, "web01", ["usb"]).ok
    write_files(tmp_path / "new", "small", count=2, size=50_000)
    server.backup(tmp_path / "new")

    big = threading.Thread(target=sync_client, args=(config, "big", ["usb"]))
    big.start()
    deadline = time.monotonic() + 60
    while len(list((server.replica("usb", "big") / "data").rglob("*/*"))) < 3 and time.monotonic() < deadline:
        time.sleep(0.05)  # polling until the big copy is well under way
    started = time.monotonic()
    assert sync_client(config, "web01", ["usb"]).ok
    latency = time.monotonic() - started
    still_copying = big.is_alive()
    big.join(120)
    assert still_copying, "the big copy must still run when the small snapshot is done"
    assert latency < 5, f"{latency:.1f}s for a small snapshot behind a first copy"
    assert server.snapshot_ids(server.replica("usb")) == server.snapshot_ids(server.primary())


def test_status_shows_each_locations_bwlimit(server: Server) -> None:
    _with_location_settings(server, bwlimit="00:00,5MB/s 23:59,5MB/s")
    assert server.cli("sync", "web01").code == 0
    rows = server.cli("status", "--json").json()["clients"]["web01"]["locations"]
    assert rows["usb"]["bwlimit"] == "00:00,5MB/s 23:59,5MB/s (now 5.0 MB/s)"
    assert rows["nas"]["bwlimit"] is None
    assert "bwlimit" in server.cli("status").out


@pytest.mark.parametrize("kind", ["sftp", "s3", "rest", "rclone"])
def test_every_remote_kind_honours_the_bwlimit(kind: str, server: Server, request: pytest.FixtureRequest) -> None:
    configure_locations(server, ["far"], kind_location_toml(kind, "far", server, request) + 'bwlimit = "4MB/s"\n')
    blobs = data_files(3, 4 * MB)  # 12 MB: three seconds at 4 MB/s
    rate = _measured_rate(lambda: _save_all(server, "far", "web01", blobs), 12 * MB)
    # Never faster than the limit (rclone's own bucket allows a small burst); a remote's own
    # overhead may make it a little slower.
    assert 0.75 * 4 * MB < rate < 1.10 * 4 * MB, f"{kind}: {rate / MB:.2f} MB/s"


def test_a_slow_locations_first_copies_do_not_hold_back_another_locations_runs(
        server: Server, template_repository: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The daemon's runs to one location never wait for its runs to another: while more clients
    than it runs at once to a location copy their first replicas to a slow usb, a new snapshot of
    another client still reaches nas within seconds."""
    from tests.support.repository import snapshot_files
    from tests.support.syncd import InProcessDaemon
    from tests.support.wait import wait_until
    from triplicate.daemon import main as daemon_main

    monkeypatch.setattr(daemon_main, "MAX_PARALLEL_RUNS", 2)  # three first copies fill usb's runs
    server.write_config(BASE_CONFIG.replace('path = "{root}/usb"\n', 'path = "{root}/usb"\nbwlimit = "1MB/s"\n')
                        .replace('replicate_to = ["usb", "nas"]', 'replicate_to = ["nas"]'))
    bigs = ("big0", "big1", "big2")
    for name in bigs:
        _add_client(server, name)  # replicated to usb
        seed_primary(server, name, template_repository, packs=4, size=2 * MB)  # 11 MB each: 33 s at 1 MB/s
    assert server.cli("sync", "web01").code == 0  # web01's replica on nas is up to date

    def copying(name: str) -> bool:
        return any(path.is_file() for path in (server.replica("usb", name) / "data").rglob("*"))

    def seeded(name: str) -> bool:
        return snapshot_files(server.primary(name)) <= snapshot_files(server.replica("usb", name))

    with InProcessDaemon(server.config_path):
        wait_until(lambda: sum(copying(name) for name in bigs) >= 2, 30, "two first copies under way to usb")
        write_files(tmp_path / "new", "new", count=1, size=50_000)
        server.backup(tmp_path / "new")
        arrived = time.monotonic()
        wait_until(lambda: snapshot_files(server.primary()) <= snapshot_files(server.replica("nas")), 60,
                   "web01's new snapshot on nas")
        latency = time.monotonic() - arrived
        still_copying = not all(seeded(name) for name in bigs)
    assert still_copying, "the first copies to usb must still run when the new snapshot reaches nas"
    assert latency < 5, f"{latency:.1f}s for a new snapshot to nas behind first copies to usb"


def test_rclone_follows_a_timetable_bwlimit(server: Server, tmp_path: Path) -> None:
    """The timetable form reaches rclone, which applies the entry in force now: 4 MB/s since a
    minute ago, "off" from two hours on (read wrongly, the copy would run unthrottled)."""
    local = time.localtime()
    minute = local.tm_hour * 60 + local.tm_min

    def clock(offset: int) -> str:
        value = (minute + offset) % 1440
        return f"{value // 60:02d}:{value % 60:02d}"

    folder = tmp_path / "far"
    folder.mkdir()
    server.write_config(BASE_CONFIG + rclone_location_toml(
        "far", f"far:{folder}", rclone_local_config(tmp_path),
        bwlimit=f"{clock(-1)},4MB/s {clock(120)},off").replace(str(server.root), "{root}"))
    blobs = data_files(4, 4 * MB)  # 16 MB: four seconds at 4 MB/s
    rate = _measured_rate(lambda: _save_all(server, "far", "web01", blobs), 16 * MB)
    assert 0.6 * 4 * MB < rate < 1.1 * 4 * MB, f"{rate / MB:.2f} MB/s"
    for handle, content in blobs:
        assert (folder / "web01" / handle.relative_path()).read_bytes() == content
