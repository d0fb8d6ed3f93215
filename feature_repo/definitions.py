"""Feast declarations for flight disruption: entities, sources, feature views and the feature service.

The sources are the feature tables that ``pipelines.features`` writes to ``{lake}/features/{view}/date=.../``;
``FEATURES_URI`` (set by ``pipelines.features.store`` from the settings) says where that folder is. Every source
has an ``event_timestamp`` meaning "knowable from": Feast's point-in-time join does the rest.
"""

from __future__ import annotations

import os
from datetime import UTC, timedelta
from typing import Any

from feast import Entity, FeatureService, FeatureView, Field, FileSource, PushSource, RequestSource, ValueType
from feast.on_demand_feature_view import on_demand_feature_view
from feast.types import Float64, Int64, String, UnixTimestamp

FEATURES_URI = os.environ.get("FEATURES_URI", "features")


def _source(view: str, files: str = "data.parquet") -> FileSource:
    # A glob over the daily partitions (DuckDB reads it directly).
    return FileSource(name=f"{view}_source", path=f"{FEATURES_URI.rstrip('/')}/{view}/*/{files}",
                      timestamp_field="event_timestamp")


def _push(view: str) -> PushSource:
    # Pushed online as the events happen; offline, each push is a file in the day's partition beside the table the
    # daily build writes (pipelines.features.push), hence every Parquet file of the partition.
    return PushSource(name=f"{view}_push", batch_source=_source(view, "*.parquet"))


flight = Entity(name="flight", join_keys=["flight_id"], value_type=ValueType.STRING,
                description="One scheduled flight: local date, carrier and number, origin")
origin = Entity(name="origin", join_keys=["origin"], value_type=ValueType.STRING, description="NYC origin airport")
carrier = Entity(name="carrier", join_keys=["carrier"], value_type=ValueType.STRING, description="Airline code")
route = Entity(name="route", join_keys=["route"], value_type=ValueType.STRING, description="ORIGIN-DEST")
plane = Entity(name="plane", join_keys=["tailnum"], value_type=ValueType.STRING, description="Tail number")
origin_day = Entity(name="origin_day", join_keys=["origin_day"], value_type=ValueType.STRING,
                    description="An origin on one local day: 2013-04-01:EWR")
origin_carrier_day = Entity(name="origin_carrier_day", join_keys=["origin_carrier_day"], value_type=ValueType.STRING,
                            description="An airline at an origin on one local day: 2013-04-01:EWR:B6")
tail_day = Entity(name="tail_day", join_keys=["tail_day"], value_type=ValueType.STRING,
                  description="An aircraft on one local day: 2013-04-01:N12345")

weather_hourly = FeatureView(
    name="weather_hourly", entities=[origin], ttl=timedelta(hours=3), source=_source("weather_hourly"),
    schema=[Field(name=n, dtype=Float64) for n in
            ("temp", "dewp", "humid", "wind_speed", "wind_gust", "precip", "pressure", "visib")],
    description="Hourly weather observed at the origin; at most 3 hours old when used",
)
flight_schedule = FeatureView(
    name="flight_schedule", entities=[flight], ttl=timedelta(days=2), source=_source("flight_schedule"),
    schema=[Field(name=n, dtype=Int64) for n in
            ("origin_hour_departures", "origin_day_departures", "carrier_origin_day_departures")],
    description="Congestion from the published schedule (known the day before)",
)
carrier_stats = FeatureView(
    name="carrier_stats", entities=[carrier], ttl=timedelta(days=2), source=_source("carrier_stats"),
    schema=[Field(name=f"carrier_{stat}_{w}d", dtype=Int64 if stat == "flights" else Float64)
            for w in (7, 28) for stat in ("flights", "disruption_rate", "cancel_rate", "mean_arr_delay")],
    description="Carrier outcomes over trailing 7 and 28 days, published the morning after each day",
)
route_stats = FeatureView(
    name="route_stats", entities=[route], ttl=timedelta(days=2), source=_source("route_stats"),
    schema=[Field(name=f"route_{stat}_28d", dtype=Int64 if stat == "flights" else Float64)
            for stat in ("flights", "disruption_rate", "cancel_rate", "mean_arr_delay")],
    description="Route outcomes over a trailing 28 days, published the morning after each day",
)
plane_attributes = FeatureView(
    name="plane_attributes", entities=[plane], ttl=timedelta(0), source=_source("plane_attributes"),
    schema=[Field(name="plane_age", dtype=Float64), Field(name="plane_seats", dtype=Int64),
            Field(name="plane_engines", dtype=Int64), Field(name="plane_type", dtype=String)],
    description="Static plane attributes from the planes reference table",
)



def _operations(view: str, entity: Entity, stats: tuple[str, ...], what: str) -> FeatureView:
    # A day's state starts at its local midnight and is read only on that day: a day's TTL.
    return FeatureView(
        name=view, entities=[entity], ttl=timedelta(days=1), source=_push(view),
        schema=[Field(name=f"{view}_{s}", dtype=Int64 if s in ("departed", "pending") else Float64) for s in stats],
        description=f"{what} so far today, from the departures pushed as they happen (pipelines.features.operations)",
    )


_GROUP_STATS = ("departed", "mean_dep_delay", "late_share", "last_hour_dep_delay", "pending", "pending_share")
ops_origin = _operations("ops_origin", origin_day, _GROUP_STATS, "Departures and pending flights at the origin")
ops_carrier = _operations("ops_carrier", origin_carrier_day, _GROUP_STATS,
                          "Departures and pending flights of the airline at the origin")
ops_tail = _operations("ops_tail", tail_day, ("departed", "last_dep_delay", "pending"),
                       "The aircraft's departures from New York and its flights due out")

flight_request = RequestSource(
    name="flight_request",
    schema=[Field(name="scheduled_departure", dtype=UnixTimestamp), Field(name="distance", dtype=Float64)],
)


@on_demand_feature_view(
    sources=[flight_request],
    schema=[Field(name="dep_hour", dtype=Int64), Field(name="dep_weekday", dtype=Int64),
            Field(name="dep_month", dtype=Int64), Field(name="log_distance", dtype=Float64)],
    mode="python",  # a fraction of a millisecond online; pandas mode costs about 3 ms a call
)
def request_features(inputs: dict[str, list[Any]]) -> dict[str, list[Any]]:
    """Hour, weekday and month of the scheduled departure in New York time, and log distance."""
    # Imports inside: Feast serializes this function into the registry.
    import math
    from datetime import datetime
    from zoneinfo import ZoneInfo

    new_york = ZoneInfo("America/New_York")
    local = [
        (t if isinstance(t, datetime) else datetime.fromtimestamp(int(t), tz=UTC)).astimezone(new_york)
        for t in inputs["scheduled_departure"]
    ]
    return {
        "dep_hour": [t.hour for t in local],
        "dep_weekday": [t.weekday() for t in local],
        "dep_month": [t.month for t in local],
        "log_distance": [math.log1p(float(d)) for d in inputs["distance"]],
    }


flight_delay_v1 = FeatureService(
    name="flight_delay_v1",
    features=[weather_hourly, flight_schedule, carrier_stats, route_stats, plane_attributes, ops_origin, ops_carrier,
              ops_tail, request_features],
    description="Everything the flight-disruption model v1 reads",
)
