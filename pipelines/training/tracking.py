"""MLflow for the training steps: where tracking lives, the experiment, and finding the runs a run key made before.

``use_tracking`` points MLflow's fluent API at the settings' tracking store when a step starts (never at import).
Runs are found by their tags, so a retried task resumes its runs instead of making second ones.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from pipelines.core.settings import Settings

if TYPE_CHECKING:
    from mlflow.entities import Run

log = logging.getLogger(__name__)

EXPERIMENT = "flight_delay"
RUN_KEY_TAG = "pipeline.run_key"
KIND_TAG = "pipeline.kind"


def use_tracking(settings: Settings) -> str:
    """Point MLflow at the settings' tracking store and return the experiment id (created when missing)."""
    import mlflow

    if settings.experiment_tracking_uri is None:
        (settings.pipeline_home / "mlflow").mkdir(parents=True, exist_ok=True)
    mlflow.set_tracking_uri(settings.tracking_uri)
    experiment = mlflow.get_experiment_by_name(EXPERIMENT)
    if experiment is None:
        log.info("creating MLflow experiment %s at %s", EXPERIMENT, settings.tracking_uri)
        experiment_id = str(mlflow.create_experiment(EXPERIMENT, artifact_location=settings.artifact_location))
    else:
        experiment_id = str(experiment.experiment_id)
    mlflow.set_experiment(experiment_id=experiment_id)  # runs started with the fluent API land here
    return experiment_id


def find_run(experiment_id: str, run_key: str, kind: str) -> Run | None:
    """The newest run this run key made for ``kind`` ("tuning", "final"), if any."""
    import mlflow

    runs = mlflow.search_runs(
        experiment_ids=[experiment_id], output_format="list", max_results=1, order_by=["attributes.start_time DESC"],
        filter_string=f"tags.`{RUN_KEY_TAG}` = '{run_key}' AND tags.`{KIND_TAG}` = '{kind}'",
    )
    return runs[0] if runs else None


def find_or_create_run(experiment_id: str, run_key: str, kind: str, run_name: str,
                       tags: dict[str, Any] | None = None) -> str:
    """Check before create: the id of this run key's ``kind`` run, started now only if it does not exist yet."""
    from mlflow import MlflowClient

    existing = find_run(experiment_id, run_key, kind)
    if existing is not None:
        log.info("reusing MLflow %s run %s of %s", kind, existing.info.run_id, run_key)
        return str(existing.info.run_id)
    client = MlflowClient()
    run = client.create_run(experiment_id, run_name=run_name,
                            tags={RUN_KEY_TAG: run_key, KIND_TAG: kind, **(tags or {})})
    return str(run.info.run_id)
