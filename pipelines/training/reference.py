"""The monitoring reference of a training run: a fixed-seed sample of its train split (model inputs, score, label)
with per-feature drift thresholds calibrated on the split's own days (``pipelines.monitoring.report`` explains why).

The calibration scores each training day with ``drift_score``: the two distances the monitoring report pins
(Evidently's normed Wasserstein distance and Jensen-Shannon distance, as Evidently 0.7 defines them), computed
with numpy and scipy, each reference column prepared once for all the days (``ReferenceColumn``). Running
Evidently's ``Report`` per day gives the same numbers through its public API but draws a plot for every column and
day (~10 times slower: about 3 minutes per registration instead of 20 s);
``tests/unit/test_monitoring.py`` checks that both give the same score for the same day.
"""

from __future__ import annotations

import logging
import math
import time
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from pipelines.core.lake import settings_and_lake
from pipelines.core.names import LABEL
from pipelines.core.settings import Settings
from pipelines.training.columns import CATEGORICAL_COLUMNS, NUMERIC_COLUMNS, categorical_values

if TYPE_CHECKING:
    pass

log = logging.getLogger(__name__)

PREDICTION = "prediction"
ID_COLUMN = "flight_id"

FEATURES: tuple[str, ...] = CATEGORICAL_COLUMNS + NUMERIC_COLUMNS
"""The model's inputs (what the reference and a served frame hold, beside the id, the score and the label)."""
NOT_DRIFT_TESTED: dict[str, str] = {
    "dep_weekday": "one value per day by the calendar: every day differs from a reference spread over the week",
}
"""Model inputs left out of the drift share, with the reason (reported in every summary)."""
DRIFT_FEATURES: tuple[str, ...] = tuple(c for c in FEATURES if c not in NOT_DRIFT_TESTED)
METHODS = {"categorical": "jensenshannon", "numerical": "wasserstein"}
"""Distances, not p-value tests: their size is the size of the shift, whatever the number of flights."""
THRESHOLD_FLOOR = 0.1
"""Evidently's default threshold of both distances: no calibrated threshold is lower."""
CALIBRATION_QUANTILE = 0.95
CALIBRATION_MIN_FLIGHTS = 100
"""Training days with fewer flights (a partial day) do not take part in the calibration."""
REFERENCE_ROWS = 10_000
REFERENCE_SEED = 0


# --- frames -------------------------------------------------------------------------------------------------------

def feature_frame(frame: pd.DataFrame, prediction: Any = None) -> pd.DataFrame:
    """``frame``'s flight id, the model's input features typed as the model reads them (categoricals as text, with
    ``dest`` from ``route`` when absent; numerics as float), the score ``prediction`` (given, or the frame's
    column) and the label when the frame has it."""
    out = pd.DataFrame(index=frame.index)
    out[ID_COLUMN] = frame[ID_COLUMN].astype(str) if ID_COLUMN in frame.columns else None
    for column in CATEGORICAL_COLUMNS:
        out[column] = categorical_values(frame, column)
    for column in NUMERIC_COLUMNS:
        out[column] = pd.to_numeric(frame[column], errors="coerce").astype("float64") if column in frame.columns \
            else np.nan
    if prediction is None and PREDICTION in frame.columns:
        prediction = frame[PREDICTION]
    out[PREDICTION] = np.asarray(prediction, dtype="float64") if prediction is not None else np.nan
    if LABEL in frame.columns:
        out[LABEL] = frame[LABEL].astype("int64")
    return out.reset_index(drop=True)


def flight_dates(frame: pd.DataFrame) -> pd.Series:
    """The New York date of each flight, from its id (``2013-07-15:B6725:JFK``)."""
    return frame[ID_COLUMN].astype(str).str.slice(0, 10)


# --- the reference ------------------------------------------------------------------------------------------------

def reference_key(run_key: str) -> str:
    from pipelines.training.datasets import model_key

    return model_key(run_key, "reference.parquet")


def method_of(column: str) -> str:
    return METHODS["categorical"] if column in CATEGORICAL_COLUMNS else METHODS["numerical"]


WASSERSTEIN_NORM_FLOOR = 0.001
"""Evidently's floor for the reference's standard deviation that normalizes the Wasserstein distance."""


def _finite(values: pd.Series) -> pd.Series:
    """``values`` without nulls and infinities (Evidently drops both before a drift test)."""
    values = values[values.notna()]
    if pd.api.types.is_numeric_dtype(values):
        return values[np.isfinite(values.to_numpy(dtype="float64"))]
    return values[~values.isin([np.inf, -np.inf])]


class ReferenceColumn:
    """One reference column prepared once for the drift scores of many days (the calibration scores every
    training day, a year of them, against the same reference): its values sorted and its spread
    (``wasserstein``), or its value counts (``jensenshannon``). ``score`` is ``drift_score``'s number."""

    def __init__(self, reference: pd.Series, method: str) -> None:
        if method not in METHODS.values():
            raise ValueError(f"unknown drift method {method!r}; expected one of "
                             f"{', '.join(sorted(set(METHODS.values())))}")
        self.method = method
        clean = _finite(reference)
        if method == "wasserstein":
            self.sorted = np.sort(clean.to_numpy(dtype="float64"), kind="mergesort")
            self.norm = max(float(np.std(self.sorted)), WASSERSTEIN_NORM_FLOOR)
        else:
            self.counts = clean.value_counts()
            self.size = len(clean)

    def score(self, current: pd.Series) -> float:
        current = _finite(current)
        if self.method == "wasserstein":
            return self._wasserstein(np.sort(current.to_numpy(dtype="float64"), kind="mergesort")) / self.norm
        from scipy.spatial.distance import jensenshannon

        counts = current.value_counts()
        keys = self.counts.index.union(counts.index, sort=False)
        return float(jensenshannon(self.counts.reindex(keys, fill_value=0).to_numpy(dtype="float64") / self.size,
                                   counts.reindex(keys, fill_value=0).to_numpy(dtype="float64") / len(current)))

    def _wasserstein(self, current: np.ndarray) -> float:
        """The first Wasserstein distance of the two samples, as ``scipy.stats.wasserstein_distance`` computes it
        (the integral of the distance between their step CDFs), from sorted values."""
        both = np.sort(np.concatenate((self.sorted, current)), kind="mergesort")
        steps = both[:-1]
        reference_cdf = self.sorted.searchsorted(steps, "right") / self.sorted.size
        current_cdf = current.searchsorted(steps, "right") / current.size
        # A sum of products, not np.dot: BLAS's threads cost milliseconds a call on busy cores (airflow_config)
        return float((np.abs(reference_cdf - current_cdf) * np.diff(both)).sum())


def drift_score(reference: pd.Series, current: pd.Series, method: str) -> float:
    """The drift score of ``current`` against ``reference`` by ``method``, as Evidently 0.7's ``ValueDrift``
    computes it: nulls and infinities dropped; ``wasserstein``: the first Wasserstein distance over the reference's
    standard deviation (at least ``WASSERSTEIN_NORM_FLOOR``); ``jensenshannon`` (categorical): the Jensen-Shannon
    distance of the two frequency distributions over the values either side has."""
    return ReferenceColumn(reference, method).score(current)


def calibrate_thresholds(reference: pd.DataFrame, days: pd.DataFrame, quantile: float = CALIBRATION_QUANTILE,
                         columns: tuple[str, ...] = (*DRIFT_FEATURES, PREDICTION)) -> dict[str, Any]:
    """Per column, the drift score (``drift_score``, the pinned method, the number ``build_report``'s Evidently run
    gives) of each whole day of ``days`` against ``reference``; the threshold is its ``quantile``, never below
    ``THRESHOLD_FLOOR``."""
    by_day = [part for _, part in days.groupby(flight_dates(days), sort=True) if len(part) >= CALIBRATION_MIN_FLIGHTS]
    prepared = {c: ReferenceColumn(reference[c], method_of(c)) for c in columns if _has_values(reference[c])}
    per_day = [{c: column.score(part[c]) for c, column in prepared.items() if _has_values(part[c])}
               for part in by_day]
    thresholds: dict[str, float] = {}
    spread: dict[str, dict[str, float]] = {}
    for column in columns:
        scores = [day[column] for day in per_day if column in day]
        finite = [s for s in scores if math.isfinite(s)]
        level = float(np.quantile(finite, quantile)) if finite else THRESHOLD_FLOOR
        thresholds[column] = round(max(THRESHOLD_FLOOR, level), 4)
        if finite:
            spread[column] = {"median": round(float(np.median(finite)), 4), "max": round(max(finite), 4)}
    return {"quantile": quantile, "days": len(by_day), "floor": THRESHOLD_FLOOR,
            "methods": {c: method_of(c) for c in columns}, "thresholds": thresholds, "day_scores": spread}


def _has_values(column: pd.Series) -> bool:
    """Anything for a drift test to compare: Evidently drops nulls and infinities, and refuses an empty column."""
    return bool(len(_finite(column)))


def training_reference(run_key: str, settings: Settings | None = None, rows: int = REFERENCE_ROWS) -> pd.DataFrame:
    """The run's training reference: a fixed-seed sample of ``rows`` flights of its train split, with the model's
    input features, its score (``prediction``) and the label, and per-feature drift thresholds calibrated on the
    train split's days in ``frame.attrs["monitoring"]`` (kept by ``to_parquet``)."""
    from pipelines.training.datasets import read_splits
    from pipelines.training.steps import load_model

    settings, _ = settings_and_lake(settings)
    started = time.perf_counter()
    train = read_splits(run_key, settings)["train"]
    scored = feature_frame(train, load_model(run_key, settings).predict_proba(train))
    sample = scored.sample(n=min(rows, len(scored)), random_state=REFERENCE_SEED).sort_values(ID_COLUMN)
    sample = sample.reset_index(drop=True)
    calibration = calibrate_thresholds(sample, scored)
    sample.attrs["monitoring"] = {"run_key": run_key, "rows": len(sample), "train_rows": len(scored),
                                  "seed": REFERENCE_SEED, "calibration": calibration}
    log.info("training_reference: %d of %d training flights, thresholds calibrated on %d days (%.1fs)",
             len(sample), len(scored), calibration["days"], time.perf_counter() - started)
    return sample


def save_reference(run_key: str, settings: Settings | None = None, rows: int = REFERENCE_ROWS) -> str:
    """``training_reference`` written to ``reference_key(run_key)``; returns its URL."""
    settings, lake = settings_and_lake(settings)
    lake.write_parquet(reference_key(run_key), training_reference(run_key, settings, rows=rows))
    return lake.url(reference_key(run_key))


def load_reference(run_key: str, settings: Settings | None = None) -> pd.DataFrame:
    """The reference stored with the run's model (with its calibration in ``attrs``)."""
    settings, lake = settings_and_lake(settings)
    key = reference_key(run_key)
    if not lake.exists(key):
        raise FileNotFoundError(f"no monitoring reference for run {run_key} at {lake.url(key)}: the model was "
                                "registered before references were saved; run save_reference")
    return lake.read_parquet(key)


def calibration_of(reference: pd.DataFrame) -> dict[str, Any] | None:
    calibration = reference.attrs.get("monitoring", {}).get("calibration")
    return calibration if isinstance(calibration, dict) and calibration.get("thresholds") else None
