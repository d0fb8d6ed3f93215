"""A training set's rows kept per day in the lake, so a training over a year retrieves only the days it has not
retrieved before.

Why: the training window is a year, and every retrain of ``make year`` asked Feast again for the point-in-time
features of every flight of it (``build_training_set`` took 43 s a training in the year's first months, and grows
with the window), though a past day's rows change only when what they are read from changes.

What a day's rows are read from: the day's validated flights, the feature partitions dated up to the day after it
(the flight schedule of a day is stamped the evening before it; nothing dated later can be stamped early enough
for a flight of the day) and the undated ones, through the feature definitions. A day's key hashes all of them by
content (``Lake.list_versions``), so a re-landed day, a rebuilt feature table or a changed definition turns every
day that could read it into a miss, retrieved again: nothing is trusted on dates or times of writing alone. The
misses are retrieved in one call and split by day (a flight's id starts with its local date, its partition's).
Every day's rows, a miss's too, go through their Parquet bytes, so a frame read from the cache equals one
retrieved now. A day written again drops its stale entries.
"""

from __future__ import annotations

import hashlib
import io
import logging
import re
import time
from collections.abc import Callable, Sequence
from datetime import date, timedelta

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from pipelines.core.lake import Lake
from pipelines.core.settings import PROJECT_ROOT

log = logging.getLogger(__name__)

CACHE_PREFIX = "training/days"
FORMAT = "1"
"""Bump when what a day's rows hold changes without a change to anything hashed into its key."""
DEFINITIONS = PROJECT_ROOT / "feature_repo" / "definitions.py"
READ_AHEAD = timedelta(days=1)
_DAY = re.compile(r"/date=(\d{4}-\d{2}-\d{2})/")


def _day_of(key: str) -> date | None:
    match = _DAY.search(key)
    return date.fromisoformat(match.group(1)) if match else None


def day_keys(lake: Lake, days: Sequence[date], service: str) -> dict[date, str]:
    """The cache key of each of ``days`` that has validated flights: a hash of everything its rows are read from."""
    flights: dict[date, list[tuple[str, str]]] = {}
    for key, version in lake.list_versions("validated/flights/").items():
        if (day := _day_of(key)) is not None:
            flights.setdefault(day, []).append((key, version))
    dated: list[tuple[date, str, str]] = []
    common = hashlib.sha256(f"{FORMAT}|{service}|".encode() + DEFINITIONS.read_bytes())
    for key, version in lake.list_versions("features/").items():
        if (day := _day_of(key)) is None:
            common.update(f"{key}={version}\n".encode())
        else:
            dated.append((day, key, version))
    dated.sort()
    running, position, keys = common, 0, {}
    for day in sorted(set(days) & set(flights)):
        while position < len(dated) and dated[position][0] <= day + READ_AHEAD:
            running.update("{1}={2}\n".format(*dated[position]).encode())
            position += 1
        this = running.copy()
        this.update("".join(f"{key}={version}\n" for key, version in sorted(flights[day])).encode())
        keys[day] = this.hexdigest()
    return keys


def _cache_key(day: date, key: str) -> str:
    return f"{CACHE_PREFIX}/date={day.isoformat()}/{key}.parquet"


def _parquet(rows: pa.Table) -> bytes:
    buffer = io.BytesIO()
    pq.write_table(rows, buffer, compression="zstd")
    return buffer.getvalue()


def _store(lake: Lake, day: date, key: str, rows: pa.Table) -> pa.Table:
    """Write the day's rows under its key, drop its stale entries; the rows as they read back."""
    data = _parquet(rows)
    lake.write_bytes(_cache_key(day, key), data)
    stale = [k for k in lake.list_keys(f"{CACHE_PREFIX}/date={day.isoformat()}/") if k != _cache_key(day, key)]
    lake.delete_keys(stale)
    return pq.read_table(pa.BufferReader(data))


def _slices_by_day(table: pa.Table, days: pd.Series) -> dict[str, pa.Table]:
    """``table``'s rows, sorted by flight id, sliced by ``days`` (each row's local date: its id's first ten
    characters), which are therefore contiguous."""
    starts = days.ne(days.shift()).to_numpy().nonzero()[0].tolist() + [len(days)]
    return {days.iloc[a]: table.slice(a, b - a) for a, b in zip(starts, starts[1:], strict=False)}


def read_through(lake: Lake, days: Sequence[date], service: str,
                 retrieve: Callable[[list[date]], pd.DataFrame]) -> pd.DataFrame:
    """The rows of ``days`` (those with validated flights), sorted by flight id: read from the cache where a day's
    key matches, the rest by ``retrieve(missing days)``, which are then cached. The days stay Arrow tables until
    the one conversion to pandas at the end (the per-day conversions were a fifth of a 90-day miss)."""
    started = time.perf_counter()
    keys = day_keys(lake, days, service)
    if not keys:
        raise FileNotFoundError(f"no validated flights for any of the {len(days)} days asked for in {lake.uri}")
    tables: dict[date, pa.Table] = {}
    missing = []
    for day, key in keys.items():
        if lake.exists(_cache_key(day, key)):
            tables[day] = pq.read_table(pa.BufferReader(lake.read_bytes(_cache_key(day, key))))
        else:
            missing.append(day)
    if missing:
        retrieved = retrieve(missing).sort_values("flight_id").reset_index(drop=True)
        table = pa.Table.from_pandas(retrieved, preserve_index=False)  # once, not once a day
        by_day = _slices_by_day(table, retrieved["flight_id"].str[:10])
        for day in missing:
            tables[day] = _store(lake, day, keys[day], by_day.get(day.isoformat(), table.slice(0, 0)))
    # A day cached empty by an earlier release may hold untyped (null) columns: promoted to the others' types.
    frame = pa.concat_tables([tables[day] for day in sorted(tables)], promote_options="default").to_pandas()
    log.info("training rows of %d days: %d from the cache, %d retrieved (%d flights, %.1fs)", len(keys),
             len(keys) - len(missing), len(missing), len(frame), time.perf_counter() - started)
    return frame.sort_values("flight_id").reset_index(drop=True)
