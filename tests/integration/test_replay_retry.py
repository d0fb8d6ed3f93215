"""A replay whose service goes away mid-day, retried: every scheduled flight of the day predicted and logged once.

The service is really stopped (gracefully: it writes what it buffered) after a few minutes of the day have been
sent; the replay's requests then find no connection, are tried again, and the replay stops with the hour not done.
Only the moment of the stop is arranged (a wrapper around the replay's sender); the failure is the real one. The
service is started again and the replay retried, as Airflow retries the task: it sends only what the prediction log
lacks, and the day is finished only when the log holds every flight."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import date
from typing import Any

import pytest

from pipelines.core.settings import Settings
from tests.helpers.homes import copy_champion_home, ingest_days

pytestmark = pytest.mark.integration

DAY = date(2013, 3, 2)
STOP_AFTER_BATCHES = 40  # minutes of prediction time sent before the service is stopped


@pytest.fixture(scope="module")
def retried(champion_settings: Settings, real_days: list, tmp_path_factory: pytest.TempPathFactory,
            free_port: Callable[..., int]) -> Iterator[dict[str, Any]]:
    from pipelines.core.lake import open_lake
    from pipelines.deploy.service import start_service, stop_service
    from pipelines.features.steps import build_features
    from pipelines.features.store import materialize_features
    from pipelines.features.tables import flight_id
    from pipelines.serving.prediction_log import read_prediction_log
    from pipelines.simulation import replay

    settings = copy_champion_home(champion_settings, tmp_path_factory.mktemp("replay_retry") / "home",
                                  prediction_log_max_age_s=2.0)
    ingest_days([DAY], settings)
    build_features([*real_days[-2:], DAY], settings)
    materialize_features(real_days[-2:], settings)
    port = free_port()
    start_service(settings, port=port)
    url = f"http://127.0.0.1:{port}"
    real_send = replay._Client.send
    batches = 0

    def send_then_stop(self: Any, bodies: list[dict[str, Any]]) -> tuple[int, int]:
        nonlocal batches
        batches += 1
        if batches == STOP_AFTER_BATCHES:
            stop_service(settings)
        return real_send(self, bodies)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(replay._Client, "send", send_then_stop)
        with pytest.raises(replay.ReplayError) as first:
            replay.replay_traffic(DAY, settings, url=url)
    lake = open_lake(settings)
    after_first = read_prediction_log(lake, DAY)
    start_service(settings, port=port)
    try:
        result = replay.replay_traffic(DAY, settings, url=url)
    finally:
        stop_service(settings)
    flights = lake.read_parquet(f"validated/flights/date={DAY}/data.parquet")
    yield {"settings": settings, "first_error": str(first.value), "after_first": after_first, "result": result,
           "logged": read_prediction_log(lake, DAY), "scheduled": set(flight_id(flights)),
           "state": replay._state(lake)}


def test_the_first_try_stopped_without_finishing_the_day(retried: dict[str, Any]) -> None:
    assert "failed" in retried["first_error"] and "A retry resumes the day" in retried["first_error"]
    assert 0 < len(retried["after_first"]) < len(retried["scheduled"])


def test_the_retry_predicted_every_flight_once(retried: dict[str, Any]) -> None:
    logged = retried["logged"]
    assert set(logged["flight_id"]) == retried["scheduled"]
    assert not logged["flight_id"].duplicated().any()
    result = retried["result"]
    assert result["finished"] and result["duplicated"] == 0 and result["logged"] == len(retried["scheduled"])
    # The retry sent only what the first try had not had logged.
    assert result["sent"] == len(retried["scheduled"]) - len(retried["after_first"])
    assert retried["state"]["days"][DAY.isoformat()]["finished"]


def test_a_finished_day_is_not_sent_again(retried: dict[str, Any]) -> None:
    from pipelines.simulation.replay import replay_traffic

    again = replay_traffic(DAY, retried["settings"], url="http://127.0.0.1:9")  # nothing listens: nothing is sent
    assert again["already"] and again["logged"] == len(retried["scheduled"])
