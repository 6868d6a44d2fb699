"""Streamed HTTP uploads that a bad content makes *the server* fail, before it keeps anything.

restic's REST servers do not know a file's hash: ``rclone serve restic`` writes
an upload in place under its final name. Cutting the connection makes it remove
the partial file, but later, on its own schedule. So the chunked framing is
written here (http.client, stdlib): when the content turns out not to match its
name, the last chunk is never sent and the framing is spoiled instead; the
server's request handler fails at once, removes its partial file (rclone,
rest-server) and answers, and that answer is awaited. When ``post`` raises, the
server has already given up the upload.
"""

from __future__ import annotations

import http.client
import ssl
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

# Connections idle for longer are closed rather than reused: a server may have dropped them.
IDLE_REUSE = 30.0
# What is sent instead of a chunk's size line: not hexadecimal, so every HTTP parser rejects it.
_SPOILED_FRAMING = b"triplicate-upload-aborted\r\n\r\n"


class ChunkedUploads:
    """POSTs with chunked bodies over up to ``limit`` kept-alive connections to one server (thread-safe)."""

    def __init__(self, url: str, cacert: Path | None, timeout: float, limit: int) -> None:
        parts = urlsplit(url)
        self._https = parts.scheme == "https"
        self._host = parts.hostname or ""
        self._port = parts.port
        self._timeout = timeout
        self._limit = limit
        self._context = ssl.create_default_context(cafile=str(cacert) if cacert else None) if self._https else None
        self._idle: list[tuple[http.client.HTTPConnection, float]] = []
        self._lock = threading.Lock()

    def post(self, path: str, headers: dict[str, str], chunks: Iterator[bytes]) -> tuple[int, str, bytes]:
        """Send ``chunks`` as the body of a POST to ``path``; returns (status, reason, body).

        Raises what ``chunks`` raises (after the server answered the spoiled request),
        OSError or http.client.HTTPException on network failures.
        """
        connection = self._connection()
        reusable = False
        try:
            connection.putrequest("POST", path, skip_accept_encoding=True)
            for name, value in {**headers, "Transfer-Encoding": "chunked"}.items():
                connection.putheader(name, value)
            connection.endheaders()
            try:
                for chunk in chunks:
                    connection.send(b"%x\r\n" % len(chunk))
                    connection.send(chunk)
                    connection.send(b"\r\n")
            except Exception:
                self._fail_upload(connection)
                raise
            connection.send(b"0\r\n\r\n")
            response = connection.getresponse()
            body = response.read()
            reusable = not response.will_close
            return response.status, response.reason, body
        finally:
            if reusable:
                self._release(connection)
            else:
                connection.close()

    def close(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, []
        for connection, _ in idle:
            connection.close()

    def _fail_upload(self, connection: http.client.HTTPConnection) -> None:
        """Spoil the framing and wait for the server's answer: its handler is done with the file then."""
        try:
            connection.send(_SPOILED_FRAMING)
            connection.getresponse().read()
        except (OSError, http.client.HTTPException):
            pass  # the server is gone: it keeps nothing of an upload it did not finish

    def _connection(self) -> http.client.HTTPConnection:
        now = time.monotonic()
        with self._lock:
            while self._idle:
                connection, since = self._idle.pop()
                if now - since < IDLE_REUSE:
                    return connection
                connection.close()
        if self._https:
            return http.client.HTTPSConnection(self._host, self._port, timeout=self._timeout, context=self._context)
        return http.client.HTTPConnection(self._host, self._port, timeout=self._timeout)

    def _release(self, connection: http.client.HTTPConnection) -> None:
        with self._lock:
            if len(self._idle) < self._limit:
                self._idle.append((connection, time.monotonic()))
                return
        connection.close()
