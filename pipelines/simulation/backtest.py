"""What retraining is worth: three retraining policies replayed on 2013 by the same training code, outside Airflow.

Every flight of April 1 .. December 31 is scored by the model each policy has live on the flight's (New York) day,
from the year's point-in-time training set (``pipelines.features.store.training_set``, built once), and the
policies are compared month by month: ROC AUC, Brier score, flights, trainings and adopted trainings.

* **frozen**: the first champion, trained on January to March (the demo window: train / validation / test split by
  ``pipelines.training.fit.time_split`` as the training DAG splits it), serves the whole year. It never trains.
* **weekly**: every Monday from April 1 (the training DAG's cron, ``0 6 * * 1``, before the day's flights) a model
  is trained on the year before (the DAG's ``window_days``, ``DEFAULT_WINDOW_DAYS``) and judged by the promotion gate
  (``pipelines.registry.gate.decide``) on its own test window against the current champion; it serves from that
  Monday only when the gate promotes it.
* **drift**: after each day, the day's monitoring summary feeds ``pipelines.monitoring.retrain.decide_retrain`` with
  the default ``MonitoringPolicy``: data drift of the day's served features against the current champion's training
  reference, and quality on the trailing 7 days of matured labels against the champion's test-window figures, with
  the 7-day cooldown between requests. A request trains on the window it names (the year before the monitored
  day) and the model, once through the gate, serves from the next day.

All three start from the same first champion and train with the same function (``pipelines.training.fit
.train_model``, the DAG's ``max_epochs`` 30 and patience 5, seed 0). **No Optuna tuning**: every training takes the
defaults (``pipelines.training.fit.DEFAULT_PARAMS``, the tuner's first trial). Tuning 20 trials per training would
multiply the cost twentyfold (the weekly policy alone trains 40 times); the live year tunes, so its models may score
a little better than these, alike for every policy. A model trained on the same window is the same model (same rows,
same seed), so it is trained once and shared by the policies that ask for it.

The monitoring of the drift policy is the daily report's (``pipelines.monitoring.report.build_report``), built from
the same parts: the reference is ``pipelines.training.reference``'s (10,000 training flights, seed 0, thresholds
calibrated on the train split's days), the quality is ``classification_metrics`` on the labelled window rounded as
the summary rounds it. Only the drift test itself is computed without Evidently's ``Report``: each feature's score
is ``reference.drift_score`` (Evidently 0.7's normed Wasserstein and Jensen-Shannon distances, computed with scipy;
``tests/unit/test_monitoring.py`` proves them equal to Evidently's ``ValueDrift``) and a feature drifts when its
score reaches its threshold, Evidently's rule for both distances (``drift_summary``). Checked against
``build_report`` on 2013-04-02, 06-25, 07-15, 10-01 and 12-20 with the first champion: the same drift share, the
same drifted features, the same prediction drift, quality and retraining decision; 0.3-0.7 s a day instead of
8-14 s (Evidently's report draws every column; 275 days would take about 45 minutes).

Cost, measured on 2 cores while another process (an Airflow replay) kept them busy: ``prepare_year`` on an empty
lake 589 s (GX validation of 730 partitions 476 s, the features 72 s), about 10 s on a prepared one; the backtest
35 minutes: the year's training set 128 s, 72 trainings 922 s (8-30 epochs, 13 s on average), the gate's paired
bootstrap about 4 s a training, the 28 monitoring references of the drift policy's champions 634 s (scipy's
Wasserstein distance in ``reference.calibrate_thresholds``), the 275 monitored days about 100 s. Torch trains on one
thread (``pipelines.training.network.CPU_THREADS``). The same inputs give the same table: a second process replaying
April from a training set built by another process reproduced April's rows and every training to the digit.

No model ever serves a day inside or before its own training window: a scored day after the window's end is checked
before every day's scoring (``LookAheadError``). The results go to ``reports/backtest/`` in the lake:
``policies.json`` (the table, every training with the gate's reasons, each policy's model per day, the drift
policy's daily decisions), ``policies.csv`` (the table) and ``roc_auc.png``.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import date, timedelta
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
import pandas as pd

from pipelines.core.dates import DEFAULT_WINDOW_DAYS, date_range
from pipelines.core.lake import settings_and_lake
from pipelines.core.names import FEED_TABLES, LABEL
from pipelines.core.settings import Settings
from pipelines.monitoring.retrain import MonitoringPolicy, decide_retrain

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from pipelines.registry.gate import GatePolicy

log = logging.getLogger(__name__)

POLICIES = ("frozen", "weekly", "drift")
REPORT_PREFIX = "reports/backtest"
REPORT_FILES = {"json": "policies.json", "csv": "policies.csv", "png": "roc_auc.png"}
ALL_MONTHS = "all"
"""The ``month`` of the table's row that pools every scored flight."""


@dataclass(frozen=True)
class BacktestConfig:
    """The replay's calendar and the training settings every policy shares (the training DAG's defaults)."""

    first_window: tuple[date, date] = (date(2013, 1, 1), date(2013, 3, 31))
    """The first champion's training window (the demo window): the frozen model, and where the others start."""
    end: date = date(2013, 12, 31)
    """The last scored day; scoring starts the day after ``first_window``."""
    window_days: int = DEFAULT_WINDOW_DAYS
    valid_days: int = 14
    test_days: int = 14
    max_epochs: int = 30
    patience: int = 5
    seed: int = 0
    retrain_weekday: int = 0
    """The weekly policy's day (Monday, as the training DAG's cron ``0 6 * * 1``): trained before its flights."""

    @property
    def start(self) -> date:
        return self.first_window[1] + timedelta(days=1)

    def scored_days(self) -> list[date]:
        return date_range(self.start, self.end)


class LookAheadError(RuntimeError):
    """A model was about to serve a day inside or before its own training window."""


class Predictor(Protocol):
    def predict_proba(self, frame: pd.DataFrame) -> np.ndarray: ...


@dataclass
class Candidate:
    """A model trained on a window, with what the gate and monitoring need of it: its train split (for the
    monitoring reference), its test split (the gate's window) and the network's metrics there (the "training"
    figures monitoring compares quality with)."""

    window: tuple[date, date]
    predictor: Predictor
    train: pd.DataFrame
    test: pd.DataFrame
    metrics: dict[str, float]
    info: dict[str, Any] = field(default_factory=dict)
    """How the training went (seconds, best epoch, rows), for the record."""

    @property
    def name(self) -> str:
        return f"{self.window[0]}..{self.window[1]}"


Trainer = Callable[[Sequence[date]], Candidate]
"""Trains a model on the given days (the window), the way every policy does."""
Monitor = Callable[[Candidate, date, pd.DataFrame, pd.DataFrame | None], dict[str, Any]]
"""The day's monitoring summary (without the retraining decision) of the champion, for the day's served flights
(model inputs and ``prediction``) and the labelled trailing window (``None`` when nothing is labelled)."""


# --- preparing the lake -------------------------------------------------------------------------------------------

def prepare_year(settings: Settings | None = None, start: date = date(2013, 1, 1),
                 end: date = date(2013, 12, 31)) -> dict[str, Any]:
    """What the backtest reads, made by the pipeline's own steps, without Airflow, where the lake lacks it: the
    feed landed, ingested, validated (GX) and promoted for days with no verdict yet (validated or quarantined),
    the feature tables built when any day lacks them (or anything was just validated), and ``feature_repo/``
    applied to the Feast registry. Validating the whole year takes about 8 minutes on 2 cores; a lake that has it
    costs a few seconds."""
    from pipelines.features.steps import FEATURE_TABLES, build_features, feature_key
    from pipelines.features.store import apply_definitions, open_store
    from pipelines.ingest.steps import ingest_feed
    from pipelines.simulation.feed import land_feed
    from pipelines.validation.steps import promote_partitions, validate_partitions

    settings, lake = settings_and_lake(settings)
    days = date_range(start, end)
    started = time.perf_counter()
    judged = {table: set(lake.partitions("validated", table)) | set(lake.partitions("quarantine", table))
              for table in FEED_TABLES}
    missing = [d for d in days if any(d not in judged[table] for table in FEED_TABLES)]
    steps: dict[str, Any] = {}
    if missing:
        log.info("prepare_year: %d of %d days have no verdict yet: land, ingest, validate and promote them",
                 len(missing), len(days))
        mark = time.perf_counter()
        land_feed(missing, settings)
        steps["land_seconds"] = round(time.perf_counter() - mark, 1)
        steps["ingest_seconds"] = ingest_feed(missing, settings)["seconds"]
        validated = validate_partitions(missing, settings, run_key="backtest/prepare_year")
        steps["validation"] = {k: validated[k] for k in ("passed", "warned", "quarantined", "seconds")}
        steps["quarantined"] = sorted(promote_partitions(missing, settings)["quarantined"])
    present = set(lake.partitions("validated", "flights"))
    # Weather tables exist only for days with validated weather; the plane snapshot is not daily.
    daily = [t for t in FEATURE_TABLES if t not in ("plane_attributes", "weather_hourly")]
    unbuilt = [d for d in days if d in present and not all(lake.exists(feature_key(t, d)) for t in daily)]
    if missing or unbuilt:
        steps["features_seconds"] = build_features(days, settings)["seconds"]
    apply_definitions(open_store(settings))
    result = {"days": len(days), "prepared_days": len(missing), "validated_days": len(present & set(days)),
              "steps": steps, "seconds": round(time.perf_counter() - started, 1)}
    log.info("prepare_year: %s", result)
    return result


def year_training_set(settings: Settings | None = None, start: date = date(2013, 1, 1),
                      end: date = date(2013, 12, 31)) -> pd.DataFrame:
    """The point-in-time training set of every validated flight of ``start`` .. ``end`` (Feast), once: a window's
    rows are the same whether built for the window or cut from the year (each row's features depend only on its
    own prediction time)."""
    from pipelines.features.store import training_set

    settings, lake = settings_and_lake(settings)
    days = [d for d in date_range(start, end) if d in set(lake.partitions("validated", "flights"))]
    if not days:
        raise FileNotFoundError(f"no validated flights between {start} and {end}: run prepare_year first")
    started = time.perf_counter()
    frame = training_set(days, settings)
    log.info("year_training_set: %d flights over %d days (%.1fs)", len(frame), len(days),
             time.perf_counter() - started)
    return frame


def flights_by_day(frame: pd.DataFrame) -> dict[date, pd.DataFrame]:
    """The training-set rows of each New York day (from the flight id, ``2013-07-15:B6725:JFK``), in id order."""
    days = frame["flight_id"].astype(str).str.slice(0, 10)
    return {date.fromisoformat(str(day)): part for day, part in frame.groupby(days, sort=True)}


# --- training -----------------------------------------------------------------------------------------------------

def network_trainer(by_day: dict[date, pd.DataFrame], config: BacktestConfig | None = None) -> Trainer:
    """The training DAG's final training without tuning: the window's rows split by ``time_split``, the network
    trained by ``train_model`` with the default parameters, and its metrics on the test split."""
    from pipelines.training.evaluation import classification_metrics
    from pipelines.training.fit import DEFAULT_PARAMS, time_split, train_model
    from pipelines.training.network import pick_device

    config = config or BacktestConfig()

    def train(days: Sequence[date]) -> Candidate:
        days = sorted(days)
        parts = [by_day[d] for d in days if d in by_day]
        if not parts:
            raise ValueError(f"no flights between {days[0]} and {days[-1]}")
        started = time.perf_counter()
        train_split, valid, test = time_split(pd.concat(parts, ignore_index=True), valid_days=config.valid_days,
                                              test_days=config.test_days)
        model = train_model(train_split, valid, dict(DEFAULT_PARAMS), seed=config.seed, max_epochs=config.max_epochs,
                            patience=config.patience, device=pick_device())
        metrics = classification_metrics(test[LABEL].to_numpy(), model.predict_proba(test))
        info = {"seconds": round(time.perf_counter() - started, 1), "best_epoch": model.best_epoch,
                "epochs": len(model.history), "rows": {"train": len(train_split), "valid": len(valid),
                                                       "test": len(test)}}
        return Candidate(window=(days[0], days[-1]), predictor=model, train=train_split, test=test,
                         metrics=metrics, info=info)

    return train


def shared(trainer: Trainer) -> Trainer:
    """``trainer`` trained once per window: the policies asking for the same window get the same model."""
    trained: dict[tuple[date, ...], Candidate] = {}

    def train(days: Sequence[date]) -> Candidate:
        key = tuple(sorted(days))
        if key not in trained:
            trained[key] = trainer(key)
        else:
            log.info("training on %s..%s: the model trained earlier on the same window", key[0], key[-1])
        return trained[key]

    return train


# --- monitoring (the drift policy) --------------------------------------------------------------------------------

def monitoring_reference(candidate: Candidate) -> pd.DataFrame:
    """The candidate's monitoring reference, as ``pipelines.training.reference.training_reference`` builds it
    from a registered run: a fixed-seed sample of its scored train split, thresholds calibrated on its days."""
    from pipelines.training.reference import (
        ID_COLUMN,
        REFERENCE_ROWS,
        REFERENCE_SEED,
        calibrate_thresholds,
        feature_frame,
    )

    scored = feature_frame(candidate.train, candidate.predictor.predict_proba(candidate.train))
    sample = scored.sample(n=min(REFERENCE_ROWS, len(scored)), random_state=REFERENCE_SEED).sort_values(ID_COLUMN)
    sample = sample.reset_index(drop=True)
    calibration = calibrate_thresholds(sample, scored)
    sample.attrs["monitoring"] = {"run_key": candidate.name, "rows": len(sample), "train_rows": len(scored),
                                  "seed": REFERENCE_SEED, "calibration": calibration}
    return sample


def _rounded(value: Any, digits: int = 4) -> float | None:
    return None if value is None or not math.isfinite(float(value)) else round(float(value), digits)


def drift_summary(reference: pd.DataFrame, current: pd.DataFrame, labelled: pd.DataFrame | None,
                  training_metrics: dict[str, Any], day: date,
                  policy: MonitoringPolicy | None = None) -> dict[str, Any]:
    """The fields of ``build_report``'s summary that ``decide_retrain`` reads, computed as it computes them, with
    each feature's drift test as Evidently runs it (``reference.drift_score`` at or above the calibrated
    threshold) but without Evidently's report (no HTML, no plots)."""
    from pipelines.training.evaluation import classification_metrics
    from pipelines.training.reference import (
        DRIFT_FEATURES,
        PREDICTION,
        THRESHOLD_FLOOR,
        calibration_of,
        drift_score,
        method_of,
    )

    policy = policy or MonitoringPolicy()
    calibration = calibration_of(reference) or {}
    thresholds = {c: float(calibration.get("thresholds", {}).get(c, THRESHOLD_FLOOR))
                  for c in (*DRIFT_FEATURES, PREDICTION)}
    columns = [c for c in DRIFT_FEATURES if reference[c].notna().any() and current[c].notna().any()]
    summary: dict[str, Any] = {"date": day.isoformat(), "traffic": {"flights": len(current)}}
    if len(current) and current[PREDICTION].notna().any():
        features: list[dict[str, Any]] = []
        for column in [*columns, PREDICTION]:
            score = drift_score(reference[column], current[column], method_of(column))
            features.append({"feature": column, "score": score, "method": method_of(column),
                             "threshold": thresholds[column], "drifted": bool(score >= thresholds[column])})
        prediction = features.pop()
        features.sort(key=lambda f: (-f["score"] / f["threshold"], f["feature"]))  # the report's order
        drifted = sum(f["drifted"] for f in features)
        share = drifted / len(columns) if columns else 0.0
        summary |= {"drift_detected": share >= policy.drift_share, "drift_share": round(share, 4),
                    "drifted_count": drifted, "tested_features": len(columns),
                    "drifted_features": [{**f, "score": round(f["score"], 4)} for f in features],
                    "prediction_drift": {**{k: prediction[k] for k in ("method", "threshold", "drifted")},
                                         "score": round(prediction["score"], 4)}}
    else:
        summary |= {"drift_detected": False, "drift_share": None, "drifted_count": 0, "tested_features": 0,
                    "drifted_features": [], "prediction_drift": None}
    labelled_flights = 0 if labelled is None else len(labelled)
    summary["labelled_flights"] = labelled_flights
    summary["quality"] = None
    if labelled is not None and labelled_flights >= policy.min_labelled_flights:
        metrics = classification_metrics(labelled[LABEL].to_numpy(), labelled[PREDICTION].to_numpy())
        summary["quality"] = {"labelled_flights": labelled_flights, "roc_auc": _rounded(metrics["roc_auc"]),
                              "brier": _rounded(metrics["brier"]),
                              "training_roc_auc": _rounded(training_metrics.get("roc_auc")),
                              "training_brier": _rounded(training_metrics.get("brier"))}
    return summary


def drift_monitor(policy: MonitoringPolicy | None = None) -> Monitor:
    """The daily monitoring of the drift policy: ``drift_summary`` against the champion's reference (built once
    per champion, ~15 s) and its test-window metrics."""
    references: dict[str, pd.DataFrame] = {}

    def monitor(champion: Candidate, day: date, current: pd.DataFrame,
                labelled: pd.DataFrame | None) -> dict[str, Any]:
        if champion.name not in references:
            started = time.perf_counter()
            references[champion.name] = monitoring_reference(champion)
            log.info("monitoring reference of %s calibrated (%.1fs)", champion.name, time.perf_counter() - started)
        return drift_summary(references[champion.name], current, labelled, champion.metrics, day, policy)

    return monitor


# --- the replay ---------------------------------------------------------------------------------------------------

@dataclass
class PolicyRun:
    """One policy's year: the model serving each day, every training with the gate's decision, and (drift) each
    day's retraining decision."""

    policy: str
    served: dict[date, str] = field(default_factory=dict)
    trainings: list[dict[str, Any]] = field(default_factory=list)
    decisions: list[dict[str, Any]] = field(default_factory=list)
    probabilities: dict[date, np.ndarray] = field(default_factory=dict)


class Scorer:
    """Each model's probabilities for each day, computed once (the policies share models and days)."""

    def __init__(self, by_day: dict[date, pd.DataFrame]) -> None:
        self.by_day = by_day
        self._cache: dict[tuple[str, date], np.ndarray] = {}

    def __call__(self, candidate: Candidate, day: date) -> np.ndarray:
        if candidate.window[1] >= day:
            raise LookAheadError(f"model trained on {candidate.name} asked to serve {day}, inside or before its "
                                 "training window")
        key = (candidate.name, day)
        if key not in self._cache:
            self._cache[key] = np.asarray(candidate.predictor.predict_proba(self.by_day[day]), dtype=np.float64)
        return self._cache[key]


def gate(candidate: Candidate, champion: Candidate, policy: GatePolicy | None = None) -> tuple[bool, list[str]]:
    """The promotion gate (``pipelines.registry.gate.decide``) on the candidate's test window against the
    champion scored on the same flights."""
    from pipelines.registry.gate import GatePolicy, decide

    y = candidate.test[LABEL].to_numpy()
    champion_p = None if champion is candidate else champion.predictor.predict_proba(candidate.test)
    promote, reasons, _ = decide(y, candidate.predictor.predict_proba(candidate.test), champion_p,
                                 policy or GatePolicy())
    return promote, reasons


def replay_policy(policy: str, first: Candidate, by_day: dict[date, pd.DataFrame], train: Trainer, *,
                  config: BacktestConfig | None = None, monitor: Monitor | None = None,
                  gate_policy: GatePolicy | None = None, monitoring_policy: MonitoringPolicy | None = None,
                  scorer: Scorer | None = None) -> PolicyRun:
    """Replay ``policy`` ("frozen", "weekly" or "drift") over the scored days, from the champion ``first``.

    Before a day's flights: the weekly policy trains on the retrain weekday; the drift policy trains when the
    previous day's monitoring asked. A trained model serves from that day when the gate promotes it. Then the day
    is scored by the champion (never one whose window reaches the day: ``LookAheadError``). After it, the drift
    policy monitors the day (``monitor``, by default ``drift_monitor``) and ``decide_retrain`` decides, with the
    cooldown over its earlier requests."""
    if policy not in POLICIES:
        raise ValueError(f"unknown policy {policy!r}; expected one of {', '.join(POLICIES)}")
    config = config or BacktestConfig()
    monitoring_policy = monitoring_policy or MonitoringPolicy()
    scorer = scorer or Scorer(by_day)
    if policy == "drift" and monitor is None:
        monitor = drift_monitor(monitoring_policy)
    days = [d for d in config.scored_days() if d in by_day]
    run = PolicyRun(policy)
    champion = first
    requested: dict[str, Any] | None = None
    history: list[dict[str, Any]] = []
    features = _FeatureFrames(by_day)
    started = time.perf_counter()
    for i, day in enumerate(days):
        windows: list[tuple[list[date], str, date]] = []
        if policy == "weekly" and day.weekday() == config.retrain_weekday:
            windows.append((date_range(day - timedelta(days=config.window_days), day - timedelta(days=1)),
                            "weekly", day))
        if requested is not None:
            window = requested["retrain"]["window"]
            windows.append((date_range(date.fromisoformat(window["start_date"]),
                                       date.fromisoformat(window["end_date"])),
                            ",".join(requested["retrain"]["triggers"]), date.fromisoformat(requested["date"])))
            requested = None
        for window_days, trigger, asked in windows:
            champion = _train_and_gate(run, champion, train, window_days, trigger, asked, day, gate_policy)
        probabilities = scorer(champion, day)
        run.served[day] = champion.name
        run.probabilities[day] = probabilities
        if policy == "drift":
            if monitor is None:
                raise ValueError("the drift policy needs the monitoring reference")
            summary = _monitor_day(run, champion, day, features, monitor, monitoring_policy)
            summary["retrain"] = decide_retrain(summary, history, monitoring_policy)
            history.append({"date": summary["date"], "retrain": summary["retrain"]})
            run.decisions.append(_decision_record(summary))
            if summary["retrain"]["requested"] and i + 1 < len(days):
                requested = summary
        if i + 1 == len(days) or days[i + 1].month != day.month:
            _log_month(run, day, by_day, time.perf_counter() - started)
    return run


def _train_and_gate(run: PolicyRun, champion: Candidate, train: Trainer, window: list[date], trigger: str,
                    asked: date, day: date, gate_policy: GatePolicy | None) -> Candidate:
    if window[-1] >= day:
        raise LookAheadError(f"{run.policy}: a training on {window[0]}..{window[-1]} cannot serve {day}")
    started = time.perf_counter()
    candidate = train(window)
    promote, reasons = gate(candidate, champion, gate_policy)
    record = {"policy": run.policy, "day": day.isoformat(), "requested": asked.isoformat(), "trigger": trigger,
              "window": [window[0].isoformat(), window[-1].isoformat()], "model": candidate.name,
              "champion_before": champion.name, "adopted": promote, "reasons": reasons,
              "test_roc_auc": _rounded(candidate.metrics.get("roc_auc")),
              "test_brier": _rounded(candidate.metrics.get("brier")), **candidate.info,
              "seconds_with_gate": round(time.perf_counter() - started, 1)}
    run.trainings.append(record)
    log.info("%s %s: trained on %s (%s, asked %s) in %.1fs, test ROC AUC %s: %s", run.policy, day, candidate.name,
             trigger, asked, time.perf_counter() - started, record["test_roc_auc"],
             "ADOPTED" if promote else "rejected by the gate: " + "; ".join(reasons[1:] or reasons))
    return candidate if promote else champion


class _FeatureFrames:
    """Each day's flights as the monitoring reads them (``reference.feature_frame``), built once per day, with a
    model's scores as ``prediction``."""

    def __init__(self, by_day: dict[date, pd.DataFrame]) -> None:
        self.by_day = by_day
        self._frames: dict[date, pd.DataFrame] = {}

    def __call__(self, day: date, probabilities: np.ndarray) -> pd.DataFrame:
        from pipelines.training.reference import PREDICTION, feature_frame

        if day not in self._frames:
            self._frames[day] = feature_frame(self.by_day[day])
        frame = self._frames[day].copy()
        frame[PREDICTION] = probabilities
        return frame


def _monitor_day(run: PolicyRun, champion: Candidate, day: date, features: _FeatureFrames, monitor: Monitor,
                 policy: MonitoringPolicy) -> dict[str, Any]:
    """The champion's monitoring of ``day``: its served flights, and the labelled flights of the trailing window
    (each scored by the model that served its day)."""
    window = [day - timedelta(days=k) for k in range(policy.quality_window_days - 1, -1, -1)]
    served = [d for d in window if d in run.probabilities]
    current = features(day, run.probabilities[day])
    labelled = pd.concat([features(d, run.probabilities[d]) for d in served], ignore_index=True) if served else None
    return monitor(champion, day, current, labelled)


def _decision_record(summary: dict[str, Any]) -> dict[str, Any]:
    quality = summary.get("quality") or {}
    return {"date": summary["date"], "drift_share": summary.get("drift_share"),
            "drifted_count": summary.get("drifted_count"), "tested_features": summary.get("tested_features"),
            "drifted": [f["feature"] for f in summary.get("drifted_features", []) if f.get("drifted")],
            "roc_auc_7d": quality.get("roc_auc"), "brier_7d": quality.get("brier"),
            "requested": summary["retrain"]["requested"], "triggers": summary["retrain"]["triggers"],
            "window": summary["retrain"]["window"]}


def _log_month(run: PolicyRun, day: date, by_day: dict[date, pd.DataFrame], elapsed: float) -> None:
    month = f"{day:%Y-%m}"
    row = _month_row(run, month, by_day)
    log.info("%s %s: ROC AUC %s, Brier %s on %d flights, %d trainings (%d adopted) (%.1fs)", run.policy, month,
             row["roc_auc"], row["brier"], row["flights"], row["trainings"], row["adopted"], elapsed)


# --- the table ----------------------------------------------------------------------------------------------------

def _month_row(run: PolicyRun, month: str, by_day: dict[date, pd.DataFrame]) -> dict[str, Any]:
    from pipelines.training.evaluation import classification_metrics

    days = [d for d in run.probabilities if month == ALL_MONTHS or f"{d:%Y-%m}" == month]
    trainings = [t for t in run.trainings if month == ALL_MONTHS or t["day"][:7] == month]
    row: dict[str, Any] = {"policy": run.policy, "month": month, "flights": 0, "roc_auc": None, "brier": None,
                           "trainings": len(trainings), "adopted": sum(bool(t["adopted"]) for t in trainings)}
    if days:
        y = np.concatenate([by_day[d][LABEL].to_numpy(dtype=np.float64) for d in days])
        p = np.concatenate([run.probabilities[d] for d in days])
        metrics = classification_metrics(y, p)
        row |= {"flights": len(y), "roc_auc": _rounded(metrics["roc_auc"]), "brier": _rounded(metrics["brier"])}
    return row


def policy_table(runs: Iterable[PolicyRun], by_day: dict[date, pd.DataFrame]) -> list[dict[str, Any]]:
    """Per policy and month (then ``all``, every scored flight pooled): flights, ROC AUC, Brier, trainings and
    adopted trainings (counted in the month of the day the trained model could first serve)."""
    rows = []
    for run in runs:
        months = sorted({f"{d:%Y-%m}" for d in run.probabilities})
        rows += [_month_row(run, month, by_day) for month in [*months, ALL_MONTHS]]
    return rows


def format_policy_table(rows: Sequence[dict[str, Any]]) -> str:
    """The table as plain text: a line per month, for each policy its ROC AUC, Brier and trainings (adopted /
    trained), then the year."""
    policies = list(dict.fromkeys(r["policy"] for r in rows))
    months = list(dict.fromkeys(r["month"] for r in rows))
    cells = {(r["policy"], r["month"]): r for r in rows}
    width = 26

    def number(value: Any) -> str:
        return "-" if value is None else f"{value:.4f}"

    head = f"{'month':<8}{'flights':>8}" + "".join(f"  {p:<{width}}" for p in policies)
    sub = f"{'':<8}{'':>8}" + "".join(f"  {'ROC AUC':>7} {'Brier':>7} {'trained':>9}" + " " * (width - 25)
                                      for _ in policies)
    lines = [head.rstrip(), sub.rstrip()]
    for month in months:
        flights = max(cells[(p, month)]["flights"] for p in policies if (p, month) in cells)
        line = f"{'Apr-Dec' if month == ALL_MONTHS else month:<8}{flights:>8,}"
        for p in policies:
            row = cells.get((p, month))
            if row is None:
                line += "  " + " " * width
                continue
            trained = f"{row['adopted']}/{row['trainings']}"
            line += f"  {number(row['roc_auc']):>7} {number(row['brier']):>7} {trained:>9}" + " " * (width - 25)
        lines.append(line.rstrip())
    lines.append("trained: adopted (promoted by the gate) / trainings, in the month the model could first serve")
    return "\n".join(lines)


def policy_figure(rows: Sequence[dict[str, Any]]) -> Figure:
    """ROC AUC (and Brier below) per month, a line per policy. Built without pyplot (Agg through savefig)."""
    from matplotlib.figure import Figure

    figure = Figure(figsize=(9, 7), layout="constrained")
    top, bottom = figure.subplots(2, 1, sharex=True)
    months = sorted({r["month"] for r in rows if r["month"] != ALL_MONTHS})
    positions = list(range(len(months)))  # months as positions: no category-units notices from matplotlib
    for policy in dict.fromkeys(r["policy"] for r in rows):
        by_month = {r["month"]: r for r in rows if r["policy"] == policy}
        for axes, metric in ((top, "roc_auc"), (bottom, "brier")):
            values = [by_month[m][metric] if m in by_month and by_month[m][metric] is not None else np.nan
                      for m in months]
            axes.plot(positions, values, marker="o", label=policy)
    top.set(title="Retraining policies replayed on 2013: ROC AUC per month", ylabel="ROC AUC")
    top.legend()
    bottom.set(xlabel="month", ylabel="Brier score (lower is better)")
    bottom.set_xticks(positions, months)
    return figure


def write_results(result: dict[str, Any], settings: Settings | None = None) -> dict[str, str]:
    """``policies.json``, ``policies.csv`` and ``roc_auc.png`` under ``reports/backtest/``; returns their URLs."""
    settings, lake = settings_and_lake(settings)
    keys = {name: f"{REPORT_PREFIX}/{file}" for name, file in REPORT_FILES.items()}
    lake.write_text(keys["json"], json.dumps(result, indent=2, default=str))
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=["policy", "month", "flights", "roc_auc", "brier", "trainings",
                                                "adopted"], lineterminator="\n")
    writer.writeheader()
    writer.writerows(result["table"])
    lake.write_text(keys["csv"], buffer.getvalue())
    png = io.BytesIO()
    policy_figure(result["table"]).savefig(png, format="png", dpi=110)
    lake.write_bytes(keys["png"], png.getvalue())
    return {name: lake.url(key) for name, key in keys.items()}


# --- the whole backtest -------------------------------------------------------------------------------------------

def run_backtest(settings: Settings | None = None, config: BacktestConfig | None = None, *,
                 policies: Sequence[str] = POLICIES, prepare: bool = True) -> dict[str, Any]:
    """Prepare the lake (``prepare_year``, when ``prepare``), build the year's training set, train the first
    champion, replay each policy, and write the table, the trainings and the plot to ``reports/backtest/``.
    Returns the result (what ``policies.json`` holds)."""
    unknown = [p for p in policies if p not in POLICIES]
    if unknown or not policies:
        raise ValueError(f"unknown policies {unknown}; choose among {', '.join(POLICIES)}")
    settings, _ = settings_and_lake(settings)
    config = config or BacktestConfig()
    started = time.perf_counter()
    seconds: dict[str, float] = {}
    if prepare:
        prepare_year(settings, config.first_window[0], config.end)
        seconds["prepare"] = round(time.perf_counter() - started, 1)
    mark = time.perf_counter()
    by_day = flights_by_day(year_training_set(settings, config.first_window[0], config.end))
    seconds["training_set"] = round(time.perf_counter() - mark, 1)
    train = shared(network_trainer(by_day, config))
    mark = time.perf_counter()
    first = train(date_range(*config.first_window))
    floor_ok, reasons = gate(first, first)
    log.info("first champion %s: test ROC AUC %.4f, Brier %.4f in %.1fs (%s)", first.name,
             first.metrics["roc_auc"], first.metrics["brier"], time.perf_counter() - mark, "; ".join(reasons))
    if not floor_ok:
        raise RuntimeError(f"the first model does not clear the gate's floor: {'; '.join(reasons)}")
    seconds["first_champion"] = round(time.perf_counter() - mark, 1)
    scorer = Scorer(by_day)
    runs = []
    for policy in policies:
        mark = time.perf_counter()
        runs.append(replay_policy(policy, first, by_day, train, config=config, scorer=scorer))
        seconds[policy] = round(time.perf_counter() - mark, 1)
    table = policy_table(runs, by_day)
    seconds["total"] = round(time.perf_counter() - started, 1)
    result: dict[str, Any] = {
        "config": asdict(config), "policies": list(policies), "first_champion": {
            "window": first.name, "test_metrics": {k: _rounded(v) for k, v in first.metrics.items()},
            **first.info},
        "table": table,
        "trainings": [t for run in runs for t in run.trainings],
        "served": {run.policy: {d.isoformat(): name for d, name in run.served.items()} for run in runs},
        "drift_decisions": next((run.decisions for run in runs if run.policy == "drift"), []),
        "seconds": seconds,
    }
    result["report_paths"] = write_results(result, settings)
    log.info("run_backtest: %d policies over %s..%s in %.1fs -> %s", len(runs), config.start, config.end,
             seconds["total"], result["report_paths"]["json"])
    return result
