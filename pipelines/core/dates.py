"""Dates of the data's clock: New York local time, partition windows and training windows.

Every step takes its dates from its run (the logical date, or an explicit window), never from the wall clock, so
2013 runs the same on any day."""

from __future__ import annotations

from datetime import date, datetime, timedelta
from zoneinfo import ZoneInfo


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

LOCAL_TZ = "America/New_York"
"""The feed's clock: flights, weather and partitions are dated in New York local time."""


def local_midnight(day: date) -> datetime:
    """The start of ``day`` in New York: a daily run's logical date (its data interval's start)."""
    return datetime(day.year, day.month, day.day, tzinfo=ZoneInfo(LOCAL_TZ))


DEFAULT_WINDOW_DAYS = 365
"""A retrain's window: the year before it (all of the feed, in 2013). The backtest (same code, same lake, side by
side) found a 90-day window forgetting the seasons it had seen; a year's window beat the frozen January-March model
in 8 of 9 months (README, "What retraining is worth")."""

SKIP_IF_TRAINED_WITHIN_DAYS = 7
"""A scheduled (weekly) retrain is skipped when a registered version was trained on a window ending fewer than this
many days before its own: a drift request retrained the model this week already."""


def training_window(logical_date: date, start: str | date | None = None, end: str | date | None = None,
                    window_days: int = DEFAULT_WINDOW_DAYS) -> list[date]:
    """The explicit window when given; else the ``window_days`` days before the logical date (whose own flights
    have not happened yet when a run at its start trains)."""
    if start or end:
        return partition_dates(logical_date, start, end)
    return date_range(logical_date - timedelta(days=window_days), logical_date - timedelta(days=1))
