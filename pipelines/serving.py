"""Online predictions: the request contract, the champion model with online features, and the prediction log.

``services/flight_delay_service.py`` (BentoML) is a thin shell around ``Predictor``; everything that decides an
answer lives here, so it is tested without a server. A request names a scheduled flight; the predictor builds its
entity keys, reads the feature service ``flight_delay_v1`` from the online store in one round trip, adds the
request-time features (Feast's on-demand view), and scores the flights with the registered ``champion``.

Errors a caller can fix are ``RequestError`` (the service answers 4xx naming the field); an unreachable online
store is ``FeaturesUnavailable`` (503). Unknown carriers and planes are not errors: the model's unknown index serves
them. Every prediction is buffered and written to ``{lake}/predictions/flight_delay/date=YYYY-MM-DD/`` (the
flight's New York date) in batches.
"""

from __future__ import annotations

import io
import logging
import threading
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Any, Literal

import pandas as pd
from pydantic import BaseModel, ConfigDict, Field, field_validator

from pipelines.features import LOCAL_TZ, PREDICTION_LEAD
from pipelines.lake import Lake, open_lake, partition_key
from pipelines.settings import Settings, get_settings

log = logging.getLogger(__name__)

ORIGINS = ("EWR", "JFK", "LGA")
DEFAULT_THRESHOLD = 0.5


class FlightRequest(BaseModel):
    """One scheduled departure from New York."""

    model_config = ConfigDict(extra="forbid")

    carrier: str = Field(pattern=r"^[A-Z0-9]{2}$", description="Two-character airline code, e.g. B6.",
                         examples=["B6"])
    flight: int = Field(ge=1, le=9999, description="Flight number.", examples=[725])
    origin: Literal["EWR", "JFK", "LGA"] = Field(description="New York departure airport.")
    dest: str = Field(pattern=r"^[A-Z]{3}$", description="Destination airport (FAA code).", examples=["BQN"])
    scheduled_departure: datetime = Field(
        description="Scheduled departure, ISO 8601; without an offset it is New York local time.",
        examples=["2013-03-31T09:30:00-04:00"])
    distance: float = Field(gt=0, le=6000, description="Great-circle distance in miles.", examples=[1576])
    tailnum: str | None = Field(default=None, max_length=10, description="Plane tail number, if known.")

    @field_validator("scheduled_departure")
    @classmethod
    def _in_new_york_time(cls, value: datetime) -> datetime:
        if value.tzinfo is None:
            value = pd.Timestamp(value).tz_localize(LOCAL_TZ).to_pydatetime()
        if not 1990 <= value.year <= 2100:
            raise ValueError("must be a date between 1990 and 2100")
        return value


class RequestError(ValueError):
    """A request the caller can fix; ``field`` names what is wrong."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field


class FeaturesUnavailable(RuntimeError):
    """The online store could not be read: the service is up but cannot answer now."""


def flight_entities(requests: list[FlightRequest]) -> pd.DataFrame:
    """The entity keys and request fields of the feature service, as training built them."""
    departures = pd.to_datetime([r.scheduled_departure for r in requests], utc=True)
    local_days = departures.tz_convert(LOCAL_TZ).strftime("%Y-%m-%d")
    return pd.DataFrame({
        "flight_id": [f"{d}:{r.carrier}{r.flight}:{r.origin}" for d, r in zip(local_days, requests, strict=True)],
        "origin": [r.origin for r in requests],
        "carrier": [r.carrier for r in requests],
        "route": [f"{r.origin}-{r.dest}" for r in requests],
        "tailnum": [r.tailnum or "UNKNOWN" for r in requests],
        "scheduled_departure": departures,
        "distance": [float(r.distance) for r in requests],
    })


def requests_from_flights(flights: pd.DataFrame) -> list[dict[str, Any]]:
    """Validated flight rows as the JSON bodies a caller sends (for the demo, replays and tests)."""
    departures = (flights["time_hour"] + pd.to_timedelta(flights["minute"].astype("int64"), unit="min")) \
        .dt.tz_convert(LOCAL_TZ)
    return [{"carrier": row.carrier, "flight": int(row.flight), "origin": row.origin, "dest": row.dest,
             "scheduled_departure": departure.isoformat(), "distance": float(row.distance),
             "tailnum": None if pd.isna(row.tailnum) else str(row.tailnum)}
            for row, departure in zip(flights.itertuples(), departures, strict=True)]


class PredictionLog:
    """Buffers prediction records and writes them to the lake in batches (never an object per request): when the
    buffer holds ``batch_rows`` rows or is ``max_age_s`` old, and on ``flush()`` at shutdown."""

    def __init__(self, lake: Lake, batch_rows: int = 1000, max_age_s: float = 30.0) -> None:
        self.lake, self.batch_rows, self.max_age_s = lake, batch_rows, max_age_s
        self._rows: list[dict[str, Any]] = []
        self._since = time.monotonic()
        self._lock = threading.Lock()

    def add(self, rows: list[dict[str, Any]]) -> None:
        with self._lock:
            if not self._rows:
                self._since = time.monotonic()
            self._rows.extend(rows)
            due = len(self._rows) >= self.batch_rows or time.monotonic() - self._since >= self.max_age_s
        if due:
            self.flush()

    def flush(self) -> list[str]:
        """Write what is buffered, one Parquet object per flight date (New York), so a day's traffic is one
        partition whenever it was served; returns the keys written."""
        with self._lock:
            rows, self._rows = self._rows, []
        if not rows:
            return []
        frame = pd.DataFrame(rows)
        keys = []
        for day, part in frame.groupby("flight_date", sort=True):
            key = partition_key("predictions", "flight_delay", date.fromisoformat(str(day)),
                                f"part-{datetime.now(UTC):%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:8]}.parquet")
            buffer = io.BytesIO()
            part.drop(columns="flight_date").to_parquet(buffer, index=False)
            self.lake.write_bytes(key, buffer.getvalue())
            keys.append(key)
        log.info("prediction log: %d rows in %d objects", len(rows), len(keys))
        return keys


@dataclass
class ChampionModel:
    version: str
    model: Any
    tags: dict[str, str]
    aliases: list[str]


def load_champion(settings: Settings, alias: str = "champion") -> ChampionModel:
    """The registered model behind ``alias``, with its tags and aliases, loaded once."""
    import mlflow
    from mlflow import MlflowClient

    from pipelines.registry import MODEL_NAME
    from pipelines.tracking import use_tracking

    use_tracking(settings)
    client = MlflowClient()
    version = client.get_model_version_by_alias(MODEL_NAME, alias)
    pyfunc = mlflow.pyfunc.load_model(f"models:/{MODEL_NAME}/{version.version}")
    model = pyfunc.unwrap_python_model().model
    return ChampionModel(version=str(version.version), model=model, tags=dict(version.tags),
                         aliases=list(version.aliases))


class Predictor:
    """The champion, an open feature store and the prediction log: what one service worker holds."""

    def __init__(self, settings: Settings | None = None, threshold: float = DEFAULT_THRESHOLD,
                 champion: ChampionModel | None = None) -> None:
        from pipelines.feature_store import open_store

        self.settings = settings or get_settings()
        self.threshold = threshold
        self.champion = champion or load_champion(self.settings)
        lake = open_lake(self.settings)
        self.log = PredictionLog(lake)
        self.store = open_store(self.settings)
        self.known_dests = set(self.champion.model.preprocessor.vocabularies.get("dest", [])) | self._airports(lake)

    @staticmethod
    def _airports(lake: Lake) -> set[str]:
        from pipelines.source import reference_key

        key = reference_key("airports")
        return set(lake.read_parquet(key)["faa"].astype(str)) if lake.exists(key) else set()

    def features_as_of(self) -> str | None:
        """How fresh the online store is: the earliest end of the views' materialized windows (cached 30 s)."""
        now = time.monotonic()
        if now - getattr(self, "_freshness_read", -1e9) > 30:
            ends = [view.materialization_intervals[-1][1] for view in self.store.list_feature_views(allow_cache=False)
                    if view.materialization_intervals and view.name != "plane_attributes"]
            self._freshness = min(ends).isoformat() if ends else None
            self._freshness_read = now
        return self._freshness

    def model_info(self) -> dict[str, Any]:
        return {"name": "flight_delay_classifier", "version": self.champion.version,
                "aliases": self.champion.aliases, "threshold": self.threshold,
                "lineage": {k: v for k, v in self.champion.tags.items() if k.startswith(("lineage.", "pipeline."))},
                "gate": {k: v for k, v in self.champion.tags.items() if k.startswith("gate.")}}

    def predict(self, requests: list[FlightRequest]) -> list[dict[str, Any]]:
        from pipelines.feature_store import online_features

        for i, request in enumerate(requests):
            if request.dest not in self.known_dests:
                raise RequestError(f"flights[{i}].dest", f"unknown airport code {request.dest!r}")
        entities = flight_entities(requests)
        try:
            features = online_features(entities, self.settings, store=self.store)
        except Exception as error:  # any backend failure (Redis down, SQLite locked) is the same answer: 503
            raise FeaturesUnavailable(f"online feature store unavailable: {type(error).__name__}: {error}") \
                from error
        probabilities = self.champion.model.predict_proba(features)
        served = datetime.now(UTC)
        as_of = self.features_as_of()
        answers, records = [], []
        for i, request in enumerate(requests):
            probability = float(probabilities[i])
            answers.append({
                "flight_id": entities["flight_id"].iloc[i], "probability": round(probability, 6),
                "disrupted": probability >= self.threshold, "threshold": self.threshold,
                "model_version": self.champion.version, "features_as_of": as_of,
                "prediction_time": (entities["scheduled_departure"].iloc[i] - PREDICTION_LEAD).isoformat(),
            })
            records.append({
                "request_id": uuid.uuid4().hex, "served_at": served,
                "flight_date": answers[-1]["flight_id"].split(":", 1)[0],
                **request.model_dump(mode="json"), "flight_id": answers[-1]["flight_id"],
                "probability": probability, "model_version": self.champion.version,
                "features": features.iloc[i].to_json(),
            })
        self.log.add(records)
        return answers
