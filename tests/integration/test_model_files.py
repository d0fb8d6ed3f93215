"""A registered version whose pyfunc wrapper would run code when unpickled: MLflow's own loader runs it, the
service's loader (``pipelines.registry.model_files``) reads only the ``MLmodel`` and the weights, and serves the
same probabilities. In a registry of its own (a SQLite file of this module), beside the shared champion's."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pytest

from pipelines.core.names import MODEL_NAME
from pipelines.core.settings import Settings
from pipelines.registry.model_files import fetch_model_files, load_registered
from pipelines.training.tracking import use_tracking

pytestmark = pytest.mark.integration


class TrappedWrapper(mlflow.pyfunc.PythonModel):  # type: ignore[misc]
    """A pyfunc wrapper whose unpickling creates ``marker``: any code could stand there."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (Path.touch, (self.marker,))

    def predict(self, context: Any, model_input: Any, params: Any = None) -> Any:
        return model_input


def test_loading_a_version_never_unpickles_its_wrapper(champion_settings: Settings, tmp_path: Path) -> None:
    files = fetch_model_files(champion_settings, None, tmp_path / "champion")
    own = champion_settings.model_copy(update={"experiment_tracking_uri": f"sqlite:///{tmp_path / 'mlflow.db'}",
                                               "experiment_artifacts_uri": (tmp_path / "artifacts").as_uri()})
    marker = tmp_path / "the-wrapper-ran"
    try:
        _check(champion_settings, own, files, marker)
    finally:
        use_tracking(champion_settings)  # the process-wide tracking URI back for the next tests


def _check(champion_settings: Settings, own: Settings, files: Path, marker: Path) -> None:
    champion = load_registered(champion_settings)
    mlflow.set_tracking_uri(own.tracking_uri)
    experiment = mlflow.create_experiment("trapped", artifact_location=own.artifact_location)
    with mlflow.start_run(experiment_id=experiment):
        info = mlflow.pyfunc.log_model(name="model", python_model=TrappedWrapper(marker),
                                       artifacts={"model": str(files / "artifacts" / "model.pt")})
    version = mlflow.register_model(info.model_uri, MODEL_NAME).version
    marker.unlink(missing_ok=True)  # MLflow's log_model loads what it saved once, to check it: that ran the trap

    loaded = load_registered(own, str(version))
    assert not marker.exists(), "the service's loader unpickled the wrapper"
    frame = _rows(champion_settings)
    assert np.allclose(loaded.model.predict_proba(frame), champion.model.predict_proba(frame))
    assert loaded.version == str(version)

    # What the service did before: MLflow unpickles the wrapper, which runs the trap (and, a file's ``touch`` in
    # place of a wrapper, then fails).
    with pytest.raises(AttributeError):
        mlflow.pyfunc.load_model(f"models:/{MODEL_NAME}/{version}")
    assert marker.exists()


def _rows(settings: Settings) -> Any:
    import pandas as pd

    from pipelines.features.store import online_features
    from pipelines.serving.contract import FlightRequest, flight_entities, requests_from_flights

    frame = pd.read_parquet(settings.pipeline_home / "lake" / "validated" / "flights" / "date=2013-02-27"
                            / "data.parquet")
    requests = [FlightRequest(**body) for body in requests_from_flights(frame.head(20))]
    return online_features(flight_entities(requests), settings)
