"""Optuna tuning of the disruption network: one study per run key, trials as nested MLflow runs.

The study lives in RDB storage (SQLite embedded, PostgreSQL in production) under the run key's name, so a retried
task resumes it: trials already finished (complete or pruned) count towards the requested number, and a trial
whose process died is failed by Optuna's heartbeat and re-queued once. Several workers (mapped Airflow tasks) can
share one study; ``MaxTrialsCallback`` stops them together at the requested number of trials.

The objective is the best calibrated validation log loss over the epochs (the epoch early stopping keeps; see
``model.train_model``); each epoch's value goes to the median pruner, so a trial clearly worse than earlier trials
at the same epoch stops early.
"""

from __future__ import annotations

import logging
import time
import warnings
from typing import TYPE_CHECKING, Any

import pandas as pd

from pipelines.core.settings import Settings
from pipelines.training.tracking import KIND_TAG, RUN_KEY_TAG

if TYPE_CHECKING:
    import optuna

log = logging.getLogger(__name__)

METRIC = "valid_log_loss"
HEARTBEAT_SECONDS = 30


def study_name(run_key: str) -> str:
    return f"flight_delay_training:{run_key}"


def suggest_params(trial: optuna.trial.BaseTrial) -> dict[str, Any]:
    """The search space; every parameter is present in every trial so importances compare like with like."""
    width = trial.suggest_categorical("width", [16, 32, 64, 128, 256])
    depth = trial.suggest_int("depth", 1, 3)
    return {
        "hidden_sizes": [max(8, width // 2**i) for i in range(depth)],
        "dropout": trial.suggest_float("dropout", 0.0, 0.5),
        "lr": trial.suggest_float("lr", 3e-4, 1e-2, log=True),
        "weight_decay": trial.suggest_float("weight_decay", 1e-6, 1e-2, log=True),
        "batch_size": trial.suggest_categorical("batch_size", [512, 1024, 2048]),
        "imbalance_power": trial.suggest_float("imbalance_power", 0.0, 1.0),
    }


def params_from_trial(values: dict[str, Any]) -> dict[str, Any]:
    """Training parameters from a trial's raw Optuna parameters (the inverse of ``suggest_params``' naming)."""
    import optuna

    return suggest_params(optuna.trial.FixedTrial(values))


def open_study(settings: Settings, run_key: str, seed: int = 0) -> optuna.Study:
    """Create or load the run key's study (TPE, median pruner after a few trials and epochs); ``seed`` tells
    workers sharing the study apart."""
    import optuna
    from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback

    if settings.optuna_storage is None:
        (settings.pipeline_home / "optuna").mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():  # the heartbeat has been "experimental" since Optuna 2.8; it is what resumes
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        storage = RDBStorage(settings.optuna_url, heartbeat_interval=HEARTBEAT_SECONDS,
                             grace_period=3 * HEARTBEAT_SECONDS,
                             heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(max_retry=1))
    study = optuna.create_study(
        study_name=study_name(run_key), storage=storage, direction="minimize", load_if_exists=True,
        pruner=optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=3),
    )
    # Seeded for reproducibility, but apart for each worker and each resumption, so no two of them propose the same
    # startup trials.
    study.sampler = optuna.samplers.TPESampler(seed=seed * 100_003 + len(study.trials), n_startup_trials=4)
    return study


def finished_trials(study: optuna.Study) -> int:
    from optuna.trial import TrialState

    return len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED)))


def run_trials(study: optuna.Study, train: pd.DataFrame, valid: pd.DataFrame, *, n_trials: int,
               timeout_s: float | None, parent_run_id: str, run_key: str, max_epochs: int = 30,
               patience: int = 5, seed: int = 0, worker: int = 0) -> dict[str, Any]:
    """Run trials until the study holds ``n_trials`` finished ones or the time budget is spent.

    The budget is checked between trials (a started trial finishes or is pruned); each trial is a nested MLflow
    run under ``parent_run_id`` with its parameters, per-epoch validation metric and final state."""
    import mlflow
    import optuna
    from optuna.trial import TrialState

    from pipelines.training.fit import train_model

    already = finished_trials(study)
    remaining = n_trials - already
    if remaining <= 0:
        log.info("study %s already has %d finished trials (asked %d): nothing to run", study.study_name, already,
                 n_trials)
        return summarize_study(study)
    log.info("study %s: %d finished trials, running up to %d more (budget %s)", study.study_name, already, remaining,
             f"{timeout_s:.0f}s" if timeout_s else "none")

    def objective(trial: optuna.Trial) -> float:
        params = suggest_params(trial)
        started = time.perf_counter()
        epochs_run = 0
        with mlflow.start_run(run_name=f"trial-{trial.number}", nested=True, parent_run_id=parent_run_id,
                              tags={RUN_KEY_TAG: run_key, KIND_TAG: "trial", "optuna.study": study.study_name,
                                    "optuna.trial": str(trial.number), "tuning.worker": str(worker)}):
            mlflow.log_params({**trial.params, "hidden_sizes": params["hidden_sizes"]})

            def on_epoch(epoch: int, value: float) -> None:
                nonlocal epochs_run
                epochs_run = epoch + 1
                mlflow.log_metric(METRIC, value, step=epoch)
                trial.report(value, epoch)
                if trial.should_prune():
                    raise optuna.TrialPruned(f"epoch {epoch}: {METRIC} {value:.4f} worse than the median")

            try:
                model = train_model(train, valid, params, seed=seed, max_epochs=max_epochs, patience=patience,
                                    on_epoch=on_epoch)
            except optuna.TrialPruned:
                mlflow.set_tags({"optuna.state": "PRUNED", "optuna.pruned_at_epoch": str(epochs_run - 1)})
                value = None
            else:
                value = min(h[METRIC] for h in model.history)
                mlflow.log_metrics({f"best_{METRIC}": value, "best_epoch": model.best_epoch,
                                    "epochs": len(model.history)})
                mlflow.set_tag("optuna.state", "COMPLETE")
            mlflow.log_metric("seconds", time.perf_counter() - started)
        if value is None:
            raise optuna.TrialPruned(f"pruned at epoch {epochs_run - 1}")
        log.info("trial %d: %s %.4f in %.1fs (%s)", trial.number, METRIC, value, time.perf_counter() - started,
                 params)
        return value

    study.optimize(
        objective, n_trials=remaining, timeout=timeout_s, gc_after_trial=True,
        callbacks=[optuna.study.MaxTrialsCallback(n_trials, states=(TrialState.COMPLETE, TrialState.PRUNED))],
    )
    return summarize_study(study)


def summarize_study(study: optuna.Study) -> dict[str, Any]:
    """Counts by state and the best trial (None when no trial completed)."""
    from optuna.trial import TrialState

    counts = {state.name: 0 for state in TrialState}
    for trial in study.get_trials(deepcopy=False):
        counts[trial.state.name] += 1
    summary: dict[str, Any] = {"study": study.study_name, "trials": {k: v for k, v in counts.items() if v}}
    if counts["COMPLETE"]:
        best = study.best_trial
        summary.update(best_trial=best.number, best_value=best.value, best_params=params_from_trial(best.params))
    return summary


def log_study(study: optuna.Study, parent_run_id: str) -> dict[str, Any]:
    """Record the finished study on the tuning parent run: best parameters and value, trial counts, and the
    optimisation history and parameter importances as interactive HTML (plus the importances as JSON)."""
    import mlflow
    import optuna

    summary = summarize_study(study)
    with mlflow.start_run(run_id=parent_run_id):
        mlflow.set_tags({"optuna.study": study.study_name, **{f"trials.{k}": str(v)
                                                              for k, v in summary["trials"].items()}})
        if "best_value" not in summary:
            log.warning("study %s has no completed trial", study.study_name)
            return summary
        best = {f"best_{k}": str(v) for k, v in study.best_trial.params.items()}
        logged = mlflow.get_run(parent_run_id).data.params
        if any(logged.get(k, v) != v for k, v in best.items()):
            # MLflow params are immutable: a study that grew after an earlier log keeps the first record here.
            log.warning("tuning run %s already records other best parameters; keeping them", parent_run_id)
        else:
            mlflow.log_params(best)
        mlflow.log_metrics({f"best_{METRIC}": summary["best_value"], "best_trial": summary["best_trial"]})
        mlflow.log_figure(optuna.visualization.plot_optimization_history(study), "tuning/optimization_history.html")
        if summary["trials"].get("COMPLETE", 0) >= 2:
            importances = optuna.importance.get_param_importances(study)
            summary["importances"] = {k: round(float(v), 4) for k, v in importances.items()}
            mlflow.log_dict(summary["importances"], "tuning/param_importances.json")
            mlflow.log_figure(optuna.visualization.plot_param_importances(study), "tuning/param_importances.html")
    return summary
