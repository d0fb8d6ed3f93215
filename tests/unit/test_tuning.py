"""Optuna tuning on a small synthetic training set, with real SQLite storage and a real MLflow tracking database in
the test's own home: a retried task resumes the run key's study, trials are nested MLflow runs, the study's summary
is logged on the parent run."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import mlflow
import pandas as pd
import pytest

from pipelines.core.settings import Settings
from pipelines.training.fit import DEFAULT_PARAMS, time_split, train_model
from pipelines.training.model import TrainedModel
from pipelines.training.tracking import find_or_create_run, use_tracking
from pipelines.training.tuning import finished_trials, log_study, open_study, params_from_trial, run_trials

RUN_KEY = "flight_delay_training/2013-03-31T00:00:00+00:00/manual__test"


@pytest.fixture
def tuning(settings: Settings, make_training_frame: Callable[..., pd.DataFrame]) -> dict[str, Any]:
    train, valid, _ = time_split(make_training_frame(1500, days=20), valid_days=4, test_days=4)
    experiment = use_tracking(settings)
    parent = find_or_create_run(experiment, RUN_KEY, "tuning", run_name="tuning")
    return {"train": train, "valid": valid, "parent": parent, "experiment": experiment}


def _run(study: Any, tuning: dict[str, Any], n_trials: int) -> dict[str, Any]:
    return run_trials(study, tuning["train"], tuning["valid"], n_trials=n_trials, timeout_s=None,
                      parent_run_id=tuning["parent"], run_key=RUN_KEY, max_epochs=3, patience=2)


def test_a_retried_task_resumes_the_study_instead_of_starting_over(settings: Settings, tuning: dict[str, Any],
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    trainings = 0
    real_train_model = train_model

    def dies_in_third_training(*args: Any, **kwargs: Any) -> TrainedModel:
        nonlocal trainings
        trainings += 1
        if trainings == 3:
            raise RuntimeError("worker lost")
        return real_train_model(*args, **kwargs)

    monkeypatch.setattr("pipelines.training.fit.train_model", dies_in_third_training)
    with pytest.raises(RuntimeError, match="worker lost"):
        _run(open_study(settings, RUN_KEY), tuning, n_trials=4)

    retried = open_study(settings, RUN_KEY)  # a new process: the study comes back from storage by name
    assert finished_trials(retried) == 2
    summary = _run(retried, tuning, n_trials=4)
    assert trainings == 5  # 2 finished + the failed one + 2 more, not 4 more
    assert summary["trials"]["FAIL"] == 1
    assert summary["trials"].get("COMPLETE", 0) + summary["trials"].get("PRUNED", 0) == 4

    _run(open_study(settings, RUN_KEY), tuning, n_trials=4)  # a third attempt finds the study complete
    assert trainings == 5


def test_trials_are_nested_runs_and_the_parent_records_the_study(settings: Settings,
                                                                 tuning: dict[str, Any]) -> None:
    study = open_study(settings, RUN_KEY)
    summary = _run(study, tuning, n_trials=3)
    assert summary["best_params"] == params_from_trial(study.best_trial.params)
    assert set(summary["best_params"]) == set(DEFAULT_PARAMS)

    trials = mlflow.search_runs(experiment_ids=[tuning["experiment"]], output_format="list",
                                filter_string=f"tags.mlflow.parentRunId = '{tuning['parent']}'")
    assert sorted(run.data.tags["optuna.trial"] for run in trials) == ["0", "1", "2"]
    assert all(run.info.status == "FINISHED" and "valid_log_loss" in run.data.metrics for run in trials)
    assert {run.data.params["lr"] for run in trials} == {str(t.params["lr"]) for t in study.trials}

    logged = log_study(study, tuning["parent"])
    parent = mlflow.get_run(tuning["parent"])
    assert parent.data.metrics["best_valid_log_loss"] == pytest.approx(study.best_value)
    assert parent.data.params["best_lr"] == str(study.best_trial.params["lr"])
    artifacts = {a.path for a in mlflow.MlflowClient().list_artifacts(tuning["parent"], "tuning")}
    assert artifacts == {"tuning/optimization_history.html", "tuning/param_importances.html",
                         "tuning/param_importances.json"}
    assert set(logged["importances"]) <= set(study.best_trial.params)

