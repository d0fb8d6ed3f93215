"""Tuning fanned out as in the production profile: two worker processes share one Optuna study in a real PostgreSQL
database (127.0.0.1:5432), with MLflow tracking in PostgreSQL too, on the session's real 2013 training data.

Each worker is a separate process running the step a mapped ``tune_hyperparameters`` task runs; together they stop
at the requested number of trials (Optuna's ``MaxTrialsCallback`` may let each worker finish the trial it started,
so at most ``workers - 1`` more), both contribute, and no two trials share parameters.
"""

from __future__ import annotations

import multiprocessing
import uuid
from collections.abc import Iterator
from pathlib import Path

import mlflow
import optuna
import pytest

from pipelines.core.settings import Settings
from pipelines.training.datasets import build_training_set
from pipelines.training.steps import start_tuning, tune_hyperparameters
from pipelines.training.tracking import KIND_TAG, RUN_KEY_TAG, use_tracking
from pipelines.training.tuning import study_name

pytestmark = pytest.mark.integration

HOST = "127.0.0.1"
POSTGRES_ADMIN = f"postgresql://postgres@{HOST}:5432/postgres"
RUN_KEY = "flight_delay_training/2013-03-04T06:00:00+00:00/scheduled__fan_out"
TRIALS, WORKERS = 6, 2


@pytest.fixture(scope="module")
def databases() -> Iterator[dict[str, str]]:
    """Fresh databases for Optuna and MLflow (SQLAlchemy URLs), dropped after the module."""
    psycopg = pytest.importorskip("psycopg")
    try:
        admin = psycopg.connect(POSTGRES_ADMIN, autocommit=True, connect_timeout=5)
    except psycopg.OperationalError as error:
        pytest.skip(f"PostgreSQL is not reachable on {HOST}:5432: {error}")
    names = {kind: f"{kind}_test_{uuid.uuid4().hex[:12]}" for kind in ("optuna", "mlflow")}
    with admin:
        for name in names.values():
            admin.execute(f'CREATE DATABASE "{name}"')
        try:
            yield {kind: f"postgresql+psycopg://postgres@{HOST}:5432/{name}" for kind, name in names.items()}
        finally:
            for name in names.values():
                admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="module")
def fanned_out(real_data: Settings, real_days: list, databases: dict[str, str],
               tmp_path_factory: pytest.TempPathFactory) -> Settings:
    artifacts: Path = tmp_path_factory.mktemp("mlflow_artifacts")
    settings = real_data.model_copy(update={"optuna_storage": databases["optuna"],
                                            "experiment_tracking_uri": databases["mlflow"],
                                            "experiment_artifacts_uri": artifacts.as_uri()})
    build_training_set(real_days, RUN_KEY, settings, valid_days=7, test_days=7)
    workers = start_tuning(RUN_KEY, settings, workers=WORKERS)["workers"]
    assert workers == list(range(WORKERS))
    spawn = multiprocessing.get_context("spawn")
    processes = [spawn.Process(target=tune_hyperparameters, args=(RUN_KEY, settings),
                               kwargs={"trials": TRIALS, "max_epochs": 3, "worker": worker}) for worker in workers]
    for process in processes:
        process.start()
    for process in processes:
        process.join(timeout=600)
    assert [process.exitcode for process in processes] == [0] * WORKERS
    return settings


def test_workers_share_one_study_and_stop_together(fanned_out: Settings) -> None:
    study = optuna.load_study(study_name=study_name(RUN_KEY), storage=fanned_out.optuna_url)
    finished = [t for t in study.trials if t.state.name in ("COMPLETE", "PRUNED")]
    assert TRIALS <= len(finished) <= TRIALS + WORKERS - 1
    proposals = [tuple(sorted(t.params.items())) for t in study.trials]
    assert len(set(proposals)) == len(proposals), "two workers proposed the same trial"


def test_both_workers_logged_nested_trials_under_one_parent(fanned_out: Settings) -> None:
    experiment = use_tracking(fanned_out)
    runs = mlflow.search_runs(experiment_ids=[experiment], output_format="list",
                              filter_string=f"tags.`{RUN_KEY_TAG}` = '{RUN_KEY}'")
    parents = [run for run in runs if run.data.tags[KIND_TAG] == "tuning"]
    trials = [run for run in runs if run.data.tags[KIND_TAG] == "trial"]
    assert len(parents) == 1
    assert {run.data.tags["mlflow.parentRunId"] for run in trials} == {parents[0].info.run_id}
    assert {run.data.tags["tuning.worker"] for run in trials} == {str(w) for w in range(WORKERS)}
