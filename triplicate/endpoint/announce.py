"""Telling the watcher that a file landed: one datagram on the client's unix socket under state_dir.

Best effort and never blocking: a datagram the watcher is not there to take
(no socket, a full queue) is dropped, and the file-event watcher and the
periodic rescan find the file anyway. The message is ``<client> <path>`` with
the file's path inside the repository (``snapshots/<id>``, ``data/ab/<id>``).
"""

from __future__ import annotations

import socket
from pathlib import Path

from triplicate.storage.handle import Handle

SOCKET_FOLDER = "announce"


def socket_path(state_dir: Path, client: str) -> Path:
    """Where the watcher serving ``client`` listens for its announcements."""
    return state_dir / SOCKET_FOLDER / f"{client}.sock"


def message(client: str, handle: Handle) -> bytes:
    """The datagram announcing ``handle`` of ``client``."""
    return f"{client} {handle.relative_path()}".encode()


class Announcer:
    """Sends announcements to the watcher's socket; counts what could not be sent."""

    def __init__(self, state_dir: Path) -> None:
        self.state_dir = state_dir
        self.dropped = 0
        self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._socket.setblocking(False)

    def announce(self, client: str, handle: Handle) -> bool:
        """Send one announcement; return False (dropping it) when the watcher cannot take it now."""
        try:
            self._socket.sendto(message(client, handle), str(socket_path(self.state_dir, client)))
        except OSError:  # no watcher, its queue full, a stale socket file
            self.dropped += 1
            return False
        return True

    def close(self) -> None:
        self._socket.close()
