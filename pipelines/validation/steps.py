"""Validation as range-level steps: each takes a list of partition dates and returns a small dict.

What the ``flights_ingest`` DAG's validation tasks and the CLI call; each works partition by partition, so one bad
day never blocks the others, and logs its progress so a long window is never silent.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from datetime import date
from typing import Any

from pipelines.core.lake import settings_and_lake
from pipelines.core.names import FEED_TABLES
from pipelines.core.progress import log_progress
from pipelines.core.settings import Settings
from pipelines.validation.partition import Verdict, build_data_docs, promote_partition, validate_days


class QuarantineError(RuntimeError):
    """Raised after promotion when any partition failed a critical expectation."""


def validate_partitions(days: Iterable[date], settings: Settings | None = None,
                        run_key: str | None = None) -> dict[str, Any]:
    """Judge every raw partition by its table's GX suite, a window of days at a time (``validate_days``: the same
    verdicts as one checkpoint run per partition), write the verdicts, then render Data Docs once for the days
    that had a checkpoint run of their own."""
    settings, lake = settings_and_lake(settings)
    days = list(days)
    started = time.perf_counter()
    counts = {"passed": 0, "warned": 0, "quarantined": 0}
    result_ids: list[object] = []
    for i, table in enumerate(FEED_TABLES, 1):
        for verdict in validate_days(lake, settings, table, days, run_key=run_key, result_ids=result_ids):
            counts[verdict.status] += 1
        log_progress("validate_partitions", i * len(days), len(FEED_TABLES) * len(days), started, every=1)
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
        # per table, the days that reached validated/: what the DAG announces to consumers of each table
        "validated_dates": {table: sorted(str(v.date) for v in promoted if v.table == table) for table in FEED_TABLES},
    }


def check_quarantine(promotion: dict[str, Any]) -> None:
    """Fail loudly, naming each quarantined partition's failed expectations and counts."""
    quarantined: dict[str, str] = promotion.get("quarantined", {})
    if quarantined:
        details = "\n".join(quarantined.values())
        raise QuarantineError(f"{len(quarantined)} partition(s) quarantined on critical expectations:\n{details}")
