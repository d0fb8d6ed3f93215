"""The year report: what a stretch of production (``make year``: April to December 2013) did, in one HTML file
with its charts, kept in the lake and emailed to the owners (``pipelines.monitoring.notifications
.year_report_email``).

Sections, each from what the lake holds:

* **traffic and quarantines**: flights served per day (each day's monitoring summary, ``traffic.flights``, beside
  the day's feed, ``traffic.scheduled``, when the summary has it) and the days whose feed was quarantined
  (``quarantine/{flights,weather}/date=D/``, with the validation's reason); a quarantined day whose re-landed feed
  validated later is "quarantined, re-run".
* **drift**: the drift share per day against the threshold of the policy the day was judged by, and the days that
  asked for retraining.
* **retraining**: every training (``models/{run}/promotion.json``, the gate's record): its trigger, read from the
  run key (``scheduled__`` and ``backfill__``: the weekly schedule; ``asset_triggered__``: a drift or quality
  request, matched with the monitoring day that asked for the same window; ``manual__``: by hand), the gate's
  decision with its reasons and the paired-bootstrap interval of the ROC AUC difference, and its deployments.
  A training is dated by the day after its window (``training/{run}/manifest.json``): the first day it could serve
  (a request's run is triggered at the wall clock's time, so its run key's moment is not a 2013 date).
* **live against frozen**: ROC AUC and Brier score per ISO week on the matured labels (``labels/flight_delay/``:
  the served prediction and the outcome) of the model that was live, beside the frozen first champion (the
  earliest promoted training, trained on January to March) scored offline on the very feature vectors that were
  served (the prediction log's ``features`` JSON).
* **what retraining is worth**: the backtest's policy table (``reports/backtest/policies.json``, written by
  ``python -m pipelines backtest``), or how to produce it.

Files, under ``reports/year/{first}_{last}/``: ``report.html`` (self-contained: the charts are embedded as base64,
so the one file opens anywhere), one PNG per chart (``overview.png``, the email's; ``traffic.png``, ``drift.png``,
``quality.png``; ``backtest.png``, the backtest's own chart, when it is there) and ``summary.json`` (the figures:
what ``build_year_report`` returns).

Two records are not in the lake, and are read where they are: the deployments (``$PIPELINE_HOME/deploy/
history.jsonl``, ``pipelines.deploy.blue_green``'s; on the host that deploys), and which quarantined days were
re-run: ``promote_partition`` deletes a day's quarantine partition when a re-landed feed validates, so the lake
forgets the quarantine; ``make year`` keeps the days it re-landed (``$PIPELINE_HOME/year/state.json``,
``repaired``). Charts are drawn without pyplot (Agg), as ``pipelines.monitoring.daily_chart`` draws them.
"""

from __future__ import annotations

import base64
import html
import json
import logging
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import date, datetime, time, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import numpy as np
import pandas as pd

from pipelines.core.dates import LOCAL_TZ
from pipelines.core.lake import (
    MONITORING_REPORTS,
    REPORT_FILES,
    Lake,
    open_lake,
    partition_key,
)
from pipelines.core.names import FEED_TABLES, LABEL
from pipelines.core.runs import run_slug
from pipelines.core.settings import Settings, get_settings
from pipelines.monitoring.daily_chart import figure_png
from pipelines.monitoring.retrain import MonitoringPolicy

log = logging.getLogger(__name__)

YEAR_REPORTS = "reports/year"
HTML_FILE, SUMMARY_FILE = "report.html", "summary.json"
CHARTS: dict[str, str] = {
    "overview": "flights served per day, drift share per day and weekly ROC AUC of the live and the frozen model",
    "traffic": "flights served per day against the feed, with the quarantined days",
    "drift": "drift share per day against its threshold, with the retraining requests and the trainings",
    "quality": "ROC AUC and Brier score per ISO week on matured labels: the live model and the frozen one",
}
"""The report's charts: file stem -> what it shows (its alt text)."""
MAIN_CHART = "overview"
"""The chart the email shows inline."""
BACKTEST_CHART = "backtest"
BACKTEST_PREFIX = "reports/backtest"
"""Where ``python -m pipelines backtest`` writes (``pipelines.simulation.backtest.REPORT_PREFIX``; monitoring sits
below simulation in the import layers, so the name is repeated, not imported)."""
BACKTEST_FILES = {"json": "policies.json", "png": "roc_auc.png"}
BACKTEST_HOW = ("The backtest has not been run on this lake: `python -m pipelines backtest --no-prepare` (about 40 "
                "minutes on 2 cores; without --no-prepare it prepares a fresh lake first) replays the frozen, weekly "
                f"and drift-triggered policies on 2013 and writes {BACKTEST_PREFIX}/; build this report again "
                "afterwards.")
TRAINING_DAG = "flight_delay_training"
TRIGGERS = {"scheduled": "weekly schedule", "backfill": "weekly schedule",
            "asset_triggered": "drift or quality request", "manual": "manual"}
"""Run id prefix (``{type}__...``) -> what started the training."""
DRIFT_TRIGGERS = {"data_drift", "prediction_drift"}
QUALITY_TRIGGERS = {"roc_auc_drop", "brier_rise"}
QUARANTINED, RERUN = "quarantined", "quarantined, re-run"
PROMOTE = "promote"

Scorer = Callable[[pd.DataFrame], np.ndarray]
"""P(disrupted) for the rows of a served frame (``pipelines.monitoring.report.served_frame``)."""

_LINE, _FROZEN, _DRIFTED, _MUTED, _PROMOTED, _RERUN = "#1f77b4", "#7f7f7f", "#c0392b", "#999999", "#2ca02c", "#e67e22"
DPI = 100


def year_report_key(first: date, last: date, name: str) -> str:
    return f"{YEAR_REPORTS}/{first.isoformat()}_{last.isoformat()}/{name}"


def read_year_report(first: date, last: date, settings: Settings | None = None) -> dict[str, Any]:
    """The summary ``build_year_report`` wrote for ``first`` .. ``last``."""
    lake = open_lake(settings or get_settings())
    return dict(json.loads(lake.read_text(year_report_key(first, last, SUMMARY_FILE))))


# --- what the lake holds ------------------------------------------------------------------------------------------

def _day_of(key: str) -> date:
    return date.fromisoformat(key.split("/")[-2].removeprefix("date="))


def monitoring_summaries(lake: Lake, first: date, last: date) -> dict[date, dict[str, Any]]:
    """Each day's monitoring summary (``reports/monitoring/date=D/summary.json``) of ``first`` .. ``last``."""
    summaries = {}
    for key in lake.list_keys(f"{MONITORING_REPORTS}/"):
        if key.endswith("/" + REPORT_FILES["summary"]) and first <= (day := _day_of(key)) <= last:
            summaries[day] = json.loads(lake.read_text(key))
    return summaries


def _rerun_days(settings: Settings) -> set[date]:
    """The days ``make year`` re-landed after their quarantine (the lake dropped those quarantines when the
    re-run validated)."""
    path = settings.pipeline_home / "year" / "state.json"
    if not path.is_file():
        return set()
    return {date.fromisoformat(text) for text in json.loads(path.read_text()).get("repaired", [])}


def _verdict_reason(lake: Lake, key: str) -> str | None:
    if not lake.exists(key):
        return None
    verdict = json.loads(lake.read_text(key))
    return str(verdict.get("reason") or verdict.get("status") or "") or None


def quarantines(lake: Lake, first: date, last: date, rerun: Iterable[date] = ()) -> list[dict[str, Any]]:
    """The days of ``first`` .. ``last`` whose feed was quarantined, oldest first: per table its state (still
    ``quarantined``, or ``quarantined, re-run`` when a later delivery of the table validated) and the validation's
    reason; the day is re-run when every quarantined table of it was. ``rerun``: days known to have been
    quarantined and re-run although the lake no longer holds their quarantine (their flights validated since)."""
    from pipelines.validation.partition import VERDICT_FILE

    validated = {table: set(lake.partitions("validated", table)) for table in FEED_TABLES}
    days: dict[date, dict[str, Any]] = {}
    for table in FEED_TABLES:
        for day in lake.partitions("quarantine", table):
            if first <= day <= last:
                days.setdefault(day, {})[table] = {
                    "state": RERUN if day in validated[table] else QUARANTINED,
                    "reason": _verdict_reason(lake, partition_key("quarantine", table, day, VERDICT_FILE))}
    for day in rerun:
        if first <= day <= last and day in validated["flights"] and "flights" not in days.get(day, {}):
            days.setdefault(day, {})["flights"] = {
                "state": RERUN, "reason": "the delivery failed a critical expectation; the fixed feed was re-landed "
                                          "and its ingest run cleared (make year's record: the lake drops a "
                                          "quarantine once the re-run validates)"}
    return [{"date": day.isoformat(), "state": RERUN if all(t["state"] == RERUN for t in tables.values())
             else QUARANTINED, "tables": tables} for day, tables in sorted(days.items())]


def _run_key_parts(run_key: str) -> tuple[str, str, str]:
    """(DAG id, moment, run id) of ``{dag_id}/{moment}/{run_id}``."""
    dag_id, _, rest = run_key.partition("/")
    moment, _, run_id = rest.rpartition("/")
    return dag_id, moment, run_id


def trigger_of(run_key: str) -> str:
    """What started a training, from its run key: the weekly schedule (a scheduled or backfill run), a drift or
    quality request (asset-triggered), or a person (a manual run, or a run outside Airflow)."""
    dag_id, _, run_id = _run_key_parts(run_key)
    if dag_id != TRAINING_DAG:
        return "manual"
    return TRIGGERS.get(run_id.split("__", 1)[0], "manual")


def _moment_day(run_key: str) -> date | None:
    try:
        moment = datetime.fromisoformat(_run_key_parts(run_key)[1])
    except ValueError:
        return None
    return (moment.astimezone(ZoneInfo(LOCAL_TZ)) if moment.tzinfo else moment).date()


def _window(lake: Lake, run_key: str) -> list[str] | None:
    key = f"training/{run_slug(run_key)}/manifest.json"
    if not lake.exists(key):
        return None
    window = json.loads(lake.read_text(key)).get("window")
    return [str(window[0]), str(window[-1])] if window else None


def _request_of(window: list[str] | None, summaries: Mapping[date, Mapping[str, Any]]) -> dict[str, Any] | None:
    """The monitoring day whose retraining request named a window ending where ``window`` (the training's) ends:
    the training keeps only what the feed holds of the window's start (``simulation.feed.feed_window``), and one
    request ends each window on its own day."""
    if window is None:
        return None
    for day, summary in sorted(summaries.items()):
        retrain = summary.get("retrain") or {}
        asked = retrain.get("window") or {}
        if retrain.get("requested") and asked.get("end_date") == window[-1]:
            return {"day": day.isoformat(), "triggers": list(retrain.get("triggers") or [])}
    return None


def _request_kind(triggers: Sequence[str]) -> str:
    drift, quality = bool(DRIFT_TRIGGERS & set(triggers)), bool(QUALITY_TRIGGERS & set(triggers))
    return ("drift and quality request" if drift and quality else "drift request" if drift
            else "quality request" if quality else "drift or quality request")


def _rounded(value: Any, digits: int = 4) -> float | None:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    return round(float(value), digits)


def read_deploys(settings: Settings) -> list[dict[str, Any]]:
    """Every deployment ``pipelines.deploy.blue_green`` recorded (``$PIPELINE_HOME/deploy/history.jsonl``), in
    order; unreadable lines are skipped with a warning."""
    path = settings.pipeline_home / "deploy" / "history.jsonl"
    if not path.is_file():
        return []
    records = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            log.warning("deploy history line %d is not JSON: skipped", number)
            continue
        records.append({"at": record.get("at"), "model_version": str(record.get("model_version")),
                        "status": record.get("status"), "slot": record.get("slot"), "bento": record.get("bento"),
                        "reason": record.get("reason"),
                        "previous_version": (record.get("previous") or {}).get("model_version")})
    return records


def trainings(lake: Lake, summaries: Mapping[date, Mapping[str, Any]],
              deploys: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Every training the gate judged (``models/*/promotion.json``), dated by the first day it could serve (the
    day after its window; the run's own date without a manifest), with its trigger, the gate's decision, reasons,
    figures and interval, and its deployments; oldest first."""
    rows = []
    for key in lake.list_keys("models/"):
        if not key.endswith("/promotion.json"):
            continue
        decision = json.loads(lake.read_text(key))
        run_key = str(decision["run_key"])
        window = _window(lake, run_key)
        trigger = trigger_of(run_key)
        day = (date.fromisoformat(window[1]) + timedelta(days=1) if window
               else None if trigger == TRIGGERS["asset_triggered"] else _moment_day(run_key))
        request = _request_of(window, summaries) if trigger == TRIGGERS["asset_triggered"] else None
        if request is not None:
            trigger = _request_kind(request["triggers"])
        scores = decision.get("scores") or {}
        interval = scores.get("roc_auc_difference")
        version = str(decision.get("challenger_version"))
        rows.append({
            "day": day.isoformat() if day else None, "run_key": run_key, "run_id": _run_key_parts(run_key)[2],
            "trigger": trigger, "request": request, "window": window, "version": version,
            "champion_version": None if decision.get("champion_version") is None
            else str(decision["champion_version"]),
            "decision": decision.get("decision"), "reasons": list(decision.get("reasons") or []),
            "roc_auc": _rounded((scores.get("challenger") or {}).get("roc_auc")),
            "brier": _rounded((scores.get("challenger") or {}).get("brier")),
            "champion_roc_auc": _rounded((scores.get("champion") or {}).get("roc_auc")),
            "champion_brier": _rounded((scores.get("champion") or {}).get("brier")),
            "interval": None if not interval else {k: _rounded(interval.get(k)) for k in ("difference", "low", "high")}
            | {"confidence": interval.get("confidence")},
            "test_rows": decision.get("test_rows"),
            "deploys": [dict(d) for d in deploys if d["model_version"] == version],
        })
    return sorted(rows, key=lambda r: (r["day"] or "9999", r["run_key"]))


def frozen_training(rows: Sequence[Mapping[str, Any]], run_key: str | None = None) -> Mapping[str, Any] | None:
    """The frozen model's training: ``run_key``'s, else the earliest promoted one (the first champion)."""
    if run_key is not None:
        return next((r for r in rows if r["run_key"] == run_key), {"run_key": run_key, "version": None, "day": None})
    return next((r for r in rows if r["decision"] == PROMOTE), None)


def model_scorer(run_key: str, settings: Settings) -> Scorer:
    """The training run's model (``models/{run}/model.pt``) as a scorer of served frames."""
    from pipelines.training.steps import load_model

    model = load_model(run_key, settings)
    return lambda frame: np.asarray(model.predict_proba(frame), dtype=np.float64)


def _metrics(y: np.ndarray, p: np.ndarray) -> dict[str, Any]:
    from pipelines.training.evaluation import classification_metrics

    metrics = classification_metrics(y, p)
    return {"roc_auc": _rounded(metrics["roc_auc"]), "brier": _rounded(metrics["brier"])}


def iso_week(day: date) -> str:
    year, week, _ = day.isocalendar()
    return f"{year}-W{week:02d}"


def weekly_quality(lake: Lake, days: Iterable[date], frozen: Scorer | None) -> tuple[list[dict[str, Any]],
                                                                                       dict[str, Any]]:
    """ROC AUC and Brier score per ISO week of the matured labels of ``days`` (``labels/flight_delay/date=D/``):
    the live model's (the served probability) and, with ``frozen``, the frozen model's on the same flights (their
    served feature vectors). Also the figures pooled over every labelled flight. A week at a time, so the year's
    feature vectors are never in memory at once."""
    from pipelines.monitoring.report import served_frame
    from pipelines.training.reference import PREDICTION

    weeks: dict[str, list[date]] = {}
    for day in sorted(days):
        weeks.setdefault(iso_week(day), []).append(day)
    rows: list[dict[str, Any]] = []
    pooled: dict[str, list[np.ndarray]] = {"y": [], "live": [], "frozen": []}
    for week, week_days in weeks.items():
        parts = [lake.read_parquet(partition_key("labels", "flight_delay", d, "data.parquet")) for d in week_days]
        frame = served_frame(pd.concat([p for p in parts if not p.empty], ignore_index=True)) \
            if any(not p.empty for p in parts) else pd.DataFrame()
        if frame.empty or LABEL not in frame.columns:
            continue
        y = frame[LABEL].to_numpy(dtype=np.float64)
        live = frame[PREDICTION].to_numpy(dtype=np.float64)
        shadow = np.asarray(frozen(frame), dtype=np.float64) if frozen is not None else None
        pooled["y"].append(y)
        pooled["live"].append(live)
        if shadow is not None:
            pooled["frozen"].append(shadow)
        rows.append({"week": week, "start": week_days[0].isoformat(), "end": week_days[-1].isoformat(),
                     "days": len(week_days), "flights": len(frame), "disruption_rate": _rounded(y.mean()),
                     "model_versions": {str(k): int(v) for k, v in frame["model_version"].value_counts().items()},
                     "live": _metrics(y, live), "frozen": _metrics(y, shadow) if shadow is not None else None})
    paired = [r for r in rows if r["live"]["roc_auc"] is not None
              and (frozen is None or r["frozen"]["roc_auc"] is not None)]
    summary: dict[str, Any] = {"weeks": len(rows), "paired_weeks": len(paired),
                               "flights": int(sum(len(y) for y in pooled["y"]))}
    for name in ("live", "frozen"):
        if name == "frozen" and frozen is None:
            summary[name] = None
            continue
        summary[name] = {
            "mean_roc_auc": _rounded(np.mean([r[name]["roc_auc"] for r in paired])) if paired else None,
            "mean_brier": _rounded(np.mean([r[name]["brier"] for r in paired])) if paired else None,
            "pooled": _metrics(np.concatenate(pooled["y"]), np.concatenate(pooled[name])) if pooled[name] else None,
        }
    return rows, summary


def backtest_results(lake: Lake) -> dict[str, Any]:
    """The backtest's policy table (``reports/backtest/policies.json``), or how to produce it."""
    key = f"{BACKTEST_PREFIX}/{BACKTEST_FILES['json']}"
    if not lake.exists(key):
        return {"available": False, "how": BACKTEST_HOW}
    result = json.loads(lake.read_text(key))
    chart = f"{BACKTEST_PREFIX}/{BACKTEST_FILES['png']}"
    table = list(result.get("table") or [])
    policies = list(result.get("policies") or dict.fromkeys(r["policy"] for r in table))
    return {"available": True, "key": key, "url": lake.url(key), "policies": policies, "table": table,
            "first_champion": result.get("first_champion"),
            "chart_key": chart if lake.exists(chart) else None}


# --- the report ---------------------------------------------------------------------------------------------------

def _daily(first: date, last: date, summaries: Mapping[date, Mapping[str, Any]],
           quarantined: Sequence[Mapping[str, Any]], labelled: set[date]) -> list[dict[str, Any]]:
    by_day = {q["date"]: q["state"] for q in quarantined}
    default = MonitoringPolicy().drift_share
    rows = []
    for offset in range((last - first).days + 1):
        day = first + timedelta(days=offset)
        summary = summaries.get(day) or {}
        traffic = summary.get("traffic") or {}
        retrain = summary.get("retrain") or {}
        served = traffic.get("flights", traffic.get("predictions"))
        rows.append({
            "date": day.isoformat(), "monitored": bool(summary),
            "flights": None if served is None else int(served),
            "predictions": None if traffic.get("predictions") is None else int(traffic["predictions"]),
            "scheduled": None if traffic.get("scheduled") is None else int(traffic["scheduled"]),
            "model_version": summary.get("model_version"),
            "drift_share": summary.get("drift_share"),
            "drift_threshold": (summary.get("policy") or {}).get("drift_share", default) if summary else default,
            "retrain_requested": bool(retrain.get("requested")),
            "retrain_triggers": list(retrain.get("triggers") or []),
            "labelled": day in labelled, "quarantine": by_day.get(day.isoformat()),
        })
    return rows


def _headline(report: Mapping[str, Any]) -> str:
    traffic, quality = report["traffic"], report["quality"]
    served = f"{traffic['flights']:,} flights served"
    if traffic.get("scheduled"):
        served += f" of {traffic['scheduled']:,} in the feed"
    live, frozen = quality["live"]["mean_roc_auc"], (quality.get("frozen") or {}).get("mean_roc_auc")
    auc = ("ROC AUC live " + (f"{live:.3f}" if live is not None else "n/a")
           + (f" vs frozen {frozen:.3f}" if frozen is not None else ""))
    retrains = report["retrains"]
    quarantined = len(report["quarantines"])
    return (f"{report['days']['monitored']} of {report['days']['total']} days monitored, {served}, "
            f"{quarantined} quarantined day{'s' if quarantined != 1 else ''}, {retrains['count']} retrain"
            f"{'s' if retrains['count'] != 1 else ''} ({retrains['promoted']} promoted), {auc}")


def build_year_report(first: date, last: date, settings: Settings | None = None, *,
                      frozen_run_key: str | None = None, frozen_scorer: Scorer | None = None) -> dict[str, Any]:
    """The year report of ``first`` .. ``last`` from what the lake holds (see the module's docstring): written to
    ``reports/year/{first}_{last}/`` (``report.html``, a PNG per chart, ``summary.json``) and returned (the
    summary, with ``keys`` and ``paths``: each file's lake key and its path or URI). ``frozen_run_key``: the frozen
    model's training run (default: the earliest promoted one); ``frozen_scorer`` scores served frames in its
    place (tests)."""
    if last < first:
        raise ValueError(f"the report's last day {last} is before its first {first}")
    settings = settings or get_settings()
    lake = open_lake(settings)
    summaries = monitoring_summaries(lake, first, last)
    quarantined = quarantines(lake, first, last, _rerun_days(settings))
    deploys = read_deploys(settings)
    every_training = trainings(lake, summaries, deploys)
    frozen = frozen_training(every_training, frozen_run_key)
    listed = [t | {"frozen": frozen is not None and t["run_key"] == frozen["run_key"]} for t in every_training
              if (t["day"] is not None and first <= date.fromisoformat(t["day"]) <= last)
              or (frozen is not None and t["run_key"] == frozen["run_key"])]
    versions = {t["version"] for t in listed}

    scorer, frozen_error = frozen_scorer, None
    if scorer is None and frozen is not None:
        try:
            scorer = model_scorer(str(frozen["run_key"]), settings)
        except Exception as error:  # the report goes out without its shadow, saying why
            log.warning("year report: the frozen model %s cannot be loaded", frozen["run_key"], exc_info=True)
            frozen_error = f"{type(error).__name__}: {error}"
    labelled = {d for d in lake.partitions("labels", "flight_delay") if first <= d <= last}
    weeks, quality = weekly_quality(lake, labelled, scorer)

    daily = _daily(first, last, summaries, quarantined, labelled)
    served = [d for d in daily if d["flights"] is not None]
    scheduled = [d["scheduled"] for d in daily if d["scheduled"] is not None]
    measured = [d for d in daily if d["drift_share"] is not None]
    retrains = [t for t in listed if not t["frozen"]]
    report: dict[str, Any] = {
        "first": first.isoformat(), "last": last.isoformat(),
        "days": {"total": len(daily), "monitored": sum(d["monitored"] for d in daily), "labelled": len(labelled),
                 "quarantined": len(quarantined), "rerun": sum(q["state"] == RERUN for q in quarantined)},
        "traffic": {"flights": sum(d["flights"] for d in served),
                    "predictions": sum(d["predictions"] or 0 for d in served),
                    "scheduled": sum(scheduled) if scheduled else None,
                    "days_with_feed_count": len(scheduled),
                    "served_on_counted_days": sum(d["flights"] or 0 for d in daily if d["scheduled"] is not None)},
        "quarantines": quarantined,
        "drift": {"days_measured": len(measured),
                  "days_over_threshold": sum(d["drift_share"] >= d["drift_threshold"] for d in measured),
                  "max_share": max((d["drift_share"] for d in measured), default=None),
                  "max_day": max(measured, key=lambda d: d["drift_share"])["date"] if measured else None,
                  "threshold": measured[-1]["drift_threshold"] if measured else MonitoringPolicy().drift_share,
                  "requests": [{"date": d["date"], "triggers": d["retrain_triggers"]} for d in daily
                               if d["retrain_requested"]]},
        "trainings": listed,
        "retrains": {"count": len(retrains), "promoted": sum(t["decision"] == PROMOTE for t in retrains),
                     "by_trigger": {k: sum(t["trigger"] == k for t in retrains)
                                    for k in dict.fromkeys(t["trigger"] for t in retrains)}},
        "deploys": [d for d in deploys if d["model_version"] in versions],
        "other_deploys": sum(d["model_version"] not in versions for d in deploys),
        "frozen": None if frozen is None else {"run_key": frozen["run_key"], "version": frozen.get("version"),
                                               "window": frozen.get("window"), "error": frozen_error},
        "weekly": weeks, "quality": quality,
        "backtest": backtest_results(lake),
        "daily": daily,
    }
    report["headline"] = _headline(report)

    images = {name: draw(report) for name, draw in (("overview", overview_chart), ("traffic", traffic_chart),
                                                     ("drift", drift_chart), ("quality", quality_chart))}
    if report["backtest"].get("chart_key"):
        images[BACKTEST_CHART] = lake.read_bytes(report["backtest"]["chart_key"])
    keys = {"html": year_report_key(first, last, HTML_FILE), "summary": year_report_key(first, last, SUMMARY_FILE)}
    keys |= {name: year_report_key(first, last, f"{name}.png") for name in images}
    report["keys"] = keys
    report["paths"] = {name: lake.url(key) for name, key in keys.items()}
    for name, png in images.items():
        lake.write_bytes(keys[name], png)
    lake.write_text(keys["html"], render_html(report, images))
    lake.write_text(keys["summary"], json.dumps(report, indent=2, default=str))
    log.info("year report %s .. %s: %s -> %s", first, last, report["headline"], report["paths"]["html"])
    return report


# --- charts -------------------------------------------------------------------------------------------------------

def _when(day: str) -> datetime:
    return datetime.combine(date.fromisoformat(day), time())


def _figure(width_px: int, height_px: int, rows: int) -> tuple[Any, list[Any]]:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width_px / DPI, height_px / DPI), dpi=DPI, layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.subplots(rows, 1, sharex=True, squeeze=False)[:, 0]
    for ax in axes:
        ax.tick_params(labelsize=7, length=2)
        ax.grid(axis="y", linewidth=0.3)
    return figure, list(axes)


def _title(ax: Any, text: str) -> None:
    ax.set_title(text, fontsize=8, loc="left", pad=2)


def _span(report: Mapping[str, Any], ax: Any) -> None:
    from matplotlib.dates import AutoDateLocator, ConciseDateFormatter

    start, end = _when(report["first"]), _when(report["last"])
    ax.set_xlim(start - timedelta(days=1), end + timedelta(days=1))
    locator = AutoDateLocator(maxticks=12)
    ax.xaxis.set_major_locator(locator)
    ax.xaxis.set_major_formatter(ConciseDateFormatter(locator))


def _promotions(report: Mapping[str, Any], axes: Sequence[Any]) -> None:
    """The days promoted models could first serve, as dotted lines."""
    days = [_when(t["day"]) for t in report["trainings"] if t["decision"] == PROMOTE and t["day"]
            and report["first"] <= t["day"] <= report["last"]]
    for ax in axes:
        for when in days:
            ax.axvline(when, color=_PROMOTED, linestyle=":", linewidth=0.8)


def _nan(value: Any) -> float:
    return float("nan") if value is None else float(value)


def _traffic(report: Mapping[str, Any], ax: Any, annotate: bool) -> None:
    daily = report["daily"]
    when = [_when(d["date"]) for d in daily]
    served = [d["flights"] or 0 for d in daily]
    ax.bar(when, served, width=0.8, color=_LINE, alpha=0.7, label="flights served")
    if any(d["scheduled"] is not None for d in daily):
        ax.plot(when, [_nan(d["scheduled"]) for d in daily], color=_MUTED, linewidth=0.8, label="flights in the feed")
    top = max([1.0, *served, *(d["scheduled"] or 0 for d in daily)]) * 1.2
    for q in report["quarantines"]:
        colour = _RERUN if q["state"] == RERUN else _DRIFTED
        ax.plot([_when(q["date"])], [top * 0.93], marker="v", linestyle="none", color=colour, markersize=6)
        if annotate:
            ax.annotate(f"{q['date'][5:]} {q['state']}", (_when(q["date"]), top * 0.93), xytext=(3, -10),
                        textcoords="offset points", fontsize=6, color=colour)
    ax.set_ylim(0, top)
    ax.legend(fontsize=6, loc="lower left")
    _title(ax, "flights served per day (triangles: quarantined days; orange: re-run, red: still quarantined)")


def _drift(report: Mapping[str, Any], ax: Any, requests: bool) -> None:
    from matplotlib.ticker import PercentFormatter

    daily = report["daily"]
    when = [_when(d["date"]) for d in daily]
    share = [_nan(d["drift_share"]) for d in daily]
    threshold = [float(d["drift_threshold"]) for d in daily]
    ax.plot(when, share, marker="o", markersize=2, linewidth=0.8, color=_LINE)
    ax.plot(when, [s if s >= t else float("nan") for s, t in zip(share, threshold, strict=True)], marker="o",
            markersize=3, linestyle="none", color=_DRIFTED)
    ax.step(when, threshold, where="mid", color=_DRIFTED, linestyle="--", linewidth=0.8)
    ax.yaxis.set_major_formatter(PercentFormatter(1.0, decimals=0))
    top = max([0.3, *(s for s in share if not math.isnan(s)), *threshold]) * 1.15
    ax.set_ylim(0, top)
    if requests:
        asked = [_when(d["date"]) for d in daily if d["retrain_requested"]]
        ax.plot(asked, [top * 0.94] * len(asked), marker="v", linestyle="none", color="#8e44ad", markersize=5,
                label="retraining requested")
        if asked:
            ax.legend(fontsize=6, loc="upper left")
    _title(ax, f"drift share per day (dashed: the threshold, {report['drift']['threshold']:.0%}; red: at or over it)")


def _weekly(report: Mapping[str, Any], ax: Any, metric: str) -> None:
    weeks = report["weekly"]
    middle = [_when(w["start"]) + (_when(w["end"]) - _when(w["start"])) / 2 for w in weeks]
    live = [_nan(w["live"][metric]) for w in weeks]
    ax.plot(middle, live, marker="o", markersize=3, linewidth=1, color=_LINE, label="live model")
    if any(w["frozen"] for w in weeks):
        ax.plot(middle, [_nan((w["frozen"] or {}).get(metric)) for w in weeks], marker="s", markersize=2.5,
                linewidth=1, linestyle="--", color=_FROZEN, label="frozen first champion (shadow)")
    if weeks:
        ax.legend(fontsize=6, loc="lower left" if metric == "roc_auc" else "upper left")
    else:
        ax.text(0.5, 0.5, "no matured labels yet", transform=ax.transAxes, ha="center", va="center", fontsize=7,
                color=_MUTED)
    name = "ROC AUC" if metric == "roc_auc" else "Brier score (lower is better)"
    _title(ax, f"{name} per ISO week on matured labels (dotted green: promotions)")


def overview_chart(report: Mapping[str, Any]) -> bytes:
    """The email's chart (800x600 px): flights served, drift share and weekly ROC AUC, live against frozen."""
    figure, axes = _figure(800, 600, 3)
    _traffic(report, axes[0], annotate=False)
    _drift(report, axes[1], requests=False)
    _weekly(report, axes[2], "roc_auc")
    _promotions(report, axes)
    _span(report, axes[-1])
    figure.suptitle(f"Production {report['first']} .. {report['last']}", fontsize=9)
    return figure_png(figure)


def traffic_chart(report: Mapping[str, Any]) -> bytes:
    figure, axes = _figure(900, 320, 1)
    _traffic(report, axes[0], annotate=True)
    _span(report, axes[0])
    return figure_png(figure)


def drift_chart(report: Mapping[str, Any]) -> bytes:
    figure, axes = _figure(900, 320, 1)
    _drift(report, axes[0], requests=True)
    _promotions(report, axes)
    _span(report, axes[0])
    return figure_png(figure)


def quality_chart(report: Mapping[str, Any]) -> bytes:
    figure, axes = _figure(900, 520, 2)
    _weekly(report, axes[0], "roc_auc")
    _weekly(report, axes[1], "brier")
    _promotions(report, axes)
    _span(report, axes[-1])
    return figure_png(figure)


# --- HTML ---------------------------------------------------------------------------------------------------------

def _e(value: Any) -> str:
    return html.escape("" if value is None else str(value), quote=True)


def _n(value: Any, digits: int = 3) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def _table(rows: Iterable[Sequence[Any]], header: Sequence[str] = (), raw: Sequence[int] = ()) -> str:
    """An HTML table; the cells of the columns in ``raw`` are HTML already, the others are escaped."""
    head = f"<tr>{''.join(f'<th>{_e(h)}</th>' for h in header)}</tr>" if header else ""
    body = "".join("<tr>" + "".join(f"<td>{v if i in raw else _e(v)}</td>" for i, v in enumerate(row)) + "</tr>"
                   for row in rows)
    return f"<table>{head}{body}</table>"


def _image(png: bytes, name: str) -> str:
    data = base64.b64encode(png).decode("ascii")
    return f'<p><img src="data:image/png;base64,{data}" alt="{_e(CHARTS.get(name, name))}"></p>'


def _decision(training: Mapping[str, Any]) -> str:
    interval = training.get("interval")
    text = f"<b>{_e(str(training['decision']).upper())}</b>"
    if interval and interval.get("low") is not None:
        text += (f"<br>ROC AUC challenger - champion {interval['difference']:+.4f}, "
                 f"{(interval.get('confidence') or 0.95):.0%} interval [{interval['low']:+.4f}, "
                 f"{interval['high']:+.4f}]")
    reasons = "".join(f"<li>{_e(r)}</li>" for r in training.get("reasons") or [])
    return text + (f"<ul>{reasons}</ul>" if reasons else "")


def _deployed(training: Mapping[str, Any]) -> str:
    deploys = training.get("deploys") or []
    if not deploys:
        return "no deployment recorded" if training["decision"] == PROMOTE else ""
    return "<br>".join(_e(f"{d['status']} in slot {d['slot']} at {d['at']}" + (f": {d['reason']}" if d.get("reason")
                                                                              else "")) for d in deploys)


def _backtest_html(backtest: Mapping[str, Any], images: Mapping[str, bytes]) -> str:
    if not backtest.get("available"):
        return f"<p>{_e(backtest['how'])}</p>"
    table = backtest["table"]
    policies = backtest["policies"]
    cells = {(r["policy"], r["month"]): r for r in table}
    months = list(dict.fromkeys(r["month"] for r in table))
    rows = []
    for month in months:
        row: list[Any] = ["April-December" if month == "all" else month]
        for policy in policies:
            cell = cells.get((policy, month)) or {}
            row += [_n(cell.get("roc_auc"), 4), _n(cell.get("brier"), 4),
                    f"{cell.get('adopted', 0)}/{cell.get('trainings', 0)}" if cell else ""]
        rows.append(row)
    header = ["month"] + [f"{p} {what}" for p in policies for what in ("ROC AUC", "Brier", "adopted/trained")]
    chart = _image(images[BACKTEST_CHART], BACKTEST_CHART) if BACKTEST_CHART in images else ""
    return (f"<p>The retraining policies replayed on 2013 by the same training code, outside Airflow, without "
            f"tuning (<code>{_e(backtest['url'])}</code>): every flight scored by the model each policy had live "
            f"on its day. Adopted: trainings the gate promoted.</p>{_table(rows, header)}{chart}")


def render_html(report: Mapping[str, Any], images: Mapping[str, bytes]) -> str:
    """The report as one self-contained HTML page, the charts embedded as base64 PNGs."""
    traffic, drift, quality, frozen = report["traffic"], report["drift"], report["quality"], report["frozen"]
    figures = [
        ("days", f"{report['days']['monitored']} of {report['days']['total']} monitored, "
                 f"{report['days']['labelled']} with matured labels"),
        ("flights served", _n(traffic["flights"]) + (
            f" ({traffic['served_on_counted_days']:,} of {traffic['scheduled']:,} flights in the feed on the "
            f"{traffic['days_with_feed_count']} days that counted it)" if traffic["scheduled"] else "")),
        ("quarantined days", f"{report['days']['quarantined']} ({report['days']['rerun']} re-run)"),
        ("drift", f"{drift['days_over_threshold']} of {drift['days_measured']} measured days at or over the "
                  f"threshold; retraining requested on {len(drift['requests'])}"),
        ("retrains", f"{report['retrains']['count']}, {report['retrains']['promoted']} promoted ("
                     + ", ".join(f"{k}: {v}" for k, v in report["retrains"]["by_trigger"].items()) + ")"),
        ("mean weekly ROC AUC", f"live {_n(quality['live']['mean_roc_auc'])}, frozen "
                                f"{_n((quality.get('frozen') or {}).get('mean_roc_auc'))} over {quality['weeks']} "
                                "weeks"),
        ("mean weekly Brier", f"live {_n(quality['live']['mean_brier'])}, frozen "
                              f"{_n((quality.get('frozen') or {}).get('mean_brier'))}"),
    ]
    sections = [f"<p><b>{_e(report['headline'])}</b></p>", _table(figures),
                _image(images[MAIN_CHART], MAIN_CHART) if MAIN_CHART in images else ""]

    sections.append("<h2>Traffic and quarantines</h2>")
    if "traffic" in images:
        sections.append(_image(images["traffic"], "traffic"))
    if report["quarantines"]:
        sections.append(_table(
            [(q["date"], q["state"], "<br>".join(
                f"<b>{_e(table)}</b> ({_e(info['state'])}): <pre>{_e(info['reason'] or 'no reason recorded')}</pre>"
                for table, info in q["tables"].items())) for q in report["quarantines"]],
            ("day", "state", "tables and the validation's reason"), raw=(2,)))
    else:
        sections.append("<p>No day was quarantined.</p>")

    sections.append("<h2>Drift</h2>")
    if "drift" in images:
        sections.append(_image(images["drift"], "drift"))
    sections.append(f"<p>Highest drift share: {_n(drift['max_share'])} on {_e(drift['max_day'])}. Retraining "
                    "requested on: " + (", ".join(f"{_e(r['date'])} ({_e(', '.join(r['triggers']))})"
                                                  for r in drift["requests"]) or "no day") + ".</p>")

    sections.append("<h2>Retraining</h2>")
    if frozen is not None:
        sections.append(f"<p>Frozen model (the shadow below): version {_e(frozen['version'])}, run "
                        f"<code>{_e(frozen['run_key'])}</code>, window {_e(' .. '.join(frozen['window'] or []))}"
                        + (f". <b>Not scored</b>: {_e(frozen['error'])}" if frozen.get("error") else "") + ".</p>")
    if report["trainings"]:
        sections.append(_table(
            [(t["day"] or "unknown", t["trigger"] + (" (frozen model)" if t["frozen"] else "")
              + (f", asked by monitoring of {t['request']['day']}" if t.get("request") else ""),
              " .. ".join(t["window"] or []), f"v{t['version']} (champion then: "
              f"{'v' + t['champion_version'] if t['champion_version'] else 'none'})",
              f"{_n(t['roc_auc'], 4)} / {_n(t['champion_roc_auc'], 4)}", _decision(t), _deployed(t),
              f"<code>{_e(t['run_key'])}</code>") for t in report["trainings"]],
            ("first day", "trigger", "window", "version", "test ROC AUC challenger / champion", "gate",
             "deployments", "run"), raw=(5, 6, 7)))
    else:
        sections.append("<p>No training was judged by the gate in these days.</p>")
    if report["deploys"]:
        sections.append("<h3>Deployments</h3>" + _table(
            [(d["at"], f"v{d['model_version']}", d["status"], d["slot"], d.get("reason") or "")
             for d in report["deploys"]], ("at (wall clock)", "version", "status", "slot", "reason")))

    sections.append("<h2>Live model against the frozen first champion</h2>")
    if "quality" in images:
        sections.append(_image(images["quality"], "quality"))
    sections.append(_table(
        [(w["week"], f"{w['start']} .. {w['end']}", _n(w["flights"]), _n(w["disruption_rate"]),
          ", ".join(f"v{k}: {v:,}" for k, v in w["model_versions"].items()), _n(w["live"]["roc_auc"]),
          _n((w["frozen"] or {}).get("roc_auc")), _n(w["live"]["brier"]), _n((w["frozen"] or {}).get("brier")))
         for w in report["weekly"]],
        ("ISO week", "days", "labelled flights", "disruption rate", "served by", "ROC AUC live", "ROC AUC frozen",
         "Brier live", "Brier frozen")))

    sections.append("<h2>What retraining is worth</h2>" + _backtest_html(report["backtest"], images))
    sections.append(f"<p><small>Built from the lake: monitoring summaries, quarantine partitions, "
                    f"<code>models/*/promotion.json</code>, labels; deployments from the deploy history. "
                    f"Summary: <code>{_e(report['paths']['summary'])}</code>.</small></p>")
    title = f"Flight-disruption model in production, {report['first']} .. {report['last']}"
    style = ("body{font-family:sans-serif;max-width:1100px;margin:auto}table{border-collapse:collapse;margin:8px 0}"
             "td,th{padding:2px 8px;border-bottom:1px solid #ddd;text-align:left;vertical-align:top;font-size:13px}"
             "pre{white-space:pre-wrap;margin:0;font-size:12px}img{max-width:100%}")
    return (f"<!DOCTYPE html><html><head><meta charset=\"utf-8\"><title>{_e(title)}</title><style>{style}</style>"
            f"</head><body><h1>{_e(title)}</h1>{''.join(sections)}</body></html>")


def write_main_chart(report: Mapping[str, Any], folder: Path, settings: Settings | None = None) -> Path:
    """The report's main chart, copied from the lake to ``folder`` (a local file for the email to attach), named
    ``year_report_{first}_{last}.png``: its Content-ID in the email."""
    lake = open_lake(settings or get_settings())
    path = Path(folder) / f"year_report_{report['first']}_{report['last']}.png"
    path.write_bytes(lake.read_bytes(report["keys"][MAIN_CHART]))
    return path

