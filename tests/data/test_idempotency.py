"""Reruns replace, never append: the same day run twice gives the same bytes, and a good redelivery wins."""

from __future__ import annotations

import json
import os
from datetime import date
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from pipelines.core.lake import Lake, partition_key
from pipelines.core.names import FEED_TABLES
from pipelines.core.settings import Settings
from pipelines.ingest.parse import ingest_partition, parse_feed_csv
from pipelines.ingest.schemas import FLIGHTS, table_schema
from pipelines.ingest.steps import ingest_feed
from pipelines.simulation.corruption import corrupt
from pipelines.simulation.feed import feed_csv, land_day, land_feed, land_file, land_reference
from pipelines.validation.partition import StaleVerdict, content_hash, promote_partition, validate_partition
from pipelines.validation.steps import promote_partitions, validate_partitions

DAY = date(2013, 1, 2)


def _run_day(settings: Settings) -> dict[str, Any]:
    """The DAG's chain for one day: land -> ingest -> validate -> promote."""
    land_feed([DAY], settings)
    ingest_feed([DAY], settings)
    validate_partitions([DAY], settings)
    return promote_partitions([DAY], settings)


def _snapshot(lake: Lake) -> dict[str, bytes]:
    """Every data file in the lake (verdicts hold a run id and time, so they are compared by content instead)."""
    return {key: lake.read_bytes(key) for key in lake.list_keys("") if not key.endswith("validation.json")}


def _tmp_files(root: Path) -> list[str]:
    """Temporary files anywhere under ``root``, hidden ones included."""
    return [os.path.join(folder, name) for folder, _, names in os.walk(root) for name in names
            if name.endswith(".tmp")]


def _verdict(lake: Lake, zone: str, table: str) -> dict[str, Any]:
    return json.loads(lake.read_text(partition_key(zone, table, DAY, "validation.json")))


def _expected_flights() -> pd.DataFrame:
    """The clean feed day as promotion types it."""
    frame = parse_feed_csv(feed_csv("flights", DAY), FLIGHTS)
    return frame[list(FLIGHTS.columns)].astype(FLIGHTS.dtypes)


def test_rerun_is_byte_identical(settings: Settings, lake: Lake) -> None:
    first = _run_day(settings)
    keys, data = lake.list_keys(""), _snapshot(lake)
    verdicts = {table: _verdict(lake, "validated", table) for table in FEED_TABLES}

    second = _run_day(settings)

    assert second == first
    assert lake.list_keys("") == keys  # nothing appended beside the partitions
    assert _snapshot(lake) == data  # landing, raw, validated and reference bytes all identical
    for table in FEED_TABLES:
        schema = table_schema(table)
        verdict = _verdict(lake, "validated", table)
        assert verdict["status"] == "passed"
        assert verdict["content_hash"] == verdicts[table]["content_hash"]
        assert verdict["rows"] == verdicts[table]["rows"]
        frame = lake.read_parquet(partition_key("validated", table, DAY, "data.parquet"))
        assert len(frame) == verdict["rows"] == len(feed_csv(table, DAY).splitlines()) - 1
        assert not frame.duplicated().any()
        assert not frame.duplicated(list(schema.keys)).any()
        assert content_hash(frame) == verdict["content_hash"]
    assert lake.list_keys("quarantine/") == []
    assert _tmp_files(Path(settings.lake_root)) == []


@pytest.mark.parametrize("good_before", [False, True], ids=["first_delivery_bad", "good_then_bad"])
def test_good_redelivery_replaces_quarantine(good_before: bool, settings: Settings, lake: Lake) -> None:
    """A quarantined delivery is superseded by a good redelivery of the same day."""
    land_reference(lake)

    def deliver(content: bytes | None) -> str:
        if content is None:
            land_day(lake, DAY, tables=("flights",))
        else:
            land_file(lake, "flights", DAY, content)
        ingest_partition(lake, "flights", DAY)
        validate_partition(lake, settings, "flights", DAY)
        return promote_partition(lake, "flights", DAY).status

    validated_prefix = f"validated/flights/date={DAY.isoformat()}/"
    quarantine_prefix = f"quarantine/flights/date={DAY.isoformat()}/"
    earlier: dict[str, bytes] = {}
    if good_before:
        assert deliver(None) == "passed"
        earlier = {key: lake.read_bytes(key) for key in lake.list_keys(validated_prefix)}

    assert deliver(corrupt("null_keys", feed_csv("flights", DAY))) == "quarantined"
    assert [key.removeprefix(quarantine_prefix) for key in lake.list_keys(quarantine_prefix)] == [
        "data.parquet", "validation.json"]
    assert {key: lake.read_bytes(key) for key in lake.list_keys(validated_prefix)} == earlier

    assert deliver(None) == "passed"
    assert lake.list_keys(quarantine_prefix) == []
    assert lake.partitions("quarantine", "flights") == []
    assert not (Path(settings.lake_root) / quarantine_prefix).exists()

    frame = lake.read_parquet(validated_prefix + "data.parquet")
    pd.testing.assert_frame_equal(frame, _expected_flights())
    verdict = _verdict(lake, "validated", "flights")
    assert verdict["status"] == "passed" and verdict["rows"] == len(frame)
    assert verdict["content_hash"] == content_hash(frame)
    if good_before:
        assert lake.read_bytes(validated_prefix + "data.parquet") == earlier[validated_prefix + "data.parquet"]
    assert _tmp_files(Path(settings.lake_root)) == []


def test_promotion_refuses_a_raw_partition_that_changed_after_validation(settings: Settings, lake: Lake) -> None:
    """A verdict is bound to the bytes it judged: a day re-landed (here: truncated) between validation and
    promotion is not promoted on the clean day's verdict, and validated/ keeps nothing of it."""
    land_feed([DAY], settings)
    ingest_feed([DAY], settings)
    validate_partitions([DAY], settings)
    land_file(lake, "flights", DAY, corrupt("truncated", feed_csv("flights", DAY)))
    ingest_feed([DAY], settings)
    with pytest.raises(StaleVerdict, match="changed after validation.*validate it again"):
        promote_partition(lake, "flights", DAY)
    assert not lake.exists(partition_key("validated", "flights", DAY, "data.parquet"))
    validate_partitions([DAY], settings)  # judged again, the truncated day goes where it belongs
    assert promote_partition(lake, "flights", DAY).status == "quarantined"
