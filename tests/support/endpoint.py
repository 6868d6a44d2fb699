"""Helpers for the endpoint's tests: a site whose clients are served by ``triplicate serve``, raw HTTP."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import http.client
import os
import signal
import socket
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from tests.support.server import Site
from tests.support.wait import wait_until


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def authorization(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes


class Endpoint:
    """``triplicate serve`` of some clients of a site, run as a real process, its log in a file."""

    def __init__(self, site: Site, *clients: str) -> None:
        self.site = site
        self.clients = clients
        self.log_path = site.root / f"serve-{'-'.join(clients) or 'shared'}.log"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        log = open(self.log_path, "ab")  # noqa: SIM115 - the process keeps it
        self.process = subprocess.Popen(
            [sys.executable, "-m", "triplicate", "-c", str(self.site.config_path), "serve", *self.clients],
            stdin=subprocess.DEVNULL, stdout=log, stderr=log,
        )
        log.close()
        for client in self.clients:  # (listening means ready: crashed uploads are cleaned before)
            process, port = self.process, self.port(client)
            wait_until(lambda: _accepts(port) or process.poll() is not None, 20,  # noqa: B023 (called at once)
                     f"{client}'s endpoint")
        assert self.process.poll() is None, self.log()

    def stop(self, sig: int = signal.SIGTERM) -> int:
        assert self.process is not None
        with contextlib.suppress(ProcessLookupError):
            self.process.send_signal(sig)
        return self.process.wait(timeout=20)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def port(self, client: str) -> int:
        return int(str(self.site.clients[client]["port"]))

    def password(self, client: str) -> str:
        return str(self.site.clients[client]["password"])

    def request(self, client: str, method: str, path: str, body: bytes | None = None,
                user: str | None = "", password: str | None = None,
                headers: dict[str, str] | None = None) -> Reply:
        """One request sent as is (the path is not normalised); ``user=""`` means the client's own."""
        connection = http.client.HTTPConnection("127.0.0.1", self.port(client), timeout=20)
        try:
            connection.putrequest(method, path, skip_accept_encoding=True)
            if user == "":
                user, password = client, self.password(client)
            if user is not None:
                connection.putheader("Authorization", authorization(user, password or ""))
            for name, value in (headers or {}).items():
                connection.putheader(name, value)
            if body is not None:
                connection.putheader("Content-Length", str(len(body)))
            connection.endheaders(body)
            response = connection.getresponse()
            return Reply(response.status, dict(response.getheaders()), response.read())
        finally:
            connection.close()

    def raw(self, client: str) -> socket.socket:
        """A plain TCP connection to the client's port."""
        return socket.create_connection(("127.0.0.1", self.port(client)), timeout=20)

    def upload_head(self, client: str, path: str, length: int) -> bytes:
        """The request head of an upload of ``length`` bytes with the client's credentials."""
        return (f"POST {path} HTTP/1.1\r\nHost: x\r\nAuthorization: "
                f"{authorization(client, self.password(client))}\r\nContent-Length: {length}\r\n"
                "Content-Type: application/octet-stream\r\n\r\n").encode()


def _accepts(port: int) -> bool:
    """True when something accepts a TCP connection on 127.0.0.1:``port``."""
    try:
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
    except OSError:
        return False
    return True


def read_status(connection: socket.socket) -> int:
    """The status code of the first response on a raw connection; 0 when it is closed without one."""
    data = b""
    while b"\r\n" not in data:
        try:
            chunk = connection.recv(4096)
        except (ConnectionResetError, TimeoutError):
            return 0
        if not chunk:
            return 0
        data += chunk
    return int(data.split(b" ", 2)[1])


def final_files(repository: Path) -> list[Path]:
    """Every file under a final name: config, and 64-hex names in the type folders."""
    return [path for path in repository.rglob("*")
            if path.is_file() and ".triplicate-partial" not in path.parts
            and (path.name == "config" or (len(path.name) == 64 and all(c in "0123456789abcdef" for c in path.name)))]


def misnamed_files(repository: Path) -> list[Path]:
    """Final files whose content does not hash to their name (config excepted)."""
    return [path for path in final_files(repository) if path.name != "config" and sha(path.read_bytes()) != path.name]


def partial_files(repository: Path) -> list[str]:
    folder = repository / ".triplicate-partial"
    return sorted(os.listdir(folder)) if folder.is_dir() else []
