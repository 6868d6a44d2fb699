"""Who may read the web service: ``[web] users`` (bcrypt) or, without users, only this machine."""

from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
import threading

from triplicate.config.model import Config
from triplicate.errors import ConfigError, UsageError


def is_loopback(host: str) -> bool:
    """Whether ``host`` (an address or "localhost") is reachable only from this machine."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def web_problems(config: Config) -> list[str]:
    """What is wrong with ``[web]`` (empty when it is off or fine), each naming its key."""
    from triplicate.metrics import parse_listen

    listen = config.web.listen
    if listen is None:
        return []
    try:
        host, port = parse_listen(listen, "web.listen:")
    except UsageError as error:
        return [str(error)]
    if not config.web.users and not is_loopback(host):
        return [(f"web.listen: {listen!r} is reachable from other machines: add [web] users "
                 "(bcrypt hashes) or listen on 127.0.0.1")]
    owner = next((name for name, client in sorted(config.clients.items()) if client.port == port), None)
    if owner is not None and may_clash(host, config.server.listen_host):
        return [f"web.listen: port {port} is client '{owner}'s REST endpoint's (on {config.server.listen_host})"]
    return []


def may_clash(first: str, second: str) -> bool:
    """Whether two listening addresses can want the same port: the same address, or either a wildcard."""
    wildcards = ("0.0.0.0", "::", "")
    names = {"localhost": "127.0.0.1"}
    first, second = names.get(first, first), names.get(second, second)
    return first == second or first in wildcards or second in wildcards


def check_web_settings(config: Config, source: str) -> None:
    """Raise ConfigError listing :func:`web_problems`, if any."""
    problems = web_problems(config)
    if problems:
        raise ConfigError(problems, source)


class Logins:
    """Checks HTTP Basic credentials against ``[web] users``.

    bcrypt is slow on purpose (about 0.2 s at cost 12), so a checked pair is
    remembered as a salted SHA-256 in memory: a dashboard's every request does
    not pay bcrypt again. A wrong password always pays it.
    """

    def __init__(self, users: dict[str, str]) -> None:
        self._users = dict(users)
        self._salt = hashlib.sha256(repr(sorted(users.items())).encode()).digest()
        self._known: set[bytes] = set()
        self._lock = threading.Lock()

    @property
    def required(self) -> bool:
        return bool(self._users)

    def check(self, header: str | None) -> str | None:
        """The user named by a valid ``Authorization: Basic`` header, else None."""
        import bcrypt

        if not header or not header.startswith("Basic "):
            return None
        try:
            user, _, password = base64.b64decode(header[6:], validate=True).decode().partition(":")
        except (ValueError, UnicodeDecodeError):
            return None
        hashed = self._users.get(user)
        if hashed is None:
            return None
        digest = hmac.new(self._salt, f"{user}\0{password}".encode(), hashlib.sha256).digest()
        with self._lock:
            if digest in self._known:
                return user
        if not bcrypt.checkpw(password.encode(), hashed.encode()):
            return None
        with self._lock:
            self._known.add(digest)
        return user
