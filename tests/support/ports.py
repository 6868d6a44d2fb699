"""Loopback ports for servers the tests start: free ones, and one held busy."""

from __future__ import annotations

import random
import socket
from collections.abc import Iterator
from contextlib import contextmanager

LOOPBACK = "127.0.0.1"


def free_port_range(count: int) -> tuple[int, int]:
    """``count`` consecutive ports free on 127.0.0.1 (first, last), from a random place: tests run in parallel."""
    for _ in range(200):
        low = random.randrange(20000, 60000 - count)
        if all(_bindable(port) for port in range(low, low + count)):
            return low, low + count - 1
    raise RuntimeError("no free port range found")


def free_port() -> int:
    """A loopback port nobody listens on right now."""
    return free_port_range(1)[0]


def _bindable(port: int) -> bool:
    with socket.socket() as probe:
        try:
            probe.bind((LOOPBACK, port))
        except OSError:
            return False
    return True


def accepts_connections(port: int, host: str = LOOPBACK) -> bool:
    """Whether something listens on ``port`` (a server that finished starting)."""
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


@contextmanager
def listening_on(port: int) -> Iterator[socket.socket]:
    """Hold ``port`` on 127.0.0.1 with a listening socket, as another program would."""
    with socket.socket() as squatter:
        squatter.bind((LOOPBACK, port))
        squatter.listen()
        yield squatter
