"""The per-day cache of training rows: a day is retrieved again exactly when something it could read changed.

The retrieval is a stand-in here (it records which days it was asked for and derives each flight's row from the
lake's files); the real one, Feast's, is compared cached against uncached in
``tests/data/test_training_set_on_real_data.py``."""

from __future__ import annotations

from datetime import date, timedelta
from pathlib import Path

import pandas as pd
import pytest

from pipelines.core.lake import LocalLake, partition_key
from pipelines.features.training_rows import CACHE_PREFIX, read_through

DAYS = [date(2013, 5, 1) + timedelta(days=i) for i in range(6)]


class Retrieval:
    """Rows for every flight of the asked days, each holding the sum of the feature files' bytes dated up to its
    day (so a changed feature partition changes the rows that could read it)."""

    def __init__(self, lake: LocalLake) -> None:
        self.lake = lake
        self.asked: list[list[date]] = []

    def __call__(self, days: list[date]) -> pd.DataFrame:
        self.asked.append(days)
        rows = []
        for day in days:
            flights = self.lake.read_parquet(partition_key("validated", "flights", day, "data.parquet"))
            seen = sum(len(self.lake.read_bytes(k)) for k in self.lake.list_keys("features/")
                       if k.split("date=")[1][:10] <= day.isoformat())
            rows += [{"flight_id": f"{day.isoformat()}:{n}", "seen": seen, "label": n % 2} for n in flights["n"]]
        return pd.DataFrame(rows).sort_values("flight_id").reset_index(drop=True)


@pytest.fixture
def lake(tmp_path: Path) -> LocalLake:
    lake = LocalLake(tmp_path / "lake")
    for i, day in enumerate(DAYS):
        _flights(lake, day, count=3 + i)
        _feature(lake, "weather_hourly", day, b"w" * (10 + i))
    lake.write_bytes(partition_key("features", "plane_attributes", date(2012, 12, 31), "data.parquet"), b"planes")
    return lake


def _flights(lake: LocalLake, day: date, count: int) -> None:
    lake.write_parquet(partition_key("validated", "flights", day, "data.parquet"), pd.DataFrame({"n": range(count)}))


def _feature(lake: LocalLake, table: str, day: date, data: bytes) -> None:
    lake.write_bytes(partition_key("features", table, day, "data.parquet"), data)


def _read(lake: LocalLake, retrieval: Retrieval, days: list[date] = DAYS) -> pd.DataFrame:
    return read_through(lake, days, "flight_delay_v1", retrieval)


def test_a_second_read_retrieves_nothing_and_returns_the_same_rows(lake: LocalLake) -> None:
    retrieval = Retrieval(lake)
    first = _read(lake, retrieval)
    second = _read(lake, retrieval)
    assert retrieval.asked == [DAYS]
    assert len(first) == sum(3 + i for i in range(len(DAYS)))
    pd.testing.assert_frame_equal(first, second)
    pd.testing.assert_frame_equal(first, Retrieval(lake)(DAYS))  # what the retrieval gives, through the cache


def test_a_longer_window_retrieves_only_its_new_days(lake: LocalLake) -> None:
    retrieval = Retrieval(lake)
    _read(lake, retrieval, DAYS[:4])
    whole = _read(lake, retrieval)
    assert retrieval.asked == [DAYS[:4], DAYS[4:]]
    pd.testing.assert_frame_equal(whole, Retrieval(lake)(DAYS))


def test_a_changed_feature_partition_retrieves_every_day_that_could_read_it(lake: LocalLake) -> None:
    retrieval = Retrieval(lake)
    _read(lake, retrieval)
    _feature(lake, "carrier_stats", DAYS[3], b"new statistics")
    after = _read(lake, retrieval)
    # The day before reads it too: a partition's rows can be stamped the evening before its date.
    assert retrieval.asked[1] == DAYS[2:]
    pd.testing.assert_frame_equal(after, Retrieval(lake)(DAYS))


def test_a_re_landed_day_retrieves_that_day_only(lake: LocalLake) -> None:
    retrieval = Retrieval(lake)
    _read(lake, retrieval)
    _flights(lake, DAYS[1], count=20)
    after = _read(lake, retrieval)
    assert retrieval.asked[1] == [DAYS[1]]
    assert (after["flight_id"].str[:10] == DAYS[1].isoformat()).sum() == 20
    assert len(lake.list_keys(f"{CACHE_PREFIX}/date={DAYS[1].isoformat()}/")) == 1  # the stale entry is gone


def test_a_partition_written_again_unchanged_keeps_the_cache(lake: LocalLake) -> None:
    """The feature step rewrites the plane snapshot on every run, byte for byte the same."""
    retrieval = Retrieval(lake)
    _read(lake, retrieval)
    lake.write_bytes(partition_key("features", "plane_attributes", date(2012, 12, 31), "data.parquet"), b"planes")
    _read(lake, retrieval)
    assert retrieval.asked == [DAYS]


def test_days_without_validated_flights_are_left_out_and_none_at_all_is_an_error(lake: LocalLake) -> None:
    retrieval = Retrieval(lake)
    later = [DAYS[-1] + timedelta(days=1)]
    assert len(_read(lake, retrieval, DAYS[:1] + later)) == 3
    assert retrieval.asked == [DAYS[:1]]
    with pytest.raises(FileNotFoundError, match="no validated flights"):
        _read(lake, retrieval, later)
