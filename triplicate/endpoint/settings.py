"""What each client's listener is opened with, read from the configuration (no HTTP stack imported)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from triplicate.config.model import Config
from triplicate.errors import UsageError
from triplicate.service.layout import Layout
from triplicate.service.scripts import address


@dataclass(frozen=True)
class ListenerSettings:
    """What one client's listener is opened with; a change (other than the quota) reopens it."""

    client: str
    host: str
    port: int
    repository: Path
    htpasswd: Path
    tls_cert: Path | None
    tls_key: Path | None
    tls_client_ca: Path | None
    idle_timeout: float
    quota: int | None


def listener_settings(config: Config, client: str) -> ListenerSettings:
    """The listener of ``client`` as ``config`` has it; raises UsageError when the client has no port."""
    settings = config.client(client)
    if settings.port is None:
        raise UsageError(f"client '{client}' has no port: it has no REST endpoint")
    server = config.server
    quota = config.settings(client).quota
    return ListenerSettings(
        client=client, host=server.listen_host, port=settings.port, repository=config.primary_dir(client),
        htpasswd=Layout(server.state_dir).htpasswd(client), tls_cert=server.tls_cert, tls_key=server.tls_key,
        tls_client_ca=server.tls_client_ca, idle_timeout=server.endpoint_idle_timeout,
        quota=quota if isinstance(quota, int) else None,
    )


def wanted_listeners(config: Config, names: tuple[str, ...]) -> dict[str, ListenerSettings]:
    """The listeners to run: the clients named, or every enabled client with a port."""
    if names:
        return {name: listener_settings(config, name) for name in names}
    return {name: listener_settings(config, name) for name, client in sorted(config.clients.items())
            if client.enabled and client.port is not None}


def stamp(settings: ListenerSettings) -> str:
    """One line naming everything the listener was opened with: a run script that carries it
    changes (and runit restarts the endpoint) whenever one of them does."""
    tls = "" if settings.tls_cert is None else f" tls {settings.tls_cert} {settings.tls_key}"
    if settings.tls_client_ca is not None:
        tls += f" client ca {settings.tls_client_ca}"
    quota = "" if settings.quota is None else f" quota {settings.quota}"
    return f"# listens on {address(settings.host, settings.port)}{tls}{quota} idle {settings.idle_timeout:g}s\n"
