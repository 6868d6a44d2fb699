"""A repository in an S3-compatible object store (boto3), at ``<bucket>/<prefix>/<client>/``.

Saves never leave a complete-looking object under a final key for content that
does not match its name: a file up to SINGLE_PUT_LIMIT (32 MiB, so every pack
of restic's default size) is read and hashed into one buffer and PUT only once
verified; a larger one goes as a multipart upload whose last part is sent, and
the upload completed, only once the whole content hashed to its name; any
failure aborts the upload. An object appears under its key only when its upload
completes. Uploads a crash left open are aborted by ``discard_partial_saves``.
docs/locations.md says why this design and this library.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, TypeVar

from triplicate.storage.backend import FileInfo, NoRepository, NotFound, StorageError, copy_verified
from triplicate.storage.handle import FileType, Handle, is_id
from triplicate.storage.remote import BodyReader, list_config, range_header
from triplicate.storage.retry import TransientError

T = TypeVar("T")
# A file up to this size is sent in one PUT once verified (one buffer per worker: a restic
# pack is 4 to 32 MiB by default); a larger one as a multipart upload whose first part is
# that buffer and the others PART_SIZE. Single PUTs moved packs twice as fast as 8 MiB
# parts to the S3 emulator (docs/benchmarks-remote.md).
SINGLE_PUT_LIMIT = 32 << 20
PART_SIZE = 8 << 20
MIN_PART_SIZE = 5 << 20  # S3's smallest part but the last
CREDENTIAL_KEYS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN")
_HEX2 = frozenset(f"{value:02x}" for value in range(256))
_TRANSIENT_CODES = frozenset({
    "InternalError", "ServiceUnavailable", "SlowDown", "RequestTimeout", "RequestTimeTooSkewed",
    "Throttling", "ThrottlingException", "RequestLimitExceeded", "TooManyRequests", "500", "502", "503", "504",
})
_DENIED_CODES = frozenset({
    "AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "InvalidToken", "ExpiredToken", "403",
})


@dataclass(frozen=True)
class S3Target:
    """Where the location is and how to sign requests (credentials read when first needed)."""

    endpoint: str | None
    bucket: str
    prefix: str
    region: str | None
    credentials_file: Path | None = None


def read_credentials(path: Path) -> dict[str, str]:
    """The AWS_* assignments of a credentials file (``KEY=value`` lines, # comments).

    Raises StorageError naming the file and line, without ever showing a value.
    """
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as error:
        raise StorageError(f"credentials_file {path}: cannot read ({error.strerror or error})") from None
    found: dict[str, str] = {}
    for number, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        key, equals, value = line.removeprefix("export ").partition("=")
        key = key.strip()
        if not equals or key not in CREDENTIAL_KEYS:
            raise StorageError(f"credentials_file {path}, line {number}: expected one of "
                               f"{', '.join(CREDENTIAL_KEYS)} followed by '='")
        found[key] = value.strip().strip("'\"")
    missing = [key for key in CREDENTIAL_KEYS[:2] if not found.get(key)]
    if missing:
        raise StorageError(f"credentials_file {path}: {' and '.join(missing)} missing")
    return found


class S3Backend:
    """The repository under ``<prefix>/<client>/`` in ``target.bucket``."""

    def __init__(self, target: S3Target, client: str, description: str, connections: int = 4,
                 part_size: int = PART_SIZE, single_put_limit: int = SINGLE_PUT_LIMIT,
                 timeout: float = 120.0) -> None:
        self.target = target
        self.base = "/".join(part for part in (target.prefix.strip("/"), client) if part) + "/"
        self.description = description
        self.connections = connections
        self._part_size = max(part_size, MIN_PART_SIZE)
        self._single_put_limit = max(single_put_limit, MIN_PART_SIZE)
        self._timeout = timeout
        self._client: Any = None
        self._client_lock = threading.Lock()

    # -- the Backend protocol -------------------------------------------------------------

    def prepare(self, create: bool) -> None:
        bucket = self.target.bucket
        try:
            self._call("checking the bucket", lambda s3: s3.head_bucket(Bucket=bucket))
        except NotFound:
            raise StorageError(f"{self.description}: bucket '{bucket}' does not exist"
                               f"{' at ' + self.target.endpoint if self.target.endpoint else ''}; "
                               "triplicate never creates it") from None
        if not create:
            listing = self._call("opening the repository",
                                 lambda s3: s3.list_objects_v2(Bucket=bucket, Prefix=self.base, MaxKeys=1))
            if not listing.get("KeyCount"):
                raise NoRepository(f"{self.description}: no repository at s3://{bucket}/{self.base}")
        # Prefixes need no creating: a key's folders exist as soon as it does.

    def list(self, file_type: FileType) -> Iterator[FileInfo]:
        if file_type is FileType.CONFIG:
            yield from list_config(self.stat)
            return
        folder = f"{self.base}{file_type.value}/"

        def collect(s3: Any) -> list[FileInfo]:
            found = []
            for page in s3.get_paginator("list_objects_v2").paginate(Bucket=self.target.bucket, Prefix=folder):
                for entry in page.get("Contents", ()):
                    info = _listed(entry, folder, file_type)
                    if info is not None:
                        found.append(info)
            return found

        yield from self._call(f"listing {file_type.value}", collect)

    @contextmanager
    def load(self, handle: Handle, offset: int = 0, length: int | None = None) -> Iterator[BinaryIO]:
        what = f"loading {handle}"
        if length == 0:
            yield BodyReader(None, self._translator(what))  # type: ignore[misc]
            return
        # The same Range as HTTP's, as a parameter of get_object.
        arguments: dict[str, Any] = {"Bucket": self.target.bucket, "Key": self._key(handle),
                                     **range_header(offset, length)}
        try:
            response = self._call(what, lambda s3: s3.get_object(**arguments))
        except _RangeNotSatisfiable:  # an offset at the end: nothing left to read
            yield BodyReader(None, self._translator(what))  # type: ignore[misc]
            return
        body = response["Body"]
        try:
            yield BodyReader(body, self._translator(what))  # type: ignore[misc]
        finally:
            body.close()

    def save(self, handle: Handle, source: BinaryIO) -> int:
        what = f"saving {handle}"
        key = self._key(handle)
        bucket = self.target.bucket
        part = bytearray()
        parts: list[dict[str, Any]] = []
        upload_id: str | None = None

        def send_part(data: bytearray) -> None:
            nonlocal upload_id
            if upload_id is None:
                upload_id = self._call(what, lambda s3: s3.create_multipart_upload(Bucket=bucket, Key=key))["UploadId"]
            number = len(parts) + 1
            answer = self._call(what, lambda s3: s3.upload_part(
                Bucket=bucket, Key=key, UploadId=upload_id, PartNumber=number, Body=data))
            parts.append({"PartNumber": number, "ETag": answer["ETag"]})

        def write(chunk: memoryview) -> None:
            nonlocal part
            part += chunk
            if len(part) >= (self._single_put_limit if upload_id is None else self._part_size):
                # Too big for one PUT: the buffer itself goes as a part (no copy), a new one starts.
                full, part = part, bytearray()
                send_part(full)

        try:
            # Verified before the last part leaves: a mismatch sends nothing more and aborts.
            size = copy_verified(handle, source, write)
            if upload_id is None:
                self._call(what, lambda s3: s3.put_object(Bucket=bucket, Key=key, Body=part))
            else:
                if part:
                    send_part(part)
                self._call(what, lambda s3: s3.complete_multipart_upload(
                    Bucket=bucket, Key=key, UploadId=upload_id, MultipartUpload={"Parts": parts}))
                upload_id = None
        except NotFound as error:  # for a save, something missing on the far side is a failure
            raise StorageError(str(error)) from None
        finally:
            if upload_id is not None:
                self._abort(key, upload_id)
        return size

    def stat(self, handle: Handle) -> FileInfo:
        answer = self._call(f"stat {handle}",
                            lambda s3: s3.head_object(Bucket=self.target.bucket, Key=self._key(handle)))
        modified = answer.get("LastModified")
        return FileInfo(handle.name, int(answer["ContentLength"]), modified.timestamp() if modified else None)

    def remove(self, handle: Handle) -> None:
        try:
            self._call(f"removing {handle}",
                       lambda s3: s3.delete_object(Bucket=self.target.bucket, Key=self._key(handle)))
        except NotFound:
            pass

    def discard_partial_saves(self) -> None:
        def uploads(s3: Any) -> list[tuple[str, str]]:
            found = []
            paginator = s3.get_paginator("list_multipart_uploads")
            for page in paginator.paginate(Bucket=self.target.bucket, Prefix=self.base):
                found += [(upload["Key"], upload["UploadId"]) for upload in page.get("Uploads", ())]
            return found

        for key, upload_id in self._call("listing unfinished uploads", uploads):
            self._abort(key, upload_id)

    def close(self) -> None:
        with self._client_lock:
            if self._client is not None:
                self._client.close()
                self._client = None

    # -- helpers ----------------------------------------------------------------------------

    def _key(self, handle: Handle) -> str:
        return self.base + handle.relative_path()

    def _abort(self, key: str, upload_id: str) -> None:
        try:
            self._call("aborting an upload", lambda s3: s3.abort_multipart_upload(
                Bucket=self.target.bucket, Key=key, UploadId=upload_id))
        except StorageError:
            pass  # left for the next run's discard_partial_saves (or the bucket's lifecycle rule)

    def _s3(self) -> Any:
        """The boto3 client, made once (making one is not thread-safe; using one is). Raises StorageError."""
        with self._client_lock:
            if self._client is None:
                try:
                    self._client = self._make_client()
                except StorageError:
                    raise
                except Exception as error:
                    raise StorageError(f"{self.description}: cannot set up the S3 client: {error}") from None
            return self._client

    def _make_client(self) -> Any:
        import boto3
        from botocore.config import Config as BotoConfig

        credentials = read_credentials(self.target.credentials_file) if self.target.credentials_file else {}
        config = BotoConfig(
            max_pool_connections=max(10, self.connections + 2),
            retries={"max_attempts": 1, "mode": "standard"},  # retries are RetryingBackend's job alone
            connect_timeout=min(self._timeout, 30),
            read_timeout=self._timeout,
            s3={"addressing_style": "path" if self.target.endpoint else "auto"},
        )
        session = boto3.session.Session()
        return session.client(
            "s3", endpoint_url=self.target.endpoint, region_name=self.target.region or "us-east-1",
            aws_access_key_id=credentials.get("AWS_ACCESS_KEY_ID"),
            aws_secret_access_key=credentials.get("AWS_SECRET_ACCESS_KEY"),
            aws_session_token=credentials.get("AWS_SESSION_TOKEN"), config=config,
        )

    def _call(self, what: str, operation: Callable[[Any], T]) -> T:
        """Run one request; raises NotFound, TransientError or StorageError, never a boto exception."""
        client = self._s3()
        try:
            return operation(client)
        except StorageError:
            raise
        except Exception as error:
            raise self._storage_error(what, error) from None

    def _translator(self, what: str) -> Callable[[Exception], StorageError]:
        return lambda error: self._storage_error(what, error)

    def _storage_error(self, what: str, error: Exception) -> StorageError:
        from botocore import exceptions as boto

        where = f"{self.description}: {what}"
        if isinstance(error, boto.ClientError):
            code = str(error.response.get("Error", {}).get("Code", ""))
            status = int(error.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)
            message = error.response.get("Error", {}).get("Message") or code
            if code == "NoSuchBucket":
                return StorageError(f"{where}: bucket '{self.target.bucket}' does not exist")
            if status == 404 or code in ("NoSuchKey", "NotFound", "404", "NoSuchUpload"):
                return NotFound(f"{where}: does not exist")
            if status == 416 or code == "InvalidRange":
                return _RangeNotSatisfiable(where)
            if status == 403 or code in _DENIED_CODES:
                return StorageError(f"{where}: access denied ({code or status}; check credentials_file "
                                    "and the key's permissions)")
            if status >= 500 or status == 429 or code in _TRANSIENT_CODES:
                return TransientError(f"{where}: the server answered {code or status} ({message})")
            return StorageError(f"{where}: the server answered {code or status} ({message})")
        if isinstance(error, (boto.NoCredentialsError, boto.PartialCredentialsError)):
            return StorageError(f"{where}: no credentials (set credentials_file, or AWS_ACCESS_KEY_ID and "
                                "AWS_SECRET_ACCESS_KEY in the environment)")
        transient = (boto.EndpointConnectionError, boto.ConnectTimeoutError, boto.ReadTimeoutError,
                     boto.ConnectionClosedError, boto.ResponseStreamingError, boto.HTTPClientError,
                     ConnectionError, TimeoutError)
        if isinstance(error, transient):
            return TransientError(f"{where}: {error}")
        if isinstance(error, boto.SSLError):
            return StorageError(f"{where}: TLS failed ({error})")
        return StorageError(f"{where}: {error}")


class _RangeNotSatisfiable(StorageError):
    """A range starting at or after the end of the object."""


def _listed(entry: dict[str, Any], folder: str, file_type: FileType) -> FileInfo | None:
    """A listed object as a FileInfo, or None when it is not a file of this type."""
    relative = entry["Key"][len(folder):]
    if file_type is FileType.DATA:
        sub, _, name = relative.partition("/")
        if sub not in _HEX2 or not name.startswith(sub):
            return None
    else:
        name = relative
    if not is_id(name):
        return None
    return FileInfo(name, int(entry["Size"]), entry["LastModified"].timestamp())
