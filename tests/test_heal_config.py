"""A damaged primary ``config`` (encrypted, not named by its hash), with real restic: said plainly
keyless, put back with the key or ``heal --config-from``, refused when the locations disagree."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from tests.support.repository import BASE_CONFIG, Server, flip_byte, restic_env, write_files

KEYLESS = BASE_CONFIG.replace('password_file = "{root}/password"\n', "")


def _damage_primary_config(server: Server) -> tuple[bytes, bytes]:
    """Sync, then flip one byte of the primary's config. Returns (good, bad) contents."""
    assert server.cli("sync", "web01").code == 0
    config = server.primary() / "config"
    good = config.read_bytes()
    config.chmod(0o644)
    flip_byte(config)
    bad = config.read_bytes()
    damaged = server.restic(server.primary(), "cat", "config", check=False)
    assert damaged.returncode != 0 and "is damaged" in damaged.stderr, "restic itself calls it damaged"
    return good, bad


def _quarantined(server: Server) -> list[Path]:
    folder = server.root / "state" / "quarantine" / "web01"
    return sorted(path for path in folder.rglob("*") if path.is_file()) if folder.exists() else []


def test_keyless_the_message_blames_neither_the_locations_nor_the_primary_and_names_the_fix(server: Server) -> None:
    server.write_config(KEYLESS)
    _, bad = _damage_primary_config(server)

    result = server.cli("heal", "web01", "--json")
    assert result.code == 1
    report = result.json()
    (note,) = report["notes"]
    assert "the primary's config differs from the one its locations hold (usb, nas, which agree" in note
    assert "damaged" in note and "upgrade_repo_v2" in note and "triplicate heal web01 --config-from usb" in note
    assert all("different restic repository" not in copy["problem"]
               for name, copy in report["copies"].items() if name != "@primary")
    assert report["files"] == []
    assert (server.primary() / "config").read_bytes() == bad and _quarantined(server) == [], "nothing replaced"

    recover = server.cli("recover", "web01")
    assert recover.code == 3 and recover.err.count("\n") == 1, recover.err
    assert "its locations hold (usb, nas" in recover.err and "--config-from usb" in recover.err
    assert "holds another repository" not in recover.err

    # sync fails at every location (an alarm), and its error points at the audit, which tells.
    sync = server.cli("sync", "web01", "--json")
    assert sync.code == 1
    for name in ("usb", "nas"):
        error = sync.json()["locations"][name]["error"]
        assert "'triplicate audit' tells whether the primary's may be damaged" in error

    audit = server.cli("audit", "web01", "--json")
    assert audit.code == 2
    client = audit.json()["clients"]["web01"]
    assert any("the primary's config differs from the one its locations hold (usb, nas" in reason
               for reason in client["reasons"])
    for name in ("usb", "nas"):
        assert not any("different restic repository" in reason for reason in client["locations"][name]["reasons"])


def test_config_from_a_location_puts_its_config_back_keeping_the_damaged_one(server: Server) -> None:
    server.write_config(KEYLESS)
    good, bad = _damage_primary_config(server)

    dry = server.cli("heal", "web01", "--config-from", "usb", "--dry-run", "--json")
    assert dry.code == 0, dry.out + dry.err
    assert dry.json()["files"][0]["healed_from"] == {"@primary": "usb"}
    assert (server.primary() / "config").read_bytes() == bad and _quarantined(server) == []

    result = server.cli("heal", "web01", "--config-from", "usb", "--json")
    assert result.code == 0, result.out + result.err
    report = result.json()
    (entry,) = report["files"]
    assert entry["file"] == "config" and entry["bad_at"] == {"@primary": "differs"}
    assert entry["healed_from"] == {"@primary": "usb"}
    assert (server.primary() / "config").read_bytes() == good
    assert [path.read_bytes() for path in _quarantined(server)] == [bad], "the damaged one is kept, not deleted"
    assert Path(entry["quarantined"]) == _quarantined(server)[0]
    assert report["audit"]["status"] == "OK" and all(copy["problem"] is None for copy in report["copies"].values())
    check = server.check_read_data(server.primary())
    assert check.returncode == 0, check.stderr
    assert server.cli("sync", "web01").code == 0
    assert not list((server.primary() / ".triplicate-partial").iterdir())


def test_with_the_key_heal_puts_back_a_config_restic_cannot_decrypt(server: Server, tmp_path: Path) -> None:
    good, bad = _damage_primary_config(server)

    result = server.cli("heal", "web01", "--json")
    assert result.code == 0, result.out + result.err
    (entry,) = result.json()["files"]
    assert entry["file"] == "config" and entry["bad_at"] == {"@primary": "damaged"}
    assert entry["healed_from"] == {"@primary": "usb"}
    assert (server.primary() / "config").read_bytes() == good
    assert [path.read_bytes() for path in _quarantined(server)] == [bad]
    # The repository works again: a new backup, replicated.
    write_files(tmp_path / "more", "two", count=2, size=1 << 16)
    server.backup(tmp_path / "more")
    assert server.cli("sync", "web01").code == 0
    assert server.snapshot_ids(server.replica("nas")) == server.snapshot_ids(server.primary())


def test_with_the_key_a_config_rewritten_on_purpose_is_left_alone(server: Server, tmp_path: Path) -> None:
    # A repository of format version 1, replicated, then upgraded by its owner: a new, valid config.
    shutil.rmtree(server.primary())
    env = restic_env(server.primary(), server.password_file)
    subprocess.run(["restic", "init", "--repository-version", "1"], env=env, check=True, capture_output=True)
    write_files(tmp_path / "data", "one", count=2, size=1 << 16)
    server.backup(tmp_path / "data")
    assert server.cli("sync", "web01").code == 0
    old = (server.primary() / "config").read_bytes()
    subprocess.run(["restic", "migrate", "upgrade_repo_v2"], env=env, check=True, capture_output=True)
    upgraded = (server.primary() / "config").read_bytes()
    assert upgraded != old

    result = server.cli("heal", "web01", "--json")
    assert result.code == 1
    (note,) = result.json()["notes"]
    assert "restic reads it with the client's key, so it is not damaged" in note and "upgrade_repo_v2" in note
    assert (server.primary() / "config").read_bytes() == upgraded and _quarantined(server) == []


def test_config_from_is_refused_when_the_locations_disagree_or_the_location_is_unknown(
    server: Server, tmp_path: Path
) -> None:
    server.write_config(KEYLESS)
    assert server.cli("heal", "web01", "--config-from", "usb").code == 2, "the primary's config is fine"
    _, bad = _damage_primary_config(server)

    unknown = server.cli("heal", "web01", "--config-from", "cloud")
    assert unknown.code == 2 and unknown.err.count("\n") == 1
    assert "--config-from cloud: not a location of client 'web01' (its locations: usb, nas)" in unknown.err

    # nas's config differs from usb's too (damaged there as well?): usb's word is not enough.
    (server.replica("nas") / "config").chmod(0o644)
    flip_byte(server.replica("nas") / "config", offset=120)
    refused = server.cli("heal", "web01", "--config-from", "usb")
    assert refused.code == 2 and refused.err.count("\n") == 1, refused.err
    assert "--config-from usb: its config differs from nas's" in refused.err
    assert (server.primary() / "config").read_bytes() == bad and _quarantined(server) == [], "nothing replaced"
    keyless = server.cli("heal", "web01", "--json")
    assert keyless.json()["notes"] == [], "the locations disagree: no guess"
    assert "different restic repository" in keyless.json()["copies"]["nas"]["problem"]


def test_another_repository_under_the_same_password_is_never_taken_for_a_copy(server: Server) -> None:
    _, bad = _damage_primary_config(server)
    # Both locations hold one other repository, made with the same password: restic reads its config.
    for name in ("usb", "nas"):
        shutil.rmtree(server.replica(name))
    env = restic_env(server.replica("usb"), server.password_file)
    subprocess.run(["restic", "init"], env=env, check=True, capture_output=True)
    shutil.copytree(server.replica("usb"), server.replica("nas"))
    assert server.restic(server.replica("usb"), "cat", "config", check=False).returncode == 0

    result = server.cli("heal", "web01", "--json")
    assert result.code == 1 and result.json()["files"] == []
    assert not any("its locations hold" in note for note in result.json()["notes"]), "no copy to offer"
    refused = server.cli("heal", "web01", "--config-from", "usb")
    assert refused.code == 2 and refused.err.count("\n") == 1
    assert "--config-from usb: holds none of the primary's key files" in refused.err
    assert (server.primary() / "config").read_bytes() == bad and _quarantined(server) == []
