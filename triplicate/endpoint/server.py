"""Running the endpoint: one listener per client, opened, changed and closed as the configuration says.

Per-client mode runs one process per client (``triplicate serve alpha`` in the
client's runit unit); shared mode runs one process for every enabled client
(``triplicate serve``), each client on its own port. Either way SIGHUP reloads
the configuration: a client newly enabled gets its listener, a disabled or
removed one loses it, and the others are not touched. SIGTERM and SIGINT stop.
Counts go to the state database every few seconds and at the stop.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import time
from dataclasses import dataclass, replace
from pathlib import Path

from aiohttp import web

from triplicate.config.load import load_config
from triplicate.config.model import Config
from triplicate.endpoint.announce import Announcer
from triplicate.endpoint.app import ClientEndpoint, make_app, server_ssl_context
from triplicate.endpoint.auth import Htpasswd
from triplicate.endpoint.repository import Repository
from triplicate.endpoint.settings import ListenerSettings, wanted_listeners
from triplicate.errors import CannotRun, TriplicateError
from triplicate.state.endpoint import EndpointState

log = logging.getLogger("triplicate.endpoint")

FLUSH_EVERY = 5.0  # seconds between writes of the counts to the state database
RECOUNT_EVERY = 600.0  # seconds between walks of a repository for its size (retention deletes files)


@dataclass
class Listener:
    settings: ListenerSettings
    endpoint: ClientEndpoint
    runner: web.AppRunner
    counted_at: float


class EndpointServer:
    """The listeners of one process, kept in step with the configuration."""

    def __init__(self, config_path: Path, config: Config, names: tuple[str, ...]) -> None:
        self.config_path = config_path
        self.config = config
        self.names = names
        self.listeners: dict[str, Listener] = {}
        self.announcer = Announcer(config.server.state_dir)
        self._stop = asyncio.Event()
        self._state: EndpointState | None = None

    async def run(self) -> None:
        """Open every listener, serve until SIGTERM/SIGINT, reload on SIGHUP; raises CannotRun
        when a client's port cannot be opened in per-client mode (runit retries)."""
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, self._stop.set)
        loop.add_signal_handler(signal.SIGHUP, lambda: asyncio.ensure_future(self.reload()))
        self._state = await loop.run_in_executor(None, EndpointState, self.config.server.state_dir)
        try:
            failed = await self.apply(self.config)
            if failed and self.names:
                raise CannotRun(f"could not open the endpoint of {', '.join(failed)}")
            log.info("serving %d client(s): %s", len(self.listeners), ", ".join(
                f"{name} on {listener.settings.port}" for name, listener in self.listeners.items()) or "none")
            while not self._stop.is_set():
                try:
                    await asyncio.wait_for(self._stop.wait(), FLUSH_EVERY)
                except TimeoutError:
                    pass
                await self.flush()
                if not self.names:
                    await self._open_missing()
        finally:
            for name in list(self.listeners):
                await self._close(name)
            await self.flush()
            self.announcer.close()
            if self._state is not None:
                self._state.close()

    async def reload(self) -> None:
        """SIGHUP: apply the configuration file again; a bad file is logged and the old one kept."""
        try:
            config = load_config(self.config_path)
            wanted_listeners(config, self.names)
        except TriplicateError as error:
            log.error("reload: %s; keeping the previous configuration", str(error).replace("\n", "; "))
            return
        self.config = config
        await self.apply(config)
        log.info("reload: configuration applied, %d client(s) served", len(self.listeners))

    async def apply(self, config: Config) -> list[str]:
        """Open, reopen and close listeners to match ``config``; return the clients that failed to open."""
        wanted = wanted_listeners(config, self.names)
        for name, listener in list(self.listeners.items()):
            settings = wanted.get(name)
            if settings is None or replace(settings, quota=None) != replace(listener.settings, quota=None):
                await self._close(name)
            elif settings.quota != listener.settings.quota:
                listener.endpoint.repository.quota = settings.quota
                listener.settings = settings
        failed = []
        for name, settings in wanted.items():
            if name not in self.listeners and not await self._open(settings):
                failed.append(name)
        return failed

    async def _open_missing(self) -> None:
        """Shared mode: try again the listeners that could not be opened (a port that was busy)."""
        for name, settings in wanted_listeners(self.config, self.names).items():
            if name not in self.listeners:
                await self._open(settings)

    async def _open(self, settings: ListenerSettings) -> bool:
        loop = asyncio.get_running_loop()
        repository = Repository(settings.repository, settings.quota)
        await loop.run_in_executor(None, repository.discard_partial_uploads)
        endpoint = ClientEndpoint(settings.client, repository, Htpasswd(settings.htpasswd), settings.idle_timeout,
                                  self.announcer, client_certificates=settings.tls_client_ca is not None)
        runner = web.AppRunner(make_app(endpoint), access_log=None, handle_signals=False,
                               keepalive_timeout=settings.idle_timeout, shutdown_timeout=5.0)
        await runner.setup()
        try:
            context = None
            if settings.tls_cert is not None and settings.tls_key is not None:
                context = server_ssl_context(settings.tls_cert, settings.tls_key, settings.tls_client_ca)
            site = web.TCPSite(runner, settings.host, settings.port, ssl_context=context, reuse_address=True)
            await site.start()
        except OSError as error:
            await runner.cleanup()
            log.error("%s: cannot listen on %s:%d: %s", settings.client, settings.host, settings.port,
                      error.strerror or error)
            return False
        self.listeners[settings.client] = Listener(settings, endpoint, runner, 0.0)
        log.info("%s: listening on port %d", settings.client, settings.port)
        return True

    async def _close(self, name: str) -> None:
        listener = self.listeners.pop(name)
        await listener.runner.cleanup()
        await self._flush_one(listener)
        log.info("%s: listener closed", name)

    async def flush(self) -> None:
        """Add every listener's counts to the state database."""
        for listener in list(self.listeners.values()):
            await self._flush_one(listener)

    async def _flush_one(self, listener: Listener) -> None:
        if self._state is None:
            return
        loop = asyncio.get_running_loop()
        now = time.time()
        repository = listener.endpoint.repository
        if now - listener.counted_at >= RECOUNT_EVERY:
            repository.forget_usage()
            listener.counted_at = now
        counts, newest = listener.endpoint.take_counts()
        state = self._state
        try:
            used = await loop.run_in_executor(None, repository.used) if repository.exists() else None
            await loop.run_in_executor(None, state.add, listener.settings.client, counts, newest, used, now)
        except Exception as error:  # a busy or unwritable database must not stop the serving
            log.error("%s: could not record the counts: %s", listener.settings.client, error)
