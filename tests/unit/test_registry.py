"""The promotion gate's judgement on synthetic scores, and the model input contract."""

from __future__ import annotations

from collections.abc import Callable
from datetime import date

import numpy as np
import pandas as pd
import pytest

from pipelines.registry.gate import GatePolicy, decide
from pipelines.registry.pyfunc import model_input
from pipelines.training.columns import NUMERIC_COLUMNS
from pipelines.training.preprocessing import Preprocessor

POLICY = GatePolicy(resamples=200)


@pytest.fixture(scope="module")
def scores() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    y = (rng.random(4000) < 0.25).astype(int)
    signal = 1.2 * y + rng.normal(0, 1, 4000)
    good = 1 / (1 + np.exp(-(signal - 1.5)))
    return {"y": y, "good": good, "noisy": 1 / (1 + np.exp(-(signal + rng.normal(0, 3, 4000) - 1.5))),
            "random": rng.random(4000), "overconfident": good ** 0.3}


def test_first_model_is_promoted_when_it_clears_the_floor(scores: dict[str, np.ndarray]) -> None:
    promote, reasons, _ = decide(scores["y"], scores["good"], None, POLICY)
    assert promote and "no champion yet" in reasons[-1]
    promote, reasons, _ = decide(scores["y"], scores["random"], None, POLICY)
    assert not promote and "is below the floor" in reasons[0]


def test_an_equal_challenger_is_promoted_a_clearly_worse_one_is_not(scores: dict[str, np.ndarray]) -> None:
    promote, reasons, result = decide(scores["y"], scores["good"], scores["good"], POLICY)
    assert promote and result["roc_auc_difference"]["difference"] == 0.0
    promote, reasons, result = decide(scores["y"], scores["noisy"], scores["good"], POLICY)
    assert not promote
    assert result["roc_auc_difference"]["high"] < -POLICY.roc_auc_tolerance
    assert "worse than the tolerance" in reasons[1]


def test_calibration_regression_blocks_promotion(scores: dict[str, np.ndarray]) -> None:
    """Same ranking (ROC AUC identical), worse probabilities: the Brier tolerance says no."""
    promote, reasons, result = decide(scores["y"], scores["overconfident"], scores["good"], POLICY)
    assert result["challenger"]["roc_auc"] == pytest.approx(result["champion"]["roc_auc"])
    assert not promote and "beyond the tolerance" in reasons[2]


def test_model_input_has_stable_types(make_training_frame: Callable[..., pd.DataFrame]) -> None:
    frame = make_training_frame(50)
    frame.loc[0, "carrier"] = None
    frame.loc[1, "dep_hour"] = np.nan
    rows = model_input(frame)
    assert list(rows.columns[:3]) == ["carrier", "origin", "route"] and "flight_id" not in rows
    assert rows["carrier"].iloc[0] is None and rows["dep_hour"].iloc[1] is None
    assert rows["dep_hour"].iloc[2] == str(int(frame["dep_hour"].iloc[2]))  # "7", not "7.0"
    assert all(rows[c].dtype == "float64" for c in NUMERIC_COLUMNS)
    fitted = Preprocessor().fit(frame)
    assert torch_equal(fitted.transform(frame), fitted.transform(rows))


def torch_equal(a: tuple, b: tuple) -> bool:
    import torch

    return all(torch.equal(x, y) for x, y in zip(a, b, strict=True))


def test_a_retrain_repeats_a_version_trained_through_fewer_than_the_days_before_its_window_end(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from pipelines.registry import register

    monkeypatch.setattr(register, "freshest_version", lambda settings=None: (date(2013, 7, 4), "6"))
    assert register.fresher_version(date(2013, 7, 7), 7) == (date(2013, 7, 4), "6")  # three days older
    assert register.fresher_version(date(2013, 7, 11), 7) is None  # seven days: a week's new data
    assert register.fresher_version(date(2013, 7, 5), 0) is None  # 0: never skipped
    monkeypatch.setattr(register, "freshest_version", lambda settings=None: None)
    assert register.fresher_version(date(2013, 7, 7), 7) is None  # nothing registered
