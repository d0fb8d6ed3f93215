"""Behaviour of the model trained on real 2013 flights (the session's ``real_data`` window, features from Feast):
directional checks on the weather at the origin and invariance to the flight number, on the held-out test days."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

from pipelines.core.names import LABEL
from pipelines.core.settings import Settings
from pipelines.features.store import training_set
from pipelines.training.fit import DEFAULT_PARAMS, time_split, train_model
from pipelines.training.model import TrainedModel

pytestmark = pytest.mark.model


@pytest.fixture(scope="module")
def splits(real_data: Settings, real_days: list) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    frame = training_set(real_days, real_data)
    return time_split(frame, valid_days=7, test_days=7)


@pytest.fixture(scope="module")
def trained(splits: tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]) -> TrainedModel:
    train, valid, _ = splits
    return train_model(train, valid, DEFAULT_PARAMS, seed=0, max_epochs=12, patience=3)


@pytest.fixture(scope="module")
def test_days(splits: tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]) -> pd.DataFrame:
    return splits[2]


def test_model_ranks_real_flights_better_than_chance(trained: TrainedModel, test_days: pd.DataFrame) -> None:
    auc = roc_auc_score(test_days[LABEL], trained.predict_proba(test_days))
    assert auc > 0.6, f"test ROC AUC {auc:.3f}"


@pytest.mark.parametrize("change", ["more_precipitation", "lower_visibility", "both"])
def test_worse_weather_at_origin_does_not_lower_risk_on_average(trained: TrainedModel, test_days: pd.DataFrame,
                                                                change: str) -> None:
    # Within what training saw (Jan-Feb 2013: 99% of hours have under 0.09 in of rain, the wettest 0.41 in).
    worse = test_days.copy()
    if change in ("more_precipitation", "both"):
        worse["precip"] = worse["precip"].fillna(0) + 0.1  # inches per hour: heavy rain
    if change in ("lower_visibility", "both"):
        worse["visib"] = np.minimum(worse["visib"].fillna(10), 1.0)  # miles: fog
    base, risk = trained.predict_proba(test_days), trained.predict_proba(worse)
    assert risk.mean() >= base.mean(), f"{change}: mean risk {base.mean():.4f} -> {risk.mean():.4f}"


def test_flight_number_alone_does_not_change_the_prediction(trained: TrainedModel, test_days: pd.DataFrame) -> None:
    # flight_id is "<date>:<carrier><flight number>:<origin>"; only the number changes here.
    parts = test_days["flight_id"].str.split(":", expand=True)
    renumbered = test_days.assign(flight_id=parts[0] + ":" + test_days["carrier"] + "9999:" + parts[2])
    assert (renumbered["flight_id"] != test_days["flight_id"]).mean() > 0.99
    np.testing.assert_array_equal(trained.predict_proba(test_days), trained.predict_proba(renumbered))
