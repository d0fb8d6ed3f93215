"""The backtest's policy logic (``pipelines.simulation.backtest``) on small synthetic days, with a fake trainer and
a fake monitor: no network is trained and no Evidently report is run, so the whole module takes about a second."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import date, timedelta
from typing import Any

import numpy as np
import pandas as pd
import pytest

from pipelines.core.dates import DEFAULT_WINDOW_DAYS, date_range
from pipelines.core.names import LABEL
from pipelines.monitoring.retrain import MonitoringPolicy
from pipelines.registry.gate import GatePolicy
from pipelines.simulation.backtest import (
    BacktestConfig,
    Candidate,
    LookAheadError,
    PolicyRun,
    Scorer,
    format_policy_table,
    policy_table,
    replay_policy,
)

FLIGHTS_PER_DAY = 40
CONFIG = BacktestConfig(first_window=(date(2013, 1, 1), date(2013, 3, 31)), end=date(2013, 5, 12))
"""Six weeks of scored days from Monday 2013-04-01: six Mondays (April 1, 8, 15, 22, 29, May 6)."""
FAST_GATE = GatePolicy(resamples=100)


def _days() -> dict[date, pd.DataFrame]:
    rng = np.random.default_rng(0)
    by_day = {}
    for day in date_range(date(2013, 1, 1), CONFIG.end):
        label = (rng.random(FLIGHTS_PER_DAY) < 0.3).astype("int64")
        by_day[day] = pd.DataFrame({
            "flight_id": [f"{day}:AA{i}:JFK" for i in range(FLIGHTS_PER_DAY)],
            LABEL: label,
            "signal": np.clip(0.25 + 0.4 * label + rng.normal(0, 0.2, FLIGHTS_PER_DAY), 0.01, 0.99),
        })
    return by_day


BY_DAY = _days()


class Signal:
    """A stand-in model: the flights' ``signal`` (ranks them well, ROC AUC ~0.9), or its reverse (below the
    gate's floor)."""

    def __init__(self, reverse: bool = False) -> None:
        self.reverse = reverse

    def predict_proba(self, frame: pd.DataFrame) -> np.ndarray:
        signal = frame["signal"].to_numpy(dtype=np.float64)
        return 1 - signal if self.reverse else signal


class FakeTrainer:
    """Records each window it is asked for; the model is good unless ``bad(window)``, and its window is the one
    asked for unless ``cheat`` (then it claims to end ``cheat`` days later)."""

    def __init__(self, bad: Any = lambda days: False, cheat: int = 0) -> None:
        self.windows: list[tuple[date, date]] = []
        self.bad, self.cheat = bad, cheat

    def __call__(self, days: Sequence[date]) -> Candidate:
        days = sorted(days)
        self.windows.append((days[0], days[-1]))
        test = pd.concat([BY_DAY[d] for d in days[-CONFIG.test_days:]], ignore_index=True)
        window = (days[0], days[-1] + timedelta(days=self.cheat))
        return Candidate(window=window, predictor=Signal(reverse=self.bad(days)), train=test, test=test,
                         metrics={"roc_auc": 0.9, "brier": 0.1})


FIRST = Candidate(window=CONFIG.first_window, predictor=Signal(), train=BY_DAY[date(2013, 3, 31)],
                  test=BY_DAY[date(2013, 3, 31)], metrics={"roc_auc": 0.9, "brier": 0.1})


def drifting_monitor(drifting_days: set[date]) -> tuple[Any, list[tuple[date, str]]]:
    """A monitor whose summary says 50% of the features drifted on ``drifting_days`` (none otherwise), with
    enough traffic to act on; it records which champion it watched each day."""
    watched: list[tuple[date, str]] = []

    def monitor(champion: Candidate, day: date, current: pd.DataFrame, labelled: pd.DataFrame | None
                ) -> dict[str, Any]:
        watched.append((day, champion.name))
        assert len(current) == FLIGHTS_PER_DAY and labelled is not None
        share = 0.5 if day in drifting_days else 0.0
        return {"date": day.isoformat(), "traffic": {"flights": 1000}, "drift_share": share,
                "drifted_count": int(share * 32), "tested_features": 32, "drifted_features": [],
                "prediction_drift": None, "quality": None, "labelled_flights": len(labelled)}

    return monitor, watched


def _never_trains(days: Sequence[date]) -> Candidate:
    raise AssertionError(f"trained on {days[0]}..{days[-1]}")


def _assert_no_look_ahead(run: PolicyRun, models: dict[str, Candidate]) -> None:
    for day, name in run.served.items():
        assert models[name].window[1] < day, f"{name} served {day}"


def test_frozen_policy_never_trains_and_serves_the_first_model_every_day() -> None:
    run = replay_policy("frozen", FIRST, BY_DAY, _never_trains, config=CONFIG, gate_policy=FAST_GATE)
    assert run.trainings == [] and run.decisions == []
    assert list(run.served) == CONFIG.scored_days()
    assert set(run.served.values()) == {FIRST.name}


def test_weekly_policy_trains_every_monday_on_the_window_before() -> None:
    trainer = FakeTrainer()
    run = replay_policy("weekly", FIRST, BY_DAY, trainer, config=CONFIG, gate_policy=FAST_GATE)
    mondays = [d for d in CONFIG.scored_days() if d.weekday() == 0]
    assert len(mondays) == 6
    assert [date.fromisoformat(t["day"]) for t in run.trainings] == mondays
    assert trainer.windows == [(m - timedelta(days=DEFAULT_WINDOW_DAYS), m - timedelta(days=1)) for m in mondays]
    assert all(t["adopted"] for t in run.trainings)
    for day, name in run.served.items():  # each Monday's model serves from that Monday to the Sunday after
        monday = day - timedelta(days=day.weekday())
        assert name == f"{monday - timedelta(days=DEFAULT_WINDOW_DAYS)}..{monday - timedelta(days=1)}"


def test_weekly_policy_adopts_only_what_passes_the_gate() -> None:
    rejected = {date(2013, 4, 14), date(2013, 4, 28)}  # the windows of April 15 and April 29 give bad models
    trainer = FakeTrainer(bad=lambda days: days[-1] in rejected)
    run = replay_policy("weekly", FIRST, BY_DAY, trainer, config=CONFIG, gate_policy=FAST_GATE)
    adopted = {t["day"]: t["adopted"] for t in run.trainings}
    assert [day for day, ok in adopted.items() if not ok] == ["2013-04-15", "2013-04-29"]
    assert any("below the floor" in reason for t in run.trainings if not t["adopted"] for reason in t["reasons"])
    # The week after a rejection is served by the model adopted the Monday before.
    assert run.served[date(2013, 4, 15)] == run.served[date(2013, 4, 21)] == "2012-04-08..2013-04-07"
    assert run.served[date(2013, 4, 22)] == "2012-04-22..2013-04-21"
    assert run.served[date(2013, 4, 29)] == "2012-04-22..2013-04-21"
    table = {row["month"]: row for row in policy_table([run], BY_DAY)}
    assert (table["2013-04"]["trainings"], table["2013-04"]["adopted"]) == (5, 3)
    assert (table["all"]["trainings"], table["all"]["adopted"]) == (6, 4)


def test_drift_policy_requests_at_most_once_per_cooldown_and_serves_the_new_model_the_next_day() -> None:
    drifting = set(date_range(date(2013, 4, 3), date(2013, 4, 30)))  # drift every day of most of April
    monitor, watched = drifting_monitor(drifting)
    trainer = FakeTrainer()
    run = replay_policy("drift", FIRST, BY_DAY, trainer, config=CONFIG, monitor=monitor, gate_policy=FAST_GATE)
    requests = [date.fromisoformat(d["date"]) for d in run.decisions if d["requested"]]
    cooldown = MonitoringPolicy().cooldown_days
    assert requests == [date(2013, 4, 3), date(2013, 4, 10), date(2013, 4, 17), date(2013, 4, 24)]
    assert all((b - a).days >= cooldown for a, b in zip(requests, requests[1:], strict=False))
    assert len(run.decisions) == len(CONFIG.scored_days())
    for decision in run.decisions:  # drift on the days between requests, but within the cooldown: not requested
        if date.fromisoformat(decision["date"]) in drifting and date.fromisoformat(decision["date"]) not in requests:
            assert decision["triggers"] == ["data_drift"] and not decision["requested"]
    # Each request trains on the window before the monitored day; the model serves from the day after.
    assert trainer.windows == [(r - timedelta(days=DEFAULT_WINDOW_DAYS), r - timedelta(days=1)) for r in requests]
    assert [t["day"] for t in run.trainings] == [(r + timedelta(days=1)).isoformat() for r in requests]
    for request in requests:
        new = f"{request - timedelta(days=DEFAULT_WINDOW_DAYS)}..{request - timedelta(days=1)}"
        assert run.served[request] != new and run.served[request + timedelta(days=1)] == new
        assert (request + timedelta(days=1), new) in watched  # monitoring follows the new champion
    assert set(run.served.values()) - {FIRST.name} == {t["model"] for t in run.trainings}


def test_drift_policy_without_drift_never_trains() -> None:
    monitor, watched = drifting_monitor(set())
    run = replay_policy("drift", FIRST, BY_DAY, _never_trains, config=CONFIG, monitor=monitor, gate_policy=FAST_GATE)
    assert not any(d["requested"] for d in run.decisions) and run.trainings == []
    assert [day for day, _ in watched] == CONFIG.scored_days()


def test_no_policy_serves_a_day_inside_or_before_its_models_window() -> None:
    models: dict[str, Candidate] = {FIRST.name: FIRST}

    class Keeping(FakeTrainer):
        def __call__(self, days: Sequence[date]) -> Candidate:
            candidate = super().__call__(days)
            models[candidate.name] = candidate
            return candidate

    monitor, _ = drifting_monitor({date(2013, 4, 5), date(2013, 4, 20)})
    for policy in ("frozen", "weekly", "drift"):
        run = replay_policy(policy, FIRST, BY_DAY, Keeping(), config=CONFIG, monitor=monitor, gate_policy=FAST_GATE)
        _assert_no_look_ahead(run, models)
    # A model whose window reaches the day it would serve is refused, by the replay and by the scorer.
    with pytest.raises(LookAheadError, match="inside or before its training window"):
        replay_policy("weekly", FIRST, BY_DAY, FakeTrainer(cheat=1), config=CONFIG, gate_policy=FAST_GATE)
    with pytest.raises(LookAheadError):
        Scorer(BY_DAY)(FIRST, date(2013, 3, 31))


def test_policy_table_and_its_text() -> None:
    runs = [replay_policy("frozen", FIRST, BY_DAY, _never_trains, config=CONFIG, gate_policy=FAST_GATE),
            replay_policy("weekly", FIRST, BY_DAY, FakeTrainer(bad=lambda days: True), config=CONFIG,
                          gate_policy=FAST_GATE)]
    rows = policy_table(runs, BY_DAY)
    assert [(r["policy"], r["month"]) for r in rows] == [
        (p, m) for p in ("frozen", "weekly") for m in ("2013-04", "2013-05", "all")]
    frozen_all = rows[2]
    assert frozen_all["flights"] == FLIGHTS_PER_DAY * len(CONFIG.scored_days())
    assert 0.8 < frozen_all["roc_auc"] <= 1 and 0 < frozen_all["brier"] < 0.25
    assert rows[5]["roc_auc"] == frozen_all["roc_auc"]  # every weekly model was rejected: the same scores
    assert (rows[5]["trainings"], rows[5]["adopted"]) == (6, 0)
    text = format_policy_table(rows)
    assert text.splitlines()[0].split() == ["month", "flights", "frozen", "weekly"]
    assert "Apr-Dec" in text and "0/6" in text and f"{frozen_all['roc_auc']:.4f}" in text


def test_unknown_policy_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown policy"):
        replay_policy("monthly", FIRST, BY_DAY, _never_trains, config=CONFIG)


def test_drift_summary_tests_each_feature_at_or_above_its_threshold_and_judges_quality_on_enough_labels(
        make_training_frame: Any) -> None:
    """The drift policy's monitoring: a feature drifts when its score reaches its calibrated threshold (Evidently's
    rule), the share counts the tested features, and quality is judged only on ``min_labelled_flights``."""
    from pipelines.simulation.backtest import drift_summary
    from pipelines.training.reference import DRIFT_FEATURES, PREDICTION, drift_score, feature_frame, method_of

    frame = make_training_frame(n=4000, days=20, seed=0)
    reference = feature_frame(frame.iloc[:3000], np.full(3000, 0.3))
    day = feature_frame(frame.iloc[3000:3400], np.full(400, 0.3))
    day["temp"] = day["temp"] + 2.0  # two reference deviations: far away
    exact = drift_score(reference["temp"], day["temp"], "wasserstein")
    thresholds = {c: 10.0 for c in (*DRIFT_FEATURES, PREDICTION)} | {"temp": exact}  # reached exactly, not passed
    reference.attrs["monitoring"] = {"calibration": {"thresholds": thresholds}}
    labelled = feature_frame(frame.iloc[:3500], np.clip(0.2 + 0.5 * frame[LABEL].iloc[:3500], 0, 1))
    summary = drift_summary(reference, day, labelled, {"roc_auc": 0.8, "brier": 0.12}, date(2013, 4, 2))
    assert [f["feature"] for f in summary["drifted_features"] if f["drifted"]] == ["temp"]
    tested = [c for c in DRIFT_FEATURES if reference[c].notna().any() and day[c].notna().any()]
    assert summary["tested_features"] == len(tested) and summary["drifted_count"] == 1
    assert summary["drift_share"] == round(1 / len(tested), 4)
    assert summary["prediction_drift"]["drifted"] is False and method_of("temp") == "wasserstein"
    quality = summary["quality"]
    assert quality["labelled_flights"] == 3500 and quality["training_roc_auc"] == 0.8 and quality["roc_auc"] > 0.9
    short = drift_summary(reference, day, labelled.iloc[:2999], {"roc_auc": 0.8}, date(2013, 4, 2))
    assert short["quality"] is None and short["labelled_flights"] == 2999
