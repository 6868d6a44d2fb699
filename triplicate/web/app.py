"""The web service: aiohttp routes over :mod:`triplicate.web.data`, read-only.

One process for the whole server (its own runit service, ``_web``). Database
reads run in threads so that a slow disk never stalls other requests; SIGHUP
reloads the configuration; SIGTERM stops it.
"""

from __future__ import annotations

import asyncio
import json
import logging
import signal
import ssl
from collections.abc import Awaitable, Callable
from functools import partial
from importlib import resources
from pathlib import Path
from typing import Any

from aiohttp import web

from triplicate.config.model import Config
from triplicate.engine.schedule import Schedule
from triplicate.errors import CannotRun, TriplicateError, UsageError
from triplicate.metrics import (
    ChecksCollector,
    ReplicationCollector,
    exposition,
    parse_listen,
    registry,
)
from triplicate.web import data, pages
from triplicate.web.access import Logins, check_web_settings
from triplicate.web.api import HISTORY_KINDS, openapi
from triplicate.web.cache import Cached, DatabaseVersion

log = logging.getLogger("triplicate.web")
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


# How long an answer computed from the database is reused when nothing was committed
# meanwhile (docs/web.md, "Performance"): the staleness of a lag or an age, at most.
PAGE_MAX_AGE = 10.0
METRICS_MAX_AGE = 120.0


class Live:
    """The configuration in use (SIGHUP replaces it; aiohttp freezes the app's own items)
    and the answers cached for it."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.logins = Logins(config.web.users)
        self.version = DatabaseVersion(config.server.state_dir)
        self.pages = Cached(self.version, PAGE_MAX_AGE)
        self.metrics = Cached(self.version, METRICS_MAX_AGE)

    def overview(self) -> dict[str, Any]:
        config = self.config
        result: dict[str, Any] = self.pages.get(("overview", id(config)), lambda: data.overview(config))
        return result


LIVE: web.AppKey[Live] = web.AppKey("live", Live)
REGISTRIES: web.AppKey[Any] = web.AppKey("registries", object)


def _json(value: Any, status: int = 200) -> web.Response:
    return web.Response(text=json.dumps(value), status=status, content_type="application/json")


@web.middleware
async def _guard(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Login when ``[web] users`` is set; one-line JSON errors; headers that keep pages private."""
    logins = request.app[LIVE].logins
    if logins.required:
        user = await asyncio.to_thread(logins.check, request.headers.get("Authorization"))
        if user is None:
            return web.Response(status=401, text="login required\n",
                                headers={"WWW-Authenticate": 'Basic realm="triplicate", charset="UTF-8"'})
    try:
        response = await handler(request)
    except TriplicateError as error:  # an unknown client: 404; the state database unusable: 503
        status = 404 if isinstance(error, UsageError) else 503
        if status == 503:
            log.warning("%s: %s", request.path, error)
        if request.path.startswith("/api/"):
            response = _json({"version": data.API_VERSION, "error": str(error)}, status=status)
        elif request.path == "/metrics":  # (Prometheus shows the scrape failed, with this line)
            response = web.Response(text=f"{error}\n", status=status)
        else:
            response = web.Response(text=pages.error_page(str(error), status), status=status,
                                    content_type="text/html")
    response.headers.setdefault("X-Content-Type-Options", "nosniff")
    response.headers.setdefault("Cache-Control", "no-store")
    response.headers.setdefault("Content-Security-Policy", "default-src 'self'; style-src 'self'")
    return response


async def _in_thread(function: Callable[..., Any], *args: Any) -> Any:
    return await asyncio.to_thread(function, *args)


async def dashboard(request: web.Request) -> web.Response:
    live = request.app[LIVE]
    overview = await _in_thread(live.overview)
    return web.Response(text=pages.dashboard(data.server_info(live.config), overview), content_type="text/html")


async def client_page(request: web.Request) -> web.Response:
    detail = await _in_thread(data.client_detail, request.app[LIVE].config, request.match_info["name"])
    return web.Response(text=pages.client_page(detail), content_type="text/html")


async def style(request: web.Request) -> web.Response:
    text = resources.files("triplicate.web").joinpath("static/style.css").read_text()
    return web.Response(text=text, content_type="text/css", headers={"Cache-Control": "max-age=3600"})


async def metrics_body(app: web.Application) -> bytes:
    """The state's metrics (cached, see METRICS_MAX_AGE) followed by this process's own, always fresh."""
    live = app[LIVE]
    state, process = app[REGISTRIES]
    cached: bytes = await _in_thread(live.metrics.get, ("metrics", id(live.config)), partial(exposition, state))
    own: bytes = await _in_thread(exposition, process)
    return cached + own


async def metrics(request: web.Request) -> web.Response:
    return web.Response(body=await metrics_body(request.app),
                        headers={"Content-Type": "text/plain; version=0.0.4; charset=utf-8"})


async def api_server(request: web.Request) -> web.Response:
    return _json(data.server_info(request.app[LIVE].config))


async def api_clients(request: web.Request) -> web.Response:
    return _json(await _in_thread(request.app[LIVE].overview))


async def api_client(request: web.Request) -> web.Response:
    return _json(await _in_thread(data.client_detail, request.app[LIVE].config, request.match_info["name"]))


async def api_locations(request: web.Request) -> web.Response:
    return _json(data.locations(request.app[LIVE].config))


async def api_history(kind: str, request: web.Request) -> web.Response:
    try:
        limit = int(request.query.get("limit", "100"))
        if not 1 <= limit <= 1000:
            raise ValueError
    except ValueError:
        return _json({"version": data.API_VERSION, "error": "limit: expected an integer from 1 to 1000"}, 400)
    return _json(await _in_thread(data.history, request.app[LIVE].config, kind, request.query.get("client"), limit))


async def api_openapi(request: web.Request) -> web.Response:
    return _json(openapi())


def build_app(config: Config) -> web.Application:
    """The application for ``config`` (routes, login, metrics registry)."""
    app = web.Application(middlewares=[_guard])
    app[LIVE] = Live(config)

    def pairs() -> list[tuple[str, str]]:
        current = app[LIVE].config
        return [(name, location) for name, client in sorted(current.clients.items()) if client.enabled
                for location in client.replicate_to]

    def clients() -> list[str]:
        return sorted(name for name, client in app[LIVE].config.clients.items() if client.enabled)

    def schedule(client: str) -> Schedule:
        return Schedule.of_client(app[LIVE].config.clients, client)

    state_dir = config.server.state_dir
    app[REGISTRIES] = (registry(ReplicationCollector(state_dir, pairs, schedule=schedule),
                                ChecksCollector(state_dir, clients),
                                process=False),
                       registry(process=True, build=False))
    app.router.add_get("/", dashboard)
    app.router.add_get("/client/{name}", client_page)
    app.router.add_get("/static/style.css", style)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/api/v1/server", api_server)
    app.router.add_get("/api/v1/clients", api_clients)
    app.router.add_get("/api/v1/clients/{name}", api_client)
    app.router.add_get("/api/v1/locations", api_locations)
    app.router.add_get("/api/v1/openapi.json", api_openapi)
    for kind in HISTORY_KINDS:
        app.router.add_get(f"/api/v1/{kind}", partial(api_history, kind))
    return app


def tls_context(config: Config) -> ssl.SSLContext | None:
    """TLS with the server's certificate (server.tls_cert/tls_key), or None when it has none."""
    cert, key = config.server.tls_cert, config.server.tls_key
    if cert is None or key is None:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    _load_certificate(context, cert, key)
    return context


def _load_certificate(context: ssl.SSLContext, cert: Path, key: Path) -> None:
    """Read the certificate and key into ``context``; raises CannotRun naming the file."""
    try:
        context.load_cert_chain(cert, key)
    except (OSError, ssl.SSLError) as error:
        raise CannotRun(f"server.tls_cert/tls_key: cannot load {cert}: {error}") from None


class Listener:
    """The web service's listening socket: ``[web] listen`` and the server's TLS certificate.

    A reload (:meth:`apply`) rebinds to a new address (the new socket is bound before
    the old one closes, so a taken address keeps the old one serving), switches TLS on
    or off, and reads the certificate files again (a renewed certificate serves the
    next connection; open connections keep theirs).
    """

    def __init__(self, runner: web.AppRunner) -> None:
        self._runner = runner
        self._site: web.TCPSite | None = None
        self.listen = ""
        self._tls: ssl.SSLContext | None = None

    @property
    def scheme(self) -> str:
        return "https" if self._tls is not None else "http"

    async def open(self, config: Config) -> None:
        """Listen as ``config`` says; raises CannotRun when the address is taken or TLS cannot load."""
        assert config.web.listen is not None
        host, port = parse_listen(config.web.listen, "web.listen:")
        tls = tls_context(config)
        site = web.TCPSite(self._runner, host, port, ssl_context=tls)
        try:
            await site.start()
        except OSError as error:
            await site.stop()
            raise CannotRun(f"web.listen {config.web.listen}: {error.strerror or error}") from None
        self._site, self.listen, self._tls = site, config.web.listen, tls

    async def apply(self, config: Config) -> str | None:
        """Listen as the reloaded ``config`` says; return what changed (None: nothing).

        Raises CannotRun when the new address or certificate cannot be used; the old socket
        then keeps serving as before.
        """
        assert config.web.listen is not None
        if self._site is None:  # a HUP while the first socket opens: that one is used until the next
            return None
        fresh_tls = tls_context(config)  # raises before anything is touched
        if config.web.listen == self.listen and (fresh_tls is None) == (self._tls is None):
            if self._tls is None or fresh_tls is None:
                return None
            cert, key = config.server.tls_cert, config.server.tls_key
            assert cert is not None and key is not None
            # Into the running socket's context: the next handshake uses it (the files may have
            # been replaced again since tls_context read them: then this raises).
            _load_certificate(self._tls, cert, key)
            return "certificate read again"
        old_site, old_listen, old_tls = self._site, self.listen, self._tls
        if config.web.listen == old_listen:  # TLS switched on or off on the same address: close first
            await old_site.stop()
            try:
                await self.open(config)
            except CannotRun:
                host, port = parse_listen(old_listen, "web.listen:")
                self._site = web.TCPSite(self._runner, host, port, ssl_context=old_tls)
                await self._site.start()
                raise
        else:
            await self.open(config)  # bound before the old socket closes
            await old_site.stop()
        return f"now serving on {self.scheme}://{self.listen} (was {old_listen})"


async def serve(config: Config, config_path: Path, reload: Callable[[], Config]) -> None:
    """Serve until SIGTERM or SIGINT; SIGHUP reloads the configuration (a bad one is logged, kept out),
    including a new ``[web] listen``, TLS certificate or users.

    Raises ConfigError for a bad ``[web]``, CannotRun when the address is taken or TLS cannot load.
    """
    check_web_settings(config, str(config_path))
    app = build_app(config)
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    listener = Listener(runner)
    stopped = asyncio.Event()
    loop = asyncio.get_running_loop()
    reloads: list[asyncio.Task[None]] = []

    async def apply(fresh: Config) -> None:
        live = app[LIVE]
        live.config, live.logins = fresh, Logins(fresh.web.users)
        live.version.close()
        try:
            changed = await listener.apply(fresh)
        except CannotRun as error:
            log.error("reload: %s; still serving on %s://%s", error, listener.scheme, listener.listen)
            return
        log.info("reloaded %s%s", config_path, f": {changed}" if changed else "")

    def on_hup() -> None:
        try:
            fresh = reload()
            check_web_settings(fresh, str(config_path))
            tls_context(fresh)  # a certificate that does not load refuses the whole file
        except TriplicateError as error:
            log.error("reload: keeping the running configuration: %s", error)
            return
        if reloads and not reloads[-1].done():  # one at a time, in the order the signals came
            previous = reloads[-1]

            async def after() -> None:
                await asyncio.wait([previous])
                await apply(fresh)

            reloads.append(loop.create_task(after()))
        else:
            reloads.append(loop.create_task(apply(fresh)))
        del reloads[:-1]

    # Before the socket opens: a service that answers is one a HUP reloads (never kills).
    for signal_number in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signal_number, stopped.set)
    loop.add_signal_handler(signal.SIGHUP, on_hup)
    try:
        await listener.open(config)
    except CannotRun:
        await runner.cleanup()
        raise
    # The first visitor should not pay for the first grid and scrape of a large server.
    warm = asyncio.gather(asyncio.to_thread(app[LIVE].overview), metrics_body(app), return_exceptions=True)
    log.warning("web: serving on %s://%s (%d clients)", listener.scheme, listener.listen, len(config.clients))
    try:
        await stopped.wait()
    finally:
        warm.cancel()
        for task in reloads:
            task.cancel()
        await runner.cleanup()
