"""Monitoring on synthetic frames: drift found when features shift and not when they do not, the prediction log
parsed back into feature rows, the retraining decision's thresholds, minimums and cooldown, and the reports written
to the lake.

An Evidently report takes seconds (most of it plotting), so the reports are built once per module, each in a home
of its own, and several tests read each."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from benchmarks.monitoring import prediction_log_rows
from pipelines.core.lake import Lake, open_lake
from pipelines.core.names import LABEL
from pipelines.core.settings import Settings
from pipelines.monitoring.report import (
    build_drift_report,
    build_report,
    evidently_dataset,
    labelled_scores,
    monitoring_history,
    read_summary,
    served_frame,
)
from pipelines.monitoring.retrain import MonitoringPolicy, decide_retrain
from pipelines.training.columns import CATEGORICAL_COLUMNS, NUMERIC_COLUMNS
from pipelines.training.evaluation import classification_metrics
from pipelines.training.reference import (
    CALIBRATION_QUANTILE,
    DRIFT_FEATURES,
    NOT_DRIFT_TESTED,
    PREDICTION,
    THRESHOLD_FLOOR,
    calibrate_thresholds,
    drift_score,
    feature_frame,
    method_of,
    reference_key,
)

DAY = date(2013, 7, 15)
TRAINING = {"metrics": {"network": {"roc_auc": 0.70, "brier": 0.16}}}  # evaluation.json's shape
SHIFTED = ("temp", "dewp", "humid", "pressure", "carrier_disruption_rate_28d", "route_disruption_rate_28d",
           "carrier_mean_arr_delay_28d", "route_mean_arr_delay_28d")
Flights = Callable[..., pd.DataFrame]


@pytest.fixture(scope="module")
def flights(make_training_frame: Callable[..., pd.DataFrame]) -> Flights:
    """``make_training_frame`` with real-looking flight ids (their date is the day the frame drew)."""

    def make(n: int, days: int, seed: int, first: date = date(2013, 3, 1)) -> pd.DataFrame:
        frame = make_training_frame(n=n, days=days, seed=seed)
        offsets = (frame["scheduled_departure"] - pd.Timestamp("2013-03-01", tz="UTC")).dt.days
        dates = [(first + timedelta(days=int(d))).isoformat() for d in offsets]
        numbers = [f"{c}{i}" for i, c in enumerate(frame["carrier"])]
        frame["flight_id"] = [f"{d}:{num}:{o}" for d, num, o in zip(dates, numbers, frame["origin"], strict=True)]
        return frame

    return make


def _scores(frame: pd.DataFrame) -> np.ndarray:
    """A stand-in model: a fixed function of a few features."""
    logit = -1.2 + 8 * frame["precip"].fillna(0) + 0.2 * (frame["dep_hour"] - 14) + 0.5 * frame["temp"]
    return np.asarray(1 / (1 + np.exp(-logit.to_numpy())))


def _scored(frame: pd.DataFrame) -> pd.DataFrame:
    return feature_frame(frame, _scores(frame))


@pytest.fixture(scope="module")
def reference(flights: Flights) -> pd.DataFrame:
    """A calibrated reference: 3,000 of 6,000 training flights over 20 days, thresholds from those days."""
    train = _scored(flights(6000, 20, seed=0))
    sample = train.sample(n=3000, random_state=0).reset_index(drop=True)
    sample.attrs["monitoring"] = {"calibration": calibrate_thresholds(sample, train)}
    return sample


@pytest.fixture(scope="module")
def calm_day(flights: Flights) -> pd.DataFrame:
    """One day of 1,000 served flights drawn like the reference."""
    return _scored(flights(1000, 1, seed=1, first=DAY))


@pytest.fixture(scope="module")
def labelled(flights: Flights) -> pd.DataFrame:
    """The 7 days before DAY, with their labels."""
    return _scored(flights(3500, 7, seed=2, first=DAY - timedelta(days=7)))


@pytest.fixture(scope="module")
def drifted_day(calm_day: pd.DataFrame, reference: pd.DataFrame) -> pd.DataFrame:
    """The calm day with 8 day-level features moved 3 reference deviations, every flight flown by one carrier, the
    scores raised (what a model makes of that) and no gust reported all day."""
    day = calm_day.copy()
    for column in SHIFTED:
        day[column] = day[column] + 3 * reference[column].std()
    day["carrier"] = "UA"
    day[PREDICTION] = np.clip(day[PREDICTION] + 0.3, 0, 1)
    day["wind_gust"] = np.nan
    return day


def _home(tmp_path_factory: pytest.TempPathFactory, name: str) -> Settings:
    return Settings(pipeline_home=Path(tmp_path_factory.mktemp(name)) / "home", lake_uri=None)


@pytest.fixture(scope="module")
def calm(tmp_path_factory: pytest.TempPathFactory, reference: pd.DataFrame, calm_day: pd.DataFrame,
         labelled: pd.DataFrame) -> tuple[dict[str, Any], Lake]:
    settings = _home(tmp_path_factory, "calm")
    return build_report(reference, calm_day, labelled, TRAINING, DAY, settings), open_lake(settings)


@pytest.fixture(scope="module")
def drifting(tmp_path_factory: pytest.TempPathFactory, reference: pd.DataFrame,
             drifted_day: pd.DataFrame) -> tuple[list[dict[str, Any]], Settings]:
    """The drifted day reported on DAY and again two days later, in one lake (the second within the cooldown)."""
    settings = _home(tmp_path_factory, "drifting")
    few_labels = drifted_day.head(50).assign(**{LABEL: 1})
    summaries = [build_report(reference, drifted_day, few_labels, TRAINING, day, settings)
                 for day in (DAY, DAY + timedelta(days=2))]
    return summaries, settings


def test_calibrated_thresholds_are_never_below_evidentlys_default(reference: pd.DataFrame) -> None:
    calibration = reference.attrs["monitoring"]["calibration"]
    assert calibration["days"] == 20 and calibration["quantile"] == CALIBRATION_QUANTILE
    assert set(calibration["thresholds"]) == {*DRIFT_FEATURES, PREDICTION}
    assert min(calibration["thresholds"].values()) >= THRESHOLD_FLOOR
    assert not set(NOT_DRIFT_TESTED) & set(DRIFT_FEATURES)


def test_no_drift_when_the_day_is_drawn_like_the_reference(calm: tuple[dict[str, Any], Lake]) -> None:
    summary, _ = calm
    assert summary["thresholds"]["calibrated"]
    assert summary["tested_features"] == len(DRIFT_FEATURES)
    assert summary["drift_share"] < MonitoringPolicy().drift_share and not summary["drift_detected"]
    assert not summary["prediction_drift"]["drifted"]
    assert not summary["retrain"]["requested"] and summary["retrain"]["window"] is None
    assert summary["retrain"]["triggers"] == []
    assert summary["traffic"] == {"predictions": 1000, "flights": 1000, "model_versions": {}}


def test_reports_land_in_the_lake(calm: tuple[dict[str, Any], Lake]) -> None:
    summary, lake = calm
    folder = f"reports/monitoring/date={DAY}"
    assert summary["report_keys"] == {"html": f"{folder}/report.html", "json": f"{folder}/report.json",
                                      "summary": f"{folder}/summary.json"}
    assert json.loads(lake.read_text(summary["report_keys"]["summary"])) == summary
    assert lake.read_text(summary["report_keys"]["html"]).lstrip().lower().startswith("<!doctype html")
    evidently = json.loads(lake.read_text(summary["report_keys"]["json"]))
    types = {m["config"]["type"].rsplit(":", 1)[1] for m in evidently["metrics"]}
    assert {"LeanDriftedColumnsCount", "LeanValueDrift", "ValueDrift", "RocAuc"} <= types  # drift and quality in one
    assert not [k for k in lake.list_keys("reports/") if k.endswith(".tmp")]


def test_calibration_scores_are_the_reports(reference: pd.DataFrame, calm_day: pd.DataFrame,
                                            calm: tuple[dict[str, Any], Lake]) -> None:
    """The calibration and the report compute the same score for the same day (one implementation, one input)."""
    own = calibrate_thresholds(reference, calm_day, quantile=1.0)["day_scores"]
    for feature in calm[0]["drifted_features"]:
        assert feature["score"] == pytest.approx(own[feature["feature"]]["max"], abs=1e-4), feature["feature"]


def test_drift_score_is_evidentlys_value_drift_for_every_column(reference: pd.DataFrame,
                                                                calm_day: pd.DataFrame) -> None:
    """The calibration's scipy distances equal what Evidently's public ValueDrift reports, column by column, with
    nulls and infinities in the data (Evidently drops both)."""
    from evidently import Report
    from evidently.metrics import ValueDrift

    day = calm_day.copy()
    day.loc[day.index[:50], "temp"] = np.nan
    day.loc[day.index[50:60], "wind_gust"] = np.inf
    day.loc[day.index[60:90], "carrier"] = None
    columns = [*DRIFT_FEATURES, PREDICTION]
    snapshot = Report([ValueDrift(column=c, method=method_of(c)) for c in columns]).run(
        evidently_dataset(day, columns), evidently_dataset(reference, columns))
    evidently = {m["config"]["column"]: float(m["value"]) for m in snapshot.dict()["metrics"]}
    ours = {c: drift_score(reference[c], day[c], method_of(c)) for c in columns}
    assert ours == pytest.approx(evidently, rel=1e-9, abs=1e-12)
    with pytest.raises(ValueError, match="unknown drift method"):
        drift_score(reference["temp"], day["temp"], "psi")


def test_drift_report_holds_what_the_data_drift_preset_computes(reference: pd.DataFrame,
                                                                 drifted_day: pd.DataFrame) -> None:
    """The report lists the metrics ``DataDriftPreset`` generates instead of running the preset (whose own page
    computes and plots every column again): the same metrics, values, tests and verdicts in Evidently's JSON."""
    from evidently import Report
    from evidently.metrics import ValueDrift
    from evidently.presets import DataDriftPreset

    from pipelines.monitoring.report import _drift_report

    columns = [c for c in DRIFT_FEATURES if drifted_day[c].notna().any()]  # as build_report leaves them
    thresholds = {c: 0.1 + 0.01 * i for i, c in enumerate([*columns, PREDICTION])}
    policy = MonitoringPolicy()
    data = tuple(evidently_dataset(frame, [*columns, PREDICTION]) for frame in (drifted_day, reference))
    preset = Report([
        DataDriftPreset(columns=columns, drift_share=policy.drift_share,
                        per_column_method={c: method_of(c) for c in columns},
                        per_column_threshold={c: thresholds[c] for c in columns}),
        ValueDrift(column=PREDICTION, method=method_of(PREDICTION), threshold=thresholds[PREDICTION]),
    ], include_tests=True).run(*data).dict()
    ours = _drift_report(columns, thresholds, policy).run(*data).dict()

    def stock(config: dict[str, Any]) -> dict[str, Any]:  # the lean metrics are the stock ones under other names
        return config | {"type": config["type"].replace(":Lean", ":")}

    assert [stock(m["config"]) for m in ours["metrics"]] == [m["config"] for m in preset["metrics"]]
    assert ours["metrics"][0]["value"] == preset["metrics"][0]["value"]  # DriftedColumnsCount: count and share
    assert [float(m["value"]) for m in ours["metrics"][1:]] == pytest.approx(
        [float(m["value"]) for m in preset["metrics"][1:]], abs=1e-12)  # the Jensen-Shannon sums' order varies
    assert [(t["name"], t["status"]) for t in ours["tests"]] == [(t["name"], t["status"]) for t in preset["tests"]]
    assert any(str(t["status"]).endswith("FAIL") for t in ours["tests"])  # the shifted features drift


def test_only_drifted_features_are_plotted(reference: pd.DataFrame, drifted_day: pd.DataFrame) -> None:
    """``LeanValueDrift`` draws a feature's two plots only when it drifted; every feature keeps its verdict line,
    and the score's distribution is always drawn."""
    from pipelines.monitoring.report import _drift_report

    columns = [c for c in DRIFT_FEATURES if drifted_day[c].notna().any()]
    thresholds = {c: 0.1 for c in [*columns, PREDICTION]}
    data = tuple(evidently_dataset(frame, [*columns, PREDICTION]) for frame in (drifted_day, reference))
    snapshot = _drift_report(columns, thresholds, MonitoringPolicy()).run(*data)
    verdicts = {t["metric_config"]["params"]["column"]: str(t["status"]).endswith("FAIL")
                for t in snapshot.dict()["tests"] if t["metric_config"]["params"]["type"].endswith("ValueDrift")}
    drifted = [c for c in columns if verdicts[c]]
    assert 0 < len(drifted) < len(columns)
    page = snapshot.get_html_str(as_iframe=False)
    assert page.count("DATA DISTRIBUTION") == len(drifted) + 1  # the drifted features and the score
    assert page.count("Drift in column") == len(columns) + 1  # every verdict line


def test_the_quality_metrics_do_not_import_torch() -> None:
    """The monitoring task computes its quality metrics with ``classification_metrics``; importing them must not
    import torch (about a second of a fresh task process, for nothing the metrics use)."""
    import subprocess
    import sys

    code = ("import sys, pipelines.monitoring.report, pipelines.training.evaluation; "
            "sys.exit('torch' in sys.modules)")
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0


def test_quality_on_labelled_flights_beside_the_training_metrics(calm: tuple[dict[str, Any], Lake],
                                                                 labelled: pd.DataFrame) -> None:
    summary, lake = calm
    quality = summary["quality"]
    expected = classification_metrics(labelled[LABEL].to_numpy(), labelled[PREDICTION].to_numpy())
    assert quality["labelled_flights"] == 3500
    assert quality["window"] == {"start_date": "2013-07-08", "end_date": "2013-07-14"}
    assert quality["roc_auc"] == pytest.approx(expected["roc_auc"], abs=1e-4)
    assert quality["brier"] == pytest.approx(expected["brier"], abs=1e-4)
    assert quality["disruption_rate"] == pytest.approx(expected["positive_rate"], abs=1e-4)
    assert (quality["training_roc_auc"], quality["training_brier"]) == (0.70, 0.16)
    evidently = json.loads(lake.read_text(summary["report_keys"]["json"]))
    aucs = [m["value"] for m in evidently["metrics"] if m["config"]["type"].endswith(":RocAuc")]
    assert aucs == [pytest.approx(expected["roc_auc"], abs=1e-6)]  # Evidently's own figure agrees


def test_shifted_features_drift_most_drifted_first(drifting: tuple[list[dict[str, Any]], Settings]) -> None:
    summary = drifting[0][0]
    drifted = [f["feature"] for f in summary["drifted_features"] if f["drifted"]]
    assert set(drifted) == {*SHIFTED, "carrier"}
    assert [f["feature"] for f in summary["drifted_features"][:len(drifted)]] == drifted  # by score / threshold
    assert summary["drifted_count"] == len(drifted)
    assert summary["drift_share"] == pytest.approx(len(drifted) / summary["tested_features"], abs=1e-4)
    carrier = next(f for f in summary["drifted_features"] if f["feature"] == "carrier")
    assert carrier["method"] == "jensenshannon" and carrier["score"] > carrier["threshold"]
    assert next(f for f in summary["drifted_features"] if f["feature"] == "temp")["method"] == "wasserstein"
    assert summary["prediction_drift"]["drifted"]
    assert summary["prediction_drift"]["current_mean"] > summary["prediction_drift"]["reference_mean"]
    assert summary["drift_detected"] and summary["retrain"]["requested"]
    assert summary["retrain"]["triggers"] == ["data_drift"]
    # a year before the day (the training run keeps what the feed holds of it: simulation.feed.feed_window)
    assert summary["retrain"]["window"] == {"start_date": "2012-07-15", "end_date": "2013-07-14"}


def test_an_empty_feature_is_reported_not_tested(drifting: tuple[list[dict[str, Any]], Settings]) -> None:
    summary = drifting[0][0]
    assert {"feature": "wind_gust", "reason": "no values in the day's traffic"} in summary["untested_features"]
    assert summary["tested_features"] == len(DRIFT_FEATURES) - 1
    assert {u["feature"] for u in summary["untested_features"]} == {*NOT_DRIFT_TESTED, "wind_gust"}


def test_too_few_labels_are_not_judged(drifting: tuple[list[dict[str, Any]], Settings]) -> None:
    summary = drifting[0][0]
    assert summary["quality"] is None and summary["labelled_flights"] == 50
    assert f"50 labelled flights (< {MonitoringPolicy().min_labelled_flights}): quality not judged" \
        in summary["retrain"]["reasons"]


def test_the_lakes_history_drives_the_cooldown(drifting: tuple[list[dict[str, Any]], Settings]) -> None:
    (first, second), settings = drifting
    assert first["retrain"]["requested"] and "previous" not in first
    assert second["retrain"]["triggers"] == ["data_drift"] and not second["retrain"]["requested"]
    assert f"retraining was requested on {DAY} (2 days ago), within the cooldown of 7 days: not requested again" \
        in second["retrain"]["reasons"]
    assert second["previous"] == {"date": DAY.isoformat(), "drift_share": first["drift_share"], "roc_auc": None}
    later = DAY + timedelta(days=3)
    assert [s["date"] for s in monitoring_history(settings, before=later)] == [str(DAY), str(DAY + timedelta(2))]
    assert [s["date"] for s in monitoring_history(settings, before=later, lookback_days=2)] == \
        [str(DAY + timedelta(2))]
    assert monitoring_history(settings, before=DAY) == []
    assert read_summary(DAY, settings) == first


def test_an_uncalibrated_reference_falls_back_to_evidentlys_default(reference: pd.DataFrame, calm_day: pd.DataFrame,
                                                                    settings: Settings) -> None:
    bare = reference.copy()
    bare.attrs = {}
    summary = build_report(bare, calm_day, None, TRAINING, DAY, settings)
    assert not summary["thresholds"]["calibrated"]
    assert {f["threshold"] for f in summary["drifted_features"]} == {THRESHOLD_FLOOR}
    assert summary["quality"] is None and summary["labelled_flights"] == 0


def test_no_traffic_writes_only_the_summary(reference: pd.DataFrame, settings: Settings, lake: Lake) -> None:
    summary = build_report(reference, served_frame(pd.DataFrame()), None, TRAINING, DAY, settings)
    assert summary["drift_share"] is None and summary["prediction_drift"] is None
    assert summary["traffic"] == {"predictions": 0, "flights": 0, "model_versions": {}}
    assert set(summary["report_keys"]) == {"summary"} and not summary["retrain"]["requested"]
    assert lake.exists(summary["report_keys"]["summary"])


def test_served_frame_expands_the_log_and_keeps_the_latest_answer(reference: pd.DataFrame, flights: Flights) -> None:
    drawn = flights(200, 1, seed=3, first=DAY)
    drawn.loc[drawn.index[:10], "wind_gust"] = np.nan
    first = prediction_log_rows(drawn, np.full(len(drawn), 0.1), "3", pd.Timestamp("2013-07-15T08:00Z"))
    again = prediction_log_rows(drawn.head(5), np.full(5, 0.9), "4", pd.Timestamp("2013-07-15T09:00Z"))
    served = served_frame(pd.concat([again, first], ignore_index=True))  # the log's order is not serving order
    assert len(served) == 200 and served["flight_id"].is_unique
    assert set(reference.columns) - {LABEL} <= set(served.columns)
    by_id = served.set_index("flight_id")
    repeated = drawn["flight_id"].head(5)
    assert (by_id.loc[repeated, PREDICTION] == 0.9).all() and (by_id.loc[repeated, "model_version"] == "4").all()
    assert (by_id.loc[repeated, "predictions"] == 2).all() and by_id["predictions"].sum() == 205
    expected = feature_frame(drawn).set_index("flight_id")
    for column in (*CATEGORICAL_COLUMNS, *NUMERIC_COLUMNS):
        pd.testing.assert_series_equal(by_id.loc[expected.index, column], expected[column], check_names=False)
    assert by_id.loc[drawn["flight_id"].head(10), "wind_gust"].isna().all()  # null in the JSON -> NaN
    assert by_id.loc[repeated, "dest"].notna().all()  # from the request (the feature JSON has only the route)


def test_labelled_scores_are_the_served_frames(flights: Flights) -> None:
    """The quality part's light reading of the labels: ``served_frame``'s rows (the latest answer of each flight, in
    its order) and values of the id, the score and the label, without parsing the features."""
    drawn = flights(300, 2, seed=5, first=DAY - timedelta(days=2))
    first = prediction_log_rows(drawn, _scores(drawn), "3", pd.Timestamp("2013-07-14T08:00Z"))
    again = prediction_log_rows(drawn.head(7), np.full(7, 0.9), "4", pd.Timestamp("2013-07-14T09:00Z"))
    labels = pd.concat([again, first], ignore_index=True)
    labels[LABEL] = np.tile(drawn[LABEL].to_numpy(), 2)[:len(labels)]
    light = labelled_scores(labels)
    pd.testing.assert_frame_equal(light, served_frame(labels)[["flight_id", PREDICTION, LABEL]])
    assert (light.set_index("flight_id").loc[drawn["flight_id"].head(7), PREDICTION] == 0.9).all()


def test_lean_quality_preset_is_the_stock_preset(reference: pd.DataFrame, labelled: pd.DataFrame) -> None:
    """``LeanClassificationQuality`` has the preset's metrics, values and page; only the discarded pages of its
    metrics are switched off (in their configs)."""
    from evidently import Report
    from evidently.presets import ClassificationQuality

    from pipelines.monitoring.drift_metric import LeanClassificationQuality

    data = (evidently_dataset(labelled, [PREDICTION], labelled=True),
            evidently_dataset(reference, [PREDICTION], labelled=True))
    runs = [Report([preset(probas_threshold=0.5, conf_matrix=True, pr_curve=True)], include_tests=False).run(*data)
            for preset in (ClassificationQuality, LeanClassificationQuality)]
    stock, lean = (run.dict()["metrics"] for run in runs)
    assert [(m["config"]["type"], m["value"]) for m in lean] == [(m["config"]["type"], m["value"]) for m in stock]
    switched = {k: v for m, n in zip(lean, stock, strict=True) for k, v in m["config"].items()
                if n["config"].get(k) != v}
    assert set(switched.values()) == {False} and set(switched) <= {"conf_matrix", "roc_curve", "pr_curve", "pr_table"}

    def page(run: Any) -> Any:  # the widgets without their random ids and the metric ids they link to
        def strip(node: Any) -> Any:
            if isinstance(node, dict):
                return {k: strip(v) for k, v in node.items() if k not in ("id", "linked_metrics")}
            return [strip(v) for v in node] if isinstance(node, list) else node
        return strip(json.loads(json.dumps(run.dump_dict()["widgets"], default=str)))

    assert page(runs[1]) == page(runs[0])


def _summary(share: float | None = 0.0, flights: int = 1000, quality: dict[str, Any] | None = None,
             prediction_drifted: bool = False) -> dict[str, Any]:
    return {"date": DAY.isoformat(), "drift_share": share, "drifted_count": 0, "tested_features": 32,
            "drifted_features": [], "traffic": {"flights": flights, "predictions": flights},
            "prediction_drift": {"score": 2.0 if prediction_drifted else 0.1, "method": "wasserstein",
                                 "threshold": 1.0, "drifted": prediction_drifted},
            "quality": quality, "labelled_flights": 0 if quality is None else quality["labelled_flights"]}


def _quality(auc: float = 0.70, brier: float = 0.16, n: int = 5000) -> dict[str, Any]:
    return {"labelled_flights": n, "roc_auc": auc, "brier": brier, "training_roc_auc": 0.71, "training_brier": 0.16}


@pytest.mark.parametrize(("summary", "triggers"), [
    (_summary(0.10), []),
    (_summary(0.12), ["data_drift"]),
    (_summary(0.50, flights=100), []),  # too few served flights to act on
    (_summary(None, flights=0), []),
    (_summary(0.0, prediction_drifted=True), []),  # reported, not a trigger by default
    (_summary(0.0, quality=_quality(auc=0.65)), []),
    (_summary(0.0, quality=_quality(auc=0.60)), ["roc_auc_drop"]),
    (_summary(0.0, quality=_quality(brier=0.21)), []),
    (_summary(0.0, quality=_quality(brier=0.23)), ["brier_rise"]),
    (_summary(0.3, quality=_quality(auc=0.5, brier=0.3)), ["data_drift", "roc_auc_drop", "brier_rise"]),
])
def test_decide_retrain_thresholds(summary: dict[str, Any], triggers: list[str]) -> None:
    decision = decide_retrain(summary, [], MonitoringPolicy())
    assert decision["triggers"] == triggers and decision["requested"] == bool(triggers)
    assert decision["reasons"] and all(isinstance(r, str) for r in decision["reasons"])
    assert (decision["window"] is not None) == bool(triggers)
    # a request names the tuning it wants (the policy's, not the training DAG's defaults), by the DAG's param names
    tuning = {"trials": 6, "max_epochs": 20, "time_budget_minutes": 5}
    assert decision["tuning"] == (tuning if triggers else None)


def test_decide_retrain_says_why_it_does_nothing() -> None:
    few_flights = decide_retrain(_summary(0.5, flights=100), [], MonitoringPolicy())
    assert "only 100 served flights (< 300): not acted on" in " ".join(few_flights["reasons"])
    calm = decide_retrain(_summary(0.0), [], MonitoringPolicy())
    assert calm["reasons"][-1] == "nothing beyond its threshold: no retraining"
    on_prediction = decide_retrain(_summary(0.0, prediction_drifted=True), [],
                                     MonitoringPolicy(prediction_drift_triggers=True))
    assert on_prediction["triggers"] == ["prediction_drift"] and on_prediction["requested"]


def test_cooldown_keeps_one_bad_week_from_retraining_every_day() -> None:
    policy = MonitoringPolicy(cooldown_days=7)

    def earlier(days_before: int, requested: bool = True) -> dict[str, Any]:
        return {"date": (DAY - timedelta(days=days_before)).isoformat(), "retrain": {"requested": requested}}

    drifting = _summary(0.5)
    held = decide_retrain(drifting, [earlier(10), earlier(3)], policy)
    assert not held["requested"] and held["triggers"] == ["data_drift"] and held["window"] is None
    assert any("within the cooldown of 7 days" in reason for reason in held["reasons"])
    assert decide_retrain(drifting, [earlier(7)], policy)["requested"]  # the cooldown is over
    assert decide_retrain(drifting, [earlier(1, requested=False)], policy)["requested"]  # nothing requested
    assert decide_retrain(drifting, [earlier(-1)], policy)["requested"]  # a later day (a catchup) does not count
    assert decide_retrain(drifting, [earlier(3)], MonitoringPolicy(cooldown_days=0))["requested"]


def test_a_request_searches_the_hyperparameters_once_in_four_weeks() -> None:
    policy = MonitoringPolicy(cooldown_days=7, search_every_days=28)

    def earlier(days_before: int, trials: int) -> dict[str, Any]:
        return {"date": (DAY - timedelta(days=days_before)).isoformat(),
                "retrain": {"requested": True, "tuning": policy.request_tuning(trials > 0)}}

    drifting = _summary(0.5)
    assert decide_retrain(drifting, [], policy)["tuning"]["trials"] == 6  # none asked for before
    kept = decide_retrain(drifting, [earlier(21, 6), earlier(14, 0), earlier(7, 0)], policy)
    assert kept["requested"] and kept["tuning"] == {"trials": 0, "max_epochs": 20, "time_budget_minutes": 5}
    assert any(f"a search was asked for on {DAY - timedelta(days=21)}, 21 days ago" in r for r in kept["reasons"])
    searched = decide_retrain(drifting, [earlier(28, 6), earlier(7, 0)], policy)
    assert searched["tuning"]["trials"] == 6 and "with a search of the hyperparameters (6 trials)" in searched[
        "reasons"]
    assert decide_retrain(drifting, [earlier(-3, 6)], policy)["tuning"]["trials"] == 6  # a later day does not count


def test_build_drift_report_reads_the_day_from_the_lake(reference: pd.DataFrame, flights: Flights, settings: Settings,
                                                        lake: Lake) -> None:
    """The DAG's step: the day's prediction log (two objects, one flight asked twice), the labelled predictions of
    the days before, and the run's reference and evaluation, all from the lake."""
    from pipelines.training.datasets import model_key

    run_key = "unit/monitoring"
    stored = reference.copy()
    stored.attrs = reference.attrs | {"monitoring": {**reference.attrs["monitoring"], "run_key": run_key}}
    lake.write_parquet(reference_key(run_key), stored)
    lake.write_text(model_key(run_key, "evaluation.json"), json.dumps(TRAINING))
    served = flights(900, 1, seed=4, first=DAY)
    log = prediction_log_rows(served, _scores(served), "7", pd.Timestamp("2013-07-15T08:00Z"))
    lake.write_parquet(f"predictions/flight_delay/date={DAY}/part-1.parquet", log.iloc[:500])
    lake.write_parquet(f"predictions/flight_delay/date={DAY}/part-2.parquet",
                       pd.concat([log.iloc[500:], log.iloc[:1].assign(served_at=pd.Timestamp("2013-07-15T09:00Z"))]))
    for back in (1, 2, 3, 8):  # the last is outside the 7-day window
        day = DAY - timedelta(days=back)
        past = flights(1200, 1, seed=10 + back, first=day)
        rows = prediction_log_rows(past, _scores(past), "7").assign(**{LABEL: past[LABEL].to_numpy()})
        lake.write_parquet(f"labels/flight_delay/date={day}/data.parquet", rows)
    lake.write_parquet(f"validated/flights/date={DAY}/data.parquet", pd.concat([served, served.head(50)]))
    summary = build_drift_report(DAY, settings, run_key=run_key)
    assert summary["model_version"] == "7" and summary["model_run_key"] == run_key
    # The traffic against the day's feed: 950 flights scheduled, 900 served.
    assert summary["traffic"] == {"predictions": 901, "flights": 900, "model_versions": {"7": 900}, "scheduled": 950}
    assert summary["quality"]["labelled_flights"] == 3600
    assert summary["quality"]["window"] == {"start_date": str(DAY - timedelta(3)), "end_date": str(DAY - timedelta(1))}
    assert all(Path(path).is_file() for path in summary["report_paths"].values())
    assert summary == read_summary(DAY, settings)
