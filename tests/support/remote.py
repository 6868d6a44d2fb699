"""Real servers for the remote-location tests, each on a loopback port in a temporary folder.

- OpenSSH's sshd (Debian's openssh-server) with its own host key and one authorized key.
- moto's server: an S3 *emulator* (moto_server, in memory), the S3-compatible server that
  can be installed here; its authentication is switched on, so wrong keys are refused.
- ``rclone serve restic`` with an htpasswd file: a restic REST server.
Each is started once per test process (session fixtures) and stopped at the end.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from .ports import LOOPBACK, accepts_connections, free_port
from .repository import BASE_CONFIG, Server
from .wait import wait_until

SSHD = "/usr/sbin/sshd"
START_TIMEOUT = 20.0


def _log_tail(log: Path) -> str:
    return log.read_text(errors="replace")[-2000:]


def _server_running(process: subprocess.Popen[bytes], log: Path) -> None:
    """Fail at once when a server that is starting exited, with the end of its log."""
    if process.poll() is not None:
        raise AssertionError(f"server exited with {process.returncode}: {_log_tail(log)}")


def wait_for_port(port: int, process: subprocess.Popen[bytes], log: Path) -> None:
    """Wait until ``port`` accepts connections."""

    def listening() -> bool:
        if accepts_connections(port):
            return True
        _server_running(process, log)
        return False

    wait_until(listening, START_TIMEOUT, f"the server to listen on port {port}", context=lambda: _log_tail(log))


def wait_for_log(pattern: str, process: subprocess.Popen[bytes], log: Path) -> re.Match[str]:
    """Wait until ``pattern`` appears in the server's log (its address, once it listens)."""

    def found() -> re.Match[str] | None:
        match = re.search(pattern, log.read_text(errors="replace"))
        if match is None:
            _server_running(process, log)
        return match

    return wait_until(found, START_TIMEOUT, f"{pattern!r} in the server's log",  # type: ignore[return-value]
                      context=lambda: _log_tail(log))


def stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def clean_environment(**extra: str) -> dict[str, str]:
    """The environment for rclone and restic: this machine's AWS_CA_BUNDLE breaks rclone's S3 client."""
    env = {key: value for key, value in os.environ.items()
           if key != "AWS_CA_BUNDLE" and not key.startswith(("RESTIC_", "RCLONE_", "AWS_"))}
    env.update(extra)
    return env


# -- OpenSSH ---------------------------------------------------------------------------------


@dataclass
class SshServer:
    folder: Path
    port: int
    identity_file: Path
    known_hosts_file: Path
    process: subprocess.Popen[bytes]
    user: str = "root"

    def location_toml(self, name: str, path: Path, **extra: object) -> str:
        settings: dict[str, object] = {
            "host": LOOPBACK, "port": self.port, "user": self.user, "path": str(path),
            "identity_file": str(self.identity_file), "known_hosts_file": str(self.known_hosts_file)}
        return location_toml(name, type="sftp", **{**settings, **extra})


def start_sshd(folder: Path) -> SshServer:
    """sshd on a free loopback port, accepting only a key made here, for the current user."""
    folder.mkdir(parents=True, exist_ok=True)
    for name in ("host_key", "identity"):
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(folder / name)], check=True)
    (folder / "authorized_keys").write_text((folder / "identity.pub").read_text())
    port = free_port()
    host_key = (folder / "host_key.pub").read_text().split()
    (folder / "known_hosts").write_text(f"[{LOOPBACK}]:{port} {host_key[0]} {host_key[1]}\n")
    (folder / "sshd_config").write_text(f"""\
ListenAddress {LOOPBACK}:{port}
HostKey {folder / 'host_key'}
AuthorizedKeysFile {folder / 'authorized_keys'}
PidFile {folder / 'sshd.pid'}
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
PermitRootLogin prohibit-password
StrictModes no
UsePAM no
MaxStartups 100
MaxSessions 100
Subsystem sftp internal-sftp
LogLevel ERROR
""")
    if os.geteuid() == 0:
        # sshd started as root refuses to run without its privilege-separation folder
        # (Debian's service creates it at boot; a fresh container has none).
        os.makedirs("/run/sshd", mode=0o755, exist_ok=True)
    log = folder / "sshd.log"
    process = subprocess.Popen([SSHD, "-D", "-e", "-f", str(folder / "sshd_config")],
                               stdout=log.open("wb"), stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    wait_for_port(port, process, log)
    return SshServer(folder, port, folder / "identity", folder / "known_hosts", process,
                     user=os.environ.get("USER") or _current_user())


def _current_user() -> str:
    import pwd

    return pwd.getpwuid(os.geteuid()).pw_name


# -- S3 (moto's emulator) --------------------------------------------------------------------


@dataclass
class S3Server:
    endpoint: str
    access_key: str
    secret_key: str
    credentials_file: Path
    process: subprocess.Popen[bytes]
    region: str = "us-east-1"

    def client(self, secret_key: str | None = None):  # type: ignore[no-untyped-def]
        import boto3

        return boto3.client("s3", endpoint_url=self.endpoint, region_name=self.region,
                            aws_access_key_id=self.access_key, aws_secret_access_key=secret_key or self.secret_key)

    def create_bucket(self, name: str) -> None:
        self.client().create_bucket(Bucket=name)

    def location_toml(self, name: str, bucket: str, prefix: str = "", **extra: object) -> str:
        settings: dict[str, object] = {"endpoint": self.endpoint, "bucket": bucket, "prefix": prefix,
                                       "region": self.region, "credentials_file": str(self.credentials_file)}
        return location_toml(name, type="s3", **{**settings, **extra})


def start_moto(folder: Path) -> S3Server:
    """moto's S3 emulator with authentication on: only the access key made here is accepted."""
    import boto3

    folder.mkdir(parents=True, exist_ok=True)
    program = Path(sys.executable).parent / "moto_server"
    if not program.exists():
        program = Path(shutil.which("moto_server") or "moto_server")
    log = folder / "moto.log"
    # Authentication starts after the first 3 requests: those make the user, its key and its policy.
    env = clean_environment(INITIAL_NO_AUTH_ACTION_COUNT="3")
    process = subprocess.Popen([str(program), "-H", LOOPBACK, "-p", "0"], stdout=log.open("wb"),
                               stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env)
    endpoint = "http://" + wait_for_log(rf"Running on http://({re.escape(LOOPBACK)}:\d+)", process, log).group(1)
    iam = boto3.client("iam", endpoint_url=endpoint, region_name="us-east-1",
                       aws_access_key_id="bootstrap", aws_secret_access_key="bootstrap")
    iam.create_user(UserName="triplicate")
    key = iam.create_access_key(UserName="triplicate")["AccessKey"]
    policy = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}]}
    iam.put_user_policy(UserName="triplicate", PolicyName="s3", PolicyDocument=json.dumps(policy))
    credentials = folder / "s3-credentials"
    credentials.write_text(f"AWS_ACCESS_KEY_ID={key['AccessKeyId']}\nAWS_SECRET_ACCESS_KEY={key['SecretAccessKey']}\n")
    credentials.chmod(0o600)
    return S3Server(endpoint, key["AccessKeyId"], key["SecretAccessKey"], credentials, process)


# -- rclone serve restic ---------------------------------------------------------------------


@dataclass
class RestServer:
    url: str
    root: Path
    username: str
    password_file: Path
    process: subprocess.Popen[bytes]

    def location_toml(self, name: str, **extra: object) -> str:
        settings: dict[str, object] = {"url": self.url, "username": self.username,
                                       "password_file": str(self.password_file)}
        return location_toml(name, type="rest", **{**settings, **extra})


def start_rest_server(folder: Path, root: Path | None = None, extra_args: tuple[str, ...] = ()) -> RestServer:
    """``rclone serve restic`` on a free loopback port, serving ``root``, with a bcrypt htpasswd."""
    import bcrypt

    folder.mkdir(parents=True, exist_ok=True)
    root = root or folder / "served"
    root.mkdir(parents=True, exist_ok=True)
    password = os.urandom(12).hex()
    (folder / "rest-password").write_text(password + "\n")
    hashed = bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds=4)).decode()
    (folder / "htpasswd").write_text(f"mirror:{hashed}\n")
    (folder / "rclone.conf").write_text("")
    log = folder / "rclone-serve.log"
    process = subprocess.Popen(
        ["rclone", "serve", "restic", "--addr", f"{LOOPBACK}:0", "--htpasswd", str(folder / "htpasswd"), *extra_args,
         str(root)],
        stdout=log.open("wb"), stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        env=clean_environment(RCLONE_CONFIG=str(folder / "rclone.conf")))
    address = wait_for_log(rf"Serving restic REST API on (http://{re.escape(LOOPBACK)}:\d+/)", process, log).group(1)
    return RestServer(address, root, "mirror", folder / "rest-password", process)


def rclone_local_config(folder: Path, name: str = "far") -> Path:
    """An rclone config with one remote of type local."""
    path = folder / "rclone-remotes.conf"
    path.write_text(f"[{name}]\ntype = local\n")
    return path


def rclone_location_toml(name: str, remote: str, rclone_config: Path, **extra: object) -> str:
    return location_toml(name, type="rclone", remote=remote, rclone_config=str(rclone_config), **extra)


def unique(tmp_path: Path) -> str:
    """A short tag unique to a test's folder: names on servers the tests share (buckets, REST folders)."""
    return hashlib.sha256(str(tmp_path).encode()).hexdigest()[:10]


def configure_locations(server: Server, replicate_to: list[str], locations: str, in_progress_grace: str = "5m") -> None:
    """The ``server`` fixture's configuration, web01 replicating to ``replicate_to``, plus ``locations``' tables."""
    base = BASE_CONFIG.replace('replicate_to = ["usb", "nas"]', f"replicate_to = {json.dumps(replicate_to)}")
    base = base.replace('in_progress_grace = "5m"', f'in_progress_grace = "{in_progress_grace}"')
    server.write_config(base + "\n" + locations)


def location_toml(name: str, **settings: object) -> str:
    """A ``[locations.NAME]`` table (values as JSON, which TOML reads the same for these)."""
    lines = [f"[locations.{name}]"] + [f"{key} = {json.dumps(value)}" for key, value in settings.items()]
    return "\n".join(lines) + "\n"


# -- fixtures --------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def sshd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SshServer]:
    server = start_sshd(tmp_path_factory.mktemp("sshd"))
    yield server
    stop(server.process)


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    server = start_moto(tmp_path_factory.mktemp("moto"))
    yield server
    stop(server.process)


@pytest.fixture(scope="session")
def rest_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RestServer]:
    server = start_rest_server(tmp_path_factory.mktemp("rest"))
    yield server
    stop(server.process)


@contextmanager
def small_disk(path: Path, size: str = "2m") -> Iterator[Path]:
    """A tiny tmpfs at ``path``, for "disk full on the far side"; skips where mounting is not allowed."""
    path.mkdir(parents=True, exist_ok=True)
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", str(path)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here (needs root): {mounted.stderr.strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], capture_output=True)


def kind_location_toml(kind: str, name: str, server: Server, request: pytest.FixtureRequest) -> str:
    """A working location ``name`` of ``kind``, fresh for this test."""
    tag = unique(server.root)
    if kind == "sftp":
        folder = server.root / f"{name}-sftp"
        folder.mkdir()
        ssh: SshServer = request.getfixturevalue("sshd")
        return ssh.location_toml(name, folder)
    if kind == "s3":
        s3: S3Server = request.getfixturevalue("s3_server")
        bucket = f"{name}-{tag}"
        s3.create_bucket(bucket)
        return s3.location_toml(name, bucket, prefix="replicas")
    if kind == "rest":
        rest: RestServer = request.getfixturevalue("rest_server")
        return rest.location_toml(name, url=f"{rest.url}{name}-{tag}/")
    folder = server.root / f"{name}-rclone"
    folder.mkdir()
    return rclone_location_toml(name, f"far:{folder}", rclone_local_config(server.root))
