"""flight_delay_training's first task, `wait_for_window`: a scheduled (weekly) run waits while another training
runs, then is skipped when the registry holds a version trained on a window ending within
``skip_if_trained_within_days`` of its own; manual and requested runs always train.

The DAG is parsed from its file; the sensor's poke runs in this process against a real MLflow registry on the test's
home, with a task context of our own (the run type, and a task instance whose count of running runs the test sets:
no scheduler runs here).
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from types import SimpleNamespace
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from pipelines.core.names import MODEL_NAME
from pipelines.core.settings import PROJECT_ROOT, get_settings
from pipelines.training.tracking import use_tracking
from tests.helpers.dag_files import parsed_dag

DAGS_DIR = PROJECT_ROOT / "dags"
NEW_YORK = ZoneInfo("America/New_York")
MONDAY = datetime(2013, 7, 15, 6, tzinfo=NEW_YORK)  # its window ends Sunday July 14


@pytest.fixture(scope="module")
def sensor(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    with parsed_dag(tmp_path_factory.mktemp("training_dag") / "home", "flight_delay_training") as dag:
        yield SimpleNamespace(task=dag.get_task("wait_for_window"), params=dag.params)


def _register(window: str) -> str:
    """A registered version whose lineage says it was trained on ``window`` (``start..end``)."""
    from mlflow import MlflowClient

    use_tracking(get_settings())
    client = MlflowClient()
    if not client.search_registered_models(f"name = '{MODEL_NAME}'"):
        client.create_registered_model(MODEL_NAME)
    return str(client.create_model_version(MODEL_NAME, source=str(get_settings().pipeline_home / "stand-in"), tags={
        "lineage.window": window}).version)


def _poke(sensor: Any, run_type: str, running: int = 1, **params: Any) -> bool:
    from airflow.sdk.api.datamodels._generated import DagRunType

    counted: list[dict[str, Any]] = []

    def get_dr_count(**query: Any) -> int:
        counted.append(query)
        return running

    defaults = {name: sensor.params[name] for name in sensor.params}
    context = {"params": defaults | {"after_monitoring": False} | params, "logical_date": MONDAY,
               "dag_run": SimpleNamespace(run_type=DagRunType(run_type), run_after=MONDAY),
               "ti": SimpleNamespace(dag_id="flight_delay_training", get_dr_count=get_dr_count)}
    done = bool(sensor.task.poke(context))
    assert all(query == {"dag_id": "flight_delay_training", "states": ["running"]} for query in counted)
    return done


def test_the_default_skips_a_weekly_run_after_a_retrain_this_week(sensor: Any, home: Path) -> None:
    from airflow.sdk.exceptions import AirflowSkipException

    assert sensor.params["skip_if_trained_within_days"] == 7
    _register("2012-07-08..2013-07-07")  # last week's weekly retrain: not fresh enough
    assert _poke(sensor, "scheduled") is True
    version = _register("2012-07-10..2013-07-09")  # a drift request on Tuesday's report
    with pytest.raises(AirflowSkipException, match=f"version {version} was trained on data through 2013-07-09"):
        _poke(sensor, "backfill")
    assert _poke(sensor, "backfill", skip_if_trained_within_days=5) is True


def test_manual_and_requested_runs_always_train(sensor: Any, home: Path) -> None:
    _register("2012-07-15..2013-07-14")
    assert _poke(sensor, "manual") is True
    assert _poke(sensor, "asset_triggered", running=2) is True


def test_a_weekly_run_waits_while_another_training_runs(sensor: Any, home: Path) -> None:
    assert _poke(sensor, "scheduled", running=2) is False
    assert _poke(sensor, "scheduled", running=1) is True  # nothing registered: it trains
