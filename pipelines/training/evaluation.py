"""How good a disruption model is, measured the same way for the network and its baselines.

Metrics: ROC AUC and PR AUC (ranking), log loss and Brier score (probabilities), expected calibration error and a
reliability diagram (calibration). Baselines, trained on the same features and split as the network: the base rate
(a constant: what "no model" scores) and a logistic regression on the network's own preprocessing (one-hot
categoricals, standardized numerics), which a neural network has to beat to be worth its cost.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Protocol

import numpy as np
import pandas as pd

from pipelines.core.names import LABEL

if TYPE_CHECKING:
    from matplotlib.figure import Figure
    from sklearn.linear_model import LogisticRegression

    from pipelines.training.preprocessing import Preprocessor

log = logging.getLogger(__name__)

EPSILON = 1e-7
MAX_ITER = 2000
"""lbfgs converges in about 30 iterations on ~60k rows x ~70 columns; the margin is for real data's larger
vocabularies, and a warning is logged if it is ever reached."""


class Predictor(Protocol):
    """What the evaluation needs from any model, the network's wrapper included: a name for the report and
    P(disrupted) per row of a training-set shaped frame."""

    name: str

    def predict_proba(self, frame: pd.DataFrame) -> np.ndarray: ...


def _checked(y: np.ndarray, p: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    y, p = np.asarray(y, dtype=np.float64).ravel(), np.asarray(p, dtype=np.float64).ravel()
    if y.shape != p.shape:
        raise ValueError(f"{len(y)} labels but {len(p)} predictions")
    if not len(y):
        raise ValueError("no rows to evaluate")
    if not np.all(np.isfinite(p)) or np.any((p < 0) | (p > 1)):
        raise ValueError("predictions must be probabilities in [0, 1] (found NaN, inf or out of range)")
    if not np.all(np.isin(y, (0.0, 1.0))):
        raise ValueError("labels must be 0 or 1")
    return y, p


def calibration_table(y: np.ndarray, p: np.ndarray, bins: int = 10) -> list[dict[str, float]]:
    """Equal-width probability bins (non-empty only): mean predicted probability against the observed rate."""
    y, p = _checked(y, p)
    index = np.minimum((p * bins).astype(int), bins - 1)
    table = []
    for b in range(bins):
        inside = index == b
        if inside.any():
            table.append({"bin_lower": b / bins, "bin_upper": (b + 1) / bins,
                          "mean_predicted": float(p[inside].mean()), "observed_rate": float(y[inside].mean()),
                          "count": int(inside.sum())})
    return table


def expected_calibration_error(y: np.ndarray, p: np.ndarray, bins: int = 10) -> float:
    """Count-weighted mean gap between predicted and observed rates over the calibration bins."""
    table = calibration_table(y, p, bins)
    total = sum(row["count"] for row in table)
    return float(sum(row["count"] * abs(row["observed_rate"] - row["mean_predicted"]) for row in table) / total)


def classification_metrics(y: np.ndarray, p: np.ndarray) -> dict[str, float]:
    """ROC AUC, PR AUC (average precision), log loss, Brier, ECE, positive rate, mean prediction and n.
    With a single class in ``y`` the ranking metrics are undefined and reported as NaN."""
    from sklearn.metrics import average_precision_score, roc_auc_score

    y, p = _checked(y, p)
    two_classes = 0 < y.sum() < len(y)
    clipped = np.clip(p, EPSILON, 1 - EPSILON)
    return {
        "roc_auc": float(roc_auc_score(y, p)) if two_classes else float("nan"),
        "pr_auc": float(average_precision_score(y, p)) if two_classes else float("nan"),
        "log_loss": float(-np.mean(y * np.log(clipped) + (1 - y) * np.log(1 - clipped))),
        "brier": float(np.mean((p - y) ** 2)),
        "ece": expected_calibration_error(y, p),
        "positive_rate": float(y.mean()),
        "mean_prediction": float(p.mean()),
        "n": float(len(y)),
    }


def evaluate_predictions(y: np.ndarray, predictions: dict[str, np.ndarray]) -> dict[str, dict[str, float]]:
    """``classification_metrics`` per model name, on the same labels, so the rows of the report are comparable."""
    return {name: classification_metrics(y, p) for name, p in predictions.items()}


def _auc(y: np.ndarray, p: np.ndarray) -> float:
    """ROC AUC by the Mann-Whitney rank formula (ties get average ranks): fast enough to bootstrap."""
    from scipy.stats import rankdata

    positives = y == 1
    n_pos = int(positives.sum())
    n_neg = len(y) - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    return float((rankdata(p)[positives].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def paired_bootstrap_auc_difference(y: np.ndarray, p_a: np.ndarray, p_b: np.ndarray, *, resamples: int = 1000,
                                    confidence: float = 0.95, seed: int = 0) -> dict[str, float]:
    """ROC AUC of model a minus model b on the same flights, with a percentile interval from resampling the
    flights (both models scored on each resample, so what they share cancels out)."""
    y, p_a = _checked(y, p_a)
    _, p_b = _checked(y, p_b)
    rng = np.random.default_rng(seed)
    differences = np.empty(resamples)
    for i in range(resamples):
        index = rng.integers(0, len(y), len(y))
        differences[i] = _auc(y[index], p_a[index]) - _auc(y[index], p_b[index])
    tail = (1 - confidence) / 2 * 100
    low, high = np.nanpercentile(differences, [tail, 100 - tail])
    return {"difference": _auc(y, p_a) - _auc(y, p_b), "low": float(low), "high": float(high),
            "confidence": confidence, "resamples": float(resamples)}


def calibration_figure(curves: dict[str, tuple[np.ndarray, np.ndarray]],
                       title: str = "Calibration on the test window") -> Figure:
    """Reliability diagram (one line per model, the diagonal is perfect calibration) over a histogram of each
    model's predicted probabilities. Built without pyplot so it is safe in workers and threads."""
    from matplotlib.figure import Figure

    figure = Figure(figsize=(7, 8), layout="constrained")
    top, bottom = figure.subplots(2, 1, height_ratios=[3, 1], sharex=True)
    top.plot([0, 1], [0, 1], linestyle="--", color="grey", label="perfectly calibrated")
    for name, (y, p) in curves.items():
        table = calibration_table(y, p)
        top.plot([r["mean_predicted"] for r in table], [r["observed_rate"] for r in table], marker="o", label=name)
        bottom.hist(np.asarray(p), bins=20, range=(0, 1), histtype="step", label=name)
    top.set(title=title, ylabel="observed disruption rate", xlim=(0, 1), ylim=(0, 1))
    top.legend(loc="upper left")
    bottom.set(xlabel="predicted disruption probability", ylabel="flights")
    return figure


class BaseRateModel:
    """The training positive rate for every flight: the score of knowing nothing about the flight."""

    name = "base_rate"

    def __init__(self) -> None:
        self.rate: float | None = None

    def fit(self, train: pd.DataFrame) -> BaseRateModel:
        self.rate = float(train[LABEL].mean())
        return self

    def predict_proba(self, frame: pd.DataFrame) -> np.ndarray:
        if self.rate is None:
            raise RuntimeError("BaseRateModel.predict_proba called before fit")
        return np.full(len(frame), self.rate)


class LogisticRegressionModel:
    """A linear model on the network's own inputs: one-hot categorical indices (index 0, unknown, is its own
    column) next to the standardized numerics and missing indicators. Unweighted, so its probabilities stay
    calibrated."""

    name = "logistic_regression"

    def __init__(self, C: float = 1.0) -> None:  # noqa: N803 - scikit-learn's name
        self.C = C
        self.preprocessor: Preprocessor | None = None
        self.model: LogisticRegression | None = None

    def _design(self, frame: pd.DataFrame) -> object:
        from scipy import sparse

        if self.preprocessor is None:
            raise RuntimeError("fit the baseline before scoring with it")
        cat, num = self.preprocessor.transform(frame)
        cat_np, num_np = cat.numpy(), num.numpy().astype(np.float64)
        offsets = np.cumsum([0, *self.preprocessor.cardinalities[:-1]])
        rows = np.repeat(np.arange(len(frame)), cat_np.shape[1])
        columns = (cat_np + offsets).ravel()
        onehot = sparse.csr_matrix((np.ones(len(columns)), (rows, columns)),
                                   shape=(len(frame), sum(self.preprocessor.cardinalities)))
        return sparse.hstack([onehot, sparse.csr_matrix(num_np)], format="csr")

    def fit(self, train: pd.DataFrame) -> LogisticRegressionModel:
        from sklearn.linear_model import LogisticRegression

        from pipelines.training.preprocessing import Preprocessor  # torch: not for the metrics' callers

        self.preprocessor = Preprocessor().fit(train)
        model = LogisticRegression(C=self.C, max_iter=MAX_ITER)
        model.fit(self._design(train), train[LABEL].astype(int).to_numpy())
        iterations = int(np.max(model.n_iter_))
        if iterations >= MAX_ITER:
            # A baseline stopped early would understate what a linear model can do and flatter the network.
            log.warning("logistic regression did not converge in %d iterations", MAX_ITER)
        log.info("logistic regression baseline: %d rows, %d columns, %d iterations", len(train),
                 len(model.coef_[0]), iterations)
        self.model = model
        return self

    def predict_proba(self, frame: pd.DataFrame) -> np.ndarray:
        if self.model is None:
            raise RuntimeError("LogisticRegressionModel.predict_proba called before fit")
        return np.asarray(self.model.predict_proba(self._design(frame))[:, 1], dtype=np.float64)


def fit_baselines(train: pd.DataFrame) -> dict[str, Predictor]:
    """The base rate and the logistic regression, fitted on the network's training frame (same features, same
    split), keyed by their ``name``."""
    return {model.name: model.fit(train) for model in (BaseRateModel(), LogisticRegressionModel())}


def format_evaluation(metrics: dict[str, dict[str, float]], reference: str = "logistic_regression",
                      comparison: dict[str, float] | None = None) -> str:
    """A terminal table of the models' test metrics and a line on whether the network beats the reference, with
    the paired bootstrap interval of the difference when ``comparison`` gives it."""
    header = f"  {'model':<22}{'ROC AUC':>9}{'PR AUC':>9}{'log loss':>10}{'Brier':>9}{'ECE':>9}{'flights':>9}"
    lines = [header]
    for name, m in metrics.items():
        lines.append(f"  {name:<22}{m['roc_auc']:>9.4f}{m['pr_auc']:>9.4f}{m['log_loss']:>10.4f}{m['brier']:>9.4f}"
                     f"{m['ece']:>9.4f}{int(m['n']):>9,}")
    if "network" in metrics and reference in metrics:
        gap = metrics["network"]["roc_auc"] - metrics[reference]["roc_auc"]
        against = f"the {reference.replace('_', ' ')} on ROC AUC"
        if np.isnan(gap):  # a single-class test window: ranking is undefined, so there is no verdict
            lines.append(f"  The network cannot be compared with {against} (undefined on one class).")
        else:
            verdict = "beats" if gap > 0 else "does NOT beat"
            interval = ""
            if comparison is not None:
                interval = (f", {comparison['confidence']:.0%} paired bootstrap interval "
                            f"[{comparison['low']:+.4f}, {comparison['high']:+.4f}]")
            lines.append(f"  The network {verdict} {against} ({gap:+.4f}{interval}).")
    return "\n".join(lines)
