"""Server-rendered HTML: the clients x locations grid and a page per client.

Pure functions of :mod:`triplicate.web.data`'s JSON values, so the API and the
pages never disagree. Every value from the database or the configuration is
escaped.
"""

from __future__ import annotations

import time
from html import escape
from typing import Any
from urllib.parse import quote

from triplicate.state.db import PRIMARY
from triplicate.units import format_bytes, format_duration
from triplicate.web.charts import chart

STATE_WORDS = {"ok": "ok", "late": "late", "failed": "failed", "never": "not yet", "disabled": "disabled"}


def _page(title: str, body: str, refresh: int = 60) -> str:
    return (
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
        f"<meta http-equiv=\"refresh\" content=\"{refresh}\">"
        f"<title>{escape(title)}</title><link rel=\"stylesheet\" href=\"/static/style.css\"></head><body>"
        "<header><a href=\"/\">triplicate</a><span>" + escape(title) + "</span></header>"
        f"<main>{body}</main></body></html>\n"
    )


def _age(now: float, when: float | None) -> str:
    return "-" if when is None else f"{format_duration(max(0.0, now - when))} ago"


def dashboard(server: dict[str, Any], overview: dict[str, Any]) -> str:
    """The grid: one row per client, one column per location, each cell coloured by its state."""
    now = overview["time"]
    columns = [PRIMARY, *server["location_names"]]
    counts: dict[str, int] = {}
    for client in overview["clients"].values():
        counts[client["state"]] = counts.get(client["state"], 0) + 1
    summary = "".join(f'<span class="badge state-{state}">{counts[state]} {STATE_WORDS[state]}</span>'
                      for state in ("failed", "late", "never", "ok", "disabled") if state in counts)
    head = "".join(f"<th>{escape('primary' if name == PRIMARY else name)}</th>" for name in columns)
    rows = []
    for name, client in overview["clients"].items():
        cells = []
        for location in columns:
            entry = client["locations"].get(location)
            if entry is None:
                cells.append('<td class="cell state-none"></td>')
                continue
            state = entry["state"] if client["enabled"] else "disabled"
            cells.append(
                f'<td class="cell state-{state}" data-cell="{escape(name)}/{escape(location)}" '
                f'data-state="{state}" title="{escape(_cell_title(entry, now))}">{_cell_text(entry, now)}</td>')
        rows.append(f'<tr><th><a href="/client/{quote(name)}">{escape(name)}</a></th>{"".join(cells)}</tr>')
    body = (f'<div class="summary">{summary}<span class="muted">{len(overview["clients"])} clients on '
            f'{escape(server["public_host"])}, triplicate {escape(server["triplicate"])}</span></div>'
            f'<div class="scroll"><table class="grid"><thead><tr><th>client</th>{head}</tr></thead>'
            f'<tbody>{"".join(rows)}</tbody></table></div>')
    return _page("backups", body)


def _cell_text(entry: dict[str, Any], now: float) -> str:
    if entry["state"] == "never":
        return "-"
    newest = entry.get("newest_snapshot")
    return escape(format_duration(now - newest)) if newest is not None else "empty"


def _cell_title(entry: dict[str, Any], now: float) -> str:
    parts = [STATE_WORDS.get(entry["state"], entry["state"]), f"{entry.get('snapshots', 0)} snapshots",
             f"newest {_age(now, entry.get('newest_snapshot'))}"]
    if entry.get("lag_seconds"):
        parts.append(f"lag {format_duration(entry['lag_seconds'])}")
    if entry.get("error"):
        parts.append(f"error: {entry['error']}")
    if entry.get("audit"):
        parts.append(f"audit {entry['audit']}")
    return "; ".join(parts)


def client_page(detail: dict[str, Any]) -> str:
    """One client: its locations, plots, last audit, restore checks, retention, recovery drill and recent runs."""
    now = time.time()
    name = detail["client"]
    problems = "".join(f"<li>{escape(problem)}</li>" for problem in detail["problems"])
    rows = []
    for location, entry in detail["locations"].items():
        restore = entry.get("restore_check")
        rows.append(
            f'<tr><th>{escape("primary" if location == PRIMARY else location)}</th>'
            f'<td class="cell state-{entry["state"]}" data-cell="{escape(name)}/{escape(location)}">'
            f'{STATE_WORDS.get(entry["state"], entry["state"])}</td>'
            f'<td>{entry.get("snapshots", 0)}</td><td>{_age(now, entry.get("newest_snapshot"))}</td>'
            f'<td>{"-" if entry.get("lag_seconds") is None else format_duration(entry["lag_seconds"])}</td>'
            f'<td>{_age(now, entry.get("last_success"))}</td>'
            f'<td>{format_bytes(entry.get("bytes_copied_total") or 0)}</td>'
            f'<td>{escape(entry.get("audit") or "-")}</td>'
            f'<td>{_restore_cell(restore, now)}</td>'
            f'<td>{escape(entry.get("error") or "")}</td></tr>')
    charts = detail["charts"]
    x_range = (charts["since"], now)
    arrivals = chart("snapshot arrivals", {"primary": [[when, _hour(when)] for when in charts["arrivals"]]},
                     x_range, "hour of day (UTC)")
    latency = chart("replication latency", charts["latency"], x_range, "after the arrival on the server",
                    format_y=_seconds)
    daily = chart("bytes copied per day", charts["bytes_per_day"], x_range, "bytes",
                  format_y=lambda value: format_bytes(value), kind="bars")
    body = (
        f'<h1>{escape(name)} <span class="badge state-{detail["state"]}">'
        f'{STATE_WORDS.get(detail["state"], "")}</span></h1>'
        + (f'<ul class="problems">{problems}</ul>' if problems else "")
        + '<div class="scroll"><table><thead><tr><th>location</th><th>state</th><th>snapshots</th><th>newest</th>'
        '<th>lag</th><th>last success</th><th>copied</th><th>audit</th><th>restore check</th><th>error</th>'
        f'</tr></thead><tbody>{"".join(rows)}</tbody></table></div>'
        f'<h2>last 30 days</h2><div class="charts">{arrivals}{latency}{daily}</div>'
        + _endpoint(detail["endpoint"], now) + _checks(detail, now) + _runs(detail["runs"], now)
    )
    return _page(name, body)


def _seconds(value: float) -> str:
    """A latency for an axis: tenths of a second below 10 s, else a duration."""
    return f"{value:.1f}s" if value < 10 else format_duration(value)


def _hour(when: float) -> float:
    moment = time.gmtime(when)
    return moment.tm_hour + moment.tm_min / 60


def _endpoint(endpoint: dict[str, Any], now: float) -> str:
    services = "".join(
        f"<li>{escape(name)}: <b>{escape(service['state'])}</b>"
        + (f" for {format_duration(service['for_seconds'])}" if service["for_seconds"] is not None else "") + "</li>"
        for name, service in endpoint["services"].items())
    url = escape(endpoint["url"]) if endpoint["url"] else "no REST endpoint (no port)"
    return (f"<h2>endpoint</h2><ul><li>repository: <code>{url}</code></li>{services}"
            f"{_endpoint_statistics(endpoint['statistics'], now)}</ul>")


def _endpoint_statistics(statistics: dict[str, Any] | None, now: float) -> str:
    """What the endpoint counted, as list items: received, the repository's size, refusals, requests."""
    if statistics is None:
        return "<li>nothing received yet</li>"
    size = statistics["repository_bytes"]
    quota = statistics["quota_bytes"]
    refused = ", ".join(f"{escape(reason)} {count}" for reason, count in statistics["rejected"].items()) or "none"
    requests = ", ".join(f"{escape(kind)}: {count}" for kind, count in statistics["requests"].items()) or "none"
    return (f'<li data-endpoint="received">received {format_bytes(statistics["received_bytes"])} in '
            f'{statistics["files"]} files, the newest snapshot {_age(now, statistics["newest_snapshot"])}</li>'
            f'<li data-endpoint="repository">repository {"-" if size is None else format_bytes(size)}'
            f'{"" if quota is None else " of a quota of " + format_bytes(quota)}</li>'
            f'<li data-endpoint="failed-logins">failed logins: {statistics["failed_logins"]}; '
            f'refused uploads: {refused}</li><li data-endpoint="requests">requests: {requests}</li>')


def _checks(detail: dict[str, Any], now: float) -> str:
    audit, retention = detail["last_audit"], detail["retention"]
    parts = ["<h2>checks</h2><ul>"]
    parts.append("<li>last audit: never</li>" if audit is None else
                 f'<li>last audit: <b>{escape(audit["status"])}</b> {_age(now, audit["finished"])}'
                 f'{(": " + escape(audit["reason"])) if audit["reason"] else ""}</li>')
    for location, check in detail["restore_checks"].items():
        result = "passed" if check["ok"] else "failed"
        estimate = check.get("estimated_full_restore_seconds")
        parts.append(f"<li>restore check from {escape(location)}: <b>{result}</b> {_age(now, check['time'])}, "
                     f"{check['files_checked']} files"
                     + (f", full restore about {format_duration(estimate)}" if estimate else "") + "</li>")
    if not detail["restore_checks"]:
        parts.append("<li>restore check: never</li>")
    parts.append("<li>retention: never</li>" if retention is None else
                 f"<li>retention: <b>{'ok' if retention['ok'] else 'failed'}</b> {_age(now, retention['finished'])}, "
                 f"kept {retention['kept']}, removed {len(retention['removed'])}, reclaimed "
                 f"{format_bytes(retention['reclaimed_bytes'])}"
                 + (f": {escape(retention['error'])}" if retention["error"] else "") + "</li>")
    drill = detail["recover_drill"]
    parts.append("<li>recovery drill: never</li>" if drill is None else
                 f"<li>recovery drill: <b>{'passed' if drill['ok'] else 'failed'}</b> {_age(now, drill['time'])}, "
                 f"recovery time {format_duration(drill['recovery_seconds'])} for {format_bytes(drill['bytes'])}, "
                 f"restic check {escape(drill['restic_check'])}"
                 + (f": {escape(drill['error'])}" if drill["error"] else "") + "</li>")
    return "".join(parts) + "</ul>"


def _runs(runs: list[dict[str, Any]], now: float) -> str:
    rows = "".join(
        f"<tr><td>{_age(now, run['started'])}</td><td>{escape(run['location'])}</td><td>{escape(run['trigger'])}</td>"
        f"<td>{'ok' if run['ok'] else 'failed'}</td><td>{run['files_copied']}</td>"
        f"<td>{format_bytes(run['bytes_copied'])}</td><td>{escape(run['error'] or '')}</td></tr>" for run in runs[:20])
    return ("<h2>recent runs</h2><div class=\"scroll\"><table><thead><tr><th>started</th><th>location</th>"
            "<th>trigger</th><th>result</th><th>files</th><th>bytes</th><th>error</th></tr></thead>"
            f"<tbody>{rows}</tbody></table></div>")


def error_page(what: str, status: int = 404) -> str:
    """A page saying ``what`` went wrong: "not found" (404) or "unavailable" (503, the state database)."""
    return _page("not found" if status == 404 else "unavailable", f"<p>{escape(what)}</p>")


def _restore_cell(restore: dict[str, Any] | None, now: float) -> str:
    """The last restore check in a grid cell: "-", or "passed 3h" / "FAILED 3h"."""
    if restore is None:
        return "-"
    return ("passed " if restore["ok"] else "FAILED ") + _age(now, restore["time"])
