"""Ingestion as a range-level step: every table of every day, landing CSV -> typed Parquet in raw/."""

from __future__ import annotations

import time
from collections.abc import Iterable
from datetime import date
from typing import Any

from pipelines.core.lake import settings_and_lake
from pipelines.core.names import FEED_TABLES
from pipelines.core.progress import log_progress
from pipelines.core.settings import Settings
from pipelines.ingest.parse import ingest_partition


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
        log_progress("ingest_feed", i, len(days), started)
    return {"dates": len(days), "rows": rows, "rows_with_parse_errors": with_errors,
            "seconds": round(time.perf_counter() - started, 2)}
