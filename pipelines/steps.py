"""The ingestion chain as range-level steps: each takes a list of partition dates and returns a small dict.

These are what the ``flights_ingest`` DAG's tasks and the CLI call; each works partition by partition, so one
bad day never blocks the others, and logs its progress so a long window is never silent.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from datetime import date, timedelta
from typing import Any

from pipelines.ingest import ingest_partition
from pipelines.lake import settings_and_lake
from pipelines.settings import Settings
from pipelines.source import FEED_TABLES, land_day, land_reference
from pipelines.validation import Verdict, build_data_docs, promote_partition, validate_partition

log = logging.getLogger(__name__)


class QuarantineError(RuntimeError):
    """Raised after promotion when any partition failed a critical expectation."""


def date_range(start: date, end: date) -> list[date]:
    if end < start:
        raise ValueError(f"end date {end} is before start date {start}")
    return [start + timedelta(days=i) for i in range((end - start).days + 1)]


def partition_dates(logical_date: date, start: str | date | None = None, end: str | date | None = None) -> list[date]:
    """The run's partitions: the explicit window when given, else the logical date's own day."""
    start, end = start or None, end or None  # an empty form field means "not set"
    if start is None and end is None:
        return [logical_date]
    first = date.fromisoformat(str(start or end))
    last = date.fromisoformat(str(end or start))
    return date_range(first, last)


def _progress(step: str, done: int, total: int, started: float, every: int = 10) -> None:
    if done == total or done % every == 0:
        log.info("%s: %d/%d partitions (%.1fs)", step, done, total, time.perf_counter() - started)



def land_feed(days: Iterable[date], settings: Settings | None = None) -> dict[str, Any]:
    """Simulated source: drop each day's flights and weather CSVs (and the reference tables) into landing/."""
    settings, lake = settings_and_lake(settings)
    days = list(days)
    started = time.perf_counter()
    land_reference(lake)
    for i, day in enumerate(days, 1):
        land_day(lake, day)
        _progress("land_feed", i, len(days), started)
    return {"dates": len(days), "first": days[0].isoformat(), "last": days[-1].isoformat(), "lake": lake.uri}


def ingest_feed(days: Iterable[date], settings: Settings | None = None) -> dict[str, Any]:
    """Landing CSV -> typed Parquet in raw/ for every table and day."""
    settings, lake = settings_and_lake(settings)
    days = list(days)
    started = time.perf_counter()
    rows = {table: 0 for table in FEED_TABLES}
    with_errors = {table: 0 for table in FEED_TABLES}
    for i, day in enumerate(days, 1):
        for table in FEED_TABLES:
            result = ingest_partition(lake, table, day)
            rows[table] += result.rows
            with_errors[table] += result.rows_with_errors
        _progress("ingest_feed", i, len(days), started)
    return {"dates": len(days), "rows": rows, "rows_with_parse_errors": with_errors,
            "seconds": round(time.perf_counter() - started, 2)}


def validate_partitions(days: Iterable[date], settings: Settings | None = None,
                        run_key: str | None = None) -> dict[str, Any]:
    """Run the GX checkpoint of every raw partition, write verdicts, then rebuild Data Docs once."""
    settings, lake = settings_and_lake(settings)
    days = list(days)
    started = time.perf_counter()
    counts = {"passed": 0, "warned": 0, "quarantined": 0}
    result_ids: list[object] = []
    for i, day in enumerate(days, 1):
        for table in FEED_TABLES:
            counts[validate_partition(lake, settings, table, day, run_key=run_key, result_ids=result_ids).status] += 1
        _progress("validate_partitions", i, len(days), started)
    # Only this run's pages are rendered: rebuilding every stored result would grow with each run.
    docs = build_data_docs(settings, result_ids)
    return counts | {"data_docs": str(docs), "seconds": round(time.perf_counter() - started, 2)}


def promote_partitions(days: Iterable[date], settings: Settings | None = None) -> dict[str, Any]:
    """Promote passing and warned partitions to validated/, quarantine the rest; never raises for bad data."""
    settings, lake = settings_and_lake(settings)
    verdicts: list[Verdict] = []
    for day in days:
        for table in FEED_TABLES:
            verdicts.append(promote_partition(lake, table, day))
    promoted = [v for v in verdicts if v.status != "quarantined"]
    return {
        "validated": {f"{v.table}/{v.date}": v.rows for v in promoted},
        "warned": {f"{v.table}/{v.date}": v.reason() for v in verdicts if v.status == "warned"},
        "quarantined": {f"{v.table}/{v.date}": v.reason() for v in verdicts if v.status == "quarantined"},
    }


def check_quarantine(promotion: dict[str, Any]) -> None:
    """Fail loudly, naming each quarantined partition's failed expectations and counts."""
    quarantined: dict[str, str] = promotion.get("quarantined", {})
    if quarantined:
        details = "\n".join(quarantined.values())
        raise QuarantineError(f"{len(quarantined)} partition(s) quarantined on critical expectations:\n{details}")

