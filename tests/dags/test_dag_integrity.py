"""Every DAG file parses as the dag-processor parses it and follows the house rules; flights_ingest is wired as
its documentation says.

Airflow is imported inside the fixtures, after AIRFLOW_HOME points at a throwaway folder: importing Airflow
creates folders in its home, and nothing here may touch ``~/airflow``.
"""

from __future__ import annotations

import fnmatch
import os
import warnings
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from pipelines.core.settings import PROJECT_ROOT, Settings
from pipelines.ops.airflow_config import airflow_env

DAGS_DIR = PROJECT_ROOT / "dags"


def _ignored(path: Path) -> bool:
    """Whether dags/.airflowignore (glob syntax, one pattern a line) keeps the dag-processor off ``path``."""
    ignore = DAGS_DIR / ".airflowignore"
    lines = ignore.read_text().splitlines() if ignore.exists() else []
    patterns = [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]
    return any(fnmatch.fnmatch(path.name, pattern) for pattern in patterns)


# Helpers the DAG files import are listed in .airflowignore; every other .py in dags/ is a DAG file named after
# its DAG.
DAG_FILES = sorted(p for p in DAGS_DIR.glob("*.py") if not _ignored(p))
HELPER_FILES = sorted(p for p in DAGS_DIR.glob("*.py") if _ignored(p))

NEW_YORK = ZoneInfo("America/New_York")
FLIGHTS_INGEST_CHAIN = ["land_feed", "ingest_feed", "validate_partitions", "promote_partitions", "check_quarantine"]


@pytest.fixture(scope="module")
def airflow_home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The embedded Airflow environment (pipelines.ops.airflow_config.airflow_env) on a throwaway home."""
    settings = Settings(pipeline_home=tmp_path_factory.mktemp("dag_integrity") / "home")
    env = airflow_env(settings)
    with pytest.MonkeyPatch.context() as patch:
        for name, value in env.items():
            if os.environ.get(name) != value:
                patch.setenv(name, value)
        yield Path(env["AIRFLOW_HOME"])


@pytest.fixture(scope="module")
def dagbag(airflow_home: Path) -> Any:
    """The whole DAG folder, parsed with every warning recorded (DeprecationWarning included), as the
    dag-processor parses a bundle: with the folder on sys.path, so DAG files can import their helpers."""
    from airflow.dag_processing.dagbag import BundleDagBag

    with warnings.catch_warnings():
        warnings.simplefilter("always")
        return BundleDagBag(dag_folder=str(DAGS_DIR), bundle_path=DAGS_DIR)


def _dag(dagbag: Any, path: Path) -> Any:
    assert path.stem in dagbag.dags, f"{path.name} defines no DAG with dag_id {path.stem!r}: {sorted(dagbag.dags)}"
    return dagbag.dags[path.stem]


@pytest.fixture(scope="module")
def flights_ingest(dagbag: Any) -> Any:
    return _dag(dagbag, DAGS_DIR / "flights_ingest.py")


def test_dag_folder_holds_dag_files() -> None:
    """Guard against the parametrized tests below passing on an empty list."""
    assert "flights_ingest.py" in {p.name for p in DAG_FILES}


def test_helpers_are_not_parsed_as_dag_files(dagbag: Any) -> None:
    """.airflowignore keeps the dag-processor off the helper modules; it parses every DAG file."""
    assert HELPER_FILES, "dags/_notifiers.py should be listed in dags/.airflowignore"
    parsed = {Path(path).name for path in dagbag.file_last_changed}
    assert parsed == {p.name for p in DAG_FILES}


@pytest.mark.parametrize("path", DAG_FILES, ids=lambda p: p.stem)
def test_every_task_emails_the_owners_when_it_fails_for_good(dagbag: Any, path: Path) -> None:
    """The owners' failure email is the on_failure_callback (after the last retry), never on_retry_callback."""
    from _notifiers import notify_owners_on_failure

    dag = _dag(dagbag, path)
    assert dag.default_args.get("on_failure_callback") is notify_owners_on_failure
    for task in dag.tasks:
        callbacks = task.on_failure_callback
        assert notify_owners_on_failure in (callbacks if isinstance(callbacks, list) else [callbacks]), task.task_id
        assert not task.on_retry_callback, task.task_id


def test_every_dag_file_imports_without_errors(dagbag: Any) -> None:
    """Import errors (cycles included: the DagBag reports them here, not as exceptions)."""
    assert dagbag.import_errors == {}


def test_every_dag_file_imports_without_warnings(dagbag: Any) -> None:
    assert dagbag.captured_warnings == {}


@pytest.mark.parametrize("path", DAG_FILES, ids=lambda p: p.stem)
def test_dag_file_defines_one_dag_named_after_the_file(dagbag: Any, path: Path) -> None:
    defined = sorted(dag.dag_id for dag in dagbag.dags.values() if Path(dag.fileloc).resolve() == path.resolve())
    assert defined == [path.stem]


@pytest.mark.parametrize("path", DAG_FILES, ids=lambda p: p.stem)
def test_dag_file_has_no_runtime_varying_values(airflow_home: Path, path: Path) -> None:
    """The dag-processor's static check: no datetime.now() and the like in DAG or task arguments."""
    from airflow.utils.dag_version_inflation_checker import check_dag_file_stability

    result = check_dag_file_stability(str(path))
    assert result.warnings == {}, result.format_warnings()


@pytest.mark.parametrize("path", DAG_FILES, ids=lambda p: p.stem)
def test_dag_has_tags_docs_owner_and_retries(dagbag: Any, path: Path) -> None:
    dag = _dag(dagbag, path)
    owner = dag.default_args.get("owner")

    assert dag.tags, "tags let people filter the UI"
    assert dag.doc_md and dag.doc_md.strip(), "doc_md is what the UI shows on the DAG page"
    assert owner and owner != "airflow", f"default_args needs a real owner, not {owner!r}"
    assert isinstance(dag.default_args.get("retries"), int), "default_args must set retries explicitly"
    assert {task.task_id: task.owner for task in dag.tasks} == {task.task_id: owner for task in dag.tasks}


@pytest.mark.parametrize("path", DAG_FILES, ids=lambda p: p.stem)
def test_dag_has_no_cycles(dagbag: Any, path: Path) -> None:
    _dag(dagbag, path).check_cycle()


@pytest.mark.parametrize("path", DAG_FILES, ids=lambda p: p.stem)
def test_dag_serializes_as_the_dag_processor_does(dagbag: Any, path: Path) -> None:
    """to_dict validates against Airflow's JSON schema; the round trip keeps the DAG and its tasks."""
    from airflow.serialization.serialized_objects import DagSerialization

    dag = _dag(dagbag, path)
    restored = DagSerialization.from_dict(DagSerialization.to_dict(dag))

    assert restored.dag_id == dag.dag_id
    assert sorted(restored.task_ids) == sorted(dag.task_ids)


def test_flights_ingest_runs_daily_over_2013_by_backfill_not_catchup(flights_ingest: Any) -> None:
    assert flights_ingest.catchup is False, "unpausing from the UI must not start a run for every day since 2013"
    assert flights_ingest.start_date == datetime(2013, 1, 1, tzinfo=NEW_YORK)
    # An end date makes Airflow mark a manual run dated after it successful without running a task (the UI form's
    # default logical date is now): the feed's own dates refuse such a run instead, saying why.
    assert flights_ingest.end_date is None


def test_flights_ingest_schedule_is_one_run_per_new_york_day_after_it_ends(flights_ingest: Any) -> None:
    """Read through the serialized timetable, the one the scheduler uses: each run's data interval is a New York
    day (23 and 25 hours across the clock changes), and it runs when the day has ended there."""
    from airflow.serialization.serialized_objects import DagSerialization

    serialized = DagSerialization.from_dict(DagSerialization.to_dict(flights_ingest))
    infos = list(serialized.iter_dagrun_infos_between(datetime(2013, 3, 9, 5, tzinfo=UTC),
                                                      datetime(2013, 3, 11, 4, tzinfo=UTC)))

    midnights = [datetime(2013, 3, d, tzinfo=NEW_YORK) for d in (9, 10, 11, 12)]
    assert [(info.data_interval.start, info.data_interval.end) for info in infos] == list(
        zip(midnights[:-1], midnights[1:], strict=True))
    assert [info.run_after for info in infos] == midnights[1:]
    spring = infos[1].data_interval
    assert (spring.end.timestamp() - spring.start.timestamp()) / 3600 == 23, "March 10, 2013: clocks went forward"


def test_flights_ingest_window_params_are_documented_dates(flights_ingest: Any) -> None:
    """start_date/end_date: described, empty by default (a scheduled run takes its logical date), dates only."""
    from airflow.sdk.exceptions import ParamValidationError

    for name in ("start_date", "end_date"):
        assert name in flights_ingest.params, f"missing param {name}"
        param = flights_ingest.params.get_param(name)
        assert param.description and param.description.strip()
        assert param.value is None
        assert param.resolve("2013-01-02") == "2013-01-02"
        with pytest.raises(ParamValidationError):
            param.resolve("2013-13-45")


def test_flights_ingest_tasks_form_one_chain_in_documented_order(flights_ingest: Any) -> None:
    assert sorted(flights_ingest.task_ids) == sorted(FLIGHTS_INGEST_CHAIN)
    edges = {task.task_id: (task.upstream_task_ids, task.downstream_task_ids) for task in flights_ingest.tasks}
    for i, task_id in enumerate(FLIGHTS_INGEST_CHAIN):
        upstream = set(FLIGHTS_INGEST_CHAIN[i - 1:i]) if i else set()
        downstream = set(FLIGHTS_INGEST_CHAIN[i + 1:i + 2])
        assert edges[task_id] == (upstream, downstream), task_id


def test_flights_ingest_publishes_validated_assets_from_promotion_only(flights_ingest: Any) -> None:
    from airflow.sdk import AssetAlias

    outlets = {
        task.task_id: sorted(a.name for a in task.outlets if isinstance(a, AssetAlias)) for task in flights_ingest.tasks
    }
    assert outlets.pop("promote_partitions") == ["validated_partitions"]
    assert all(not names for names in outlets.values()), outlets


def test_flights_ingest_does_not_retry_a_quarantine(flights_ingest: Any) -> None:
    """Bad data is not a transient failure: check_quarantine fails at once, the other tasks retry."""
    assert flights_ingest.get_task("check_quarantine").retries == 0
    assert flights_ingest.get_task("land_feed").retries >= 1


def test_flight_features_runs_when_flights_are_validated(dagbag: Any) -> None:
    """Scheduled on the asset flights_ingest announces (same name and URI), with a manual window as params."""
    from airflow.sdk import Asset

    features = _dag(dagbag, DAGS_DIR / "flight_features.py")
    scheduled_on = {a.name: a.uri for a in features.timetable.asset_condition.objects if isinstance(a, Asset)}
    assert scheduled_on == {"validated_flights": "file:///lake/validated/flights"}
    assert [t.task_id for t in features.topological_sort()] == ["build_features", "materialize_features"]
    assert {"start_date", "end_date"} <= set(features.params)



def test_flight_delay_training_runs_weekly_and_on_retrain_requests(dagbag: Any) -> None:
    """Mondays 06:00 New York time from the DAG's start (the Monday after the demo window, which make run uses), or
    when monitoring emits a retrain request; read through the serialized timetable the scheduler uses."""
    from airflow.sdk import Asset
    from airflow.serialization.serialized_objects import DagSerialization

    training = _dag(dagbag, DAGS_DIR / "flight_delay_training.py")
    assert training.start_date == datetime(2013, 4, 1, tzinfo=NEW_YORK)
    condition = training.timetable.asset_condition
    assert isinstance(condition, Asset) and condition.name == "flight_delay_retrain_requests"
    serialized = DagSerialization.from_dict(DagSerialization.to_dict(training))
    infos = list(serialized.iter_dagrun_infos_between(datetime(2013, 4, 1, tzinfo=NEW_YORK),
                                                      datetime(2013, 4, 20, tzinfo=NEW_YORK)))
    assert [info.run_after for info in infos] == [datetime(2013, 4, d, 6, tzinfo=NEW_YORK) for d in (1, 8, 15)]
    assert training.end_date is None


def test_flight_delay_training_chain_fans_tuning_out(dagbag: Any) -> None:
    training = _dag(dagbag, DAGS_DIR / "flight_delay_training.py")
    assert [t.task_id for t in training.topological_sort()] == [
        "wait_for_window", "build_training_set", "start_tuning", "tune_hyperparameters", "train_final_model",
        "evaluate_model", "register_model", "promote_model", "deploy_service"]
    assert type(training.get_task("tune_hyperparameters")).__name__.endswith("MappedOperator")
    # A failed smoke test has rolled back already: retrying would deploy the restored champion and hide it.
    assert training.get_task("deploy_service").retries == 0
    assert training.get_task("deploy_service").upstream_task_ids == {"promote_model"}
    for name, default in {"trials": 20, "time_budget_minutes": 30, "tuning_workers": 1, "window_days": 365}.items():
        param = training.params.get_param(name)
        assert param.value == default and param.description, name


def test_flight_delay_monitoring_runs_daily_in_order_and_requests_retraining(dagbag: Any) -> None:
    monitoring = _dag(dagbag, DAGS_DIR / "flight_delay_monitoring.py")
    training = _dag(dagbag, DAGS_DIR / "flight_delay_training.py")
    assert monitoring.max_active_runs == 2, "a day's replay overlaps the day before's report, never its replay"
    assert not monitoring.catchup and not training.catchup, "history is replayed by backfills, not on unpausing"
    assert monitoring.start_date == datetime(2013, 4, 1, tzinfo=NEW_YORK) and monitoring.end_date is None
    upstream = {t.task_id: t.upstream_task_ids for t in monitoring.tasks}
    assert upstream == {
        "wait_for_feed": set(), "wait_for_previous_replay": {"wait_for_feed"},
        "replay_traffic": {"wait_for_previous_replay"}, "label_predictions": {"wait_for_feed", "replay_traffic"},
        "wait_for_previous_report": {"wait_for_feed"},
        "build_drift_report": {"label_predictions", "wait_for_previous_report"},
        "email_report": {"build_drift_report"}, "request_retraining": {"build_drift_report"}}
    # Days in order: a replay after the run before's replay, a report after its report.
    for sensor, task in {"wait_for_previous_replay": "replay_traffic",
                         "wait_for_previous_report": "build_drift_report"}.items():
        assert monitoring.get_task(sensor).task == task and sensor in monitoring.get_task(task).upstream_task_ids
    # The retrain request goes out through an alias (an event only on the days that ask for one), as the very
    # Asset the training DAG is scheduled on.
    from _assets import RETRAIN_REQUESTED, RETRAIN_REQUESTS

    (outlet,) = monitoring.get_task("request_retraining").outlets
    assert outlet == RETRAIN_REQUESTED and RETRAIN_REQUESTS == training.timetable.asset_condition
    labels = monitoring.get_task("label_predictions")
    assert labels.trigger_rule == "none_failed_min_one_success", "runs when the replay is off, not past the feed"
    assert monitoring.params.get_param("replay_traffic").value is True
    assert monitoring.params.get_param("day").value is None and monitoring.params.get_param("day").description
    # The replay and the features' materialization write the online store: never both at once.
    features = _dag(dagbag, DAGS_DIR / "flight_features.py")
    writers = [monitoring.get_task("replay_traffic"), features.get_task("materialize_features")]
    assert {task.pool for task in writers} == {"online_store"}
    from pipelines.ops.airflow_config import POOLS

    assert POOLS["online_store"][0] == 1


@pytest.mark.parametrize(("previous", "state", "ends"), [
    (None, None, True),  # the first run: nothing before it
    ("running", "running", False), ("running", "up_for_retry", False), ("queued", None, False),
    ("running", "success", True), ("failed", "failed", True), ("failed", "upstream_failed", True),
    ("success", "skipped", True), ("success", None, True),  # a run before the task existed
])
def test_a_run_waits_only_while_the_run_before_has_not_ended_the_task(dagbag: Any, previous: str | None,
                                                                      state: str | None, ends: bool) -> None:
    """A failed or refused run before (a person's run, say) does not hold the next one for good, as Airflow's
    depends_on_past would; an unfinished one does. The Task SDK's answers are stood in for (no scheduler here)."""
    from types import SimpleNamespace

    sensor = _dag(dagbag, DAGS_DIR / "flight_delay_monitoring.py").get_task("wait_for_previous_replay")
    before = None if previous is None else SimpleNamespace(run_id="backfill__day_before", state=previous)
    asked: list[dict[str, Any]] = []

    def task_states(**query: Any) -> dict[str, dict[str, str | None]]:
        asked.append(query)
        return {"backfill__day_before": {"replay_traffic": state}} if state else {}

    ti = SimpleNamespace(dag_id="flight_delay_monitoring", get_previous_dagrun=lambda: before,
                         get_task_states=task_states)
    assert sensor.poke({"ti": ti}) is ends
    if before is not None:
        assert asked == [{"dag_id": "flight_delay_monitoring", "run_ids": ["backfill__day_before"],
                          "task_ids": ["replay_traffic"]}]


@pytest.mark.parametrize(("run_type", "outcome"), [
    ("manual", "AirflowFailException"), ("backfill", "AirflowFailException"), ("scheduled", "AirflowSkipException")])
def test_a_day_the_feed_lacks_is_refused_by_hand_and_skipped_on_schedule(dagbag: Any, run_type: str,
                                                                          outcome: str) -> None:
    """The UI form's default logical date is now, years past the feed: the person gets a failed run that says why
    and which dates to use (never a silent green run); a scheduled run past 2013 skips with the same words."""
    from types import SimpleNamespace

    from airflow.sdk.api.datamodels._generated import DagRunType  # what a task's context carries

    sensor = _dag(dagbag, DAGS_DIR / "flight_delay_monitoring.py").get_task("wait_for_feed")
    context = {"params": {"day": None}, "logical_date": datetime(2026, 12, 4, 5, tzinfo=UTC), "run_id": "r",
               "dag_run": SimpleNamespace(run_type=DagRunType(run_type),
                                          run_after=datetime(2026, 12, 4, 5, tzinfo=UTC))}
    with pytest.raises(Exception) as refused:
        sensor.poke(context)
    assert type(refused.value).__name__ == outcome
    assert "holds New York days 2013-01-01 .. 2013-12-31" in str(refused.value) and "not 2026-12-04" in str(
        refused.value)


def test_flight_delay_year_report_is_manual_builds_then_emails(dagbag: Any) -> None:
    """Triggered by hand (make year, at its end) for a window of typed dates: the report, then its email."""
    from airflow.sdk.exceptions import ParamValidationError

    report = _dag(dagbag, DAGS_DIR / "flight_delay_year_report.py")
    assert type(report.timetable).__name__ == "NullTimetable" and not report.catchup, "manual only"
    assert [t.task_id for t in report.topological_sort()] == ["build_year_report", "email_year_report"]
    for name, default in {"start_date": "2013-04-01", "end_date": "2013-12-31"}.items():
        param = report.params.get_param(name)
        assert param.value == default and param.description, name
        assert param.resolve("2013-07-08") == "2013-07-08"
        with pytest.raises(ParamValidationError):
            param.resolve("2013-13-45")


@pytest.mark.parametrize("path", DAG_FILES, ids=lambda p: p.stem)
def test_every_task_has_an_execution_timeout(dagbag: Any, path: Path) -> None:
    """A hung task (a network call without an answer, a deadlock) fails and is retried instead of holding its
    slot for ever; no bound is longer than tuning's largest time budget (a day) and an hour."""
    for task in _dag(dagbag, path).tasks:
        assert task.execution_timeout is not None, task.task_id
        assert timedelta(0) < task.execution_timeout <= timedelta(hours=25), task.task_id
