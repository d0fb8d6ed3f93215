"""The Feast side of features: opening the store for a profile, applying ``feature_repo/``, materializing a run's
window, reading online, and building point-in-time correct training sets.

Feast reads ``${VAR}`` in ``feature_store.yaml`` from the process environment, and ``feature_repo/definitions.py``
reads ``FEATURES_URI`` the same way, so ``open_store`` sets those variables from the settings before Feast loads.

Two of Feast's paths are replaced where profiling showed them slow, both proven equal to stock by tests:
materialization ends in a bulk online writer (``pipelines.features.online_writer``; its engine is named as
``batch_engine`` in the yaml files, so the ``feast`` CLI uses it too) and online reads go through a compiled reader of
the feature service (``pipelines.features.online_reader``). ``stock=True`` on ``open_store``,
``materialize_features`` and ``online_features`` runs Feast's own.
"""

from __future__ import annotations

import importlib.util
import io
import logging
import os
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import date, datetime, timedelta
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any, TypeVar

import pandas as pd

from pipelines.core.dates import LOCAL_TZ
from pipelines.core.files import LockHeld, file_lock
from pipelines.core.lake import open_lake, partition_key
from pipelines.core.settings import PROJECT_ROOT, Settings, get_settings
from pipelines.features.operations import local_day_text, operations_keys
from pipelines.features.tables import (
    PLANES_SNAPSHOT,
    PREDICTION_LEAD,
    STATS_PUBLISHED_AFTER_DAY_END,
    disrupted,
    flight_id,
    scheduled_departure,
)

if TYPE_CHECKING:
    from feast import FeatureStore

log = logging.getLogger(__name__)
T = TypeVar("T")

FEATURE_REPO = PROJECT_ROOT / "feature_repo"
FEATURE_SERVICE = "flight_delay_v1"
LATE_DATA_OVERLAP = timedelta(hours=6)
UNKNOWN = "UNKNOWN"
ENTITY_COLUMNS = ["flight_id", "origin", "carrier", "route", "tailnum", "origin_day", "origin_carrier_day", "tail_day",
                  "scheduled_departure", "distance"]


def feast_env(settings: Settings) -> dict[str, str]:
    env = {"FEAST_HOME": str(settings.pipeline_home / "feast"),
           "FEATURES_URI": f"{settings.lake_root.rstrip('/')}/features"}
    if settings.feast_registry_url:
        env["FEAST_REGISTRY_URL"] = settings.feast_registry_url
    if settings.feast_redis:
        env["FEAST_REDIS"] = settings.feast_redis
    return env


def _yaml(settings: Settings) -> Path:
    if settings.feast_profile == "production":
        return FEATURE_REPO / "profiles" / "production.yaml"
    return FEATURE_REPO / "feature_store.yaml"


def open_store(settings: Settings | None = None, *, stock: bool = False) -> FeatureStore:
    """The feature store of the settings' profile, as its yaml configures it (materialization through the fast
    engine the yaml names, historical retrieval through the ASOF offline store); ``stock=True`` runs Feast's own
    ``local`` engine and ``duckdb`` offline store instead, for comparisons."""
    settings = settings or get_settings()
    os.environ.update(feast_env(settings))
    (settings.pipeline_home / "feast").mkdir(parents=True, exist_ok=True)
    from feast import FeatureStore
    from feast.repo_config import load_repo_config

    config = load_repo_config(FEATURE_REPO, _yaml(settings))
    if settings.lake_root.startswith("s3://"):  # the offline store reads the feature tables from S3
        from pipelines.features.duckdb_s3 import configure_duckdb_s3

        configure_duckdb_s3(settings)
    if stock:
        from pipelines.features.offline_asof import STOCK_OFFLINE_STORE
        from pipelines.features.online_writer import STOCK_ENGINE

        config.batch_engine_config = STOCK_ENGINE
        config.offline_config = {**config.offline_config, "type": STOCK_OFFLINE_STORE}
    return FeatureStore(repo_path=str(FEATURE_REPO), config=config)


def definitions() -> ModuleType:
    """``feature_repo/definitions.py``, freshly imported (it reads FEATURES_URI at import)."""
    spec = importlib.util.spec_from_file_location("feature_repo_definitions", FEATURE_REPO / "definitions.py")
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load {FEATURE_REPO / 'definitions.py'}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def apply_definitions(store: FeatureStore) -> list[str]:
    from feast import Entity, FeatureService, FeatureView, OnDemandFeatureView, PushSource, RequestSource

    kinds = (Entity, FeatureView, OnDemandFeatureView, FeatureService, RequestSource, PushSource)
    objects: list[Any] = [v for v in vars(definitions()).values() if isinstance(v, kinds)]
    store.apply(objects)
    return sorted(getattr(o, "name", "?") for o in objects)


def windowed_views(views: Iterable[Any]) -> list[str]:
    """The views materialized by event-time window: all but the plane snapshot (loaded whatever the window) and the
    operations views, which reach the online store only by push, as their events happen: materializing a day of
    them would serve the day's evening to its morning."""
    return [view.name for view in views if view.name != "plane_attributes" and view.stream_source is None]


def rewind_online(store: FeatureStore, at: datetime) -> dict[str, dict[str, int]]:
    """Put the windowed views of the online store back to what they held at ``at``, whatever was loaded since.

    Redis keeps the newest row per key, so once a later window is online (``make up`` materializes each ingested
    day, which a replay of that day then follows) materializing an earlier hour changes nothing, and a replay would
    serve the evening to the morning. Per view, each key's latest offline row stamped at or before ``at`` (within
    the view's TTL) is written over what is stored, and keys whose rows all come later are removed. Views keyed by
    the flight itself (the schedule) are left alone: a flight's rows are stamped before its day, and no request
    asks for another day's flight."""
    import pyarrow as pa

    from pipelines.features.online_writer import bulk_writer, delete_keys, write_batch_size

    provider = store._get_provider()  # type: ignore[attr-defined]
    writer = bulk_writer(provider.online_store, store.config)
    out: dict[str, dict[str, int]] = {}
    for view in store.list_feature_views(allow_cache=True):
        if view.name not in windowed_views([view]) or view.join_keys == ["flight_id"]:
            continue
        keys = {e.name: e.dtype.to_value_type() for e in view.entity_columns}
        source = view.batch_source
        if source is None or view.ttl is None:  # every windowed view has both (feature_repo/)
            raise ValueError(f"feature view {view.name} needs a batch source and a ttl")
        stamp = source.timestamp_field
        features = [f.name for f in view.features]
        known = provider.offline_store.pull_latest_from_table_or_query(
            store.config, source, list(keys), features, stamp, source.created_timestamp_column,
            at - view.ttl, at).to_arrow()
        later = provider.offline_store.pull_all_from_table_or_query(
            store.config, source, list(keys), [], stamp, None, at + timedelta(microseconds=1),
            datetime(2100, 1, 1, tzinfo=at.tzinfo)).to_arrow().select(list(keys))
        written = writer(known, view, keys, write_batch_size(store.config), force=True) if known.num_rows else 0
        seen = set(zip(*(known.column(k).to_pylist() for k in keys), strict=True))
        gone = pd.DataFrame(later.to_pandas()).drop_duplicates()
        gone = gone[[tuple(row) not in seen for row in gone.itertuples(index=False)]]
        removed = delete_keys(provider.online_store, store.config, view, keys,
                              pa.Table.from_pandas(gone, preserve_index=False)) if len(gone) else 0
        out[view.name] = {"written": written, "removed": removed}
    log.info("rewind_online: online store as of %s: %s", at.isoformat(), out)
    return out


class WindowLoads:
    """Views loaded into the online store window by window, as ``store.materialize`` of each window loads them
    (each key's latest row stamped in the window, both ends included, through the bulk writer: the same stored
    bytes), from their offline rows in ``[start, end]`` read once.

    Why: a day's replay loads the views hour by hour, and each ``materialize`` reads the view's whole source again
    and writes the Feast registry twice per view (the view MATERIALIZING, then its interval): 24 of them took 5-7 s
    of a replayed day's 21-31 s, more as the lake grows. ``record`` writes the intervals loaded once, at the end.
    ``tests/integration/test_feature_store.py`` compares the online store with hourly ``materialize``, hour by hour."""

    def __init__(self, store: FeatureStore, views: Iterable[str], start: datetime, end: datetime) -> None:
        import numpy as np

        offline = store._get_provider().offline_store  # type: ignore[attr-defined]
        self.store = store
        self.loaded: dict[str, tuple[datetime, datetime]] = {}
        self._rows: dict[str, Any] = {}
        self._keys: dict[str, pd.DataFrame] = {}
        self.stamps: dict[str, pd.Series] = {}
        """Each view's row stamps in UTC, in row order (sorted: ``views_with_rows`` searches them)."""
        for name in views:
            view = store.get_feature_view(name)
            source = view.batch_source
            if source is None:  # every windowed view has one (feature_repo/)
                raise ValueError(f"feature view {name} needs a batch source")
            keys = [e.name for e in view.entity_columns]
            stamp = source.timestamp_field
            table = offline.pull_all_from_table_or_query(
                store.config, source, keys, [f.name for f in view.features], stamp,
                source.created_timestamp_column or None, start, end).to_arrow()
            stamps = pd.Series(pd.to_datetime(table.column(stamp).to_pandas(), utc=True))
            order = np.argsort(stamps.to_numpy(), kind="stable")
            self._rows[name] = table.take(order)
            self.stamps[name] = stamps.iloc[order].reset_index(drop=True)
            self._keys[name] = table.select(keys).take(order).to_pandas()

    def load(self, views: Iterable[str], since: pd.Timestamp, until: pd.Timestamp) -> int:
        """Each view's latest row per key stamped in ``[since, until]`` into the online store; the rows written."""
        from pipelines.features.online_writer import bulk_writer, write_batch_size

        writer = bulk_writer(self.store._get_provider().online_store, self.store.config)  # type: ignore[attr-defined]
        written = 0
        for name in views:
            stamps = self.stamps[name]
            first, last = stamps.searchsorted(since, "left"), stamps.searchsorted(until, "right")
            if first == last:
                continue
            keys = self._keys[name].iloc[first:last]
            # Rows are in stamp order: the last of each key is its latest.
            latest = keys.index[~keys.duplicated(keep="last")].to_numpy()
            view = self.store.get_feature_view(name)
            written += writer(self._rows[name].take(latest), view,
                              {e.name: e.dtype.to_value_type() for e in view.entity_columns},
                              write_batch_size(self.store.config))
            start, end = self.loaded.get(name, (since.to_pydatetime(), until.to_pydatetime()))
            self.loaded[name] = (min(start, since.to_pydatetime()), max(end, until.to_pydatetime()))
        return written

    def record(self) -> None:
        """The windows loaded, as materialization intervals in the registry (one write per view)."""
        for name, (start, end) in self.loaded.items():
            self.store.registry.apply_materialization(self.store.get_feature_view(name), self.store.project,
                                                      start, end)


def run_window(days: Iterable[date]) -> tuple[datetime, datetime]:
    """Event-time window of the features made for ``days``: from the schedule (published the day before) to the
    statistics of the last day (published the morning after), with an overlap for late data."""
    days = sorted(days)
    first = pd.Timestamp(days[0]).tz_localize(LOCAL_TZ) - pd.Timedelta(days=1)
    last = pd.Timestamp(days[-1]).tz_localize(LOCAL_TZ) + pd.Timedelta(days=1) + STATS_PUBLISHED_AFTER_DAY_END
    return (first - LATE_DATA_OVERLAP).to_pydatetime(), (last + pd.Timedelta(seconds=1)).to_pydatetime()


ONLINE_STORE_TURN_TIMEOUT_S = 1800.0
"""How long a materialization or a day's replay waits for the other to finish with the online store."""


class OnlineStoreBusy(RuntimeError):
    """A replay or a materialization held the online store for longer than the other would wait."""


@contextmanager
def online_store_turn(settings: Settings | None = None) -> Iterator[None]:
    """The online store to one writer of a day's state at a time: a day's replay (the store rewound to the day's
    start, then moved forward hour by hour) and a materialization (which writes a window's end at once) must not
    mix their writes. A lock on this machine (``feast/online_store.lock``); across Airflow workers the pool
    ``online_store`` makes the same tasks take turns."""
    settings = settings or get_settings()
    try:
        with file_lock(settings.pipeline_home / "feast" / "online_store.lock", ONLINE_STORE_TURN_TIMEOUT_S):
            yield
    except LockHeld as error:
        raise OnlineStoreBusy(f"the online store is in use by another replay or materialization ({error})") from None


def materialize_features(days: Iterable[date], settings: Settings | None = None, *,
                         stock: bool = False) -> dict[str, Any]:
    """Apply the definitions, then materialize the run's own window (never "up to now") to the online store, in
    its turn (``online_store_turn``).

    ``store.materialize`` runs the engine of the yaml, the bulk online writer of ``pipelines.features.online_writer``
    (same read, filter and dedup as stock, same stored bytes, several times faster); ``stock=True`` runs Feast's own
    engine. ``engine`` in the result says which one ran."""
    with online_store_turn(settings):
        return _materialize(days, settings, stock)


def _materialize(days: Iterable[date], settings: Settings | None, stock: bool) -> dict[str, Any]:
    from pipelines.features.online_writer import FastLocalComputeEngine

    store = open_store(settings, stock=stock)
    apply_definitions(store)
    start, end = run_window(days)
    views = store.list_feature_views(allow_cache=False)
    # A rerun or backfill of an earlier day must not roll the online store back: reload through the latest end
    # already materialized (the window still starts at the run's own start, never "up to now").
    end = max([end, *(e for view in views for _, e in view.materialization_intervals)])
    started = time.perf_counter()
    windowed = windowed_views(views)
    store.materialize(start_date=start, end_date=end, feature_views=windowed)
    # The plane snapshot is stamped before 2013: load it whatever the window, so serving sees what training sees.
    store.materialize(start_date=min(start, PLANES_SNAPSHOT.to_pydatetime()), end_date=end,
                      feature_views=["plane_attributes"])
    seconds = time.perf_counter() - started
    # Feast has no public accessor for the engine a store built; tests/unit/test_online_fast_paths.py pins this one.
    engine = store._get_provider().batch_engine  # type: ignore[attr-defined]
    fast = isinstance(engine, FastLocalComputeEngine)
    stats = dict(engine.stats) if fast else {}
    log.info("materialize_features: %s .. %s in %.1fs (%s engine)", start, end, seconds, "fast" if fast else "stock")
    return {"start": start.isoformat(), "end": end.isoformat(), "seconds": round(seconds, 2),
            "engine": "fast" if fast else "stock", "views": stats}


def flight_entities(flights: pd.DataFrame) -> pd.DataFrame:
    """One row per flight: the entity keys, request fields, prediction time and label."""
    departure = scheduled_departure(flights)
    keys = operations_keys(local_day_text(departure), flights["origin"], flights["carrier"], flights["tailnum"])
    return pd.DataFrame({
        "flight_id": flight_id(flights),
        "origin": flights["origin"],
        "carrier": flights["carrier"],
        "route": flights["origin"] + "-" + flights["dest"],
        "tailnum": flights["tailnum"].fillna(UNKNOWN),
        **{column: keys[column] for column in keys.columns},
        "scheduled_departure": departure,
        "distance": flights["distance"].astype("float64"),
        "event_timestamp": departure - PREDICTION_LEAD,
        "disrupted": disrupted(flights),
    })


COMPACTION_READ_ATTEMPTS = 3
_GONE = ("No such file", "No files found", "404")
"""What DuckDB says of a file that was listed and then was not there (local disk; S3 over httpfs)."""


def read_through_compaction(read: Callable[[], T], what: str) -> T:
    """``read`` of the offline store, tried again when a file it listed was gone when opened. A day's operations
    pushes are compacted into one file (``pipelines.features.steps.write_operations``, the next day's replay) while
    other tasks read the same folders: in the July slice a drift training's retrieval failed on a July 8 push file
    the replay of July 10 had just compacted. The next listing finds the compacted file, which holds the same
    rows."""
    import duckdb

    for attempt in range(1, COMPACTION_READ_ATTEMPTS + 1):
        try:
            return read()
        except (duckdb.IOException, duckdb.HTTPException) as error:
            if attempt == COMPACTION_READ_ATTEMPTS or not any(text in str(error) for text in _GONE):
                raise
            log.warning("%s: a file of the offline store went away while it was read (%s); reading again, try %d "
                        "of %d", what, str(error)[:300], attempt + 1, COMPACTION_READ_ATTEMPTS)
    raise AssertionError("unreachable")


def training_set(days: Iterable[date], settings: Settings | None = None, *, stock: bool = False) -> pd.DataFrame:
    """Point-in-time correct features for every validated flight of ``days`` (prediction time = scheduled
    departure minus two hours), with its label, sorted by flight id. Days retrieved before with the same inputs
    come from the lake's cache (``pipelines.features.training_rows``). ``stock=True``: all retrieved through
    Feast's own offline store (comparisons)."""
    from pipelines.features.training_rows import read_through

    settings = settings or get_settings()
    if stock:
        return _retrieve(sorted(days), settings, stock=True)
    return read_through(open_lake(settings), sorted(days), FEATURE_SERVICE,
                        lambda missing: _retrieve(missing, settings))


def _retrieve(days: list[date], settings: Settings, *, stock: bool = False) -> pd.DataFrame:
    """``training_set`` from Feast, no cache."""
    lake = open_lake(settings)
    keys = [partition_key("validated", "flights", d, "data.parquet") for d in days]
    flights = pd.concat([lake.read_parquet(k) for k in keys if lake.exists(k)], ignore_index=True)
    entities = flight_entities(flights)
    store = open_store(settings, stock=stock)
    service = store.get_feature_service(FEATURE_SERVICE, allow_cache=True)
    frame = read_through_compaction(
        lambda: store.get_historical_features(entity_df=entities, features=service).to_df(), "training_set")
    return frame.sort_values("flight_id").reset_index(drop=True)


def online_features(entities: pd.DataFrame, settings: Settings | None = None,
                    store: FeatureStore | None = None, *, stock: bool = False) -> pd.DataFrame:
    """The feature service's online values for flights given by ``ENTITY_COLUMNS``.

    Read through ``pipelines.features.online_reader`` (the service resolved once, every view in one round trip; the same
    frame as ``store.get_online_features(...).to_df()``); ``stock=True`` calls Feast's path. Pass ``store`` to
    reuse one across calls: opening a store and its first read cost far more than a read."""
    store = store or open_store(settings)
    rows = entities[ENTITY_COLUMNS].to_dict("records")
    if stock:
        service = store.get_feature_service(FEATURE_SERVICE, allow_cache=True)
        return store.get_online_features(features=service, entity_rows=rows).to_df()
    return pd.DataFrame(online_feature_columns(rows, store=store))


def online_feature_columns(entities: Sequence[Mapping[str, Any]] | Mapping[str, Sequence[Any]],
                           settings: Settings | None = None,
                           store: FeatureStore | None = None) -> dict[str, list[Any]]:
    """``online_features`` as columns of plain Python values (``to_dict()`` of the stock response), for entity
    rows or columns holding ``ENTITY_COLUMNS``: the serving path, which needs no frame."""
    from pipelines.features.online_reader import read_online

    return read_online(store or open_store(settings), FEATURE_SERVICE, entities)


def feature_summary(settings: Settings | None = None) -> dict[str, Any]:
    """Per feature view: offline rows in the lake and how far the online store has been materialized."""
    settings = settings or get_settings()
    lake = open_lake(settings)
    store = open_store(settings)
    views: dict[str, Any] = {}
    import pyarrow.parquet as pq

    for view in store.list_feature_views(allow_cache=True):
        keys = [k for k in lake.list_keys(f"features/{view.name}/") if k.endswith(".parquet")]
        rows = sum(pq.read_metadata(io.BytesIO(lake.read_bytes(k))).num_rows for k in keys)
        intervals = view.materialization_intervals
        views[view.name] = {
            "partitions": len(keys),
            "offline_rows": rows,
            "online_through": intervals[-1][1].isoformat() if intervals else None,
        }
    return {"feature_service": FEATURE_SERVICE, "views": views,
            "online_store": store.config.online_store.type}


def format_feature_summary(summary: dict[str, Any]) -> str:
    lines = [f"Features (service {summary['feature_service']}, online store {summary['online_store']})",
             f"  {'view':<18}{'partitions':>11}{'rows':>10}  online through"]
    for name, view in sorted(summary["views"].items()):
        through = view["online_through"] or "-"
        lines.append(f"  {name:<18}{view['partitions']:>11}{view['offline_rows']:>10,}  {through}")
    return "\n".join(lines)
