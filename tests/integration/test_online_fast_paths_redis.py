"""The fast materialization writer and the compiled reader against stock Feast on a real Redis server.

A ``redis-server`` of its own runs for this module (a free port, no persistence, a temporary folder); the test is
skipped where the binary is missing. Stock ``store.materialize`` writes into db 0, the fast engine into db 1, from
the same feature lake (``tests/unit/test_online_fast_paths.py`` builds it) with the production profile (SQL
registry, here in a SQLite file). Every key and hash field must be identical, including after out-of-order windows
(older rows arriving after newer ones are skipped by both) and with ``skip_dedup`` / ``key_ttl_seconds``, and the
writer makes one script call per ``materialization.online_write_batch_size`` keys.
"""

from __future__ import annotations

import importlib.util
import math
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from pipelines.core.settings import Settings
from pipelines.features import store as fs
from pipelines.features.online_writer import FastLocalComputeEngine
from tests.helpers.redis_server import redis_server

pytestmark = pytest.mark.integration


def _unit_module() -> ModuleType:
    """The unit test module that builds the edge-case feature lake (loaded by path: tests are not a package)."""
    path = Path(__file__).resolve().parents[1] / "unit" / "test_online_fast_paths.py"
    spec = importlib.util.spec_from_file_location("online_fast_paths_lake", path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


LAKE = _unit_module()


@pytest.fixture(scope="module")
def redis_port(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    with redis_server(tmp_path_factory.mktemp("redis")) as port:
        yield port


@pytest.fixture
def homes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, redis_port: int) -> dict[str, Settings]:
    from redis import Redis

    for name in ("FEAST_HOME", "FEATURES_URI", "FEAST_REGISTRY_URL", "FEAST_REDIS", "FEAST_PROFILE", "LAKE_URI"):
        monkeypatch.delenv(name, raising=False)
    lake = tmp_path / "lake"
    LAKE.write_feature_lake(lake)
    out = {}
    for db, name in enumerate(("stock", "ours")):
        Redis(port=redis_port, db=db).flushdb()
        out[name] = Settings(pipeline_home=tmp_path / name, lake_uri=str(lake), feast_profile="production",
                             feast_registry_url=f"sqlite:///{tmp_path}/registry_{name}.db",
                             feast_redis=f"127.0.0.1:{redis_port},db={db}")
    return out


def redis_contents(settings: Settings) -> dict[bytes, dict[bytes, bytes]]:
    from redis import Redis

    host, rest = str(settings.feast_redis).split(":")
    port, db = rest.split(",db=")
    client = Redis(host=host, port=int(port), db=int(db))
    return {key: client.hgetall(key) for key in client.scan_iter()}


def ttls(settings: Settings) -> list[int]:
    from redis import Redis

    host, rest = str(settings.feast_redis).split(":")
    port, db = rest.split(",db=")
    client = Redis(host=host, port=int(port), db=int(db))
    return [client.ttl(key) for key in client.scan_iter()]


@pytest.mark.parametrize("windows", [
    [LAKE.DAYS[:2], LAKE.DAYS[1:]],  # overlapping, in order (the DAG's late-data overlap)
    [LAKE.DAYS[1:], LAKE.DAYS[:1]],  # newer first: a backfill after later days, which must not roll anything back
])
def test_fast_redis_materialization_is_byte_identical(homes: dict[str, Settings], windows: list[Any]) -> None:
    for days in windows:
        fs.materialize_features(days, homes["stock"], stock=True)
        ours = fs.materialize_features(days, homes["ours"])
        assert [n for n, v in ours["views"].items() if not v["fast"]] == []
        got, expected = redis_contents(homes["ours"]), redis_contents(homes["stock"])
        assert got == expected and len(got) > 20
        rows = LAKE.entity_rows()
        assert LAKE.same(LAKE.stock_read(homes["ours"], rows), LAKE.stock_read(homes["stock"], rows))


@pytest.mark.parametrize("option", [{"skip_dedup": True}, {"key_ttl_seconds": 3600}])
def test_store_options_are_honoured(homes: dict[str, Settings], option: dict[str, Any]) -> None:
    start, end = fs.run_window(LAKE.DAYS)
    for name in ("stock", "ours"):
        store = fs.open_store(homes[name], stock=name == "stock")
        for key, value in option.items():
            setattr(store.config.online_store, key, value)
        fs.apply_definitions(store)
        views = LAKE.fs_views()
        store.materialize(start_date=end - (end - start) / 2, end_date=end, feature_views=views)  # newer half first
        store.materialize(start_date=start, end_date=end, feature_views=views)
    assert redis_contents(homes["ours"]) == redis_contents(homes["stock"])
    if "key_ttl_seconds" in option:
        assert all(0 < t <= 3600 for t in ttls(homes["ours"]) + ttls(homes["stock"]))


@pytest.mark.parametrize("skip_dedup", [True, False])
def test_online_write_batch_size_is_honoured(homes: dict[str, Settings], skip_dedup: bool) -> None:
    """Keys per script call = ``materialization.online_write_batch_size`` (two calls per batch, read and write,
    unless ``skip_dedup``), counted by the server; the stored bytes stay those of stock with the same batch size."""
    from redis import Redis

    start, end = fs.run_window(LAKE.DAYS)
    host, rest = str(homes["ours"].feast_redis).split(":")
    server = Redis(host=host, port=int(rest.split(",")[0]))
    stats: dict[str, dict[str, int]] = {}
    for name in ("stock", "ours"):
        store = fs.open_store(homes[name], stock=name == "stock")
        assert store.config.materialization_config.online_write_batch_size == 1000  # production.yaml
        store.config.materialization_config.online_write_batch_size = 2
        store.config.online_store.skip_dedup = skip_dedup
        fs.apply_definitions(store)
        server.config_resetstat()
        store.materialize(start_date=start, end_date=end, feature_views=LAKE.fs_views())
        calls = server.info("commandstats").get("cmdstat_evalsha", {}).get("calls", 0)
        engine = store._get_provider().batch_engine
        if name == "ours":
            assert type(engine) is FastLocalComputeEngine
            stats = engine.stats
    assert redis_contents(homes["ours"]) == redis_contents(homes["stock"])
    assert [n for n, v in stats.items() if not v["fast"]] == []
    batches = sum(math.ceil(v["rows_deduplicated"] / 2) for v in stats.values())
    assert batches > len(stats)
    assert calls == (1 if skip_dedup else 2) * batches


def test_compiled_reader_on_redis(homes: dict[str, Settings]) -> None:
    from pipelines.features.online_reader import read_online, reader_for

    fs.materialize_features(LAKE.DAYS, homes["ours"])
    store = fs.open_store(homes["ours"])
    assert reader_for(store, fs.FEATURE_SERVICE) is not None
    service = store.get_feature_service(fs.FEATURE_SERVICE, allow_cache=True)
    rows = LAKE.entity_rows()
    for batch in (rows[:1], rows[2:6], rows, [rows[5]] * 3):
        expected = store.get_online_features(features=service, entity_rows=batch).to_dict()
        assert LAKE.same(read_online(store, fs.FEATURE_SERVICE, batch), expected)


def test_rewind_puts_back_what_was_online_at_a_time(homes: dict[str, Settings]) -> None:
    """After the whole window is online, the store rewound to a time reads as a store loaded only up to it: on Redis
    a later row stays unless forced over (what a replay after ``make up``'s materialization would serve)."""
    LAKE.check_rewind(homes)
