"""Every --json output: one object, "version" first, "@primary" for the primary, errors as JSON too."""

from __future__ import annotations

import json

from tests.support.repository import Server


def test_every_json_output_carries_the_version_first(server: Server) -> None:
    outputs = {
        "sync": server.cli("sync", "web01", "--json"),
        "status": server.cli("status", "--json"),
        "audit": server.cli("audit", "--json"),
        "client list": server.cli("client", "list", "--json"),
        "config check": server.cli("config", "check", "--json"),
        "restore-check": server.cli("restore-check", "web01", "--files", "1", "--json"),
    }
    for command, result in outputs.items():
        # (status exits 1 here: nothing supervises the services)
        assert result.code == (1 if command == "status" else 0), (command, result.err)
        data = json.loads(result.out)
        assert next(iter(data)) == "version" and data["version"] == 1, command
    status = outputs["status"].json()["clients"][0]
    assert [row["location"] for row in status["locations"]] == ["@primary", "usb", "nas"]
    assert list(outputs["restore-check"].json()["locations"]) == ["@primary", "usb", "nas"]


def test_errors_are_json_when_json_was_asked(server: Server) -> None:
    result = server.cli("status", "nosuch", "--json")
    assert result.code == 2 and "unknown client 'nosuch'" in result.err
    assert result.json() == {"version": 1, "ok": False, "error": result.err.strip().removeprefix("triplicate: "),
                             "exit_code": 2}

    result = server.cli("retention", "web01", "--json")  # no retention policy configured
    assert result.code != 0 and result.out, "retention --json must answer even when it cannot run"
    data = result.json()
    assert data["version"] == 1 and data["ok"] is False and data["error"] and data["exit_code"] == result.code

    result = server.cli("sync", "web01", "--json", "--bogus")
    assert result.code == 2 and result.json()["error"].startswith("No such option")

    result = server.cli("audit", "nosuch", "--json")  # a monitoring command: UNKNOWN
    assert result.code == 3 and result.json()["exit_code"] == 3 and "nosuch" in result.json()["error"]

    plain = server.cli("status", "nosuch")
    assert plain.code == 2 and plain.out == ""  # without --json, standard output stays empty
