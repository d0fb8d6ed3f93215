"""BentoML service: disruption probability for scheduled NYC departures, from the registered ``champion`` and the
online feature store. Everything that decides an answer is ``pipelines.serving``; this file maps it onto HTTP.

    bentoml serve services.flight_delay_service:FlightDelayService --port 3000    # resolves ``champion``
    bentoml serve flight_delay:v4-<run>-<code hash>                              # a built Bento: its version

A Bento built by ``pipelines.deploy`` carries that version's files as a BentoML model
(``flight_delay_classifier:v<version>-<run>``, named by its argument ``packed_model``), so it serves exactly the
version it was built for, whatever the aliases say later, and starts with the registry down; without it
(development) the service fetches ``champion``'s files from the registry. Either way the model is loaded as data
(``pipelines.registry.model_files``: its ``MLmodel`` and weights, never the pickled pyfunc wrapper).

Endpoints: ``POST /predict`` (one or many flights), ``POST /model`` (version, aliases, lineage), and BentoML's own
``/healthz``, ``/readyz``, ``/metrics`` and ``/docs.json`` (OpenAPI). Bad input is a 400 naming the field, an
unreachable online store a 503 with a message and ``Retry-After``, a body over 1 MiB a 413, and with
``SERVICE_TOKEN`` set a request without ``Authorization: Bearer <token>`` a 401 (``services.middleware``).
``/metrics`` also counts the prediction log's rows by outcome (``flight_delay_prediction_log_rows_total``:
written, retried, spooled, drained, lost).
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import os
from pathlib import Path
from typing import Annotated, Any

import bentoml
from bentoml.exceptions import InvalidArgument, ServiceUnavailable
from bentoml.validators import ContentType
from pydantic import Field

from pipelines.core.settings import get_settings
from pipelines.registry.model_files import load_model_files, load_registered
from pipelines.serving.contract import SMOKE_TEST_HEADER, FeaturesUnavailable, FlightRequest, RequestError
from pipelines.serving.predictor import Predictor
from services.middleware import MIDDLEWARE
from services.server_tuning import cancel_request_timers, use_asyncio_event_loop
from services.service_config import MAX_FLIGHTS, SERVICE_CONFIG

JSON = ContentType("application/json")
"""Declared on each endpoint's answer: without it BentoML derives the media type from the answer's JSON schema,
generating that schema anew for every response (a sixth of a one-flight request's CPU)."""
PACKED_MODEL: str | None = getattr(bentoml.use_arguments(), "packed_model", None)
"""The BentoML model a built Bento serves (its argument, ``flight_delay_classifier:v<version>-<run>``); None for
the service run from source, which loads the registry's champion."""
log = logging.getLogger(__name__)
use_asyncio_event_loop()  # before BentoML's worker starts its server (services.server_tuning says why)
cancel_request_timers()


def prediction_log_counter() -> Any:
    """The prediction log's rows by outcome, every outcome shown from zero (``lost 0`` is the point). Made in the
    worker: BentoML points prometheus_client at its multiprocess folder only once the worker starts."""
    from prometheus_client import Counter

    from pipelines.serving.prediction_log import OUTCOMES

    counter = Counter("flight_delay_prediction_log_rows", "Prediction log rows by outcome: written to the lake, "
                      "retried (failed tries), spooled to local disk, drained from the spool, lost", ["outcome"])
    for outcome in OUTCOMES:
        counter.labels(outcome=outcome).inc(0)
    return counter


@bentoml.service(name="flight_delay", **SERVICE_CONFIG)
class FlightDelayService:
    # The model a built Bento carries (packed by pipelines.deploy.bento before the build): the Bento names it, BentoML
    # keeps it in the home's model store and puts it in any export or image of the Bento, so a slot (re)starts
    # without the registry.
    packed = bentoml.models.BentoModel(PACKED_MODEL) if PACKED_MODEL else None

    def __init__(self) -> None:
        settings = get_settings()
        counter = prediction_log_counter()
        self.smoke_token = os.environ.get("SMOKE_TEST_TOKEN", "")
        if settings.service_token is None:
            log.warning("no SERVICE_TOKEN: the service answers every caller that reaches it (it listens on "
                        "127.0.0.1 only); the production profile sets one")
        champion = load_model_files(Path(self.packed.path)) if self.packed else load_registered(settings)
        self.predictor = Predictor(settings, champion=champion,
                                   on_log_count=lambda outcome, rows: counter.labels(outcome=outcome).inc(rows))

    def _is_smoke_test(self, ctx: bentoml.Context) -> bool:
        """The deployer's smoke test (its header carries the home's token): answered, not logged as traffic."""
        sent = ctx.request.headers.get(SMOKE_TEST_HEADER)
        return bool(sent and self.smoke_token and hmac.compare_digest(sent, self.smoke_token))

    @bentoml.api(route="/predict")
    async def predict(self, flights: Annotated[list[FlightRequest], Field(min_length=1, max_length=MAX_FLIGHTS)],
                      ctx: bentoml.Context) -> Annotated[list[dict[str, Any]], JSON]:
        """Disruption probability, decision at the threshold, model version and feature freshness per flight."""
        log_it = not self._is_smoke_test(ctx)
        # A few flights are answered on the event loop: ~0.5 ms of CPU that holds the GIL either way, and handing
        # it to a thread pool (what a sync endpoint does) cost more server CPU than the answer itself (GIL
        # hand-offs; 0.79 -> 1.0 of bare BentoML's throughput). Anything that may wait goes to a thread.
        if self.predictor.can_answer_inline(len(flights)):
            return self._answer(flights, log_it)
        return await asyncio.to_thread(self._answer, flights, log_it)

    def _answer(self, flights: list[FlightRequest], log_it: bool) -> list[dict[str, Any]]:
        try:
            return self.predictor.predict(flights, log=log_it)
        except RequestError as error:
            raise InvalidArgument(str(error)) from None
        except FeaturesUnavailable as error:
            raise ServiceUnavailable(str(error)) from None

    @bentoml.api(route="/model")
    def model(self) -> Annotated[dict[str, Any], JSON]:
        """The served model: registry version, aliases, lineage and the promotion decision."""
        return self.predictor.model_info()

    @bentoml.on_shutdown
    def flush_predictions(self) -> None:
        self.predictor.log.flush()


for middleware in MIDDLEWARE:  # the first added is the outermost
    FlightDelayService.add_asgi_middleware(middleware)
