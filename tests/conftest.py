"""Shared fixtures: every test gets its own pipeline home, so nothing leaks into the next test."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipelines.lake import Lake, open_lake
from pipelines.settings import Settings, get_settings

REPO = Path(__file__).resolve().parents[1]


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


# Real 2013 data, prepared once per session by the same steps the DAGs run: landed, ingested, validated with the
# real GX suites, promoted, feature tables built and the Feast definitions applied. Tests only add to this home
# under their own run keys (training/, models/, mlflow/, optuna/), never change what is here.
REAL_WINDOW = ("2013-01-01", "2013-02-28")


@pytest.fixture(scope="session")
def real_days() -> list:
    from datetime import date

    from pipelines.steps import date_range

    return date_range(*(date.fromisoformat(d) for d in REAL_WINDOW))


@pytest.fixture(scope="session")
def real_data(tmp_path_factory: pytest.TempPathFactory, real_days: list) -> Settings:
    from pipelines.feature_store import apply_definitions, open_store
    from pipelines.features import build_features
    from pipelines.steps import ingest_feed, land_feed, promote_partitions, validate_partitions

    settings = Settings(pipeline_home=tmp_path_factory.mktemp("real_data") / "home", lake_uri=None,
                        s3_endpoint_url=None, feast_profile="embedded", feast_registry_url=None, feast_redis=None,
                        experiment_tracking_uri=None, experiment_artifacts_uri=None, optuna_storage=None)
    for step in (land_feed, ingest_feed, validate_partitions, promote_partitions, build_features):
        step(real_days, settings)
    apply_definitions(open_store(settings))
    return settings
