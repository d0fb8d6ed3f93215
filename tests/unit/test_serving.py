"""The request contract and the prediction log, without a server (the HTTP side: tests/integration)."""

from __future__ import annotations

from datetime import datetime

import pandas as pd
import pytest
from pydantic import ValidationError

from pipelines.core.lake import Lake
from pipelines.serving.contract import FlightRequest, flight_entities
from pipelines.serving.prediction_log import PredictionLog

FLIGHT = {"carrier": "B6", "flight": 725, "origin": "JFK", "dest": "BQN",
          "scheduled_departure": "2013-03-31T05:40:00", "distance": 1576}


def test_local_time_without_offset_is_new_york_time() -> None:
    request = FlightRequest(**FLIGHT)
    assert request.scheduled_departure.utcoffset().total_seconds() == -4 * 3600  # EDT on 2013-03-31
    entities = flight_entities([request, FlightRequest(**FLIGHT | {"tailnum": "N123"})])
    assert entities["flight_id"].tolist() == ["2013-03-31:B6725:JFK"] * 2
    assert entities["tailnum"].tolist() == ["UNKNOWN", "N123"] and entities["route"].iloc[0] == "JFK-BQN"
    assert entities["scheduled_departure"].iloc[0] == pd.Timestamp("2013-03-31T09:40:00Z")


@pytest.mark.parametrize("change", [{"carrier": "b6"}, {"flight": 0}, {"origin": "BOS"}, {"dest": "BQ"},
                                    {"scheduled_departure": "2013-02-30T10:00"}, {"distance": 0},
                                    {"scheduled_departure": "1850-01-01T10:00"}, {"extra": True},
                                    # found by the fuzz (tests/integration/test_service_fuzz.py): each was a 500
                                    # (a pytz error, not a ValueError, escaped pydantic) before it was a 400
                                    {"scheduled_departure": "2013-03-10T02:30:00"},  # the clocks skip 02:00-03:00
                                    {"scheduled_departure": "0001-01-01T00:00:00"},
                                    # bounds and types a fuzzer tries
                                    {"scheduled_departure": "0001-01-01T00:00:00+01:00"},
                                    {"scheduled_departure": "9999-12-31T23:59:59-23:59"},
                                    {"scheduled_departure": "1989-12-31T23:00:00-05:00"},
                                    {"distance": float("nan")}, {"distance": float("inf")}, {"flight": 10**30},
                                    {"flight": 7.5}, {"dest": "ÄBC"}, {"dest": "LAX\n"}, {"carrier": None},
                                    {"tailnum": "N" * 11}, {"tailnum": ["N1", None]},
                                    # JSON types the document names, not what lax mode would coerce (schemathesis's
                                    # negative_data_rejection check)
                                    {"flight": "725"}, {"flight": True}, {"distance": "1576"},
                                    {"scheduled_departure": 1364736600}, {"scheduled_departure": 1.5}])
def test_request_validation_names_the_field(change: dict[str, object]) -> None:
    with pytest.raises(ValidationError) as error:
        FlightRequest(**FLIGHT | change)
    assert next(iter(change)) in str(error.value)


def test_json_types_are_strict_over_http_too() -> None:
    """BentoML validates the body as JSON (``model_validate_json``): the same refusals there, the same answers for
    a well-typed body (an integer distance is a number)."""
    import json

    body = json.dumps(FLIGHT)
    assert FlightRequest.model_validate_json(body).flight == 725
    for change in ({"flight": "725"}, {"distance": "1576"}, {"scheduled_departure": 1364736600}):
        with pytest.raises(ValidationError, match=next(iter(change))):
            FlightRequest.model_validate_json(json.dumps(FLIGHT | change))


def test_clock_changes_in_new_york_local_time() -> None:
    """A time the clocks skip is an error naming it; an hour they repeat is its first (daylight) occurrence."""
    with pytest.raises(ValidationError, match="does not exist in New York"):
        FlightRequest(**FLIGHT | {"scheduled_departure": "2013-03-10T02:30:00"})
    after_gap = FlightRequest(**FLIGHT | {"scheduled_departure": "2013-03-10T03:00:00"}).scheduled_departure
    assert after_gap.utcoffset().total_seconds() == -4 * 3600
    repeated = FlightRequest(**FLIGHT | {"scheduled_departure": "2013-11-03T01:30:00"}).scheduled_departure
    assert repeated.utcoffset().total_seconds() == -4 * 3600
    with_offset = FlightRequest(**FLIGHT | {"scheduled_departure": "2013-03-10T02:30:00-05:00"})
    assert flight_entities([with_offset])["scheduled_departure"].iloc[0] == pd.Timestamp("2013-03-10T07:30:00Z")


def test_request_schema_is_openapi_3_0() -> None:
    """The service documents OpenAPI 3.0: an exclusive bound is the boolean beside ``minimum``, not 2020-12's
    number (schemathesis could not generate a single /predict request from that)."""
    distance = FlightRequest.model_json_schema()["properties"]["distance"]
    assert distance["minimum"] == 0 and distance["exclusiveMinimum"] is True and distance["maximum"] == 6000
    assert FlightRequest(**FLIGHT | {"distance": 0.001}).distance == 0.001


def test_prediction_log_writes_batches_per_flight_date(lake: Lake) -> None:
    log = PredictionLog(lake, batch_rows=3, max_age_s=3600)
    row = {"request_id": "r", "served_at": datetime(2026, 11, 24), "flight_id": "f", "probability": 0.2}
    log.add([row | {"flight_date": "2013-03-30"}] * 2)
    assert lake.list_keys("predictions/") == []  # buffered, not an object per request
    log.add([row | {"flight_date": "2013-03-31"}])
    keys = lake.list_keys("predictions/")
    assert [k.split("/")[2] for k in keys] == ["date=2013-03-30", "date=2013-03-31"]
    assert sum(len(lake.read_parquet(k)) for k in keys) == 3 and "flight_date" not in lake.read_parquet(keys[0])
    assert log.flush() == []
