"""The ``monitoring`` section of ``make bench``: how long one day's monitoring report takes, and a 30-day report (30
days of served flights as the current data of one report).

Data: the bench's scratch home, where the features section has built the year 2013. The model is the one the serving
section trained (run key ``bench/serving``, demo window), or, when that section has not run, a quick one trained
here the same way (one trial, three epochs). Its training reference is built as the registry builds it (a sample of
the train split with scores and calibrated thresholds). The served traffic is the point-in-time feature rows of
July 2013 (what the service serves when the online store is materialized as of each prediction time) scored by the
model and written as prediction-log rows (the service's record format, ``features`` as JSON), so ``served_frame``
parses what the service logs. The quality part reads the labels of the week before the day (one-day report)
or of the window itself (30-day report, as a backfill would).

Timed: ``training_reference`` (once per model, at registration), ``served_frame`` and ``build_report`` (Evidently's
drift and quality reports, HTML, JSON and the summary written to the lake) for 2013-07-15 and for 2013-06-16..07-15.
"""

from __future__ import annotations

import importlib
import time
from datetime import UTC, date, datetime, timedelta
from typing import Any

import numpy as np
import pandas as pd

from benchmarks.console import say
from pipelines.core.settings import Settings

DAY = date(2013, 7, 15)
LONG_WINDOW_DAYS = 30
LABEL_DAYS = 7
OWN_RUN_KEY = "bench/monitoring"


def prediction_log_rows(frame: pd.DataFrame, probabilities: np.ndarray, model_version: str,
                        served_at: datetime | None = None) -> pd.DataFrame:
    """Training-set shaped rows as the prediction log records them (``PredictionLog``'s columns, the features the
    model read as JSON): what the service would have written had it served these flights."""
    from pipelines.features.store import ENTITY_COLUMNS
    from pipelines.serving.prediction_log import feature_json
    from pipelines.training.columns import CATEGORICAL_COLUMNS, NUMERIC_COLUMNS

    served_at = served_at or datetime(2013, 1, 1, tzinfo=UTC)
    departures = pd.to_datetime(frame["scheduled_departure"], utc=True)
    online = [c for c in dict.fromkeys((*ENTITY_COLUMNS, *CATEGORICAL_COLUMNS, *NUMERIC_COLUMNS))
              if c in frame.columns and c != "dest"]
    columns: dict[str, list[Any]] = {c: frame[c].tolist() for c in online}
    columns["scheduled_departure"] = [d.isoformat() for d in departures]
    for name, values in columns.items():
        columns[name] = [None if isinstance(v, float) and np.isnan(v) else v for v in values]
    parts = frame["flight_id"].str.split(":", expand=True)
    return pd.DataFrame({
        "request_id": [f"r{i}" for i in range(len(frame))], "served_at": served_at,
        "carrier": frame["carrier"].to_numpy(), "flight": parts[1].str.slice(2).astype(int).to_numpy(),
        "origin": frame["origin"].to_numpy(), "dest": frame["route"].str.split("-", n=1).str[1].to_numpy(),
        "scheduled_departure": columns["scheduled_departure"], "distance": frame["distance"].astype(float).to_numpy(),
        "tailnum": frame["tailnum"].to_numpy(), "flight_id": frame["flight_id"].to_numpy(),
        "probability": np.asarray(probabilities, dtype=float), "model_version": model_version,
        "features": [feature_json(columns, i) for i in range(len(frame))],
    })


def _model_run(settings: Settings, run_key: str | None = None) -> str:
    """``run_key``, else the serving section's model when it ran in this home, else a quick one trained here."""
    from benchmarks.serving import RUN_KEY
    from pipelines.core.dates import date_range
    from pipelines.core.lake import open_lake
    from pipelines.training.datasets import model_key
    from pipelines.training.steps import train_pipeline

    lake = open_lake(settings)
    if run_key is not None:
        return run_key
    for candidate in (RUN_KEY, OWN_RUN_KEY):
        if lake.exists(model_key(candidate, "model.pt")) and lake.exists(model_key(candidate, "evaluation.json")):
            return candidate
    train_pipeline(date_range(settings.demo_start, settings.demo_end), OWN_RUN_KEY, settings, trials=1,
                   max_epochs=3, valid_days=7, test_days=7)
    return OWN_RUN_KEY


def _timed(step: Any, *args: Any, **kwargs: Any) -> tuple[Any, float]:
    started = time.perf_counter()
    result = step(*args, **kwargs)
    return result, time.perf_counter() - started


def bench_monitoring(settings: Settings, day: date = DAY, run_key: str | None = None) -> dict[str, Any]:
    """Seconds to build the training reference, one day's report and a 30-day report, with what each found
    (``run_key``: the model to monitor; by default the serving section's)."""
    from pipelines.core.dates import date_range
    from pipelines.core.lake import open_lake
    from pipelines.features.store import training_set
    from pipelines.monitoring.report import build_report, served_frame
    from pipelines.monitoring.retrain import MonitoringPolicy
    from pipelines.training.reference import feature_frame, training_reference
    from pipelines.training.steps import load_model, read_evaluation

    run_key = _model_run(settings, run_key)
    _, import_s = _timed(importlib.import_module, "evidently.presets")  # once per process, apart from the reports
    model = load_model(run_key, settings)
    evaluation = read_evaluation(run_key, settings)
    reference, reference_s = _timed(training_reference, run_key, settings)

    first = day - timedelta(days=LONG_WINDOW_DAYS - 1)
    flights = training_set(date_range(first - timedelta(days=LABEL_DAYS), day), settings)
    probabilities = model.predict_proba(flights)
    dates = flights["flight_id"].str.slice(0, 10)
    log = prediction_log_rows(flights, probabilities, model_version="bench")
    labelled_all = feature_frame(flights, probabilities)
    policy = MonitoringPolicy()
    out: dict[str, Any] = {"run_key": run_key, "evidently_import_seconds": round(import_s, 2),
                           "reference_rows": len(reference),
                           "reference_seconds": round(reference_s, 2), "reports": {}}
    # The 30-day report is written to a lake of its own, so it does not replace the day's report (same date).
    long_lake = settings.model_copy(update={"lake_uri": str(settings.pipeline_home / "monitoring_30_days")})
    for name, start, where in (("one_day", day, settings), ("30_days", first, long_lake)):
        window = ((dates >= start.isoformat()) & (dates <= day.isoformat())).to_numpy()
        # one day: the matured labels of the week before it; 30 days: the window's own (a backfill's view)
        labels = ((dates >= (day - timedelta(days=LABEL_DAYS)).isoformat()) & (dates < day.isoformat())).to_numpy() \
            if name == "one_day" else window
        current, parse_s = _timed(served_frame, log[window])
        summary, report_s = _timed(build_report, reference, current, labelled_all[labels], evaluation, day, where,
                                   policy)
        html = open_lake(where).read_bytes(summary["report_keys"]["html"])
        out["reports"][name] = {
            "window": f"{start}..{day}", "served_flights": len(current), "labelled_flights": int(labels.sum()),
            "served_frame_seconds": round(parse_s, 2), "build_report_seconds": round(report_s, 2),
            "html_mb": round(len(html) / 2**20, 1),
            "drift_share": summary["drift_share"], "drifted": summary["drifted_count"],
            "tested": summary["tested_features"],
            "prediction_drift": (summary["prediction_drift"] or {}).get("score"),
            "roc_auc": (summary["quality"] or {}).get("roc_auc"),
            "retrain_requested": summary["retrain"]["requested"],
        }
    return out


def print_monitoring(out: dict[str, Any]) -> None:
    say(f"Monitoring (Evidently 0.7), model {out['run_key']}: training reference of {out['reference_rows']:,} "
        f"flights with calibrated thresholds in {out['reference_seconds']}s (importing Evidently: "
        f"{out['evidently_import_seconds']}s)")
    say(f"  {'report':<10}{'window':<24}{'flights':>9}{'labelled':>10}{'parse s':>9}{'report s':>10}"
        f"{'HTML MB':>9}{'drift share':>13}{'retrain':>9}")
    for name, r in out["reports"].items():
        share = "-" if r["drift_share"] is None else f"{r['drift_share']:.0%} ({r['drifted']}/{r['tested']})"
        say(f"  {name:<10}{r['window']:<24}{r['served_flights']:>9,}{r['labelled_flights']:>10,}"
            f"{r['served_frame_seconds']:>9}{r['build_report_seconds']:>10}{r['html_mb']:>9}{share:>13}"
            f"{'yes' if r['retrain_requested'] else 'no':>9}")
