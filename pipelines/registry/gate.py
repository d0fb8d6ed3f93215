"""The promotion gate: the challenger and the ``champion`` scored on the run's test window; promotion only above
an absolute ROC AUC floor, within a tolerance of the champion (paired bootstrap interval) and without a Brier
regression. The decision and its reasons are written as ``models/{run}/promotion.json`` and as tags.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from pipelines.core.lake import open_lake
from pipelines.core.names import CHAMPION, MODEL_NAME, PREVIOUS_CHAMPION
from pipelines.core.settings import Settings, get_settings
from pipelines.registry.model_files import load_registered
from pipelines.registry.pyfunc import model_input
from pipelines.registry.register import find_version, version_by_alias
from pipelines.training.tracking import use_tracking

if TYPE_CHECKING:
    pass

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class GatePolicy:
    """When a challenger may replace the champion."""

    roc_auc_floor: float = 0.60
    """Absolute floor: below it a model is not served, champion or not."""
    roc_auc_tolerance: float = 0.01
    """The challenger may be at most this much worse than the champion (lower end of the bootstrap interval)."""
    brier_tolerance: float = 0.005
    """Calibration must not get worse than this (Brier score, absolute)."""
    resamples: int = 1000


def decide(y: np.ndarray, challenger: np.ndarray, champion: np.ndarray | None,
           policy: GatePolicy) -> tuple[bool, list[str], dict[str, Any]]:
    """The gate's judgement and its reasons in words; pure, so it is tested on its own."""
    from pipelines.training.evaluation import classification_metrics, paired_bootstrap_auc_difference

    scores: dict[str, Any] = {"challenger": classification_metrics(y, challenger)}
    auc = scores["challenger"]["roc_auc"]
    reasons = []
    ok = bool(auc >= policy.roc_auc_floor)
    reasons.append(f"challenger ROC AUC {auc:.4f} {'clears' if ok else 'is below'} the floor "
                   f"{policy.roc_auc_floor:.2f}")
    if champion is None:
        reasons.append("no champion yet: the first model is promoted when it clears the floor")
        return ok, reasons, scores
    scores["champion"] = classification_metrics(y, champion)
    comparison = paired_bootstrap_auc_difference(y, challenger, champion, resamples=policy.resamples)
    scores["roc_auc_difference"] = comparison
    auc_ok = comparison["low"] >= -policy.roc_auc_tolerance
    reasons.append(f"ROC AUC challenger - champion {comparison['difference']:+.4f}, 95% interval "
                   f"[{comparison['low']:+.4f}, {comparison['high']:+.4f}]: "
                   + ("within" if auc_ok else "worse than") + f" the tolerance {policy.roc_auc_tolerance:.3f}")
    brier_change = scores["challenger"]["brier"] - scores["champion"]["brier"]
    brier_ok = brier_change <= policy.brier_tolerance
    reasons.append(f"Brier {scores['challenger']['brier']:.4f} vs champion {scores['champion']['brier']:.4f} "
                   f"({brier_change:+.4f}): " + ("within" if brier_ok else "beyond")
                   + f" the tolerance {policy.brier_tolerance:.3f}")
    return ok and auc_ok and brier_ok, reasons, scores


def promote_model(run_key: str, settings: Settings | None = None,
                  policy: GatePolicy | None = None) -> dict[str, Any]:
    """The gate on the run's test window; moves ``champion`` (and ``previous_champion``) only on promotion. The
    decision is recorded as ``models/{run}/promotion.json`` and as tags; a rerun returns the recorded decision."""
    from mlflow import MlflowClient

    from pipelines.core.names import LABEL
    from pipelines.training.datasets import model_key, read_splits
    from pipelines.training.steps import load_model

    settings = settings or get_settings()
    policy = policy or GatePolicy()
    use_tracking(settings)
    lake = open_lake(settings)
    key = model_key(run_key, "promotion.json")
    if lake.exists(key):
        decision = json.loads(lake.read_text(key))
        log.info("promote_model: %s already decided: %s", run_key, decision["decision"])
        return dict(decision)
    challenger = find_version(run_key)
    if challenger is None:
        raise FileNotFoundError(f"run {run_key} registered no model: run register_model first")
    test = read_splits(run_key, settings)["test"]
    y = test[LABEL].to_numpy()
    champion = version_by_alias(CHAMPION)
    if champion is not None and champion.version == challenger.version:
        champion = None
    champion_p = None
    if champion is not None:
        loaded = load_registered(settings, champion.version)  # as data: no pickle from the registry runs
        champion_p = np.asarray(loaded.model.predict_proba(model_input(test)), dtype=np.float64)
    promote, reasons, scores = decide(y, load_model(run_key, settings).predict_proba(test), champion_p, policy)
    decision = {
        "run_key": run_key, "model": MODEL_NAME, "challenger_version": challenger.version,
        "champion_version": champion.version if champion else None,
        "decision": "promote" if promote else "reject", "reasons": reasons, "scores": scores,
        "policy": asdict(policy), "test_rows": len(test),
    }
    client = MlflowClient()
    if promote:
        if champion is not None:
            client.set_registered_model_alias(MODEL_NAME, PREVIOUS_CHAMPION, champion.version)
        client.set_registered_model_alias(MODEL_NAME, CHAMPION, challenger.version)
    for name, value in {"gate.decision": decision["decision"], "gate.reasons": " | ".join(reasons)[:5000],
                        "gate.champion_version": str(decision["champion_version"])}.items():
        client.set_model_version_tag(MODEL_NAME, challenger.version, name, value)
    lake.write_text(key, json.dumps(decision, indent=2, default=float))
    log.info("promote_model: version %s %s: %s", challenger.version, decision["decision"].upper(), "; ".join(reasons))
    return decision


def read_decision(run_key: str, settings: Settings | None = None) -> dict[str, Any]:
    from pipelines.training.datasets import model_key

    settings = settings or get_settings()
    return dict(json.loads(open_lake(settings).read_text(model_key(run_key, "promotion.json"))))


def format_decision(decision: dict[str, Any]) -> str:
    lines = [f"Registry: {decision['model']} version {decision['challenger_version']}: "
             f"{decision['decision'].upper()} (champion before: {decision['champion_version'] or 'none'})"]
    lines += [f"  - {reason}" for reason in decision["reasons"]]
    return "\n".join(lines)
