"""The registered model as MLflow loads it: the pyfunc wrapper around ``model.pt`` and the input it takes.

Kept apart from registration so that what a model service unpickles (this class) imports only the trained model's
inference code, never training, tuning or monitoring.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
from mlflow.pyfunc import PythonModel


def model_input(frame: pd.DataFrame) -> pd.DataFrame:
    """The columns the model reads, with stable types (text categoricals, float numerics): what a caller sends."""
    from pipelines.training.columns import CATEGORICAL_COLUMNS, NUMERIC_COLUMNS, categorical_values

    categorical = [c for c in ("carrier", "origin", "route", *CATEGORICAL_COLUMNS) if c != "dest"]
    out = pd.DataFrame(index=frame.index)
    for column in dict.fromkeys(categorical):
        out[column] = categorical_values(frame, column)
    for column in NUMERIC_COLUMNS:
        out[column] = pd.to_numeric(frame[column], errors="coerce").astype("float64") if column in frame.columns \
            else np.nan
    return out.reset_index(drop=True)


class FlightDelayModel(PythonModel):  # type: ignore[misc]
    """The pyfunc wrapper: loads ``model.pt`` (weights, vocabularies, scaling, calibration) and returns
    disruption probabilities for rows shaped like ``model_input``."""

    def load_context(self, context: Any) -> None:
        from pathlib import Path

        from pipelines.training.model import TrainedModel

        self.model = TrainedModel.from_bytes(Path(context.artifacts["model"]).read_bytes())

    def predict(self, context: Any, model_input: pd.DataFrame, params: dict[str, Any] | None = None) -> np.ndarray:
        return self.model.predict_proba(model_input)
