"""The ``server`` fixture (a server in a temporary folder, the CLI in-process), real restic, and
helpers on a repository's files."""

from __future__ import annotations

import ctypes
import hashlib
import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from triplicate.cli import run as run_cli
from triplicate.storage.handle import FileType, Handle

PASSWORD = "correct horse battery staple"
# Run a command as an unprivileged user: root passes every permission check.
AS_NOBODY = ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups"]

BASE_CONFIG = """\
[server]
state_dir = "{root}/state"
repos_dir = "{root}/repos"
in_progress_grace = "5m"

[locations.usb]
type = "local"
path = "{root}/usb"

[locations.nas]
type = "local"
path = "{root}/nas"

[clients.web01]
replicate_to = ["usb", "nas"]
password_file = "{root}/password"
"""


@dataclass
class CliResult:
    code: int
    out: str
    err: str

    def json(self) -> dict:  # type: ignore[type-arg]
        return json.loads(self.out)


def restic_env(repository: Path | str, password_file: Path) -> dict[str, str]:
    """The environment for restic on ``repository`` (a folder or a URL), none of the caller's RESTIC_ settings."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("RESTIC_")}
    env.update(RESTIC_REPOSITORY=str(repository), RESTIC_PASSWORD_FILE=str(password_file))
    return env


@dataclass
class Server:
    """A triplicate server laid out in a temporary folder."""

    root: Path
    capsys: pytest.CaptureFixture[str]

    @property
    def config_path(self) -> Path:
        return self.root / "triplicate.toml"

    @property
    def password_file(self) -> Path:
        return self.root / "password"

    def primary(self, client: str = "web01") -> Path:
        return self.root / "repos" / client

    def replica(self, location: str, client: str = "web01") -> Path:
        return self.root / location / client

    def write_config(self, text: str) -> None:
        self.config_path.write_text(text.format(root=self.root))

    def cli(self, *args: str) -> CliResult:
        self.capsys.readouterr()
        code = run_cli(["-c", str(self.config_path), *args])
        captured = self.capsys.readouterr()
        return CliResult(code, captured.out, captured.err)

    def restic(self, repo: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["restic", "--no-cache", *args], env=restic_env(repo, self.password_file),
            capture_output=True, text=True, check=check,
        )

    def snapshot_ids(self, repo: Path) -> list[str]:
        output = self.restic(repo, "--no-lock", "snapshots", "--json").stdout  # never waits on a lock
        return sorted(snapshot["id"] for snapshot in json.loads(output))

    def backup(self, data: Path, client: str = "web01") -> None:
        self.restic(self.primary(client), "backup", "-q", str(data))

    def check_read_data(self, repo: Path) -> subprocess.CompletedProcess[str]:
        return self.restic(repo, "check", "--read-data", check=False)


@pytest.fixture(scope="session")
def template_repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A restic repository with one snapshot of a few files, made once per test process."""
    root = tmp_path_factory.mktemp("template")
    (root / "password").write_text(PASSWORD)
    data = root / "data"
    write_files(data, "one", count=3, size=1 << 20)
    repo = root / "repo"
    env = restic_env(repo, root / "password")
    subprocess.run(["restic", "init"], env=env, check=True, capture_output=True)
    subprocess.run(["restic", "backup", "-q", str(data)], env=env, check=True, capture_output=True)
    return repo


@pytest.fixture
def server(tmp_path: Path, capsys: pytest.CaptureFixture[str], template_repository: Path) -> Iterator[Server]:
    """A server with client web01 (one snapshot in its primary) and locations usb and nas."""
    root = tmp_path / "server"
    root.mkdir()
    (root / "usb").mkdir()
    (root / "nas").mkdir()
    (root / "password").write_text(PASSWORD)
    shutil.copytree(template_repository, root / "repos" / "web01")
    instance = Server(root, capsys)
    instance.write_config(BASE_CONFIG)
    yield instance


def write_files(folder: Path, prefix: str, count: int, size: int) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for index in range(count):
        (folder / f"{prefix}-{index}.bin").write_bytes(os.urandom(size))


def data_files(count: int, size: int) -> list[tuple[Handle, bytes]]:
    """Random content-addressed data files (named by their SHA-256), as restic's packs are."""
    files = []
    for _ in range(count):
        content = os.urandom(size)
        files.append((Handle(FileType.DATA, hashlib.sha256(content).hexdigest()), content))
    return files


def seed_primary(server: Server, client: str, template: Path, packs: int, size: int) -> None:
    """A primary holding ``template``'s repository plus ``packs`` more data files (unreferenced,
    which restic accepts): a first copy as long as wanted without a long backup."""
    shutil.copytree(template, server.primary(client))
    for handle, content in data_files(packs, size):
        path = server.primary(client) / handle.relative_path()
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)


def repository_files(repo: Path) -> dict[str, int]:
    """Relative path -> size of every restic file (config, keys, data, index, snapshots)."""
    found = {}
    for path in repo.rglob("*"):
        relative = path.relative_to(repo).as_posix()
        if path.is_file() and relative.split("/")[0] in ("config", "keys", "data", "index", "snapshots"):
            found[relative] = path.stat().st_size
    return found


def snapshot_files(repo: Path) -> set[str]:
    """Snapshot IDs present as files (no restic needed: cheap enough to poll)."""
    folder = repo / "snapshots"
    return {name for name in os.listdir(folder) if len(name) == 64} if folder.is_dir() else set()


def file_hash_matches_name(path: Path) -> bool:
    return hashlib.sha256(path.read_bytes()).hexdigest() == path.name


def take_away(folder: Path) -> None:
    """Remove ``folder`` in one step, as a swapped disk would: renamed aside, then deleted. (A
    running daemon may refill it meanwhile, which would make a plain rmtree fail half-way.)"""
    aside = folder.with_name(f"{folder.name}.taken-away")
    folder.rename(aside)
    shutil.rmtree(aside)


def put_a_file_in_place_of(folder: Path, aside: Path, text: str = "not a folder\n") -> None:
    """Put a file holding ``text`` where ``folder`` is, in one step: the folder ends up at ``aside``
    (a disk swapped for one where the folder cannot go). Made in two steps (rename, then write),
    a running daemon could look in between: it would report the folder missing rather than the
    file, or refill the folder before the file lands."""
    aside.write_text(text)
    exchange(folder, aside)


def exchange(first: Path, second: Path) -> None:
    """Swap two names atomically (Linux's renameat2 with RENAME_EXCHANGE): nobody sees either missing."""
    libc = ctypes.CDLL(None, use_errno=True)
    at_current_folder, rename_exchange = -100, 2
    if libc.renameat2(at_current_folder, os.fsencode(first), at_current_folder, os.fsencode(second),
                      rename_exchange) != 0:
        number = ctypes.get_errno()
        raise OSError(number, os.strerror(number), str(first), None, str(second))


def age_file(path: Path, seconds: float = 3600) -> None:
    """Make a file look as if it was last modified ``seconds`` ago."""
    stat = path.stat()
    os.utime(path, (stat.st_atime - seconds, stat.st_mtime - seconds))


def flip_byte(path: Path, offset: int = 100) -> None:
    """Corrupt one byte in place, as a failing disk would."""
    with open(path, "r+b") as file:
        file.seek(offset)
        byte = file.read(1)
        file.seek(offset)
        file.write(bytes([byte[0] ^ 0xFF]))


@pytest.fixture
def unprivileged_server(template_repository: Path) -> Iterator[Server]:
    """A server whose every file belongs to ``nobody``, in a folder ``nobody`` can reach."""
    if os.geteuid() != 0:
        pytest.skip("needs root to hand the files to nobody")
    if shutil.which("setpriv") is None:
        pytest.skip("needs setpriv (util-linux) to run as nobody")
    root = Path(tempfile.mkdtemp(prefix="triplicate-nobody-"))
    root.chmod(0o755)
    for folder in ("usb", "nas"):
        (root / folder).mkdir()
    (root / "password").write_text(PASSWORD)
    shutil.copytree(template_repository, root / "repos" / "web01")
    (root / "triplicate.toml").write_text(BASE_CONFIG.format(root=root))
    subprocess.run(["chown", "-R", "nobody:nogroup", str(root)], check=True)
    try:
        yield Server(root, None)  # type: ignore[arg-type]  # no in-process CLI here
    finally:
        shutil.rmtree(root)
