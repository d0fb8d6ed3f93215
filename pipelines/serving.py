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

import gc
import io
import json
import logging
import math
import threading
import time
import uuid
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Any, Literal
from zoneinfo import ZoneInfo

import pandas as pd
from pydantic import BaseModel, ConfigDict, Field, field_validator

from pipelines.features import LOCAL_TZ, PREDICTION_LEAD
from pipelines.lake import Lake, open_lake, partition_key
from pipelines.settings import Settings, get_settings

log = logging.getLogger(__name__)

ORIGINS = ("EWR", "JFK", "LGA")
SMOKE_TEST_HEADER = "X-Smoke-Test"
"""A request carrying this header is answered but not logged: a deployment's checks are not traffic to monitor."""
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
    # The service's OpenAPI document is 3.0, where an exclusive bound is a flag beside ``minimum`` (pydantic
    # writes the 2020-12 form, a number, which 3.0 tools such as schemathesis reject); validation is ``gt=0``.
    distance: float = Field(gt=0, le=6000, description="Great-circle distance in miles.", examples=[1576],
                            json_schema_extra={"minimum": 0, "exclusiveMinimum": True})
    tailnum: str | None = Field(default=None, max_length=10, description="Plane tail number, if known.")

    @field_validator("scheduled_departure")
    @classmethod
    def _in_new_york_time(cls, value: datetime) -> datetime:
        # The year first: outside it a conversion can overflow (0001-01-01T00:00+01:00) rather than fail cleanly.
        if not 1990 <= value.year <= 2100:
            raise ValueError("must be a date between 1990 and 2100")
        new_york = ZoneInfo(LOCAL_TZ)
        if value.tzinfo is None:
            # New York wall time; fold=0 takes the first of an hour the clocks repeat (daylight time, as Python
            # does). A wall time the clocks skip does not come back unchanged from UTC: it never happened.
            local = value.replace(tzinfo=new_york)
            if local.astimezone(UTC).astimezone(new_york).replace(tzinfo=None) != value:
                raise ValueError(f"{value.isoformat()} does not exist in New York (the clocks skip it when "
                                 "daylight saving time starts); send it with its UTC offset")
            value = local
        if not 1990 <= value.astimezone(new_york).year <= 2100:
            raise ValueError("must be a date between 1990 and 2100")
        return value


class RequestError(ValueError):
    """A request the caller can fix; ``field`` names what is wrong."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field


class FeaturesUnavailable(RuntimeError):
    """The online store could not be read: the service is up but cannot answer now."""


def entity_columns(requests: list[FlightRequest]) -> dict[str, list[Any]]:
    """The entity keys and request fields of the feature service, as training built them, as columns of plain
    Python values (what the online read takes; a frame of one row costs more than the read itself)."""
    new_york = ZoneInfo(LOCAL_TZ)
    departures = [r.scheduled_departure.astimezone(UTC) for r in requests]
    local_days = [d.astimezone(new_york).strftime("%Y-%m-%d") for d in departures]
    return {
        "flight_id": [f"{d}:{r.carrier}{r.flight}:{r.origin}" for d, r in zip(local_days, requests, strict=True)],
        "origin": [r.origin for r in requests],
        "carrier": [r.carrier for r in requests],
        "route": [f"{r.origin}-{r.dest}" for r in requests],
        "tailnum": [r.tailnum or "UNKNOWN" for r in requests],
        "scheduled_departure": departures,
        "distance": [float(r.distance) for r in requests],
    }


def flight_entities(requests: list[FlightRequest]) -> pd.DataFrame:
    """``entity_columns`` as a frame (departures as ``datetime64[ns, UTC]``)."""
    frame = pd.DataFrame(entity_columns(requests))
    frame["scheduled_departure"] = pd.to_datetime(frame["scheduled_departure"], utc=True)
    return frame


def requests_from_flights(flights: pd.DataFrame) -> list[dict[str, Any]]:
    """Validated flight rows as the JSON bodies a caller sends (for the demo, replays and tests)."""
    departures = (flights["time_hour"] + pd.to_timedelta(flights["minute"].astype("int64"), unit="min")) \
        .dt.tz_convert(LOCAL_TZ)
    return [{"carrier": row.carrier, "flight": int(row.flight), "origin": row.origin, "dest": row.dest,
             "scheduled_departure": departure.isoformat(), "distance": float(row.distance),
             "tailnum": None if pd.isna(row.tailnum) else str(row.tailnum)}
            for row, departure in zip(flights.itertuples(), departures, strict=True)]


def read_prediction_log(lake: Lake, day: date) -> pd.DataFrame:
    """Every row ``PredictionLog`` wrote for ``day``'s flights (all answers, object by object); empty when none."""
    prefix = partition_key("predictions", "flight_delay", day, "")
    parts = [lake.read_parquet(key) for key in lake.list_keys(prefix) if key.endswith(".parquet")]
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame()


class PredictionLog:
    """Buffers prediction records and writes them to the lake in batches (never an object per request): when the
    buffer holds ``batch_rows`` rows or is ``max_age_s`` old, and on ``flush()`` at shutdown.

    With ``background``, a due batch is written by one writer thread: written inline, a 1,000-row batch (frame,
    Parquet, the lake) held the request that filled it, and every request in flight behind the GIL, for ~10 ms,
    which was the p99 of single-flight traffic. A batch the writer cannot write is logged as an error. A ticker
    thread also writes a batch that reached ``max_age_s`` while no request came, so the last predictions before a
    quiet spell reach the lake within ``max_age_s`` (monitoring reads them), not at the next request."""

    def __init__(self, lake: Lake, batch_rows: int = 1000, max_age_s: float = 30.0, *,
                 background: bool = False) -> None:
        self.lake, self.batch_rows, self.max_age_s = lake, batch_rows, max_age_s
        self._rows: list[dict[str, Any]] = []
        self._since = time.monotonic()
        self._lock = threading.Lock()
        self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="prediction-log") if background \
            else None
        if background:
            threading.Thread(target=self._tick, name="prediction-log-ticker", daemon=True).start()

    def add(self, rows: list[dict[str, Any]]) -> None:
        with self._lock:
            if not self._rows:
                self._since = time.monotonic()
            self._rows.extend(rows)
        self._write_if_due()

    def _write_if_due(self) -> None:
        with self._lock:
            if not self._rows or (len(self._rows) < self.batch_rows
                                  and time.monotonic() - self._since < self.max_age_s):
                return
            due, self._rows = self._rows, []
        if self._writer is None:
            self._write(due)
        else:
            self._writer.submit(self._write, due).add_done_callback(_log_write_failure)

    def _tick(self) -> None:
        while True:
            time.sleep(max(0.2, self.max_age_s / 4))
            self._write_if_due()

    def flush(self) -> list[str]:
        """Write what is buffered, after any batch the writer thread still holds; returns the keys written now."""
        with self._lock:
            rows, self._rows = self._rows, []
        if self._writer is not None:
            self._writer.submit(lambda: None).result()  # one writer thread: earlier batches are done after this
        return self._write(rows)

    def _write(self, rows: list[dict[str, Any]]) -> list[str]:
        """One Parquet object per flight date (New York), so a day's traffic is one partition whenever it was
        served; returns the keys written. Straight to Arrow (half the time of a pandas frame, and the Parquet
        encoding releases the GIL), with the columns pandas wrote: ``served_at`` in nanoseconds, UTC."""
        import pyarrow as pa
        import pyarrow.compute as pc
        import pyarrow.parquet as pq

        if not rows:
            return []
        table = pa.Table.from_pylist(rows)
        served_at = table.schema.get_field_index("served_at")
        table = table.set_column(served_at, "served_at", table["served_at"].cast(pa.timestamp("ns", tz="UTC")))
        keys = []
        for day in sorted(set(table["flight_date"].to_pylist())):
            part = table.filter(pc.equal(table["flight_date"], day)).drop_columns(["flight_date"])
            key = partition_key("predictions", "flight_delay", date.fromisoformat(day),
                                f"part-{datetime.now(UTC):%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:8]}.parquet")
            buffer = io.BytesIO()
            pq.write_table(part, buffer)
            self.lake.write_bytes(key, buffer.getvalue())
            keys.append(key)
        log.info("prediction log: %d rows in %d objects", len(rows), len(keys))
        return keys


def _log_write_failure(written: Future[list[str]]) -> None:
    if written.exception() is not None:
        log.error("prediction log: a batch could not be written", exc_info=written.exception())


@dataclass
class ChampionModel:
    version: str
    model: Any
    tags: dict[str, str]
    aliases: list[str]


def load_champion(settings: Settings, version: str | None = None) -> ChampionModel:
    """Registered version ``version`` (a deployed Bento pins one), else the one behind ``champion``, with its tags
    and aliases, loaded once."""
    import mlflow
    from mlflow import MlflowClient

    from pipelines.registry import MODEL_NAME
    from pipelines.tracking import use_tracking

    use_tracking(settings)
    client = MlflowClient()
    found = (client.get_model_version(MODEL_NAME, version) if version
             else client.get_model_version_by_alias(MODEL_NAME, "champion"))
    pyfunc = mlflow.pyfunc.load_model(f"models:/{MODEL_NAME}/{found.version}")
    model = pyfunc.unwrap_python_model().model
    return ChampionModel(version=str(found.version), model=model, tags=dict(found.tags), aliases=list(found.aliases))


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
                 champion: ChampionModel | None = None) -> None:
        from pipelines.feature_store import open_store

        self.settings = settings or get_settings()
        self.threshold = threshold
        self.champion = champion or load_champion(self.settings)
        lake = open_lake(self.settings)
        self.log = PredictionLog(lake, max_age_s=self.settings.prediction_log_max_age_s, background=True)
        self.store = open_store(self.settings)
        self.known_dests = set(self.champion.model.preprocessor.vocabularies.get("dest", [])) | self._airports(lake)
        freeze_heap()  # a service worker has loaded all it needs by now

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

    def predict(self, requests: list[FlightRequest], log: bool = True) -> list[dict[str, Any]]:
        """Answers for ``requests``, in order, each logged unless ``log`` is off (a deployment's smoke test is not
        traffic). Columns of plain values from the request to the model (no frame on the way): the same answers
        as the frame path, in a fraction of the time for a few flights."""
        from pipelines.feature_store import online_feature_columns

        for i, request in enumerate(requests):
            if request.dest not in self.known_dests:
                raise RequestError(f"flights[{i}].dest", f"unknown airport code {request.dest!r}")
        entities = entity_columns(requests)
        try:
            features = online_feature_columns(entities, store=self.store)
        except Exception as error:  # any backend failure (Redis down, SQLite locked) is the same answer: 503
            raise FeaturesUnavailable(f"online feature store unavailable: {type(error).__name__}: {error}") \
                from error
        probabilities = self.champion.model.predict_proba_columns(features).tolist()
        answers = self.answers(entities, probabilities)
        if log:
            self.log.add(self.log_records(requests, answers, probabilities, features))
        return answers

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


def feature_json(features: dict[str, list[Any]], row: int) -> str:
    """One flight's features as a JSON object, compact and in column order; NaN and infinities are null (JSON has
    neither), numbers keep every digit."""
    return json.dumps({name: _json_value(values[row]) for name, values in features.items()},
                      separators=(",", ":"), default=str)


def _json_value(value: Any) -> Any:
    return None if isinstance(value, float) and not math.isfinite(value) else value
