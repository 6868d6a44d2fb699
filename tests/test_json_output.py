"""Every --json output: one object, "version" first, "@primary" for the primary, the same shape
for the same things (clients and locations are objects keyed by name), errors as JSON too."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from typing import Any

import click

from tests.support.repository import Server
from triplicate.actions import JSON_VERSION
from triplicate.cli import COMMANDS, cli

# Keys that always hold a collection keyed by a name, and the names each may hold.
KEYED = {"clients": {"web01", "db01"}, "locations": {"@primary", "usb", "nas"}, "copies": {"@primary", "usb", "nas"},
         "sources": {"usb", "nas"}, "services": {"supervisor", "rest", "syncd"}}
# What names a record of one thing in a collection: never repeated inside it (its key says it).
NAMING = {"name", "client", "location", "service", "job"}


def _every_json_command() -> set[str]:
    """Each command (``group sub`` for a group's) with a --json option."""
    found = set()
    context = click.Context(cli)
    for name in COMMANDS:
        command = cli.get_command(context, name)
        assert command is not None
        children = command.commands if isinstance(command, click.Group) else {"": command}
        for child_name, child in children.items():
            if any("--json" in getattr(parameter, "opts", ()) for parameter in child.params):
                found.add(f"{name} {child_name}".strip())
    return found


def _keyed(value: Any, path: str = "") -> Iterator[tuple[str, str, Any]]:
    """(path, key, value) of every entry in the JSON ``value`` under a key of :data:`KEYED`."""
    if isinstance(value, dict):
        for key, item in value.items():
            if key in KEYED:
                yield f"{path}.{key}", key, item
            yield from _keyed(item, f"{path}.{key}")
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from _keyed(item, f"{path}[{index}]")


def test_every_json_output_has_one_version_and_one_shape_for_the_same_things(server: Server) -> None:
    server.write_config(server.config_path.read_text() + "\n[clients.web01.retention]\nkeep_last = 1\n"
                        '\n[clients.db01]\nreplicate_to = ["nas"]\n')
    (server.root / "repos" / "db01").mkdir()
    outputs = {
        "sync": server.cli("sync", "web01", "--json"),
        "status": server.cli("status", "--json"),
        "audit": server.cli("audit", "--json"),
        "client list": server.cli("client", "list", "--json"),
        "config check": server.cli("config", "check", "--json"),
        "restore-check": server.cli("restore-check", "web01", "--files", "1", "--json"),
        "retention": server.cli("retention", "web01", "--dry-run", "--json"),
        "heal": server.cli("heal", "web01", "--dry-run", "--json"),
        "recover": server.cli("recover", "--all", "--dry-run", "--json"),
        "client add": server.cli("client", "add", "app01", "--no-enable", "--json"),
    }
    damaged = next((server.primary() / "snapshots").iterdir())  # a flipped byte, written long ago
    damaged.write_bytes(bytes([damaged.read_bytes()[0] ^ 1]) + damaged.read_bytes()[1:])
    os.utime(damaged, (time.time() - 3600, time.time() - 3600))
    outputs["quarantine"] = server.cli("quarantine", "web01", f"snapshots/{damaged.name}", "--json")
    assert set(outputs) == _every_json_command(), "a --json command this test does not check"
    data = {}
    for command, result in outputs.items():
        data[command] = json.loads(result.out)
        assert next(iter(data[command])) == "version" and data[command]["version"] == JSON_VERSION, command
        # (status exits 1: nothing supervises the services; audit and recover: db01 has no snapshot)
        if command not in ("status", "audit", "recover"):
            assert result.code == 0, (command, result.err)
        assert data[command].get("error") is None, (command, data[command])
    for command, answer in data.items():
        for path, key, value in _keyed(answer):
            assert isinstance(value, dict), f"{command}: {path} is a {type(value).__name__}, not keyed by name"
            assert set(value) <= KEYED[key], f"{command}: {path} keyed by {sorted(value)}"
            for name, item in value.items():
                repeated = {field: item[field] for field in NAMING & set(item)} if isinstance(item, dict) else {}
                assert name not in repeated.values(), f"{command}: {path}.{name} names itself again: {repeated}"

    # The same things, the same keys, in the same order: clients by name, the primary first.
    clients = ["db01", "web01"]
    assert list(data["status"]["clients"]) == clients and list(data["client list"]["clients"]) == clients
    assert list(data["audit"]["clients"]) == clients and list(data["recover"]["clients"]) == clients
    everywhere = ["@primary", "usb", "nas"]
    assert list(data["status"]["clients"]["web01"]["locations"]) == everywhere
    assert list(data["restore-check"]["locations"]) == everywhere
    assert list(data["audit"]["clients"]["web01"]["locations"]) == ["usb", "nas"]
    assert list(data["sync"]["locations"]) == ["usb", "nas"]
    assert list(data["status"]["clients"]["db01"]["locations"]) == ["@primary", "nas"]
    # The same section has the same fields for every client (one shape, whatever the client holds).
    web01, db01 = data["status"]["clients"]["web01"], data["status"]["clients"]["db01"]
    assert set(web01) == set(db01)
    assert set(web01["locations"]["nas"]) == set(db01["locations"]["nas"])
    assert web01["retention"] is None and web01["endpoint"] is None  # one record or null, never a list
    assert data["client add"]["client"] == "app01"
    assert [entry["file"] for entry in data["quarantine"]["quarantined"]] == [f"snapshots/{damaged.name}"]


def test_errors_are_json_when_json_was_asked(server: Server) -> None:
    result = server.cli("status", "nosuch", "--json")
    assert result.code == 2 and "unknown client 'nosuch'" in result.err
    assert result.json() == {"version": JSON_VERSION, "ok": False,
                             "error": result.err.strip().removeprefix("triplicate: "), "exit_code": 2}

    result = server.cli("retention", "web01", "--json")  # no retention policy configured
    assert result.code != 0 and result.out, "retention --json must answer even when it cannot run"
    data = result.json()
    assert data["version"] == JSON_VERSION and data["ok"] is False
    assert data["error"] and data["exit_code"] == result.code

    result = server.cli("sync", "web01", "--json", "--bogus")
    assert result.code == 2 and result.json()["error"].startswith("No such option")

    result = server.cli("audit", "nosuch", "--json")  # a monitoring command: UNKNOWN
    assert result.code == 3 and result.json()["exit_code"] == 3 and "nosuch" in result.json()["error"]
    result = server.cli("audit", "--json", "--nagios")
    assert result.code == 3 and result.json()["error"] == "--json and --nagios: choose one"

    plain = server.cli("status", "nosuch")
    assert plain.code == 2 and plain.out == ""  # without --json, standard output stays empty
