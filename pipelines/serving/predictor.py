"""Online predictions: the champion model with online features, what one service worker holds.

``services/flight_delay_service.py`` (BentoML) is a thin shell around ``Predictor``; everything that decides an
answer lives in this package, so it is tested without a server. A request (``pipelines.serving.contract``) names a
scheduled flight; the predictor builds its entity keys, reads the feature service ``flight_delay_v1`` from the
online store in one round trip, adds the request-time features (Feast's on-demand view), scores the flights with
the registered ``champion`` and hands every answer to the prediction log (``pipelines.serving.prediction_log``).
Unknown carriers and planes are not errors: the model's unknown index serves them.
"""

from __future__ import annotations

import gc
import logging
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from pipelines.core.lake import Lake, open_lake
from pipelines.core.settings import Settings, get_settings
from pipelines.features.tables import PREDICTION_LEAD
from pipelines.registry.model_files import ChampionModel, load_registered
from pipelines.serving.contract import FeaturesUnavailable, FlightRequest, RequestError, entity_columns
from pipelines.serving.freshness import FeatureFreshness
from pipelines.serving.prediction_log import PredictionLog, feature_json

log = logging.getLogger(__name__)
DEFAULT_THRESHOLD = 0.5
ONLINE_READ_ATTEMPTS = 2
"""A failed online read is tried once more at once before the request gets its 503."""
INLINE_MAX_FLIGHTS = 100
"""The largest request ``can_answer_inline`` lets the service answer on its event loop (~5 ms of CPU)."""


GC_THRESHOLDS = (700, 10, 100)
"""The collector's defaults, except a full collection waits for 100 rather than 10 young-generation passes."""


def freeze_heap() -> None:
    """Garbage collection for a serving process, once it has loaded everything. Each full collection walks every
    tracked object and holds the GIL: with what startup leaves (the model, Feast's registry, MLflow, the
    libraries: ~600k objects) that paused a worker for ~200 ms every few seconds under load, the whole p99.
    ``gc.freeze`` takes those out of its reach (garbage collected first, so nothing freeable is frozen). What stays
    is mostly BentoML's per-request timeout timers, alive for the traffic timeout after each answer (~100k objects
    at 500 requests/s, a 20-30 ms pass): full passes ten times rarer keep those out of the p99; cycles are rare
    here, so little waits for them."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


class Predictor:
    """The champion, an open feature store and the prediction log: what one service worker holds."""

    def __init__(self, settings: Settings | None = None, threshold: float = DEFAULT_THRESHOLD,
                 champion: ChampionModel | None = None,
                 on_log_count: Callable[[str, int], None] | None = None) -> None:
        """``on_log_count(outcome, rows)``: told what the prediction log did with its rows (the service counts it in
        its metrics)."""
        from pipelines.features.store import open_store

        self.settings = settings or get_settings()
        self.threshold = threshold
        self.champion = champion or load_registered(self.settings)
        lake = open_lake(self.settings)
        self.log = PredictionLog(lake, max_age_s=self.settings.prediction_log_max_age_s, background=True,
                                 spool=self.settings.pipeline_home / "spool" / "prediction_log",
                                 journal=self.settings.pipeline_home / "spool" / "prediction_journal",
                                 on_count=on_log_count)
        self.store = open_store(self.settings)
        self.store_failing = False  # the last online read failed (set and cleared by _online_features)
        self.freshness = FeatureFreshness(self._materialized_until)
        self.known_dests = set(self.champion.model.preprocessor.vocabularies.get("dest", [])) | self._airports(lake)
        freeze_heap()  # a service worker has loaded all it needs by now

    @staticmethod
    def _airports(lake: Lake) -> set[str]:
        from pipelines.core.lake import reference_key

        key = reference_key("airports")
        return set(lake.read_parquet(key)["faa"].astype(str)) if lake.exists(key) else set()

    def can_answer_inline(self, flights: int) -> bool:
        """Whether ``predict`` for ``flights`` flights is short CPU work that waits on nothing: a small request,
        the online store answering (its last read did not fail, so no read is expected to wait out the client's
        timeouts). The service answers those on its event loop and hands the rest to a thread, so a store outage
        or a large batch never holds up the probes and the other requests."""
        return flights <= INLINE_MAX_FLIGHTS and not self.store_failing

    def features_as_of(self) -> str | None:
        """How fresh the online store is (``FeatureFreshness``: read at start, refreshed off the request path)."""
        return self.freshness.value()

    def _materialized_until(self) -> str | None:
        """The earliest end of the views' materialized windows, from the registry."""
        ends = [view.materialization_intervals[-1][1] for view in self.store.list_feature_views(allow_cache=False)
                if view.materialization_intervals and view.name != "plane_attributes"]
        return min(ends).isoformat() if ends else None

    def model_info(self) -> dict[str, Any]:
        return {"name": "flight_delay_classifier", "version": self.champion.version,
                "aliases": self.champion.aliases, "threshold": self.threshold,
                "lineage": {k: v for k, v in self.champion.tags.items() if k.startswith(("lineage.", "pipeline."))},
                "gate": {k: v for k, v in self.champion.tags.items() if k.startswith("gate.")}}

    def predict(self, requests: list[FlightRequest], log: bool = True) -> list[dict[str, Any]]:
        """Answers for ``requests``, in order, each logged unless ``log`` is off (a deployment's smoke test is not
        traffic). Columns of plain values from the request to the model (no frame on the way): the same answers
        as the frame path, in a fraction of the time for a few flights."""

        for i, request in enumerate(requests):
            if request.dest not in self.known_dests:
                raise RequestError(f"flights[{i}].dest", f"unknown airport code {request.dest!r}")
        entities = entity_columns(requests)
        features = self._online_features(entities)
        probabilities = self.champion.model.predict_proba_columns(features).tolist()
        answers = self.answers(entities, probabilities)
        if log:
            self.log.add(self.log_records(requests, answers, probabilities, features))
        return answers

    def _online_features(self, entities: dict[str, list[Any]]) -> dict[str, list[Any]]:
        """The online read, tried ``ONLINE_READ_ATTEMPTS`` times at once (the client's own timeouts bound each try:
        the production profile sets 1 s to connect and to read, and no retries of its own); then any backend failure
        (Redis down, SQLite locked) is the same answer: ``FeaturesUnavailable``, the service's 503."""
        from pipelines.features.store import online_feature_columns

        for attempt in range(1, ONLINE_READ_ATTEMPTS + 1):
            try:
                features = online_feature_columns(entities, store=self.store)
                self.store_failing = False
                return features
            except Exception as error:
                self.store_failing = True
                if attempt == ONLINE_READ_ATTEMPTS:
                    raise FeaturesUnavailable(f"online feature store unavailable after {attempt} tries: "
                                              f"{type(error).__name__}: {error}") from error
                log.warning("online read failed (%s: %s), trying again", type(error).__name__, error)
        raise AssertionError("unreachable")

    def answers(self, entities: dict[str, list[Any]], probabilities: list[float]) -> list[dict[str, Any]]:
        """What the caller gets per flight: probability, decision, model version and feature freshness."""
        as_of = self.features_as_of()
        lead = PREDICTION_LEAD.to_pytimedelta()
        return [{"flight_id": flight_id, "probability": round(probability, 6),
                 "disrupted": probability >= self.threshold, "threshold": self.threshold,
                 "model_version": self.champion.version, "features_as_of": as_of,
                 "prediction_time": (departure - lead).isoformat()}
                for flight_id, departure, probability in zip(entities["flight_id"], entities["scheduled_departure"],
                                                             probabilities, strict=True)]

    def log_records(self, requests: list[FlightRequest], answers: list[dict[str, Any]], probabilities: list[float],
                    features: dict[str, list[Any]]) -> list[dict[str, Any]]:
        """The prediction log's rows: request, answer and the features the model read."""
        served = datetime.now(UTC)
        return [{"request_id": uuid.uuid4().hex, "served_at": served,
                 "flight_date": answer["flight_id"].split(":", 1)[0],
                 **request.model_dump(mode="json"), "flight_id": answer["flight_id"],
                 "probability": probability, "model_version": self.champion.version,
                 "features": feature_json(features, i)}
                for i, (request, answer, probability) in enumerate(zip(requests, answers, probabilities,
                                                                         strict=True))]
