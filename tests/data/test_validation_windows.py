"""Judging days a window at a time (``validate_days``) gives every day exactly the verdict its own checkpoint run
gives (``validate_partition``): same status, same failures with the same counts and examples, same rows, same bytes
judged. On 45 real days of 2013 with every kind of the corruption catalogue delivered on a day of its own, so
windows pass, fail, are halved and reach single days; and the clean stretches really are judged as windows."""

from __future__ import annotations

import json
from datetime import date, timedelta

import pytest

from pipelines.core.dates import date_range
from pipelines.core.lake import Lake
from pipelines.core.names import FEED_TABLES
from pipelines.core.settings import Settings
from pipelines.ingest.parse import ingest_partition, raw_key
from pipelines.simulation.corruption import CORRUPTIONS, corrupt
from pipelines.simulation.feed import feed_csv, land_day, land_file, land_reference
from pipelines.validation import partition
from pipelines.validation.partition import validate_days, validate_partition, verdict_key
from pipelines.validation.window import WINDOW_DAYS

DAYS = date_range(date(2013, 1, 1), date(2013, 2, 14))
BROKEN = {date(2013, 1, 4) + timedelta(days=2 * i): kind for i, kind in enumerate(CORRUPTIONS)}
"""Every corruption kind on a day of its own, every other day from January 4: clean days between them."""
COMPARED = ("status", "rows", "failures", "raw_sha256", "table", "date", "run_key")


def _verdicts(lake: Lake) -> dict[tuple[str, date], dict[str, object]]:
    return {(table, day): json.loads(lake.read_text(verdict_key("raw", table, day)))
            for table in FEED_TABLES for day in DAYS}


def _forget(lake: Lake) -> None:
    """The process's memory of good days' rows in this lake, as a fresh process starts."""
    for key in [k for k in partition._ROWS_SEEN if k[0] == lake.uri]:
        del partition._ROWS_SEEN[key]


@pytest.fixture
def broken_feed(lake: Lake) -> Lake:
    land_reference(lake)
    for day in DAYS:
        land_day(lake, day)
        if day in BROKEN:
            land_file(lake, "flights", day, corrupt(BROKEN[day], feed_csv("flights", day)))
        for table in FEED_TABLES:
            ingest_partition(lake, table, day)
    return lake


def test_window_verdicts_are_the_day_by_day_verdicts(broken_feed: Lake, settings: Settings) -> None:
    assert len(BROKEN) == len(CORRUPTIONS) and max(BROKEN) < DAYS[-1]
    for table in FEED_TABLES:
        validate_days(broken_feed, settings, table, DAYS, run_key="test/window")
    windowed = _verdicts(broken_feed)
    _forget(broken_feed)
    for table in FEED_TABLES:
        for day in DAYS:
            validate_partition(broken_feed, settings, table, day, run_key="test/window")
    alone = _verdicts(broken_feed)

    for key, verdict in alone.items():
        assert {f: windowed[key][f] for f in COMPARED} == {f: verdict[f] for f in COMPARED}, key
    outcomes = {windowed[("flights", day)]["status"] for day in BROKEN}
    assert outcomes == {"quarantined", "warned"}  # the catalogue's outcomes, both reached
    # Clean days were cleared by window screens, not one checkpoint run each: January's weather (clean) in one
    # window, and the flights' clean run after the last broken day in one. (February 12's weather has the feed's
    # real 1,048 mph wind gust: its window is halved down to it.)
    january = {windowed[("weather", day)]["gx_run_id"].split("@")[0] for day in DAYS[:WINDOW_DAYS]}
    assert january == {"test|window|weather|2013-01-01_to|2013-01-31"}
    assert windowed[("weather", date(2013, 2, 12))]["status"] == "warned"
    tail = [day for day in DAYS if day > max(BROKEN) + timedelta(days=1)]
    assert len({windowed[("flights", day)]["gx_run_id"] for day in tail}) == 1
    assert all("window" in windowed[("flights", day)] for day in tail)


def test_a_window_clears_a_day_its_per_day_part_warns_about(lake: Lake, settings: Settings) -> None:
    """``mostly`` expectations are judged on each day alone, inside a window that passes: a day with a few unknown
    destinations (under the 5% the suite allows) passes, one with many is warned, and both verdicts are the ones a
    checkpoint run gives."""
    days = DAYS[:6]
    land_reference(lake)
    for day in days:
        land_day(lake, day)
        for table in FEED_TABLES:
            ingest_partition(lake, table, day)
    raw = lake.read_parquet(raw_key("flights", days[3]))
    raw.loc[raw.index[: len(raw) // 5], "dest"] = "ZZZ"  # a fifth of the day: over the suite's 5%
    lake.write_parquet(raw_key("flights", days[3]), raw)

    windowed = validate_days(lake, settings, "flights", days)
    _forget(lake)
    alone = [validate_partition(lake, settings, "flights", day) for day in days]

    assert [v.status for v in windowed] == [v.status for v in alone] == ["passed"] * 3 + ["warned"] + ["passed"] * 2
    assert windowed[3].failures == alone[3].failures
    assert windowed[3].failures[0].expectation == "expect_column_values_to_be_in_set"
    assert len({v.gx_run_id for v in windowed}) == 1  # one window, its screen passed
