"""``triplicate recover`` (and its drill) against real restic repositories and real locations."""

from __future__ import annotations

import filecmp
import json
import os
import shutil
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.endpoint import Endpoint, partial_files, read_status, sha
from tests.support.ports import free_port
from tests.support.remote import SshServer
from tests.support.repository import BASE_CONFIG, Server, age_file, flip_byte, repository_files, write_files
from tests.support.server import Site
from tests.support.syncd import DaemonProcess, NotificationSink
from tests.support.wait import wait_until
from triplicate.state.recover_drill import DrillRecord, RecoverDrillState
from triplicate.units import format_bytes


@pytest.fixture
def sink() -> Iterator[NotificationSink]:
    receiver = NotificationSink()
    yield receiver
    receiver.close()


def _two_snapshots(server: Server, tmp_path: Path) -> Path:
    data = tmp_path / "data"
    write_files(data, "first", count=3, size=300_000)
    server.backup(data)
    write_files(data / "more", "second", count=4, size=500_000)
    server.backup(data)
    return data


def test_recover_rebuilds_a_lost_primary_from_two_locations_each_missing_different_files(
    server: Server, tmp_path: Path
) -> None:
    data = _two_snapshots(server, tmp_path)
    assert server.cli("sync", "web01").code == 0
    files = sorted(path for path in repository_files(server.primary()) if path != "config")
    packs = [path for path in files if path.startswith("data/")]
    assert len(packs) >= 2
    # Each location lost a different pack (and an index file, a snapshot): only the union is whole.
    (server.replica("usb") / packs[0]).unlink()
    (server.replica("nas") / packs[1]).unlink()
    newest = server.snapshot_ids(server.primary())
    shutil.rmtree(server.primary())

    dry = server.cli("recover", "web01", "--dry-run", "--json")
    assert dry.code == 0, dry.out + dry.err
    plan = dry.json()
    assert plan["files_copied"] == len(files) and not server.primary().exists()
    assert plan["sources"]["usb"]["files"] + plan["sources"]["nas"]["files"] == len(files)
    assert plan["sources"]["nas"]["files"] >= 1, "what usb lacks comes from nas"

    result = server.cli("recover", "web01", "--json")
    assert result.code == 0, result.out + result.err
    report = result.json()
    assert report["files_copied"] == len(files) and report["lost"] == {}
    assert sorted(path for path in repository_files(server.primary()) if path != "config") == files
    check = server.check_read_data(server.primary())
    assert check.returncode == 0, check.stderr
    assert server.snapshot_ids(server.primary()) == newest
    restored = tmp_path / "restored"
    server.restic(server.primary(), "restore", "latest", "--target", str(restored))
    assert not filecmp.dircmp(data, restored / data.relative_to("/")).diff_files
    assert _same_tree(data, restored / data.relative_to("/"))
    # Service resumes: a new backup into the rebuilt repository works and replicates.
    write_files(data / "after", "third", count=2, size=200_000)
    server.backup(data)
    assert server.check_read_data(server.primary()).returncode == 0
    assert server.cli("sync", "web01").code == 0
    again = server.cli("recover", "web01", "--json").json()
    assert again["files_copied"] == 0 and again["files_present"] >= len(files)


def _same_tree(left: Path, right: Path) -> bool:
    names = sorted(path.relative_to(left) for path in left.rglob("*") if path.is_file())
    return names == sorted(path.relative_to(right) for path in right.rglob("*") if path.is_file()) and all(
        (left / name).read_bytes() == (right / name).read_bytes() for name in names)


def test_a_location_holding_another_repository_is_refused_as_a_source(server: Server, tmp_path: Path) -> None:
    assert server.cli("sync", "web01").code == 0
    other = server.replica("nas")
    shutil.rmtree(other)
    server.restic(other, "init")
    pack = min(path for path in (server.primary() / "data").rglob("*") if path.is_file())
    relative = pack.relative_to(server.primary()).as_posix()
    (server.replica("usb") / relative).unlink()
    # The other repository holds a file of that very name, whose content even hashes to it.
    (other / relative).parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(pack, other / relative)
    pack.unlink()  # the primary lost it; only usb (which lacks it too) and another repository remain
    result = server.cli("recover", "web01", "--json")
    assert result.code == 1
    report = result.json()
    assert "different restic repository" in report["sources"]["nas"]["problem"]
    assert report["sources"]["nas"]["files"] == 0
    assert not pack.exists(), "never taken from another repository"


def test_recover_that_no_location_can_serve_says_why_of_each(server: Server) -> None:
    assert server.cli("sync", "web01").code == 0
    shutil.rmtree(server.primary())
    shutil.rmtree(server.replica("usb"))
    server.replica("usb").write_text("not a folder")
    shutil.rmtree(server.replica("nas"))
    result = server.cli("recover", "web01")
    assert result.code == 3 and result.err.count("\n") == 1, result.err
    assert "(usb: " in result.err and "not a folder" in result.err
    assert "nas: no repository" in result.err
    drill = server.cli("recover", "web01", "--drill", "--from", "usb")
    assert drill.code == 3 and "(usb: " in drill.err and "not a folder" in drill.err and drill.err.count("\n") == 1


def test_recover_on_a_new_server_without_its_service_user_says_so_and_writes_nothing(server: Server) -> None:
    assert server.cli("sync", "web01").code == 0
    shutil.rmtree(server.primary())
    server.write_config(BASE_CONFIG.replace("[server]\n", '[server]\nuser = "no-such-user-16"\n'))
    result = server.cli("recover", "web01")
    assert result.code == 2 and result.err.count("\n") == 1, result.err
    assert "server.user: no such user 'no-such-user-16'" in result.err
    assert not server.primary().exists()


def test_recover_skips_a_corrupt_copy_at_one_location_and_names_it(server: Server) -> None:
    assert server.cli("sync", "web01").code == 0
    pack = min(path for path in (server.replica("usb") / "data").rglob("*") if path.is_file())
    relative = pack.relative_to(server.replica("usb")).as_posix()
    flip_byte(pack)
    expected = repository_files(server.primary())
    shutil.rmtree(server.primary())
    result = server.cli("recover", "web01", "--json")
    assert result.code == 0, result.out + result.err
    report = result.json()
    assert report["sources"]["nas"]["files"] == 1 and report["lost"] == {}
    assert list(report["bad_copies"]) == [relative] and "not to its name" in report["bad_copies"][relative]["usb"]
    assert repository_files(server.primary()) == expected
    assert server.check_read_data(server.primary()).returncode == 0
    shutil.rmtree(server.primary())
    text = " ".join(server.cli("recover", "web01").out.split())
    assert f"usb's copy of {relative}" in text and "triplicate heal web01" in text, text


def test_recover_in_place_replaces_a_damaged_file_keeps_it_aside_and_leaves_a_young_one(
    server: Server, tmp_path: Path
) -> None:
    _two_snapshots(server, tmp_path)
    assert server.cli("sync", "web01").code == 0
    old, young = sorted(path for path in (server.primary() / "data").rglob("*") if path.is_file())[:2]
    good = old.read_bytes()
    flip_byte(old)
    age_file(old)
    bad = old.read_bytes()
    flip_byte(young)  # modified just now: the endpoint may still be writing it
    still_young = young.read_bytes()
    result = server.cli("recover", "web01", "--json")
    assert result.code == 0, result.out + result.err
    report = result.json()
    assert report["replaced"] == [old.relative_to(server.primary()).as_posix()] and report["files_copied"] == 1
    assert old.read_bytes() == good and young.read_bytes() == still_young
    kept = [path for path in (server.root / "state" / "quarantine" / "web01").rglob("*") if path.is_file()]
    assert [path.read_bytes() for path in kept] == [bad], "the damaged file is kept aside, never deleted"


def test_the_drill_rebuilds_into_a_folder_checks_it_and_status_shows_the_time(server: Server, tmp_path: Path) -> None:
    assert server.cli("sync", "web01").code == 0
    target = tmp_path / "drill"
    result = server.cli("recover", "web01", "--drill", "--to", str(target), "--json")
    assert result.code == 0, result.out + result.err
    report = result.json()
    assert report["restic_check"] == "passed" and report["recovery_seconds"] > 0
    assert repository_files(target) == repository_files(server.primary())
    status = server.cli("status", "web01", "--json").json()["clients"]["web01"]
    drill = status["recover_drill"]
    assert drill["result"] == "passed" and drill["recovery_seconds"] == round(report["recovery_seconds"], 1)
    shown = " ".join(server.cli("status", "web01").out.split())
    assert "last recovery drill" in shown and format_bytes(drill["bytes"]) in shown, shown
    # Into the kept folder again: nothing would be rebuilt, so no recovery time would be measured.
    again = server.cli("recover", "web01", "--drill", "--to", str(target))
    assert again.code == 2 and "--to" in again.err and "not empty" in again.err and again.err.count("\n") == 1
    after = server.cli("status", "web01", "--json").json()["clients"]["web01"]["recover_drill"]
    assert after["recovery_seconds"] == drill["recovery_seconds"], "no drill recorded"
    # Without --to, the scratch folder goes away.
    assert server.cli("recover", "web01", "--drill").code == 0
    assert not any((server.root / "state" / "drills").iterdir())
    status = server.cli("status", "web01", "--json").json()["clients"]["web01"]
    assert status["recover_drill"]["result"] == "passed"
    assert not any("recovery drill" in problem for problem in status["problems"])
    # A pack gone from every location: restic check fails on the rebuilt repository, and status says so.
    pack = min(path for path in (server.replica("usb") / "data").rglob("*") if path.is_file())
    for location in ("usb", "nas"):
        (server.replica(location) / pack.relative_to(server.replica("usb"))).unlink()
    failed = server.cli("recover", "web01", "--drill", "--json")
    assert failed.code == 1 and failed.json()["restic_check"] == "failed", failed.out
    status = server.cli("status", "web01", "--json").json()["clients"]["web01"]
    assert status["recover_drill"]["result"] == "failed"
    assert any(problem.startswith("last recovery drill failed: restic check failed") for problem in status["problems"])


def test_recover_killed_midway_completes_when_run_again(server: Server, tmp_path: Path) -> None:
    data = tmp_path / "big"
    write_files(data, "big", count=24, size=4 << 20)
    server.backup(data)
    assert server.cli("sync", "web01", "--to", "usb").code == 0
    expected = repository_files(server.primary())
    shutil.rmtree(server.primary())
    process = subprocess.Popen([sys.executable, "-m", "triplicate", "-c", str(server.config_path), "recover", "web01",
                                "--from", "usb"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _wait_for(lambda: (server.primary() / "data").is_dir() and any(
            path.is_file() for path in (server.primary() / "data").rglob("*")))
    finally:
        process.kill()
        process.wait()
    assert process.returncode == -9
    assert repository_files(server.primary()) != expected, "killed before the end"
    result = server.cli("recover", "web01", "--from", "usb", "--json")
    assert result.code == 0, result.out + result.err
    assert result.json()["files_present"] > 0
    assert repository_files(server.primary()) == expected
    assert server.check_read_data(server.primary()).returncode == 0
    # What the killed run was writing is as young as an upload the endpoint may be writing: left alone
    # until it is older than in_progress_grace, then removed by the next run.
    for path in (server.primary() / ".triplicate-partial").iterdir():
        age_file(path)
    assert server.cli("recover", "web01", "--from", "usb").code == 0
    assert not any((server.primary() / ".triplicate-partial").iterdir())


def _wait_for(condition, timeout: float = 30.0) -> None:  # type: ignore[no-untyped-def]
    import time

    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.002)


def test_the_daemon_runs_the_drill_on_schedule_and_exports_the_recovery_time(
    server: Server, daemons: list[DaemonProcess], sink: NotificationSink,
) -> None:
    port = free_port()
    server.write_config(BASE_CONFIG.replace('password_file = "{root}/password"\n',
                                            'password_file = "{root}/password"\nrecover_drill_every = "1s"\n')
                        + f'[notify]\nurls = ["{sink.url}"]\n')
    daemon = DaemonProcess(server.config_path, "--metrics-listen", f"127.0.0.1:{port}")
    daemons.append(daemon)
    daemon.started()

    def last() -> DrillRecord | None:
        with RecoverDrillState.opened(server.root / "state") as state:
            return state.last_drill("web01")

    daemon.wait_until(lambda: (record := last()) is not None and record.ok, 60.0, "a passed drill")
    metrics = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    assert 'triplicate_recover_drill_seconds{client="web01"}' in metrics
    assert 'triplicate_recover_drill_ok{client="web01"} 1.0' in metrics
    daemon.terminate()
    # A location lost the client's replica and cannot be refilled (the daemon refills an emptied
    # folder at once: test_syncd_faults.py): the drill must say so.
    shutil.rmtree(server.replica("nas"))
    server.replica("nas").write_text("not a folder")
    daemon = DaemonProcess(server.config_path)
    daemons.append(daemon)
    daemon.started()
    daemon.wait_until(lambda: "triplicate: recovery drill of web01 FAILED" in sink.titles(), 60.0,
                      f"a drill notification; got {sink.titles()}")
    assert "Traceback" not in daemon.log


def test_heal_and_recover_from_an_sftp_location(server: Server, sshd: SshServer) -> None:
    far = server.root / "far-sftp"
    far.mkdir()
    server.write_config(BASE_CONFIG.replace('replicate_to = ["usb", "nas"]', 'replicate_to = ["usb", "far"]')
                        + "\n" + sshd.location_toml("far", far))
    assert server.cli("sync", "web01").code == 0
    pack = min(path for path in (server.primary() / "data").rglob("*") if path.is_file())
    relative = pack.relative_to(server.primary()).as_posix()
    good = pack.read_bytes()
    flip_byte(pack)
    age_file(pack)
    (server.replica("usb") / relative).write_bytes(good[:100])
    healed = server.cli("heal", "web01", "--json")
    assert healed.code == 0, healed.out + healed.err
    assert healed.json()["files"][0]["healed_from"] == {"@primary": "far", "usb": "far"}
    assert pack.read_bytes() == good and (server.replica("usb") / relative).read_bytes() == good

    expected = repository_files(server.primary())
    shutil.rmtree(server.primary())
    shutil.rmtree(server.replica("usb"))
    recovered = server.cli("recover", "web01", "--json")
    assert recovered.code == 1, "usb could not give anything: said, yet the rebuild from far is whole"
    report = recovered.json()
    assert report["sources"]["far"]["files"] == len(expected) - 1 and report["lost"] == {}
    assert repository_files(server.primary()) == expected
    check = server.check_read_data(server.primary())
    assert check.returncode == 0, check.stderr


def test_recover_all_rebuilds_every_client_and_one_that_cannot_run_stops_no_other(
    server: Server, template_repository: Path
) -> None:
    shutil.copytree(template_repository, server.primary("db01"))
    server.write_config(BASE_CONFIG + '\n[clients.db01]\nreplicate_to = ["nas"]\n'
                        '\n[clients.app01]\nreplicate_to = ["usb"]\n')
    assert server.cli("sync", "web01").code == 0 and server.cli("sync", "db01").code == 0
    expected = {name: repository_files(server.primary(name)) for name in ("web01", "db01")}
    for name in ("web01", "db01"):
        shutil.rmtree(server.primary(name))
    result = server.cli("recover", "--all", "--json")
    assert result.code == 1, "app01 has no replica anywhere: said, the others rebuilt"
    outcome = result.json()["clients"]
    assert list(outcome) == ["app01", "db01", "web01"]  # keyed by name, in name order
    assert outcome["web01"]["ok"] and outcome["db01"]["ok"] and not outcome["app01"]["ok"]
    assert "app01" in result.err and result.err.count("\n") == 1
    for name in ("web01", "db01"):
        assert repository_files(server.primary(name)) == expected[name]
    text = server.cli("recover", "--all")
    assert "already there and intact" in text.out
    assert server.cli("recover", "web01", "--all").code == 2
    wrong = server.cli("recover", "web01", "--from", "nowhere")
    assert wrong.code == 2 and "--from nowhere" in wrong.err and wrong.err.count("\n") == 1
    only_usb = server.cli("recover", "--all", "--from", "usb", "--dry-run", "--json")
    assert only_usb.code == 1 and only_usb.json()["clients"]["web01"]["ok"]
    assert "none of the locations to take it from is one of the client's" in \
        only_usb.json()["clients"]["db01"]["error"], "db01 replicates to nas alone"


def test_recover_in_place_leaves_alone_an_upload_the_endpoint_is_writing(tmp_path: Path) -> None:
    site = Site(tmp_path / "site", ports=2)
    assert site.cli("init").code == 0
    site.clients = {"alpha": site.add_client("alpha", "usb")}
    repository = site.root / "repos" / "alpha"
    endpoint = Endpoint(site, "alpha")
    endpoint.start()
    try:
        assert site.restic(str(site.clients["alpha"]["url"]), "init").returncode == 0
        assert site.cli("sync", "alpha").code == 0
        body = os.urandom(1 << 20)
        connection = endpoint.raw("alpha")
        connection.sendall(endpoint.upload_head("alpha", f"/alpha/data/{sha(body)}", len(body)) + body[:1000])
        wait_until(lambda: partial_files(repository), 10, "the upload's file in the partial folder")
        stale = repository / ".triplicate-partial" / "left-by-a-killed-save"
        stale.write_bytes(b"half a pack")
        age_file(stale)
        result = site.cli("recover", "alpha", "--json")
        assert result.code == 0, result.out + result.err
        assert not stale.exists(), "what a killed save left long ago is removed"
        connection.sendall(body[1000:])
        assert read_status(connection) == 200, endpoint.log()
        connection.close()
        assert (repository / "data" / sha(body)[:2] / sha(body)).read_bytes() == body
    finally:
        endpoint.stop()


def test_after_recover_the_client_backs_up_through_its_endpoint_again(tmp_path: Path) -> None:
    site = Site(tmp_path / "site", ports=2)
    assert site.cli("init").code == 0
    site.clients = {"alpha": site.add_client("alpha", "usb", "nas")}
    url = str(site.clients["alpha"]["url"])
    endpoint = Endpoint(site, "alpha")
    endpoint.start()
    try:
        data = site.root / "data" / "alpha"
        write_files(data, "first", count=3, size=300_000)
        assert site.restic(url, "init").returncode == 0
        assert site.restic(url, "backup", "-q", str(data)).returncode == 0
        assert site.cli("sync", "alpha").code == 0
        shutil.rmtree(site.root / "repos" / "alpha")  # the server's disk is gone; its endpoint still runs
        assert site.restic(url, "snapshots").returncode != 0
        result = site.cli("recover", "alpha")
        assert result.code == 0, result.out + result.err
        write_files(data / "after", "second", count=2, size=200_000)
        backup = site.restic(url, "backup", "-q", str(data))
        assert backup.returncode == 0, backup.stderr
        check = site.restic(url, "check", "--read-data")
        assert check.returncode == 0, check.stderr
        snapshots = site.restic(url, "snapshots", "--json")
        assert len(json.loads(snapshots.stdout)) == 2
        assert site.cli("sync", "alpha").code == 0
    finally:
        endpoint.stop()
