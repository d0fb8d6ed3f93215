"""The year report (pipelines.monitoring.year_report) on a small synthetic lake: two weeks of monitoring summaries,
labelled predictions with their served feature vectors, four trainings judged by the gate, quarantined days (one
re-run the lake still shows, one only make year's record remembers, one still quarantined), a deploy history and
the backtest's results; the frozen model is a tiny real network, scored offline on the served features. And its
email (pipelines.monitoring.notifications.year_report_email): small, with the chart inline."""

from __future__ import annotations

import base64
import json
import re
from datetime import date, timedelta
from email.mime.application import MIMEApplication
from email.mime.multipart import MIMEMultipart
from email.mime.text import MIMEText
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

from pipelines.core.lake import REPORT_FILES, Lake, monitoring_report_key, open_lake, partition_key
from pipelines.core.runs import run_slug
from pipelines.core.settings import Settings
from pipelines.monitoring.notifications import year_report_email
from pipelines.monitoring.year_report import (
    CHARTS,
    QUARANTINED,
    RERUN,
    build_year_report,
    read_year_report,
    trigger_of,
    write_main_chart,
)
from pipelines.serving.prediction_log import feature_json
from pipelines.training.columns import CATEGORICAL_COLUMNS, NUMERIC_COLUMNS
from tests.conftest import synthetic_training_frame

FIRST, LAST = date(2013, 4, 1), date(2013, 4, 14)
FLIGHTS_A_DAY = 60
LABELLED_DAYS = [FIRST + timedelta(days=i) for i in range(11)]  # Apr 1-11: W14 (1-7) and W15 (8-11)
UNMONITORED = date(2013, 4, 12)
DRIFT_DAY = date(2013, 4, 10)
FIRST_CHAMPION = "flight_delay_training/2013-04-01T10:00:00+00:00/manual__2013-04-01T10:00:00+00:00"
WEEKLY = "flight_delay_training/2013-04-08T10:00:00+00:00/backfill__2013-04-08T10:00:00+00:00"
# A request's run is dated at the wall clock's time: only its window places it in 2013.
REQUESTED = "flight_delay_training/2026-05-02T12:00:00+00:00/asset_triggered__2026-05-02T12:00:00+00:00"
LATER = "flight_delay_training/2013-05-06T10:00:00+00:00/backfill__2013-05-06T10:00:00+00:00"
# A year before the monitored day, as a request asks; the training keeps what the feed holds of it (from January 1).
REQUEST_WINDOW = {"start_date": "2012-04-10", "end_date": "2013-04-09"}


def _write_json(lake: Lake, key: str, body: dict[str, Any]) -> None:
    lake.write_text(key, json.dumps(body))


def _train_tiny_model() -> Any:
    import torch

    from pipelines.training.fit import time_split, train_model

    train, valid, _ = time_split(synthetic_training_frame(n=900, days=20, seed=1), valid_days=4, test_days=2)
    return train_model(train, valid, {"hidden_sizes": [16], "dropout": 0.0, "lr": 3e-3, "batch_size": 256,
                                      "members": 1}, seed=0, max_epochs=2, patience=2, device=torch.device("cpu"))


def _labels(rows: pd.DataFrame, day: date, probability: np.ndarray, version: str) -> pd.DataFrame:
    """The labelled predictions of ``day`` as label_predictions writes them: the prediction log's row (request,
    served probability, model version, the features JSON the model read) and the outcome."""
    features = {c: rows[c].tolist() for c in ("route", *CATEGORICAL_COLUMNS, *NUMERIC_COLUMNS) if c in rows}
    ids = [f"{day}:{flight}" for flight in rows["flight_id"]]
    return pd.DataFrame({
        "request_id": [f"r{i}" for i in range(len(rows))], "flight_id": ids,
        "served_at": pd.Timestamp(day, tz="UTC") + pd.to_timedelta(np.arange(len(rows)), "min"),
        "carrier": rows["carrier"].to_numpy(), "origin": rows["origin"].to_numpy(),
        "probability": probability, "model_version": version,
        "features": [feature_json(features, i) for i in range(len(rows))],
        "disrupted": rows["disrupted"].to_numpy(),
    })


def _summary(day: date, version: str, share: float, retrain: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"date": day.isoformat(), "model_version": version, "drift_share": share,
            "drift_detected": share >= 0.12,
            "traffic": {"flights": FLIGHTS_A_DAY, "predictions": FLIGHTS_A_DAY + 1, "scheduled": FLIGHTS_A_DAY + 2},
            "retrain": retrain or {"requested": False, "triggers": [], "reasons": ["nothing beyond its threshold"]},
            "policy": {"drift_share": 0.12}}


def _promotion(lake: Lake, run_key: str, window: tuple[str, str], version: str, decision: str,
               champion: str | None, interval: dict[str, float] | None = None) -> None:
    scores: dict[str, Any] = {"challenger": {"roc_auc": 0.7123, "brier": 0.171}}
    reasons = [f"challenger ROC AUC 0.7123 clears the floor 0.60 ({run_key[-30:]})"]
    if champion is not None:
        scores |= {"champion": {"roc_auc": 0.7001, "brier": 0.172}, "roc_auc_difference": interval}
        reasons.append("ROC AUC challenger - champion: see the interval")
    _write_json(lake, f"models/{run_slug(run_key)}/promotion.json", {
        "run_key": run_key, "model": "flight_delay_classifier", "challenger_version": version,
        "champion_version": champion, "decision": decision, "reasons": reasons, "scores": scores,
        "policy": {}, "test_rows": 500})
    _write_json(lake, f"training/{run_slug(run_key)}/manifest.json", {"run_key": run_key, "window": list(window)})


@pytest.fixture(scope="module")
def year(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The synthetic lake, the report built from it, and what the test knows the figures must be."""
    settings = Settings(pipeline_home=tmp_path_factory.mktemp("year_report") / "home", lake_uri=None,
                        s3_endpoint_url=None)
    lake = open_lake(settings)
    model = _train_tiny_model()
    lake.write_bytes(f"models/{run_slug(FIRST_CHAMPION)}/model.pt", model.to_bytes())

    flights = synthetic_training_frame(n=FLIGHTS_A_DAY * len(LABELLED_DAYS), days=20, seed=7)
    rng = np.random.default_rng(3)
    truth: dict[str, dict[str, list[np.ndarray]]] = {}
    for i, day in enumerate(LABELLED_DAYS):
        rows = flights.iloc[i * FLIGHTS_A_DAY:(i + 1) * FLIGHTS_A_DAY].reset_index(drop=True)
        frozen = model.predict_proba(rows)
        # week 14 is served by the frozen model itself; week 15 by version 2 (another model: noisier scores)
        live, version = (frozen, "1") if day < date(2013, 4, 8) else (
            np.clip(0.3 * rows["disrupted"].to_numpy() + rng.uniform(0, 0.7, len(rows)), 0, 1), "2")
        lake.write_parquet(partition_key("labels", "flight_delay", day, "data.parquet"),
                           _labels(rows, day, live, version))
        week = "2013-W14" if day < date(2013, 4, 8) else "2013-W15"
        for name, values in (("y", rows["disrupted"].to_numpy()), ("live", live), ("frozen", frozen)):
            truth.setdefault(week, {}).setdefault(name, []).append(values)

    for i in range(15):
        day = FIRST + timedelta(days=i)
        if day == UNMONITORED or day > LAST:
            continue
        retrain = {"requested": True, "triggers": ["data_drift"], "reasons": ["drift"], "window": REQUEST_WINDOW} \
            if day == DRIFT_DAY else None
        _write_json(lake, monitoring_report_key(day, REPORT_FILES["summary"]),
                    _summary(day, "1" if day < date(2013, 4, 8) else "2", 0.25 if day == DRIFT_DAY else 0.01 * i,
                             retrain))
    # the days after the report: not in it
    _write_json(lake, monitoring_report_key(LAST + timedelta(days=1), REPORT_FILES["summary"]),
                _summary(LAST + timedelta(days=1), "2", 0.9))

    _promotion(lake, FIRST_CHAMPION, ("2013-01-01", "2013-03-31"), "1", "promote", None)
    _promotion(lake, WEEKLY, ("2013-01-07", "2013-04-07"), "2", "promote", "1",
               {"difference": 0.0122, "low": -0.0041, "high": 0.0297, "confidence": 0.95, "resamples": 1000.0})
    _promotion(lake, REQUESTED, ("2013-01-01", REQUEST_WINDOW["end_date"]), "3", "reject", "2",
               {"difference": -0.0301, "low": -0.0512, "high": -0.011, "confidence": 0.95, "resamples": 1000.0})
    _promotion(lake, LATER, ("2013-02-04", "2013-05-05"), "4", "promote", "2",
               {"difference": 0.01, "low": 0.0, "high": 0.02, "confidence": 0.95, "resamples": 1000.0})

    # 04-03: the flights' quarantine is still in the lake beside the re-run's validated partition; 04-05: the lake
    # dropped it when the re-run validated, make year's state remembers; 04-12: weather still quarantined.
    for day in (date(2013, 4, 3), date(2013, 4, 5)):
        lake.write_parquet(partition_key("validated", "flights", day, "data.parquet"), pd.DataFrame({"a": [1]}))
    _write_json(lake, partition_key("quarantine", "flights", date(2013, 4, 3), "validation.json"),
                {"status": "quarantined", "reason": "flights 2013-04-03 quarantined (812 rows), 1 failed:\n"
                                                    "  - flight ids are unique: 4 rows failed"})
    _write_json(lake, partition_key("quarantine", "weather", UNMONITORED, "validation.json"),
                {"status": "quarantined", "reason": "weather 2013-04-12 quarantined (0 rows), 1 failed:\n"
                                                    "  - a day has 60 to 80 hourly rows: observed 0"})
    (settings.pipeline_home / "year").mkdir(parents=True)
    (settings.pipeline_home / "year" / "state.json").write_text(json.dumps({"broken": ["2013-04-05"],
                                                                           "repaired": ["2013-04-05"]}))

    (settings.pipeline_home / "deploy").mkdir(parents=True)
    deploys = [{"at": "2026-05-01T10:00:00+00:00", "model_version": "1", "status": "live", "slot": "blue"},
               {"at": "2026-05-01T11:00:00+00:00", "model_version": "2", "status": "rolled_back", "slot": "green",
                "reason": "smoke test failed: p99 over budget"},
               {"at": "2026-05-01T11:05:00+00:00", "model_version": "2", "status": "live", "slot": "green",
                "previous": {"model_version": "1"}},
               {"at": "2026-04-01T09:00:00+00:00", "model_version": "9", "status": "live", "slot": "blue"}]
    (settings.pipeline_home / "deploy" / "history.jsonl").write_text(
        "".join(json.dumps(d) + "\n" for d in deploys) + "not json\n")

    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(1, 1))
    FigureCanvasAgg(figure)
    png = Path(tmp_path_factory.mktemp("backtest")) / "roc.png"
    figure.savefig(png, format="png")
    lake.write_bytes("reports/backtest/roc_auc.png", png.read_bytes())
    table = [{"policy": p, "month": m, "flights": 100, "roc_auc": auc, "brier": 0.18, "trainings": t, "adopted": a}
             for p, auc, t, a in (("frozen", 0.6811, 0, 0), ("weekly", 0.7012, 2, 1), ("drift", 0.6954, 1, 1))
             for m in ("2013-04", "all")]
    _write_json(lake, "reports/backtest/policies.json", {"policies": ["frozen", "weekly", "drift"], "table": table})

    report = build_year_report(FIRST, LAST, settings)
    return {"settings": settings, "lake": lake, "report": report, "truth": truth, "model": model}


def _auc(values: dict[str, list[np.ndarray]], name: str) -> float:
    return round(float(roc_auc_score(np.concatenate(values["y"]), np.concatenate(values[name]))), 4)


def _brier(values: dict[str, list[np.ndarray]], name: str) -> float:
    return round(float(np.mean((np.concatenate(values[name]) - np.concatenate(values["y"])) ** 2)), 4)


def test_weekly_roc_auc_and_brier_of_the_live_and_the_frozen_model(year: dict[str, Any]) -> None:
    weeks = {w["week"]: w for w in year["report"]["weekly"]}
    truth = year["truth"]

    assert list(weeks) == ["2013-W14", "2013-W15"]
    assert [(w["start"], w["end"], w["days"], w["flights"]) for w in weeks.values()] == [
        ("2013-04-01", "2013-04-07", 7, 7 * FLIGHTS_A_DAY), ("2013-04-08", "2013-04-11", 4, 4 * FLIGHTS_A_DAY)]
    assert weeks["2013-W14"]["model_versions"] == {"1": 7 * FLIGHTS_A_DAY}
    for week, values in truth.items():
        assert weeks[week]["live"] == {"roc_auc": _auc(values, "live"), "brier": _brier(values, "live")}, week
        # the frozen model scored from the served features JSON, as it scores the original rows
        assert weeks[week]["frozen"]["roc_auc"] == pytest.approx(_auc(values, "frozen"), abs=2e-4), week
        assert weeks[week]["frozen"]["brier"] == pytest.approx(_brier(values, "frozen"), abs=2e-4), week
    # the week the frozen model itself was live: the shadow agrees with what was served
    assert weeks["2013-W14"]["frozen"]["roc_auc"] == pytest.approx(weeks["2013-W14"]["live"]["roc_auc"], abs=2e-4)
    assert weeks["2013-W15"]["frozen"]["roc_auc"] != weeks["2013-W15"]["live"]["roc_auc"]
    quality = year["report"]["quality"]
    assert quality["live"]["mean_roc_auc"] == pytest.approx(
        np.mean([_auc(v, "live") for v in truth.values()]), abs=1e-4)
    assert quality["frozen"]["mean_roc_auc"] == pytest.approx(
        np.mean([_auc(v, "frozen") for v in truth.values()]), abs=3e-4)
    assert quality["paired_weeks"] == 2 and quality["flights"] == len(LABELLED_DAYS) * FLIGHTS_A_DAY


def test_quarantined_days_and_the_reruns(year: dict[str, Any]) -> None:
    report = year["report"]

    assert [(q["date"], q["state"], sorted(q["tables"])) for q in report["quarantines"]] == [
        ("2013-04-03", RERUN, ["flights"]), ("2013-04-05", RERUN, ["flights"]),
        ("2013-04-12", QUARANTINED, ["weather"])]
    assert "flight ids are unique" in report["quarantines"][0]["tables"]["flights"]["reason"]
    assert "re-landed" in report["quarantines"][1]["tables"]["flights"]["reason"]
    assert report["days"] | {} == {"total": 14, "monitored": 13, "labelled": 11, "quarantined": 3, "rerun": 2}
    daily = {d["date"]: d for d in report["daily"]}
    assert daily["2013-04-03"]["quarantine"] == RERUN and daily["2013-04-12"]["quarantine"] == QUARANTINED
    assert daily["2013-04-04"]["quarantine"] is None


def test_every_retrain_with_its_trigger_the_gates_decision_and_its_deployments(year: dict[str, Any]) -> None:
    report = year["report"]
    listed = {t["run_key"]: t for t in report["trainings"]}

    assert list(listed) == [FIRST_CHAMPION, WEEKLY, REQUESTED]  # the one serving from May is not in these days
    first, weekly, requested = listed.values()
    assert (first["day"], first["trigger"], first["frozen"], first["decision"]) == (
        "2013-04-01", "manual", True, "promote")
    assert (weekly["day"], weekly["trigger"], weekly["decision"], weekly["version"], weekly["champion_version"]) == (
        "2013-04-08", "weekly schedule", "promote", "2", "1")
    assert weekly["interval"] == {"difference": 0.0122, "low": -0.0041, "high": 0.0297, "confidence": 0.95}
    assert (requested["day"], requested["trigger"], requested["request"], requested["decision"]) == (
        "2013-04-10", "drift request", {"day": "2013-04-10", "triggers": ["data_drift"]}, "reject")
    assert requested["reasons"] and requested["interval"]["high"] == -0.011
    assert [(d["status"], d["slot"]) for d in weekly["deploys"]] == [("rolled_back", "green"), ("live", "green")]
    assert requested["deploys"] == []
    assert report["retrains"] == {"count": 2, "promoted": 1, "by_trigger": {"weekly schedule": 1, "drift request": 1}}
    assert [d["model_version"] for d in report["deploys"]] == ["1", "2", "2"] and report["other_deploys"] == 1
    assert report["frozen"] | {} == {"run_key": FIRST_CHAMPION, "version": "1", "window": ["2013-01-01", "2013-03-31"],
                                     "error": None}


@pytest.mark.parametrize(("run_id", "trigger"), [
    ("scheduled__2013-04-08T10:00:00+00:00", "weekly schedule"), ("backfill__2013-04-08T10:00:00+00:00",
                                                                   "weekly schedule"),
    ("asset_triggered__2026-05-02T12:00:00+00:00", "drift or quality request"),
    ("manual__2013-04-01T10:00:00+00:00", "manual")])
def test_the_trigger_is_read_from_the_run_id(run_id: str, trigger: str) -> None:
    assert trigger_of(f"flight_delay_training/2013-04-08T10:00:00+00:00/{run_id}") == trigger


def test_traffic_and_drift_per_day(year: dict[str, Any]) -> None:
    report = year["report"]

    assert report["traffic"] == {"flights": 13 * FLIGHTS_A_DAY, "predictions": 13 * (FLIGHTS_A_DAY + 1),
                                 "scheduled": 13 * (FLIGHTS_A_DAY + 2), "days_with_feed_count": 13,
                                 "served_on_counted_days": 13 * FLIGHTS_A_DAY}
    daily = {d["date"]: d for d in report["daily"]}
    assert len(daily) == 14 and daily[UNMONITORED.isoformat()]["flights"] is None
    assert daily["2013-04-10"]["drift_share"] == 0.25 and daily["2013-04-10"]["drift_threshold"] == 0.12
    # 0.01 * day index: days 12 and 13 reach the threshold, and the drift day
    assert report["drift"]["days_over_threshold"] == 3 and report["drift"]["max_day"] == "2013-04-10"
    assert report["drift"]["requests"] == [{"date": "2013-04-10", "triggers": ["data_drift"]}]
    assert report["headline"].startswith(f"13 of 14 days monitored, {13 * FLIGHTS_A_DAY:,} flights served of "
                                         f"{13 * (FLIGHTS_A_DAY + 2):,} in the feed, 3 quarantined days, 2 retrains "
                                         "(1 promoted), ROC AUC live ")


def test_the_report_html_with_its_images_the_pngs_and_the_summary_are_in_the_lake(year: dict[str, Any]) -> None:
    report, lake = year["report"], year["lake"]
    folder = "reports/year/2013-04-01_2013-04-14"

    assert sorted(report["keys"]) == sorted(["html", "summary", *CHARTS, "backtest"])
    for name in [*CHARTS, "backtest"]:
        assert report["keys"][name] == f"{folder}/{name}.png"
        assert lake.read_bytes(report["keys"][name]).startswith(b"\x89PNG\r\n\x1a\n"), name
    page = lake.read_text(f"{folder}/report.html")
    images = re.findall(r'<img src="data:image/png;base64,([^"]+)"', page)
    assert len(images) == len(CHARTS) + 1  # the report opens anywhere: every chart is inside it
    assert base64.b64decode(images[0]) == lake.read_bytes(report["keys"]["overview"])
    assert "src=\"http" not in page and "quarantined, re-run" in page and "weekly schedule" in page
    assert "[-0.0041, +0.0297]" in page and "0.7012" in page  # the gate's interval, the backtest's table
    assert read_year_report(FIRST, LAST, year["settings"]) == json.loads(json.dumps(report, default=str))


def test_the_email_is_under_a_megabyte_with_the_chart_inline(year: dict[str, Any], tmp_path: Path) -> None:
    report, settings = year["report"], year["settings"]
    chart = write_main_chart(report, tmp_path, settings)

    parts = year_report_email(report, settings, chart=chart)

    assert parts.subject.startswith("[flight_delay] year report 2013-04-01 .. 2013-04-14: 13 of 14 days monitored")
    assert parts.attachments == [chart] and chart.read_bytes() == year["lake"].read_bytes(report["keys"]["overview"])
    (source,) = re.findall(r'<img src="cid:([^"]+)"', parts.html)
    assert source == chart.name == "year_report_2013-04-01_2013-04-14.png"
    assert report["paths"]["html"] in parts.html and parts.reports[0] == report["paths"]["html"]
    assert f"live {report['quality']['live']['mean_roc_auc']:.3f}, frozen " in parts.html
    assert "2013-04-05 (quarantined, re-run)" in parts.html
    # the message as Airflow's SMTP hook builds it (MIMEApplication parts with Content-ID <file name>)
    message = MIMEMultipart("mixed")
    message["Subject"] = parts.subject
    message.attach(MIMEText(parts.html, "html", "utf-8"))
    for path in parts.attachments:
        part = MIMEApplication(path.read_bytes(), Name=path.name)
        part["Content-ID"] = f"<{path.name}>"
        message.attach(part)
    assert len(message.as_bytes()) < 1_000_000


def test_an_empty_lake_gives_a_report_that_says_how_to_get_the_backtest(settings: Settings) -> None:
    report = build_year_report(FIRST, LAST, settings, frozen_run_key="flight_delay_training/x/manual__x")

    assert report["days"]["monitored"] == 0 and report["weekly"] == [] and report["trainings"] == []
    assert report["backtest"] == {"available": False, "how": report["backtest"]["how"]}
    assert "python -m pipelines backtest" in report["backtest"]["how"]
    assert report["frozen"]["error"] and "FileNotFoundError" in report["frozen"]["error"]
    assert "python -m pipelines backtest" in open_lake(settings).read_text(report["keys"]["html"])
    assert "backtest" in year_report_email(report, settings).html


def test_the_last_day_must_not_come_before_the_first(settings: Settings) -> None:
    with pytest.raises(ValueError, match="before its first"):
        build_year_report(LAST, FIRST, settings)
