"""Heartbeat pings for dead-man's-switch services (healthchecks.io and compatible), per client.

With ``heartbeat_url`` set on a client, the daemon pings ``URL/start`` when a
replication of the client (or one of its scheduled checks) begins, ``URL`` when
it ended well and ``URL/fail`` when it did not, with a one-line body saying why.
A client without a backup within ``expect_backup_every`` pings ``URL/fail`` too:
the service then alerts on a failure, and on silence when the server itself is down.

Pings go out in order on one background thread and never raise: an unreachable
service is a warning in the log, never a failed backup. URLs are never logged
(they carry the check's secret token).
"""

from __future__ import annotations

import logging
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Literal

from triplicate.config.model import Config

log = logging.getLogger("triplicate.heartbeat")

Signal = Literal["start", "success", "fail"]
TIMEOUT = 10.0
_pinger = ThreadPoolExecutor(max_workers=1, thread_name_prefix="heartbeat")
_lock = threading.Lock()
_replicating: set[str] = set()  # clients whose replication pinged /start and not yet its end


def is_push_monitor(base: str) -> bool:
    """Whether ``base`` is an Uptime Kuma push URL (``.../api/push/<token>``), which takes
    ``?status=up|down&msg=...`` instead of /start and /fail."""
    return "/api/push/" in urllib.parse.urlsplit(base).path


def url_for(base: str, signal: Signal, body: str = "") -> str | None:
    """The URL to ping: ``base`` for success, ``base/start`` or ``base/fail``; for an Uptime Kuma
    push URL ``base?status=up|down&msg=body`` (None for start, which it has no word for)."""
    if is_push_monitor(base):
        if signal == "start":
            return None
        query = urllib.parse.urlencode({"status": "up" if signal == "success" else "down", "msg": body[:200]})
        return f"{base.split('?', 1)[0]}?{query}"
    return base if signal == "success" else f"{base.rstrip('/')}/{signal}"


def ping_now(base: str, signal: Signal, body: str = "") -> bool:
    """POST ``body`` to the ping URL of ``signal`` (GET for a push monitor); return whether the
    service answered 2xx (True when there is nothing to ping)."""
    url = url_for(base, signal, body)
    if url is None:
        return True
    push = is_push_monitor(base)
    request = urllib.request.Request(url, data=None if push else body.encode()[:10_000],
                                     method="GET" if push else "POST",
                                     headers={"Content-Type": "text/plain; charset=utf-8",
                                              "User-Agent": "triplicate"})
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT) as response:
            status: int = response.status
            return 200 <= status < 300
    except (urllib.error.URLError, OSError, ValueError) as error:
        log.warning("heartbeat: could not ping (%s): %s", signal, type(error).__name__)
        return False


def ping(config: Config, client: str, signal: Signal, body: str = "") -> None:
    """Ping the client's heartbeat in the background (nothing when it has none); never raises."""
    settings = config.clients.get(client)
    if settings is None or settings.heartbeat_url is None:
        return
    _pinger.submit(ping_now, settings.heartbeat_url, signal, body)


def replication_started(config: Config, client: str) -> None:
    """A run of the client begins: ``/start``, once until the client's runs have all ended."""
    with _lock:
        if client in _replicating:
            return
        _replicating.add(client)
    ping(config, client, "start", "replication started")


def replication_settled(config: Config, client: str, outcomes: Mapping[Any, Any]) -> None:
    """Every run of the client has ended: success when each location's last run succeeded, else fail.

    ``outcomes`` maps a location to its last run's outcome (with ``ok`` and ``error``).
    """
    with _lock:
        if client not in _replicating:
            return
        _replicating.discard(client)
    failed = {location: outcome.error for location, outcome in outcomes.items()
              if location is not None and not outcome.ok and not getattr(outcome, "interrupted", False)}
    if failed:
        ping(config, client, "fail", "; ".join(f"{location}: {error}" for location, error in sorted(failed.items())))
    else:
        ping(config, client, "success", f"replicated to {sum(1 for location in outcomes if location)} location(s)")


def freshness_interval(config: Config, client: str) -> float | None:
    """How often to look for a missing backup: a quarter of expect_backup_every (5 s to 1 h);
    None (never) without heartbeat_url or expect_backup_every."""
    expect = config.settings(client).expect_backup_every
    if config.client(client).heartbeat_url is None or not isinstance(expect, (int, float)):
        return None
    return max(5.0, min(3600.0, float(expect) / 4))


def check_freshness(config: Config, client: str, now: float | None = None) -> bool:
    """Ping ``/fail`` when the client's newest snapshot is older than expect_backup_every
    (or it has none); return whether it was fresh."""
    from triplicate.state.replication import ReplicationState
    from triplicate.units import format_duration

    expect = config.settings(client).expect_backup_every
    if not isinstance(expect, (int, float)):
        return True
    now = time.time() if now is None else now
    with ReplicationState.opened(config.server.state_dir, create=False) as state:
        newest = max(state.known_snapshots(client).values(), default=None)
    if newest is not None and now - newest <= expect:
        return True
    age = "no backup yet" if newest is None else f"newest backup {format_duration(now - newest)} old"
    ping(config, client, "fail", f"{age}: more than expect_backup_every ({format_duration(float(expect))})")
    return False
