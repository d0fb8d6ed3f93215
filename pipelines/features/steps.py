"""The ``build_features`` step: every feature table's daily partitions in ``features/``, from ``validated/``.

The tables themselves are pure functions (``pipelines.features.tables``; the same-day operations state
``pipelines.features.operations``); this step reads what they need and writes each day's partitions, replacing them.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from datetime import date, timedelta

import pandas as pd

from pipelines.core.lake import Lake, open_lake, partition_key, reference_key
from pipelines.core.settings import Settings, get_settings
from pipelines.features.operations import OPERATIONS_VIEWS, operations_tables
from pipelines.features.push import PUSH_PREFIX
from pipelines.features.tables import (
    LOOKBACK_DAYS,
    PLANES_SNAPSHOT,
    carrier_stats,
    day_end_published,
    flight_schedule,
    plane_attributes,
    route_stats,
    weather_hourly,
)

log = logging.getLogger(__name__)

FEATURE_TABLES = ("weather_hourly", "flight_schedule", "carrier_stats", "route_stats", "plane_attributes",
                  *OPERATIONS_VIEWS)


def _for_feast(frame: pd.DataFrame) -> pd.DataFrame:
    """Microsecond timestamps: DuckDB (Feast's offline store) cannot cast nanosecond time zones."""
    return frame.reset_index(drop=True).astype({"event_timestamp": "datetime64[us, UTC]"})


def feature_key(table: str, day: date) -> str:
    return partition_key("features", table, day, "data.parquet")


def _validated(lake: Lake, table: str, days: Iterable[date]) -> pd.DataFrame:
    frames = [lake.read_parquet(partition_key("validated", table, d, "data.parquet")) for d in days
              if lake.exists(partition_key("validated", table, d, "data.parquet"))]
    if not frames:
        raise FileNotFoundError(f"no validated {table} partitions for the requested days in {lake.uri}")
    return pd.concat(frames, ignore_index=True)


def write_operations(lake: Lake, day: date, tables: dict[str, pd.DataFrame]) -> None:
    """The day's whole operations tables as ``data.parquet``, replacing the files its pushes left (same rows)."""
    for view, frame in tables.items():
        lake.write_parquet(feature_key(view, day), _for_feast(frame))
        folder = feature_key(view, day).rsplit("/", 1)[0] + "/"
        for key in lake.list_keys(folder):
            if key.rsplit("/", 1)[1].startswith(PUSH_PREFIX):
                lake.delete(key)


def build_features(days: Iterable[date], settings: Settings | None = None, *,
                   operations: bool = True) -> dict[str, object]:
    """Write every feature table's partition for each of ``days`` (idempotent: each partition is replaced).
    ``operations=False`` leaves the operations tables alone (a day being replayed gets them by push)."""
    settings = settings or get_settings()
    lake = open_lake(settings)
    days = sorted(days)
    started = time.perf_counter()
    history = [days[0] - timedelta(days=i) for i in range(LOOKBACK_DAYS, 0, -1)]
    available = set(lake.partitions("validated", "flights"))
    flights = _validated(lake, "flights", [d for d in history + days if d in available])
    rows: dict[str, int] = dict.fromkeys(FEATURE_TABLES if operations else FEATURE_TABLES[:5], 0)
    carriers = carrier_stats(flights, days)
    routes = route_stats(flights, days)
    for day in days:
        published = day_end_published(pd.Series([pd.Timestamp(day)])).iloc[0]
        tables = {"carrier_stats": carriers[carriers["event_timestamp"] == published],
                  "route_stats": routes[routes["event_timestamp"] == published]}
        if day in available:
            day_flights = flights[(flights["year"] == day.year) & (flights["month"] == day.month)
                                  & (flights["day"] == day.day)]
            tables["flight_schedule"] = flight_schedule(day_flights)
            if operations:
                state = operations_tables(day_flights, day)
                write_operations(lake, day, state)
                for view, frame in state.items():
                    rows[view] += len(frame)
        weather_key = partition_key("validated", "weather", day, "data.parquet")
        if lake.exists(weather_key):
            tables["weather_hourly"] = weather_hourly(lake.read_parquet(weather_key))
        for table, frame in tables.items():
            lake.write_parquet(feature_key(table, day), _for_feast(frame))
            rows[table] += len(frame)
    planes = plane_attributes(lake.read_parquet(reference_key("planes")))
    lake.write_parquet(feature_key("plane_attributes", PLANES_SNAPSHOT.date()), _for_feast(planes))
    rows["plane_attributes"] = len(planes)
    log.info("build_features: %d days, %s rows (%.1fs)", len(days), rows, time.perf_counter() - started)
    return {"dates": len(days), "rows": rows, "seconds": round(time.perf_counter() - started, 2)}
