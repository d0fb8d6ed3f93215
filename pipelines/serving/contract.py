"""The request contract of the model service: a scheduled departure as a caller sends it, validated, with errors
that name the field (``RequestError``: 4xx) apart from an unreachable store (``FeaturesUnavailable``: 503).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, Literal
from zoneinfo import ZoneInfo

import pandas as pd
from pydantic import BaseModel, ConfigDict, Field, field_validator

from pipelines.core.dates import LOCAL_TZ

ORIGINS = ("EWR", "JFK", "LGA")
YEARS_PATTERN = "(199[0-9]|20[0-9]{2}|2100)"
"""The years a departure may be written in (1990 to 2100: any UTC offset keeps the conversion in range)."""
SMOKE_TEST_HEADER = "X-Smoke-Test"
"""A request carrying this header is answered but not logged: a deployment's checks are not traffic to monitor."""


class FlightRequest(BaseModel):
    """One scheduled departure from New York."""

    model_config = ConfigDict(extra="forbid")

    carrier: str = Field(pattern=r"^[A-Z0-9]{2}$", description="Two-character airline code, e.g. B6.",
                         examples=["B6"])
    # Strict where JSON has a type of its own: pydantic's lax mode takes "725" for a number and 1364736600 for a
    # datetime, which the OpenAPI document (and so a generated client) calls invalid.
    flight: int = Field(ge=1, le=9999, strict=True, description="Flight number.", examples=[725])
    origin: Literal["EWR", "JFK", "LGA"] = Field(description="New York departure airport.")
    dest: str = Field(pattern=r"^[A-Z]{3}$", examples=["BQN"],
                      description="Destination airport (FAA code). A well-formed code that is no known airport "
                                  "(neither in the model's vocabulary nor in the airports reference) is a 400 "
                                  "naming it.")
    # The year range is in the document as a pattern (JSON Schema has no bounds for a date-time), so a client
    # generated from it knows a departure in 0920 is a 400.
    scheduled_departure: datetime = Field(
        description="Scheduled departure, ISO 8601, written in a year from 1990 to 2100; without an offset it is "
                    "New York local time.",
        examples=["2013-03-31T09:30:00-04:00"], json_schema_extra={"pattern": f"^{YEARS_PATTERN}-"})
    # The service's OpenAPI document is 3.0, where an exclusive bound is a flag beside ``minimum`` (pydantic
    # writes the 2020-12 form, a number, which 3.0 tools such as schemathesis reject); validation is ``gt=0``.
    distance: float = Field(gt=0, le=6000, strict=True, description="Great-circle distance in miles.",
                            examples=[1576], json_schema_extra={"minimum": 0, "exclusiveMinimum": True})
    tailnum: str | None = Field(default=None, max_length=10, description="Plane tail number, if known.")

    @field_validator("scheduled_departure", mode="before")
    @classmethod
    def _a_string_or_datetime(cls, value: Any) -> Any:
        if isinstance(value, int | float):
            raise ValueError("must be an ISO 8601 string, not a number")
        return value

    @field_validator("scheduled_departure")
    @classmethod
    def _in_new_york_time(cls, value: datetime) -> datetime:
        # The year first: outside it a conversion can overflow (0001-01-01T00:00+01:00) rather than fail cleanly.
        if not 1990 <= value.year <= 2100:
            raise ValueError("must be a date between 1990 and 2100")
        new_york = ZoneInfo(LOCAL_TZ)
        if value.tzinfo is None:
            # New York wall time; fold=0 takes the first of an hour the clocks repeat (daylight time, as Python
            # does). A wall time the clocks skip does not come back unchanged from UTC: it never happened.
            local = value.replace(tzinfo=new_york)
            if local.astimezone(UTC).astimezone(new_york).replace(tzinfo=None) != value:
                raise ValueError(f"{value.isoformat()} does not exist in New York (the clocks skip it when "
                                 "daylight saving time starts); send it with its UTC offset")
            value = local
        return value


class RequestError(ValueError):
    """A request the caller can fix; ``field`` names what is wrong."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field


class FeaturesUnavailable(RuntimeError):
    """The online store could not be read: the service is up but cannot answer now."""


def entity_columns(requests: list[FlightRequest]) -> dict[str, list[Any]]:
    """The entity keys and request fields of the feature service, as training built them, as columns of plain
    Python values (what the online read takes; a frame of one row costs more than the read itself)."""
    new_york = ZoneInfo(LOCAL_TZ)
    departures = [r.scheduled_departure.astimezone(UTC) for r in requests]
    local_days = [d.astimezone(new_york).strftime("%Y-%m-%d") for d in departures]
    return {
        "flight_id": [f"{d}:{r.carrier}{r.flight}:{r.origin}" for d, r in zip(local_days, requests, strict=True)],
        "origin": [r.origin for r in requests],
        "carrier": [r.carrier for r in requests],
        "route": [f"{r.origin}-{r.dest}" for r in requests],
        "tailnum": [r.tailnum or "UNKNOWN" for r in requests],
        # The same-day operations keys (pipelines.features.operations.operations_keys, as strings).
        "origin_day": [f"{d}:{r.origin}" for d, r in zip(local_days, requests, strict=True)],
        "origin_carrier_day": [f"{d}:{r.origin}:{r.carrier}" for d, r in zip(local_days, requests, strict=True)],
        "tail_day": [f"{d}:{r.tailnum or 'UNKNOWN'}" for d, r in zip(local_days, requests, strict=True)],
        "scheduled_departure": departures,
        "distance": [float(r.distance) for r in requests],
    }


def flight_entities(requests: list[FlightRequest]) -> pd.DataFrame:
    """``entity_columns`` as a frame (departures as ``datetime64[ns, UTC]``)."""
    frame = pd.DataFrame(entity_columns(requests))
    frame["scheduled_departure"] = pd.to_datetime(frame["scheduled_departure"], utc=True)
    return frame


def requests_from_flights(flights: pd.DataFrame) -> list[dict[str, Any]]:
    """Validated flight rows as the JSON bodies a caller sends (for the demo, replays and tests)."""
    departures = (flights["time_hour"] + pd.to_timedelta(flights["minute"].astype("int64"), unit="min")) \
        .dt.tz_convert(LOCAL_TZ)
    return [{"carrier": row.carrier, "flight": int(row.flight), "origin": row.origin, "dest": row.dest,
             "scheduled_departure": departure.isoformat(), "distance": float(row.distance),
             "tailnum": None if pd.isna(row.tailnum) else str(row.tailnum)}
            for row, departure in zip(flights.itertuples(), departures, strict=True)]
