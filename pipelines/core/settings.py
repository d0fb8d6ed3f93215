"""Typed settings from environment variables.

Read when called (``get_settings()``), never at import, so tests and Airflow tasks can point the same code at
another home, lake or endpoint by changing the environment.
"""

from __future__ import annotations

import io
from datetime import date
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

PROJECT_ROOT = Path(__file__).resolve().parents[2]


class Settings(BaseSettings):
    """Everything the steps need to know about where things live."""

    # hide_input_in_errors: a malformed secret (a webhook URL, a token) is not echoed into logs by its error.
    model_config = SettingsConfigDict(extra="ignore", frozen=True, hide_input_in_errors=True)

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
    service_port: int = Field(
        default=3000, ge=1, le=65533,
        description="The model service's front door on 127.0.0.1; the two deployment slots listen on the next two.",
    )
    service_token: SecretStr | None = Field(
        default=None,
        description="Bearer token the model service requires on every request but its probes (``Authorization: "
                    "Bearer <token>``); the pipeline's own callers send it. The production profile refuses to start "
                    "without one; the embedded profile has none (the service listens on 127.0.0.1 only).",
    )
    airflow_port: int = Field(
        default=8080, ge=1, le=65533,
        description="The Airflow API server (UI, REST API, the workers' Execution API) on 127.0.0.1; the "
                    "scheduler's and triggerer's log servers take the next two ports.",
    )
    model_owners: str = Field(
        default="flight-delay-owners@example.com",
        description="Who owns the model and its DAGs: comma-separated addresses that get the monitoring email "
                    "after every run and a failure email when a task fails for good.",
    )
    smtp_host: str = Field(
        default="127.0.0.1",
        description="Where the embedded profile's mail server listens (Airflow's smtp_default connection points "
                    "at it); production sets AIRFLOW_CONN_SMTP_DEFAULT to the company relay instead.",
    )
    smtp_port: int = Field(default=8025, ge=1, le=65535, description="Port of the embedded mail server.")
    smoke_p99_budget_ms: float = Field(
        default=250.0, gt=0,
        description="A new slot's smoke test: the most its single-flight p99 may be during the burst. A busy CI "
                    "machine's test runs set it higher (a training e2e failed at 286 ms beside another suite).")
    mail_from: str = Field(default="flight-delay-pipeline@example.com", description="Sender of the emails.")
    alert_webhook_url: SecretStr | None = Field(
        default=None,
        description="The second alert path beside email: an incoming-webhook URL (Slack, or anything that takes "
                    "Slack's JSON) that gets every failure and monitoring alert too, so an SMTP outage does not "
                    "silence them. http or https only; a secret (a Slack URL carries its token). Unset or empty: "
                    "no webhook.",
    )
    alert_webhook_timeout_s: float = Field(
        default=5.0, gt=0, le=60,
        description="Seconds one webhook post may wait to connect or for an answer (it is tried 3 times).",
    )
    day_lease_wait_s: float = Field(
        default=900.0, ge=0, description="How long a run waits for another run of the same day to give the day back "
                                         "(flights_ingest's lease) before it fails naming that run.")
    prediction_log_max_age_s: float = Field(
        default=10.0, gt=0, description="The model service writes its buffered predictions to the lake at least "
                                        "this often (and every 1,000 rows).")
    # Retention (pipelines/ops/retention.py, the DAG lake_retention): ages in days on the data's clock, from the
    # run's New York day back to the date the object belongs to. Only what is derived or summarised elsewhere is
    # ever pruned; the defaults keep more than a year, so nothing 2013's runs read is touched.
    retention_prediction_logs_days: int = Field(
        default=400, ge=1, description="Prediction logs (predictions/flight_delay/date=D/) older than this are "
                                       "pruned; their rows live on, joined with outcomes, in labels/.")
    retention_reports_days: int = Field(
        default=400, ge=1, description="Evidently's report.html and report.json of a monitored day "
                                       "(reports/monitoring/date=D/, ~8 MB a day) older than this are pruned; the "
                                       "day's summary.json (the record the charts, cooldown and year report read) "
                                       "stays.")
    retention_data_docs_days: int = Field(
        default=400, ge=1, description="Data Docs pages and the GX validation results they are rendered from "
                                       "($PIPELINE_HOME/gx/, dated by the partition they judged) older than this "
                                       "are pruned; each partition's verdict in the lake keeps its GX result.")
    retention_task_logs_days: int = Field(
        default=400, ge=1, description="Airflow task logs (dag_id=*/run_id=*/, dated by the run id's date in New "
                                       "York) older than this are pruned.")
    task_logs_dir: Path | None = Field(
        default=None, description="Airflow's task log folder (its logging.base_log_folder), for retention. "
                                  "Default: $PIPELINE_HOME/airflow/logs, where both profiles keep it.")
    demo_start: date = date(2013, 1, 1)
    demo_end: date = date(2013, 3, 31)

    @field_validator("model_owners")
    @classmethod
    def _owners_are_addresses(cls, value: str) -> str:
        owners = [owner.strip() for owner in value.split(",") if owner.strip()]
        if not owners or any("@" not in owner for owner in owners):
            raise ValueError(f"MODEL_OWNERS must be comma-separated email addresses, got {value!r}")
        return ", ".join(owners)

    @field_validator("alert_webhook_url")
    @classmethod
    def _webhook_is_http(cls, value: SecretStr | None) -> SecretStr | None:
        url = value.get_secret_value().strip() if value is not None else ""
        if not url:
            return None
        parts = urlsplit(url)
        if parts.scheme.lower() not in ("http", "https") or not parts.hostname:
            # the scheme only: the rest of the URL may be its secret
            raise ValueError("ALERT_WEBHOOK_URL must be an http:// or https:// URL with a host, got one with scheme "
                             f"{parts.scheme!r}" + ("" if parts.hostname else " and no host"))
        return SecretStr(url)

    @property
    def owners(self) -> list[str]:
        """``model_owners`` as a list of addresses."""
        return [owner.strip() for owner in self.model_owners.split(",")]

    @property
    def service_headers(self) -> dict[str, str]:
        """What the pipeline's own calls to the model service send: its bearer token, when one is set."""
        token = self.service_token.get_secret_value() if self.service_token else ""
        return {"Authorization": f"Bearer {token}"} if token else {}

    @property
    def mail_folder(self) -> Path:
        """Where the embedded mail server writes each message it receives, one ``.eml`` file each."""
        return self.pipeline_home / "mail"

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


def read_env_file(path: Path) -> dict[str, str]:
    """A profile's environment file, as a dict, read with python-dotenv (``KEY=VALUE`` lines, ``export``, ``#``
    comments, single or double quotes, multi-line quoted values). Values are taken literally: ``${NAME}`` is not
    expanded, so a secret with a ``$`` in it stays as written and nothing depends on the caller's environment. A line
    dotenv cannot parse, or a name without ``=value``, is an error naming the file and line (dotenv itself only logs
    a warning and skips it, which would start a profile without that setting). A relative ``PIPELINE_HOME`` is taken
    from the repository root, so every command finds the same home."""
    from dotenv import dotenv_values
    from dotenv.parser import parse_stream

    text = path.read_text()
    for binding in parse_stream(io.StringIO(text)):
        if binding.error or (binding.key is not None and binding.value is None):
            line = binding.original.string.strip()
            raise ValueError(f"{path}:{binding.original.line}: expected NAME=value, got {line!r}")
    values = {name: value for name, value in dotenv_values(stream=io.StringIO(text), interpolate=False).items()
              if value is not None}
    if "PIPELINE_HOME" in values and not Path(values["PIPELINE_HOME"]).is_absolute():
        values["PIPELINE_HOME"] = str(PROJECT_ROOT / values["PIPELINE_HOME"])
    return values
