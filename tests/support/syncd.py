"""The daemon's tests: the daemon as a real process (the ``daemons`` fixture) or in-process, its
log, a loopback HTTP sink for apprise's json:// notifications, a hook that records its calls."""

from __future__ import annotations

import asyncio
import json
import logging
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from triplicate.config.load import load_config
from triplicate.daemon.main import Daemon

from .wait import wait_until


def metric_values(text: str) -> dict[str, float]:
    """Prometheus text exposition -> {'name{labels}': value}."""
    values = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            values[name] = float(value)
    return values


class DaemonProcess:
    """``python -m triplicate -c CONFIG syncd ARGS`` with its standard error collected line by line."""

    def __init__(self, config: Path, *args: str) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "triplicate", "-c", str(config), "syncd", *args],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        )
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            self.lines.append(line.rstrip("\n"))

    @property
    def log(self) -> str:
        return "\n".join(self.lines)

    def wait_for_log(self, pattern: str, timeout: float = 10.0, count: int = 1) -> list[str]:
        """Wait until ``count`` log lines match the regular expression; return them."""
        regex = re.compile(pattern)

        def matching() -> list[str]:
            if self.process.poll() is not None and not self._reader.is_alive():
                raise AssertionError(f"syncd exited ({self.process.returncode}):\n{self.log}")
            found = [line for line in list(self.lines) if regex.search(line)]
            return found if len(found) >= count else []

        return self.wait_until(matching, timeout, f"log line {pattern!r}")  # type: ignore[no-any-return]

    def wait_until(self, condition: Callable[[], Any], timeout: float = 10.0, what: str = "condition") -> Any:
        """:func:`wait_until`, with the daemon's log in the failure message."""
        return wait_until(condition, timeout, what, context=lambda: f"--- syncd log ---\n{self.log}")

    def started(self) -> DaemonProcess:
        self.wait_for_log(r"syncd started")
        return self

    def signal(self, number: int) -> None:
        self.process.send_signal(number)

    def terminate(self, timeout: float = 10.0) -> tuple[int, float]:
        """SIGTERM; return (exit status, seconds it took)."""
        started = time.monotonic()
        self.process.send_signal(signal.SIGTERM)
        code = self.process.wait(timeout)
        self._reader.join(5)
        return code, time.monotonic() - started

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()


class InProcessDaemon:
    """The daemon on its own event loop in a thread, for tests that need to reach inside."""

    def __init__(self, config: Path, *names: str, events: bool = True) -> None:
        self.daemon = Daemon(config, load_config(config), names, events=events)
        self.abandoned: int | None = None
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._main, daemon=True)

    def _main(self) -> None:
        try:
            self.abandoned = asyncio.run(self.daemon.run())
        except BaseException as error:  # surfaced by stop()
            self.error = error

    def __enter__(self) -> InProcessDaemon:
        self.thread.start()
        wait_until(lambda: self.daemon.started.is_set() or self.error, 10, "the daemon to start")
        if self.error:
            raise self.error
        return self

    def __exit__(self, *exc: object) -> None:
        self.daemon.request_stop()
        self.thread.join(15)
        assert not self.thread.is_alive(), "the daemon did not stop"
        if self.error:
            raise self.error


class LogRecorder(logging.Handler):
    """Collects the formatted messages of the "triplicate" loggers (in-process daemons)."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(f"{record.levelname} {record.getMessage()}")

    def __enter__(self) -> LogRecorder:
        logger = logging.getLogger("triplicate")
        self._level = logger.level
        logger.setLevel(logging.INFO)
        logger.addHandler(self)
        return self

    def __exit__(self, *exc: object) -> None:
        logger = logging.getLogger("triplicate")
        logger.removeHandler(self)
        logger.setLevel(self._level)

    def wait_for_log(self, pattern: str, timeout: float = 10.0) -> str:
        """Wait until a message matches the regular expression; return it."""
        regex = re.compile(pattern)
        return wait_until(lambda: next((m for m in list(self.messages) if regex.search(m)), None),  # type: ignore[no-any-return]
                          timeout, f"log {pattern!r}", context=lambda: f"got {self.messages}")


class NotificationSink:
    """A loopback HTTP server that records the JSON bodies apprise's json:// URLs POST."""

    def __init__(self) -> None:
        received: list[dict[str, Any]] = []
        self.received = received

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # http.server's naming
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                received.append(json.loads(body))
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"json://127.0.0.1:{self.server.server_address[1]}/notify"

    def titles(self) -> list[str]:
        return [str(message.get("title")) for message in list(self.received)]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


HOOK_SCRIPT = """\
import json, os, sys
payload = json.load(sys.stdin)
env = {key: value for key, value in os.environ.items() if key.startswith("TRIPLICATE_")}
with open(sys.argv[1], "a") as out:
    out.write(json.dumps({"env": env, "stdin": payload}) + "\\n")
print("hook saw", len(payload["snapshots_added"]), "new snapshot(s)")
"""


def read_hook_calls(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


@pytest.fixture
def daemons() -> Iterator[list[DaemonProcess]]:
    """Daemon processes started by a test, killed if the test left them running."""
    started: list[DaemonProcess] = []
    yield started
    for process in started:
        process.kill()

