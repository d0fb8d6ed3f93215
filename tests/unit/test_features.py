"""Feature computations on tiny frames: labels, keys, trailing windows and the timestamps that prevent leakage."""

from __future__ import annotations

from datetime import UTC, date, datetime

import numpy as np
import pandas as pd
import pytest

from pipelines.features import tables as F


def _flights(rows: list[dict]) -> pd.DataFrame:
    base = {"year": 2013, "month": 1, "day": 2, "dep_time": 600, "arr_delay": 0.0, "carrier": "AA", "flight": 1,
            "origin": "JFK", "dest": "LAX", "minute": 30, "time_hour": pd.Timestamp("2013-01-02T11:00Z")}
    frame = pd.DataFrame([base | row for row in rows])
    return frame.astype({"year": "Int64", "month": "Int64", "day": "Int64", "dep_time": "Int64", "flight": "Int64",
                         "minute": "Int64"})


def test_disrupted_means_late_cancelled_or_diverted() -> None:
    frame = _flights([{"arr_delay": 14.0}, {"arr_delay": 15.0}, {"arr_delay": np.nan, "dep_time": None},
                      {"arr_delay": np.nan}, {"arr_delay": -20.0}])
    assert F.disrupted(frame).tolist() == [0, 1, 1, 1, 0]


def test_flight_id_and_scheduled_departure() -> None:
    frame = _flights([{"flight": 1141, "minute": 40}])
    assert F.flight_id(frame).tolist() == ["2013-01-02:AA1141:JFK"]
    assert F.scheduled_departure(frame).tolist() == [pd.Timestamp("2013-01-02T11:40Z")]


def test_trailing_stats_cover_exactly_the_window_ending_on_the_day() -> None:
    rows = [{"day": d, "arr_delay": 30.0 if d == 1 else 0.0} for d in range(1, 11)]
    frame = _flights([r | {"month": 1} for r in rows])
    stats = F.carrier_stats(frame, [date(2013, 1, 8), date(2013, 1, 10)]).set_index("event_timestamp")
    first, last = stats.iloc[0], stats.iloc[1]
    # Day 8: the 7-day window is days 2..8 (day 1's late flight has left it), the 28-day window has days 1..8.
    assert first["carrier_flights_7d"] == 7 and first["carrier_disruption_rate_7d"] == 0
    assert first["carrier_flights_28d"] == 8 and first["carrier_disruption_rate_28d"] == pytest.approx(1 / 8)
    assert last["carrier_flights_28d"] == 10
    assert first["carrier_mean_arr_delay_28d"] == pytest.approx(30 / 8)


def test_which_keys_have_statistics_does_not_depend_on_the_days_built_together() -> None:
    """A route first flown on day 10 has no row on day 9, built alone or with day 10 (the replay builds a day's
    predecessors apart from the day itself; a row that appeared only in the joint build was served nowhere and
    trained on); a route that stopped flying keeps one zero row, then none."""
    flown = [{"day": d} for d in range(1, 6)] + [{"day": 10, "dest": "SFO"}, {"day": 10}]
    frame = _flights(flown)
    alone = F.route_stats(frame[frame["day"] < 10], [date(2013, 1, 9)])
    together = F.route_stats(frame, [date(2013, 1, 9), date(2013, 1, 10)])
    day_9 = together[together["event_timestamp"] == alone["event_timestamp"].iloc[0]]
    pd.testing.assert_frame_equal(alone.reset_index(drop=True), day_9.reset_index(drop=True))
    assert "JFK-SFO" not in set(day_9["route"]) and "JFK-SFO" in set(together["route"])
    stopped = _flights([{"day": 1}])
    rows = F.route_stats(stopped, [date(2013, 1, d) for d in range(28, 31)])
    assert rows["route_flights_28d"].tolist() == [1, 0]  # day 28 still sees day 1; day 29 is the zero row


def test_statistics_of_a_day_are_published_the_morning_after() -> None:
    frame = _flights([{"day": 2}])
    stats = F.carrier_stats(frame, [date(2013, 1, 2)])
    # 2013-01-03 06:00 in New York (EST, UTC-5) is 11:00 UTC: after every flight of the day has landed.
    assert stats["event_timestamp"].tolist() == [pd.Timestamp("2013-01-03T11:00Z")]


def test_schedule_is_known_the_day_before_and_counts_congestion() -> None:
    frame = _flights([{"flight": 1}, {"flight": 2}, {"flight": 3, "time_hour": pd.Timestamp("2013-01-02T15:00Z")},
                      {"flight": 4, "origin": "EWR"}])
    schedule = F.flight_schedule(frame).set_index("flight_id")
    assert schedule.loc["2013-01-02:AA1:JFK", "origin_hour_departures"] == 2
    assert schedule.loc["2013-01-02:AA3:JFK", "origin_hour_departures"] == 1
    assert schedule.loc["2013-01-02:AA1:JFK", "origin_day_departures"] == 3
    assert schedule.loc["2013-01-02:AA4:EWR", "origin_day_departures"] == 1
    assert (schedule["event_timestamp"] == pd.Timestamp("2013-01-01T05:00Z")).all()


def test_request_features_use_new_york_local_time() -> None:
    """The on-demand view's function, called as Feast calls it (python mode: dict of lists)."""
    from pipelines.features.store import definitions

    udf = definitions().request_features.feature_transformation.udf
    departures = [datetime(2013, 1, 2, 11, 40, tzinfo=UTC), datetime(2013, 7, 1, 3, 30, tzinfo=UTC)]
    out = udf({"scheduled_departure": departures, "distance": [1089.0, 0.0]})
    assert out["dep_hour"] == [6, 23]  # EST in January, EDT (UTC-4) in summer: June 30, 23:30
    assert out["dep_weekday"] == [2, 6]
    assert out["dep_month"] == [1, 6]
    assert out["log_distance"] == pytest.approx([np.log1p(1089.0), 0.0])
    assert udf({"scheduled_departure": [1357126800], "distance": [10.0]})["dep_hour"] == [6]  # epoch seconds too


def test_plane_attributes_are_a_snapshot_before_the_year() -> None:
    planes = pd.DataFrame({"tailnum": ["N1"], "year": [2004.0], "seats": [55], "engines": [2],
                           "type": ["Fixed wing multi engine"]})
    out = F.plane_attributes(planes)
    assert out.loc[0, "plane_age"] == 9
    assert out.loc[0, "event_timestamp"] < pd.Timestamp("2013-01-01T00:00Z")
