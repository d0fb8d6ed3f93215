"""Metrics against values computed by hand, calibration, and the baselines on a synthetic training set."""

from __future__ import annotations

import io
import math
from collections.abc import Callable

import numpy as np
import pandas as pd
import pytest

from pipelines.core.names import LABEL
from pipelines.core.settings import Settings
from pipelines.training import evaluation as E
from pipelines.training.ablation import ALL_FEATURES, ablate, format_ablation, run_ablation
from pipelines.training.columns import FEATURE_FAMILIES
from pipelines.training.fit import DEFAULT_PARAMS, time_split, train_model


def _mann_whitney_auc(y: np.ndarray, p: np.ndarray) -> float:
    ranks = pd.Series(p).rank().to_numpy()
    positives = y == 1
    n_pos, n_neg = positives.sum(), (~positives).sum()
    return float((ranks[positives].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def test_metrics_match_hand_computed_values() -> None:
    rng = np.random.default_rng(0)
    y = (rng.random(2000) < 0.3).astype(int)
    p = np.clip(0.3 + 0.2 * (y - 0.3) + rng.normal(0, 0.15, 2000), 0.01, 0.99)
    metrics = E.classification_metrics(y, p)
    assert metrics["roc_auc"] == pytest.approx(_mann_whitney_auc(y, p))
    assert metrics["brier"] == pytest.approx(np.mean((p - y) ** 2))
    assert metrics["log_loss"] == pytest.approx(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p)))
    assert metrics["positive_rate"] == pytest.approx(y.mean()) and metrics["n"] == 2000
    assert y.mean() < metrics["pr_auc"] < 1


def test_edge_cases_of_the_metrics() -> None:
    y = np.array([0, 0, 1, 1])
    assert E.classification_metrics(y, np.array([0.1, 0.2, 0.8, 0.9]))["roc_auc"] == 1.0
    assert E.classification_metrics(y, np.full(4, 0.5))["log_loss"] == pytest.approx(math.log(2))
    constant = E.classification_metrics(np.array([0, 1, 1, 1]), np.full(4, 0.75))
    assert constant["brier"] == pytest.approx(0.75 * 0.25) and constant["ece"] == pytest.approx(0.0)
    one_class = E.classification_metrics(np.zeros(5), np.full(5, 0.2))
    assert math.isnan(one_class["roc_auc"]) and math.isnan(one_class["pr_auc"])
    assert E.classification_metrics(np.array([0, 1]), np.array([0.0, 1.0]))["log_loss"] < 1e-6  # clipped, finite


@pytest.mark.parametrize("labels, predictions", [
    ([0, 1], [0.5]), ([0, 1], [0.5, float("nan")]), ([0, 1], [0.5, 1.5]), ([0, 2], [0.5, 0.5]), ([], []),
])
def test_bad_inputs_are_refused_with_a_reason(labels: list[float], predictions: list[float]) -> None:
    with pytest.raises(ValueError):
        E.classification_metrics(np.array(labels), np.array(predictions))


def test_calibration_table_and_error() -> None:
    rng = np.random.default_rng(1)
    p = rng.random(50_000)
    y = (rng.random(50_000) < p).astype(int)  # calibrated by construction
    table = E.calibration_table(y, p, bins=10)
    assert len(table) == 10 and sum(row["count"] for row in table) == 50_000
    assert E.expected_calibration_error(y, p) < 0.02
    assert E.expected_calibration_error(y, np.clip(p + 0.2, 0, 1)) > 0.15
    assert [row["bin_lower"] for row in E.calibration_table(y[:3], np.array([0.05, 0.05, 0.95]))] == [0.0, 0.9]


def test_calibration_figure_draws_each_model_and_the_diagonal() -> None:
    rng = np.random.default_rng(2)
    y = (rng.random(500) < 0.3).astype(int)
    figure = E.calibration_figure({"network": (y, rng.random(500)), "base_rate": (y, np.full(500, 0.3))})
    top, bottom = figure.axes
    assert [line.get_label() for line in top.get_lines()] == ["perfectly calibrated", "network", "base_rate"]
    assert len(bottom.patches) == 2  # one step histogram of predicted probabilities per model
    figure.savefig(io.BytesIO(), format="png")  # renders without pyplot (what mlflow.log_figure does)


def test_baselines_on_the_same_features(make_training_frame: Callable[..., pd.DataFrame]) -> None:
    train, _, test = time_split(make_training_frame(4000, days=40), valid_days=5, test_days=8)
    baselines = E.fit_baselines(train)
    assert set(baselines) == {"base_rate", "logistic_regression"}
    y = test[LABEL].to_numpy()
    metrics = E.evaluate_predictions(y, {name: model.predict_proba(test) for name, model in baselines.items()})
    assert np.all(baselines["base_rate"].predict_proba(test) == pytest.approx(train[LABEL].mean()))
    assert metrics["base_rate"]["roc_auc"] == 0.5  # a constant ranks nothing
    assert metrics["logistic_regression"]["roc_auc"] > 0.7
    assert metrics["logistic_regression"]["log_loss"] < metrics["base_rate"]["log_loss"]

    odd = test.head(5).assign(carrier="ZZ", route="JFK-XXX").drop(columns=["visib", "plane_type"])
    p = baselines["logistic_regression"].predict_proba(odd)
    assert p.shape == (5,) and np.all((p > 0) & (p < 1))


def test_baselines_refuse_to_predict_before_fit() -> None:
    with pytest.raises(RuntimeError):
        E.LogisticRegressionModel().predict_proba(pd.DataFrame())
    with pytest.raises(RuntimeError):
        E.BaseRateModel().predict_proba(pd.DataFrame())


def test_format_evaluation_names_every_model_and_the_verdict() -> None:
    row = {"roc_auc": 0.7, "pr_auc": 0.4, "log_loss": 0.5, "brier": 0.16, "ece": 0.02, "n": 1000.0}
    text = E.format_evaluation({"network": row | {"roc_auc": 0.72}, "base_rate": row | {"roc_auc": 0.5},
                                "logistic_regression": row})
    assert all(name in text for name in ("network", "base_rate", "logistic_regression"))
    assert "The network beats the logistic regression on ROC AUC (+0.0200)" in text
    worse = E.format_evaluation({"network": row | {"roc_auc": 0.69}, "logistic_regression": row})
    assert "does NOT beat" in worse and "(-0.0100)" in worse
    one_class = row | {"roc_auc": float("nan"), "pr_auc": float("nan")}
    undefined = E.format_evaluation({"network": one_class, "logistic_regression": one_class})
    assert "cannot be compared" in undefined and "beats" not in undefined
    assert "network" in E.format_evaluation({"network": row}).splitlines()[-1]  # no reference, no verdict line


def test_paired_bootstrap_interval_of_the_auc_difference() -> None:
    rng = np.random.default_rng(3)
    y = (rng.random(3000) < 0.3).astype(int)
    signal = y + rng.normal(0, 1, 3000)
    better = 1 / (1 + np.exp(-signal))
    worse = 1 / (1 + np.exp(-(signal + rng.normal(0, 2, 3000))))
    result = E.paired_bootstrap_auc_difference(y, better, worse, resamples=300)
    expected = _mann_whitney_auc(y, better) - _mann_whitney_auc(y, worse)
    assert result["difference"] == pytest.approx(expected)
    assert 0 < result["low"] < expected < result["high"]
    same = E.paired_bootstrap_auc_difference(y, better, better, resamples=50)
    assert same["difference"] == same["low"] == same["high"] == 0.0


FAST = DEFAULT_PARAMS | {"hidden_sizes": [32, 16], "dropout": 0.0, "lr": 3e-3, "batch_size": 256, "members": 1}


def test_ablation_finds_the_family_the_label_depends_on(make_training_frame: Callable[..., pd.DataFrame]) -> None:
    """The synthetic label rises steeply with the departure hour (the request family); the histories and the plane are
    noise there."""
    train, valid, test = time_split(make_training_frame(3000), valid_days=5, test_days=5)
    families = {name: FEATURE_FAMILIES[name] for name in ("route_history", "request", "plane")}
    rows = ablate(train, valid, test, FAST, families=families, max_epochs=8, patience=3)
    by_name = {row["left_out"]: row for row in rows}
    assert [row["left_out"] for row in rows] == [ALL_FEATURES, *families]
    assert by_name[ALL_FEATURES]["roc_auc_change"] == 0.0
    assert by_name["request"]["roc_auc_change"] < -0.05
    assert by_name["request"]["roc_auc_change"] == min(row["roc_auc_change"] for row in rows)
    assert by_name["plane"]["columns"] == by_name[ALL_FEATURES]["columns"] - len(FEATURE_FAMILIES["plane"])
    lines = format_ablation({"rows": rows}).splitlines()
    assert lines[0].startswith("| left out |") and len(lines) == 2 + len(rows)
    assert lines[2].startswith(f"| {ALL_FEATURES} (all columns) |")
    assert lines[3].startswith("| request |")  # the family that matters most comes first


def test_run_ablation_logs_the_table_on_the_final_run(settings: Settings,
                                                     make_training_frame: Callable[..., pd.DataFrame]) -> None:
    import mlflow

    from pipelines.core.lake import open_lake
    from pipelines.core.runs import run_slug
    from pipelines.training.datasets import SPLITS, model_key
    from pipelines.training.tracking import find_or_create_run, use_tracking

    run_key = "flight_delay_training/2013-03-31T00:00:00+00:00/manual__ablation"
    lake = open_lake(settings)
    splits = dict(zip(SPLITS, time_split(make_training_frame(1500, days=20), valid_days=4, test_days=4),
                      strict=True))
    for name, part in splits.items():
        buffer = io.BytesIO()
        part.to_parquet(buffer, index=False)
        lake.write_bytes(f"training/{run_slug(run_key)}/{name}.parquet", buffer.getvalue())
    lake.write_text(f"training/{run_slug(run_key)}/manifest.json", "{}")
    with pytest.raises(FileNotFoundError, match="no final model"):
        run_ablation(run_key, settings)
    model = train_model(splits["train"], splits["valid"], FAST, seed=0, max_epochs=2)
    lake.write_bytes(model_key(run_key, "model.pt"), model.to_bytes())
    final = find_or_create_run(use_tracking(settings), run_key, "final", run_name="final")

    table = run_ablation(run_key, settings, max_epochs=2, patience=1)
    assert table["params"] == model.params
    assert [row["left_out"] for row in table["rows"]] == [ALL_FEATURES, *FEATURE_FAMILIES]
    artifacts = {a.path for a in mlflow.MlflowClient().list_artifacts(final, "evaluation")}
    assert artifacts == {"evaluation/ablation.json", "evaluation/ablation.md"}
    metrics = mlflow.get_run(final).data.metrics
    assert metrics["ablation_without_weather_test_roc_auc"] == pytest.approx(table["rows"][1]["roc_auc"])
    assert {f"ablation_without_{name}_test_brier" for name in FEATURE_FAMILIES} <= set(metrics)
    assert lake.exists(model_key(run_key, "ablation.json"))
