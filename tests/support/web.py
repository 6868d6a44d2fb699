"""Helpers for tests of the web service: a site with a failing location, the service as a real process,
HTTP requests, and a real headless chromium driven through its DevTools protocol."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.support.ports import accepts_connections, free_port_range
from tests.support.repository import Server
from tests.support.server import Site
from tests.support.wait import wait_until

CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def three_clients(server: Server, web: str = "") -> int:
    """web01 and web03 replicate fine, web02's usb fails (a file where its folder goes); return the port.

    ``web`` is extra text for the [web] section.
    """
    port = free_port_range(1)[0]
    for name in ("web02", "web03"):
        shutil.copytree(server.primary("web01"), server.primary(name))
    text = server.config_path.read_text()
    for name in ("web02", "web03"):
        text += f'\n[clients.{name}]\nreplicate_to = ["usb", "nas"]\npassword_file = "{server.password_file}"\n'
    text += f'\n[web]\nlisten = "127.0.0.1:{port}"\n{web}'
    server.config_path.write_text(text)
    (server.root / "usb" / "web02").write_text("not a folder\n")
    assert server.cli("sync", "web01").code == 0
    assert server.cli("sync", "web03").code == 0
    assert server.cli("sync", "web02").code == 1
    return port


@dataclass
class WebService:
    process: subprocess.Popen[bytes]
    base: str

    def get(self, path: str, headers: dict[str, str] | None = None, context: Any = None) -> tuple[int, bytes, Any]:
        """(status, body, headers) of one GET; never raises for an HTTP error status."""
        request = urllib.request.Request(self.base + path, headers=headers or {})
        try:
            with urllib.request.urlopen(request, timeout=20, context=context) as response:
                return response.status, response.read(), response.headers
        except urllib.error.HTTPError as error:
            return error.code, error.read(), error.headers

    def json(self, path: str) -> Any:
        status, body, _ = self.get(path)
        assert status == 200, (path, status, body[:300])
        return json.loads(body)


@contextlib.contextmanager
def web_service(server: Server | Site, port: int, scheme: str = "http") -> Iterator[WebService]:
    """``triplicate web`` as its own process (as runit runs it), stopped with SIGTERM afterwards."""
    process = subprocess.Popen([sys.executable, "-m", "triplicate", "-c", str(server.config_path), "web"],
                               stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        wait_until(lambda: accepts_connections(port) or process.poll() is not None, 20, "the web service to listen")
        assert process.poll() is None, process.stderr.read().decode()  # type: ignore[union-attr]
        yield WebService(process, f"{scheme}://127.0.0.1:{port}")
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


class Browser:
    """A real headless chromium, driven through the DevTools protocol (aiohttp's websocket client)."""

    def __init__(self, profile: Path) -> None:
        self.profile = profile
        self.process = subprocess.Popen(
            ["chromium", *CHROMIUM_FLAGS, f"--user-data-dir={profile}", "--remote-debugging-port=0",
             "--remote-debugging-address=127.0.0.1", "--window-size=1280,900", "about:blank"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        active = profile / "DevToolsActivePort"
        wait_until(lambda: active.exists() and len(active.read_text().split()) == 2, 60, "chromium's DevTools port")
        self.port = int(active.read_text().split()[0])

    def close(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

    def visit(self, url: str, expressions: dict[str, str], screenshot: Path | None = None,
              phone: bool = False) -> dict[str, Any]:
        """Load ``url`` (with ``phone``, in a 390 px wide mobile viewport), then evaluate each JavaScript
        expression; return name -> value (and save a PNG)."""
        return asyncio.run(self._visit(url, expressions, screenshot, phone))

    async def _visit(self, url: str, expressions: dict[str, str], screenshot: Path | None,
                     phone: bool) -> dict[str, Any]:
        import aiohttp

        async with aiohttp.ClientSession() as session:
            async with session.put(f"http://127.0.0.1:{self.port}/json/new?about:blank") as response:
                target = await response.json(content_type=None)
            async with session.ws_connect(target["webSocketDebuggerUrl"], max_msg_size=0) as socket_:
                counter = iter(range(1, 10_000))

                async def call(method: str, **params: Any) -> Any:
                    number = next(counter)
                    await socket_.send_json({"id": number, "method": method, "params": params})
                    while True:
                        message = await asyncio.wait_for(socket_.receive_json(), 30)
                        if message.get("id") == number:
                            assert "error" not in message, message
                            return message["result"]
                        if message.get("method") == "Page.loadEventFired":
                            loaded.set()

                loaded = asyncio.Event()
                if phone:
                    await call("Emulation.setDeviceMetricsOverride", width=390, height=844, deviceScaleFactor=2,
                               mobile=True)
                await call("Page.enable")
                await call("Page.navigate", url=url)
                deadline = time.monotonic() + 30
                while not loaded.is_set() and time.monotonic() < deadline:
                    message = await asyncio.wait_for(socket_.receive_json(), 30)
                    if message.get("method") == "Page.loadEventFired":
                        loaded.set()
                assert loaded.is_set(), f"{url} did not load"
                results = {}
                for name, expression in expressions.items():
                    value = await call("Runtime.evaluate", expression=expression, returnByValue=True)
                    results[name] = value["result"].get("value")
                if screenshot is not None:
                    image = await call("Page.captureScreenshot", format="png", captureBeyondViewport=True)
                    screenshot.write_bytes(base64.b64decode(image["data"]))
                return results


@contextlib.contextmanager
def browser() -> Iterator[Browser]:
    profile = Path(tempfile.mkdtemp(prefix="triplicate-chromium-"))
    instance = Browser(profile)
    try:
        yield instance
    finally:
        instance.close()
        shutil.rmtree(profile, ignore_errors=True)


def dump_dom(url: str) -> str:
    """The page's DOM after load, from ``chromium --headless --dump-dom`` (a separate, real browser)."""
    with tempfile.TemporaryDirectory(prefix="triplicate-chromium-") as profile:
        result = subprocess.run(["chromium", *CHROMIUM_FLAGS, f"--user-data-dir={profile}", "--dump-dom", url],
                                capture_output=True, text=True, timeout=120, env={**os.environ, "HOME": profile},
                                check=False)
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout
