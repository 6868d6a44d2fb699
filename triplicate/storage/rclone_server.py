"""``rclone rcd``: rclone's remote-control server, one per rclone configuration file.

Every rclone location that uses the same ``rclone_config`` talks to the same
server (each call names its remote), except a location with a ``bwlimit``: rclone's
limit is one for the whole server, so such a location gets a server of its own,
started with ``--bwlimit``, that every client's copies to it share. Other processes may
copy to the same location at once (one watcher per client): while N of them do, each
gives its rclone the rate in force divided by N (``core/bwlimit``; :class:`BandwidthShare`).
A server runs while a location uses it; the
daemon keeps servers running between runs (:func:`keep_servers`), so a run does
not pay rclone's start-up. A configuration file changed on disk gets a new server.

The server listens on a private loopback port (``127.0.0.1:0``: rclone picks a
free one and logs it) behind a random user and password given to rclone in its
environment (``RCLONE_RC_USER``/``RCLONE_RC_PASS``): never on its command line, and
no file that a /tmp cleaner could remove under a long-lived server.
"""

from __future__ import annotations

import base64
import collections
import json
import logging
import re
import secrets
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import urllib3

from triplicate import execute
from triplicate.storage.backend import StorageError
from triplicate.storage.limit_files import Copiers, limits_folder, warn_once
from triplicate.units import parse_bandwidth, rate_at

log = logging.getLogger("triplicate.sync")
SHARE_SECONDS = 0.1  # how often a copying process looks again at how many others copy
SHARE_LINGER = 0.3  # how long a process stays counted after its last copy

START_TIMEOUT = 30.0
_SERVING = re.compile(r"Serving remote control on (http://127\.0\.0\.1:\d+/)")
_POOL_SIZE = 32  # connections kept open to the server, across every location using it


class RcError(Exception):
    """rclone answered a call with an error status."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def rclone_environment(rclone_config: Path | None) -> dict[str, str]:
    """The environment for rclone (and for restic's rclone: backend) on top of ours."""
    return {} if rclone_config is None else {"RCLONE_CONFIG": str(rclone_config)}


class RcloneServer:
    """One running ``rclone rcd``. Raises StorageError when it cannot start."""

    def __init__(self, rclone_config: Path | None, stamp: tuple[int, int, int] | None = None,
                 bwlimit: str | None = None, owner: str | None = None, state_dir: Path | None = None) -> None:
        self.rclone_config = rclone_config
        self.bwlimit = bwlimit
        self.state_dir = state_dir
        self.key: tuple[Path | None, str | None] = (rclone_config, owner)
        self.stamp = stamp  # the configuration file as it was when the server started
        self.users = 0
        self.log: collections.deque[str] = collections.deque(maxlen=50)
        user, password = secrets.token_hex(8), secrets.token_urlsafe(24)
        argv = ["rclone", "rcd", "--rc-addr", "127.0.0.1:0", "--rc-serve",
                # Always copy when asked, replacing what is there (a repair of a corrupt file
                # of the same size and time); the content is verified by triplicate and rclone
                # still checks the size (see storage/rclone.py).
                "--ignore-times", "--ignore-checksum"]
        if bwlimit is not None:
            argv += ["--bwlimit", rclone_bwlimit(bwlimit)]
        environment = {**rclone_environment(rclone_config), "RCLONE_RC_USER": user, "RCLONE_RC_PASS": password}
        try:
            self.process = execute.start(argv, env=execute.environment(environment), secrets=[password],
                                         capture_log=True)
        except execute.CommandFailed as error:
            raise StorageError(str(error)) from None
        token = base64.b64encode(f"{user}:{password}".encode()).decode()
        self.headers = {"Authorization": f"Basic {token}"}
        self.pool = urllib3.PoolManager(num_pools=1, maxsize=_POOL_SIZE, block=False, retries=False)
        self.url = self._await_address()
        folder = None if bwlimit is None or owner is None or state_dir is None else limits_folder(state_dir, owner)
        self.share = None if folder is None or bwlimit is None else BandwidthShare(self, bwlimit, Copiers(folder))

    @contextmanager
    def copying(self) -> Iterator[None]:
        """A copy runs in the block: with a ``bwlimit``, this rclone's share of it is kept up to date."""
        if self.share is None:
            yield
            return
        with self.share.copying():
            yield

    def _await_address(self) -> str:
        found = threading.Event()
        address: list[str] = []
        process = self.process

        def read_log() -> None:
            assert process.stderr is not None
            for raw in process.stderr:
                line = raw.decode("utf-8", "replace").rstrip()
                self.log.append(line)
                match = _SERVING.search(line)
                if match and not found.is_set():
                    address.append(match.group(1))
                    found.set()
            found.set()  # the log ended: rclone exited

        threading.Thread(target=read_log, name="rclone log", daemon=True).start()
        if not found.wait(START_TIMEOUT) or not address:
            self.stop()
            raise StorageError(f"rclone rcd did not start: "
                               f"{self.last_error() or 'no address within ' + str(int(START_TIMEOUT)) + 's'}")
        return address[0]

    @property
    def running(self) -> bool:
        return self.process.poll() is None

    def call(self, method: str, params: dict[str, Any], timeout: float) -> dict[str, Any]:
        """One rc call; its answer. Raises RcError, or urllib3's errors when the server is unreachable."""
        response = self.pool.request(
            "POST", self.url + method, body=json.dumps(params).encode(), redirect=False,
            headers={**self.headers, "Content-Type": "application/json"},
            timeout=urllib3.Timeout(connect=10, read=timeout))
        if response.status != 200:
            raise RcError(response.status, error_text(response.data))
        try:
            answer = json.loads(response.data)
        except ValueError:
            raise RcError(response.status, "rclone's answer is not JSON") from None
        return answer if isinstance(answer, dict) else {}

    def get(self, path: str, headers: dict[str, str], timeout: float) -> Any:
        """A streamed GET from rclone's object server (``--rc-serve``); the caller releases it."""
        return self.pool.request("GET", self.url + path, headers={**self.headers, **headers},
                                 preload_content=False, redirect=False,
                                 timeout=urllib3.Timeout(connect=10, read=timeout))

    def stopped_error(self) -> str:
        return (f"rclone rcd stopped (status {self.process.returncode}): "
                f"{self.last_error() or 'no error logged'}")

    def last_error(self) -> str | None:
        """rclone's last ERROR log line, without its date (why a call failed on the far side)."""
        for line in reversed(self.log):
            if "ERROR" in line or "Failed" in line or "CRITICAL" in line:
                return re.sub(r"^\d{4}/\d\d/\d\d \d\d:\d\d:\d\d\s+", "", line)
        return None

    def stop(self) -> None:
        self.pool.clear()
        execute.stop(self.process)


class BandwidthShare:
    """A limited location's rclone takes its share of the ``bwlimit``: the rate in force divided
    by the number of processes copying to the location now (:class:`Copiers`), looked at again
    every :data:`SHARE_SECONDS` while this process copies, and set with ``core/bwlimit``. A
    process stays counted for :data:`SHARE_LINGER` seconds after its last copy ends, so that
    the others do not take the whole limit in the moment between two of its files."""

    def __init__(self, server: RcloneServer, bwlimit: str, copiers: Copiers) -> None:
        self._server = server
        self._timetable = parse_bandwidth(bwlimit)
        self._copiers = copiers
        self._lock = threading.Lock()
        self._active = 0  # copies of this process in flight
        self._idle_since = 0.0  # when the last one ended
        self._engaged = False  # counted among the copiers (when it could be) and following the count
        self._rate: str | None = None  # the rate last set; None: the one rclone started with
        self._update_lock = threading.Lock()

    @contextmanager
    def copying(self) -> Iterator[None]:
        with self._lock:
            self._active += 1
            idle = self._active == 1
            if not self._engaged:
                self._engaged = True
                try:
                    self._copiers.enter()
                except OSError as error:  # the others' count still gives a share
                    warn_once(self._copiers.folder, error)
                threading.Thread(target=self._follow, name="rclone bwlimit share", daemon=True).start()
        self.update(fresh=idle)
        try:
            yield
        finally:
            with self._lock:
                self._active -= 1
                if self._active == 0:
                    self._idle_since = time.monotonic()

    def _follow(self) -> None:
        while True:
            time.sleep(SHARE_SECONDS)  # a period, not synchronisation
            with self._lock:
                if self._active == 0:
                    if time.monotonic() - self._idle_since >= SHARE_LINGER:
                        self._engaged = False
                        self._copiers.leave()
                        return
                    continue
            self.update()

    def update(self, fresh: bool = False) -> None:
        """Set this rclone's rate to its share now (errors are logged: the copy goes on at the last rate).

        ``fresh`` (when a copy starts with no other of this process in flight) sets it even when
        unchanged: setting a rate gives rclone an empty token bucket. An idle rclone saves up to
        4 MiB of tokens (its burst), which its next copy would spend at once on top of the
        others' shares."""
        with self._update_lock:
            try:
                count = max(1, self._copiers.count())
            except OSError as error:
                warn_once(self._copiers.folder, error)
                return
            local = time.localtime()
            rate = rate_at(self._timetable, local.tm_hour * 60 + local.tm_min)
            wanted = "off" if rate is None else f"{max(1, rate // count)}B"
            if wanted == self._rate and not fresh:
                return
            try:
                self._server.call("core/bwlimit", {"rate": wanted}, timeout=10)
                self._rate = wanted
            except Exception as error:  # an rclone that stopped fails its copy anyway
                log.warning("rclone %s: setting its share of the bwlimit (%s) failed: %s",
                            self._server.key[1], wanted, error)


# -- the servers of this process ------------------------------------------------------------

_lock = threading.Lock()  # guards the three below; never held while a server starts
_servers: dict[tuple[Path | None, str | None], RcloneServer] = {}  # (config file, limited location)
_starting: dict[tuple[Path | None, str | None], threading.Lock] = {}  # one start at a time per configuration file
_kept = 0  # how many keep_servers() blocks are open


def _stamp(rclone_config: Path | None) -> tuple[int, int, int] | None:
    """What tells a changed configuration file: inode, size and modification time."""
    if rclone_config is None:
        return None
    try:
        status = rclone_config.stat()
    except OSError:
        return None
    return status.st_ino, status.st_size, status.st_mtime_ns


def acquire(rclone_config: Path | None, bwlimit: str | None = None, location: str | None = None,
            state_dir: Path | None = None) -> RcloneServer:
    """The running server for ``rclone_config``, started when there is none; with a
    ``bwlimit``, the one of ``location`` alone, sharing it with other processes through
    ``state_dir`` (:class:`BandwidthShare`). Raises StorageError."""
    key = (rclone_config, location if bwlimit is not None else None)
    with _lock:
        starting = _starting.setdefault(key, threading.Lock())
    with starting:
        stamp = _stamp(rclone_config)
        stale = None
        with _lock:
            current = _servers.get(key)
            if (current is not None and current.stamp == stamp and current.bwlimit == bwlimit
                    and current.state_dir == state_dir and current.running):
                current.users += 1
                return current
            if current is not None:  # edited or dead: its last user's release stops it
                del _servers[key]
                stale = current if current.users == 0 else None
        if stale is not None:
            stale.stop()
        server = RcloneServer(rclone_config, stamp, bwlimit, key[1], state_dir)
        with _lock:
            _servers[key] = server
            server.users += 1
        return server


def release(server: RcloneServer) -> None:
    """A location is done with ``server``: stopped when nobody uses or keeps it."""
    with _lock:
        server.users -= 1
        registered = _servers.get(server.key) is server
        if server.users > 0 or (registered and _kept):
            return
        if registered:
            del _servers[server.key]
    server.stop()


@contextmanager
def keep_servers() -> Iterator[None]:
    """Servers stay running between uses while in this block (the daemon); stopped at its end."""
    global _kept
    with _lock:
        _kept += 1
    try:
        yield
    finally:
        idle = []
        with _lock:
            _kept -= 1
            if not _kept:
                for key, server in list(_servers.items()):
                    if server.users == 0:
                        idle.append(server)
                        del _servers[key]
        for server in idle:
            server.stop()


def rclone_bwlimit(bwlimit: str) -> str:
    """A ``bwlimit`` (triplicate.units.parse_bandwidth) in rclone's ``--bwlimit`` form: bytes
    per second with rclone's ``B`` suffix, ``off``, and the same timetable syntax."""
    def rate(value: int | None) -> str:
        return "off" if value is None else f"{value}B"

    timetable = parse_bandwidth(bwlimit)
    if len(timetable) == 1 and timetable[0][0] == 0 and "," not in bwlimit:
        return rate(timetable[0][1])
    return " ".join(f"{minute // 60:02d}:{minute % 60:02d},{rate(value)}" for minute, value in timetable)


def error_text(body: bytes) -> str:
    """The "error" of rclone's JSON error answer, else the body's first line."""
    text = body.decode("utf-8", "replace")
    try:
        answer = json.loads(text)
        if isinstance(answer, dict) and answer.get("error"):
            return str(answer["error"])
    except ValueError:
        pass
    return (text.strip().splitlines() or ["no error text"])[0][:200]
