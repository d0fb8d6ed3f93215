"""The BentoML service for real: ``bentoml serve`` on a free local port, over the session's real 2013 data with a
model trained, registered and promoted by the pipeline's own steps and the window materialized into the SQLite
online store. Requests go over HTTP; the prediction log is checked in the lake after a graceful shutdown."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import requests

from pipelines.core.settings import Settings
from pipelines.deploy.service import start_service, stop_service
from pipelines.serving.contract import requests_from_flights
from pipelines.serving.prediction_log import OUTCOMES

pytestmark = pytest.mark.integration

@pytest.fixture(scope="module")
def served(champion_settings: Settings, free_port: Callable[[], int]) -> Iterator[dict[str, Any]]:
    """The shared champion's service running on a free port. The prediction log objects already in the shared
    home (other modules' traffic) are noted, so this module counts only its own."""
    settings = champion_settings
    before = set((settings.pipeline_home / "lake" / "predictions").rglob("*.parquet"))
    service = start_service(settings, port=free_port())
    state: dict[str, Any] = {"url": service["url"], "settings": settings, "served": 0, "log": Path(service["log"]),
                             "logged_before": before}
    yield state
    stop_service(settings)


def _flights(settings: Settings, day: str, n: int) -> list[dict[str, Any]]:
    """Real scheduled flights of ``day`` as requests (the lake's validated rows, as a caller would send them)."""
    frame = pd.read_parquet(settings.pipeline_home / "lake" / "validated" / "flights" / f"date={day}" / "data.parquet")
    return requests_from_flights(frame.head(n))


def _predict(served: dict[str, Any], flights: list[dict[str, Any]]) -> requests.Response:
    response = requests.post(f"{served['url']}/predict", json={"flights": flights}, timeout=60)
    if response.status_code == 200:
        served["served"] += len(flights)
    return response


def test_one_real_flight_gets_a_probability_decision_and_version(served: dict[str, Any]) -> None:
    (flight,) = _flights(served["settings"], "2013-02-27", 1)
    response = _predict(served, [flight])
    assert response.status_code == 200, response.text
    (answer,) = response.json()
    assert 0 < answer["probability"] < 1 and answer["disrupted"] == (answer["probability"] >= answer["threshold"])
    assert answer["model_version"] == "1" and answer["features_as_of"].startswith("2013-03-01")
    assert answer["flight_id"] == f"2013-02-27:{flight['carrier']}{flight['flight']}:{flight['origin']}"


def test_many_flights_in_one_request(served: dict[str, Any]) -> None:
    flights = _flights(served["settings"], "2013-02-28", 200)
    response = _predict(served, flights)
    assert response.status_code == 200, response.text
    answers = response.json()
    assert len(answers) == 200 and len({a["flight_id"] for a in answers}) == 200


def test_unknown_carrier_and_plane_are_served(served: dict[str, Any]) -> None:
    (flight,) = _flights(served["settings"], "2013-02-27", 1)
    response = _predict(served, [flight | {"carrier": "ZZ", "tailnum": "N00000"}])
    assert response.status_code == 200, response.text


@pytest.mark.parametrize("change, field", [
    ({"dest": "XXX"}, "dest"), ({"dest": "lax"}, "dest"), ({"flight": "seven"}, "flight"),
    ({"scheduled_departure": "2013-02-30T25:00:00"}, "scheduled_departure"), ({"origin": "BOS"}, "origin"),
    ({"distance": -5}, "distance"), ({"surprise": 1}, "surprise"),
    # found by the fuzz (test_service_fuzz.py), each a 500 before: a New York time the clocks skip, year 1
    ({"scheduled_departure": "2013-03-10T02:30:00"}, "scheduled_departure"),
    ({"scheduled_departure": "0001-01-01T00:00:00"}, "scheduled_departure"),
    ({"scheduled_departure": "0001-01-01T00:00:00+01:00"}, "scheduled_departure"), ({"flight": 10**30}, "flight"),
    ({"distance": 1e308}, "distance"), ({"dest": "ÅÄÖ"}, "dest"), ({"tailnum": ["N1", None]}, "tailnum"),
])
def test_bad_input_is_a_4xx_naming_the_field(served: dict[str, Any], change: dict[str, Any], field: str) -> None:
    (flight,) = _flights(served["settings"], "2013-02-27", 1)
    response = _predict(served, [flight | change])
    assert 400 <= response.status_code < 500, response.text
    assert field in response.text


@pytest.mark.parametrize("body, content_type", [
    (b"[]", "application/json"), (b'"flights"', "application/json"), (b"null", "application/json"),
    (b'{"flights": [null]}', "application/json"), (b'{"flights": {}}', "application/json"),
    (b'{"flights": [', "application/json"), (b"\xff\xfe", "application/json"),
    # found by the fuzz: BentoML answered a multipart body without its boundary (or not multipart) with a 500
    (b"{}", "multipart/form-data"), (b"garbage", "multipart/form-data; boundary=x"),
])
def test_bodies_that_are_not_flights_are_4xx(served: dict[str, Any], body: bytes, content_type: str) -> None:
    for route in ("/predict", "/model"):
        response = requests.post(f"{served['url']}{route}", data=body, headers={"content-type": content_type},
                                 timeout=10)
        assert 400 <= response.status_code < 500 or (route == "/model" and response.status_code == 200), \
            (route, response.status_code, response.text)


def test_missing_field_and_empty_request_are_4xx(served: dict[str, Any]) -> None:
    (flight,) = _flights(served["settings"], "2013-02-27", 1)
    flight.pop("distance")
    response = _predict(served, [flight])
    assert 400 <= response.status_code < 500 and "distance" in response.text
    assert 400 <= _predict(served, []).status_code < 500


def test_requests_are_bounded_a_413_over_the_body_limit_and_a_400_over_the_batch_limit(
        served: dict[str, Any]) -> None:
    from services.middleware import MAX_BODY_BYTES
    from services.service_config import MAX_FLIGHTS

    (flight,) = _flights(served["settings"], "2013-02-27", 1)
    big = json.dumps({"flights": [flight] * (MAX_BODY_BYTES // len(json.dumps(flight)) + 1)}).encode()
    headers = {"content-type": "application/json"}
    said = requests.post(f"{served['url']}/predict", data=big, headers=headers, timeout=30)
    streamed = requests.post(f"{served['url']}/predict", data=iter([big[:1000], big[1000:]]), headers=headers,
                             timeout=30)  # chunked: no length said
    assert [said.status_code, streamed.status_code] == [413, 413] and "bytes" in said.json()["error"]
    over = _predict(served, [flight] * (MAX_FLIGHTS + 1))  # within the body limit, over the batch limit
    assert over.status_code == 400 and "flights" in over.text, over.text


def test_model_endpoint_and_openapi(served: dict[str, Any], champion_run_key: str) -> None:
    info = requests.post(f"{served['url']}/model", json={}, timeout=10).json()
    assert info["version"] == "1" and "champion" in info["aliases"]
    assert info["lineage"]["pipeline.run_key"] == champion_run_key and info["gate"]["gate.decision"] == "promote"
    spec = requests.get(f"{served['url']}/docs.json", timeout=10).json()
    assert {"/predict", "/model", "/healthz", "/readyz"} <= set(spec["paths"])
    assert requests.get(f"{served['url']}/metrics", timeout=10).status_code == 200


def test_only_the_deployers_token_keeps_a_request_out_of_the_prediction_log(served: dict[str, Any]) -> None:
    """The smoke test's header with the home's token: answered, not logged. The same header with any other value
    (a client trying to hide its traffic) is logged like any request: the shutdown test below counts the log's rows
    against what this module sent (``served``)."""
    from pipelines.deploy.service import smoke_token
    from pipelines.serving.contract import SMOKE_TEST_HEADER

    flights = _flights(served["settings"], "2013-02-26", 2)
    for value, logged in (("1", True), ("x" * 43, True), (smoke_token(served["settings"]), False)):
        response = requests.post(f"{served['url']}/predict", json={"flights": flights}, timeout=60,
                                 headers={SMOKE_TEST_HEADER: value})
        assert response.status_code == 200, response.text
        served["served"] += len(flights) if logged else 0


def test_metrics_count_the_prediction_logs_rows_by_outcome(served: dict[str, Any]) -> None:
    """Every outcome is on /metrics from the start, so a dashboard sees lost = 0, not a missing series (the
    outcomes themselves: tests/unit/test_prediction_log_faults.py)."""
    _predict(served, _flights(served["settings"], "2013-02-26", 3))
    metrics = requests.get(f"{served['url']}/metrics", timeout=10).text
    counted = {m["outcome"]: float(m["value"]) for m in re.finditer(
        r'^flight_delay_prediction_log_rows_total\{outcome="(?P<outcome>\w+)"\} (?P<value>\S+)$', metrics, re.M)}
    assert set(counted) == set(OUTCOMES), metrics[-2000:]
    assert counted["lost"] == 0 and counted["spooled"] == 0


def test_predictions_are_logged_to_the_lake_on_shutdown(served: dict[str, Any]) -> None:
    assert stop_service(served["settings"])
    parts = sorted(set((served["settings"].pipeline_home / "lake" / "predictions").rglob("*.parquet"))
                   - served["logged_before"])
    assert parts, served["log"].read_text()[-3000:]
    logged = pd.concat([pd.read_parquet(p) for p in parts], ignore_index=True)
    assert len(logged) == served["served"]
    assert {"request_id", "served_at", "flight_id", "probability", "model_version", "features"} <= set(logged.columns)
    assert json.loads(logged["features"].iloc[0])["origin"] in ("EWR", "JFK", "LGA")


def test_unreachable_online_store_is_a_clear_error_not_a_hang(served: dict[str, Any], free_port: Callable[[], int],
                                                               tmp_path_factory: pytest.TempPathFactory) -> None:
    """The production profile pointed at a Redis port where nothing listens: the answer is FeaturesUnavailable
    (the service's 503), soon. What bounds the wait is configured, and asserted as configuration: connect and read
    timeouts of 1 s, no retries in the client (redis-py's default is 3 with up to 10 s of backoff, which once took
    11.3 s on a busy machine) and one more try by the predictor; the wall-clock bound only guards against a hang."""
    from pipelines.features.store import apply_definitions, open_store
    from pipelines.registry.model_files import load_registered
    from pipelines.serving.contract import FeaturesUnavailable, FlightRequest
    from pipelines.serving.predictor import ONLINE_READ_ATTEMPTS, Predictor

    settings = served["settings"]
    broken = settings.model_copy(update={
        "feast_profile": "production", "feast_redis": f"127.0.0.1:{free_port()}",
        "feast_registry_url": f"sqlite:///{tmp_path_factory.mktemp('registry') / 'registry.db'}"})
    apply_definitions(open_store(broken))
    predictor = Predictor(broken, champion=load_registered(settings))
    (flight,) = _flights(settings, "2013-02-27", 1)
    started = time.monotonic()
    assert predictor.can_answer_inline(1)  # no read has failed yet
    with pytest.raises(FeaturesUnavailable, match="online feature store unavailable after 2 tries"):
        predictor.predict([FlightRequest(**flight)])
    assert time.monotonic() - started < 60
    # Until a read succeeds, the service answers on a thread: its event loop keeps serving probes meanwhile.
    assert predictor.store_failing and not predictor.can_answer_inline(1)
    client = predictor.store._get_provider().online_store._get_client(predictor.store.config.online_store)
    connection = client.connection_pool.connection_kwargs
    assert (connection["socket_connect_timeout"], connection["socket_timeout"]) == (1, 1)
    assert client.connection_pool.make_connection().retry.get_retries() == 0
    assert ONLINE_READ_ATTEMPTS == 2
