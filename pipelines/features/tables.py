"""Feature tables computed from ``validated/``: pure frame-in, frame-out functions (``pipelines.features.steps``
writes them; the same-day operations tables are ``pipelines.features.operations``).

Every table has an ``event_timestamp``: the moment its values became knowable. Feast's point-in-time join only
hands a flight the rows stamped at or before its prediction time (scheduled departure minus two hours), so the
stamps are where leakage is prevented:

* weather: the observation hour;
* carrier and route statistics of day D: the morning after (D+1 06:00 New York time), once the day's late
  arrivals, cancellations and diversions are all known;
* the flight schedule (congestion): the day before (schedules are published in advance);
* plane attributes: the reference snapshot, before the year begins.
"""

from __future__ import annotations

import logging
from datetime import date, timedelta

import pandas as pd

from pipelines.core.dates import LOCAL_TZ

log = logging.getLogger(__name__)
PREDICTION_LEAD = pd.Timedelta(hours=2)
STATS_PUBLISHED_AFTER_DAY_END = pd.Timedelta(hours=6)
TRAILING_DAYS = (7, 28)
LOOKBACK_DAYS = max(TRAILING_DAYS)
"""Days of history read before the first day built: the longest window, and the day before it (see
``_trailing_stats``: whether a key has a row depends on the window of the day before too)."""
DISRUPTION_DELAY_MINUTES = 15
PLANES_SNAPSHOT = pd.Timestamp("2012-12-31T00:00:00Z")

WEATHER_FEATURES = ["temp", "dewp", "humid", "wind_speed", "wind_gust", "precip", "pressure", "visib"]


def flight_id(flights: pd.DataFrame) -> pd.Series:
    """Stable key of a flight: local date, carrier and number, origin (unique per day by the GX suite)."""
    day = flights["year"].astype(str) + "-" + flights["month"].astype(str).str.zfill(2) + "-" + \
        flights["day"].astype(str).str.zfill(2)
    return day + ":" + flights["carrier"] + flights["flight"].astype(str) + ":" + flights["origin"]


def scheduled_departure(flights: pd.DataFrame) -> pd.Series:
    """Scheduled departure in UTC (time_hour is the scheduled hour in UTC; the minute completes it)."""
    return flights["time_hour"] + pd.to_timedelta(flights["minute"].astype("int64"), unit="min")


def disrupted(flights: pd.DataFrame) -> pd.Series:
    """Arrival delay of 15 minutes or more, cancelled, or diverted (both have no arrival delay)."""
    delay = flights["arr_delay"]
    return (delay.isna() | (delay >= DISRUPTION_DELAY_MINUTES)).astype("int64")


def day_end_published(days: pd.Series) -> pd.Series:
    """When the statistics of each local calendar day become knowable, in UTC."""
    local_midnight = pd.to_datetime(days).dt.tz_localize(LOCAL_TZ)
    return (local_midnight + pd.Timedelta(days=1) + STATS_PUBLISHED_AFTER_DAY_END).dt.tz_convert("UTC")


def weather_hourly(weather: pd.DataFrame) -> pd.DataFrame:
    frame = weather[["origin", "time_hour", *WEATHER_FEATURES]].rename(columns={"time_hour": "event_timestamp"})
    return frame.sort_values(["origin", "event_timestamp"]).reset_index(drop=True)


def flight_schedule(flights: pd.DataFrame) -> pd.DataFrame:
    """Per flight: how busy its origin is in its scheduled hour and day (known from the published schedule)."""
    frame = pd.DataFrame({
        "flight_id": flight_id(flights),
        "origin": flights["origin"],
        "carrier": flights["carrier"],
        "time_hour": flights["time_hour"],
    })
    frame["origin_hour_departures"] = frame.groupby(["origin", "time_hour"])["flight_id"].transform("size")
    frame["origin_day_departures"] = frame.groupby("origin")["flight_id"].transform("size")
    frame["carrier_origin_day_departures"] = frame.groupby(["origin", "carrier"])["flight_id"].transform("size")
    local_day = pd.to_datetime(flights[["year", "month", "day"]].astype("int64"))
    frame["event_timestamp"] = (local_day.dt.tz_localize(LOCAL_TZ) - pd.Timedelta(days=1)).dt.tz_convert("UTC")
    columns = ["flight_id", "event_timestamp", "origin_hour_departures", "origin_day_departures",
               "carrier_origin_day_departures"]
    return frame[columns].astype({c: "int64" for c in columns[2:]}).sort_values("flight_id").reset_index(drop=True)


def _trailing_stats(flights: pd.DataFrame, key: str, days: list[date], prefix: str,
                    windows: tuple[int, ...]) -> pd.DataFrame:
    """Per key and day in ``days``: disruption rate, mean arrival delay, cancellation rate and volume over
    trailing windows that end with (and include) that day."""
    frame = pd.DataFrame({
        key: flights[key],
        "day": pd.to_datetime(flights[["year", "month", "day"]].astype("int64")),
        "flights": 1,
        "disrupted": disrupted(flights),
        "cancelled": flights["dep_time"].isna().astype("int64"),
        "arr_delay_sum": flights["arr_delay"].fillna(0.0),
        "arrived": flights["arr_delay"].notna().astype("int64"),
    })
    daily = frame.groupby([key, "day"]).sum()
    calendar = pd.date_range(min(days) - timedelta(days=max(windows)), max(days), freq="D")
    keys = daily.index.get_level_values(0).unique()
    full = daily.reindex(pd.MultiIndex.from_product([keys, calendar], names=[key, "day"]), fill_value=0)
    out = pd.DataFrame(index=full.index)
    for window in windows:
        rolled = full.groupby(level=0).rolling(window, min_periods=1).sum().droplevel(0)
        volume = rolled["flights"]
        out[f"{prefix}_flights_{window}d"] = volume.astype("int64")
        out[f"{prefix}_disruption_rate_{window}d"] = (rolled["disrupted"] / volume).where(volume > 0)
        out[f"{prefix}_cancel_rate_{window}d"] = (rolled["cancelled"] / volume).where(volume > 0)
        out[f"{prefix}_mean_arr_delay_{window}d"] = (rolled["arr_delay_sum"] / rolled["arrived"]).where(
            rolled["arrived"] > 0)
    # A key has a row on a day when it flew within the longest window, or within the day before's (the row that
    # says its volume fell to zero). Never for a key that flies only later: which keys exist must not depend on
    # which days are built together (a replay builds the days before its day apart from the day itself).
    volume = full["flights"].groupby(level=0).rolling(max(windows), min_periods=1).sum().droplevel(0)
    active = (volume > 0) | (volume.groupby(level=0).shift(1, fill_value=0) > 0)
    out = out[active.reindex(out.index).to_numpy()].reset_index()
    out = out[out["day"].isin(pd.to_datetime(days))]
    out["event_timestamp"] = day_end_published(out["day"])
    return out.drop(columns="day").sort_values([key, "event_timestamp"]).reset_index(drop=True)


def carrier_stats(flights: pd.DataFrame, days: list[date]) -> pd.DataFrame:
    return _trailing_stats(flights, "carrier", days, "carrier", TRAILING_DAYS)


def route_stats(flights: pd.DataFrame, days: list[date]) -> pd.DataFrame:
    with_route = flights.assign(route=flights["origin"] + "-" + flights["dest"])
    return _trailing_stats(with_route, "route", days, "route", (max(TRAILING_DAYS),))


def plane_attributes(planes: pd.DataFrame) -> pd.DataFrame:
    return pd.DataFrame({
        "tailnum": planes["tailnum"],
        "event_timestamp": PLANES_SNAPSHOT,
        "plane_age": (2013 - planes["year"]).astype("float64"),
        "plane_seats": planes["seats"].astype("int64"),
        "plane_engines": planes["engines"].astype("int64"),
        "plane_type": planes["type"].astype(str),
    }).sort_values("tailnum").reset_index(drop=True)
