"""The lake: one interface over a local folder and S3.

Keys are relative, ``/``-separated paths laid out as ``{zone}/{table}/date=YYYY-MM-DD/{file}``. Every write is
atomic, so a reader never sees half a file and a rerun replaces its own partition instead of appending to it: on the
local lake the bytes go to a temporary file in the same folder first and are then renamed into place; on S3 a
single PUT is atomic by itself (the object appears whole or not at all), so ``S3Lake`` writes with one
``put_object`` and no temporary key.
"""

from __future__ import annotations

import hashlib
import io
import re
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator
from datetime import date
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipelines.core.files import create_exclusively, write_atomically

if TYPE_CHECKING:
    import pandas as pd

    from pipelines.core.settings import Settings

ZONES = ("landing", "raw", "validated", "quarantine", "reference", "features", "predictions", "labels")
_PARTITION = re.compile(r"date=(\d{4}-\d{2}-\d{2})$")


def partition_key(zone: str, table: str, day: date, filename: str) -> str:
    if zone not in ZONES:
        raise ValueError(f"unknown lake zone {zone!r}; expected one of {', '.join(ZONES)}")
    return f"{zone}/{table}/date={day.isoformat()}/{filename}"


S3_CONNECT_TIMEOUT_S = 5
S3_READ_TIMEOUT_S = 60
S3_DELETE_BATCH = 1000
"""Keys per DeleteObjects request: S3's own limit."""


class Lake(ABC):
    """Object-store semantics (whole-object put/get, prefix listing) over any backend."""

    uri: str

    @abstractmethod
    def write_bytes(self, key: str, data: bytes) -> None: ...

    @abstractmethod
    def create(self, key: str, data: bytes) -> bool:
        """Write ``key`` only if it does not exist (True); False, changing nothing, when it does."""

    @abstractmethod
    def read_bytes(self, key: str) -> bytes: ...

    @abstractmethod
    def exists(self, key: str) -> bool: ...

    @abstractmethod
    def list_keys(self, prefix: str) -> list[str]:
        """All keys under ``prefix`` (a folder-like prefix), sorted."""

    @abstractmethod
    def delete(self, key: str) -> None:
        """Delete one key; deleting a missing key is not an error."""

    def delete_prefix(self, prefix: str) -> None:
        for key in self.list_keys(prefix):
            self.delete(key)

    def list_sizes(self, prefix: str) -> dict[str, int]:
        """Every key under ``prefix`` (as ``list_keys``) with its size in bytes. Backends override it with one
        listing; this fallback reads each object."""
        return {key: len(self.read_bytes(key)) for key in self.list_keys(prefix)}

    def list_versions(self, prefix: str) -> dict[str, str]:
        """Every key under ``prefix`` (as ``list_keys``) with a version: a string that changes when the object's
        content changes and stays when it is written again unchanged (what a cache of derived data can be keyed on;
        a time of writing cannot). A content hash here; S3 overrides it with the ETags of one listing."""
        versions = {}
        for key in self.list_keys(prefix):
            try:
                versions[key] = hashlib.sha256(self.read_bytes(key)).hexdigest()
            except FileNotFoundError:  # deleted since it was listed
                continue
        return versions

    def delete_keys(self, keys: Iterable[str]) -> int:
        """Delete many keys (as ``delete``: a missing key is not an error, so a retry after a partial run deletes
        what is left and fails on nothing); returns how many were asked for."""
        count = 0
        for key in keys:
            self.delete(key)
            count += 1
        return count

    def partitions(self, zone: str, table: str) -> list[date]:
        """Dates that have at least one object under ``{zone}/{table}/date=.../``."""
        days = set()
        for key in self.list_keys(f"{zone}/{table}/"):
            parts = key.split("/")
            if len(parts) >= 3 and (m := _PARTITION.match(parts[2])):
                days.add(date.fromisoformat(m.group(1)))
        return sorted(days)

    def write_text(self, key: str, text: str) -> None:
        self.write_bytes(key, text.encode("utf-8"))

    def read_text(self, key: str) -> str:
        return self.read_bytes(key).decode("utf-8")

    def write_parquet(self, key: str, frame: pd.DataFrame) -> None:
        buffer = io.BytesIO()
        frame.to_parquet(buffer, index=False, engine="pyarrow", compression="zstd")
        self.write_bytes(key, buffer.getvalue())

    def read_parquet(self, key: str) -> pd.DataFrame:
        import pandas as pd

        return pd.read_parquet(io.BytesIO(self.read_bytes(key)), engine="pyarrow")

    def url(self, key: str) -> str:
        """Where a person (or another tool) finds this key."""
        return f"{self.uri.rstrip('/')}/{key}"


class LocalLake(Lake):
    def __init__(self, root: str | Path, *, durable: bool = False) -> None:
        """``durable``: each write is fsynced (the file, then its folder) before it returns, so it survives a
        crash of the machine, not only of the process (what a spool of unwritten data needs)."""
        self.root = Path(root).expanduser().resolve()
        self.uri = str(self.root)
        self.durable = durable

    def _path(self, key: str) -> Path:
        path = (self.root / key).resolve()
        if self.root not in path.parents and path != self.root:
            raise ValueError(f"key {key!r} escapes the lake root {self.root}")
        return path

    def write_bytes(self, key: str, data: bytes) -> None:
        write_atomically(self._path(key), data, durable=self.durable)

    def create(self, key: str, data: bytes) -> bool:
        return create_exclusively(self._path(key), data)

    def read_bytes(self, key: str) -> bytes:
        path = self._path(key)
        if not path.is_file():
            raise FileNotFoundError(f"{key} not found in lake {self.uri}")
        return path.read_bytes()

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def list_keys(self, prefix: str) -> list[str]:
        base = self._path(prefix.rstrip("/")) if prefix.strip("/") else self.root
        if not base.is_dir():
            return []
        return sorted(
            p.relative_to(self.root).as_posix()
            for p in base.rglob("*")
            if p.is_file() and not p.name.endswith(".tmp")
        )

    def delete(self, key: str) -> None:
        path = self._path(key)
        path.unlink(missing_ok=True)
        # Drop folders left empty so partition listings stay truthful.
        parent = path.parent
        while parent != self.root and parent.is_dir() and not any(parent.iterdir()):
            parent.rmdir()
            parent = parent.parent

    def list_sizes(self, prefix: str) -> dict[str, int]:
        sizes = {}
        for key in self.list_keys(prefix):
            try:
                sizes[key] = self._path(key).stat().st_size
            except FileNotFoundError:  # deleted since it was listed
                continue
        return sizes


class S3Lake(Lake):
    def __init__(self, uri: str, endpoint_url: str | None = None) -> None:
        import boto3
        from botocore.config import Config

        if not uri.startswith("s3://"):
            raise ValueError(f"S3 lake URI must start with s3://, got {uri!r}")
        bucket, _, prefix = uri.removeprefix("s3://").partition("/")
        if not bucket:
            raise ValueError(f"S3 lake URI {uri!r} names no bucket")
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.uri = uri.rstrip("/")
        # A lake that does not answer is an error within seconds, not a hang: connect and read timeouts, and
        # botocore's standard retry mode (3 tries with backoff) for throttling and transient errors.
        self.client = boto3.client("s3", endpoint_url=endpoint_url, config=Config(
            connect_timeout=S3_CONNECT_TIMEOUT_S, read_timeout=S3_READ_TIMEOUT_S,
            retries={"total_max_attempts": 3, "mode": "standard"}))

    def _key(self, key: str) -> str:
        return f"{self.prefix}/{key}" if self.prefix else key

    def write_bytes(self, key: str, data: bytes) -> None:
        # One PUT: S3 makes the object visible whole or not at all, and a failed PUT leaves the old one in place.
        self.client.put_object(Bucket=self.bucket, Key=self._key(key), Body=data)

    def create(self, key: str, data: bytes) -> bool:
        from botocore.exceptions import ClientError

        # A conditional PUT: S3 (and MinIO) refuse it with 412 when the key exists, 409 when another conditional
        # write of the key is in flight.
        try:
            self.client.put_object(Bucket=self.bucket, Key=self._key(key), Body=data, IfNoneMatch="*")
        except ClientError as error:
            if error.response.get("Error", {}).get("Code") in ("PreconditionFailed", "ConditionalRequestConflict"):
                return False
            raise
        return True

    def read_bytes(self, key: str) -> bytes:
        try:
            response = self.client.get_object(Bucket=self.bucket, Key=self._key(key))
        except self.client.exceptions.NoSuchKey:
            raise FileNotFoundError(f"{key} not found in lake {self.uri}") from None
        return response["Body"].read()

    def exists(self, key: str) -> bool:
        from botocore.exceptions import ClientError

        try:
            self.client.head_object(Bucket=self.bucket, Key=self._key(key))
        except ClientError as error:
            if error.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                return False
            raise
        return True

    def list_keys(self, prefix: str) -> list[str]:
        return sorted(key for key, _ in self._listing(prefix))

    def delete(self, key: str) -> None:
        self.client.delete_object(Bucket=self.bucket, Key=self._key(key))

    def _listing(self, prefix: str) -> Iterator[tuple[str, dict[str, Any]]]:
        """The objects under ``prefix`` as (key, S3's entry), one request per 1,000. A prefix names a folder, as on
        the local lake ("raw/flights" must not match "raw/flights_v2/..."); ``.tmp`` keys are hidden as there
        (strays of writers that used temporary keys)."""
        folder = prefix.strip("/")
        full = self._key(f"{folder}/") if folder else (f"{self.prefix}/" if self.prefix else "")
        strip = len(self.prefix) + 1 if self.prefix else 0
        for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=full):
            yield from ((obj["Key"][strip:], obj) for obj in page.get("Contents", [])
                        if not obj["Key"].endswith(".tmp"))

    def list_sizes(self, prefix: str) -> dict[str, int]:
        return dict(sorted((key, int(obj["Size"])) for key, obj in self._listing(prefix)))

    def list_versions(self, prefix: str) -> dict[str, str]:
        # An ETag is the MD5 of the content for a single PUT (every write here is one); it changes with the content.
        return dict(sorted((key, str(obj["ETag"])) for key, obj in self._listing(prefix)))

    def delete_keys(self, keys: Iterable[str]) -> int:
        # DeleteObjects: up to 1,000 keys a request. S3 reports a key that is already gone as deleted, so a retry
        # fails on nothing; a key it could not delete (access denied, ...) is an error naming it.
        keys = list(keys)
        for start in range(0, len(keys), S3_DELETE_BATCH):
            batch = keys[start:start + S3_DELETE_BATCH]
            answer = self.client.delete_objects(Bucket=self.bucket, Delete={
                "Objects": [{"Key": self._key(key)} for key in batch], "Quiet": True})
            if errors := answer.get("Errors"):
                shown = ", ".join(f"{e.get('Key')} ({e.get('Code')}: {e.get('Message')})" for e in errors[:3])
                raise OSError(f"S3 refused to delete {len(errors)} of {len(batch)} keys in {self.uri}: {shown}")
        return len(keys)


def open_lake(settings: Settings) -> Lake:
    root = settings.lake_root
    if root.startswith("s3://"):
        return S3Lake(root, endpoint_url=settings.s3_endpoint_url)
    if "://" in root and not root.startswith("file://"):
        raise ValueError(f"unsupported lake URI {root!r}: use a local path or s3://bucket/prefix")
    return LocalLake(root.removeprefix("file://"))


def settings_and_lake(settings: Settings | None = None) -> tuple[Settings, Lake]:
    """The given settings (or the environment's) and their lake: how the range-level steps start."""
    from pipelines.core.settings import get_settings

    settings = settings or get_settings()
    return settings, open_lake(settings)


def landing_key(table: str, day: date) -> str:
    return partition_key("landing", table, day, f"{table}.csv")


MONITORING_REPORTS = "reports/monitoring"
"""The daily monitoring reports: ``date=YYYY-MM-DD/`` folders of these files."""
REPORT_FILES = {"html": "report.html", "json": "report.json", "summary": "summary.json"}


def monitoring_report_key(day: date, name: str) -> str:
    return f"{MONITORING_REPORTS}/date={day.isoformat()}/{name}"


def reference_key(table: str) -> str:
    return f"reference/{table}/{table}.parquet"
