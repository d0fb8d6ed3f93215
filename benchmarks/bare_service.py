"""A bare BentoML service: the registered model and nothing else. ``make bench`` (``benchmarks/serving.py``)
serves it beside the model service to show what the feature store, validation and the prediction log cost.

    bentoml serve benchmarks.bare_service:BareModelService --arg model_version=3    # without it: ``champion``

``POST /predict`` takes each flight's model input as already computed (its online features, name -> value, as
``pipelines.features.store.online_feature_columns`` returns them) and answers one probability per row: no feature
store, no checks beyond JSON, no prediction log. Its BentoML settings are the model service's own
(``services.service_config``); it runs BentoML as shipped, without the model service's server tuning
(``services.server_tuning``: asyncio's event loop, request timers cancelled), which is the service's own work.
"""

from __future__ import annotations

import copy
from typing import Annotated, Any

import bentoml
from pydantic import Field

from pipelines.core.settings import get_settings
from pipelines.registry.model_files import load_registered
from pipelines.serving.predictor import freeze_heap
from services.service_config import MAX_FLIGHTS, SERVICE_CONFIG


@bentoml.service(name="flight_delay_bare", **copy.deepcopy(SERVICE_CONFIG))
class BareModelService:
    def __init__(self) -> None:
        version = getattr(bentoml.use_arguments(), "model_version", None)
        self.model = load_registered(get_settings(), version).model
        freeze_heap()  # as the model service's Predictor does: the same garbage collection for both

    @bentoml.api(route="/predict")
    def predict(self, rows: Annotated[list[dict[str, Any]], Field(min_length=1, max_length=MAX_FLIGHTS)]
                ) -> list[float]:
        """Disruption probability per row of model input."""
        columns = {name: [row.get(name) for row in rows] for name in rows[0]}
        return [float(p) for p in self.model.predict_proba_columns(columns)]
