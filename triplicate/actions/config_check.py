"""``triplicate config check``: every problem ``client add`` and ``supervise`` would refuse, at once.

The file's own validation (types, unknown keys, names, references), then what
serving needs (ports, TLS, the service user, the web service's address), then
the files the configuration names that must exist. Nothing is changed.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from triplicate.actions import JSON_VERSION
from triplicate.config.model import Config
from triplicate.errors import ConfigError

# "clients.web01.port: ..." or "server.tls_cert, server.tls_key: ..." -> the key path(s) and the message.
KEYED = re.compile(r"([A-Za-z0-9_@\[\]-]+(?:\.[A-Za-z0-9_@\[\]-]+)*(?:, [A-Za-z0-9_.@\[\]-]+)*): (.+)", re.DOTALL)


@dataclass(frozen=True)
class Problem:
    key: str | None  # the dotted key path, None for the file as a whole
    message: str

    @classmethod
    def parse(cls, text: str) -> Problem:
        match = KEYED.fullmatch(text)
        return cls(match.group(1), match.group(2)) if match else cls(None, text)

    def __str__(self) -> str:
        return f"{self.key}: {self.message}" if self.key else self.message


@dataclass
class CheckResult:
    path: Path
    problems: list[Problem] = field(default_factory=list)
    clients: int = 0
    locations: int = 0

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_json(self) -> dict[str, Any]:
        return {"version": JSON_VERSION, "ok": self.ok, "config": str(self.path), "client_count": self.clients,
                "location_count": self.locations,
                "problems": [{"key": problem.key, "message": problem.message} for problem in self.problems]}


def check_config(path: Path) -> CheckResult:
    """Validate the configuration at ``path``; return every problem found (never raises for the file's)."""
    from triplicate.config.load import load_config

    result = CheckResult(path)
    try:
        config = load_config(path)
    except ConfigError as error:
        result.problems = [Problem.parse(text) for text in error.problems]
        return result
    result.clients, result.locations = len(config.clients), len(config.locations)
    result.problems = [Problem.parse(text) for text in serving_problems(config)]
    return result


def serving_problems(config: Config) -> list[str]:
    """What a valid file still gets wrong for serving: clashing or out-of-range ports, half a TLS
    pair, an unknown user, the web service's address, missing certificate or key files."""
    from triplicate.service.tree import service_problems
    from triplicate.web.access import web_problems

    problems = service_problems(config) + web_problems(config)
    low, high = config.server.ports
    for name, client in sorted(config.clients.items()):
        if client.port is not None and not low <= client.port <= high:
            problems.append(f"clients.{name}.port: {client.port} is outside server.ports ({low}-{high})")
        for key in ("password_file",):
            value = getattr(client, key)
            if value is not None and not Path(value).is_file():
                problems.append(f"clients.{name}.{key}: no such file {value}")
    for key in ("tls_cert", "tls_key", "tls_client_ca"):
        value = getattr(config.server, key)
        if value is not None and not Path(value).is_file():
            problems.append(f"server.{key}: no such file {value}")
    return problems + _certificate_problems(config)


def _certificate_problems(config: Config) -> list[str]:
    """The server's certificate and key when both exist but do not load as a pair (garbage, a key
    of another certificate): the endpoints and the web service would refuse to start."""
    import ssl

    cert, key = config.server.tls_cert, config.server.tls_key
    if cert is None or key is None or not Path(cert).is_file() or not Path(key).is_file():
        return []
    try:
        ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(cert, key)
    except (OSError, ssl.SSLError) as error:
        return [f"server.tls_cert, server.tls_key: cannot load {cert} with {key}: {error}"]
    return []
