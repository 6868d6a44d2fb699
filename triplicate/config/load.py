"""Finding, reading and validating the configuration file.

Every problem in a file is collected and reported at once, each with the dotted
path of its key (``clients.web01.replicate_to[1]: unknown location 'ofsite'``).
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from triplicate.config.model import LOCATION_TYPES, Config, ServerSettings, check_name
from triplicate.config.types import NotANumber
from triplicate.errors import ConfigError

DEFAULT_PATH = Path("/etc/triplicate/triplicate.toml")
ENVIRONMENT_VARIABLE = "TRIPLICATE_CONFIG"


def config_path(explicit: str | Path | None = None) -> Path:
    """``-c PATH`` when given, else ``$TRIPLICATE_CONFIG``, else the system default."""
    if explicit:
        return Path(explicit)
    from_environment = os.environ.get(ENVIRONMENT_VARIABLE)
    return Path(from_environment) if from_environment else DEFAULT_PATH


def load_config(path: Path) -> Config:
    """Read and validate ``path``; raises ConfigError listing every problem."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(
            [f"no configuration file (create one with 'triplicate -c {path} init')"], str(path)
        ) from None
    except OSError as error:
        raise ConfigError([f"cannot read: {error.strerror}"], str(path)) from None
    except UnicodeDecodeError as error:
        raise ConfigError([f"not UTF-8 text (byte {error.object[error.start]:#04x} at offset {error.start}): "
                           "save it as UTF-8"], str(path)) from None
    return parse_config(text, str(path))


def parse_config(text: str, source: str = "") -> Config:
    """Validate TOML text; raises ConfigError listing every problem."""
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        raise ConfigError([f"not valid TOML: {error}"], source) from None
    return validate_config(raw, source)


def validate_config(raw: dict[str, Any], source: str = "") -> Config:
    """Validate an already parsed document; raises ConfigError listing every problem."""
    problems = _name_and_reference_problems(raw) + _overlap_problems(raw)
    config: Config | None = None
    try:
        config = Config.model_validate(raw)
    except ValidationError as error:
        problems += [_describe(detail) for detail in error.errors()]
    if problems or config is None:
        raise ConfigError(_unique(problems), source)
    return config


def _name_and_reference_problems(raw: dict[str, Any]) -> list[str]:
    """Checks pydantic cannot express per key: names, and references between sections."""
    problems: list[str] = []
    locations = raw.get("locations")
    clients = raw.get("clients")
    location_names = set(locations) if isinstance(locations, dict) else set()
    for section, entries in (("locations", locations), ("clients", clients)):
        if isinstance(entries, dict):
            for name in entries:
                why = check_name(name)
                if why:
                    problems.append(f"{section}: {why}")
    if isinstance(clients, dict):
        for client_name, client in clients.items():
            targets = client.get("replicate_to") if isinstance(client, dict) else None
            if not isinstance(targets, list):
                continue
            for index, target in enumerate(targets):
                if isinstance(target, str) and target not in location_names:
                    problems.append(
                        f"clients.{client_name}.replicate_to[{index}]: unknown location '{target}'"
                    )
    return problems


def _overlap_problems(raw: dict[str, Any]) -> list[str]:
    """Local locations that are not a separate copy: a path that is, holds or is inside
    ``server.repos_dir`` or another location's path (symbolic links followed)."""
    server = raw.get("server")
    repos_dir = server.get("repos_dir") if isinstance(server, dict) else None
    places: list[tuple[str, str]] = [("server.repos_dir", repos_dir if isinstance(repos_dir, str)
                                      else str(ServerSettings.model_fields["repos_dir"].default))]
    locations = raw.get("locations")
    for name, location in (locations.items() if isinstance(locations, dict) else ()):
        if isinstance(location, dict) and location.get("type") == "local" and isinstance(location.get("path"), str):
            places.append((f"locations.{name}.path", location["path"]))
    resolved = [(key, _resolved(path)) for key, path in places if path.startswith("/") and "\0" not in path]
    problems = []
    for index, (key, path) in enumerate(resolved):
        for other_key, other in resolved[:index]:
            if path == other:
                relation = "is the same folder as"
            elif path.is_relative_to(other):
                relation = "is inside"
            elif other.is_relative_to(path):
                relation = "contains"
            else:
                continue
            problems.append(f"{key}: {path} {relation} {other_key} ({other}): a replica there is no separate "
                            "copy; give each location its own folder, apart from repos_dir")
    return problems


def _resolved(path: str) -> Path:
    return Path(os.path.realpath(path))


def _describe(detail: Any) -> str:
    path = ""
    for part in detail["loc"]:
        if isinstance(part, int):
            path += f"[{part}]"
        elif part in LOCATION_TYPES:  # the discriminator's tag adds nothing for the user
            continue
        else:
            path += f".{part}" if path else str(part)
    message = detail["msg"]
    if isinstance(detail.get("input"), NotANumber):
        message = f"expected a number, not {detail['input']!r}"
    elif detail["type"] == "extra_forbidden":
        message = "unknown key (check its spelling in docs/configuration.md)"
    elif detail["type"] == "union_tag_invalid":
        message = (
            f"unknown location type {detail['input'].get('type')!r} "
            f"(known: {', '.join(LOCATION_TYPES)})"
        )
    elif detail["type"] == "union_tag_not_found":
        message = f"missing 'type' (known: {', '.join(LOCATION_TYPES)})"
    elif message.startswith("Value error, "):
        message = message[len("Value error, "):]
    return f"{path}: {message}" if path else message


def _unique(items: list[str]) -> list[str]:
    return list(dict.fromkeys(items))
