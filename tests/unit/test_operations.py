"""The same-day operations state (``pipelines.features.operations``) on a real day of flights: a value at time t
depends only on events before t (with a positive control the check must catch), the state fed event by event equals
the day's table, a late event rewrites nothing served before it arrived, and the counts mean what they say."""

from __future__ import annotations

from datetime import date

import numpy as np
import pandas as pd
import pytest

from pipelines.features.operations import (
    EVENT_LAG,
    LAST_HOUR,
    OPERATIONS_VIEWS,
    VIEW_COLUMNS,
    VIEW_KEYS,
    OperationsTracker,
    day_schedule,
    departure_events,
    operations_tables,
)
from pipelines.features.tables import PREDICTION_LEAD
from pipelines.ingest.parse import parse_feed_csv
from pipelines.ingest.schemas import FLIGHTS
from pipelines.simulation.feed import feed_csv

DAY = date(2013, 3, 15)  # a busy Friday with a late evening: departures cross midnight


@pytest.fixture(scope="module")
def flights() -> pd.DataFrame:
    return parse_feed_csv(feed_csv("flights", DAY), FLIGHTS)


@pytest.fixture(scope="module")
def tables(flights: pd.DataFrame) -> dict[str, pd.DataFrame]:
    return operations_tables(flights, DAY)


def as_of(tables: dict[str, pd.DataFrame], probes: pd.DataFrame, time_column: str) -> pd.DataFrame:
    """Point-in-time lookup as Feast does it: per probe, each view's latest row stamped at or before the time."""
    out = probes[["flight_id"]].copy()
    for view in OPERATIONS_VIEWS:
        key = VIEW_KEYS[view]
        rows = tables[view].sort_values("event_timestamp")
        wanted = probes[[key, time_column]].assign(order=range(len(probes))).sort_values(time_column)
        wanted[time_column] = wanted[time_column].astype(rows["event_timestamp"].dtype)
        joined = pd.merge_asof(wanted, rows, left_on=time_column, right_on="event_timestamp", by=key,
                               direction="backward").sort_values("order")
        for column in VIEW_COLUMNS[view]:
            out[column] = joined[column].to_numpy(dtype="float64")
    return out.reset_index(drop=True)


def leaking_features(flights: pd.DataFrame, probes: pd.DataFrame, time_column: str) -> list[str]:
    """The features whose value at a probe's ``time_column`` changes when the events at or after its prediction
    time are withheld: each probe's state rebuilt from the events before its prediction time only."""
    schedule, events = day_schedule(flights), departure_events(flights)
    full = as_of(operations_tables(flights, DAY), probes, time_column)
    leaks: set[str] = set()
    for i, probe in probes.reset_index(drop=True).iterrows():
        tracker = OperationsTracker(DAY, schedule)
        tracker.record(events[events["event_time"] < probe["prediction_time"]])
        known = tracker.advance(probe[time_column] + 2 * LAST_HOUR)  # past the probe: rows of withheld events
        alone = as_of(known, probes.iloc[[i]], time_column)
        for column in alone.columns[1:]:
            a, b = alone[column].iloc[0], full[column].iloc[i]
            if not (a == b or (np.isnan(a) and np.isnan(b))):
                leaks.add(column)
    return sorted(leaks)


@pytest.fixture(scope="module")
def probes(flights: pd.DataFrame) -> pd.DataFrame:
    schedule = day_schedule(flights)
    schedule["prediction_time"] = schedule["scheduled_departure"] - PREDICTION_LEAD
    # Every 15th flight through the day, tails included: mornings with nothing departed, evenings with much.
    return schedule.sort_values("prediction_time").iloc[::15].reset_index(drop=True)


def test_a_value_at_prediction_time_depends_only_on_earlier_events(flights: pd.DataFrame,
                                                                    probes: pd.DataFrame) -> None:
    assert len(probes) > 50
    assert leaking_features(flights, probes, "prediction_time") == []


def test_the_leakage_check_catches_features_read_at_the_departure_itself(flights: pd.DataFrame,
                                                                         probes: pd.DataFrame) -> None:
    # Positive control: the same features read at the scheduled departure see the two hours of events after the
    # prediction time; the check must name every family.
    leaks = leaking_features(flights, probes, "scheduled_departure")
    assert {"ops_origin_departed", "ops_origin_mean_dep_delay", "ops_carrier_departed",
            "ops_tail_departed"} <= set(leaks)


def test_state_fed_event_by_event_equals_the_days_table(flights: pd.DataFrame,
                                                        tables: dict[str, pd.DataFrame]) -> None:
    schedule, events = day_schedule(flights), departure_events(flights)
    tracker = OperationsTracker(DAY, schedule)
    clock = tracker.clock
    parts: dict[str, list[pd.DataFrame]] = {view: [] for view in OPERATIONS_VIEWS}
    end = tables["ops_origin"]["event_timestamp"].max()
    while clock <= end:  # as the replay does: events up to now arrive, then the clock moves on by a few minutes
        clock = clock + pd.Timedelta(minutes=7)
        tracker.record(events[(events["event_time"] >= clock - pd.Timedelta(minutes=7))
                              & (events["event_time"] < clock)])
        for view, frame in tracker.advance(clock).items():
            parts[view].append(frame)
    for view in OPERATIONS_VIEWS:
        incremental = pd.concat(parts[view], ignore_index=True)
        pd.testing.assert_frame_equal(incremental, tables[view], check_dtype=True)


def test_a_late_event_rewrites_nothing_served_before_it_arrived(flights: pd.DataFrame) -> None:
    schedule, events = day_schedule(flights), departure_events(flights)
    noon = pd.Timestamp(f"{DAY} 12:00", tz="America/New_York").tz_convert("UTC")
    late = events[events["event_time"] < noon].iloc[[-1]]  # left at 11:5x, reported after noon
    tracker = OperationsTracker(DAY, schedule)
    before = tracker.record(events[(events["event_time"] < noon) & ~events["flight_id"].isin(late["flight_id"])])
    served = tracker.advance(noon)
    assert before == 0
    assert tracker.record(late) == 1
    after = tracker.advance(noon + pd.Timedelta(minutes=5))
    key = schedule.set_index("flight_id").loc[late["flight_id"].iloc[0], "origin_day"]
    rows = after["ops_origin"][after["ops_origin"]["origin_day"] == key]
    # Counted from its arrival: stamped after noon, never at or before the times already served.
    assert not rows.empty and (rows["event_timestamp"] > noon).all()
    assert (served["ops_origin"]["event_timestamp"] <= noon).all()
    assert rows["event_timestamp"].min() == noon + EVENT_LAG


def test_counts_mean_what_they_say(flights: pd.DataFrame, tables: dict[str, pd.DataFrame]) -> None:
    schedule, events = day_schedule(flights), departure_events(flights)
    t = pd.Timestamp(f"{DAY} 15:00", tz="America/New_York").tz_convert("UTC")
    probe = schedule[schedule["origin_day"] == f"{DAY}:EWR"].head(1).assign(prediction_time=t)
    got = as_of(tables, probe, "prediction_time").iloc[0]
    ewr = schedule["origin_day"] == f"{DAY}:EWR"
    timed = schedule[ewr].merge(events, on="flight_id", how="left")
    left = timed[timed["event_time"] < t]
    due = timed[timed["scheduled_departure"] < t]
    pending = due[~(due["event_time"] < t)]
    recent = left[left["event_time"] >= t - LAST_HOUR]
    assert got["ops_origin_departed"] == len(left)
    assert got["ops_origin_mean_dep_delay"] == pytest.approx(left["dep_delay"].mean())
    assert got["ops_origin_late_share"] == pytest.approx((left["dep_delay"] >= 15).mean())
    assert got["ops_origin_last_hour_dep_delay"] == pytest.approx(recent["dep_delay"].mean())
    assert got["ops_origin_pending"] == len(pending)
    assert got["ops_origin_pending_share"] == pytest.approx(len(pending) / len(due))
    # A cancelled flight never leaves: after its time it stays pending to the end of the day.
    cancelled = timed[timed["event_time"].isna()]
    assert len(cancelled) > 0
    last = tables["ops_origin"][tables["ops_origin"]["origin_day"] == f"{DAY}:EWR"].iloc[-1]
    assert last["ops_origin_pending"] == len(cancelled)
