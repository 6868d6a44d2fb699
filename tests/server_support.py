"""Helpers for tests of the backup server: free ports, the CLI in-process, real supervision, /proc."""

from __future__ import annotations

import base64
import contextlib
import io
import os
import random
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from triplicate.actions.demo import DEMO_CONFIG
from triplicate.cli import run as run_cli
from triplicate.service.layout import Layout
from triplicate.service.runit import find_runsvdir, read_status, runsv_running

from .conftest import CliResult

# The demonstration's configuration (127.0.0.1, locations usb and nas), with a comment
# that every edit of the file must keep.
SITE_COMMENT = "# The test site. This comment must survive every edit.\n"


def free_port_range(count: int) -> tuple[int, int]:
    """``count`` consecutive ports free on 127.0.0.1, from a random place (tests run in parallel)."""
    for _ in range(200):
        low = random.randrange(20000, 60000 - count)
        if all(_port_free(port) for port in range(low, low + count)):
            return low, low + count - 1
    raise RuntimeError("no free port range found")


def _port_free(port: int) -> bool:
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def wait_for(condition: Callable[[], object], timeout: float, what: str) -> float:
    """Poll until ``condition()`` is truthy; return the seconds it took; fail the test on timeout."""
    started = time.monotonic()
    while not condition():
        if time.monotonic() - started > timeout:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.05)
    return time.monotonic() - started


@dataclass(frozen=True)
class Process:
    pid: int
    cmdline: str
    cwd: str


def processes_mentioning(*markers: str) -> list[Process]:
    """Live processes (zombies excluded) whose command line or working folder contains a marker."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            stat = (entry / "stat").read_bytes()
            if stat.rsplit(b")", 1)[1].split()[0] == b"Z":
                continue
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            cwd = os.readlink(entry / "cwd")
        except (OSError, IndexError):
            continue
        if any(marker in cmdline or marker in cwd for marker in markers):
            found.append(Process(int(entry.name), cmdline.strip(), cwd))
    return found


def children_of(pid: int, program: str | None = None) -> list[int]:
    """The processes whose parent is ``pid`` (only those named ``program``, when given)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            head, rest = stat.read_text().rsplit(")", 1)
            parent = int(rest.split()[1])
        except (OSError, ValueError, IndexError):
            continue  # exited meanwhile
        if parent == pid and (program is None or head.split("(", 1)[1] == program):
            found.append(int(stat.parent.name))
    return found


def descendants_of(pid: int) -> list[int]:
    """Every process below ``pid``: its children, theirs, and so on."""
    found, todo = [], children_of(pid)
    while todo:
        child = todo.pop()
        found.append(child)
        todo += children_of(child)
    return found


def http_status(method: str, url: str, user: str | None = None, password: str | None = None,
                data: bytes | None = None) -> int:
    """The HTTP status code of one request; 0 when nothing answers (connection refused)."""
    request = urllib.request.Request(url, method=method, data=data)
    if user is not None:
        token = base64.b64encode(f"{user}:{password}".encode()).decode()
        request.add_header("Authorization", f"Basic {token}")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return int(response.status)
    except urllib.error.HTTPError as error:
        return int(error.code)
    except (urllib.error.URLError, ConnectionError):
        return 0


def restic_environment(url: str, password_file: Path) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith("RESTIC_")}
    env.update(RESTIC_REPOSITORY=url, RESTIC_PASSWORD_FILE=str(password_file))
    return env


def run_captured(argv: list[str]) -> CliResult:
    """Run the CLI in-process, capturing what it prints (usable outside function fixtures)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = run_cli(argv)
    return CliResult(code, out.getvalue(), err.getvalue())


class Site:
    """A backup server in a temporary folder: configuration, CLI in-process, real supervision."""

    def __init__(self, root: Path, ports: int = 4) -> None:
        self.root = root
        for folder in ("usb", "nas", "data"):
            (root / folder).mkdir(parents=True, exist_ok=True)
        self.low, self.high = free_port_range(ports)
        self.config_path.write_text(SITE_COMMENT + DEMO_CONFIG.format(root=root, low=self.low, high=self.high))
        self.restic_password = root / "restic-password"
        self.restic_password.write_text("a client's own repository key\n")
        self.supervisor: subprocess.Popen[bytes] | None = None
        self.clients: dict[str, dict[str, object]] = {}  # name -> 'client add --json' output
        self.supervised_since = 0.0

    @property
    def config_path(self) -> Path:
        return self.root / "triplicate.toml"

    @property
    def layout(self) -> Layout:
        return Layout(self.root / "state")

    def cli(self, *args: str) -> CliResult:
        """Run the CLI with this site's configuration, in-process."""
        return run_captured(["-c", str(self.config_path), *args])

    def add_client(self, name: str, *locations: str) -> dict[str, object]:
        arguments = [argument for location in locations for argument in ("--replicate-to", location)]
        result = self.cli("client", "add", name, *arguments, "--json")
        assert result.code == 0, result.err
        return result.json()

    def restic(self, url: str, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["restic", "--no-cache", *args], env=restic_environment(url, self.restic_password),
                              capture_output=True, text=True, timeout=timeout)

    def start_supervision(self) -> None:
        """Run 'triplicate supervise' in the background, as a systemd unit would."""
        self.supervised_since = time.time()
        self.supervisor = subprocess.Popen(
            [sys.executable, "-m", "triplicate", "-c", str(self.config_path), "supervise"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )
        wait_for(lambda: find_runsvdir(self.layout.top) or self.supervisor.poll() is not None, 20,
                 "runsvdir to start")
        assert self.supervisor.poll() is None, self.supervisor.stderr.read()  # type: ignore[union-attr]

    def stop_supervision(self) -> list[Process]:
        """HUP the top runsvdir, wait until no process of this site is left; return (and kill) leftovers."""
        pid = find_runsvdir(self.layout.top)
        if pid is not None:
            os.kill(pid, signal.SIGHUP)
        if self.supervisor is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.supervisor.wait(timeout=20)
        marker = str(self.root)
        try:
            wait_for(lambda: not processes_mentioning(marker), 20, "every process of the site to exit")
            return []
        except AssertionError:
            leftovers = processes_mentioning(marker)
            for process in leftovers:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(process.pid, signal.SIGKILL)
            return leftovers

    def service_pid(self, client: str, service: str) -> int | None:
        """The pid runsv reports for a running service, else None."""
        folder = self.layout.service_dir(client, service)
        status = read_status(folder)
        if status is None or not status.running or not runsv_running(folder):
            return None
        return status.pid

    def markers(self, client: str, port: int) -> tuple[str, ...]:
        """What every process of ``client`` (and no other site's) has in its command line or folder.

        runsv works in its service folder and its service and log start there: all of
        them are under the client's folder. Plus rclone's htpasswd and port, svlogd's folder.
        """
        layout = self.layout
        return (str(layout.client_dir(client)), str(layout.htpasswd(client)), str(layout.log_root / client),
                f"127.0.0.1:{port}")
