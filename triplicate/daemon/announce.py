"""The watcher's side of the endpoint's announcements: a unix datagram socket per served client.

The endpoint sends ``<client> <path>`` to ``<state_dir>/announce/<client>.sock``
as soon as a file has landed (triplicate/endpoint/announce.py). A snapshot's
announcement makes the daemon examine the client at once, as a file event
would; a pack's or an index file's starts a run to each location, so that a
backup is copied while it runs and only its last files remain when its snapshot
lands (a run already going queues one more, so runs follow each other while
packs keep arriving); the file-event watcher and the periodic rescan stay the safety nets,
so a lost datagram (a full queue, a watcher restarting) only costs time.
One socket per client lets a per-client watcher and a shared one both work:
each binds the sockets of the clients it serves.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from collections.abc import Callable
from pathlib import Path

from triplicate.endpoint.announce import socket_path

log = logging.getLogger("triplicate.daemon")

TRIGGER = "announce"


class AnnouncementListener:
    """Calls ``on_snapshot(client, "announce")`` for every snapshot the endpoint announces, and
    ``on_pack(client)`` for every pack or index file (a backup is running: copy as it goes)."""

    def __init__(self, on_snapshot: Callable[[str, str], None],
                 on_pack: Callable[[str], None] = lambda client: None) -> None:
        self._on_snapshot = on_snapshot
        self._on_pack = on_pack
        self._sockets: dict[str, socket.socket] = {}
        self._state_dir: Path | None = None
        self.received = 0

    def set_clients(self, state_dir: Path, clients: list[str]) -> None:
        """Listen for exactly ``clients`` (binding new sockets, closing dropped ones).

        A socket that cannot be bound (a path too long, a read-only folder) is logged
        and skipped: that client's snapshots are then found by the other means.
        """
        if self._state_dir is not None and state_dir != self._state_dir:
            self.close()
        self._state_dir = state_dir
        for client in [client for client in self._sockets if client not in clients]:
            self._close_one(client)
        for client in clients:
            if client not in self._sockets:
                self._open(client)

    def _open(self, client: str) -> None:
        assert self._state_dir is not None
        path = socket_path(self._state_dir, client)
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        try:
            path.parent.mkdir(mode=0o750, parents=True, exist_ok=True)
            path.unlink(missing_ok=True)  # a previous watcher's (sockets are not reused)
            listener.bind(str(path))
            os.chmod(path, 0o660)
        except OSError as error:
            listener.close()
            log.warning("%s: cannot listen for the endpoint's announcements on %s: %s", client, path,
                        error.strerror or error)
            return
        listener.setblocking(False)
        asyncio.get_running_loop().add_reader(listener.fileno(), self._read, client, listener)
        self._sockets[client] = listener

    def _read(self, client: str, listener: socket.socket) -> None:
        while True:
            try:
                data = listener.recv(1024)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return
            self.received += 1
            announced, _, path = data.decode(errors="replace").partition(" ")
            if announced != client:
                continue
            if path.startswith("snapshots/"):
                self._on_snapshot(client, TRIGGER)
            elif path.startswith(("data/", "index/")):
                self._on_pack(client)

    def _close_one(self, client: str) -> None:
        listener = self._sockets.pop(client)
        try:
            asyncio.get_running_loop().remove_reader(listener.fileno())
        except RuntimeError:  # no loop running any more (the daemon is stopping)
            pass
        listener.close()
        if self._state_dir is not None:
            socket_path(self._state_dir, client).unlink(missing_ok=True)

    def close(self) -> None:
        """Stop listening for every client and remove the sockets."""
        for client in list(self._sockets):
            self._close_one(client)
