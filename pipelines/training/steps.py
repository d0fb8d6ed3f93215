"""The training chain as steps, each keyed by the run key so a retried task picks up what it made before.

``pipelines.training.datasets.build_training_set`` -> ``start_tuning`` -> ``tune_hyperparameters`` (one or more
workers on one study) -> ``train_final_model`` -> ``evaluate_model``. These are what the ``flight_delay_training``
DAG's tasks and the CLI call. Data moves through the lake (``training/{run}/`` for the splits, ``models/{run}/``
for the model and its evaluation); the steps return small dicts.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterable
from datetime import date
from typing import Any

from pipelines.core.lake import settings_and_lake
from pipelines.core.settings import Settings, get_settings
from pipelines.training.datasets import build_training_set, model_key, read_manifest, read_splits
from pipelines.training.tracking import find_or_create_run, find_run, use_tracking

log = logging.getLogger(__name__)


def start_tuning(run_key: str, settings: Settings | None = None, *, workers: int = 1) -> dict[str, Any]:
    """Create (or find) the run key's Optuna study and MLflow tuning parent run; one entry per tuning worker."""
    from pipelines.training.tuning import open_study

    settings = settings or get_settings()
    manifest = read_manifest(run_key, settings)
    experiment_id = use_tracking(settings)
    study = open_study(settings, run_key)
    parent = find_or_create_run(experiment_id, run_key, "tuning", run_name=f"tuning {manifest['window'][1]}",
                                tags={"optuna.study": study.study_name,
                                      "training_set_sha256": manifest["training_set_sha256"]})
    return {"study": study.study_name, "parent_run_id": parent, "workers": list(range(max(1, workers)))}


def tune_hyperparameters(run_key: str, settings: Settings | None = None, *, trials: int = 20,
                         time_budget_s: float | None = None, max_epochs: int = 30, worker: int = 0) -> dict[str, Any]:
    """One tuning worker: run trials on the shared study until it holds ``trials`` finished ones or the budget
    is spent. Resumes the study and parent run of the same run key."""
    from pipelines.training.tuning import open_study, run_trials

    settings = settings or get_settings()
    splits = read_splits(run_key, settings)
    parent = start_tuning(run_key, settings)["parent_run_id"]
    study = open_study(settings, run_key, seed=worker)  # workers sharing a study must not propose the same trials
    summary = run_trials(study, splits["train"], splits["valid"], n_trials=trials, timeout_s=time_budget_s,
                         parent_run_id=parent, run_key=run_key, max_epochs=max_epochs, seed=worker,
                         worker=worker)
    log.info("tune_hyperparameters (worker %d): %s", worker, summary["trials"])
    return summary | {"worker": worker}


def train_final_model(run_key: str, settings: Settings | None = None, *, max_epochs: int = 30,
                      untuned: dict[str, Any] | None = None) -> dict[str, Any]:
    """Train with the study's best parameters, log the study and the run to MLflow, and write the model to
    ``models/{run}/model.pt``. When no trial completed (none was asked for: a scheduled retrain without a search),
    with ``untuned`` (the champion's parameters), else the defaults. A rerun finds the model it wrote."""
    import mlflow

    from pipelines.training.fit import DEFAULT_PARAMS, train_model
    from pipelines.training.network import pick_device
    from pipelines.training.tuning import log_study, log_study_figures, open_study

    settings, lake = settings_and_lake(settings)
    manifest = read_manifest(run_key, settings)
    experiment_id = use_tracking(settings)
    model_file = model_key(run_key, "model.pt")
    existing = find_run(experiment_id, run_key, "final")
    if existing is not None and existing.info.status == "FINISHED" and lake.exists(model_file):
        log.info("train_final_model: run %s already trained %s", run_key, lake.url(model_file))
        return {"mlflow_run_id": existing.info.run_id, "model_uri": lake.url(model_file), "reused": True}

    study = open_study(settings, run_key)
    tuning = start_tuning(run_key, settings)
    summary = log_study(study, tuning["parent_run_id"])
    params = summary.get("best_params")
    if params is None:
        log.warning("no completed trial in %s: training with the %s parameters", study.study_name,
                    "champion's" if untuned else "default")
        params = dict(DEFAULT_PARAMS) | dict(untuned or {})
    splits = read_splits(run_key, settings)
    final_id = find_or_create_run(experiment_id, run_key, "final", run_name=f"final {manifest['window'][1]}",
                                  tags={"optuna.study": study.study_name,
                                        "training_set_sha256": manifest["training_set_sha256"]})
    device = pick_device()
    with mlflow.start_run(run_id=final_id):
        mlflow.log_params({**params, "max_epochs": max_epochs, "device": device.type,
                           "window": "..".join(manifest["window"]), "train_rows": manifest["splits"]["train"]["rows"],
                           "valid_rows": manifest["splits"]["valid"]["rows"],
                           "test_rows": manifest["splits"]["test"]["rows"]})
        started = time.perf_counter()
        model = train_model(splits["train"], splits["valid"], params, seed=0, max_epochs=max_epochs, device=device)
        seconds = time.perf_counter() - started
        for row in model.history:
            epoch = int(row["epoch"])
            mlflow.log_metrics({k: v for k, v in row.items() if k != "epoch"}, step=epoch)
        mlflow.log_metrics({"best_epoch": model.best_epoch, "train_seconds": seconds})
        data = model.to_bytes()
        lake.write_bytes(model_file, data)
        log_study_figures(study, final_id, summary.get("importances"))  # the Optuna charts beside the model
        mlflow.log_dict(model.preprocessor.to_dict(), "model/preprocessor.json")
        mlflow.log_dict(manifest, "model/training_manifest.json")
        mlflow.set_tag("model_uri", lake.url(model_file))
    log.info("train_final_model: best epoch %d of %d in %.1fs on %s -> %s", model.best_epoch, len(model.history),
             seconds, device.type, lake.url(model_file))
    return {"mlflow_run_id": final_id, "model_uri": lake.url(model_file), "params": params,
            "best_epoch": model.best_epoch, "seconds": round(seconds, 1), "reused": False}


def load_model(run_key: str, settings: Settings | None = None) -> Any:
    from pipelines.training.model import TrainedModel

    settings, lake = settings_and_lake(settings)
    return TrainedModel.from_bytes(lake.read_bytes(model_key(run_key, "model.pt")))


def evaluate_model(run_key: str, settings: Settings | None = None) -> dict[str, Any]:
    """Score the network and two baselines trained on the same features and split (the base rate and a logistic
    regression) on the test window: ROC AUC, PR AUC, log loss, Brier, calibration. Recorded on the final MLflow run
    (metrics, calibration plot, JSON) and as ``models/{run}/evaluation.json``."""
    import mlflow

    from pipelines.core.names import LABEL
    from pipelines.training.evaluation import (
        calibration_figure,
        evaluate_predictions,
        fit_baselines,
        paired_bootstrap_auc_difference,
    )

    settings, lake = settings_and_lake(settings)
    experiment_id = use_tracking(settings)
    final = find_run(experiment_id, run_key, "final")
    if final is None:
        raise FileNotFoundError(f"no final model for run {run_key}: run train_final_model first")
    splits = read_splits(run_key, settings)
    test = splits["test"]
    y = test[LABEL].to_numpy()
    predictions = {"network": load_model(run_key, settings).predict_proba(test)}
    for name, baseline in fit_baselines(splits["train"]).items():
        predictions[name] = baseline.predict_proba(test)
    metrics = evaluate_predictions(y, predictions)
    manifest = read_manifest(run_key, settings)
    comparison = paired_bootstrap_auc_difference(y, predictions["network"], predictions["logistic_regression"])
    test_split = manifest["splits"]["test"]
    evaluation: dict[str, Any] = {
        "run_key": run_key, "test_window": [test_split["first_departure"], test_split["last_departure"]],
        "metrics": metrics,
        "beats_logistic_regression": bool(metrics["network"]["roc_auc"] > metrics["logistic_regression"]["roc_auc"]),
        "network_vs_logistic_regression": comparison,
    }
    lake.write_text(model_key(run_key, "evaluation.json"), json.dumps(evaluation, indent=2))
    with mlflow.start_run(run_id=final.info.run_id):
        for model_name, values in metrics.items():
            prefix = "test_" if model_name == "network" else f"{model_name}_test_"
            mlflow.log_metrics({prefix + k: float(v) for k, v in values.items()})
        mlflow.log_metrics({"test_roc_auc_minus_logistic_regression": comparison["difference"],
                            "test_roc_auc_minus_logistic_regression_low": comparison["low"],
                            "test_roc_auc_minus_logistic_regression_high": comparison["high"]})
        mlflow.log_figure(calibration_figure({name: (y, p) for name, p in predictions.items()}),
                          "evaluation/calibration.png")
        mlflow.log_dict(evaluation, "evaluation/evaluation.json")
    log.info("evaluate_model: test ROC AUC network %.4f, logistic regression %.4f, base rate %.4f",
             metrics["network"]["roc_auc"], metrics["logistic_regression"]["roc_auc"],
             metrics["base_rate"]["roc_auc"])
    return evaluation


def read_evaluation(run_key: str, settings: Settings | None = None) -> dict[str, Any]:
    settings, lake = settings_and_lake(settings)
    return dict(json.loads(lake.read_text(model_key(run_key, "evaluation.json"))))


def latest_evaluation(settings: Settings | None = None) -> dict[str, Any]:
    """The evaluation of the most recently started final training run (what ``make run`` prints)."""
    import mlflow

    from pipelines.training.tracking import KIND_TAG, RUN_KEY_TAG

    settings = settings or get_settings()
    experiment_id = use_tracking(settings)
    runs = mlflow.search_runs(experiment_ids=[experiment_id], output_format="list", max_results=1,
                              filter_string=f"tags.`{KIND_TAG}` = 'final'", order_by=["attributes.start_time DESC"])
    if not runs:
        raise FileNotFoundError(f"no trained model recorded in {settings.tracking_uri}")
    return read_evaluation(runs[0].data.tags[RUN_KEY_TAG], settings)


def train_pipeline(days: Iterable[date], run_key: str, settings: Settings | None = None, *, trials: int = 20,
                   time_budget_s: float | None = None, max_epochs: int = 30, valid_days: int = 14,
                   test_days: int = 14, untuned: dict[str, Any] | None = None) -> dict[str, Any]:
    """The whole chain in one process (the CLI's ``train``), the same steps the DAG runs (``untuned``: the
    parameters when no trial completes, as ``train_final_model``)."""
    settings = settings or get_settings()
    prepared = build_training_set(days, run_key, settings, valid_days=valid_days, test_days=test_days)
    start_tuning(run_key, settings)
    tuned = tune_hyperparameters(run_key, settings, trials=trials, time_budget_s=time_budget_s,
                                 max_epochs=max_epochs)
    trained = train_final_model(run_key, settings, max_epochs=max_epochs, untuned=untuned)
    evaluation = evaluate_model(run_key, settings)
    return {"training_set": prepared, "tuning": tuned, "model": trained, "evaluation": evaluation}
