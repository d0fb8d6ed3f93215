"""When a monitoring day asks for retraining: the policy's thresholds (calibrated on the real 2013 data) and the
decision, with its reasons in words and the cooldown between requests.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, timedelta
from typing import Any

from pipelines.core.dates import DEFAULT_WINDOW_DAYS


@dataclass(frozen=True)
class MonitoringPolicy:
    """When a monitoring report asks for retraining. The defaults come from the real 2013 data, with a champion
    trained on January to March (``pipelines/monitoring/report.py``'s docstring has the figures): no day of March
    or early April crosses any of them, every day of July crosses the drift share."""

    drift_share: float = 0.12
    """Share of the drift-tested features whose calibrated test fails, at or above which the data drifted: 4 of the
    31-32 tested. In-season days (March 4-31 and April 1-10) had at most 2 drifted, July days 6 to 11."""
    roc_auc_drop: float = 0.10
    """ROC AUC on the labelled window this far below the training (test window) ROC AUC is a quality drop. 7-day
    windows ranged 0.62-0.82 in March, April and July around a test-window 0.71: only a larger drop means much."""
    brier_rise: float = 0.06
    """Brier score this far above the training Brier score is a quality drop (calibration lost). 7-day windows
    rose at most 0.04 in March and April and 0.03-0.16 in July (July's disruption rate, 0.26-0.53, is one the
    winter model never predicts)."""
    min_labelled_flights: int = 3000
    """Fewer labelled flights in the window (about three days of traffic): quality is not judged (``quality`` is
    None). One day's ROC AUC ranged 0.52-0.80 on the real data: too noisy to act on."""
    min_served_flights: int = 300
    """Fewer served flights on the day: drift is reported but does not ask for retraining."""
    cooldown_days: int = 7
    """No new request within this many days of the previous one."""
    quality_window_days: int = 7
    """The trailing window of matured labels the caller joins for the quality part."""
    training_window_days: int = DEFAULT_WINDOW_DAYS
    """The window of the training run a request asks for: this many days before the monitored day."""
    request_trials: int = 6
    """Optuna trials of the training a request starts (the default hyperparameters first, then TPE). Not the DAG's
    20: with the weights averaged, validation loss barely tells trials apart (over 24 random trials it correlated
    -0.06 with test ROC AUC), so more trials cost minutes of the cores monitoring needs and buy nothing measurable."""
    search_every_days: int = 28
    """A request searches (``request_trials``) only when no request within this many days asked for a search;
    otherwise it trains the new window with the champion's hyperparameters (``trials`` 0), as the weekly retrain
    does. In the year drift asked for a retrain every week from April, and each request's search was 190 s of its
    320 s beside the daily runs: the seasons move the best settings over months, not weeks."""
    request_max_epochs: int = 20
    """Epochs per training of a request (tuning and final), not the DAG's 30: early stopping ended the year's
    trainings before epoch 20, and at 30 a request's 6 trials took 410-835 s of tuning beside the daily runs."""
    request_time_budget_minutes: float = 5
    """The request's tuning budget, not the DAG's 30 minutes: no new trial starts after it, so a request ends within
    minutes even when the cores are shared."""

    def request_tuning(self, search: bool = True) -> dict[str, Any]:
        """The tuning a request asks for, by the training DAG's param names (carried in the Asset event's extra):
        with a search of ``request_trials``, or none (the champion's hyperparameters)."""
        return {"trials": self.request_trials if search else 0, "max_epochs": self.request_max_epochs,
                "time_budget_minutes": self.request_time_budget_minutes}
    prediction_drift_triggers: bool = False
    """Whether drift of the score alone asks for retraining (off: on the real data it does not separate seasons)."""


# --- the decision -------------------------------------------------------------------------------------------------

def decide_retrain(summary: dict[str, Any], history: list[dict[str, Any]],
                   policy: MonitoringPolicy | None = None) -> dict[str, Any]:
    """Whether the day asks for retraining, and why in words: data drift (drift share at or above the threshold, on
    at least ``min_served_flights``), a quality drop (ROC AUC or Brier beyond their thresholds on at least
    ``min_labelled_flights``), optionally prediction drift; never within ``cooldown_days`` of an earlier request
    in ``history``. ``window`` is the training window a request asks for (None when nothing is requested)."""
    policy = policy or MonitoringPolicy()
    day = date.fromisoformat(str(summary["date"]))
    triggers: list[str] = []
    reasons: list[str] = []

    flights = int((summary.get("traffic") or {}).get("flights", 0))
    share = summary.get("drift_share")
    if share is None:
        reasons.append(f"no served flights with scores on {day}: drift not measured")
    else:
        drifted = [f["feature"] for f in summary.get("drifted_features", []) if f.get("drifted")]
        text = (f"data drift share {share:.0%} ({summary.get('drifted_count', len(drifted))} of "
                f"{summary.get('tested_features', '?')} features" + (f": {', '.join(drifted)}" if drifted else "")
                + f") {'at or above' if share >= policy.drift_share else 'below'} the threshold "
                f"{policy.drift_share:.0%}")
        if flights < policy.min_served_flights:
            reasons.append(f"{text}, but only {flights} served flights (< {policy.min_served_flights}): not acted on")
        elif share >= policy.drift_share:
            triggers.append("data_drift")
            reasons.append(text)
        else:
            reasons.append(text)

    prediction = summary.get("prediction_drift")
    if prediction:
        text = (f"prediction drift {'detected' if prediction['drifted'] else 'not detected'} "
                f"({prediction['method']} {prediction['score']:.3f}, threshold {prediction['threshold']:.3f})")
        if prediction["drifted"] and policy.prediction_drift_triggers and flights >= policy.min_served_flights:
            triggers.append("prediction_drift")
        elif prediction["drifted"]:
            text += ": reported, not a trigger on its own"
        reasons.append(text)

    quality = summary.get("quality")
    labelled = int(summary.get("labelled_flights", 0) if quality is None else quality["labelled_flights"])
    if quality is None:
        reasons.append(f"{labelled} labelled flights (< {policy.min_labelled_flights}): quality not judged")
    else:
        auc, train_auc = quality.get("roc_auc"), quality.get("training_roc_auc")
        if auc is not None and train_auc is not None:
            drop = train_auc - auc
            hit = drop >= policy.roc_auc_drop
            reasons.append(f"ROC AUC {auc:.3f} on {labelled} labelled flights vs {train_auc:.3f} in training (drop "
                           f"{drop:+.3f}) {'at or beyond' if hit else 'within'} the allowed {policy.roc_auc_drop:.2f}")
            if hit:
                triggers.append("roc_auc_drop")
        else:
            reasons.append("ROC AUC undefined on the labelled window (one class, or no training figure)")
        brier, train_brier = quality.get("brier"), quality.get("training_brier")
        if brier is not None and train_brier is not None:
            rise = brier - train_brier
            hit = rise >= policy.brier_rise
            reasons.append(f"Brier {brier:.3f} vs {train_brier:.3f} in training (rise {rise:+.3f}) "
                           f"{'at or beyond' if hit else 'within'} the allowed {policy.brier_rise:.2f}")
            if hit:
                triggers.append("brier_rise")

    requested = bool(triggers)
    if requested:
        earlier = [date.fromisoformat(str(s["date"])) for s in history
                   if (s.get("retrain") or {}).get("requested") and date.fromisoformat(str(s["date"])) < day]
        last = max(earlier, default=None)
        if last is not None and (day - last).days < policy.cooldown_days:
            requested = False
            reasons.append(f"retraining was requested on {last} ({(day - last).days} days ago), within the "
                           f"cooldown of {policy.cooldown_days} days: not requested again")
    window = tuning = None
    if requested:
        window = {"start_date": (day - timedelta(days=policy.training_window_days)).isoformat(),
                  "end_date": (day - timedelta(days=1)).isoformat()}
        reasons.append(f"retraining requested on {window['start_date']}..{window['end_date']}")
        searched = _last_search(history, day)
        if searched is None or (day - searched).days >= policy.search_every_days:
            tuning = policy.request_tuning(search=True)
            reasons.append(f"with a search of the hyperparameters ({tuning['trials']} trials)")
        else:
            tuning = policy.request_tuning(search=False)
            reasons.append(f"with the champion's hyperparameters: a search was asked for on {searched}, "
                           f"{(day - searched).days} days ago (one every {policy.search_every_days} days)")
    elif not triggers:
        reasons.append("nothing beyond its threshold: no retraining")
    return {"requested": requested, "triggers": triggers, "reasons": reasons, "window": window, "tuning": tuning}


def _last_search(history: list[dict[str, Any]], day: date) -> date | None:
    """The latest day before ``day`` whose request asked for a search of the hyperparameters."""
    searched = [date.fromisoformat(str(s["date"])) for s in history
                if int(((s.get("retrain") or {}).get("tuning") or {}).get("trials") or 0) > 0
                and date.fromisoformat(str(s["date"])) < day]
    return max(searched, default=None)
