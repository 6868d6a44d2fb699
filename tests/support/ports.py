"""Loopback ports for servers the tests start: free ones, and one held busy."""

from __future__ import annotations

import functools
import os
import random
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

LOOPBACK = "127.0.0.1"


def _ephemeral_start() -> int:
    """Where the kernel's ports for outgoing connections and port-0 listeners (rclone rcd,
    every HTTP client) begin: a port chosen here must not be one of those, which any
    process may take between the choice and the service's bind."""
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


@functools.cache
def _own_range() -> tuple[int, int]:
    """This test process's ports: 10000 up to the ephemeral ones, split between pytest-xdist's
    workers so that two tests running at once never choose the same port."""
    low, high = 10000, max(_ephemeral_start(), 12000)
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    worker = int(os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw") or 0) % workers
    width = (high - low) // workers
    return low + worker * width, low + (worker + 1) * width


def free_port_range(count: int) -> tuple[int, int]:
    """``count`` consecutive ports free on 127.0.0.1 (first, last), from a random place in this
    test process's own range (:func:`_own_range`)."""
    low_end, high_end = _own_range()
    for _ in range(200):
        low = random.randrange(low_end, high_end - count)
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
