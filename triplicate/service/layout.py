"""Where the service tree, credentials and logs of the clients live under ``state_dir``.

    <state_dir>/service/<client> -> ../clients/<client>   watched by the top runsvdir; a link = enabled
    <state_dir>/clients/<client>/run                      exec runsvdir over the client's services
    <state_dir>/clients/<client>/control/t                turns runsv's TERM into a HUP
    <state_dir>/clients/<client>/services/{rest,syncd}/   the client's services, each with a log/ service
    <state_dir>/htpasswd/<client>                         the client's bcrypt credentials (rclone --htpasswd)
    <state_dir>/log/<client>/<service>/current            svlogd's log of each service
    <state_dir>/service/_syncd -> ../shared/syncd         with server.syncd = "shared": one watcher for all
    <state_dir>/log/_shared/syncd/current                 its log
    <state_dir>/service/_rest -> ../shared/rest           with server.endpoint = "shared": one endpoint for all
    <state_dir>/log/_shared/rest/current                  its log
    <state_dir>/service/_web -> ../shared/web             with [web] listen: the web service (docs/web.md)
    <state_dir>/log/_shared/web/current                   its log
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

SERVICES = ("rest", "syncd")
# The shared watcher's names start with '_', which no client name does (and runsvdir
# ignores only names with a dot).
SHARED_LINK = "_syncd"
SHARED_REST_LINK = "_rest"
SHARED_LOGS = "_shared"
WEB_LINK = "_web"


@dataclass(frozen=True)
class Layout:
    state_dir: Path

    @property
    def top(self) -> Path:
        """The folder the top-level runsvdir watches."""
        return self.state_dir / "service"

    @property
    def clients_root(self) -> Path:
        return self.state_dir / "clients"

    @property
    def htpasswd_root(self) -> Path:
        return self.state_dir / "htpasswd"

    @property
    def log_root(self) -> Path:
        return self.state_dir / "log"

    def link(self, client: str) -> Path:
        return self.top / client

    def client_dir(self, client: str) -> Path:
        return self.clients_root / client

    def service_dir(self, client: str, service: str) -> Path:
        return self.client_dir(client) / "services" / service

    def htpasswd(self, client: str) -> Path:
        return self.htpasswd_root / client

    def log_dir(self, client: str, service: str) -> Path:
        return self.log_root / client / service

    @property
    def shared_syncd(self) -> Path:
        """The shared watcher's service folder (server.syncd = "shared")."""
        return self.state_dir / "shared" / "syncd"

    @property
    def shared_link(self) -> Path:
        return self.top / SHARED_LINK

    @property
    def shared_rest(self) -> Path:
        """The shared endpoint's service folder (server.endpoint = "shared")."""
        return self.state_dir / "shared" / "rest"

    @property
    def shared_rest_link(self) -> Path:
        return self.top / SHARED_REST_LINK

    @property
    def web(self) -> Path:
        """The web service's folder ([web] listen set)."""
        return self.state_dir / "shared" / "web"

    @property
    def web_link(self) -> Path:
        return self.top / WEB_LINK

    @property
    def shared_units(self) -> list[Path]:
        """The server-wide units: the shared watcher, the shared endpoint, the web service."""
        return [self.shared_syncd, self.shared_rest, self.web]

    def all_supervised_dirs(self, clients: list[str]) -> list[Path]:
        """Every folder a runsv may supervise: each client's, and each server-wide unit's."""
        folders = [folder for client in clients for folder in self.supervised_dirs(client)]
        return [*folders, *(folder for unit in self.shared_units for folder in (unit, unit / "log"))]

    def supervised_dirs(self, client: str) -> list[Path]:
        """Every folder a runsv of this client may supervise: the client, its services, their logs."""
        folders = [self.client_dir(client)]
        for service in SERVICES:
            folders += [self.service_dir(client, service), self.service_dir(client, service) / "log"]
        return folders
