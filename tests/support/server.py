"""A backup server under real supervision (``Site``), the CLI in-process, HTTP probes."""

from __future__ import annotations

import base64
import contextlib
import http.client
import io
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from triplicate.actions.demo import DEMO_CONFIG
from triplicate.cli import run as run_cli
from triplicate.service.layout import Layout
from triplicate.service.runit import find_runsvdir, read_status, runsv_running

from .ports import free_port_range
from .processes import Process, processes_mentioning
from .repository import CliResult, restic_env
from .wait import wait_until

# The demonstration's configuration (127.0.0.1, locations usb and nas), with a comment
# that every edit of the file must keep.
SITE_COMMENT = "# The test site. This comment must survive every edit.\n"


def http_status(method: str, url: str, user: str | None = None, password: str | None = None,
                data: bytes | None = None) -> int:
    """The HTTP status code of one request; 0 when nothing answers in full (connection refused, or
    reset, cut or timed out by a service that is starting or stopping: a poll tries again)."""
    request = urllib.request.Request(url, method=method, data=data)
    if user is not None:
        token = base64.b64encode(f"{user}:{password}".encode()).decode()
        request.add_header("Authorization", f"Basic {token}")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return int(response.status)
    except urllib.error.HTTPError as error:
        return int(error.code)
    except (OSError, http.client.HTTPException):  # URLError, ConnectionError, TimeoutError among them
        return 0


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
        return subprocess.run(["restic", "--no-cache", *args], env=restic_env(url, self.restic_password),
                              capture_output=True, text=True, timeout=timeout)

    def start_supervision(self, env: dict[str, str] | None = None) -> None:
        """Run 'triplicate supervise' in the background, as a systemd unit would (with ``env``
        added to its environment, as the unit's)."""
        self.supervised_since = time.time()
        self.supervisor = subprocess.Popen(
            [sys.executable, "-m", "triplicate", "-c", str(self.config_path), "supervise"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
            env={**os.environ, **(env or {})},
        )
        wait_until(lambda: find_runsvdir(self.layout.top) or self.supervisor.poll() is not None, 20,
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
            wait_until(lambda: not processes_mentioning(marker), 20, "every process of the site to exit")
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


def runsv_pid(folder: Path) -> int | None:
    """The pid of a running service, as its runsv reports it."""
    from triplicate.service.runit import service_state

    state = service_state(folder)
    return state.pid if state.running else None
