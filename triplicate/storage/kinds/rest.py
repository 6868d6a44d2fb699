"""``type = "rest"``: another restic REST server (rest-server, rclone serve restic, triplicate)."""

from __future__ import annotations

from typing import Literal
from urllib.parse import quote, urlsplit, urlunsplit

from triplicate.config.types import AbsolutePath, HttpUrl, LocationSettings
from triplicate.storage.backend import Backend
from triplicate.storage.kinds.kind import LocationKind, Opening, ResticTarget


class RestLocation(LocationSettings):
    """Another restic REST server (rest-server, rclone serve restic, triplicate); docs/locations.md."""

    type: Literal["rest"]
    url: HttpUrl
    username: str | None = None
    password_file: AbsolutePath | None = None
    cacert: AbsolutePath | None = None

    def client_url(self, client: str) -> str:
        return f"{self.url.rstrip('/')}/{client}/"


def _open(settings: RestLocation, opening: Opening) -> Backend:
    from triplicate.storage.rest import RestBackend, RestTarget

    target = RestTarget(settings.url, settings.username, settings.password_file, settings.cacert)
    return RestBackend(target, opening.client, f"{opening.location} ({settings.client_url(opening.client)})",
                       opening.workers)


def _restic(settings: RestLocation, opening: Opening) -> ResticTarget:
    """restic 0.14 reads REST credentials only from the URL: the repository string holds the
    password, which is therefore among the secrets to mask."""
    from triplicate.storage.rest import read_password

    parts = urlsplit(settings.client_url(opening.client))
    netloc = parts.netloc
    environment = {"SSL_CERT_FILE": str(settings.cacert)} if settings.cacert else {}
    secrets: list[str] = []
    if settings.username is not None:
        password = read_password(settings.password_file) if settings.password_file else ""
        netloc = f"{quote(settings.username, safe='')}:{quote(password, safe='')}@{netloc}"
        # Where restic >= 0.16 reads them.
        environment.update(RESTIC_REST_USERNAME=settings.username, RESTIC_REST_PASSWORD=password)
        secrets = [value for value in (password, quote(password, safe="")) if value]
    return ResticTarget("rest:" + urlunsplit(parts._replace(netloc=netloc)), environment, secrets)


KIND = LocationKind("rest", RestLocation, _open, _restic)
