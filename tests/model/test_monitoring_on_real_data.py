"""Monitoring on the real 2013 flights (the session's ``real_data`` window, January and February): a model trained
on the window's first weeks, its training reference with thresholds calibrated on the training days, and the
monitoring report of a held-out day served through the prediction log's format.

The point: on real data a day's weather, schedule and trailing statistics are one draw per day, so Evidently's
default thresholds call an ordinary in-season day drifted on most features; the calibrated ones do not, and still
flag a day whose weather and delays look like July's."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from benchmarks.monitoring import prediction_log_rows
from pipelines.core.settings import Settings
from pipelines.monitoring.report import build_report, served_frame
from pipelines.monitoring.retrain import MonitoringPolicy
from pipelines.training.datasets import build_training_set, model_key, read_splits
from pipelines.training.fit import DEFAULT_PARAMS, train_model
from pipelines.training.model import TrainedModel
from pipelines.training.reference import PREDICTION, REFERENCE_ROWS, load_reference, save_reference

pytestmark = pytest.mark.model

RUN_KEY = "monitoring-test/2013-03-01"
TRAINING = {"metrics": {"network": {"roc_auc": 0.70, "brier": 0.17}}}


@pytest.fixture(scope="module")
def trained(real_data: Settings, real_days: list) -> tuple[TrainedModel, pd.DataFrame]:
    """A small model of the run key (written where training writes it) and the run's test days."""
    from pipelines.core.lake import open_lake

    build_training_set(real_days, RUN_KEY, real_data, valid_days=7, test_days=7)
    splits = read_splits(RUN_KEY, real_data)
    model = train_model(splits["train"], splits["valid"], DEFAULT_PARAMS, seed=0, max_epochs=2, patience=1)
    open_lake(real_data).write_bytes(model_key(RUN_KEY, "model.pt"), model.to_bytes())
    return model, splits["test"]


@pytest.fixture(scope="module")
def reference(real_data: Settings, trained: tuple[TrainedModel, pd.DataFrame]) -> pd.DataFrame:
    save_reference(RUN_KEY, real_data)
    return load_reference(RUN_KEY, real_data)


@pytest.fixture(scope="module")
def served_day(trained: tuple[TrainedModel, pd.DataFrame]) -> pd.DataFrame:
    """The last test day (2013-02-28) as the service would have logged it, parsed back."""
    model, test = trained
    day = test[test["flight_id"].str.startswith("2013-02-28")].reset_index(drop=True)
    return served_frame(prediction_log_rows(day, model.predict_proba(day), "1"))


def _report(reference: pd.DataFrame, current: pd.DataFrame, real_data: Settings, tmp_path: Path) -> dict:
    own_lake = real_data.model_copy(update={"lake_uri": str(tmp_path / "lake")})  # the shared home stays as it is
    return build_report(reference, current, None, TRAINING, pd.Timestamp("2013-02-28").date(), own_lake)


def test_the_reference_keeps_its_calibration_through_the_lake(reference: pd.DataFrame,
                                                              trained: tuple[TrainedModel, pd.DataFrame]) -> None:
    meta = reference.attrs["monitoring"]
    assert meta["run_key"] == RUN_KEY and len(reference) == REFERENCE_ROWS
    calibration = meta["calibration"]
    assert calibration["days"] >= 40  # the train split's days (January 1 to mid-February)
    thresholds = calibration["thresholds"]
    # day-level features vary from day to day far more than Evidently's 0.1 allows; flight-level ones do not
    assert thresholds["temp"] > 0.5 and thresholds["carrier_disruption_rate_28d"] > 0.2
    assert thresholds["carrier"] < 0.2 and thresholds["dep_hour"] < 0.2
    model, _ = trained
    assert reference[PREDICTION].to_numpy() == pytest.approx(model.predict_proba(reference), abs=1e-6)


def test_an_ordinary_day_does_not_drift(reference: pd.DataFrame, served_day: pd.DataFrame, real_data: Settings,
                                        tmp_path: Path) -> None:
    assert len(served_day) > 700
    summary = _report(reference, served_day, real_data, tmp_path)
    assert summary["drift_share"] < MonitoringPolicy().drift_share, summary["drifted_features"][:5]
    assert not summary["retrain"]["requested"]
    # with Evidently's default threshold (0.1) on every feature, the same day "drifts" on most of them
    bare = reference.copy()
    bare.attrs = {}
    default = _report(bare, served_day, real_data, tmp_path / "default")
    assert default["drift_share"] > 0.4, default["drift_share"]


def test_a_july_like_day_drifts_and_asks_for_retraining(reference: pd.DataFrame, served_day: pd.DataFrame,
                                                        real_data: Settings, tmp_path: Path) -> None:
    summer = served_day.copy()
    summer["temp"] += 45  # degrees F: February's 35 as July's 80
    summer["dewp"] += 40
    for column in ("carrier_disruption_rate_28d", "route_disruption_rate_28d"):
        summer[column] = (summer[column] * 1.8).clip(upper=1)
    for column in ("carrier_mean_arr_delay_28d", "route_mean_arr_delay_28d"):
        summer[column] += 20  # minutes
    summary = _report(reference, summer, real_data, tmp_path)
    drifted = {f["feature"] for f in summary["drifted_features"] if f["drifted"]}
    assert {"temp", "dewp", "carrier_mean_arr_delay_28d"} <= drifted
    assert summary["drift_detected"] and summary["retrain"]["requested"]
    assert summary["retrain"]["window"] == {"start_date": "2012-02-29", "end_date": "2013-02-27"}
