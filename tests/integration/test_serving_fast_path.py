"""The serving path on real flights: the answers of ``Predictor.predict`` (columns from request to model) are the
ones the frame path gave (entity frame, ``online_features`` frame, ``predict_proba`` on it), and the bare BentoML
service of the bench serves the same probabilities from the same features."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd
import pytest
import requests

from pipelines.core.settings import Settings
from pipelines.features.tables import PREDICTION_LEAD

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def flights(champion_settings: Settings, real_days: list) -> list[dict[str, Any]]:
    """Request bodies of real flights on the window's last days, some without a plane."""
    from pipelines.core.lake import open_lake, partition_key
    from pipelines.serving.contract import requests_from_flights

    lake = open_lake(champion_settings)
    frame = pd.concat([lake.read_parquet(partition_key("validated", "flights", day, "data.parquet"))
                       for day in real_days[-3:]], ignore_index=True)
    return requests_from_flights(frame.sample(300, random_state=3))


def _frame_path(predictor: Any, requests_: list[Any]) -> tuple[list[dict[str, Any]], np.ndarray, pd.DataFrame]:
    """What ``Predictor.predict`` computed before it worked on columns."""
    from pipelines.features.store import online_features
    from pipelines.serving.contract import flight_entities

    entities = flight_entities(requests_)
    features = online_features(entities, store=predictor.store)
    probabilities = predictor.champion.model.predict_proba(features)
    answers = [{"flight_id": entities["flight_id"].iloc[i], "probability": round(float(p), 6),
                "disrupted": float(p) >= predictor.threshold, "threshold": predictor.threshold,
                "model_version": predictor.champion.version, "features_as_of": predictor.features_as_of(),
                "prediction_time": (entities["scheduled_departure"].iloc[i] - PREDICTION_LEAD).isoformat()}
               for i, p in enumerate(probabilities)]
    return answers, probabilities, features


def test_answers_are_the_frame_paths_on_real_flights(champion_settings: Settings,
                                                     flights: list[dict[str, Any]]) -> None:
    from pipelines.features.store import online_feature_columns
    from pipelines.serving.contract import FlightRequest, entity_columns
    from pipelines.serving.prediction_log import feature_json
    from pipelines.serving.predictor import INLINE_MAX_FLIGHTS, Predictor

    predictor = Predictor(champion_settings)
    batch = [FlightRequest(**f) for f in flights]
    expected, probabilities, features = _frame_path(predictor, batch)
    # With the store answering and the freshness read, a few flights are answered on the service's event loop.
    assert predictor.can_answer_inline(1) and predictor.can_answer_inline(INLINE_MAX_FLIGHTS)
    assert not predictor.can_answer_inline(INLINE_MAX_FLIGHTS + 1)
    # The same answers; the probabilities to float32 precision: the service scores in numpy (NumpyForward), the
    # frame path in torch, and a batch of one runs other float kernels than a batch of 300, so a probability may
    # land on the other side of its 6th decimal.
    for answers in (predictor.predict(batch), [predictor.predict([r])[0] for r in batch[:100]]):
        assert [{**a, "probability": None} for a in answers] == [{**a, "probability": None}
                                                                 for a in expected[:len(answers)]]
        np.testing.assert_allclose([a["probability"] for a in answers],
                                   [a["probability"] for a in expected[:len(answers)]], rtol=0, atol=2e-6)
    columns = online_feature_columns(entity_columns(batch), store=predictor.store)
    np.testing.assert_allclose(predictor.champion.model.predict_proba_columns(columns), probabilities, rtol=0,
                               atol=1e-6)
    assert len({a["probability"] for a in expected}) > 50  # real, varied answers
    for i in range(0, len(batch), 30):  # the logged features: the same names and values (pandas kept 10 decimals)
        before, now = json.loads(features.iloc[[i]].iloc[0].to_json()), json.loads(feature_json(columns, i))
        assert list(before) == list(now)
        assert all(now[k] == pytest.approx(v, rel=1e-9, abs=1e-10) if isinstance(v, float) else now[k] == v
                   for k, v in before.items())
    predictor.log.flush()


def test_the_bare_service_serves_the_same_probabilities(champion_settings: Settings, flights: list[dict[str, Any]],
                                                        free_port: Callable[[], int]) -> None:
    from benchmarks.serving import BARE_SERVICE
    from pipelines.deploy.service import start_service, stop_service
    from pipelines.features.store import online_feature_columns
    from pipelines.serving.contract import FlightRequest, entity_columns
    from pipelines.serving.prediction_log import feature_json
    from pipelines.serving.predictor import Predictor

    predictor = Predictor(champion_settings)
    batch = [FlightRequest(**f) for f in flights[:20]]
    columns = online_feature_columns(entity_columns(batch), store=predictor.store)
    rows = [json.loads(feature_json(columns, i)) for i in range(len(batch))]
    expected = predictor.champion.model.predict_proba_columns(columns).tolist()
    try:
        bare = start_service(champion_settings, port=free_port(), name="bare", target=BARE_SERVICE)
        assert requests.post(f"{bare['url']}/predict", json={"rows": rows}, timeout=30).json() == expected
        # A batch of one runs other float32 kernels than a batch of 20: equal to float32's precision.
        single = requests.post(f"{bare['url']}/predict", json={"rows": rows[:1]}, timeout=30).json()
        assert single == pytest.approx(expected[:1], rel=0, abs=1e-6)
        assert requests.post(f"{bare['url']}/predict", json={"rows": []}, timeout=30).status_code == 400
    finally:
        stop_service(champion_settings, name="bare")
