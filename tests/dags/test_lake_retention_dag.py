"""lake_retention: scheduled daily after the New York day, one run at a time, no catchup, a dry_run param off on
schedule; its task prunes for the run's day and refuses a day the feed does not hold (the UI form's default
logical date, now, would make all of 2013 old).

Only this DAG file is parsed (as the dag-processor parses a bundle); the house rules every DAG follows are checked
for it by test_dag_integrity.py. The task's body runs in this process with a task context of our own.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from pipelines.core.lake import LocalLake
from pipelines.core.settings import PROJECT_ROOT
from tests.helpers.dag_files import parsed_dag

DAGS_DIR = PROJECT_ROOT / "dags"
NEW_YORK = ZoneInfo("America/New_York")
OLD_LOG = "predictions/flight_delay/date=2012-01-01/part-0.parquet"
KEPT = "predictions/flight_delay/date=2013-06-01/part-0.parquet"


@pytest.fixture(scope="module")
def retention_dag(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """The DAG, parsed from its file with the embedded Airflow environment on a throwaway home."""
    with parsed_dag(tmp_path_factory.mktemp("lake_retention") / "home", "lake_retention") as dag:
        yield dag


def test_runs_daily_after_the_new_york_day_without_catchup(retention_dag: Any) -> None:
    from airflow.serialization.serialized_objects import DagSerialization

    assert retention_dag.catchup is False, "unpausing must not start a run for every day since 2013"
    assert retention_dag.max_active_runs == 1
    assert retention_dag.start_date == datetime(2013, 1, 1, tzinfo=NEW_YORK) and retention_dag.end_date is None
    serialized = DagSerialization.from_dict(DagSerialization.to_dict(retention_dag))
    infos = list(serialized.iter_dagrun_infos_between(datetime(2013, 6, 1, 4, tzinfo=UTC),
                                                      datetime(2013, 6, 2, 4, tzinfo=UTC)))
    assert [(i.data_interval.start, i.run_after) for i in infos] == [
        (datetime(2013, 6, 1, tzinfo=NEW_YORK), datetime(2013, 6, 2, tzinfo=NEW_YORK)),
        (datetime(2013, 6, 2, tzinfo=NEW_YORK), datetime(2013, 6, 3, tzinfo=NEW_YORK))]


def test_one_task_with_a_dry_run_param_off_by_default(retention_dag: Any) -> None:
    assert retention_dag.task_ids == ["prune_lake"]
    assert timedelta(0) < retention_dag.get_task("prune_lake").execution_timeout <= timedelta(hours=1)
    dry_run = retention_dag.params.get_param("dry_run")
    assert dry_run.value is False and dry_run.description
    day = retention_dag.params.get_param("day")
    assert day.value is None and day.description and day.resolve("2013-06-30") == "2013-06-30"
    assert set(retention_dag.tags) >= {"retention"}


@pytest.fixture
def filled(home: Path) -> LocalLake:
    lake = LocalLake(home / "lake")
    for key in (OLD_LOG, KEPT):
        lake.write_bytes(key, b"x")
    return lake


def _run_task(dag: Any, run_type: str, logical_date: datetime, **params: Any) -> Any:
    from airflow.sdk.api.datamodels._generated import DagRunType
    from airflow.sdk.execution_time.context import set_current_context

    context = {"params": {"day": None, "dry_run": False} | params, "logical_date": logical_date, "run_id": "r",
               "dag_run": SimpleNamespace(run_type=DagRunType(run_type), run_after=logical_date)}
    with set_current_context(context):  # type: ignore[arg-type]
        return dag.get_task("prune_lake").python_callable()


def test_a_scheduled_run_prunes_for_its_new_york_day(retention_dag: Any, filled: LocalLake) -> None:
    result = _run_task(retention_dag, "scheduled", datetime(2013, 6, 30, tzinfo=NEW_YORK))

    assert result["day"] == "2013-06-30" and result["dry_run"] is False
    assert result["kinds"]["prediction_logs"]["objects"] == 1
    assert filled.list_keys("") == [KEPT]


def test_a_manual_dry_run_for_a_day_deletes_nothing(retention_dag: Any, filled: LocalLake) -> None:
    result = _run_task(retention_dag, "manual", datetime(2026, 12, 4, 20, tzinfo=UTC), day="2013-06-30",
                       dry_run=True)

    assert result["day"] == "2013-06-30" and result["dry_run"] is True
    assert result["kinds"]["prediction_logs"]["oldest"] == "2012-01-01"
    assert filled.list_keys("") == sorted([KEPT, OLD_LOG])


@pytest.mark.parametrize(("run_type", "outcome"), [
    ("manual", "AirflowFailException"), ("backfill", "AirflowFailException"), ("scheduled", "AirflowSkipException")])
def test_a_day_past_the_feed_is_refused_and_nothing_pruned(retention_dag: Any, filled: LocalLake, run_type: str,
                                                           outcome: str) -> None:
    with pytest.raises(Exception) as refused:
        _run_task(retention_dag, run_type, datetime(2026, 12, 4, 5, tzinfo=UTC))

    assert type(refused.value).__name__ == outcome
    assert "not 2026-12-04" in str(refused.value)
    assert filled.list_keys("") == sorted([KEPT, OLD_LOG])
    assert date(2013, 12, 31).isoformat() in str(refused.value)
