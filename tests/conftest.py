"""Shared fixtures: every test gets its own pipeline home, so nothing leaks into the next test."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from pipelines.core.lake import Lake, open_lake
from pipelines.core.settings import Settings, get_settings

REPO = Path(__file__).resolve().parents[1]


# The files that take minutes, longest first (measured). ``make test`` runs files on two workers (pytest-xdist,
# ``--dist loadfile --no-loadscope-reorder``: a file stays on one worker, files start in collection order): these
# start first, so the run does not end waiting on one long file. Every other file keeps its place after them.
LONGEST_FIRST = (
    "tests/e2e/test_production_profile.py",
    "tests/e2e/test_flight_delay_monitoring_airflow.py",
    "tests/e2e/test_flight_delay_training_airflow.py",
    "tests/integration/test_deployment.py",
    "tests/e2e/test_airflow_ui_browser.py",
    "tests/integration/test_service_fuzz.py",
    "tests/e2e/test_flights_ingest_airflow.py",
    "tests/integration/test_replay_retry.py",
    "tests/integration/test_replay_skew_redis.py",
    "tests/e2e/test_flight_features_airflow.py",
    "tests/integration/test_tuning_postgres.py",
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    rank = {path: i for i, path in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.nodeid.split("::", 1)[0], len(rank)))  # stable: the rest in order


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh PIPELINE_HOME with the embedded (local) lake."""
    monkeypatch.setenv("PIPELINE_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("GX_ANALYTICS_ENABLED", "false")
    for name in ("LAKE_URI", "S3_ENDPOINT_URL"):
        monkeypatch.delenv(name, raising=False)
    return tmp_path / "home"


@pytest.fixture
def settings(home: Path) -> Settings:
    return get_settings()


@pytest.fixture
def lake(settings: Settings) -> Lake:
    return open_lake(settings)


def synthetic_training_frame(n: int = 3000, days: int = 30, seed: int = 0) -> Any:
    """Training-set shaped rows; disruption rises with precipitation, later departures and carrier "B6"."""
    import numpy as np
    import pandas as pd

    from pipelines.training.columns import NUMERIC_COLUMNS

    rng = np.random.default_rng(seed)
    origins, dests, carriers = ["JFK", "LGA", "EWR"], ["LAX", "MIA", "ORD", "ATL"], ["AA", "B6", "DL", "UA"]
    day = rng.integers(0, days, n)
    hour = rng.integers(5, 23, n)
    departure = pd.Timestamp("2013-03-01", tz="UTC") + pd.to_timedelta(day, "D") + pd.to_timedelta(hour, "h")
    origin = rng.choice(origins, n)
    carrier = rng.choice(carriers, n)
    precip = rng.exponential(0.05, n) * (rng.random(n) < 0.3)
    frame = pd.DataFrame({
        "flight_id": [f"{d}:{c}{i}:{o}" for d, c, i, o in zip(day, carrier, range(n), origin, strict=True)],
        "origin": origin, "carrier": carrier,
        "route": [f"{o}-{d}" for o, d in zip(origin, rng.choice(dests, n), strict=True)],
        "tailnum": rng.choice(["N1", "N2", "N3"], n), "scheduled_departure": departure,
        "distance": rng.uniform(200, 2500, n), "event_timestamp": departure - pd.Timedelta(hours=2),
        "dep_hour": hour, "dep_weekday": departure.weekday, "dep_month": departure.month,
        "plane_type": rng.choice(["Fixed wing multi engine", "Fixed wing single engine"], n),
    })
    frame["log_distance"] = np.log(frame["distance"])
    for column in NUMERIC_COLUMNS:
        if column not in frame.columns:
            frame[column] = rng.normal(0, 1, n)
    frame["precip"] = precip
    frame.loc[rng.random(n) < 0.1, "wind_gust"] = np.nan
    logit = -1.5 + 12 * precip + 0.25 * (hour - 14) + 0.8 * (carrier == "B6")
    frame["disrupted"] = (rng.random(n) < 1 / (1 + np.exp(-logit))).astype("int64")
    return frame


@pytest.fixture(scope="session")
def make_training_frame() -> Callable[..., Any]:
    """``synthetic_training_frame``: small training-set shaped frames for model, tuning and evaluation tests."""
    return synthetic_training_frame


# Real 2013 data, prepared once per session by the same steps the DAGs run: landed, ingested, validated with the
# real GX suites, promoted, feature tables built and the Feast definitions applied. Tests only add to this home
# under their own run keys (training/, models/, mlflow/, optuna/), never change what is here.
REAL_WINDOW = ("2013-01-01", "2013-02-28")


@pytest.fixture(scope="session")
def real_days() -> list:
    from datetime import date

    from pipelines.core.dates import date_range

    return date_range(*(date.fromisoformat(d) for d in REAL_WINDOW))


@pytest.fixture(scope="session")
def real_data(tmp_path_factory: pytest.TempPathFactory, real_days: list) -> Settings:
    from pipelines.features.steps import build_features
    from pipelines.features.store import apply_definitions, open_store
    from pipelines.ingest.steps import ingest_feed
    from pipelines.simulation.feed import land_feed
    from pipelines.validation.steps import promote_partitions, validate_partitions

    settings = Settings(pipeline_home=tmp_path_factory.mktemp("real_data") / "home", lake_uri=None,
                        s3_endpoint_url=None, feast_profile="embedded", feast_registry_url=None, feast_redis=None,
                        experiment_tracking_uri=None, experiment_artifacts_uri=None, optuna_storage=None)
    for step in (land_feed, ingest_feed, validate_partitions, promote_partitions, build_features):
        step(real_days, settings)
    apply_definitions(open_store(settings))
    return settings


@pytest.fixture(scope="session")
def free_port() -> Callable[..., int]:
    """``free_port(span=1)``: a port on 127.0.0.1 that nothing listens on now (and the ``span - 1`` after it: the
    model service's front door needs two more for its slots)."""
    from pipelines.core.processes import free_port as find

    return find


CHAMPION_RUN_KEY = "service-test/2013-03-01"


@pytest.fixture(scope="session")
def champion_run_key() -> str:
    return CHAMPION_RUN_KEY


@pytest.fixture(scope="session")
def champion_settings(real_data: Settings, real_days: list, tmp_path_factory: pytest.TempPathFactory) -> Settings:
    """The real-data home with a champion of its own: a small model trained, registered and promoted by the
    pipeline's steps (tracking and studies in a folder of this fixture's), and the window materialized online.
    Shared by the service, fuzz and deployment tests; each starts its own service processes on free ports."""
    from pipelines.features.store import materialize_features
    from pipelines.registry.gate import promote_model
    from pipelines.registry.register import register_model
    from pipelines.training.steps import train_pipeline

    own = tmp_path_factory.mktemp("champion")
    settings = real_data.model_copy(update={"experiment_tracking_uri": f"sqlite:///{own / 'mlflow.db'}",
                                            "experiment_artifacts_uri": (own / "artifacts").as_uri(),
                                            "optuna_storage": f"sqlite:///{own / 'optuna.db'}"})
    train_pipeline(real_days, CHAMPION_RUN_KEY, settings, trials=1, max_epochs=3, valid_days=7, test_days=7)
    register_model(CHAMPION_RUN_KEY, settings)
    assert promote_model(CHAMPION_RUN_KEY, settings)["decision"] == "promote"
    materialize_features(real_days, settings)
    return settings
