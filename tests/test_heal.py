"""``triplicate quarantine`` and ``triplicate heal`` against real restic repositories."""

from __future__ import annotations

from pathlib import Path

from .conftest import Server, age_file, file_hash_matches_name, flip_byte


def _a_pack(repo: Path) -> Path:
    return sorted(path for path in (repo / "data").rglob("*") if path.is_file())[0]


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
