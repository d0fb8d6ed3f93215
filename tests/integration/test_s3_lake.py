"""S3Lake against a real S3 API: a moto server in its own process, reached over HTTP by boto3.

Nothing is patched in process: the lake talks to the server on 127.0.0.1, and the checks read the bucket back with
fresh clients (and plain HTTP), so whatever they see is what the server holds.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import date
from functools import cached_property
from pathlib import Path
from typing import Any

import boto3
import pandas as pd
import pytest

from pipelines.core.lake import S3Lake, open_lake
from pipelines.core.processes import free_port
from pipelines.core.settings import get_settings

pytestmark = pytest.mark.integration

FAKE_AWS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}
DAY = date(2013, 1, 2)


@dataclass(frozen=True)
class S3Server:
    """A running moto server: where it listens and the process that holds its data."""

    endpoint: str
    process: subprocess.Popen[bytes]

    def new_client(self) -> Any:
        """A new boto3 client in its own session, sharing nothing with any lake's client."""
        return boto3.session.Session(
            aws_access_key_id=FAKE_AWS["AWS_ACCESS_KEY_ID"], aws_secret_access_key=FAKE_AWS["AWS_SECRET_ACCESS_KEY"],
            region_name=FAKE_AWS["AWS_DEFAULT_REGION"],
        ).client("s3", endpoint_url=self.endpoint)

    @cached_property
    def _client(self) -> Any:
        return self.new_client()

    def client(self) -> Any:
        """The checker's own client (created once per module, independent of the lakes under test)."""
        return self._client

    def keys(self, bucket: str, prefix: str = "") -> list[str]:
        pages = self.client().get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
        return sorted(obj["Key"] for page in pages for obj in page.get("Contents", []))

    def get(self, bucket: str, key: str) -> bytes:
        return self.client().get_object(Bucket=bucket, Key=key)["Body"].read()


def _wait_until_up(endpoint: str, process: subprocess.Popen[bytes], deadline_s: float = 60.0) -> None:
    stop = time.monotonic() + deadline_s
    while time.monotonic() < stop:
        if process.poll() is not None:
            raise RuntimeError(f"moto server exited with status {process.returncode} before answering")
        try:
            with urllib.request.urlopen(endpoint + "/", timeout=2):
                return
        except urllib.error.HTTPError:
            return  # it answered HTTP, whatever the status
        except OSError:
            time.sleep(0.2)
    raise RuntimeError(f"moto server on {endpoint} did not answer within {deadline_s:.0f}s")


@pytest.fixture(scope="module")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    """Start `python -m moto.server` on a free local port for this module; kill it afterwards."""
    port = free_port()
    endpoint = f"http://127.0.0.1:{port}"
    log = (tmp_path_factory.mktemp("moto") / "server.log").open("wb")
    env = os.environ | FAKE_AWS
    process = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                               stdout=log, stderr=subprocess.STDOUT, env=env)
    try:
        _wait_until_up(endpoint, process)
        yield S3Server(endpoint=endpoint, process=process)
    finally:
        process.kill()
        process.wait(timeout=30)
        log.close()


@pytest.fixture
def aws_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fake credentials for boto3 in this process; no real AWS is ever reached."""
    for name, value in FAKE_AWS.items():
        monkeypatch.setenv(name, value)
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def bucket(s3_server: S3Server, aws_env: None) -> str:
    """A new, empty bucket for each test."""
    name = f"lake-{uuid.uuid4().hex[:12]}"
    s3_server.client().create_bucket(Bucket=name)
    return name


@pytest.fixture
def s3_lake(s3_server: S3Server, bucket: str) -> S3Lake:
    return S3Lake(f"s3://{bucket}/lake", endpoint_url=s3_server.endpoint)


# --- S3Lake operations ---------------------------------------------------------------------------------------------


def test_server_is_a_separate_process(s3_server: S3Server) -> None:
    assert s3_server.process.poll() is None
    assert s3_server.process.pid != os.getpid()


def test_write_then_read_bytes_text_and_parquet(s3_lake: S3Lake, s3_server: S3Server, bucket: str) -> None:
    """What the lake writes is in the bucket under the prefix, and reads back unchanged."""
    s3_lake.write_bytes("landing/flights/date=2013-01-02/flights.csv", b"a,b\n1,2\n")
    s3_lake.write_text("raw/flights/date=2013-01-02/validation.json", '{"status": "passed", "é": 1}')
    frame = pd.DataFrame({"flight": pd.array([1, None], dtype="Int64"), "carrier": ["UA", None]})
    s3_lake.write_parquet("raw/flights/date=2013-01-02/data.parquet", frame)

    assert s3_lake.read_bytes("landing/flights/date=2013-01-02/flights.csv") == b"a,b\n1,2\n"
    assert s3_lake.read_text("raw/flights/date=2013-01-02/validation.json") == '{"status": "passed", "é": 1}'
    pd.testing.assert_frame_equal(s3_lake.read_parquet("raw/flights/date=2013-01-02/data.parquet"), frame)
    assert s3_server.get(bucket, "lake/landing/flights/date=2013-01-02/flights.csv") == b"a,b\n1,2\n"


def test_create_writes_only_a_missing_key(s3_lake: S3Lake) -> None:
    """A conditional PUT (If-None-Match: *): the first create wins, the second changes nothing."""
    assert s3_lake.create("leases/ingest/date=2013-01-02.json", b"first")
    assert not s3_lake.create("leases/ingest/date=2013-01-02.json", b"second")
    assert s3_lake.read_bytes("leases/ingest/date=2013-01-02.json") == b"first"


def test_read_missing_key_raises_file_not_found(s3_lake: S3Lake) -> None:
    with pytest.raises(FileNotFoundError, match="raw/flights/date=2013-01-02/data.parquet"):
        s3_lake.read_bytes("raw/flights/date=2013-01-02/data.parquet")


def test_exists(s3_lake: S3Lake) -> None:
    s3_lake.write_bytes("raw/flights/date=2013-01-02/data.parquet", b"x")

    assert s3_lake.exists("raw/flights/date=2013-01-02/data.parquet")
    assert not s3_lake.exists("raw/flights/date=2013-01-03/data.parquet")
    assert not s3_lake.exists("raw/flights/date=2013-01-02")


def test_list_keys_sorted_relative_to_prefix(s3_lake: S3Lake) -> None:
    for key in ("raw/weather/date=2013-01-01/data.parquet", "raw/flights/date=2013-01-02/validation.json",
                "raw/flights/date=2013-01-02/data.parquet", "raw/flights/date=2013-01-01/data.parquet",
                "landing/flights/date=2013-01-01/flights.csv"):
        s3_lake.write_bytes(key, b"x")

    expected = ["raw/flights/date=2013-01-01/data.parquet", "raw/flights/date=2013-01-02/data.parquet",
                "raw/flights/date=2013-01-02/validation.json"]
    assert s3_lake.list_keys("raw/flights/") == expected
    assert s3_lake.list_keys("raw/") == [*expected, "raw/weather/date=2013-01-01/data.parquet"]
    assert len(s3_lake.list_keys("")) == 5
    assert s3_lake.list_keys("quarantine/") == []


def test_list_keys_pages_past_one_listing(s3_lake: S3Lake, s3_server: S3Server, bucket: str) -> None:
    """More keys than one ListObjectsV2 page (1000) are all listed."""
    client = s3_server.client()
    keys = [f"landing/flights/date=2013-01-02/part-{i:04d}.csv" for i in range(1005)]
    with ThreadPoolExecutor(max_workers=16) as pool:
        list(pool.map(lambda key: client.put_object(Bucket=bucket, Key=f"lake/{key}", Body=b""), keys))

    assert s3_lake.list_keys("landing/") == keys


def test_list_keys_ignores_temporary_keys(s3_lake: S3Lake, s3_server: S3Server, bucket: str) -> None:
    s3_lake.write_bytes("raw/flights/date=2013-01-02/data.parquet", b"x")
    s3_server.client().put_object(Bucket=bucket, Key="lake/raw/flights/date=2013-01-02/data.parquet.abc.tmp", Body=b"")

    assert s3_lake.list_keys("raw/") == ["raw/flights/date=2013-01-02/data.parquet"]


def test_delete_and_delete_prefix(s3_lake: S3Lake, s3_server: S3Server, bucket: str) -> None:
    for day in ("2013-01-02", "2013-01-03"):
        s3_lake.write_bytes(f"quarantine/flights/date={day}/data.parquet", b"x")
        s3_lake.write_bytes(f"quarantine/flights/date={day}/validation.json", b"{}")

    s3_lake.delete("quarantine/flights/date=2013-01-03/validation.json")
    s3_lake.delete("quarantine/flights/date=2013-01-09/validation.json")  # missing: not an error
    s3_lake.delete_prefix("quarantine/flights/date=2013-01-02/")

    assert s3_server.keys(bucket) == ["lake/quarantine/flights/date=2013-01-03/data.parquet"]
    assert s3_lake.partitions("quarantine", "flights") == [date(2013, 1, 3)]


def test_list_sizes_pages_and_delete_keys_batches(s3_lake: S3Lake, s3_server: S3Server, bucket: str) -> None:
    """Sizes come with the listing (every page of it); 1,005 keys are deleted in two DeleteObjects requests, keys
    already gone included, and deleting them all again is no error (a retried prune)."""
    client = s3_server.client()
    keys = [f"predictions/flight_delay/date=2013-01-02/part-{i:04d}.parquet" for i in range(1005)]
    with ThreadPoolExecutor(max_workers=16) as pool:
        list(pool.map(lambda key: client.put_object(Bucket=bucket, Key=f"lake/{key}", Body=b"x" * (len(key) % 7)),
                      keys))
    s3_lake.write_bytes("labels/flight_delay/date=2013-01-02/data.parquet", b"keep")
    client.put_object(Bucket=bucket, Key="lake/predictions/flight_delay/date=2013-01-02/x.parquet.abc.tmp", Body=b"")
    s3_lake.delete(keys[0])
    calls: list[str] = []
    s3_lake.client.meta.events.register("before-parameter-build.s3", lambda model, **kwargs: calls.append(model.name))

    sizes = s3_lake.list_sizes("predictions/")
    assert sizes == {key: len(key) % 7 for key in keys[1:]}
    assert s3_lake.delete_keys(keys) == 1005
    assert s3_lake.delete_keys(keys) == 1005

    assert calls == ["ListObjectsV2", "ListObjectsV2", "DeleteObjects", "DeleteObjects", "DeleteObjects",
                     "DeleteObjects"]
    assert s3_server.keys(bucket) == ["lake/labels/flight_delay/date=2013-01-02/data.parquet",
                                      "lake/predictions/flight_delay/date=2013-01-02/x.parquet.abc.tmp"]
    assert s3_lake.list_sizes("") == {"labels/flight_delay/date=2013-01-02/data.parquet": 4}


def test_versions_come_with_the_listing_and_change_with_the_content(s3_lake: S3Lake) -> None:
    """The ETags of one listing: the same bytes written again keep the version, other bytes change it."""
    s3_lake.write_bytes("features/weather_hourly/date=2013-01-02/data.parquet", b"rows")
    s3_lake.write_bytes("features/weather_hourly/date=2013-01-03/data.parquet", b"rows")
    before = s3_lake.list_versions("features/")
    s3_lake.write_bytes("features/weather_hourly/date=2013-01-02/data.parquet", b"rows")
    s3_lake.write_bytes("features/weather_hourly/date=2013-01-03/data.parquet", b"other rows")
    after = s3_lake.list_versions("features/")
    assert list(after) == list(before) == ["features/weather_hourly/date=2013-01-02/data.parquet",
                                           "features/weather_hourly/date=2013-01-03/data.parquet"]
    assert after["features/weather_hourly/date=2013-01-02/data.parquet"] == before[
        "features/weather_hourly/date=2013-01-02/data.parquet"]
    assert after["features/weather_hourly/date=2013-01-03/data.parquet"] != before[
        "features/weather_hourly/date=2013-01-03/data.parquet"]


def test_delete_keys_names_the_keys_s3_refused(s3_lake: S3Lake, monkeypatch: pytest.MonkeyPatch) -> None:
    """A per-key error in a DeleteObjects answer (S3 answers 200 with an Errors list) fails the call by name."""
    answer = {"Errors": [{"Key": "lake/predictions/a", "Code": "AccessDenied", "Message": "Access Denied"}]}
    monkeypatch.setattr(s3_lake.client, "delete_objects", lambda **kwargs: answer)

    with pytest.raises(OSError, match=r"refused to delete 1 of 2 keys .* lake/predictions/a \(AccessDenied"):
        s3_lake.delete_keys(["predictions/a", "predictions/b"])


def test_prune_lake_on_s3(home: Path, s3_server: S3Server, bucket: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Retention on the S3 lake: old prediction logs and Evidently reports go, their summary and every record stay;
    a dry run first deletes nothing and names the same objects."""
    from pipelines.ops.retention import prune_lake

    monkeypatch.setenv("LAKE_URI", f"s3://{bucket}/lake")
    monkeypatch.setenv("S3_ENDPOINT_URL", s3_server.endpoint)
    monkeypatch.setenv("RETENTION_PREDICTION_LOGS_DAYS", "30")
    monkeypatch.setenv("RETENTION_REPORTS_DAYS", "30")
    lake = open_lake(get_settings())
    old = ["predictions/flight_delay/date=2013-05-30/part-0.parquet",
           "reports/monitoring/date=2013-05-30/report.html", "reports/monitoring/date=2013-05-30/report.json"]
    kept = ["predictions/flight_delay/date=2013-05-31/part-0.parquet",
            "reports/monitoring/date=2013-05-30/summary.json", "labels/flight_delay/date=2013-05-30/data.parquet",
            "validated/flights/date=2013-05-30/data.parquet"]
    for key in old + kept:
        lake.write_bytes(key, b"abc")

    dry = prune_lake(date(2013, 6, 30), dry_run=True)
    assert s3_server.keys(bucket) == sorted(f"lake/{key}" for key in old + kept)
    real = prune_lake(date(2013, 6, 30))

    assert s3_server.keys(bucket) == sorted(f"lake/{key}" for key in kept)
    for result in (dry, real):
        assert (result["kinds"]["prediction_logs"]["objects"], result["kinds"]["reports"]["objects"]) == (1, 2)
        assert result["kinds"]["reports"]["bytes"] == 6 and result["kinds"]["reports"]["cutoff"] == "2013-05-31"
        assert result["kinds"]["reports"]["where"] == f"s3://{bucket}/lake"
    assert prune_lake(date(2013, 6, 30))["objects"] == 0


def test_partitions(s3_lake: S3Lake) -> None:
    for key in ("raw/flights/date=2013-01-03/data.parquet", "raw/flights/date=2013-01-03/validation.json",
                "raw/flights/date=2013-01-01/data.parquet", "raw/flights/notes/readme.txt",
                "raw/flights/stray.parquet", "raw/weather/date=2013-01-02/data.parquet",
                "validated/flights/date=2013-01-04/data.parquet"):
        s3_lake.write_bytes(key, b"x")

    assert s3_lake.partitions("raw", "flights") == [date(2013, 1, 1), date(2013, 1, 3)]
    assert s3_lake.partitions("raw", "weather") == [date(2013, 1, 2)]
    assert s3_lake.partitions("quarantine", "weather") == []


def test_overwrite_replaces_and_leaves_no_tmp_keys(s3_lake: S3Lake, s3_server: S3Server, bucket: str) -> None:
    key = "raw/flights/date=2013-01-02/data.parquet"
    s3_lake.write_bytes(key, b"first version, rather long")
    s3_lake.write_bytes(key, b"second")

    assert s3_lake.read_bytes(key) == b"second"
    assert s3_server.keys(bucket) == [f"lake/{key}"]
    assert not [k for k in s3_server.keys(bucket) if k.endswith(".tmp")]


def test_a_write_is_one_put_and_nothing_else(s3_lake: S3Lake, s3_server: S3Server, bucket: str) -> None:
    """S3's PUT is atomic by itself: a write (first or overwrite) is exactly one PutObject to the final key, with
    no temporary key, copy or delete, and the bucket holds only the final keys afterwards."""
    calls: list[tuple[str, str]] = []

    def record(model: Any, params: dict[str, Any], **kwargs: Any) -> None:
        calls.append((model.name, params.get("Key", "")))

    s3_lake.client.meta.events.register("before-parameter-build.s3", record)
    key = "raw/flights/date=2013-01-02/data.parquet"
    s3_lake.write_bytes(key, b"first")
    s3_lake.write_bytes(key, b"second")
    s3_lake.write_parquet("raw/weather/date=2013-01-02/data.parquet", pd.DataFrame({"a": [1]}))

    assert calls == [("PutObject", f"lake/{key}"), ("PutObject", f"lake/{key}"),
                     ("PutObject", "lake/raw/weather/date=2013-01-02/data.parquet")]
    assert s3_server.keys(bucket) == [f"lake/{key}", "lake/raw/weather/date=2013-01-02/data.parquet"]
    assert s3_server.get(bucket, f"lake/{key}") == b"second"


def test_failed_write_keeps_old_object(
    s3_lake: S3Lake, s3_server: S3Server, bucket: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """If the PUT fails, the old object is intact and nothing else is left in the bucket."""
    key = "validated/flights/date=2013-01-02/data.parquet"
    s3_lake.write_bytes(key, b"good old data")

    def fail(**kwargs: Any) -> None:
        raise ConnectionError("network dropped")

    monkeypatch.setattr(s3_lake.client, "put_object", fail)
    with pytest.raises(ConnectionError):
        s3_lake.write_bytes(key, b"new data that never lands")

    assert s3_server.get(bucket, f"lake/{key}") == b"good old data"
    assert s3_server.keys(bucket) == [f"lake/{key}"]


def test_prefix_with_several_levels_and_trailing_slash(s3_server: S3Server, bucket: str) -> None:
    """s3://bucket/some/prefix/ puts every key under some/prefix/ and hides the prefix from callers."""
    lake = S3Lake(f"s3://{bucket}/some/prefix/", endpoint_url=s3_server.endpoint)
    lake.write_bytes("raw/flights/date=2013-01-02/data.parquet", b"x")

    assert (lake.prefix, lake.uri) == ("some/prefix", f"s3://{bucket}/some/prefix")
    assert s3_server.keys(bucket) == ["some/prefix/raw/flights/date=2013-01-02/data.parquet"]
    assert lake.list_keys("") == ["raw/flights/date=2013-01-02/data.parquet"]
    assert lake.url("raw/flights/date=2013-01-02/data.parquet") == (
        f"s3://{bucket}/some/prefix/raw/flights/date=2013-01-02/data.parquet"
    )


def test_lakes_with_sibling_prefixes_do_not_see_each_other(s3_server: S3Server, bucket: str) -> None:
    """A lake at .../lake does not list keys of a lake at .../lake2, nor keys at the bucket root."""
    lake = S3Lake(f"s3://{bucket}/lake", endpoint_url=s3_server.endpoint)
    other = S3Lake(f"s3://{bucket}/lake2", endpoint_url=s3_server.endpoint)
    lake.write_bytes("raw/flights/date=2013-01-02/data.parquet", b"mine")
    other.write_bytes("raw/flights/date=2013-01-03/data.parquet", b"theirs")
    s3_server.client().put_object(Bucket=bucket, Key="raw/flights/date=2013-01-04/data.parquet", Body=b"root")

    assert lake.list_keys("") == ["raw/flights/date=2013-01-02/data.parquet"]
    assert lake.partitions("raw", "flights") == [date(2013, 1, 2)]
    assert other.partitions("raw", "flights") == [date(2013, 1, 3)]
    assert not lake.exists("raw/flights/date=2013-01-03/data.parquet")


def test_bucket_root_lake_without_prefix(s3_server: S3Server, bucket: str) -> None:
    lake = S3Lake(f"s3://{bucket}", endpoint_url=s3_server.endpoint)
    lake.write_bytes("raw/weather/date=2013-01-02/data.parquet", b"x")

    assert lake.prefix == ""
    assert s3_server.keys(bucket) == ["raw/weather/date=2013-01-02/data.parquet"]
    assert lake.partitions("raw", "weather") == [date(2013, 1, 2)]


def test_list_keys_prefix_is_a_folder_like_on_local(s3_lake: S3Lake) -> None:
    s3_lake.write_bytes("raw/flights/date=2013-01-02/data.parquet", b"x")
    s3_lake.write_bytes("raw/flights_v2/date=2013-01-02/data.parquet", b"x")

    assert s3_lake.list_keys("raw/flights") == ["raw/flights/date=2013-01-02/data.parquet"]


@pytest.mark.parametrize(
    ("uri", "message"),
    [("bucket/lake", "must start with s3://"), ("s3:///lake", "names no bucket"), ("s3://", "names no bucket"),
     ("gs://bucket/lake", "must start with s3://")],
)
def test_bad_s3_uris_raise_clear_errors(aws_env: None, uri: str, message: str) -> None:
    with pytest.raises(ValueError, match=message) as caught:
        S3Lake(uri)
    assert repr(uri) in str(caught.value)


def test_missing_bucket_is_an_error_not_an_empty_lake(s3_server: S3Server, aws_env: None) -> None:
    from botocore.exceptions import ClientError

    lake = S3Lake("s3://no-such-bucket-here/lake", endpoint_url=s3_server.endpoint)
    with pytest.raises(ClientError, match="NoSuchBucket"):
        lake.write_bytes("raw/x", b"x")
    with pytest.raises(ClientError, match="NoSuchBucket"):
        lake.list_keys("")


def test_open_lake_uses_env_for_uri_and_endpoint(
    home: Path, s3_server: S3Server, bucket: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LAKE_URI", f"s3://{bucket}/lake")
    monkeypatch.setenv("S3_ENDPOINT_URL", s3_server.endpoint)
    lake = open_lake(get_settings())
    lake.write_bytes("landing/weather/date=2013-01-02/weather.csv", b"h\n")

    assert isinstance(lake, S3Lake)
    assert s3_server.keys(bucket) == ["lake/landing/weather/date=2013-01-02/weather.csv"]
    assert not (home / "lake").exists()


# --- the whole chain on S3 -----------------------------------------------------------------------------------------


def test_chain_for_one_day_on_s3(home: Path, s3_server: S3Server, bucket: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """land -> ingest -> validate -> promote for 2013-01-02 puts passed, validated partitions in the bucket."""
    from pipelines.ingest.steps import ingest_feed
    from pipelines.simulation.feed import land_feed
    from pipelines.validation.steps import check_quarantine, promote_partitions, validate_partitions

    monkeypatch.setenv("LAKE_URI", f"s3://{bucket}/lake")
    monkeypatch.setenv("S3_ENDPOINT_URL", s3_server.endpoint)

    landed = land_feed([DAY])
    ingested = ingest_feed([DAY])
    validated = validate_partitions([DAY], run_key="test/s3")
    promoted = promote_partitions([DAY])

    assert landed["lake"] == f"s3://{bucket}/lake"
    assert ingested["rows"]["flights"] > 0 and ingested["rows"]["weather"] > 0
    assert validated["quarantined"] == 0
    assert promoted["quarantined"] == {}
    check_quarantine(promoted)

    fresh = s3_server.new_client()
    keys = sorted(o["Key"] for p in fresh.get_paginator("list_objects_v2").paginate(Bucket=bucket)
                  for o in p.get("Contents", []))
    for table in ("flights", "weather"):
        part = f"lake/validated/{table}/date=2013-01-02/"
        assert f"{part}data.parquet" in keys
        assert f"{part}validation.json" in keys
        verdict = json.loads(s3_server.get(bucket, f"{part}validation.json"))
        assert verdict["status"] == "passed", verdict["reason"]
        assert verdict["table"] == table and verdict["date"] == "2013-01-02"
        assert verdict["run_key"] == "test/s3"
        assert len(verdict["content_hash"]) == 64
        rows = pd.read_parquet(io.BytesIO(s3_server.get(bucket, f"{part}data.parquet")))
        assert len(rows) == verdict["rows"] == ingested["rows"][table] == promoted["validated"][f"{table}/2013-01-02"]
        assert f"lake/landing/{table}/date=2013-01-02/{table}.csv" in keys
        assert f"lake/raw/{table}/date=2013-01-02/data.parquet" in keys
    assert not [k for k in keys if k.endswith(".tmp")]
    assert not [k for k in keys if k.startswith("lake/quarantine/")]
    assert {k.split("/")[1] for k in keys} == {"landing", "raw", "validated", "reference"}

    # The local home holds GX output only: no lake was written to disk.
    assert not (home / "lake").exists()

    # Plain HTTP, no boto3: the server process is what holds the data.
    listing = urllib.request.urlopen(f"{s3_server.endpoint}/{bucket}?list-type=2&prefix=lake/validated/", timeout=10)
    body = listing.read().decode()
    assert "lake/validated/flights/date=2013-01-02/validation.json" in body
    assert "lake/validated/weather/date=2013-01-02/data.parquet" in body
