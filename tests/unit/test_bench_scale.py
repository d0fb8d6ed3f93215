"""The scale bench's synthetic sizes: a shifted copy of a real feed day is another valid day (its date, the same
rows, flight numbers still within the contract and unique), and the growth verdicts read the curve right."""

from __future__ import annotations

import io
from datetime import date

import pandas as pd
import pytest

from benchmarks import scale as S
from pipelines.simulation.feed import feed_csv


@pytest.mark.parametrize("copy", [1, 9])
def test_a_shifted_copy_is_the_same_day_moved_with_new_flight_numbers(copy: int) -> None:
    day = date(2013, 7, 4)
    flights = pd.read_csv(io.BytesIO(feed_csv("flights", day)), dtype=str, keep_default_na=False)
    moved = S.shifted_copy(flights, "flights", copy)
    target = pd.Timestamp(day) + pd.Timedelta(days=365 * copy)
    assert len(moved) == len(flights) and list(moved.columns) == list(flights.columns)
    assert set(zip(moved["year"], moved["month"], moved["day"], strict=True)) == {
        (str(target.year), str(target.month), str(target.day))}
    shift = pd.to_datetime(moved["time_hour"], utc=True) - pd.to_datetime(flights["time_hour"], utc=True)
    assert (shift == pd.Timedelta(days=365 * copy)).all()
    numbers = moved["flight"].astype(int)
    assert numbers.between(1, S.FLIGHT_NUMBERS).all() and (numbers != flights["flight"].astype(int)).all()
    assert not moved.duplicated(["carrier", "flight", "origin"]).any()
    assert (moved.drop(columns=["year", "month", "day", "time_hour", "flight"])
            == flights.drop(columns=["year", "month", "day", "time_hour", "flight"])).all().all()


@pytest.mark.parametrize("table", ["flights", "weather"])
def test_copy_zero_goes_through_the_same_steps_and_changes_nothing(table: str) -> None:
    # Landing costs the same per day at every size only if the year itself is not passed through untouched.
    rows = pd.read_csv(io.BytesIO(feed_csv(table, date(2013, 11, 3))), dtype=str, keep_default_na=False)
    same = S.shifted_copy(rows, table, 0)
    assert same is not rows
    pd.testing.assert_frame_equal(same, rows)
    assert same.to_csv(index=False) == rows.to_csv(index=False)


def test_growth_calls_linear_and_worse_than_linear() -> None:
    def size(flights: int, seconds: float, peak: int) -> dict:
        return {"flights": flights, "stages": {s: {"seconds": seconds, "peak_mb": peak} for s in S.STAGES}}

    linear = S.growth({"1x": size(100, 2.0, 500), "10x": size(1000, 20.0, 900)})
    assert linear["ingest"]["exponent"] == pytest.approx(1.0) and linear["ingest"]["linear"]
    assert linear["ingest"]["within_memory"]
    worse = S.growth({"1x": size(100, 2.0, 500), "10x": size(1000, 60.0, 5000)})
    assert worse["validate"]["exponent"] == pytest.approx(1.477, abs=1e-3) and not worse["validate"]["linear"]
    assert not worse["validate"]["within_memory"]
