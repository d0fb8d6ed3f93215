"""BentoML service: disruption probability for scheduled NYC departures, from the registered ``champion`` and the
online feature store. Everything that decides an answer is ``pipelines.serving``; this file maps it onto HTTP.

    bentoml serve services.flight_delay_service:FlightDelayService --port 3000    # resolves ``champion``
    bentoml serve flight_delay:v4-<code hash>                                    # a built Bento: its version

A Bento built by ``pipelines.deploy`` carries the argument ``model_version``, so it serves exactly the version
it was built for whatever the aliases say later; without it (development) the service resolves ``champion``.

Endpoints: ``POST /predict`` (one or many flights), ``POST /model`` (version, aliases, lineage), and BentoML's own
``/healthz``, ``/readyz``, ``/metrics`` and ``/docs.json`` (OpenAPI). Bad input is a 400 naming the field, an
unreachable online store a 503 with a message and ``Retry-After``. ``/metrics`` also counts the prediction log's
rows by outcome (``flight_delay_prediction_log_rows_total``: written, retried, spooled, drained, lost).
"""

from __future__ import annotations

import hmac
import os
from typing import Annotated, Any

import bentoml
from bentoml.exceptions import InvalidArgument, ServiceUnavailable
from pydantic import Field

from pipelines.core.settings import get_settings
from pipelines.serving.contract import SMOKE_TEST_HEADER, FeaturesUnavailable, FlightRequest, RequestError
from pipelines.serving.predictor import Predictor, load_champion

MAX_FLIGHTS = 1000
RETRY_AFTER_S = 5
"""What a 503 (the online store unreachable) tells the caller to wait before asking again."""


class JsonBodiesOnly:
    """ASGI middleware: a ``multipart/form-data`` POST is a 415. The API takes JSON (and the form encoding curl
    sends by default); BentoML would parse multipart for file inputs this service has none of, and answers a
    malformed one (no boundary, a body that is not multipart) with a 500."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope.get("method") == "POST":
            content_type = dict(scope.get("headers") or []).get(b"content-type", b"")
            if content_type.split(b";")[0].strip().lower() == b"multipart/form-data":
                from starlette.responses import JSONResponse

                response = JSONResponse({"error": "Content-Type: send the request as application/json"},
                                        status_code=415)
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


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


class RetryAfterOnUnavailable:
    """ASGI middleware: a 503 says when to try again (``Retry-After``), so clients and HAProxy back off instead of
    hammering a store that is down. BentoML's ``ServiceUnavailable`` sets the status but no header."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_retry_after(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start" and message["status"] == 503:
                headers = [(k, v) for k, v in message.get("headers", []) if k.lower() != b"retry-after"]
                message = message | {"headers": [*headers, (b"retry-after", str(RETRY_AFTER_S).encode())]}
            await send(message)

        await self.app(scope, receive, send_with_retry_after)


@bentoml.service(name="flight_delay", traffic={"timeout": 10}, http={"port": 3000})
class FlightDelayService:
    def __init__(self) -> None:
        settings = get_settings()
        version = getattr(bentoml.use_arguments(), "model_version", None)
        counter = prediction_log_counter()
        self.smoke_token = os.environ.get("SMOKE_TEST_TOKEN", "")
        self.predictor = Predictor(settings, champion=load_champion(settings, version),
                                   on_log_count=lambda outcome, rows: counter.labels(outcome=outcome).inc(rows))

    def _is_smoke_test(self, ctx: bentoml.Context) -> bool:
        """The deployer's smoke test (its header carries the home's token): answered, not logged as traffic."""
        sent = ctx.request.headers.get(SMOKE_TEST_HEADER)
        return bool(sent and self.smoke_token and hmac.compare_digest(sent, self.smoke_token))

    @bentoml.api(route="/predict")
    def predict(self, flights: Annotated[list[FlightRequest], Field(min_length=1, max_length=MAX_FLIGHTS)],
                ctx: bentoml.Context) -> list[dict[str, Any]]:
        """Disruption probability, decision at the threshold, model version and feature freshness per flight."""
        try:
            return self.predictor.predict(flights, log=not self._is_smoke_test(ctx))
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


FlightDelayService.add_asgi_middleware(JsonBodiesOnly)
FlightDelayService.add_asgi_middleware(RetryAfterOnUnavailable)
