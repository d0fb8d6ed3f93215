"""The model registry: the trained model logged to MLflow with its lineage and registered as
``flight_delay_classifier``; the aliases (``challenger`` on registration; ``champion`` and ``previous_champion``
moved by the gate in ``pipelines.registry.gate``, or back by ``rollback_champion``).

``register_model`` logs the run key's model as an MLflow pyfunc (``pipelines.registry.pyfunc``: signature, input
example, the preprocessing inside ``model.pt``) on its final training run and registers it, tagged with its
lineage; a rerun of the same run key finds the version it registered and registers nothing new. The monitoring
reference of the model is saved beside it (``pipelines.training.reference``).
"""

from __future__ import annotations

import hashlib
import logging
import shutil
import subprocess
from datetime import UTC, date, datetime
from importlib import metadata
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from pipelines.core.lake import open_lake
from pipelines.core.names import CHALLENGER, CHAMPION, MODEL_NAME, PREVIOUS_CHAMPION
from pipelines.core.settings import PROJECT_ROOT, Settings, get_settings
from pipelines.registry.pyfunc import FlightDelayModel, model_input
from pipelines.training.tracking import RUN_KEY_TAG, find_run, use_tracking

if TYPE_CHECKING:
    from mlflow.entities.model_registry import ModelVersion

log = logging.getLogger(__name__)


def code_version() -> str:
    """The git commit of the checkout when there is one, else the installed package's version."""
    git = shutil.which("git") or "git-not-installed"  # a full path: never one a changed PATH could swap in
    try:  # bandit B603: git by its full path, no shell
        commit = subprocess.run([git, "rev-parse", "--short=12", "HEAD"], cwd=PROJECT_ROOT, capture_output=True,  # nosec B603
                                text=True, timeout=5, check=True).stdout.strip()
        dirty = subprocess.run([git, "status", "--porcelain", "--untracked-files=no"], cwd=PROJECT_ROOT,  # nosec B603
                               capture_output=True, text=True, timeout=5).stdout.strip()
        return commit + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return f"flight-delay-pipeline=={metadata.version('flight-delay-pipeline')}"


def lineage_tags(manifest: dict[str, Any], study: str) -> dict[str, str]:
    """What made the model, as registry tags: the run key, window, partitions and their validation runs, the
    feature service, the Optuna study, the code and the training set."""
    validations = manifest.get("validations", [])
    partitions_sha = hashlib.sha256("".join(v["content_hash"] or "" for v in validations).encode()).hexdigest()
    gx_runs = sorted({str(v["gx_run_id"]).split("|flights|")[0] for v in validations if v.get("gx_run_id")})
    return {
        RUN_KEY_TAG: manifest["run_key"],
        "lineage.window": "..".join(manifest["window"]),
        "lineage.partitions": str(len(manifest["partitions"])),
        "lineage.partitions_sha256": partitions_sha,
        "lineage.validation_runs": ";".join(gx_runs)[:5000],
        "lineage.feature_service": manifest["feature_service"],
        "lineage.optuna_study": study,
        "lineage.code_version": code_version(),
        "lineage.training_set_sha256": manifest["training_set_sha256"],
    }


def find_version(run_key: str) -> ModelVersion | None:
    """The version this run key registered before, if any."""
    from mlflow import MlflowClient

    for version in MlflowClient().search_model_versions(f"name = '{MODEL_NAME}'"):
        if version.tags.get(RUN_KEY_TAG) == run_key:
            return version
    return None


def register_model(run_key: str, settings: Settings | None = None) -> dict[str, Any]:
    """Log the run key's model as a pyfunc on its final run and register it (alias ``challenger``); check first."""
    import mlflow
    import torch
    from mlflow import MlflowClient
    from mlflow.models import infer_signature

    from pipelines.training.datasets import model_key, read_manifest, read_splits

    settings = settings or get_settings()
    experiment_id = use_tracking(settings)
    client = MlflowClient()
    existing = find_version(run_key)
    if existing is not None:
        log.info("register_model: %s already registered as version %s", run_key, existing.version)
        return {"name": MODEL_NAME, "version": existing.version, "registered": False}
    final = find_run(experiment_id, run_key, "final")
    if final is None:
        raise FileNotFoundError(f"no final model for run {run_key}: run train_final_model first")
    manifest = read_manifest(run_key, settings)
    example = model_input(read_splits(run_key, settings)["test"].head(5))
    lake = open_lake(settings)
    local = settings.pipeline_home / "registry" / final.info.run_id / "model.pt"
    local.parent.mkdir(parents=True, exist_ok=True)
    local.write_bytes(lake.read_bytes(model_key(run_key, "model.pt")))
    wrapper = FlightDelayModel()
    wrapper.load_context(type("Context", (), {"artifacts": {"model": str(local)}})())
    requirements = [f"torch=={torch.__version__.split('+')[0]}", f"pandas=={pd.__version__}",
                    f"numpy=={np.__version__}", f"mlflow=={mlflow.__version__}"]
    with mlflow.start_run(run_id=final.info.run_id):
        info = mlflow.pyfunc.log_model(
            name="model", python_model=wrapper, artifacts={"model": str(local)}, input_example=example,
            signature=infer_signature(example, wrapper.predict(None, example)), pip_requirements=requirements,
        )
    # Monitoring compares served traffic with this sample of the training data (and the model's scores on it).
    from pipelines.training.reference import save_reference

    tags = lineage_tags(manifest, final.data.tags.get("optuna.study", "")) | {
        "monitoring.reference": save_reference(run_key, settings)}
    version = mlflow.register_model(info.model_uri, MODEL_NAME, tags=tags)
    client.set_registered_model_alias(MODEL_NAME, CHALLENGER, version.version)
    log.info("register_model: %s version %s (%s)", MODEL_NAME, version.version, info.model_uri)
    return {"name": MODEL_NAME, "version": version.version, "registered": True, "model_uri": info.model_uri}


def version_by_alias(alias: str) -> ModelVersion | None:
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    try:
        return MlflowClient().get_model_version_by_alias(MODEL_NAME, alias)
    except MlflowException:
        return None


def alias_version(alias: str, settings: Settings | None = None) -> str | None:
    """The version number behind ``alias`` in the settings' registry, None when the alias is not set."""
    use_tracking(settings or get_settings())
    version = version_by_alias(alias)
    return None if version is None else str(version.version)


def freshest_version(settings: Settings | None = None) -> tuple[date, str] | None:
    """The registered version trained on the most recent data: the last day of its window, and its number (None
    when nothing is registered)."""
    from mlflow import MlflowClient

    use_tracking(settings or get_settings())
    found = []
    for version in MlflowClient().search_model_versions(f"name = '{MODEL_NAME}'"):
        _, _, last = version.tags.get("lineage.window", "").partition("..")
        if last:
            found.append((date.fromisoformat(last), int(version.version)))
    freshest = max(found, default=None)
    return None if freshest is None else (freshest[0], str(freshest[1]))


def fresher_version(last_day: date, within_days: int, settings: Settings | None = None) -> tuple[date, str] | None:
    """The registered version a retrain on a window ending ``last_day`` would repeat: one trained on data through
    fewer than ``within_days`` days before it (its window's last day and its number), else None (also when
    ``within_days`` is 0). The weekly run's sensor and ``make year`` skip a weekly retrain by it."""
    freshest = freshest_version(settings) if within_days > 0 else None
    return freshest if freshest is not None and (last_day - freshest[0]).days < within_days else None


def champion_params(settings: Settings | None = None) -> dict[str, Any] | None:
    """The training parameters the ``champion`` was trained with (its final run's logged params), None when there
    is no champion yet. A scheduled retrain without a search trains the week's data with them."""
    import ast

    from mlflow import MlflowClient

    from pipelines.training.fit import DEFAULT_PARAMS

    use_tracking(settings or get_settings())
    version = version_by_alias(CHAMPION)
    if version is None or not version.run_id:
        return None
    logged = MlflowClient().get_run(version.run_id).data.params
    # MLflow keeps params as text (str() of the value): literals only, read back without evaluating code.
    def value(text: str) -> Any:
        try:
            return ast.literal_eval(text)
        except (ValueError, SyntaxError):  # a word: MLflow wrote the string itself
            return text

    params = {name: value(logged[name]) for name in DEFAULT_PARAMS if name in logged}
    log.info("champion version %s was trained with %s", version.version, params)
    return params


def rollback_champion(settings: Settings | None = None) -> dict[str, Any]:
    """Make ``previous_champion`` the ``champion`` again (by hand: ``make rollback``). The rolled-back version keeps
    the alias ``challenger`` and a ``rolled_back_at`` tag; with no previous champion there is nothing to do."""
    from mlflow import MlflowClient

    settings = settings or get_settings()
    use_tracking(settings)
    current, previous = version_by_alias(CHAMPION), version_by_alias(PREVIOUS_CHAMPION)
    if previous is None or current is None:
        raise RuntimeError(f"{MODEL_NAME} has no previous champion to roll back to")
    client = MlflowClient()
    client.set_registered_model_alias(MODEL_NAME, CHAMPION, previous.version)
    client.set_registered_model_alias(MODEL_NAME, CHALLENGER, current.version)
    client.delete_registered_model_alias(MODEL_NAME, PREVIOUS_CHAMPION)
    client.set_model_version_tag(MODEL_NAME, current.version, "rolled_back_at", datetime.now(UTC).isoformat())
    log.warning("rolled back %s: champion is version %s again (was %s)", MODEL_NAME, previous.version,
                current.version)
    return {"champion": str(previous.version), "rolled_back": str(current.version)}
