"""``type = "s3"``: a bucket (and prefix) of an S3-compatible object store (boto3)."""

from __future__ import annotations

import re
from typing import Annotated, Literal

from pydantic import AfterValidator

from triplicate.config.types import AbsolutePath, HttpUrl, LocationSettings
from triplicate.storage.backend import Backend
from triplicate.storage.kinds.kind import LocationKind, Opening, ResticTarget


def _bucket(value: str) -> str:
    if not re.fullmatch(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]", value):
        raise ValueError("a bucket name is 3 to 63 lowercase letters, digits, '.' and '-'")
    return value


BucketName = Annotated[str, AfterValidator(_bucket)]


class S3Location(LocationSettings):
    """A bucket (and prefix) of an S3-compatible object store; docs/locations.md."""

    type: Literal["s3"]
    endpoint: HttpUrl | None = None
    bucket: BucketName
    prefix: str = ""
    region: str | None = None
    credentials_file: AbsolutePath | None = None

    def key(self, client: str) -> str:
        """The client's folder in the bucket: ``prefix/client``."""
        return "/".join(part for part in (self.prefix.strip("/"), client) if part)


def _open(settings: S3Location, opening: Opening) -> Backend:
    from triplicate.storage.s3 import S3Backend, S3Target

    target = S3Target(settings.endpoint, settings.bucket, settings.prefix, settings.region, settings.credentials_file)
    return S3Backend(target, opening.client,
                     f"{opening.location} (s3://{settings.bucket}/{settings.key(opening.client)})", opening.workers)


def _restic(settings: S3Location, opening: Opening) -> ResticTarget:
    from triplicate.storage.s3 import CREDENTIAL_KEYS, read_credentials

    environment = read_credentials(settings.credentials_file) if settings.credentials_file else {}
    if settings.region:
        environment["AWS_DEFAULT_REGION"] = settings.region
    endpoint = (settings.endpoint or "https://s3.amazonaws.com").rstrip("/")
    secrets = [environment[key] for key in CREDENTIAL_KEYS if environment.get(key)]
    return ResticTarget(f"s3:{endpoint}/{settings.bucket}/{settings.key(opening.client)}", environment, secrets)


KIND = LocationKind("s3", S3Location, _open, _restic)
