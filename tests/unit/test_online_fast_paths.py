"""The fast materialization writer and the compiled online reader against stock Feast, on SQLite.

A small feature lake with the awkward cases (NaN and inf doubles, null ints and strings, -0.0, large and negative
ints, unicode keys, sub-second timestamps, several rows per entity, rows outside the window) is materialized twice
with the same definitions: stock ``store.materialize`` into one online store, ``materialize_features`` (the fast
engine) into another. The stores must hold the same rows byte for byte and read back the same through stock
``get_online_features``; the compiled reader must return exactly what stock returns. The fast engine is the one
``feature_store.yaml`` names, so a store built from the yaml alone and ``feast materialize`` from the CLI run it, and it
honours ``materialization.online_write_batch_size``. The writer relies on Feast internals (the local engine's plan
builder and output node, the stores' connections and key helpers): these tests pin them. The Redis side is in
``tests/integration/test_online_fast_paths_redis.py``.
"""

from __future__ import annotations

import math
import os
import re
import sqlite3
import subprocess
import sys
from datetime import UTC, date, datetime
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from pipelines.core.lake import open_lake
from pipelines.core.settings import Settings
from pipelines.features import online_writer as W
from pipelines.features import store as fs
from pipelines.features.steps import feature_key
from pipelines.features.tables import PLANES_SNAPSHOT

DAYS = [date(2013, 1, 1), date(2013, 1, 2), date(2013, 1, 3)]


def _ts(*args: int) -> pd.Timestamp:
    return pd.Timestamp(datetime(*args, tzinfo=UTC))


def write_feature_lake(lake_root: Path) -> None:
    """Feature partitions shaped like ``pipelines.features`` writes them, full of edge cases."""
    lake = open_lake(Settings(pipeline_home=lake_root.parent, lake_uri=str(lake_root)))
    nan, inf = float("nan"), float("inf")
    tables: dict[str, list[dict]] = {name: [] for name in fs_views()}
    for d, day in enumerate(DAYS):
        for hour in (0, 6, 12, 18):
            for o, origin in enumerate(["EWR", "JFK", "LGA", "ZÜR"]):
                tables["weather_hourly"].append({
                    "origin": origin, "event_timestamp": _ts(2013, 1, day.day, hour, 0, 0, 123456 * (o % 2)),
                    "temp": [20.5, -0.0, inf, nan][(d + o + hour) % 4], "dewp": 1.0 * hour, "humid": 50.0 + o,
                    "wind_speed": nan if origin == "ZÜR" else 3.25, "wind_gust": None if hour == 18 else 7.5,
                    "precip": 0.0, "pressure": 1013.25 if o != 1 else nan, "visib": 10.0,
                })
        for n in range(6):
            tables["flight_schedule"].append({
                "flight_id": f"{day}:AA{n}:{'JFK' if n % 2 else 'EWR'}", "event_timestamp": _ts(2013, 1, day.day, 5),
                "origin_hour_departures": [1, 2**40, -5, 0, None, 7][n], "origin_day_departures": 100 + n,
                "carrier_origin_day_departures": None if n == 3 else n,
            })
        for c, carrier in enumerate(["AA", "B6", "9E"]):
            row = {"carrier": carrier, "event_timestamp": _ts(2013, 1, day.day + 1, 11)}
            for w in (7, 28):
                row |= {f"carrier_flights_{w}d": 10 * w + d, f"carrier_disruption_rate_{w}d": nan if c == 2 else 0.25,
                        f"carrier_cancel_rate_{w}d": 0.0, f"carrier_mean_arr_delay_{w}d": -3.5 + d}
            tables["carrier_stats"].append(row)
        for r, route in enumerate(["JFK-LAX", "EWR-ORD", "LGA-ATL"]):
            tables["route_stats"].append({
                "route": route, "event_timestamp": _ts(2013, 1, day.day + 1, 11), "route_flights_28d": r + d,
                "route_disruption_rate_28d": 0.5, "route_cancel_rate_28d": nan if r == 1 else 0.1,
                "route_mean_arr_delay_28d": 1e300 if r == 2 else 12.0,
            })
    # A route first flown on the last day: its only row comes after every earlier time (rewind_online removes it).
    tables["route_stats"].append(tables["route_stats"][-1] | {"route": "NOPE", "event_timestamp": _ts(2013, 1, 4, 11)})
    # Outside any window used below: must never reach the online store.
    late = {"event_timestamp": _ts(2013, 3, 1), "carrier_flights_7d": -1}
    tables["carrier_stats"].append(tables["carrier_stats"][0] | late)
    planes = [{"tailnum": t, "event_timestamp": _ts(2012, 12, 31), "plane_age": [9.0, nan, 0.5][i],
               "plane_seats": [55, None, 200][i], "plane_engines": 2, "plane_type": [None, "Fixed wing", "Rotor ü"][i]}
              for i, t in enumerate(["N1", "N2", "N3"])]
    tables["plane_attributes"] = planes
    for name, rows in tables.items():
        frame = pd.DataFrame(rows)
        for column in frame.columns:
            if column.endswith(("departures", "flights_7d", "flights_28d", "seats", "engines")):
                frame[column] = frame[column].astype("Int64")
        frame = frame.astype({"event_timestamp": "datetime64[us, UTC]"})
        for day, part in frame.groupby(frame["event_timestamp"].dt.date):
            lake.write_parquet(feature_key(name, day), part.reset_index(drop=True))


def fs_views() -> list[str]:
    return ["weather_hourly", "flight_schedule", "carrier_stats", "route_stats", "plane_attributes"]


def entity_rows() -> list[dict]:
    rows = []
    for day in DAYS:
        for n in range(7):  # AA6 exists nowhere
            origin = "JFK" if n % 2 else "EWR"
            rows.append({"flight_id": f"{day}:AA{n}:{origin}", "origin": [origin, "ZÜR", "XXX"][n % 3],
                         "carrier": ["AA", "B6", "9E", "ZZ"][n % 4],
                         "route": ["JFK-LAX", "EWR-ORD", "LGA-ATL", "NOPE"][n % 4],
                         "tailnum": ["N1", "N2", "N3", "UNKNOWN"][n % 4],
                         "origin_day": f"{day}:{origin}", "origin_carrier_day": f"{day}:{origin}:AA",
                         "tail_day": f"{day}:{['N1', 'N2', 'N3', 'UNKNOWN'][n % 4]}",
                         "scheduled_departure": _ts(2013, 1, day.day, 10 + n, 5 * n),
                         "distance": [1089.0, 0.0, 2475.5, 17.0][n % 4]})
    return rows + rows[:3]  # repeated flights


@pytest.fixture
def two_homes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Settings]:
    for name in ("FEAST_HOME", "FEATURES_URI", "FEAST_REGISTRY_URL", "FEAST_REDIS", "FEAST_PROFILE", "LAKE_URI"):
        monkeypatch.delenv(name, raising=False)  # restored after the test (open_store writes some of them)
    lake = tmp_path / "lake"
    write_feature_lake(lake)
    return {name: Settings(pipeline_home=tmp_path / name, lake_uri=str(lake)) for name in ("stock", "ours")}


def sqlite_rows(settings: Settings) -> dict[str, list[tuple]]:
    conn = sqlite3.connect(settings.pipeline_home / "feast" / "online.db")
    names = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")]
    out = {name: conn.execute(f'SELECT entity_key, feature_name, value, value_text, vector_value, event_ts, created_ts '
                              f'FROM "{name}" ORDER BY entity_key, feature_name').fetchall() for name in names}
    conn.close()
    return out


def same(a: dict[str, list], b: dict[str, list]) -> bool:
    """Equal keys in the same order, and equal values of the same types (NaN equal to NaN)."""
    if list(a) != list(b):
        return False
    return all(type(x) is type(y) and (x == y or (x != x and y != y))
               for k in a for x, y in zip(a[k], b[k], strict=True))


def stock_read(settings: Settings, rows: list[dict]) -> dict[str, list]:
    store = fs.open_store(settings)
    service = store.get_feature_service(fs.FEATURE_SERVICE, allow_cache=True)
    return store.get_online_features(features=service, entity_rows=rows).to_dict()


def test_fast_materialization_writes_exactly_what_stock_writes(two_homes: dict[str, Settings]) -> None:
    windows = [(DAYS[:2]), (DAYS[1:])]  # the second overlaps the first, as the DAG's late-data overlap does
    for days in windows:
        stock = fs.materialize_features(days, two_homes["stock"], stock=True)
        ours = fs.materialize_features(days, two_homes["ours"])
        assert ours["engine"] == "fast" and stock["engine"] == "stock"
        assert [n for n, v in ours["views"].items() if not v["fast"]] == []
        got, expected = sqlite_rows(two_homes["ours"]), sqlite_rows(two_homes["stock"])
        assert got == expected
        assert sum(len(v) for v in got.values()) > 50
        assert same(stock_read(two_homes["ours"], entity_rows()), stock_read(two_homes["stock"], entity_rows()))
    # The row stamped 2013-03-01 lies outside both windows.
    values = stock_read(two_homes["ours"], [{"carrier": "AA", "flight_id": "x", "origin": "EWR", "route": "r",
                                             "tailnum": "N1", "origin_day": "x", "origin_carrier_day": "x",
                                             "tail_day": "x", "scheduled_departure": _ts(2013, 1, 1),
                                             "distance": 1.0}])
    assert values["carrier_flights_7d"] == [72]
    # Materialization intervals are recorded as stock records them.
    store = fs.open_store(two_homes["ours"])
    intervals = {v.name: len(v.materialization_intervals) for v in store.list_feature_views()}
    # The operations views reach the online store by push only: materializing one would put a day's evening online
    # before its morning.
    assert intervals == dict.fromkeys(fs_views(), 2) | {"ops_origin": 0, "ops_carrier": 0, "ops_tail": 0}


def test_the_yaml_names_the_fast_engine(two_homes: dict[str, Settings], monkeypatch: pytest.MonkeyPatch) -> None:
    from feast import FeatureStore
    from feast.infra.compute_engines.local.compute import LocalComputeEngine

    for name, value in fs.feast_env(two_homes["ours"]).items():
        monkeypatch.setenv(name, value)
    store = FeatureStore(repo_path=str(fs.FEATURE_REPO))  # the yaml alone, as the feast CLI builds it
    assert isinstance(store.config.batch_engine, W.FastLocalComputeEngineConfig)  # Feast resolves the config class
    assert type(store._get_provider().batch_engine) is W.FastLocalComputeEngine
    production = fs.FEATURE_REPO / "profiles" / "production.yaml"
    assert f"type: {W.ENGINE}" in production.read_text()
    assert type(fs.open_store(two_homes["ours"])._get_provider().batch_engine) is W.FastLocalComputeEngine
    assert type(fs.open_store(two_homes["ours"], stock=True)._get_provider().batch_engine) is LocalComputeEngine


def test_feast_cli_materialize_runs_the_fast_engine(two_homes: dict[str, Settings]) -> None:
    """``feast -c feature_repo materialize`` with the environment of ``feast_env``: the bulk writer does the work and
    the store holds what stock Feast writes."""
    start, end = PLANES_SNAPSHOT.to_pydatetime(), fs.run_window(DAYS)[1]
    stock = fs.open_store(two_homes["stock"], stock=True)
    fs.apply_definitions(stock)
    stock.materialize(start_date=start, end_date=end, feature_views=fs_views())  # stock would load pushed views too
    fs.apply_definitions(fs.open_store(two_homes["ours"]))
    feast = Path(sys.executable).parent / "feast"
    done = subprocess.run([str(feast), "--log-level", "info", "-c", str(fs.FEATURE_REPO), "materialize",
                           start.isoformat(), end.isoformat()], env=os.environ | fs.feast_env(two_homes["ours"]),
                          capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    bulk = re.findall(r"(\w+): \d+ of \d+ rows written to the online store by the bulk writer", done.stderr)
    assert sorted(bulk) == sorted(fs_views()), done.stderr[-3000:]
    assert "ops_origin is fed by push only: not materialized" in done.stderr
    assert sqlite_rows(two_homes["ours"]) == sqlite_rows(two_homes["stock"])


def test_online_write_batch_size_is_honoured(two_homes: dict[str, Settings]) -> None:
    """``materialization.online_write_batch_size``: one SQLite transaction per batch of entity rows, as stock."""
    start, end = PLANES_SNAPSHOT.to_pydatetime(), fs.run_window(DAYS)[1]
    statements: dict[str, list[str]] = {}
    engines = {}
    for name in ("stock", "ours"):
        store = fs.open_store(two_homes[name], stock=name == "stock")
        store.config.materialization_config.online_write_batch_size = 2
        fs.apply_definitions(store)
        provider = store._get_provider()
        provider.online_store._get_conn(store.config).set_trace_callback(statements.setdefault(name, []).append)
        store.materialize(start_date=start, end_date=end, feature_views=fs_views())
        engines[name] = provider.batch_engine
    assert type(engines["ours"]) is W.FastLocalComputeEngine
    assert [n for n, v in engines["ours"].stats.items() if not v["fast"]] == []
    assert sqlite_rows(two_homes["ours"]) == sqlite_rows(two_homes["stock"])
    commits = {name: sum(s == "COMMIT" for s in log) for name, log in statements.items()}
    rows = {n: v["rows_written"] for n, v in engines["ours"].stats.items()}
    assert commits["ours"] == commits["stock"] == sum(math.ceil(r / 2) for r in rows.values()) > len(rows)


def test_views_the_encoders_do_not_cover_go_through_the_stock_writer(two_homes: dict[str, Settings],
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    from feast.value_type import ValueType

    fields = {k: v for k, v in W._FEATURE_FIELDS.items() if k != ValueType.STRING}
    monkeypatch.setattr(W, "_FEATURE_FIELDS", fields)  # plane_type (STRING) is now "not covered"
    fs.materialize_features(DAYS, two_homes["stock"], stock=True)
    ours = fs.materialize_features(DAYS, two_homes["ours"])
    assert [n for n, v in ours["views"].items() if not v["fast"]] == ["plane_attributes"]
    assert sqlite_rows(two_homes["ours"]) == sqlite_rows(two_homes["stock"])


def pushed_operations() -> dict[str, pd.DataFrame]:
    """Operations state rows as the tracker makes them, with the awkward values: NaN means, zero counts, two rows
    of one key (the newer wins), a key no request asks for."""
    from pipelines.features.operations import OPERATIONS_VIEWS, VIEW_COLUMNS, VIEW_KEYS

    nan = float("nan")
    keys = {"ops_origin": ["2013-01-01:EWR", "2013-01-01:JFK", "2013-01-02:EWR", "2013-01-09:LGA"],
            "ops_carrier": ["2013-01-01:EWR:AA", "2013-01-01:JFK:AA", "2013-01-02:EWR:AA", "2013-01-09:LGA:AA"],
            "ops_tail": ["2013-01-01:N1", "2013-01-01:N2", "2013-01-02:N3", "2013-01-09:N1"]}
    frames = {}
    for view in OPERATIONS_VIEWS:
        rows = []
        for i, key in enumerate([*keys[view], keys[view][0]]):
            values = [i if c.endswith(("_departed", "_pending")) else [nan, -3.25, 0.5, 1e300, 7.0][i]
                      for c in VIEW_COLUMNS[view]]
            rows.append([key, _ts(2013, 1, 1, 12, i), *values, key[:10]])
        frames[view] = pd.DataFrame(rows, columns=[VIEW_KEYS[view], "event_timestamp", *VIEW_COLUMNS[view], "day"])
    return frames


def test_compiled_reader_returns_what_stock_returns(two_homes: dict[str, Settings]) -> None:
    from pipelines.features.online_reader import read_online, reader_for
    from pipelines.features.push import push_online

    fs.materialize_features(DAYS, two_homes["ours"])
    store = fs.open_store(two_homes["ours"])
    assert push_online(store, pushed_operations()) == 12  # the newest of the repeated key's two rows
    assert reader_for(store, fs.FEATURE_SERVICE) is not None
    service = store.get_feature_service(fs.FEATURE_SERVICE, allow_cache=True)
    rows = entity_rows()
    for batch in (rows[:1], rows[3:5], rows, [rows[6]] * 4):
        expected = store.get_online_features(features=service, entity_rows=batch).to_dict()
        assert same(read_online(store, fs.FEATURE_SERVICE, batch), expected)
        columnar = {k: [r[k] for r in batch] for k in batch[0]}
        assert same(read_online(store, fs.FEATURE_SERVICE, columnar), expected)
    frame = pd.DataFrame(rows)
    pd.testing.assert_frame_equal(fs.online_features(frame, store=store), fs.online_features(frame, store=store,
                                                                                              stock=True))
    # Known values: the latest weather of the day (18:00, 2013-01-03) and a plane with a null type.
    out = read_online(store, fs.FEATURE_SERVICE, rows[:1])
    assert out["dewp"] == [18.0] and out["plane_type"] == [None] and out["plane_seats"] == [55]
    assert out["dep_hour"] == [5] and out["log_distance"] == [pytest.approx(np.log1p(1089.0))]
    # Pushed operations state: the newer of two rows of 2013-01-01:EWR, and nothing for a key never pushed.
    assert out["ops_origin_departed"] == [4] and out["ops_origin_mean_dep_delay"] == [7.0]
    assert out["ops_tail_departed"] == [4]
    assert read_online(store, fs.FEATURE_SERVICE, rows[14:15])["ops_origin_departed"] == [None]  # 2013-01-03


def test_reader_falls_back_to_stock_outside_its_scope(two_homes: dict[str, Settings]) -> None:
    from feast.errors import RequestDataNotFoundInEntityRowsException

    from pipelines.features.online_reader import read_online

    fs.materialize_features(DAYS[:1], two_homes["ours"])
    store = fs.open_store(two_homes["ours"])
    row = {k: v for k, v in entity_rows()[0].items() if k != "distance"}
    with pytest.raises(RequestDataNotFoundInEntityRowsException):
        read_online(store, fs.FEATURE_SERVICE, [row])
    # A numpy string key is not a plain str: the stock path answers, with the same result.
    row = entity_rows()[0] | {"origin": np.str_("EWR")}
    service = store.get_feature_service(fs.FEATURE_SERVICE, allow_cache=True)
    assert same(read_online(store, fs.FEATURE_SERVICE, [row]),
                store.get_online_features(features=service, entity_rows=[row]).to_dict())


@pytest.mark.parametrize(("keys", "values"), [
    ({"origin": "STRING"}, [("JFK",), ("ZÜR",), ("",)]),
    ({"id": "INT64"}, [(0,), (-1,), (2**62,)]),
    ({"id": "INT32"}, [(7,), (-(2**31),)]),
    ({"route": "STRING", "carrier": "STRING"}, [("JFK-LAX", "AA"), ("", "B6")]),
    ({"n": "INT64", "a": "STRING"}, [(5, "x"), (-2, "ü")]),
])
def test_entity_keys_match_serialize_entity_key(keys: dict[str, str], values: list[tuple]) -> None:
    from feast.infra.key_encoding_utils import serialize_entity_key
    from feast.protos.feast.types.EntityKey_pb2 import EntityKey
    from feast.type_map import python_values_to_proto_values
    from feast.value_type import ValueType

    types = {k: ValueType[t] for k, t in keys.items()}
    encode = W.entity_key_encoder(types, 3)
    for row in values:
        protos = [python_values_to_proto_values([v], types[k])[0] for k, v in zip(keys, row, strict=True)]
        expected = serialize_entity_key(EntityKey(join_keys=list(keys), entity_values=protos), 3)
        assert encode(row) == expected


@pytest.mark.parametrize(("array", "value_type"), [
    (pa.array([1.5, None, float("nan"), -0.0, float("inf"), 1e-300, 0.0]), "DOUBLE"),
    (pa.array([1, None, -7, 2**62, 0], type=pa.int64()), "INT64"),
    (pa.array([1.0, None, float("nan"), -7.0, 2.0**40, -0.0]), "INT64"),  # ints after a pandas round trip
    (pa.array([3, None, -(2**31)], type=pa.int32()), "INT32"),
    (pa.array(["a", None, "", "ü" * 200]), "STRING"),
])
def test_values_match_feast_conversion(array: pa.Array, value_type: str) -> None:
    from feast.type_map import python_values_to_proto_values
    from feast.value_type import ValueType

    kind = ValueType[value_type]
    expected = [v.SerializeToString() for v in python_values_to_proto_values(array.to_numpy(zero_copy_only=False),
                                                                              kind)]
    assert W.value_bytes(array, kind) == expected
    assert W.value_bytes(pa.chunked_array([array[:2], array[2:]]), kind) == expected


def test_unsupported_shapes_are_refused_not_guessed() -> None:
    from feast.value_type import ValueType

    with pytest.raises(W.Unsupported):
        W.value_bytes(pa.array([1.0, 2.0], type=pa.float32()), ValueType.DOUBLE)
    with pytest.raises(W.Unsupported):
        W.value_bytes(pa.array([[1.0]]), ValueType.DOUBLE_LIST)
    with pytest.raises(W.Unsupported):
        W.entity_key_encoder({"k": ValueType.BYTES}, 3)
    with pytest.raises(W.Unsupported):
        W.entity_keys(pa.table({"k": pa.array(["a", None])}), {"k": ValueType.STRING}, 3)


def test_fast_push_writes_exactly_what_stock_push_writes(two_homes: dict[str, Settings]) -> None:
    """``OnlinePush`` (views resolved once, the bulk writer) against Feast's ``store.push``: the same stored rows,
    the newer row winning as stock decides it, also when an older row comes after a newer one."""
    from pipelines.features.push import OnlinePush

    frames = pushed_operations()
    older = {view: frame.iloc[[0]].assign(event_timestamp=_ts(2013, 1, 1, 6)) for view, frame in frames.items()}
    for name in ("stock", "ours"):
        store = fs.open_store(two_homes[name])
        fs.apply_definitions(store)
        push = OnlinePush(store, stock=name == "stock")
        assert (push.writer is None) == (name == "stock")
        assert push(frames) == 12
        push(older)  # stamped before what is stored: dropped
    assert sqlite_rows(two_homes["ours"]) == sqlite_rows(two_homes["stock"])
    assert sum(len(rows) for rows in sqlite_rows(two_homes["ours"]).values()) > 30


def check_rewind(homes: dict[str, Settings]) -> None:
    """``rewind_online``: "ours" gets the whole window and is rewound to ``at``; "stock" is loaded only up to ``at``;
    every rewound view reads back the same, and a key whose rows all come later is gone."""
    at = datetime(2013, 1, 2, 13, tzinfo=UTC)
    start = fs.run_window(DAYS)[0]
    early = fs.open_store(homes["stock"])
    fs.apply_definitions(early)
    early.materialize(start_date=start, end_date=at, feature_views=fs_views())
    fs.materialize_features(DAYS, homes["ours"])
    store = fs.open_store(homes["ours"])
    rows = entity_rows()
    rewound = ["weather_hourly", "carrier_stats", "route_stats"]
    columns = [f.name for v in rewound for f in store.get_feature_view(v).features]
    before = {c: v for c, v in stock_read(homes["ours"], rows).items() if c in columns}
    assert not same(before, {c: v for c, v in stock_read(homes["stock"], rows).items() if c in columns})
    done = fs.rewind_online(store, at)
    assert sorted(done) == sorted(rewound)
    assert done["route_stats"]["removed"] == 1 and done["weather_hourly"]["written"] == 4
    assert same({c: v for c, v in stock_read(homes["ours"], rows).items() if c in columns},
                {c: v for c, v in stock_read(homes["stock"], rows).items() if c in columns})


def test_rewind_puts_back_what_was_online_at_a_time(two_homes: dict[str, Settings]) -> None:
    check_rewind(two_homes)
