"""The ASOF point-in-time join (``pipelines.features.offline_asof``) against stock Feast's join, on edge cases: TTL
bounds to the second, rows stamped exactly at the entity's time and just after, null keys, a zero TTL (no limit),
two-column keys, duplicate entity rows, entities with nothing to match, null feature values. Both joins run on the
same ibis tables in DuckDB and must return the same frame. The real data's training set, stock against ours, is
compared in ``tests/data/test_training_set_on_real_data.py``."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import ibis
import pandas as pd
import pytest
from feast.infra.offline_stores import ibis as feast_ibis

from pipelines.features.offline_asof import AsofDuckDBOfflineStore, asof_point_in_time_join

T0 = datetime(2013, 7, 1, 12, 0, tzinfo=UTC)


def _at(seconds: int) -> datetime:
    return T0 + timedelta(seconds=seconds)


def _entities() -> pd.DataFrame:
    rows = [("EWR", "B6", _at(0)), ("EWR", "B6", _at(0)),  # a duplicate entity row is kept twice
            ("JFK", "AA", _at(3600)), ("LGA", None, _at(7200)), (None, "UA", _at(10)), ("EWR", "UA", _at(-99999)),
            ("JFK", "B6", _at(100)), ("LGA", "AA", _at(86400 * 5))]
    frame = pd.DataFrame(rows, columns=["origin", "carrier", "event_timestamp"])
    frame["flight_id"] = [f"f{i}" for i in range(len(frame))]
    return frame


def _features() -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    weather = pd.DataFrame([  # key origin, TTL 1 hour
        ("EWR", _at(-3600), 1.0),   # exactly at the TTL's edge for the EWR rows at T0: usable
        ("EWR", _at(1), 2.0),       # a second after: not yet
        ("JFK", _at(0), 3.0),       # superseded for both JFK rows
        ("JFK", _at(-1), 4.0),      # older still
        ("JFK", _at(99), None),     # the latest for both JFK rows: a null value is the value, not the older 3.0
        ("LGA", _at(3599), 5.0),    # 3,601 s before LGA's row: expired
        ("LGA", _at(86400 * 5 - 10), 6.0),
        ("EWR", _at(-99999 - 3600), 0.5),  # at the TTL's edge for the earliest entity row: the oldest row usable
        ("EWR", _at(-99999 - 3601), 0.4),  # a second older: no entity row can use it
    ], columns=["origin", "event_timestamp", "temp"])
    carrier = pd.DataFrame([  # key (origin, carrier), TTL 1 day
        ("EWR", "B6", _at(-86400), 10.0), ("EWR", "B6", _at(-86401), 11.0), ("JFK", "AA", _at(3600), 12.0),
        ("JFK", "B6", _at(-86400 * 2), 13.0), ("LGA", "AA", _at(0), 14.0),
    ], columns=["origin", "carrier", "event_timestamp", "share"])
    planes = pd.DataFrame([  # key origin, TTL 0: no limit
        ("EWR", _at(-10 ** 7), 7), ("JFK", _at(-5), 8), ("LGA", _at(86400 * 6), 9),
    ], columns=["origin", "event_timestamp", "seats"])
    return weather, carrier, planes


def _feature_tables() -> list[tuple]:
    weather, carrier, planes = (ibis.memtable(f) for f in _features())
    utc = ibis.expr.datatypes.Timestamp(timezone="UTC")
    cast = [t.mutate(event_timestamp=t["event_timestamp"].cast(utc)) for t in (weather, carrier, planes)]
    return [
        (cast[0], "event_timestamp", None, {"origin": "origin"}, ["temp"], timedelta(hours=1)),
        (cast[1], "event_timestamp", None, {"origin": "origin", "carrier": "carrier"}, ["share"], timedelta(days=1)),
        (cast[2], "event_timestamp", None, {"origin": "origin"}, ["seats"], timedelta(0)),
    ]


def _joined(join: object) -> pd.DataFrame:
    entities = _entities()
    table = ibis.memtable(entities)
    table = table.mutate(entity_row_id=feast_ibis._entity_row_id(table, ["origin", "carrier", "event_timestamp"]))
    result = join(table, _feature_tables(), "event_timestamp").execute()  # type: ignore[operator]
    return result.sort_values(["flight_id"]).reset_index(drop=True)


def test_asof_join_returns_what_feasts_join_returns() -> None:
    stock, ours = _joined(feast_ibis.point_in_time_join), _joined(asof_point_in_time_join)
    assert list(ours.columns) == list(stock.columns)
    pd.testing.assert_frame_equal(ours, stock)
    by_flight = ours.set_index("flight_id")
    # The edges, spelled out so a change in both joins at once still fails here.
    assert by_flight.loc[["f0", "f1"], "temp"].tolist() == [1.0, 1.0]
    assert pd.isna(by_flight.loc["f2", "temp"]) and by_flight.loc["f2", "share"] == 12.0  # stamped at the row's time
    assert pd.isna(by_flight.loc["f3", "temp"]) and pd.isna(by_flight.loc["f3", "share"])  # expired; null key
    assert pd.isna(by_flight.loc["f4", "seats"])  # a null key matches nothing
    assert pd.isna(by_flight.loc["f6", "temp"]) and pd.isna(by_flight.loc["f6", "share"])  # null value; expired
    assert by_flight.loc["f0", "share"] == 10.0 and by_flight.loc["f0", "seats"] == 7  # TTL 0: any age
    assert pd.isna(by_flight.loc["f7", "seats"])  # stamped after the entity row
    assert by_flight.loc["f5", "temp"] == 0.5  # the earliest entity row takes the row at its TTL's edge


def test_what_the_asof_join_does_not_cover_goes_to_feast(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []
    monkeypatch.setattr(feast_ibis, "point_in_time_join", lambda *args: calls.append(args) or "stock")
    tables = [(t[0], t[1], "created", *t[3:]) for t in _feature_tables()]
    assert asof_point_in_time_join(ibis.memtable(_entities()), tables, "event_timestamp") == "stock"
    assert asof_point_in_time_join(ibis.memtable(_entities()), _feature_tables(), "event_timestamp",
                                   filter_by_created_timestamp=True) == "stock"
    assert len(calls) == 2


def test_the_yaml_names_the_asof_store(tmp_path: object) -> None:
    """The embedded and production profiles retrieve through the ASOF store; ``stock=True`` through Feast's."""
    from pipelines.core.settings import Settings
    from pipelines.features.store import open_store

    settings = Settings(pipeline_home=tmp_path)
    assert isinstance(open_store(settings)._get_provider().offline_store, AsofDuckDBOfflineStore)
    stock = open_store(settings, stock=True)._get_provider().offline_store
    assert type(stock).__name__ == "DuckDBOfflineStore"
