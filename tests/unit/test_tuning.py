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
from pipelines.training.tuning import (
    DEFAULTS_MARGIN,
    chosen_trial,
    finished_trials,
    log_study,
    log_study_figures,
    open_study,
    params_from_trial,
    run_trials,
    suggest_params,
    summarize_study,
    trial_values,
)

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
    chosen = chosen_trial(study)
    assert chosen is not None and summary["best_params"] == params_from_trial(chosen.params)
    assert set(summary["best_params"]) == set(DEFAULT_PARAMS)

    trials = mlflow.search_runs(experiment_ids=[tuning["experiment"]], output_format="list",
                                filter_string=f"tags.mlflow.parentRunId = '{tuning['parent']}'")
    assert sorted(run.data.tags["optuna.trial"] for run in trials) == ["0", "1", "2"]
    assert all(run.info.status == "FINISHED" and "valid_log_loss" in run.data.metrics for run in trials)
    assert {run.data.params["lr"] for run in trials} == {str(t.params["lr"]) for t in study.trials}

    logged = log_study(study, tuning["parent"])
    parent = mlflow.get_run(tuning["parent"])
    assert parent.data.metrics["best_valid_log_loss"] == pytest.approx(chosen.value)
    assert parent.data.params["best_lr"] == str(chosen.params["lr"])
    artifacts = {a.path for a in mlflow.MlflowClient().list_artifacts(tuning["parent"], "tuning")}
    assert artifacts == {"tuning/optimization_history.html", "tuning/param_importances.html",
                         "tuning/param_importances.json", "tuning/optimization_history.png",
                         "tuning/param_importances.png"}
    assert set(logged["importances"]) <= set(study.best_trial.params)

    final = find_or_create_run(tuning["experiment"], RUN_KEY, "final", run_name="final")
    with mlflow.start_run(run_id=final):  # the final run's step may have it active: the figures go in anyway
        log_study_figures(study, final, logged["importances"])
    images = {a.path for a in mlflow.MlflowClient().list_artifacts(final, "tuning")}
    assert images == {"tuning/optimization_history.png", "tuning/param_importances.png"}


def test_the_defaults_are_the_first_trial_and_the_space_keeps_to_its_bounds(settings: Settings,
                                                                            tuning: dict[str, Any]) -> None:
    assert params_from_trial(trial_values(DEFAULT_PARAMS)) == DEFAULT_PARAMS
    study = open_study(settings, RUN_KEY)
    _run(study, tuning, n_trials=3)
    assert study.trials[0].params == trial_values(DEFAULT_PARAMS)
    assert [t.params for t in study.trials].count(trial_values(DEFAULT_PARAMS)) == 1
    _run(open_study(settings, RUN_KEY), tuning, n_trials=5)  # resumed: the defaults are not tried again
    assert [t.params for t in study.trials].count(trial_values(DEFAULT_PARAMS)) == 1
    for trial in open_study(settings, RUN_KEY).trials:
        params = params_from_trial(trial.params)
        assert 0.0 <= params["imbalance_power"] <= 0.5 and 0.1 <= params["dropout"] <= 0.6
        assert 3e-4 <= params["lr"] <= 3e-3 and params["members"] == DEFAULT_PARAMS["members"]



def test_a_trial_must_beat_the_defaults_by_the_margin_to_be_chosen() -> None:
    import optuna

    study = optuna.create_study()
    study.enqueue_trial(trial_values(DEFAULT_PARAMS))
    values = iter([0.5, 0.5 - DEFAULTS_MARGIN / 2, 0.6, 0.5 - 2 * DEFAULTS_MARGIN])

    def objective(trial: optuna.Trial) -> float:
        suggest_params(trial)
        return next(values)

    study.optimize(objective, n_trials=3)
    chosen = chosen_trial(study)
    assert chosen is not None and chosen.number == 0 and study.best_trial.number == 1  # within noise: the defaults
    summary = summarize_study(study)
    assert summary["best_params"] == DEFAULT_PARAMS
    assert summary["lowest_value"] == pytest.approx(0.5 - DEFAULTS_MARGIN / 2)
    study.optimize(objective, n_trials=1)
    clearly_better = chosen_trial(study)
    assert clearly_better is not None and clearly_better.number == 3
    assert chosen_trial(optuna.create_study()) is None
