"""``triplicate quarantine`` and ``triplicate heal`` against real restic repositories."""

from __future__ import annotations

import json
from pathlib import Path

from tests.support.repository import Server, age_file, file_hash_matches_name, flip_byte, write_files
from triplicate.state.audit import last_audit


def _a_pack(repo: Path) -> Path:
    return min(path for path in (repo / "data").rglob("*") if path.is_file())


def test_quarantine_moves_a_damaged_file_aside_and_replication_resumes(server: Server) -> None:
    pack = _a_pack(server.primary())
    flip_byte(pack)
    age_file(pack)
    content = pack.read_bytes()
    relative = pack.relative_to(server.primary()).as_posix()
    assert server.cli("sync", "web01").code == 1, "the damaged pack holds the snapshot back"

    result = server.cli("quarantine", "web01", relative, "--json")
    assert result.code == 0, result.err
    entry = result.json()["quarantined"][0]
    assert entry["file"] == relative and entry["actual_sha256"] != pack.name
    kept = Path(entry["kept_at"])
    assert kept.is_relative_to(server.root / "state" / "quarantine" / "web01")
    assert kept.read_bytes() == content, "kept byte for byte, never deleted"
    assert not pack.exists()
    sync = server.cli("sync", "web01", "--json")
    assert sync.code == 0, sync.out
    assert server.snapshot_ids(server.replica("usb")) == server.snapshot_ids(server.primary())


def test_quarantine_refuses_a_good_file_and_moves_nothing(server: Server) -> None:
    bad, good = sorted(path for path in (server.primary() / "data").rglob("*") if path.is_file())[:2]
    flip_byte(bad)
    young = server.cli("quarantine", "web01", str(bad))
    assert young.code == 2 and "may still be being written" in young.err
    age_file(bad)
    age_file(good)
    result = server.cli("quarantine", "web01", str(bad), good.relative_to(server.primary()).as_posix())
    assert result.code == 2
    assert result.err.count("\n") == 1 and "hashes to its name" in result.err and good.name in result.err
    assert bad.exists() and good.exists() and file_hash_matches_name(good)
    assert not (server.root / "state" / "quarantine").exists()
    assert server.cli("quarantine", "web01", "data/zz/nothing").code == 2
    assert server.cli("quarantine", "web01", "config").code == 2


def test_heal_restores_a_flipped_primary_pack_from_a_replica(server: Server) -> None:
    assert server.cli("sync", "web01").code == 0
    pack = _a_pack(server.primary())
    good = pack.read_bytes()
    flip_byte(pack)
    age_file(pack)
    bad = pack.read_bytes()
    relative = pack.relative_to(server.primary()).as_posix()

    dry = server.cli("heal", "web01", "--dry-run", "--json")
    assert dry.code == 0, dry.out
    assert dry.json()["files"][0]["healed_from"] == {"@primary": "usb"}
    assert pack.read_bytes() == bad and not (server.root / "state" / "quarantine").exists()

    result = server.cli("heal", "web01", "--json")
    assert result.code == 0, result.out + result.err
    report = result.json()
    (entry,) = report["files"]
    assert entry["file"] == relative and entry["bad_at"] == {"@primary": "corrupt"}
    assert entry["healed_from"] == {"@primary": "usb"} and not entry["lost"]
    assert pack.read_bytes() == good
    assert Path(entry["quarantined"]).read_bytes() == bad
    check = server.check_read_data(server.primary())
    assert check.returncode == 0, check.stderr
    again = server.cli("heal", "web01", "--json")
    assert again.code == 0 and again.json()["files"] == []


def test_a_pack_truncated_at_two_copies_is_healed_from_the_third(server: Server) -> None:
    assert server.cli("sync", "web01").code == 0
    pack = _a_pack(server.primary())
    good = pack.read_bytes()
    relative = pack.relative_to(server.primary()).as_posix()
    for copy in (pack, server.replica("usb") / relative):
        with open(copy, "r+b") as file:
            file.truncate(len(good) // 3)
        age_file(copy)
    result = server.cli("heal", "web01", "--json")
    assert result.code == 0, result.out + result.err
    (entry,) = result.json()["files"]
    assert entry["bad_at"] == {"@primary": "corrupt", "usb": "corrupt"}
    assert entry["healed_from"] == {"@primary": "nas", "usb": "nas"}
    for repo in (server.primary(), server.replica("usb"), server.replica("nas")):
        assert (repo / relative).read_bytes() == good
        check = server.check_read_data(repo)
        assert check.returncode == 0, check.stderr


def test_a_file_bad_everywhere_is_reported_lost(server: Server) -> None:
    assert server.cli("sync", "web01").code == 0
    pack = _a_pack(server.primary())
    relative = pack.relative_to(server.primary()).as_posix()
    for repo in (server.primary(), server.replica("usb"), server.replica("nas")):
        flip_byte(repo / relative)
        age_file(repo / relative)
    result = server.cli("heal", "web01", "--json")
    assert result.code == 1
    (entry,) = result.json()["files"]
    assert entry["lost"] and set(entry["not_healed"]) == {"@primary", "usb", "nas"}
    assert "no good copy anywhere" in server.cli("heal", "web01").out


def test_a_location_holding_another_repository_is_never_a_source(server: Server, tmp_path: Path) -> None:
    assert server.cli("sync", "web01", "--to", "usb").code == 0
    # nas holds another repository whose files happen to carry the same names (a copy with its own config).
    import shutil

    shutil.copytree(server.replica("usb"), server.replica("nas"))
    other = tmp_path / "other"
    server.restic(other, "init")
    (server.replica("nas") / "config").write_bytes((other / "config").read_bytes())
    pack = _a_pack(server.primary())
    relative = pack.relative_to(server.primary()).as_posix()
    flip_byte(pack)
    flip_byte(server.replica("usb") / relative)
    age_file(pack)
    result = server.cli("heal", "web01", "--json")
    assert result.code == 1
    report = result.json()
    assert "different restic repository" in report["copies"]["nas"]["problem"]
    (entry,) = report["files"]
    assert entry["lost"] and "nas" not in entry["healed_from"]
    assert not file_hash_matches_name(pack), "never replaced from another repository"


def test_sync_and_status_name_the_commands_for_a_damaged_primary_file(server: Server) -> None:
    pack = _a_pack(server.primary())
    flip_byte(pack)
    age_file(pack)
    relative = pack.relative_to(server.primary()).as_posix()
    sync = server.cli("sync", "web01")
    assert sync.code == 1
    assert f"triplicate quarantine web01 {relative}" in " ".join(sync.out.split())
    status = server.cli("status", "web01", "--json").json()["clients"]["web01"]
    assert any("triplicate heal web01" in problem and f"triplicate quarantine web01 {relative}" in problem
               for problem in status["problems"])
    assert server.cli("quarantine", "web01", relative).code == 0
    assert server.cli("sync", "web01").code == 0
    status = server.cli("status", "web01", "--json").json()["clients"]["web01"]
    assert not any("quarantine" in problem for problem in status["problems"])


def test_heal_leaves_a_primary_file_that_may_still_be_being_written(server: Server) -> None:
    assert server.cli("sync", "web01").code == 0
    pack = _a_pack(server.primary())
    flip_byte(pack)  # modified just now: an upload through the endpoint may still be writing it
    bad = pack.read_bytes()
    result = server.cli("heal", "web01", "--json")
    report = result.json()
    assert report["copies"]["@primary"]["not_judged_in_progress"] == 1 and report["files"] == []
    assert pack.read_bytes() == bad
    age_file(pack)  # settled, and still bad: now it is healed
    healed = server.cli("heal", "web01", "--json")
    assert healed.code == 0 and healed.json()["files"][0]["healed_from"] == {"@primary": "usb"}
    assert file_hash_matches_name(pack)


def test_heal_replaces_a_recent_primary_file_the_last_sync_already_found_corrupt(server: Server) -> None:
    assert server.cli("sync", "web01", "--to", "usb").code == 0
    pack = _a_pack(server.primary())
    flip_byte(pack)
    relative = pack.relative_to(server.primary()).as_posix()
    config = server.config_path.read_text()
    server.config_path.write_text(config.replace('in_progress_grace = "5m"', 'in_progress_grace = "0s"'))
    sync = server.cli("sync", "web01", "--to", "nas", "--json")
    assert sync.json()["locations"]["nas"]["corrupt_files"] == [relative]
    server.config_path.write_text(config)  # the file is recent again under a 5-minute grace, but known bad
    healed = server.cli("heal", "web01", "--json")
    assert healed.code == 0, healed.out
    assert healed.json()["files"][0]["healed_from"] == {"@primary": "usb"}
    assert file_hash_matches_name(pack)


def _new_packs_of_a_second_backup(server: Server, tmp_path: Path) -> tuple[set[Path], str, str]:
    """Back up other files into the primary: (the packs that backup added, the first and the new snapshot ID)."""
    (first,) = server.snapshot_ids(server.primary())
    before = {path for path in (server.primary() / "data").rglob("*") if path.is_file()}
    write_files(tmp_path / "more", "more", count=2, size=1 << 20)
    server.backup(tmp_path / "more")
    (second,) = set(server.snapshot_ids(server.primary())) - {first}
    after = {path for path in (server.primary() / "data").rglob("*") if path.is_file()}
    return after - before, first, second


def test_a_pack_lost_at_every_copy_names_the_snapshots_that_need_it(server: Server, tmp_path: Path) -> None:
    new_packs, first, second = _new_packs_of_a_second_backup(server, tmp_path)
    assert server.cli("sync", "web01").code == 0
    pack = max(new_packs, key=lambda path: path.stat().st_size)  # file contents: a data pack, no trees
    relative = pack.relative_to(server.primary()).as_posix()
    for repo in (server.primary(), server.replica("usb"), server.replica("nas")):
        (repo / relative).unlink()  # gone everywhere: only the index still names it

    result = server.cli("heal", "web01", "--json")
    assert result.code == 1, result.out + result.err
    report = result.json()
    assert report["lost"] == [relative]
    (entry,) = report["files"]
    assert entry["bad_at"] == {"@primary": "missing"} and entry["not_healed"] == {"@primary": "no good copy anywhere"}
    listed = json.loads(server.restic(server.primary(), "--no-lock", "snapshots", "--json").stdout)
    assert {snapshot["id"] for snapshot in listed} == {first, second}
    assert entry["snapshots_needing"] == [second], "the new files' pack: the older snapshot does not need it"
    text = server.cli("heal", "web01")
    assert text.code == 1
    assert relative in text.out and "no good copy anywhere" in text.out
    assert f"snapshots that may need it: {second[:8]}" in text.out


def test_a_pack_missing_at_the_primary_only_is_put_back_from_a_location(server: Server) -> None:
    assert server.cli("sync", "web01").code == 0
    pack = _a_pack(server.primary())
    good = pack.read_bytes()
    relative = pack.relative_to(server.primary()).as_posix()
    pack.unlink()
    result = server.cli("heal", "web01", "--json")
    assert result.code == 0, result.out + result.err
    (entry,) = result.json()["files"]
    assert entry["file"] == relative and entry["bad_at"] == {"@primary": "missing"}
    assert entry["healed_from"]["@primary"] in ("usb", "nas")
    assert pack.read_bytes() == good and entry["quarantined"] is None
    check = server.check_read_data(server.primary())
    assert check.returncode == 0, check.stderr


def test_the_daemons_look_for_packs_gone_from_the_primary_reads_each_index_file_once(server: Server) -> None:
    from triplicate.actions.heal_losses import packs_missing_at_primary
    from triplicate.config.load import load_config

    config = load_config(server.config_path)
    known: dict[str, frozenset[str]] = {}
    assert packs_missing_at_primary(config, "web01", known) == set()
    assert set(known) == {path.name for path in (server.primary() / "index").iterdir()}
    pack = _a_pack(server.primary())
    pack.unlink()
    # restic can no longer read any index: what it read before is still known, and enough.
    server.password_file.write_text("not the password")
    assert packs_missing_at_primary(config, "web01", known) == {pack.relative_to(server.primary()).as_posix()}


def test_a_lost_pack_of_directory_trees_names_every_snapshot(server: Server, tmp_path: Path) -> None:
    new_packs, first, second = _new_packs_of_a_second_backup(server, tmp_path)
    assert server.cli("sync", "web01").code == 0
    pack = min(new_packs, key=lambda path: path.stat().st_size)  # the backup's trees: its smallest pack
    relative = pack.relative_to(server.primary()).as_posix()
    for repo in (server.primary(), server.replica("usb"), server.replica("nas")):
        (repo / relative).unlink()
    result = server.cli("heal", "web01", "--json")
    assert result.code == 1
    (entry,) = result.json()["files"]
    assert entry["lost"] and entry["snapshots_needing"] == sorted([first, second])
    assert "directory trees" in entry["snapshots_note"]


def _client_status(server: Server) -> dict:  # type: ignore[type-arg]
    return server.cli("status", "web01", "--json").json()["clients"]["web01"]


def _audit_status_metric(server: Server) -> float:
    from triplicate.metrics import ChecksCollector

    families = ChecksCollector(server.root / "state", lambda: ["web01"]).collect()
    (sample,) = next(family for family in families if family.name == "triplicate_audit_status").samples
    return float(sample.value)


def test_after_a_heal_status_shows_the_audit_it_left_not_the_damage_it_repaired(server: Server) -> None:
    assert server.cli("sync", "web01").code == 0
    pack = _a_pack(server.primary())
    relative = pack.relative_to(server.primary()).as_posix()
    for copy in (pack, server.replica("usb") / relative):
        flip_byte(copy)
        age_file(copy)
    audit = server.cli("audit", "web01", "--verify", "100")
    assert audit.code == 2 and "corrupt" in audit.out, audit.out + audit.err
    before = _client_status(server)
    assert any(problem.startswith("last audit: CRITICAL") and relative in problem for problem in before["problems"])
    assert _audit_status_metric(server) == 2.0
    audited = last_audit(server.root / "state", "web01")
    assert audited is not None

    result = server.cli("heal", "web01", "--json")
    assert result.code == 0, result.out + result.err
    report = result.json()
    assert report["files"][0]["healed_from"] == {"@primary": "nas", "usb": "nas"}
    assert report["audit"] == {"status": "OK", "reason": ""}

    after = _client_status(server)
    assert not any("audit" in problem for problem in after["problems"]), after["problems"]
    fresh = last_audit(server.root / "state", "web01")
    assert fresh is not None and fresh.started > audited.finished, "a new audit, recorded after the heal"
    assert after["audit"]["status"] == "OK" and after["audit"]["age_seconds"] < 60
    assert all(location["status"] == "OK" for location in after["audit"]["locations"].values())
    assert _audit_status_metric(server) == 0.0
    assert "audit afterwards (recorded for status): OK" in server.cli("heal", "web01").out


def test_a_heal_that_leaves_a_loss_records_a_critical_audit(server: Server) -> None:
    assert server.cli("sync", "web01").code == 0
    relative = _a_pack(server.primary()).relative_to(server.primary()).as_posix()
    for repo in (server.primary(), server.replica("usb"), server.replica("nas")):
        flip_byte(repo / relative)
        age_file(repo / relative)
    assert server.cli("audit", "web01", "--verify", "0").code == 0, "nothing re-read: the rot is not seen yet"
    result = server.cli("heal", "web01", "--json")
    assert result.code == 1 and result.json()["lost"] == [relative]
    assert result.json()["audit"]["status"] == "CRITICAL"
    status = _client_status(server)
    assert any(problem.startswith("last audit: CRITICAL") and relative in problem for problem in status["problems"])
    dry = server.cli("heal", "web01", "--dry-run", "--json")
    assert dry.json()["audit"] is None, "a dry run records nothing"


def test_a_heal_runs_restic_check_again_when_the_audit_before_found_errors_with_it(server: Server) -> None:
    assert server.cli("sync", "web01").code == 0
    relative = _a_pack(server.primary()).relative_to(server.primary()).as_posix()
    flip_byte(server.replica("usb") / relative)
    age_file(server.replica("usb") / relative)
    audit = server.cli("audit", "web01", "--read-data-subset", "100%", "--json")
    assert audit.code == 2
    assert audit.json()["clients"]["web01"]["locations"]["usb"]["restic_check"]["ok"] is False

    result = server.cli("heal", "web01", "--json")
    assert result.code == 0 and result.json()["audit"]["status"] == "OK", result.out
    record = last_audit(server.root / "state", "web01")
    assert record is not None
    checked = record.locations["usb"].report["restic_check"]
    assert checked is not None and checked["ok"], "restic confirms the repair; its error is not just dropped"
