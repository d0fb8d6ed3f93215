"""The model service's server process, tuned where BentoML's defaults cost its tail latency. Applied when the
service's module is imported (``services/flight_delay_service.py``), before BentoML starts its server; the bench's
bare BentoML service does not import it, so it stays BentoML as shipped.

**The event loop.** The service answers small requests on its event loop (``Predictor.can_answer_inline``: about
1.5 ms of CPU each; a thread hand-off cost more CPU than the answer). Under uvloop, uvicorn's default when it is
installed, that made new connections wait: a burst of 32 connections was accepted one or two per pass of the busy
loop (~50 ms a pass), so the last ones' first requests waited ~0.5 s, the p99 of a short run at concurrency 32
(0.3-0.55 s against bare BentoML's ~0.1 s). A plain uvicorn app burning 1.5 ms per request shows the same: p99
0.57-0.64 s on uvloop, 0.05 s on asyncio's own loop, the same requests/s. So the service runs on asyncio's loop.

**Request timers.** BentoML 1.4's ``TimeoutMiddleware`` (``bentoml/_internal/server/http/traffic.py``, enabled by
``traffic.timeout``) arms a timer for every request and never cancels it. Each timer holds its future and the
request's context, and through the context the request's OpenTelemetry span: about 20 objects per request, alive
for the whole timeout after the answer. At 600 requests/s and a 10 s timeout that was ~120k objects, which every
full garbage collection walked: 100-230 ms pauses of the worker under load. Cancelled once the request is done,
a full collection took ~5 ms.
"""

from __future__ import annotations

import asyncio
from typing import Any

from services.middleware import Scope


def use_asyncio_event_loop() -> None:
    """uvicorn's ``loop="auto"`` (what BentoML's worker asks for) picks asyncio's event loop in this process."""
    import uvicorn.config

    uvicorn.config.LOOP_FACTORIES["auto"] = uvicorn.config.LOOP_FACTORIES["asyncio"]


async def _timed_call(self: Any, scope: Scope, receive: Any, send: Any) -> None:
    """``TimeoutMiddleware.__call__`` of BentoML 1.4.39, with its timer cancelled once the request is done."""
    if scope["type"] not in ("http", "websocket"):
        await self.app(scope, receive, send)
        return
    loop = asyncio.get_running_loop()
    waiter = loop.create_future()
    timer = loop.call_later(self.timeout, self._set_timer_out, waiter)

    async def _send(message: dict[str, Any]) -> None:
        if not waiter.done():
            waiter.set_result(None)
        await send(message)

    answer = asyncio.ensure_future(self.app(scope, receive, _send), loop=loop)
    try:
        await waiter
    except TimeoutError:
        if answer.cancel():
            from starlette.responses import JSONResponse

            await JSONResponse({"error": f"Not able to process the request in {self.timeout} seconds"},
                               status_code=504)(scope, receive, send)
    else:
        await answer
    finally:
        timer.cancel()  # the one change: also when the request itself is cancelled (the client went away)


def cancel_request_timers() -> None:
    """BentoML's ``TimeoutMiddleware`` cancels its timer in this process (instances made before too: the method is
    looked up on the class at each request)."""
    from bentoml._internal.server.http.traffic import TimeoutMiddleware

    TimeoutMiddleware.__call__ = _timed_call  # type: ignore[method-assign]
