"""The JSON API's description, served at ``/api/v1/openapi.json`` (OpenAPI 3.1)."""

from __future__ import annotations

from typing import Any

from triplicate import __version__
from triplicate.actions import JSON_VERSION

HISTORY_KINDS = ("runs", "audits", "restore-checks", "retention-runs")


def _get(summary: str, schema: dict[str, Any], parameters: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    return {"get": {
        "summary": summary, "parameters": parameters or [],
        "responses": {
            "200": {"description": "OK", "content": {"application/json": {"schema": schema}}},
            "401": {"description": "login required ([web] users)"},
            "404": {"description": "unknown client", "content": {"application/json": {
                "schema": {"$ref": "#/components/schemas/Error"}}}},
        }}}


CLIENT_PARAMETER = {"name": "client", "in": "query", "required": False, "schema": {"type": "string"},
                    "description": "only this client"}
LIMIT_PARAMETER = {"name": "limit", "in": "query", "required": False,
                   "schema": {"type": "integer", "minimum": 1, "maximum": 1000, "default": 100}}
NAME_PARAMETER = {"name": "name", "in": "path", "required": True, "schema": {"type": "string"}}

LOCATION_STATE = {
    "type": "object",
    "properties": {
        "state": {"enum": ["ok", "never", "late", "failed"]},
        "up": {"type": ["boolean", "null"], "description": "the last run succeeded; null: never ran"},
        "snapshots": {"type": "integer"},
        "newest_snapshot": {"type": ["number", "null"], "description": "arrival of the newest snapshot held (Unix)"},
        "lag_seconds": {"type": ["number", "null"]},
        "last_success": {"type": ["number", "null"]}, "last_attempt": {"type": ["number", "null"]},
        "error": {"type": ["string", "null"]}, "bytes_copied_total": {"type": "integer"},
        "failed_runs": {"type": "integer"},
        "audit": {"enum": ["OK", "WARNING", "CRITICAL", "UNKNOWN", None]},
        "restore_check": {"type": ["object", "null"]},
    },
    "required": ["state"],
}
CLIENT = {
    "type": "object",
    "properties": {
        "enabled": {"type": "boolean"}, "port": {"type": ["integer", "null"]},
        "state": {"enum": ["ok", "never", "late", "failed", "disabled"]},
        "problems": {"type": "array", "items": {"type": "string"}},
        "audit": {"type": ["object", "null"]},
        "locations": {"type": "object", "additionalProperties": {"$ref": "#/components/schemas/LocationState"},
                      "description": "by location name; '@primary' is the client's own repository"},
    },
    "required": ["enabled", "state", "problems", "locations"],
    "description": "a client, found under its name (in /api/v1/clients) or named by 'client' (its own page)",
}

COUNT_BY_NAME = {"type": "object", "additionalProperties": {"type": "integer"}}
ENDPOINT = {
    "type": "object",
    "properties": {
        "url": {"type": ["string", "null"], "description": "the repository URL, without password"},
        "port": {"type": ["integer", "null"]},
        "services": {"type": "object", "description": "rest and syncd: their runit state and for how long",
                     "additionalProperties": {"type": "object", "properties": {
                         "state": {"type": "string"}, "for_seconds": {"type": ["number", "null"]}}}},
        "statistics": {
            "type": ["object", "null"], "description": "what the endpoint counted; null until it first reported",
            "properties": {
                "received_bytes": {"type": "integer"}, "files": {"type": "integer"},
                "newest_snapshot": {"type": ["number", "null"]},
                "repository_bytes": {"type": ["integer", "null"]}, "quota_bytes": {"type": ["integer", "null"]},
                "failed_logins": {"type": "integer"},
                "rejected": {**COUNT_BY_NAME, "description": "refused uploads by reason"},
                "requests": {**COUNT_BY_NAME, "description": "requests by 'METHOD STATUS'"},
                "updated": {"type": "number"},
            },
            "required": ["received_bytes", "files", "repository_bytes", "failed_logins", "rejected", "requests"],
        },
    },
    "required": ["url", "port", "services", "statistics"],
}


def openapi() -> dict[str, Any]:
    """The OpenAPI document of every ``/api/v1`` endpoint."""
    versioned = {"version": {"const": JSON_VERSION}}
    paths: dict[str, Any] = {
        "/api/v1/server": _get("The server: version, host, client count, location names", {
            "type": "object", "properties": {**versioned, "triplicate": {"type": "string"},
                                             "client_count": {"type": "integer"},
                                             "enabled_client_count": {"type": "integer"},
                                             "location_names": {"type": "array", "items": {"type": "string"}}}}),
        "/api/v1/clients": _get("Every client, each location judged", {
            "type": "object", "properties": {**versioned, "time": {"type": "number"},
                                             "clients": {"type": "object", "description": "by client name",
                                                         "additionalProperties": {
                                                             "$ref": "#/components/schemas/Client"}}}}),
        "/api/v1/clients/{name}": _get(
            "One client: its locations, last audit, restore checks, retention, last recovery drill, recent runs, "
            "chart series",
            {"allOf": [{"$ref": "#/components/schemas/Client"},
                       {"type": "object", "properties": {**versioned, "client": {"type": "string"},
                                                         "endpoint": {"$ref": "#/components/schemas/Endpoint"}},
                        "required": ["client", "endpoint"]}]}, [NAME_PARAMETER]),
        "/api/v1/locations": _get("Every location: kind, where (never a credential), clients", {
            "type": "object", "properties": {**versioned, "locations": {"type": "object",
                                                                         "description": "by location name"}}}),
    }
    for kind in HISTORY_KINDS:
        key = kind.replace("-", "_")
        paths[f"/api/v1/{kind}"] = _get(f"The newest {kind.replace('-', ' ')}, newest first", {
            "type": "object", "properties": {**versioned, key: {"type": "array", "items": {"type": "object"}}}},
            [CLIENT_PARAMETER, LIMIT_PARAMETER])
    return {
        "openapi": "3.1.0",
        "info": {"title": "triplicate", "version": __version__,
                 "description": "Read-only state of a triplicate backup server (docs/web.md)."},
        "paths": paths,
        "components": {
            "schemas": {"Client": CLIENT, "LocationState": LOCATION_STATE, "Endpoint": ENDPOINT,
                        "Error": {"type": "object", "properties": {**versioned, "error": {"type": "string"}},
                                  "required": ["error"]}},
            "securitySchemes": {"basic": {"type": "http", "scheme": "basic"}},
        },
    }
