"""The restic REST protocol (v1 and v2) for one client's repository, as an aiohttp application.

Every request is authenticated first (401), its raw path parsed (400), the
repository checked to be the client's own (403); then:

    POST   /<repo>/?create=true      create the folders (403 when it has a config already)
    HEAD|GET|POST /<repo>/config     the config file (POST: only when there is none)
    GET    /<repo>/<type>/           listing: v1 a JSON list of names, v2 [{"name","size"}]
    HEAD|GET /<repo>/<type>/<id>     a file, GET with Range
    POST   /<repo>/<type>/<id>       upload: verified, durable, never over an existing name
    DELETE /<repo>/locks/<id>        only locks can be deleted (append-only)

Every refusal is logged in one line naming the client, the file and the reason.
"""

from __future__ import annotations

import asyncio
import errno
import json
import logging
import re
import ssl
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

from aiohttp import web

from triplicate.endpoint.announce import Announcer
from triplicate.endpoint.auth import Htpasswd, basic_credentials
from triplicate.endpoint.paths import BadPath, Target, parse
from triplicate.endpoint.repository import Exists, HashMismatch, QuotaExceeded, Repository, Upload
from triplicate.storage.handle import FileType

log = logging.getLogger("triplicate.endpoint")

V2_TYPE = "application/vnd.x.restic.rest.v2"
V1_TYPE = "application/vnd.x.restic.rest.v1"
CHUNK = 1 << 20
_DISK_FULL = (errno.ENOSPC, errno.EDQUOT)
_PRINTABLE = re.compile(r"[^A-Za-z0-9._@:-]")

CLIENT_KEY: web.AppKey[ClientEndpoint] = web.AppKey("client")


@dataclass
class ClientEndpoint:
    """Everything one client's listener needs, and what it counts."""

    name: str
    repository: Repository
    htpasswd: Htpasswd
    idle_timeout: float
    announcer: Announcer | None = None
    client_certificates: bool = False  # mutual TLS: the certificate's subject CN must be the client
    counters: Counter[str] = field(default_factory=Counter)
    newest_snapshot: float | None = None

    def take_counts(self) -> tuple[dict[str, int], float | None]:
        """The counts since the last call (then reset), and the newest snapshot's arrival."""
        counts, self.counters = dict(self.counters), Counter()
        return counts, self.newest_snapshot


def make_app(client: ClientEndpoint) -> web.Application:
    """The aiohttp application serving ``client``'s repository."""
    app = web.Application(middlewares=[_count_and_log], client_max_size=0)
    app[CLIENT_KEY] = client
    app.router.add_route("*", "/{tail:.*}", _dispatch)
    return app


def failed_login_line(client: str, user: str | None, address: str) -> str:
    """The stable line fail2ban matches: ``authentication failed: endpoint=alpha user=bob from=192.0.2.1``."""
    shown = "-" if user is None else (_PRINTABLE.sub("?", user)[:64] or "?")
    return f"authentication failed: endpoint={client} user={shown} from={address}"


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class _MethodNotAllowed(web.HTTPClientError):
    """405, without the list of allowed methods aiohttp's own class requires (it depends on the path)."""

    status_code = 405


@web.middleware
async def _count_and_log(request: web.Request, handler: Handler) -> web.StreamResponse:
    client = request.app[CLIENT_KEY]
    try:
        response = await handler(request)
    except web.HTTPException as error:
        client.counters[f"requests:{request.method}:{error.status}"] += 1
        raise
    client.counters[f"requests:{request.method}:{response.status}"] += 1
    return response


def _refuse(client: ClientEndpoint, response: type[web.HTTPException], target: str, reason: str,
            counter: str | None = None) -> web.HTTPException:
    """Log the refusal (client, file, reason), count it, and return the HTTP error to raise."""
    log.warning("%s: %s %s: %s", client.name, response.status_code, target, reason)
    if counter is not None:
        client.counters[f"rejected:{counter}"] += 1
    return response(text=reason + "\n")


async def _dispatch(request: web.Request) -> web.StreamResponse:
    client = request.app[CLIENT_KEY]
    await _authenticate(request, client)
    raw_path = request.raw_path.partition("?")[0]
    try:
        target = parse(raw_path)
    except BadPath as error:
        raise _refuse(client, web.HTTPBadRequest, raw_path[:200], str(error), "bad_request") from None
    if target.repository != client.name:
        raise _refuse(client, web.HTTPForbidden, raw_path[:200], "another client's repository", "forbidden")
    method = request.method
    if target.file_type is None:
        if method == "POST" and request.query.get("create") == "true":
            return await _create(client)
        raise _refuse(client, web.HTTPForbidden if method == "DELETE" else _MethodNotAllowed,
                      "/", f"{method} on the repository is not allowed")
    if target.name is None:
        if method == "GET":
            return await _list(request, client, target.file_type)
        raise _refuse(client, _MethodNotAllowed, target.describe(), f"{method} on a folder")
    if method in ("GET", "HEAD"):
        return _load(client, target)
    if method == "POST":
        return await _save(request, client, target)
    if method == "DELETE":
        return await _delete(client, target)
    raise _refuse(client, _MethodNotAllowed, target.describe(), f"method {method} not allowed")


async def _authenticate(request: web.Request, client: ClientEndpoint) -> None:
    """Raise 401 (logged, counted) unless the request carries the client's own credentials."""
    if client.client_certificates:
        _check_certificate(request, client)
    credentials = basic_credentials(request.headers.get("Authorization"))
    if credentials is not None:
        user, password = credentials
        loop = asyncio.get_running_loop()
        if await loop.run_in_executor(None, client.htpasswd.check, user, password) and user == client.name:
            return
    client.counters["auth_failures"] += 1
    log.warning("%s", failed_login_line(client.name, None if credentials is None else credentials[0],
                                        request.remote or "-"))
    raise web.HTTPUnauthorized(headers={"WWW-Authenticate": 'Basic realm="restic"'}, text="unauthorized\n")


def _check_certificate(request: web.Request, client: ClientEndpoint) -> None:
    """With mutual TLS, the peer certificate's subject common name must be the client's name (else 403)."""
    transport = request.transport
    certificate = transport.get_extra_info("peercert") if transport is not None else None
    names = [value for rdn in (certificate or {}).get("subject", ()) for key, value in rdn if key == "commonName"]
    if names != [client.name]:
        client.counters["auth_failures"] += 1
        log.warning("%s", failed_login_line(client.name, f"cert:{','.join(names) or '-'}", request.remote or "-"))
        raise web.HTTPForbidden(text="the client certificate does not name this client\n")


async def _create(client: ClientEndpoint) -> web.Response:
    loop = asyncio.get_running_loop()
    if not await loop.run_in_executor(None, client.repository.create):
        raise _refuse(client, web.HTTPForbidden, "/", "the repository exists already; nothing changed", "exists")
    log.info("%s: repository created", client.name)
    return web.Response(text="")


async def _list(request: web.Request, client: ClientEndpoint, file_type: FileType) -> web.Response:
    if not client.repository.exists():
        raise web.HTTPNotFound(text="no repository\n")
    loop = asyncio.get_running_loop()
    files = await loop.run_in_executor(None, client.repository.listing, file_type)
    if V2_TYPE in request.headers.get("Accept", ""):
        body = json.dumps([{"name": info.name, "size": info.size} for info in files])
        return web.Response(body=body.encode(), headers={"Content-Type": V2_TYPE})
    return web.Response(body=json.dumps([info.name for info in files]).encode(),
                        headers={"Content-Type": V1_TYPE})


def _load(client: ClientEndpoint, target: Target) -> web.StreamResponse:
    handle = target.handle
    assert handle is not None
    path = client.repository.root / handle.relative_path()
    if not path.is_file():
        raise web.HTTPNotFound(text=f"{handle} does not exist\n")
    return web.FileResponse(path, chunk_size=CHUNK, headers={"Content-Type": "application/octet-stream"})


async def _delete(client: ClientEndpoint, target: Target) -> web.Response:
    if target.file_type is not FileType.LOCK or not target.name:
        raise _refuse(client, web.HTTPForbidden, target.describe(), "append-only: only locks can be deleted",
                      "delete")
    loop = asyncio.get_running_loop()
    if not await loop.run_in_executor(None, client.repository.remove_lock, target.name):
        raise web.HTTPNotFound(text=f"{target.describe()} does not exist\n")
    return web.Response(text="")


async def _save(request: web.Request, client: ClientEndpoint, target: Target) -> web.Response:
    """Receive an upload; 200 only once the verified file is durable under its final name."""
    handle = target.handle
    assert handle is not None
    shown = target.describe()
    repository = client.repository
    if (repository.root / handle.relative_path()).exists():
        raise _refuse(client, web.HTTPForbidden, shown, "exists already (append-only)", "exists")
    length = request.content_length
    if length is None:
        raise _refuse(client, web.HTTPLengthRequired, shown, "no Content-Length", "bad_request")
    loop = asyncio.get_running_loop()
    try:
        await loop.run_in_executor(None, repository.reserve, length)
    except QuotaExceeded as error:
        raise _refuse(client, web.HTTPInsufficientStorage, shown, f"over quota: {error}", "quota") from None
    landed = False
    upload: Upload | None = None
    try:
        upload = repository.open_upload(handle)
        await _receive(request, client, upload, length, shown)
        await loop.run_in_executor(None, upload.commit)
        landed = True
    except HashMismatch as error:
        raise _refuse(client, web.HTTPBadRequest, shown, str(error), "hash") from None
    except Exists as error:
        raise _refuse(client, web.HTTPForbidden, shown, f"{error} (append-only)", "exists") from None
    except OSError as error:
        if error.errno in _DISK_FULL:
            raise _refuse(client, web.HTTPInsufficientStorage, shown, "disk full", "disk_full") from None
        log.error("%s: 500 %s: %s", client.name, shown, error)
        raise web.HTTPInternalServerError(text="could not store the file\n") from None
    finally:
        if upload is not None and not landed:
            upload.discard()
        repository.release(length, landed)
    client.counters["files_received"] += 1
    client.counters["bytes_received"] += length
    if handle.type is FileType.SNAPSHOT:
        client.newest_snapshot = time.time()
    if client.announcer is not None:
        client.announcer.announce(client.name, handle)
    return web.Response(text="")


async def _receive(request: web.Request, client: ClientEndpoint, upload: Upload, length: int, shown: str) -> None:
    """Stream the body into ``upload``: exactly ``length`` bytes, each read within the idle timeout."""
    content = request.content
    loop = asyncio.get_running_loop()
    while upload.size < length:
        try:
            async with asyncio.timeout(client.idle_timeout):  # (cheaper than wait_for: no task per read)
                chunk = await content.readany()
        except TimeoutError:
            raise _refuse(client, web.HTTPRequestTimeout, shown,
                          f"no data for {client.idle_timeout:g}s after {upload.size} of {length} bytes",
                          "timeout") from None
        except Exception as error:  # the connection broke mid-body (aiohttp's payload errors)
            raise _refuse(client, web.HTTPBadRequest, shown,
                          f"body ended after {upload.size} of {length} bytes ({type(error).__name__})",
                          "short_body") from None
        if not chunk:
            raise _refuse(client, web.HTTPBadRequest, shown, f"body ended after {upload.size} of {length} bytes",
                          "short_body")
        if upload.size + len(chunk) > length:  # aiohttp stops at Content-Length; never write past it anyway
            raise _refuse(client, web.HTTPBadRequest, shown, "body longer than Content-Length", "long_body")
        # In a thread: hashing and writing release the GIL, and a disk that stalls (writeback
        # throttling) then holds back this upload alone, not every client of the process.
        await loop.run_in_executor(None, upload.write, chunk)


def server_ssl_context(cert: Path, key: Path, client_ca: Path | None) -> ssl.SSLContext:
    """TLS for the listener; with ``client_ca``, clients must present a certificate it signed."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(cert, key)
    if client_ca is not None:
        context.load_verify_locations(cafile=str(client_ca))
        context.verify_mode = ssl.CERT_REQUIRED
    return context
