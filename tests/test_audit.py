"""``triplicate audit`` against real restic repositories and replicas made by ``triplicate sync``."""

from __future__ import annotations

import math
import shutil
import threading
import time
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from tests.support.remote import start_rest_server, stop
from tests.support.repository import BASE_CONFIG, Server, age_file, flip_byte, repository_files, write_files
from triplicate.actions.audit import AuditOptions, run_audit, status_changes
from triplicate.config.load import load_config
from triplicate.metrics import prometheus_text
from triplicate.state.audit import AuditState, last_audit, last_audits
from triplicate.state.db import connect

LOCATION_FIELDS = {
    "status", "missing_snapshots", "missing_files", "corrupt_files", "lag_seconds",
    "newest_snapshot_age_seconds", "verified_files", "verified_bytes",
}


def synced(server: Server) -> None:
    result = server.cli("sync", "web01")
    assert result.code == 0, result.out + result.err


def age_tree(folder: Path, seconds: float = 3600) -> None:
    """Make every file under ``folder`` look ``seconds`` older (so it is past the in-progress grace)."""
    for path in folder.rglob("*"):
        if path.is_file():
            age_file(path, seconds)


def first(repo: Path, folder: str) -> Path:
    return sorted(path for path in (repo / folder).rglob("*") if path.is_file())[0]


def relative(path: Path, repo: Path) -> str:
    return path.relative_to(repo).as_posix()


def content_files(repo: Path) -> dict[str, int]:
    """The files an audit verifies: everything but config."""
    return {path: size for path, size in repository_files(repo).items() if path != "config"}


def audit(server: Server, *args: str) -> tuple[int, dict]:  # type: ignore[type-arg]
    result = server.cli("audit", *args, "--json")
    assert "Traceback" not in result.err, result.err
    return result.code, result.json()


def test_a_healthy_setup_is_ok_and_reports_every_field(server: Server) -> None:
    synced(server)
    for location in ("usb", "nas"):
        age_tree(server.replica(location))
    code, report = audit(server, "--verify", "100")
    assert code == 0 and report["status"] == "OK" and report["exit_code"] == 0
    client = report["clients"]["web01"]
    assert client["status"] == "OK" and client["reasons"] == []
    assert client["snapshots"] == 1 and 0 <= client["newest_snapshot_age_seconds"] < 3600
    for location in ("usb", "nas"):
        outcome = client["locations"][location]
        assert set(outcome) >= LOCATION_FIELDS
        assert outcome["status"] == "OK" and outcome["reasons"] == []
        assert outcome["missing_snapshots"] == outcome["missing_files"] == outcome["corrupt_files"] == []
        assert outcome["lag_seconds"] == 0
        files = content_files(server.replica(location))
        assert outcome["verified_files"] == len(files) and outcome["verified_bytes"] == sum(files.values())
    table = server.cli("audit")
    assert table.code == 0 and "audit web01: OK" in table.out and "usb" in table.out and "nas" in table.out


def test_a_snapshot_deleted_from_a_replica_is_critical_and_named(server: Server) -> None:
    synced(server)
    (snapshot,) = server.snapshot_ids(server.primary())
    (server.replica("usb") / "snapshots" / snapshot).unlink()
    code, report = audit(server)
    assert code == 2 and report["status"] == "CRITICAL"
    usb = report["clients"]["web01"]["locations"]["usb"]
    assert usb["status"] == "CRITICAL" and usb["missing_snapshots"] == [snapshot]
    assert any(snapshot[:8] in reason and "lost" in reason for reason in usb["reasons"])
    assert report["clients"]["web01"]["locations"]["nas"]["status"] == "OK"
    table = server.cli("audit")
    assert table.code == 2 and snapshot[:8] in table.out and "CRITICAL" in table.out


def test_a_snapshot_not_replicated_yet_is_judged_by_its_lag(server: Server, tmp_path: Path) -> None:
    synced(server)
    write_files(tmp_path / "more", "two", count=1, size=1 << 16)
    server.backup(tmp_path / "more")
    (new,) = set(server.snapshot_ids(server.primary())) - set(server.snapshot_ids(server.replica("usb")))
    snapshot_file = server.primary() / "snapshots" / new

    code, report = audit(server)  # just written: within the in-progress grace, not judged yet
    usb = report["clients"]["web01"]["locations"]["usb"]
    assert code == 0 and usb["missing_snapshots"] == [new] and usb["status"] == "OK"
    assert any("not judged yet" in note for note in usb["notes"])

    age_file(snapshot_file, 30 * 60)  # missing for 30 minutes, max_lag is 1h by default
    code, report = audit(server)
    usb = report["clients"]["web01"]["locations"]["usb"]
    assert code == 1 and usb["status"] == "WARNING" and 1790 < usb["lag_seconds"] < 1900
    assert any(new[:8] in reason for reason in usb["reasons"])

    age_file(snapshot_file, 60 * 60)  # now 1h30 old: beyond max_lag
    code, report = audit(server)
    usb = report["clients"]["web01"]["locations"]["usb"]
    assert code == 2 and usb["status"] == "CRITICAL" and "max_lag" in usb["reasons"][0]

    synced(server)
    assert audit(server)[0] == 0


def test_a_location_without_the_clients_replica_is_judged_by_the_missing_snapshots(server: Server) -> None:
    """The disk is there but holds nothing of the client: missing snapshots, judged like any other."""
    (snapshot,) = server.snapshot_ids(server.primary())
    age_file(server.primary() / "snapshots" / snapshot, 2 * 3600)  # beyond max_lag (1h)
    code, report = audit(server)  # never synced
    usb = report["clients"]["web01"]["locations"]["usb"]
    assert code == 2 and usb["status"] == "CRITICAL" and usb["missing_snapshots"] == [snapshot], usb
    assert any("no repository here yet" in note for note in usb["notes"])

    synced(server)
    shutil.rmtree(server.replica("usb"))  # removed by hand after a sync: lost
    code, report = audit(server)
    usb = report["clients"]["web01"]["locations"]["usb"]
    assert code == 2 and usb["status"] == "CRITICAL" and any("lost" in reason for reason in usb["reasons"])
    assert report["clients"]["web01"]["locations"]["nas"]["status"] == "OK"


def test_a_file_where_the_clients_folder_should_be_is_not_nothing_yet_but_critical(server: Server) -> None:
    """No run can ever write there: even with a snapshot too new to judge, the location is not OK."""
    server.replica("nas").write_text("a file where the client's folder should be")
    code, report = audit(server)
    nas = report["clients"]["web01"]["locations"]["nas"]
    assert code == 2 and nas["status"] == "CRITICAL", nas
    assert "is not a folder: nothing can be replicated there" in nas["reasons"][0]
    assert report["clients"]["web01"]["locations"]["usb"]["status"] == "OK"  # new, not judged yet
    sync = server.cli("sync", "web01", "--json")
    assert sync.code == 1 and "is not a folder" in sync.json()["locations"]["nas"]["error"]


def test_a_pack_deleted_from_a_replica_is_named(server: Server) -> None:
    synced(server)
    pack = first(server.replica("nas"), "data")
    pack.unlink()
    code, report = audit(server)
    nas = report["clients"]["web01"]["locations"]["nas"]
    path = relative(pack, server.replica("nas"))
    assert code == 2 and nas["status"] == "CRITICAL" and nas["missing_files"] == [path]
    assert any(path in reason for reason in nas["reasons"])
    assert report["clients"]["web01"]["locations"]["usb"]["status"] == "OK"


def test_a_flipped_byte_is_found_by_verify_100_and_stays_reported_until_repaired(server: Server) -> None:
    synced(server)
    index = first(server.replica("usb"), "index")
    pack = max((path for path in (server.replica("nas") / "data").rglob("*") if path.is_file()),
               key=lambda path: path.stat().st_size)
    flip_byte(index, 10)
    flip_byte(pack, pack.stat().st_size // 2)
    for location in ("usb", "nas"):
        age_tree(server.replica(location))
    fresh = first(server.replica("usb"), "snapshots")  # corrupt, but modified just now: not judged
    flip_byte(fresh, 10)

    assert audit(server)[0] == 0  # keyless presence alone cannot see inside files
    code, report = audit(server, "--verify", "100")
    locations = report["clients"]["web01"]["locations"]
    assert code == 2
    assert locations["usb"]["corrupt_files"] == [relative(index, server.replica("usb"))]
    assert locations["nas"]["corrupt_files"] == [relative(pack, server.replica("nas"))]
    assert locations["usb"]["not_judged_in_progress"] == 1
    assert any(relative(index, server.replica("usb")) in reason for reason in locations["usb"]["reasons"])

    # Without --verify the known-bad file is re-read every time, so the alarm does not go quiet.
    code, report = audit(server)
    assert code == 2
    assert report["clients"]["web01"]["locations"]["usb"]["corrupt_files"] == [
        relative(index, server.replica("usb"))]
    assert report["clients"]["web01"]["locations"]["usb"]["verified_files"] == 1

    # Repaired (the bad copies removed, sync copies them again): OK again.
    for path in (index, pack, fresh):
        path.unlink()
    synced(server)
    assert audit(server)[0] == 0


def test_repeated_verify_10_covers_every_file_within_ten_runs(server: Server, tmp_path: Path) -> None:
    for run in range(3):
        write_files(tmp_path / f"more{run}", f"r{run}", count=2, size=1 << 15)
        server.backup(tmp_path / f"more{run}")
    synced(server)
    age_tree(server.replica("usb"))
    files = content_files(server.replica("usb"))
    share = math.ceil(len(files) * 10 / 100)
    assert len(files) >= 15 and share < len(files)
    state = AuditState(server.root / "state")
    try:
        covered: set[tuple[str, str]] = set()
        for _run in range(10):
            code, report = audit(server, "--verify", "10", "--location", "usb")
            assert code == 0 and report["clients"]["web01"]["locations"]["usb"]["verified_files"] == share
            stamps = state.stamps("web01", "usb")
            new = set(stamps) - covered
            assert len(new) == min(share, len(files) - len(covered)), "a file was re-read before all were read"
            covered |= new
        assert {f"{kind}/{name[:2]}/{name}" if kind == "data" else f"{kind}/{name}"
                for kind, name in covered} == set(files)
        # Once all were read, the next audit takes the least recently verified ones.
        before = state.stamps("web01", "usb")
        audit(server, "--verify", "10", "--location", "usb")
        after = state.stamps("web01", "usb")
        reread = {key for key in after if after[key].verified_at != before[key].verified_at}
        assert reread == set(sorted(before, key=lambda key: before[key].verified_at)[:share])
    finally:
        state.close()


def test_a_client_with_no_recent_backup_is_warning_then_critical(server: Server) -> None:
    server.write_config(server.config_path.read_text() + 'expect_backup_every = "1d"\n')
    synced(server)
    (snapshot,) = server.snapshot_ids(server.primary())
    assert audit(server)[0] == 0

    age_file(server.primary() / "snapshots" / snapshot, 1.5 * 86400)  # written 36 hours ago
    code, report = audit(server)
    client = report["clients"]["web01"]
    assert code == 1 and client["status"] == "WARNING"
    assert "expect_backup_every" in client["reasons"][0] and client["newest_snapshot_age_seconds"] > 1.4 * 86400
    assert all(location["status"] == "OK" for location in client["locations"].values())

    # The state database first saw it three days ago: its arrival is the earlier of the two.
    database = connect(server.root / "state")
    with database:
        database.execute("UPDATE snapshots SET first_seen=? WHERE client='web01' AND location='@primary'",
                         (time.time() - 3 * 86400,))
    database.close()
    code, report = audit(server)
    assert code == 2 and report["clients"]["web01"]["status"] == "CRITICAL"
    assert "twice" in report["clients"]["web01"]["reasons"][0]


def test_an_unreachable_location_is_unknown_without_hiding_the_others(server: Server) -> None:
    synced(server)
    (snapshot,) = server.snapshot_ids(server.primary())
    (server.replica("usb") / "snapshots" / snapshot).unlink()
    (server.root / "nas").rename(server.root / "nas-unmounted")

    code, report = audit(server)
    locations = report["clients"]["web01"]["locations"]
    assert code == 2, "CRITICAL at usb must not be hidden by UNKNOWN at nas"
    assert locations["nas"]["status"] == "UNKNOWN" and "not mounted" in locations["nas"]["reasons"][0]
    assert str(server.root / "nas") in locations["nas"]["reasons"][0]
    assert locations["usb"]["status"] == "CRITICAL" and locations["usb"]["missing_snapshots"] == [snapshot]

    assert server.cli("sync", "web01", "--to", "usb").code == 0
    code, report = audit(server)
    assert code == 3 and report["clients"]["web01"]["locations"]["usb"]["status"] == "OK"
    table = server.cli("audit")
    assert table.code == 3 and "UNKNOWN" in table.out


def test_a_client_without_primary_repository_is_unknown(server: Server) -> None:
    shutil.rmtree(server.primary())
    code, report = audit(server)
    client = report["clients"]["web01"]
    assert code == 3 and client["status"] == "UNKNOWN" and "primary repository" in client["reasons"][0]
    assert {location["status"] for location in client["locations"].values()} == {"UNKNOWN"}


def test_prometheus_textfile(server: Server) -> None:
    synced(server)
    (snapshot,) = server.snapshot_ids(server.primary())
    (server.replica("usb") / "snapshots" / snapshot).unlink()
    textfile = server.root / "textfile" / "triplicate_audit.prom"
    textfile.parent.mkdir()
    textfile.write_text("stale content\n")
    result = server.cli("audit", "--prometheus", str(textfile))
    assert result.code == 2 and "audit web01" in result.out
    assert [path.name for path in textfile.parent.iterdir()] == [textfile.name], "no temporary file left"
    samples = {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(textfile.read_text()) for sample in family.samples
    }

    def value(name: str, **labels: str) -> float:
        return samples[(name, tuple(sorted(labels.items())))]

    assert value("triplicate_audit_status", client="web01") == 2
    assert value("triplicate_audit_location_status", client="web01", location="usb") == 2
    assert value("triplicate_audit_location_status", client="web01", location="nas") == 0
    assert value("triplicate_audit_missing_snapshots", client="web01", location="usb") == 1
    assert value("triplicate_audit_missing_snapshots", client="web01", location="nas") == 0
    assert value("triplicate_audit_corrupt_files", client="web01", location="nas") == 0
    assert value("triplicate_audit_snapshots", client="web01") == 1
    assert abs(value("triplicate_audit_last_run_timestamp_seconds", client="web01") - time.time()) < 60
    assert value("triplicate_audit_newest_snapshot_age_seconds", client="web01") >= 0


def test_bad_configuration_and_arguments_are_unknown(server: Server) -> None:
    server.write_config(server.config_path.read_text() + "max_lag = \"soon\"\n")
    result = server.cli("audit")
    assert result.code == 3 and "max_lag" in result.err and "Traceback" not in result.err
    assert len(result.err.strip().splitlines()) == 1
    server.config_path.write_text(server.config_path.read_text().replace('max_lag = "soon"\n', ""))
    for arguments, message in (
        (["nobody"], "unknown client 'nobody'"),
        (["--location", "tape"], "--location tape"),
        (["--verify", "150"], "--verify"),
        (["--read-data-subset", "lots"], "--read-data-subset"),
    ):
        result = server.cli("audit", *arguments)
        assert result.code == 3 and message in result.err, (arguments, result.err)


def test_restic_check_with_the_clients_key_is_reported_alongside(server: Server) -> None:
    synced(server)
    pack = max((path for path in (server.replica("usb") / "data").rglob("*") if path.is_file()),
               key=lambda path: path.stat().st_size)
    flip_byte(pack, pack.stat().st_size // 2)
    code, report = audit(server, "--read-data-subset", "100%")
    locations = report["clients"]["web01"]["locations"]
    assert code == 2
    assert locations["usb"]["restic_check"]["ok"] is False and locations["usb"]["status"] == "CRITICAL"
    assert any("restic check found errors" in reason for reason in locations["usb"]["reasons"])
    assert locations["nas"]["restic_check"]["ok"] is True and locations["nas"]["status"] == "OK"
    assert not any((server.replica("nas") / "locks").glob("*")), "an audit never writes into a replica"

    server.config_path.write_text("\n".join(line for line in server.config_path.read_text().splitlines()
                                            if not line.startswith("password_file")))
    code, report = audit(server, "--restic-check", "--location", "nas")
    nas = report["clients"]["web01"]["locations"]["nas"]
    assert code == 0 and nas["restic_check"] is None and "restic check not run" in nas["notes"][0]


def test_results_are_stored_and_run_audit_is_safe_in_a_thread(server: Server) -> None:
    synced(server)
    config = load_config(server.config_path)
    reports = []
    thread = threading.Thread(target=lambda: reports.append(run_audit(config, options=AuditOptions())))
    thread.start()
    thread.join(timeout=60)
    assert reports and reports[0].status.exit_code == 0
    record = last_audit(server.root / "state", "web01")
    assert record is not None and record.status == "OK" and set(record.locations) == {"usb", "nas"}
    assert record.locations["usb"].status == "OK" and set(record.locations["usb"].report) >= LOCATION_FIELDS

    (server.replica("nas") / "snapshots" / server.snapshot_ids(server.primary())[0]).unlink()
    previous = last_audits(server.root / "state")
    report = run_audit(config)
    changes = status_changes(previous, report)
    assert [(change.client, change.location, change.before, change.after) for change in changes] == [
        ("web01", None, "OK", "CRITICAL"), ("web01", "nas", "OK", "CRITICAL")]
    assert "nas: 1 snapshot lost" in changes[0].reason
    record = last_audit(server.root / "state", "web01")
    assert record is not None and record.status == "CRITICAL" and record.reason == changes[0].reason
    assert record.locations["nas"].status == "CRITICAL" and "lost" in record.locations["nas"].reason
    assert record.locations["usb"].status == "OK" and record.locations["usb"].reason == ""
    # Stored audits export the same metrics as the report they came from.
    assert prometheus_text({"web01": record.to_json()}) == prometheus_text(report.to_json()["clients"])
    assert status_changes(last_audits(server.root / "state"), run_audit(config)) == []


def test_every_enabled_client_is_audited_by_default(server: Server) -> None:
    shutil.copytree(server.primary(), server.primary("db01"))
    server.write_config(server.config_path.read_text() + '\n[clients.db01]\nreplicate_to = ["nas"]\n'
                        '\n[clients.old]\nenabled = false\n')
    synced(server)
    assert server.cli("sync", "db01").code == 0
    code, report = audit(server)
    assert code == 0 and list(report["clients"]) == ["db01", "web01"]
    assert list(report["clients"]["db01"]["locations"]) == ["nas"]
    code, report = audit(server, "db01")
    assert list(report["clients"]) == ["db01"]


def test_a_remote_location_is_audited_alike_and_unknown_once_unreachable(server: Server, tmp_path: Path) -> None:
    rest = start_rest_server(tmp_path / "rest")
    try:
        server.write_config(BASE_CONFIG.replace('replicate_to = ["usb", "nas"]', 'replicate_to = ["usb", "far"]')
                            + "\n" + rest.location_toml("far"))
        synced(server)
        (snapshot,) = server.snapshot_ids(server.primary())
        code, report = audit(server, "--verify", "100", "--restic-check", "--location", "far")
        far = report["clients"]["web01"]["locations"]["far"]
        assert code == 0 and far["status"] == "OK" and far["restic_check"]["ok"] is True
        assert far["verified_files"] == len(content_files(server.primary()))

        (rest.root / "web01" / "snapshots" / snapshot).unlink()
        code, report = audit(server)
        far = report["clients"]["web01"]["locations"]["far"]
        assert code == 2 and far["missing_snapshots"] == [snapshot]
    finally:
        stop(rest.process)
    code, report = audit(server)
    locations = report["clients"]["web01"]["locations"]
    assert code == 3 and locations["far"]["status"] == "UNKNOWN" and "far" in locations["far"]["reasons"][0]
    assert locations["usb"]["status"] == "OK" and locations["usb"]["snapshots"] == 1


def test_verification_covers_the_primary_too_reported_as_at_primary(server: Server) -> None:
    synced(server)
    age_tree(server.primary())
    pack = first(server.primary(), "data")
    flip_byte(pack)  # rot on the server's own disk, after the pack was replicated
    age_file(pack)
    fresh = first(server.primary(), "snapshots")
    flip_byte(fresh, 10)  # corrupt but modified just now: a backup may still be writing it
    total = len(content_files(server.primary()))

    assert "@primary" not in audit(server)[1]["clients"]["web01"]["locations"], "nothing verified: not shown"
    code, report = audit(server, "--verify", "100")
    primary = report["clients"]["web01"]["locations"]["@primary"]
    assert code == 2 and primary["status"] == "CRITICAL"
    assert primary["corrupt_files"] == [relative(pack, server.primary())]
    assert primary["verified_files"] == total - 1 and primary["not_judged_in_progress"] == 1
    assert any(relative(pack, server.primary()) in reason for reason in primary["reasons"])
    assert report["clients"]["web01"]["locations"]["usb"]["corrupt_files"] == []
    # Known bad: re-read by every later audit, even without --verify.
    assert audit(server)[1]["clients"]["web01"]["locations"]["@primary"]["corrupt_files"] == [
        relative(pack, server.primary())]
    # An audit narrowed to a location leaves the primary alone.
    assert "@primary" not in audit(server, "--location", "usb", "--verify", "100")[1]["clients"]["web01"]["locations"]
    table = server.cli("audit", "--verify", "100")
    assert "@primary: 1 corrupt file" in " ".join(table.out.split())
