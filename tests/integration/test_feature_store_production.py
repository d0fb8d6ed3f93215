"""The production Feast profile for real: SQL registry in a fresh PostgreSQL database, online store in a Redis db of
its own, on 127.0.0.1, beside the embedded (SQLite) profile over the same lake.

Both profiles apply and materialize the same days; whatever Redis serves must be what SQLite serves. The database
is created for the module and dropped after it; the Redis db is an empty one, flushed before and after.
"""

from __future__ import annotations

import os
import random
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from pipelines.core.dates import date_range
from pipelines.core.lake import open_lake, partition_key
from pipelines.core.settings import Settings
from pipelines.features.operations import OPERATIONS_VIEWS
from pipelines.features.steps import build_features, feature_key
from pipelines.features.store import (
    ENTITY_COLUMNS,
    FEATURE_SERVICE,
    flight_entities,
    materialize_features,
    online_features,
    open_store,
)
from pipelines.ingest.steps import ingest_feed
from pipelines.simulation.feed import land_feed
from pipelines.validation.steps import promote_partitions, validate_partitions

pytestmark = pytest.mark.integration

HOST = "127.0.0.1"
POSTGRES_ADMIN = f"postgresql://postgres@{HOST}:5432/postgres"
REDIS_PORT = 6379
DAYS = date_range(date(2013, 1, 1), date(2013, 1, 4))
VIEWS = {"weather_hourly", "flight_schedule", "carrier_stats", "route_stats", "plane_attributes"}
NOT_FEATURES = {*ENTITY_COLUMNS, "event_timestamp", "disrupted"}


@pytest.fixture(scope="module")
def postgres_url() -> Iterator[str]:
    """A fresh database for the registry (SQLAlchemy URL), dropped after the module."""
    psycopg = pytest.importorskip("psycopg")
    try:
        admin = psycopg.connect(POSTGRES_ADMIN, autocommit=True, connect_timeout=5)
    except psycopg.OperationalError as error:
        pytest.skip(f"PostgreSQL is not reachable on {HOST}:5432: {error}")
    name = f"feast_test_{uuid.uuid4().hex[:12]}"
    with admin:
        admin.execute(f'CREATE DATABASE "{name}"')
        try:
            yield f"postgresql+psycopg://postgres@{HOST}:5432/{name}"
        finally:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="module")
def redis_db() -> Iterator[int]:
    """An empty Redis db number (FEAST_TEST_REDIS_DB, else one picked among the empty ones), flushed around use."""
    redis = pytest.importorskip("redis")
    probe = redis.Redis(host=HOST, port=REDIS_PORT, socket_connect_timeout=5)
    try:
        databases = int(probe.config_get("databases")["databases"])
    except redis.ConnectionError as error:
        pytest.skip(f"Redis is not reachable on {HOST}:{REDIS_PORT}: {error}")
    if os.environ.get("FEAST_TEST_REDIS_DB"):
        number = int(os.environ["FEAST_TEST_REDIS_DB"])
    else:
        # Dbs 9-13 are this module's: tests/e2e/test_production_profile.py takes from 3-8 (they may run at once,
        # on make test's two workers), the bench flushes 14 and 15.
        empty = [n for n in range(9, min(14, databases)) if redis.Redis(host=HOST, port=REDIS_PORT, db=n).dbsize() == 0]
        if not empty:
            pytest.skip("no empty Redis db among 9-13 to dedicate to the test")
        number = random.choice(empty)
    client = redis.Redis(host=HOST, port=REDIS_PORT, db=number)
    client.flushdb()
    try:
        yield number
    finally:
        client.flushdb()


@dataclass(frozen=True)
class Profiles:
    """The same lake served by both profiles."""

    embedded: Settings
    production: Settings
    redis_db: int
    postgres_url: str

    def redis(self) -> Any:
        import redis

        return redis.Redis(host=HOST, port=REDIS_PORT, db=self.redis_db)

    def postgres(self, sql: str) -> list[tuple[Any, ...]]:
        import psycopg

        with psycopg.connect(self.postgres_url.replace("+psycopg", ""), autocommit=True) as connection:
            return connection.execute(sql).fetchall()


@pytest.fixture(scope="module")
def profiles(tmp_path_factory: pytest.TempPathFactory, postgres_url: str, redis_db: int) -> Iterator[Profiles]:
    """Validated days and their features; materialize_features run by both profiles."""
    root = tmp_path_factory.mktemp("feast_production")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("GX_ANALYTICS_ENABLED", "false")
        for name in ("LAKE_URI", "S3_ENDPOINT_URL", "FEAST_PROFILE"):
            patch.delenv(name, raising=False)
        patch.setenv("PIPELINE_HOME", str(root / "embedded"))
        for name in ("FEAST_HOME", "FEATURES_URI", "FEAST_REGISTRY_URL", "FEAST_REDIS"):
            patch.setenv(name, "unset")  # open_store writes them: restored after the module
        embedded = Settings(pipeline_home=root / "embedded", lake_uri=None, s3_endpoint_url=None,
                            feast_profile="embedded", feast_registry_url=None, feast_redis=None)
        production = Settings(pipeline_home=root / "production", lake_uri=embedded.lake_root, s3_endpoint_url=None,
                              feast_profile="production", feast_registry_url=postgres_url,
                              feast_redis=f"{HOST}:{REDIS_PORT},db={redis_db}")
        land_feed(DAYS, embedded)
        ingest_feed(DAYS, embedded)
        validate_partitions(DAYS, embedded)
        assert promote_partitions(DAYS, embedded)["quarantined"] == {}
        build_features(DAYS, embedded)
        for settings in (embedded, production):
            materialize_features(DAYS, settings)
        yield Profiles(embedded=embedded, production=production, redis_db=redis_db, postgres_url=postgres_url)


def _sample(settings: Settings, days: list[date], size: int = 300) -> pd.DataFrame:
    lake = open_lake(settings)
    flights = pd.concat([lake.read_parquet(partition_key("validated", "flights", d, "data.parquet")) for d in days],
                        ignore_index=True)
    return flight_entities(flights).sample(size, random_state=11).sort_values("flight_id")


def _same(left: pd.DataFrame, right: pd.DataFrame) -> dict[str, str]:
    """Per feature column, the flights whose values differ (nulls equal nulls)."""
    left, right = left.set_index("flight_id").sort_index(), right.set_index("flight_id").sort_index()
    found = {}
    for column in (c for c in left.columns if c not in NOT_FEATURES):
        a, b = left[column].astype(object), right[column].astype(object)
        equal = (a == b) | (a.isna() & b.isna())
        if not equal.all():
            found[column] = f"{(~equal).sum()} differ, e.g. {list(zip(a[~equal][:3], b[~equal][:3], strict=True))}"
    return found


def test_production_store_is_postgres_and_redis(profiles: Profiles) -> None:
    store = open_store(profiles.production)
    assert store.config.registry.registry_type == "sql"
    assert store.config.online_store.type == "redis"
    assert store.config.online_store.connection_string.startswith(f"{HOST}:{REDIS_PORT},db={profiles.redis_db},")
    assert not (Path(profiles.production.pipeline_home) / "feast" / "registry.db").exists()
    assert not (Path(profiles.production.pipeline_home) / "feast" / "online.db").exists()


def test_registry_tables_hold_the_definitions(profiles: Profiles) -> None:
    tables = {row[0] for row in profiles.postgres(
        "SELECT table_name FROM information_schema.tables WHERE table_schema = 'public'")}
    assert {"projects", "entities", "data_sources", "feature_views", "on_demand_feature_views",
            "feature_services", "feast_metadata"} <= tables

    pushed = set(OPERATIONS_VIEWS)
    assert {row[0] for row in profiles.postgres("SELECT feature_view_name FROM feature_views")} == VIEWS | pushed
    assert profiles.postgres("SELECT feature_service_name FROM feature_services") == [(FEATURE_SERVICE,)]
    assert profiles.postgres("SELECT feature_view_name FROM on_demand_feature_views") == [("request_features",)]
    # Read back through Feast: the views' materialized intervals are what the registry in PostgreSQL recorded; the
    # operations views, online only by push, have none.
    recorded = {view.name: view.materialization_intervals for view in open_store(profiles.production)
                .list_feature_views(allow_cache=False)}
    assert set(recorded) == VIEWS | pushed and all(recorded[v] for v in VIEWS)
    assert not any(recorded[v] for v in pushed)


def test_redis_holds_one_key_per_materialized_entity(profiles: Profiles) -> None:
    lake = open_lake(profiles.embedded)
    tables = {view: pd.concat([lake.read_parquet(k) for k in lake.list_keys(f"features/{view}/")
                               if k.endswith(".parquet")]) for view in VIEWS}
    keys = {"weather_hourly": "origin", "flight_schedule": "flight_id", "carrier_stats": "carrier",
            "route_stats": "route", "plane_attributes": "tailnum"}
    expected = sum(tables[view][key].nunique() for view, key in keys.items())

    assert profiles.redis().dbsize() == expected
    assert open_lake(profiles.embedded).exists(feature_key("plane_attributes", date(2012, 12, 31)))


def test_redis_serves_what_sqlite_serves(profiles: Profiles) -> None:
    sample = _sample(profiles.embedded, DAYS)

    from_redis = online_features(sample, profiles.production)
    from_sqlite = online_features(sample, profiles.embedded)

    assert _same(from_redis, from_sqlite) == {}
    assert len(from_redis) == len(sample)
    present = ["temp", "origin_day_departures", "carrier_flights_7d", "route_flights_28d", "dep_hour"]
    assert from_redis[present].notna().all().all()
    assert from_redis["plane_seats"].notna().mean() > 0.5


def test_a_redelivered_day_reaches_both_online_stores(profiles: Profiles) -> None:
    """The latest day redelivered with other outcomes: rebuilt features, same window rematerialized, same values."""
    lake = open_lake(profiles.embedded)
    key = partition_key("validated", "flights", DAYS[-1], "data.parquet")
    original = lake.read_parquet(key)
    sample = _sample(profiles.embedded, DAYS[-1:], size=100)
    before = online_features(sample, profiles.embedded)
    try:
        lake.write_parquet(key, original.assign(arr_delay=original["arr_delay"] + 120.0))
        build_features(DAYS[-1:], profiles.embedded)
        for settings in (profiles.embedded, profiles.production):
            materialize_features(DAYS, settings)
        from_sqlite = online_features(sample, profiles.embedded)
        assert "carrier_mean_arr_delay_7d" in _same(before, from_sqlite)  # SQLite serves the corrected statistics
        assert _same(online_features(sample, profiles.production), from_sqlite) == {}
    finally:  # put the module's lake and both stores back as they were
        lake.write_parquet(key, original)
        build_features(DAYS[-1:], profiles.embedded)
        for settings in (profiles.embedded, profiles.production):
            materialize_features(DAYS, settings)
