"""The online path without frames gives what the frame path gives: entity keys, encoding, probabilities, and the
prediction log's feature JSON. On real rows through the running stack: tests/integration/test_serving_fast_path.py.
"""

from __future__ import annotations

import json
import math
import pickle
from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch

from pipelines.core.dates import LOCAL_TZ
from pipelines.core.lake import Lake
from pipelines.serving.contract import FlightRequest, entity_columns, flight_entities
from pipelines.serving.prediction_log import feature_json
from pipelines.training.fit import time_split, train_model
from pipelines.training.model import TrainedModel
from pipelines.training.network import EMBEDDING_DIM, FlightDelayNet, NumpyForward, _lookup, build_net
from pipelines.training.preprocessing import Preprocessor, _ColumnEncoder, _NotPlain

FAST = {"hidden_sizes": [16], "dropout": 0.0, "lr": 3e-3, "batch_size": 256}


@pytest.fixture(scope="module")
def trained(make_training_frame: Callable[..., pd.DataFrame]) -> TrainedModel:
    train, valid, _ = time_split(make_training_frame(1500), valid_days=5, test_days=5)
    return train_model(train, valid, FAST, seed=0, max_epochs=2, device=torch.device("cpu"))


def _columns(frame: pd.DataFrame) -> dict[str, list[Any]]:
    """A frame as an online read returns it: plain Python values, None for missing (pandas' own boxing)."""
    records = frame.astype(object).where(frame.notna(), None).to_dict("list")
    return {name: [v.item() if isinstance(v, np.generic) else v for v in values] for name, values in records.items()}


def _odd_columns(frame: pd.DataFrame) -> dict[str, list[Any]]:
    """Eight rows with what an online read can hold: None, NaN, infinities, -0.0, big ints, unseen categories,
    integral floats in categoricals, routes without a destination, text outside the vocabulary."""
    columns = _columns(frame.head(8))
    columns["carrier"] = ["ZZ", None, "AA", "B6", "", "ü", "DL", "UA"]
    columns["route"] = ["JFK-XXX", "JFK-LAX", None, "EWR", "", "A-B-C", "LGA-", "LGA-ORD"]
    columns["dep_hour"] = [7.0, math.nan, 8.5, 7, None, 23.0, -0.0, 2**40]
    columns["plane_type"] = [None] * 8
    columns["temp"] = [math.nan, math.inf, -math.inf, -0.0, None, 2**40, -(2**52), 1e300]
    columns["wind_gust"] = [None, 1, 2.5, None, None, 3, None, None]
    del columns["visib"]  # a feature the read does not return at all
    return columns


def test_transform_columns_is_the_frame_transform(trained: TrainedModel,
                                                  make_training_frame: Callable[..., pd.DataFrame]) -> None:
    pre = trained.preprocessor
    frame = make_training_frame(300, seed=5)
    for columns in (_columns(frame), _odd_columns(frame), _columns(frame.head(1)), _columns(frame.head(0))):
        cat, num = _ColumnEncoder(pre).encode(columns)  # the fast path itself: no fallback taken
        expected_cat, expected_num = pre.transform(pd.DataFrame(columns))
        assert cat.dtype == torch.int64 and num.dtype == torch.float32
        assert torch.equal(cat, expected_cat) and torch.equal(num, expected_num)
        assert torch.equal(pre.transform_columns(columns)[1], expected_num)


@pytest.mark.parametrize("odd", [{"carrier": [True]}, {"temp": ["3.5"]}, {"temp": [np.float64(1.0)]},
                                 {"dep_hour": [2**53]}, {"temp": [True]}, {"route": [5]}])
def test_values_pandas_would_convert_otherwise_fall_back_to_pandas(
        trained: TrainedModel, make_training_frame: Callable[..., pd.DataFrame], odd: dict[str, list[Any]]) -> None:
    pre = trained.preprocessor
    columns = _columns(make_training_frame(1, seed=2)) | odd
    with pytest.raises(_NotPlain):
        _ColumnEncoder(pre).encode(columns)
    cat, num = pre.transform_columns(columns)
    expected_cat, expected_num = pre.transform(pd.DataFrame(columns))
    assert torch.equal(cat, expected_cat) and torch.equal(num, expected_num)


def test_ragged_columns_fall_back_and_fail_as_pandas_does(trained: TrainedModel) -> None:
    with pytest.raises(ValueError):
        trained.preprocessor.transform_columns({"carrier": ["AA", "B6"], "temp": [1.0]})


def test_predict_proba_columns_is_predict_proba(trained: TrainedModel,
                                                make_training_frame: Callable[..., pd.DataFrame]) -> None:
    frame = make_training_frame(200, seed=9)
    for columns in (_columns(frame), _odd_columns(frame), _columns(frame.iloc[[17]])):
        # numpy's float32 sums in another order than torch's: equal to float32 precision, not to the bit.
        np.testing.assert_allclose(trained.predict_proba_columns(columns),
                                   trained.predict_proba(pd.DataFrame(columns)), rtol=0, atol=1e-6)


@pytest.mark.parametrize("shape", [{"hidden_sizes": [], "members": 1}, {"hidden_sizes": [16], "members": 1},
                                   {"hidden_sizes": [32, 16, 8], "members": 3}])
def test_the_numpy_forward_is_the_network_forward(shape: dict[str, Any],
                                                  make_training_frame: Callable[..., pd.DataFrame]) -> None:
    train = make_training_frame(300, seed=4)
    pre = Preprocessor().fit(train)
    net = build_net(pre, FAST | {"dropout": 0.3} | shape).eval()  # dropout is off in eval, in both
    cat, num = pre.transform(make_training_frame(64, seed=5))
    with torch.no_grad():
        expected = net(cat, num).numpy()
    got = NumpyForward(net)(cat.numpy(), num.numpy())
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-5)


def test_the_numpy_forward_refuses_layers_it_does_not_know() -> None:
    net = FlightDelayNet([3, 4], 2, hidden_sizes=[8])
    net.mlp.insert(1, torch.nn.Tanh())
    with pytest.raises(TypeError, match="NumpyForward covers"):
        NumpyForward(net)


def test_the_inference_network_is_built_once_and_never_pickled(trained: TrainedModel,
                                                               make_training_frame: Callable[..., pd.DataFrame]
                                                               ) -> None:
    frame = make_training_frame(50, seed=1)
    expected = trained.predict_proba(frame)
    trained.predict_proba_columns(_columns(frame))  # builds the numpy forward too: not pickled either
    net = trained._inference_network(torch.device("cpu"))
    assert trained._inference_network(torch.device("cpu")) is net and not net.training
    restored = pickle.loads(pickle.dumps(trained))
    assert restored._networks == {} and restored._numpy is None
    np.testing.assert_array_equal(restored.predict_proba(frame), expected)


def test_embedding_lookup_without_autograd_is_the_same_gather() -> None:
    weight = torch.randn(30, EMBEDDING_DIM, generator=torch.Generator().manual_seed(0))
    index = torch.randint(0, 30, (5, 6), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.equal(_lookup(weight, index), torch.nn.functional.embedding(index, weight))


REQUESTS = [
    {"carrier": "B6", "flight": 725, "origin": "JFK", "dest": "BQN", "scheduled_departure": "2013-03-31T23:40:00",
     "distance": 1576},
    {"carrier": "AA", "flight": 1, "origin": "EWR", "dest": "LAX", "scheduled_departure": "2013-11-03T01:30:00-05:00",
     "distance": 2454.5, "tailnum": "N123"},
    {"carrier": "9E", "flight": 3, "origin": "LGA", "dest": "ORD", "scheduled_departure": "2013-06-01T03:59:59Z",
     "distance": 733},
    {"carrier": "UA", "flight": 9999, "origin": "EWR", "dest": "SFO",
     "scheduled_departure": "2013-03-10T03:30:00.250000+00:00", "distance": 2565},
]


def test_entity_columns_are_the_frame_the_service_built_before() -> None:
    requests = [FlightRequest(**r) for r in REQUESTS]
    columns = entity_columns(requests)
    # How the frame path derived the departure and the New York day (pandas, not zoneinfo).
    departures = pd.to_datetime([r.scheduled_departure for r in requests], utc=True)
    days = departures.tz_convert(LOCAL_TZ).strftime("%Y-%m-%d")
    assert [f.split(":")[0] for f in columns["flight_id"]] == list(days)
    assert columns["flight_id"][0] == "2013-03-31:B6725:JFK" and columns["flight_id"][2] == "2013-05-31:9E3:LGA"
    assert [pd.Timestamp(d) for d in columns["scheduled_departure"]] == list(departures)
    assert all(d.utcoffset().total_seconds() == 0 for d in columns["scheduled_departure"])
    assert columns["tailnum"] == ["UNKNOWN", "N123", "UNKNOWN", "UNKNOWN"]
    frame = flight_entities(requests)
    assert str(frame["scheduled_departure"].dtype) == "datetime64[ns, UTC]"
    assert frame.drop(columns="scheduled_departure").to_dict("list") == {
        k: v for k, v in columns.items() if k != "scheduled_departure"}


def test_feature_json_is_valid_json_with_the_frame_paths_values() -> None:
    features = {"flight_id": ["f1", "f2"], "temp": [46.94, math.nan], "wind_gust": [None, math.inf],
                "origin_day_departures": [326, None], "carrier_mean_arr_delay_28d": [21.564179854307962, -0.0],
                "plane_type": ["Fixed wing ü", None], "dep_hour": [7, 23]}
    first = feature_json(features, 0)
    assert first == ('{"flight_id":"f1","temp":46.94,"wind_gust":null,"origin_day_departures":326,'
                     '"carrier_mean_arr_delay_28d":21.564179854307962,"plane_type":"Fixed wing \\u00fc",'
                     '"dep_hour":7}')
    second = json.loads(feature_json(features, 1))
    assert second["temp"] is None and second["wind_gust"] is None and second["origin_day_departures"] is None
    for row in (0, 1):  # what the frame path logged (pandas keeps 10 decimals; here every digit is kept)
        frame = pd.DataFrame({k: [v[row]] for k, v in features.items()})
        before, now = json.loads(frame.iloc[0].to_json()), json.loads(feature_json(features, row))
        assert list(before) == list(now)
        for name in before:
            assert before[name] == pytest.approx(now[name], rel=1e-9, abs=1e-10) if isinstance(now[name], float) \
                else before[name] == now[name]


def _log_rows(n: int) -> list[dict[str, Any]]:
    """Prediction log records as ``Predictor.log_records`` makes them, over two flight dates."""
    from datetime import UTC, datetime

    return [{"request_id": f"r{i}", "served_at": datetime(2026, 11, 24, 10, 0, i % 60, 1234, tzinfo=UTC),
             "flight_date": "2013-03-30" if i % 3 else "2013-03-31", "carrier": "B6", "flight": 700 + i,
             "origin": "JFK", "dest": "BQN", "scheduled_departure": "2013-03-30T05:40:00-04:00", "distance": 1576.0,
             "tailnum": None if i % 3 == 0 else f"N{i}", "flight_id": f"2013-03-30:B6{700 + i}:JFK",
             "probability": i / n, "model_version": "3", "features": '{"temp":1.5}'} for i in range(n)]


def test_prediction_log_objects_read_back_as_the_pandas_written_ones(lake: Lake) -> None:
    from pipelines.serving.prediction_log import PredictionLog

    rows = _log_rows(30)
    PredictionLog(lake, batch_rows=30).add(rows)
    keys = sorted(lake.list_keys("predictions/"))
    assert [k.split("/")[2] for k in keys] == ["date=2013-03-30", "date=2013-03-31"]
    expected = pd.DataFrame(rows)
    for key, (_, part) in zip(keys, expected.groupby("flight_date", sort=True), strict=True):
        written = lake.read_parquet(key)
        # (On 2013-03-31 every plane is unknown: pandas wrote that column as Arrow's null type, now it is text.)
        pd.testing.assert_frame_equal(written, part.drop(columns="flight_date").reset_index(drop=True))
        assert str(written["served_at"].dtype) == "datetime64[ns, UTC]"


def test_background_log_writes_due_batches_in_its_thread_and_flush_waits_for_them(lake: Lake) -> None:
    from pipelines.serving.prediction_log import PredictionLog

    log = PredictionLog(lake, batch_rows=10, max_age_s=3600, background=True)
    rows = _log_rows(25)
    log.add(rows[:12])  # due: handed to the writer thread
    log.add(rows[12:])  # due again
    log.add(_log_rows(1))  # buffered
    keys = log.flush()
    assert len(keys) == 1  # only what was buffered is written by flush itself
    written = pd.concat([lake.read_parquet(k) for k in lake.list_keys("predictions/")])
    assert len(written) == 26 and sorted(written["request_id"]) == sorted([r["request_id"] for r in rows] + ["r0"])
    assert log.flush() == []


def test_background_log_writes_an_old_batch_without_waiting_for_the_next_request(lake: Lake) -> None:
    """The last predictions before a quiet spell reach the lake within ``max_age_s``: replays and monitoring wait
    for them."""
    import time

    from pipelines.serving.prediction_log import PredictionLog

    log = PredictionLog(lake, batch_rows=1000, max_age_s=0.5, background=True)
    log.add(_log_rows(3))
    # The rows span two flight dates, so the writer puts two objects one after the other: wait for both (polling
    # only for the first raced the second on a busy CI machine).
    deadline = time.monotonic() + 30
    while len(lake.list_keys("predictions/")) < 2 and time.monotonic() < deadline:
        time.sleep(0.1)
    written = pd.concat([lake.read_parquet(k) for k in lake.list_keys("predictions/")])
    assert len(written) == 3 and log.flush() == []
