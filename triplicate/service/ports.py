"""Allocating a client's port from ``server.ports``."""

from __future__ import annotations

import socket

from triplicate.config.model import Config
from triplicate.errors import UsageError


def port_is_free(host: str, port: int) -> bool:
    """True when nothing listens on ``host:port`` (we can bind it ourselves)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        # SO_REUSEADDR: a port in TIME_WAIT after a stopped endpoint is free for rclone too.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError:
            return False
    return True


def taken_ports(config: Config) -> dict[int, str]:
    """Port -> client for every client with a port, enabled or not (a disabled one keeps it)."""
    return {client.port: name for name, client in config.clients.items() if client.port is not None}


def web_port(config: Config) -> int | None:
    """The port of ``[web] listen`` (None when it is off or not an address)."""
    from triplicate.metrics import parse_listen

    if config.web.listen is None:
        return None
    try:
        return parse_listen(config.web.listen, "web.listen:")[1]
    except UsageError:
        return None


def allocate_port(config: Config) -> int:
    """The lowest port of ``server.ports`` that no client has, the web service does not use, and
    no other program listens on.

    Raises UsageError saying why the range is full.
    """
    low, high = config.server.ports
    taken = taken_ports(config)
    web = web_port(config)
    busy = 0
    for port in range(low, high + 1):
        if port in taken or port == web:
            continue
        if port_is_free(config.server.listen_host, port):
            return port
        busy += 1
    clients = sum(1 for port in taken if low <= port <= high)
    raise UsageError(
        f"server.ports: no free port in {low}-{high} ({clients} taken by clients, {busy} in use by "
        "other programs); widen the range"
    )


def check_port(config: Config, port: int) -> None:
    """Refuse a requested port outside ``server.ports``, another client's, or one another program
    listens on (UsageError): the range is what the firewall lets through."""
    low, high = config.server.ports
    if not low <= port <= high:
        raise UsageError(f"--port {port}: outside server.ports ({low}-{high}); widen the range to use it")
    owner = taken_ports(config).get(port)
    if owner is not None:
        raise UsageError(f"--port {port}: already client '{owner}'s")
    if port == web_port(config):
        raise UsageError(f"--port {port}: the web service's ([web] listen)")
    if not port_is_free(config.server.listen_host, port):
        raise UsageError(f"--port {port}: in use by another program on {config.server.listen_host}")
