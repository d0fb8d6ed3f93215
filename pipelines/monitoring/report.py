"""The daily monitoring report of the served model: data drift, prediction drift and classification quality
(Evidently 0.7), with the retraining decision (``pipelines.monitoring.retrain``) inside its summary.

* The reference is the champion's, saved at registration (``pipelines.training.reference``: a sample of its train
  split with the model's inputs, its score ``prediction`` and the label, and a drift threshold per feature
  calibrated on the split's own days).
* ``served_frame`` turns prediction-log rows into the same columns (the ``features`` JSON expanded, one row per
  flight: the latest answer).
* ``build_report`` runs Evidently on a day's served flights against the reference (data drift of the features,
  drift of the score) and on the matured labels of a trailing window (ROC AUC, Brier, ...), writes ``report.html``
  and ``report.json`` (Evidently's own) and ``summary.json`` (ours) to ``reports/monitoring/date=YYYY-MM-DD/`` and
  returns the summary with the retraining decision of ``decide_retrain`` inside.
* ``build_drift_report`` is the DAG's step: the same for one day from what the lake holds (prediction log, labels,
  the serving model's reference and evaluation).

Why the drift thresholds are calibrated (measured on the real 2013 data, champion trained on January to March):
Evidently's defaults, for a reference of more than 1,000 rows, are the normed Wasserstein distance for numerical
columns and the Jensen-Shannon distance for categorical ones, both with threshold 0.1. They suit features that vary
from flight to flight (carrier, destination, hour, plane, distance): those stay at 0.01-0.12 on every day. Most of
the model's numerical inputs are *day-level*: the weather at three airports on one day, the trailing carrier and
route statistics (one value per carrier or route and day), the day's schedule. One day's flights carry one draw of
them, so a day sits 0.5-2 reference standard deviations from the pooled reference even inside the training season
(March days: temperature 0.3-1.8, pressure up to 2.0): with 0.1 every ordinary day "drifts" on ~25 of 32 features.
P-value tests (KS, chi-square: Evidently's choice for references of 1,000 rows or fewer) are worse still, as they
treat a thousand flights sharing one day's weather as a thousand independent draws. So the methods are pinned to
the two distances (whatever the reference size), and each feature's threshold is the 95th percentile of the score
that whole days of the training split get against the reference (never below Evidently's 0.1): a feature drifts
when the day is further from the training data than 19 training days in 20 were. The same rule covers the
flight-level features (their thresholds stay near 0.1) and the many-valued ``dest`` (whose small-sample noise floor,
0.05-0.12 over ~100 destinations, sets its threshold).

Measured with that champion (train split 2013-01-01..03-03, reference of 10,000 flights, 62 calibration days;
served features rebuilt point in time): March 4-31 and April 1-10 have 0-2 of 32 features drifted (2013-04-02: 1,
``carrier_mean_arr_delay_7d``); late June rises to 4-7; every July day has 6-11 (2013-07-15: 9: temperature, dew
point, the 28-day carrier and route delay and disruption rates, the 7-day carrier ones, ``dest``). The score itself
barely moves (Wasserstein 0.1-0.9 in July, threshold 1.27; the July mean score 0.22 is below the reference's
0.30 while July's disruption rate is 0.26-0.53): the winter model does not see summer's delays coming, which is
why prediction drift is reported but is not a trigger by default, and why the quality part watches the Brier score.
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import asdict
from datetime import date, datetime, timedelta
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from pipelines.core.lake import (
    MONITORING_REPORTS,
    REPORT_FILES,
    monitoring_report_key,
    partition_key,
    settings_and_lake,
)
from pipelines.core.names import LABEL
from pipelines.core.settings import Settings
from pipelines.monitoring.retrain import MonitoringPolicy, decide_retrain
from pipelines.training.columns import CATEGORICAL_COLUMNS
from pipelines.training.reference import (
    DRIFT_FEATURES,
    ID_COLUMN,
    NOT_DRIFT_TESTED,
    PREDICTION,
    THRESHOLD_FLOOR,
    calibration_of,
    feature_frame,
    flight_dates,
    load_reference,
    method_of,
    reference_key,
    save_reference,
)

if TYPE_CHECKING:
    from evidently import Report
    from evidently import Run as Snapshot

log = logging.getLogger(__name__)


def served_frame(predictions: pd.DataFrame) -> pd.DataFrame:
    """Prediction-log rows -> one row per flight (the latest served answer) with the reference's columns: the
    ``features`` JSON expanded, ``prediction`` = the served probability, plus ``model_version`` and ``predictions``
    (how many answers the flight got)."""
    if predictions.empty:
        empty = feature_frame(pd.DataFrame({ID_COLUMN: pd.Series([], dtype=str)}), np.array([], dtype="float64"))
        return empty.assign(model_version=pd.Series([], dtype=str), predictions=pd.Series([], dtype="int64"))
    latest = _latest_answers(predictions)
    features = pd.DataFrame([json.loads(text) for text in latest["features"]], index=latest.index)
    # The request's own fields (carrier, origin, dest, ...) fill whatever the feature JSON does not name.
    request = latest.drop(columns=[c for c in ("features", PREDICTION) if c in latest.columns])
    merged = pd.concat([request.drop(columns=[c for c in features.columns if c in request.columns]), features],
                       axis=1)
    out = feature_frame(merged, latest["probability"].to_numpy())
    out["model_version"] = latest["model_version"].astype(str).to_numpy()
    out["predictions"] = latest["predictions"].astype("int64").to_numpy()
    return out


def _latest_answers(predictions: pd.DataFrame) -> pd.DataFrame:
    """The latest served row of each flight, in the order they were served, with ``predictions`` (how many)."""
    ordered = predictions.sort_values("served_at", kind="stable")
    counts = ordered.groupby(ID_COLUMN, sort=False)[ID_COLUMN].transform("size")
    return ordered.assign(predictions=counts).drop_duplicates(ID_COLUMN, keep="last").reset_index(drop=True)


def labelled_scores(labels: pd.DataFrame) -> pd.DataFrame:
    """Labelled prediction-log rows -> the flight id, score ``prediction`` and label of each flight's latest answer:
    ``served_frame``'s rows and values of those columns, all the quality part reads. Parsing the ``features`` JSON
    of a week of flights for nothing was the slowest step of a day's report after Evidently (0.25 s)."""
    latest = _latest_answers(labels)
    return pd.DataFrame({ID_COLUMN: latest[ID_COLUMN].astype(str),
                         PREDICTION: latest["probability"].astype("float64"), LABEL: latest[LABEL].astype("int64")})


# --- the report ---------------------------------------------------------------------------------------------------

def _drift_report(columns: list[str], thresholds: dict[str, float], policy: MonitoringPolicy) -> Report:
    """Evidently's data drift of ``columns`` and the drift of the score, with their tests.

    The metrics are those ``DataDriftPreset`` generates (the drifted-columns count, then one value drift per
    column, same configuration: the same results and tests), listed here instead of through the preset, whose own
    page (the legacy ``DatasetDriftMetric`` and ``DataDriftTable``) computes every column's drift again and draws
    every column's two plots a second time. The count and the features' drift are the lean metrics of
    ``pipelines.monitoring.drift_metric`` (the same values, verdicts and tests; the count read from the columns'
    verdicts, plots only for a column that drifted); the score's keeps the stock metric, so its distribution is
    always drawn. The tests section lists every column's verdict, score and threshold on one screen."""
    from evidently import Report
    from evidently.metrics import ValueDrift

    from pipelines.monitoring.drift_metric import LeanDriftedColumnsCount, LeanValueDrift

    methods = {c: method_of(c) for c in columns}
    return Report([
        LeanDriftedColumnsCount(columns=columns, drift_share=policy.drift_share, per_column_method=methods,
                                per_column_threshold={c: thresholds[c] for c in columns}),
        *(LeanValueDrift(column=c, method=methods[c], threshold=thresholds[c]) for c in columns),
        ValueDrift(column=PREDICTION, method=method_of(PREDICTION), threshold=thresholds[PREDICTION]),
    ], include_tests=True)


def evidently_dataset(frame: pd.DataFrame, columns: list[str], labelled: bool = False) -> Any:
    """``frame``'s ``columns`` (and the label when ``labelled``) as an Evidently ``Dataset``: categoricals as
    categorical, the rest numerical, a binary classification of the label by ``prediction`` when ``labelled``."""
    from evidently import BinaryClassification, DataDefinition, Dataset

    categorical = [c for c in columns if c in CATEGORICAL_COLUMNS]
    numerical = [c for c in columns if c not in CATEGORICAL_COLUMNS]
    definition = DataDefinition(
        categorical_columns=categorical + ([LABEL] if labelled else []), numerical_columns=numerical,
        classification=[BinaryClassification(target=LABEL, prediction_probas=PREDICTION, pos_label=1)]
        if labelled else None)
    data = frame[columns + ([LABEL] if labelled else [])].reset_index(drop=True)
    # pandas deep-copies ``attrs`` into every frame derived from this one, and Evidently derives hundreds: the
    # reference's calibration would be copied each time (0.15 s a report) for nothing Evidently reads.
    data.attrs = {}
    return Dataset.from_pandas(data, data_definition=definition)


def _read_drift(snapshot: Snapshot, columns: list[str]) -> dict[str, dict[str, Any]]:
    """Per column, Evidently's score, method, threshold and test verdict (its drifted-columns count is counted from
    these verdicts: ``LeanDriftedColumnsCount``)."""
    result = snapshot.dict()
    scores: dict[str, dict[str, Any]] = {}
    for metric in result["metrics"]:
        config = metric["config"]
        if config["type"].endswith("ValueDrift"):
            scores[config["column"]] = {"score": float(metric["value"]), "method": config["method"],
                                        "threshold": float(config["threshold"])}
    for test in result["tests"]:
        params = test["metric_config"]["params"]
        if params["type"].endswith("ValueDrift") and params["column"] in scores:
            scores[params["column"]]["drifted"] = str(test["status"]).endswith("FAIL")
    missing = [c for c in [*columns, PREDICTION] if "drifted" not in scores.get(c, {})]
    if missing:
        raise RuntimeError(f"Evidently returned no drift verdict for {', '.join(missing)}")
    return scores


def _combined(snapshots: list[Snapshot]) -> Snapshot:
    """One Evidently run holding the metrics, widgets and tests of several (each ran on its own current data: the
    day's traffic for drift, the labelled window for quality), so the day has one HTML and one JSON report.

    Through Evidently's public serialization of a run (``Run.to_snapshot_model`` / ``Run.load_model``, what its
    workspace stores and loads): the models' results, widgets and tests are concatenated, never edited."""
    from evidently import Run

    if len(snapshots) == 1:
        return snapshots[0]
    models = [s.to_snapshot_model() for s in snapshots]
    merged = models[0].copy(update={
        "metric_results": {k: v for m in models for k, v in m.metric_results.items()},
        "top_level_metrics": [k for m in models for k in m.top_level_metrics],
        "widgets": [w for m in models for w in m.widgets],
        "tests_widgets": [w for m in models for w in m.tests_widgets],
    })
    return Run.load_model(merged)


def _training_scores(training_metrics: dict[str, Any]) -> dict[str, Any]:
    """The network's test-window metrics from ``evaluation.json`` (whole, its ``metrics``, or the network's row)."""
    metrics = training_metrics.get("metrics", training_metrics)
    return dict(metrics.get("network", metrics))


def _number(value: Any, digits: int = 4) -> float | None:
    return None if value is None or not math.isfinite(float(value)) else round(float(value), digits)


def _quality(reference: pd.DataFrame, labelled: pd.DataFrame, training_metrics: dict[str, Any], day: date,
             metadata: dict[str, Any]) -> tuple[dict[str, Any], Snapshot | None]:
    from evidently import Report

    from pipelines.monitoring.drift_metric import LeanClassificationQuality
    from pipelines.serving.predictor import DEFAULT_THRESHOLD
    from pipelines.training.evaluation import classification_metrics

    y = labelled[LABEL].to_numpy()
    metrics = classification_metrics(y, labelled[PREDICTION].to_numpy())
    training = _training_scores(training_metrics)
    dates = flight_dates(labelled)
    quality = {"labelled_flights": len(labelled), "window": {"start_date": dates.min(), "end_date": dates.max()},
               "roc_auc": _number(metrics["roc_auc"]), "brier": _number(metrics["brier"]),
               "log_loss": _number(metrics["log_loss"]), "disruption_rate": _number(metrics["positive_rate"]),
               "mean_prediction": _number(metrics["mean_prediction"]),
               "training_roc_auc": _number(training.get("roc_auc")), "training_brier": _number(training.get("brier"))}
    snapshot = None
    if 0 < y.sum() < len(y) and 0 < reference[LABEL].sum() < len(reference):  # ranking needs both classes
        report = Report([LeanClassificationQuality(probas_threshold=DEFAULT_THRESHOLD, conf_matrix=True,
                                                   pr_curve=True)], include_tests=False)
        snapshot = report.run(evidently_dataset(labelled, [PREDICTION], labelled=True),
                              evidently_dataset(reference, [PREDICTION], labelled=True),
                              timestamp=datetime(day.year, day.month, day.day), metadata=metadata)
    return quality, snapshot


def build_report(reference: pd.DataFrame, current: pd.DataFrame, labelled: pd.DataFrame | None,
                 training_metrics: dict[str, Any], day: date, settings: Settings | None = None,
                 policy: MonitoringPolicy | None = None, scheduled: int | None = None) -> dict[str, Any]:
    """The day's monitoring report: data drift of the served flights' features and of their scores against the
    training reference, classification quality on the labelled window (when it has ``min_labelled_flights``),
    Evidently's HTML and JSON and our summary in ``reports/monitoring/date=YYYY-MM-DD/``, and the retraining
    decision (``decide_retrain`` over the earlier summaries). ``scheduled``: the day's flights in its feed, which
    the traffic is counted against. Returns the summary."""
    settings, lake = settings_and_lake(settings)
    policy = policy or MonitoringPolicy()
    started = time.perf_counter()
    calibration = calibration_of(reference)
    if calibration is None:
        log.warning("the reference carries no calibrated thresholds: Evidently's default %.2f is used for every "
                    "feature, which day-level features exceed on ordinary days", THRESHOLD_FLOOR)
    thresholds = {c: float((calibration or {}).get("thresholds", {}).get(c, THRESHOLD_FLOOR))
                  for c in (*DRIFT_FEATURES, PREDICTION)}
    model_run_key = reference.attrs.get("monitoring", {}).get("run_key")
    # pandas deep-copies ``attrs`` (the calibration: every training day's scores) into every frame and column
    # derived from the reference, a hundred times a report; everything read from them is read above.
    reference = reference.copy(deep=False)
    reference.attrs = {}
    versions = current["model_version"].astype(str).value_counts() if "model_version" in current.columns \
        else pd.Series(dtype="int64")
    model_version = str(versions.index[0]) if len(versions) else None
    flights = len(current)
    predictions = int(current["predictions"].sum()) if "predictions" in current.columns else flights
    metadata = {"date": day.isoformat(), "model_version": str(model_version)}

    untested = [{"feature": c, "reason": reason} for c, reason in NOT_DRIFT_TESTED.items()]
    columns: list[str] = []
    for column in DRIFT_FEATURES:
        if not reference[column].notna().any():
            untested.append({"feature": column, "reason": "no values in the reference"})
        elif not current[column].notna().any():
            untested.append({"feature": column, "reason": "no values in the day's traffic"})
        else:
            columns.append(column)

    snapshots: list[Snapshot] = []
    summary: dict[str, Any] = {"date": day.isoformat(), "model_version": model_version,
                               "model_run_key": model_run_key,
                               "traffic": {"predictions": predictions, "flights": flights,
                                           "model_versions": {str(k): int(v) for k, v in versions.items()},
                                           **({"scheduled": scheduled} if scheduled is not None else {})}}
    if flights and current[PREDICTION].notna().any():
        snapshot = _drift_report(columns, thresholds, policy).run(
            evidently_dataset(current, [*columns, PREDICTION]), evidently_dataset(reference, [*columns, PREDICTION]),
            timestamp=datetime(day.year, day.month, day.day), metadata=metadata)
        snapshots.append(snapshot)
        scores = _read_drift(snapshot, columns)
        features = sorted(({"feature": c, **scores[c]} for c in columns),
                          key=lambda f: (-f["score"] / f["threshold"], f["feature"]))
        drifted = sum(f["drifted"] for f in features)
        share = drifted / len(columns) if columns else 0.0
        prediction = scores[PREDICTION]
        summary |= {
            "drift_detected": share >= policy.drift_share, "drift_share": round(share, 4),
            "drifted_count": drifted, "tested_features": len(columns),
            "drifted_features": [{**f, "score": round(f["score"], 4)} for f in features],
            "prediction_drift": {"score": round(prediction["score"], 4), "method": prediction["method"],
                                 "threshold": prediction["threshold"], "drifted": prediction["drifted"],
                                 "current_mean": _number(current[PREDICTION].mean()),
                                 "reference_mean": _number(reference[PREDICTION].mean())},
        }
    else:
        summary |= {"drift_detected": False, "drift_share": None, "drifted_count": 0, "tested_features": 0,
                    "drifted_features": [], "prediction_drift": None}
    summary["untested_features"] = untested
    summary["thresholds"] = {"calibrated": calibration is not None,
                             "quantile": (calibration or {}).get("quantile"),
                             "calibration_days": (calibration or {}).get("days")}

    labelled_flights = 0 if labelled is None else len(labelled)
    summary["labelled_flights"] = labelled_flights
    summary["quality"] = None
    if labelled is not None and labelled_flights >= policy.min_labelled_flights:
        summary["quality"], quality_snapshot = _quality(reference, labelled, training_metrics, day, metadata)
        if quality_snapshot is not None:
            snapshots.append(quality_snapshot)

    history = monitoring_history(settings, before=day)
    if history:
        last = history[-1]
        summary["previous"] = {"date": last["date"], "drift_share": last.get("drift_share"),
                               "roc_auc": (last.get("quality") or {}).get("roc_auc")}
    summary["retrain"] = decide_retrain(summary, history, policy)
    summary["policy"] = asdict(policy)

    keys = {}
    if snapshots:
        combined = _combined(snapshots)
        keys = {name: monitoring_report_key(day, REPORT_FILES[name]) for name in ("html", "json")}
        lake.write_text(keys["html"], combined.get_html_str(as_iframe=False))
        lake.write_text(keys["json"], combined.json())
    keys["summary"] = monitoring_report_key(day, REPORT_FILES["summary"])
    summary["report_keys"] = keys
    summary["report_paths"] = {name: lake.url(key) for name, key in keys.items()}
    summary["seconds"] = round(time.perf_counter() - started, 2)
    lake.write_text(keys["summary"], json.dumps(summary, indent=2, default=_json_default))
    log.info("build_report %s: drift share %s (%d of %d features), prediction drift %s, quality %s; retrain %s",
             day, summary["drift_share"], summary["drifted_count"], summary["tested_features"],
             (summary["prediction_drift"] or {}).get("score"),
             None if summary["quality"] is None else summary["quality"]["roc_auc"],
             "REQUESTED" if summary["retrain"]["requested"] else "not requested")
    return json.loads(json.dumps(summary, default=_json_default))  # plain types, as stored


def served_predictions(day: date, settings: Settings | None = None) -> pd.DataFrame:
    """Every prediction-log row of ``day``'s flights (all answers, in the log's order)."""
    from pipelines.serving.prediction_log import read_prediction_log

    settings, lake = settings_and_lake(settings)
    return read_prediction_log(lake, day)


def model_run_key(version: str | None, settings: Settings) -> str:
    """The training run key of registered version ``version`` (the ``champion`` when None), from its tags."""
    from mlflow import MlflowClient

    from pipelines.core.names import CHAMPION, MODEL_NAME
    from pipelines.registry.register import alias_version
    from pipelines.training.tracking import RUN_KEY_TAG, use_tracking

    use_tracking(settings)
    version = version or alias_version(CHAMPION, settings)
    if version is None:
        raise FileNotFoundError(f"{MODEL_NAME} has no champion: nothing is served, nothing to monitor")
    return str(MlflowClient().get_model_version(MODEL_NAME, version).tags[RUN_KEY_TAG])


def build_drift_report(day: date, settings: Settings | None = None, policy: MonitoringPolicy | None = None,
                       run_key: str | None = None) -> dict[str, Any]:
    """The DAG's step: ``build_report`` for ``day`` from what the lake holds: the day's prediction log, the
    labelled predictions of the ``quality_window_days`` ending with the day (``pipelines.monitoring.labels``), and the
    reference and evaluation of the model that served most of the day's flights (the ``champion`` on a day
    without traffic; ``run_key`` overrides). A model registered before references were saved gets its reference
    built and saved now. Returns the summary with ``report_paths`` (local paths or URIs of the three files)."""
    from pipelines.core.dates import date_range
    from pipelines.monitoring.labels import read_labels
    from pipelines.training.steps import read_evaluation

    settings, lake = settings_and_lake(settings)
    policy = policy or MonitoringPolicy()
    current = served_frame(served_predictions(day, settings))
    if run_key is None:
        versions = current["model_version"].value_counts()
        run_key = model_run_key(str(versions.index[0]) if len(versions) else None, settings)
    if not lake.exists(reference_key(run_key)):
        log.warning("no monitoring reference for %s: building it now", run_key)
        save_reference(run_key, settings)
    reference = load_reference(run_key, settings)
    window = date_range(day - timedelta(days=policy.quality_window_days - 1), day)
    labels = read_labels(window, settings)
    labelled = labelled_scores(labels) if not labels.empty else None
    feed = partition_key("validated", "flights", day, "data.parquet")
    scheduled = len(lake.read_parquet(feed)) if lake.exists(feed) else None
    return build_report(reference, current, labelled, read_evaluation(run_key, settings), day, settings, policy,
                        scheduled=scheduled)


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, date | datetime):
        return value.isoformat()
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def monitoring_history(settings: Settings | None = None, before: date | None = None,
                       lookback_days: int | None = None) -> list[dict[str, Any]]:
    """The summaries of earlier monitoring days (before ``before``, at most ``lookback_days`` back), oldest first."""
    settings, lake = settings_and_lake(settings)
    summaries = []
    for key in lake.list_keys(f"{MONITORING_REPORTS}/"):
        if not key.endswith("/" + REPORT_FILES["summary"]):
            continue
        day = date.fromisoformat(key.split("/")[-2].removeprefix("date="))
        if before is not None and day >= before:
            continue
        if before is not None and lookback_days is not None and day < before - timedelta(days=lookback_days):
            continue
        summaries.append(json.loads(lake.read_text(key)))
    return sorted(summaries, key=lambda s: str(s["date"]))


def read_summary(day: date, settings: Settings | None = None) -> dict[str, Any]:
    """The summary ``build_report`` wrote for ``day``."""
    settings, lake = settings_and_lake(settings)
    return dict(json.loads(lake.read_text(monitoring_report_key(day, REPORT_FILES["summary"]))))


def format_summary(summary: dict[str, Any], top: int = 8) -> str:
    """A few lines for people (logs, the CLI, the notification email)."""
    lines = [f"Monitoring {summary['date']} (model version {summary['model_version']}): "
             f"{summary['traffic']['flights']:,} flights served ({summary['traffic']['predictions']:,} predictions)"]
    if summary["drift_share"] is not None:
        lines.append(f"  data drift: {summary['drifted_count']} of {summary['tested_features']} features "
                     f"({summary['drift_share']:.0%}){' DETECTED' if summary['drift_detected'] else ''}")
        for feature in summary["drifted_features"][:top]:
            lines.append(f"    {feature['feature']:<30}{feature['method']:<15}{feature['score']:>8.3f}"
                         f"  (threshold {feature['threshold']:.3f}){'  drifted' if feature['drifted'] else ''}")
        p = summary["prediction_drift"]
        lines.append(f"  prediction drift: {p['method']} {p['score']:.3f} (threshold {p['threshold']:.3f})"
                     f"{' DETECTED' if p['drifted'] else ''}; mean score {p['current_mean']} vs {p['reference_mean']}")
    q = summary["quality"]
    if q is not None:
        lines.append(f"  quality on {q['labelled_flights']:,} labelled flights {q['window']['start_date']}.."
                     f"{q['window']['end_date']}: ROC AUC {q['roc_auc']} (training {q['training_roc_auc']}), "
                     f"Brier {q['brier']} (training {q['training_brier']}), disruption rate {q['disruption_rate']}")
    retrain = summary["retrain"]
    lines.append(f"  retraining: {'REQUESTED' if retrain['requested'] else 'not requested'}")
    lines += [f"    - {reason}" for reason in retrain["reasons"]]
    return "\n".join(lines)
