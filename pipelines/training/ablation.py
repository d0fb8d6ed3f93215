"""What each feature family brings: the final model's hyperparameters retrained with each family of
``FEATURE_FAMILIES`` left out in turn, scored on the run's test window (ROC AUC, Brier) against the same retraining
with every column. Recorded on the run key's final MLflow run (``evaluation/ablation.json`` and ``.md``, one metric
per family) and as ``models/{run}/ablation.json``.

Every row is trained with the same seed, epochs and patience, so the differences are the families'; differences
of a few thousandths of ROC AUC are within what another seed moves.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Mapping
from typing import Any

import pandas as pd

from pipelines.core.lake import settings_and_lake
from pipelines.core.names import LABEL
from pipelines.core.settings import Settings
from pipelines.training.columns import CATEGORICAL_COLUMNS, FEATURE_FAMILIES, NUMERIC_COLUMNS
from pipelines.training.datasets import model_key, read_splits
from pipelines.training.preprocessing import Preprocessor
from pipelines.training.tracking import find_run, use_tracking

log = logging.getLogger(__name__)

ALL_FEATURES = "none"
"""The ``left_out`` of the reference row: every column."""


def without(columns: tuple[str, ...]) -> Preprocessor:
    """An unfitted preprocessor of every model column but ``columns``."""
    return Preprocessor(categorical=[c for c in CATEGORICAL_COLUMNS if c not in columns],
                        numeric=[c for c in NUMERIC_COLUMNS if c not in columns])


def ablate(train: pd.DataFrame, valid: pd.DataFrame, test: pd.DataFrame, params: dict[str, Any], *,
           families: Mapping[str, tuple[str, ...]] = FEATURE_FAMILIES, max_epochs: int = 20, patience: int = 5,
           seed: int = 0) -> list[dict[str, Any]]:
    """One row per retraining, the reference (every column) first: the family left out, how many input columns
    remain, test ROC AUC and Brier and their change from the reference, the best epoch and the seconds taken."""
    from pipelines.training.evaluation import classification_metrics
    from pipelines.training.fit import train_model

    y = test[LABEL].to_numpy()
    rows: list[dict[str, Any]] = []
    for name, columns in {ALL_FEATURES: (), **families}.items():
        started = time.perf_counter()
        model = train_model(train, valid, params, seed=seed, max_epochs=max_epochs, patience=patience,
                            preprocessor=without(columns))
        metrics = classification_metrics(y, model.predict_proba(test))
        pre = model.preprocessor
        rows.append({"left_out": name, "columns": len(pre.categorical) + len(pre.numeric),
                     "roc_auc": metrics["roc_auc"], "brier": metrics["brier"],
                     "roc_auc_change": metrics["roc_auc"] - rows[0]["roc_auc"] if rows else 0.0,
                     "brier_change": metrics["brier"] - rows[0]["brier"] if rows else 0.0,
                     "best_epoch": model.best_epoch, "seconds": round(time.perf_counter() - started, 1)})
        log.info("ablation without %s: test ROC AUC %.4f, Brier %.4f", name, metrics["roc_auc"], metrics["brier"])
    return rows


def run_ablation(run_key: str, settings: Settings | None = None, *, max_epochs: int = 20,
                 patience: int = 5) -> dict[str, Any]:
    """The ablation of the run key's final model (its hyperparameters, its split), logged on its final MLflow run
    and written next to the model; returns the table (``format_ablation`` prints it)."""
    import mlflow

    from pipelines.training.steps import load_model

    settings, lake = settings_and_lake(settings)
    experiment_id = use_tracking(settings)
    final = find_run(experiment_id, run_key, "final")
    if final is None:
        raise FileNotFoundError(f"no final model for run {run_key}: run train_final_model first")
    params = load_model(run_key, settings).params
    splits = read_splits(run_key, settings)
    started = time.perf_counter()
    rows = ablate(splits["train"], splits["valid"], splits["test"], params, max_epochs=max_epochs,
                  patience=patience)
    table = {"run_key": run_key, "params": params, "max_epochs": max_epochs, "patience": patience, "rows": rows}
    lake.write_text(model_key(run_key, "ablation.json"), json.dumps(table, indent=2))
    with mlflow.start_run(run_id=final.info.run_id):
        mlflow.log_dict(table, "evaluation/ablation.json")
        mlflow.log_text(format_ablation(table), "evaluation/ablation.md")
        for row in rows[1:]:
            mlflow.log_metrics({f"ablation_without_{row['left_out']}_test_roc_auc": row["roc_auc"],
                                f"ablation_without_{row['left_out']}_test_brier": row["brier"]})
    log.info("run_ablation: %d retrainings in %.1fs", len(rows), time.perf_counter() - started)
    return table


def format_ablation(table: dict[str, Any]) -> str:
    """The ablation as a Markdown table, the families that matter most (largest ROC AUC loss) first."""
    reference, *rows = table["rows"]
    lines = ["| left out | columns | test ROC AUC | change | test Brier | change |",
             "|---|---:|---:|---:|---:|---:|",
             f"| {reference['left_out']} (all columns) | {reference['columns']} | {reference['roc_auc']:.4f} | | "
             f"{reference['brier']:.4f} | |"]
    for row in sorted(rows, key=lambda r: r["roc_auc_change"]):
        lines.append(f"| {row['left_out']} | {row['columns']} | {row['roc_auc']:.4f} | {row['roc_auc_change']:+.4f} "
                     f"| {row['brier']:.4f} | {row['brier_change']:+.4f} |")
    return "\n".join(lines)
