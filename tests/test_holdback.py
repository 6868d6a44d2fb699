"""Narrow hold-back: with the client's key, a bad pack holds back only the index and snapshots
that need it (restic tells which); keyless, every new index and snapshot waits (the old rule).
Real restic repositories, damaged for real."""

from __future__ import annotations

import hashlib
from pathlib import Path

from tests.support.repository import BASE_CONFIG, Server, age_file, flip_byte, snapshot_files, write_files


def packs(repo: Path) -> dict[str, Path]:
    return {path.name: path for path in (repo / "data").glob("*/*") if path.is_file()}


def unreferenced_pack(repo: Path, content: bytes) -> Path:
    """A pack no index names, whose content does not hash to its name (an endpoint crash mid-upload)."""
    name = hashlib.sha256(content + b"the rest that never arrived").hexdigest()
    path = repo / "data" / name[:2] / name
    path.parent.mkdir(exist_ok=True)
    path.write_bytes(content)
    age_file(path)  # long settled: corrupt, not "still being written"
    return path


def test_unreferenced_empty_and_truncated_packs_hold_nothing_back(server: Server, tmp_path: Path) -> None:
    primary = server.primary()
    before = set(packs(primary))
    write_files(tmp_path / "two", "two", count=2, size=256 << 10)
    server.backup(tmp_path / "two")
    some_pack = next(path for name, path in packs(primary).items() if name not in before)
    empty = unreferenced_pack(primary, b"")
    truncated = unreferenced_pack(primary, some_pack.read_bytes()[:1000])

    result = server.cli("sync", "web01", "--to", "usb", "--json")
    report = result.json()["locations"]["usb"]
    # Every snapshot is replicated: restic restores them all, and no index names the two packs.
    assert server.snapshot_ids(server.replica("usb")) == server.snapshot_ids(primary)
    assert report["held_back"] == []
    assert server.check_read_data(server.replica("usb")).returncode == 0
    # The bad packs are still reported (exit 1), each named with what to do.
    assert result.code == 1
    for path in (empty, truncated):
        relative = f"data/{path.parent.name}/{path.name}"
        assert any(f"{relative} is corrupt" in problem and f"triplicate quarantine web01 {relative}" in problem
                   for problem in report["problems"]), report["problems"]
    plain = server.cli("sync", "web01", "--to", "nas")  # the summary names them uncut, each on its line
    assert plain.code == 1
    for path in (empty, truncated):
        relative = f"data/{path.parent.name}/{path.name}"
        assert any(line.startswith(f"the primary's {relative} is corrupt") and
                   line.rstrip().endswith("`triplicate heal web01`.") for line in plain.out.splitlines()), plain.out


def test_a_damaged_pack_holds_back_only_the_snapshot_that_needs_it_with_a_key(
    server: Server, tmp_path: Path
) -> None:
    primary = server.primary()
    first = server.snapshot_ids(primary)
    before = set(packs(primary))
    write_files(tmp_path / "two", "two", count=2, size=1 << 20)
    server.backup(tmp_path / "two")
    second = sorted(set(server.snapshot_ids(primary)) - set(first))
    damaged = max((path for name, path in packs(primary).items() if name not in before),
                  key=lambda path: path.stat().st_size)  # a pack of file data
    flip_byte(damaged)
    age_file(damaged)
    after_second = set(packs(primary))
    write_files(tmp_path / "three", "three", count=1, size=512 << 10)
    server.backup(tmp_path / "three")
    third = sorted(set(server.snapshot_ids(primary)) - set(first) - set(second))
    assert set(packs(primary)) - after_second, "the third backup wrote packs of its own"

    result = server.cli("sync", "web01", "--to", "usb", "--json")
    assert result.code == 1
    report = result.json()["locations"]["usb"]
    assert server.snapshot_ids(server.replica("usb")) == sorted(first + third)
    assert f"snapshots/{second[0]}" in report["held_back"]
    assert server.check_read_data(server.replica("usb")).returncode == 0

    # Without a key nothing narrower is possible: every new snapshot waits (the keyless rule).
    server.write_config(BASE_CONFIG.replace('password_file = "{root}/password"\n', ""))
    result = server.cli("sync", "web01", "--to", "nas", "--json")
    assert result.code == 1
    assert not snapshot_files(server.replica("nas"))
    held = result.json()["locations"]["nas"]["held_back"]
    assert {f"snapshots/{snapshot}" for snapshot in first + second + third} <= set(held)
