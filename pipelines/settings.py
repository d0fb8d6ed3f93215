"""Typed settings from environment variables.

Read when called (``get_settings()``), never at import, so tests and Airflow tasks can point the same code at
another home, lake or endpoint by changing the environment.
"""

from __future__ import annotations

from datetime import date
from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

PROJECT_ROOT = Path(__file__).resolve().parents[1]


class Settings(BaseSettings):
    """Everything the steps need to know about where things live."""

    model_config = SettingsConfigDict(extra="ignore", frozen=True)

    pipeline_home: Path = Field(
        default=PROJECT_ROOT / ".pipeline_home",
        description="Root folder for everything the embedded profile writes (lake, Airflow, GX output, logs).",
    )
    lake_uri: str | None = Field(
        default=None,
        description="Lake root: a local folder, or s3://bucket/prefix. Default: $PIPELINE_HOME/lake.",
    )
    s3_endpoint_url: str | None = Field(
        default=None, description="S3-compatible endpoint (e.g. http://127.0.0.1:9000); None means AWS itself."
    )
    gx_root: Path = Field(
        default=PROJECT_ROOT / "great_expectations",
        description="The committed Great Expectations project (suites, checkpoints).",
    )
    feast_profile: Literal["embedded", "production"] = Field(
        default="embedded", description="embedded: SQLite registry and online store; production: PostgreSQL + Redis."
    )
    feast_registry_url: str | None = Field(
        default=None, description="SQLAlchemy URL of Feast's SQL registry (production profile)."
    )
    feast_redis: str | None = Field(default=None, description="Redis connection string (production profile).")
    # Not MLFLOW_TRACKING_URI: MLflow writes that variable itself whenever a tracking URI is set in a process.
    experiment_tracking_uri: str | None = Field(
        default=None,
        description="MLflow tracking server or database. Default: a SQLite file under $PIPELINE_HOME/mlflow.",
    )
    experiment_artifacts_uri: str | None = Field(
        default=None,
        description="Where a new experiment keeps its artifacts (s3://... in production). Default: "
                    "$PIPELINE_HOME/mlflow/artifacts with the default tracking database, else the server's choice.",
    )
    optuna_storage: str | None = Field(
        default=None,
        description="SQLAlchemy URL of the Optuna studies (PostgreSQL in production, shared by parallel tuning "
                    "workers). Default: a SQLite file under $PIPELINE_HOME/optuna.",
    )
    demo_start: date = date(2013, 1, 1)
    demo_end: date = date(2013, 3, 31)

    @property
    def lake_root(self) -> str:
        return self.lake_uri or str(self.pipeline_home / "lake")

    @property
    def tracking_uri(self) -> str:
        return self.experiment_tracking_uri or f"sqlite:///{self.pipeline_home / 'mlflow' / 'mlflow.db'}"

    @property
    def artifact_location(self) -> str | None:
        if self.experiment_artifacts_uri or self.experiment_tracking_uri:
            return self.experiment_artifacts_uri
        return (self.pipeline_home / "mlflow" / "artifacts").as_uri()

    @property
    def optuna_url(self) -> str:
        return self.optuna_storage or f"sqlite:///{self.pipeline_home / 'optuna' / 'studies.db'}"

    @property
    def gx_output_dir(self) -> Path:
        """Validation results and Data Docs: generated output, kept in the home folder, not in git."""
        return self.pipeline_home / "gx"

    @property
    def data_docs_index(self) -> Path:
        return self.gx_output_dir / "data_docs" / "index.html"


def get_settings() -> Settings:
    return Settings()
