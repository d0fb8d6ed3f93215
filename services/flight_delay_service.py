"""BentoML service: disruption probability for scheduled NYC departures, from the registered ``champion`` and the
online feature store. Everything that decides an answer is ``pipelines.serving``; this file maps it onto HTTP.

    bentoml serve services.flight_delay_service:FlightDelayService --port 3000

Endpoints: ``POST /predict`` (one or many flights), ``POST /model`` (version, aliases, lineage), and BentoML's own
``/healthz``, ``/readyz``, ``/metrics`` and ``/docs.json`` (OpenAPI). Bad input is a 400 naming the field, an
unreachable online store a 503 with a message.
"""

from __future__ import annotations

from typing import Annotated, Any

import bentoml
from bentoml.exceptions import InvalidArgument, ServiceUnavailable
from pydantic import Field

from pipelines.serving import FeaturesUnavailable, FlightRequest, Predictor, RequestError

MAX_FLIGHTS = 1000


@bentoml.service(name="flight_delay", traffic={"timeout": 10}, http={"port": 3000})
class FlightDelayService:
    def __init__(self) -> None:
        self.predictor = Predictor()

    @bentoml.api(route="/predict")
    def predict(self, flights: Annotated[list[FlightRequest], Field(min_length=1, max_length=MAX_FLIGHTS)]
                ) -> list[dict[str, Any]]:
        """Disruption probability, decision at the threshold, model version and feature freshness per flight."""
        try:
            return self.predictor.predict(flights)
        except RequestError as error:
            raise InvalidArgument(str(error)) from None
        except FeaturesUnavailable as error:
            raise ServiceUnavailable(str(error)) from None

    @bentoml.api(route="/model")
    def model(self) -> dict[str, Any]:
        """The served model: registry version, aliases, lineage and the promotion decision."""
        return self.predictor.model_info()

    @bentoml.on_shutdown
    def flush_predictions(self) -> None:
        self.predictor.log.flush()
