"""Remote locations end to end: SFTP, S3, REST and rclone, with real servers on loopback.

sshd is Debian's OpenSSH; the S3 server is moto's *emulator* (moto_server, in memory: the
S3-compatible server installable here, not AWS itself); the REST server is
``rclone serve restic``. Each replica is then opened by restic itself, through
``restic_target``, to prove it is a valid repository.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import signal
import subprocess
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tests.support.ports import LOOPBACK, free_port
from tests.support.processes import command_line, descendants_of
from tests.support.remote import (
    RestServer,
    S3Server,
    SshServer,
    configure_locations,
    kind_location_toml,
    rclone_local_config,
    rclone_location_toml,
    small_disk,
    start_rest_server,
    stop,
    unique,
)
from tests.support.repository import (
    Server,
    file_hash_matches_name,
    flip_byte,
    repository_files,
    write_files,
)
from triplicate.config.load import load_config
from triplicate.restic import restic_environment
from triplicate.storage import FileType, Handle, restic_target
from triplicate.storage.backend import CorruptContent
from triplicate.storage.retry import TransientError

KINDS = ("sftp", "s3", "rest", "rclone")


def restic_at(server: Server, location: str | None, *args: str) -> subprocess.CompletedProcess[str]:
    """Run restic on the client's repository at ``location`` the way triplicate tells restic to open it."""
    target = restic_target(load_config(server.config_path), location, "web01")
    env = restic_environment(target.repository, server.password_file)
    env.update(target.environment)
    return subprocess.run(["restic", "--no-cache", *args], env=env, capture_output=True, text=True, timeout=120)


def snapshot_ids(server: Server, location: str | None) -> list[str]:
    listed = restic_at(server, location, "snapshots", "--json")
    assert listed.returncode == 0, listed.stderr
    return sorted(snapshot["id"] for snapshot in json.loads(listed.stdout))


def sync(server: Server) -> tuple[int, dict]:  # type: ignore[type-arg]
    result = server.cli("sync", "web01", "--json")
    assert "Traceback" not in result.err and result.out, result.err
    return result.code, result.json()


# -- sync, then restic itself on the replica ---------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_sync_and_incremental_sync_give_a_replica_restic_checks(
    kind: str, server: Server, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    configure_locations(server, ["far"], kind_location_toml(kind, "far", server, request))
    code, report = sync(server)
    outcome = report["locations"]["far"]
    assert code == 0 and outcome["ok"], outcome
    assert outcome["files_copied"] == len(repository_files(server.primary()))
    assert snapshot_ids(server, "far") == server.snapshot_ids(server.primary())

    before = set(repository_files(server.primary()))
    write_files(tmp_path / "more", "two", count=2, size=1 << 20)
    server.backup(tmp_path / "more")
    new_files = set(repository_files(server.primary())) - before
    code, report = sync(server)
    assert code == 0 and report["locations"]["far"]["files_copied"] == len(new_files)
    code, report = sync(server)
    assert code == 0 and report["locations"]["far"]["files_copied"] == 0

    check = restic_at(server, "far", "check", "--read-data")
    assert check.returncode == 0, check.stderr
    assert snapshot_ids(server, "far") == server.snapshot_ids(server.primary())


def test_audit_and_restore_check_work_on_every_remote_kind(
    server: Server, request: pytest.FixtureRequest, sshd: SshServer
) -> None:
    names = [f"far-{kind}" for kind in KINDS]
    # Files on a remote cannot be made to look old: no grace, so that the audit verifies them at once.
    locations = "".join(kind_location_toml(kind, f"far-{kind}", server, request) for kind in KINDS)
    configure_locations(server, names, locations,
                        in_progress_grace="0s")
    code, report = sync(server)
    assert code == 0, report
    content = {path: size for path, size in repository_files(server.primary()).items() if path != "config"}

    audit = server.cli("audit", "--verify", "100", "--restic-check", "--json")
    assert "Traceback" not in audit.err, audit.err
    locations = audit.json()["clients"]["web01"]["locations"]
    for name in names:
        outcome = locations[name]
        assert outcome["missing_snapshots"] == outcome["missing_files"] == outcome["corrupt_files"] == [], name
        assert outcome["verified_files"] == len(content) and outcome["verified_bytes"] == sum(content.values())
        assert outcome["restic_check"]["ok"], (name, outcome["restic_check"])
        assert outcome["status"] in ("OK", "WARNING"), (name, outcome["reasons"])

    restore = server.cli("restore-check", "web01", "--files", "3", "--json")
    assert restore.code == 0, restore.out + restore.err
    assert set(names) <= set(restore.json()["locations"])

    # A byte flipped on the far side of one location is found there, and only there.
    replica = server.root / "far-sftp-sftp" / "web01"
    pack = sorted((replica / "data").glob("*/*"))[0]
    data = bytearray(pack.read_bytes())
    data[100] ^= 0xFF
    pack.write_bytes(bytes(data))
    audit = server.cli("audit", "--verify", "100", "--json")
    locations = audit.json()["clients"]["web01"]["locations"]
    assert locations["far-sftp"]["corrupt_files"] == [pack.relative_to(replica).as_posix()]
    assert all(locations[name]["corrupt_files"] == [] for name in names if name != "far-sftp")


def replica_folder(kind: str, name: str, server: Server, request: pytest.FixtureRequest) -> Path:
    """Where the far side of a disk-backed location of ``kind`` keeps the client's files."""
    if kind == "rest":
        rest: RestServer = request.getfixturevalue("rest_server")
        return rest.root / f"{name}-{unique(server.root)}" / "web01"
    return server.root / f"{name}-{kind}" / "web01"


@pytest.mark.parametrize("kind", ("sftp", "rest", "rclone"))
def test_a_replica_file_cut_short_or_corrupt_on_the_far_side_is_copied_again(
    kind: str, server: Server, request: pytest.FixtureRequest
) -> None:
    """A file cut short under its final name (a writer killed mid-upload) is seen by its size;
    one corrupt at the same size is found by the audit and overwritten by the next sync."""
    configure_locations(server, ["far"], kind_location_toml(kind, "far", server, request), in_progress_grace="0s")
    assert sync(server)[0] == 0
    packs = sorted((replica_folder(kind, "far", server, request) / "data").glob("*/*"))
    short, corrupt = packs[0], packs[-1]
    short.write_bytes(short.read_bytes()[: short.stat().st_size // 2])
    before = corrupt.stat()
    flip_byte(corrupt)
    os.utime(corrupt, ns=(before.st_atime_ns, before.st_mtime_ns))  # bit rot leaves the time alone
    code, report = sync(server)
    assert code == 0 and report["locations"]["far"]["files_copied"] == 1, report
    assert file_hash_matches_name(short)

    audit = server.cli("audit", "web01", "--verify", "100", "--json")
    assert audit.code == 2, audit.out
    code, report = sync(server)
    assert code == 0 and report["locations"]["far"]["files_repaired"] == 1, report
    assert file_hash_matches_name(corrupt)
    assert restic_at(server, "far", "check", "--read-data").returncode == 0


# -- failures: each location says what is wrong, the others go on ----------------------------


def test_unreachable_servers_and_wrong_credentials_fail_their_location_only(
    server: Server, tmp_path: Path, request: pytest.FixtureRequest, sshd: SshServer,
    s3_server: S3Server, rest_server: RestServer,
) -> None:
    closed = free_port()
    other_key = tmp_path / "other_key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(other_key)], check=True)
    strange_hosts = tmp_path / "known_hosts"
    strange_hosts.write_text(f"[{LOOPBACK}]:{sshd.port} {(other_key.with_suffix('.pub')).read_text().split()[0]} "
                             f"{other_key.with_suffix('.pub').read_text().split()[1]}\n")
    wrong_s3 = tmp_path / "wrong-s3"
    wrong_s3.write_text(f"AWS_ACCESS_KEY_ID={s3_server.access_key}\nAWS_SECRET_ACCESS_KEY=not-the-secret\n")
    wrong_password = tmp_path / "wrong-password"
    wrong_password.write_text("not the password\n")
    folder = server.root / "sftp-root"
    folder.mkdir()
    bucket = f"exists-{unique(tmp_path)}"
    s3_server.create_bucket(bucket)
    rclone_config = rclone_local_config(tmp_path)
    unreachable = f"http://{LOOPBACK}:{closed}"
    locations = {  # name: (its settings, what its error must say)
        "sftp-down": (sshd.location_toml("sftp-down", folder, port=closed), "connection refused"),
        "sftp-key": (sshd.location_toml("sftp-key", folder, identity_file=str(other_key)), "authentication failed"),
        "sftp-host": (sshd.location_toml("sftp-host", folder, known_hosts_file=str(strange_hosts)), "host key"),
        "sftp-folder": (sshd.location_toml("sftp-folder", server.root / "not-mounted"), "does not exist"),
        "s3-key": (s3_server.location_toml("s3-key", bucket, credentials_file=str(wrong_s3)), "access denied"),
        "s3-bucket": (s3_server.location_toml("s3-bucket", "no-such-bucket"), "bucket 'no-such-bucket' does not"),
        "s3-down": (s3_server.location_toml("s3-down", bucket, endpoint=unreachable), "connect"),
        "rest-password": (rest_server.location_toml("rest-password", password_file=str(wrong_password)),
                          "authentication failed"),
        "rest-down": (rest_server.location_toml("rest-down", url=f"{unreachable}/"), "connection refused"),
        "rclone-folder": (rclone_location_toml("rclone-folder", f"far:{server.root / 'not-mounted'}", rclone_config),
                          "does not exist"),
        "rclone-remote": (rclone_location_toml("rclone-remote", "nosuchremote:x", rclone_config),
                          "rclone cannot reach"),
    }
    configure_locations(server, ["usb", *locations], "".join(toml for toml, _ in locations.values()))
    code, report = sync(server)
    assert code == 1
    assert report["locations"]["usb"]["ok"]
    assert report["locations"]["usb"]["files_copied"] == len(repository_files(server.primary()))
    for name, (_, expected) in locations.items():
        outcome = report["locations"][name]
        assert not outcome["ok"] and outcome["files_copied"] == 0, name
        assert expected in outcome["error"] and name in outcome["error"], (name, outcome["error"])
        assert "\n" not in outcome["error"]
    # Secrets never appear in what is reported.
    assert s3_server.secret_key not in json.dumps(report)
    assert rest_server.password_file.read_text().strip() not in json.dumps(report)
    assert not (server.root / "not-mounted").exists(), "a missing location folder must never be created"


def test_an_audit_tells_a_missing_location_folder_from_a_location_without_the_client(
    server: Server, sshd: SshServer
) -> None:
    """A missing folder over there (a disk not mounted) is UNKNOWN; a folder holding nothing of the
    client is judged by its missing snapshots (here the snapshot is new: OK, not judged yet)."""
    (server.root / "empty").mkdir()
    configure_locations(server, ["gone", "empty"], sshd.location_toml("gone", server.root / "not-mounted")
                        + sshd.location_toml("empty", server.root / "empty"))
    locations = server.cli("audit", "web01", "--json").json()["clients"]["web01"]["locations"]
    assert locations["gone"]["status"] == "UNKNOWN" and "does not exist" in locations["gone"]["reasons"][0]
    assert any("no repository here yet" in note for note in locations["empty"]["notes"]), locations["empty"]


def test_a_full_disk_on_the_far_side_fails_that_location_and_leaves_no_partial_file(
    server: Server, tmp_path: Path, request: pytest.FixtureRequest, sshd: SshServer
) -> None:
    """S3 is not covered: moto keeps objects in memory, so there is no disk to fill."""
    with small_disk(tmp_path / "small", "2m") as disk:
        for name in ("sftp", "rclone", "served"):
            (disk / name).mkdir()
        rest = start_rest_server(tmp_path / "rest", root=disk / "served")
        try:
            locations = (sshd.location_toml("sftp-full", disk / "sftp")
                         + rest.location_toml("rest-full")
                         + rclone_location_toml("rclone-full", f"far:{disk / 'rclone'}", rclone_local_config(tmp_path)))
            configure_locations(server, ["usb", "sftp-full", "rest-full", "rclone-full"], locations)
            code, report = sync(server)
        finally:
            stop(rest.process)
        assert code == 1 and report["locations"]["usb"]["ok"]
        # A REST server (here rclone's) answers a bare 500: the message says what that usually means.
        for name, expected in (("sftp-full", "disk full"), ("rclone-full", "disk full"),
                               ("rest-full", "could not store it (500 (Internal Server Error); a full disk")):
            error = report["locations"][name]["error"] or ""
            assert expected in error, (name, error)
        # Whatever is under a final name is complete: its content hashes to its name.
        for path in disk.rglob("*"):
            if path.is_file() and len(path.name) == 64:
                assert hashlib.sha256(path.read_bytes()).hexdigest() == path.name, path
        assert not any((disk / "sftp" / "web01" / ".triplicate-partial").iterdir())


def test_bad_remote_settings_are_config_errors_naming_the_key(server: Server) -> None:
    configure_locations(server, ["far"], '[locations.far]\ntype = "rest"\nurl = "http://user:secret@host/"\n')
    result = server.cli("sync", "web01")
    assert result.code == 2 and "locations.far.url" in result.err and "Traceback" not in result.err
    for remote in ("no-colon", "far:backups[old]", "far:backups//new"):
        configure_locations(server, ["far"], f'[locations.far]\ntype = "rclone"\nremote = "{remote}"\n')
        result = server.cli("sync", "web01")
        assert result.code == 2 and "locations.far.remote" in result.err, (remote, result.err)
    configure_locations(server, ["far"], '[locations.far]\ntype = "sftp"\nhost = "h"\npath = "/x"\nport = 0\n')
    result = server.cli("sync", "web01")
    assert result.code == 2 and "locations.far.port" in result.err


# -- backends in detail ----------------------------------------------------------------------


def test_s3_large_files_go_as_multipart_uploads_aborted_on_a_mismatch(s3_server: S3Server, tmp_path: Path) -> None:
    from triplicate.storage.s3 import MIN_PART_SIZE, S3Backend, S3Target

    bucket = f"multipart-{unique(tmp_path)}"
    s3_server.create_bucket(bucket)
    backend = S3Backend(S3Target(s3_server.endpoint, bucket, "", None, s3_server.credentials_file), "client",
                        "s3", part_size=MIN_PART_SIZE, single_put_limit=MIN_PART_SIZE)
    data = os.urandom(2 * MIN_PART_SIZE + 12345)
    handle = Handle(FileType.DATA, hashlib.sha256(data).hexdigest())
    assert backend.save(handle, io.BytesIO(data)) == len(data)
    with backend.load(handle, offset=MIN_PART_SIZE - 10, length=20) as reader:
        assert reader.read() == data[MIN_PART_SIZE - 10:MIN_PART_SIZE + 10]

    wrong = Handle(FileType.DATA, hashlib.sha256(b"something else").hexdigest())
    with pytest.raises(CorruptContent):
        backend.save(wrong, io.BytesIO(data))
    client = s3_server.client()
    assert client.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []
    assert [info.name for info in backend.list(FileType.DATA)] == [handle.name]

    # An upload a crash left open is aborted by the next run.
    client.create_multipart_upload(Bucket=bucket, Key=f"client/data/00/{'0' * 64}")
    backend.discard_partial_saves()
    assert client.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []
    backend.close()


def test_rclone_server_runs_only_while_a_location_uses_it_or_the_daemon_keeps_it(tmp_path: Path) -> None:
    from triplicate.storage import rclone_server
    from triplicate.storage.rclone import RcloneBackend

    (tmp_path / "location").mkdir()
    config = rclone_local_config(tmp_path)
    first = RcloneBackend(f"far:{tmp_path / 'location'}", config, "client", "rclone")
    second = RcloneBackend(f"far:{tmp_path / 'location'}", config, "other", "rclone")
    first.prepare(create=True)
    second.prepare(create=True)
    server = first._rclone
    assert server is not None and second._rclone is server, "one rclone per configuration file"
    assert server.running
    password = base64.b64decode(server.headers["Authorization"].split()[1]).decode().split(":", 1)[1]
    argv = command_line(server.process.pid)
    assert argv is not None and password not in "\0".join(argv)
    anonymous = urllib.request.Request(server.url + "rc/noop", data=b"{}", method="POST")
    with pytest.raises(urllib.error.HTTPError, match="401"):
        urllib.request.urlopen(anonymous, timeout=10)
    first.close()
    assert server.running, "still used by the other location"
    second.close()
    assert not server.running

    with rclone_server.keep_servers():  # the daemon: one rclone across runs
        first.prepare(create=True)
        kept = first._rclone
        first.close()
        assert kept is not None and kept.running
        second.prepare(create=True)
        assert second._rclone is kept
        second.close()
        config.write_text(config.read_text() + "\n[other]\ntype = local\n")  # edited: a new rclone
        first.prepare(create=True)
        assert first._rclone is not kept and not kept.running
        renewed = first._rclone
        first.close()
        assert renewed is not None and renewed.running
    assert not renewed.running


def test_sftp_saves_leave_nothing_in_the_partial_folder(sshd: SshServer, tmp_path: Path) -> None:
    from triplicate.storage.sftp import PARTIAL_DIR, SftpBackend, SftpTarget

    target = SftpTarget(LOOPBACK, sshd.port, sshd.user, str(tmp_path), sshd.identity_file, sshd.known_hosts_file)
    backend = SftpBackend(target, "client", "sftp", connections=2)
    backend.prepare(create=True)
    data = os.urandom(3 << 20)
    handle = Handle(FileType.DATA, hashlib.sha256(data).hexdigest())
    backend.save(handle, io.BytesIO(data))
    with pytest.raises(CorruptContent):
        backend.save(Handle(FileType.INDEX, handle.name), io.BytesIO(data + b"!"))
    assert list((tmp_path / "client" / PARTIAL_DIR).iterdir()) == []
    assert (tmp_path / "client" / handle.relative_path()).read_bytes() == data
    assert not (tmp_path / "client" / "index" / handle.name).exists()
    backend.close()


def test_restic_repository_keeps_credentials_out_of_argv(server: Server, s3_server: S3Server,
                                                        rest_server: RestServer) -> None:
    configure_locations(server, ["s3", "rest"], s3_server.location_toml("s3", "bucket-name", prefix="p")
                        + rest_server.location_toml("rest"))
    config = load_config(server.config_path)
    s3 = restic_target(config, "s3", "web01")
    assert s3.repository == f"s3:{s3_server.endpoint}/bucket-name/p/web01"
    assert s3.environment["AWS_SECRET_ACCESS_KEY"] == s3_server.secret_key
    assert s3_server.secret_key not in s3.repository and s3_server.secret_key in s3.secrets
    rest = restic_target(config, "rest", "web01")
    password = rest_server.password_file.read_text().strip()
    # restic 0.14 reads REST credentials from the URL only: the string goes in RESTIC_REPOSITORY,
    # and the password is among the target's secrets, so every caller masks it.
    assert rest.repository.startswith("rest:http://mirror:") and rest.repository.endswith("/web01/")
    assert rest.environment["RESTIC_REST_PASSWORD"] == password and password in rest.secrets


def test_an_rclone_copy_that_stops_moving_is_stopped_and_fails_as_transient(sshd: SshServer, tmp_path: Path) -> None:
    """Copies share the uplink, so there is no deadline per file: one that moves no byte for the
    location's timeout is stopped. Here the far side (an SFTP server, through rclone) freezes."""

    from triplicate.storage.rclone import RcloneBackend

    (tmp_path / "far").mkdir()
    config = tmp_path / "rclone.conf"
    config.write_text(f"[far]\ntype = sftp\nhost = {LOOPBACK}\nport = {sshd.port}\nuser = {sshd.user}\n"
                      f"key_file = {sshd.identity_file}\nknown_hosts_file = {sshd.known_hosts_file}\n")
    backend = RcloneBackend(f"far:{tmp_path / 'far'}", config, "client", "rclone over sftp", timeout=2)
    try:
        backend.prepare(create=True)
        data = os.urandom(64 << 20)
        handle = Handle(FileType.DATA, hashlib.sha256(data).hexdigest())
        source = tmp_path / handle.name
        source.write_bytes(data)
        sessions = descendants_of(sshd.process.pid)  # rclone's open SSH session: frozen below
        assert sessions
        resume = threading.Timer(12, lambda: [os.kill(pid, signal.SIGCONT) for pid in sessions])
        for pid in sessions:
            os.kill(pid, signal.SIGSTOP)
        resume.start()
        started = time.monotonic()
        with pytest.raises(TransientError, match="no progress for 2s"), open(source, "rb") as reader:
            backend.save(handle, reader)
        assert time.monotonic() - started < 45
        resume.join()
        with open(source, "rb") as reader:  # the far side is back: the next attempt goes through
            assert backend.save(handle, reader) == len(data)
        with backend.load(handle) as loaded:
            assert hashlib.sha256(loaded.read()).hexdigest() == handle.name
    finally:
        for pid in descendants_of(sshd.process.pid):
            try:
                os.kill(pid, signal.SIGCONT)
            except ProcessLookupError:
                pass
        backend.close()
