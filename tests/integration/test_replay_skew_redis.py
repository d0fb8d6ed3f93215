"""Online/offline skew on the production profile's Redis online store: a real day replayed through the live service,
operations events pushed as they happen, after the day (and the next) had already been materialized into Redis, as
``make up`` does when it ingests a day ahead of its replay. Redis keeps the newest row per key, so without the
replay's rewind the evening's weather and the next morning's statistics would be served to the day's first flights.
Every vector the service used must equal the point-in-time training-set row of the same flight."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from datetime import date, timedelta
from typing import Any

import pandas as pd
import pytest

from pipelines.core.settings import Settings
from tests.helpers.homes import copy_champion_home, ingest_days
from tests.helpers.redis_server import redis_server

pytestmark = pytest.mark.integration

DAY = date(2013, 3, 1)  # the first day after the session's real window (January and February)


@pytest.fixture(scope="module")
def replayed(champion_settings: Settings, real_days: list, tmp_path_factory: pytest.TempPathFactory,
             free_port: Callable[..., int]) -> Iterator[dict[str, Any]]:
    from pipelines.deploy.service import start_service, stop_service
    from pipelines.features.steps import build_features
    from pipelines.features.store import flight_entities, materialize_features, online_features
    from pipelines.simulation.replay import replay_traffic

    home = tmp_path_factory.mktemp("replay_redis") / "home"
    with redis_server(tmp_path_factory.mktemp("redis")) as port:
        settings = copy_champion_home(champion_settings, home, feast_profile="production",
                                      feast_registry_url=f"sqlite:///{home}/feast/registry.db",
                                      feast_redis=f"127.0.0.1:{port},db=0")
        ahead = [DAY, DAY + timedelta(days=1)]
        ingest_days(ahead, settings)
        build_features([*real_days[-2:], *ahead], settings)
        materialize_features([*real_days[-2:], *ahead], settings)  # the day and the next online before the replay
        flights = pd.read_parquet(home / "lake" / "validated" / "flights" / f"date={DAY}" / "data.parquet")
        first = flight_entities(flights).sort_values("event_timestamp").head(20)
        early = online_features(first, settings)  # what a request would get now: the day's end
        service = start_service(settings, port=free_port())
        try:
            result = replay_traffic(DAY, settings, url=service["url"])
        finally:
            stop_service(settings)
        yield {"settings": settings, "result": result, "early": early, "first": first}


def test_the_replay_served_every_flight(replayed: dict[str, Any]) -> None:
    result = replayed["result"]
    assert result["finished"] and result["failed"] == 0 and result["logged"] == result["sent"] > 500
    assert result["operations"]["pushes"] > 300 and result["operations"]["offline_rows"] > 5000


def test_served_vectors_are_the_training_rows_on_redis(replayed: dict[str, Any]) -> None:
    from pipelines.core.lake import open_lake
    from pipelines.features.store import training_set
    from pipelines.serving.prediction_log import read_prediction_log
    from pipelines.training.columns import OPERATIONS_COLUMNS

    settings = replayed["settings"]
    logged = read_prediction_log(open_lake(settings), DAY)
    served = pd.DataFrame([json.loads(text) for text in logged["features"]]).set_index("flight_id").sort_index()
    expected = training_set([DAY], settings).set_index("flight_id").sort_index()
    assert list(served.index) == list(expected.index)
    numeric = [c for c in served.columns if c in expected.columns and pd.api.types.is_numeric_dtype(expected[c])]
    assert set(OPERATIONS_COLUMNS) <= set(numeric) and len(numeric) > 30
    for column in numeric:
        got, want = served[column].astype("float64"), expected[column].astype("float64")
        same = (got - want).abs().le(1e-9) | (got.isna() & want.isna())
        assert same.all(), f"{column}: {int((~same).sum())} flights differ, e.g. {got[~same].head(3).to_dict()} " \
                           f"vs {want[~same].head(3).to_dict()}"
    # The control: before the replay, Redis held values from after the first flights' prediction times.
    early = replayed["early"].set_index("flight_id")
    first = expected.loc[replayed["first"]["flight_id"]]
    stale = [c for c in ("carrier_flights_7d", "temp", "route_flights_28d")
             if not ((early[c].astype("float64") - first[c].astype("float64")).abs().le(1e-9)
                     | (early[c].isna() & first[c].isna())).all()]
    assert stale, "the online store held nothing from later than the first flights: the test proves nothing"
