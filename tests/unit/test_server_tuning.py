"""The model service's server tuning (``services.server_tuning``): BentoML's request timeout leaves nothing behind
once a request is answered, still answers 504 when the timeout passes, and the service's process runs asyncio's
event loop. BentoML's real ``TimeoutMiddleware`` is driven here with a small ASGI app in place of the service;
the services themselves run under load in ``make bench``."""

from __future__ import annotations

import asyncio
from typing import Any

SCOPE = {"type": "http", "method": "POST", "path": "/predict", "headers": []}


async def _answer(scope: dict[str, Any], receive: Any, send: Any) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"[0.5]"})


async def _too_slow(scope: dict[str, Any], receive: Any, send: Any) -> None:
    await asyncio.sleep(30)


def _middleware(stock: bool = False) -> Any:
    """BentoML's ``TimeoutMiddleware``; ``stock``: a fresh copy of its module, as shipped, whatever was patched."""
    import importlib.util

    from bentoml._internal.server.http import traffic

    if not stock:
        return traffic.TimeoutMiddleware
    spec = importlib.util.spec_from_file_location("stock_traffic", traffic.__file__)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.TimeoutMiddleware


async def _serve(app: Any, timeout: float, middleware: Any) -> tuple[list[dict[str, Any]], int]:
    """One request through ``middleware``: what was sent, and the timers still armed after it."""
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"{}", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await middleware(app, timeout=timeout)(SCOPE, receive, send)
    await asyncio.sleep(0)  # a cancelled app's own timers go once its task has run its cancellation
    loop = asyncio.get_running_loop()
    armed = [h for h in loop._scheduled if not h.cancelled()]  # type: ignore[attr-defined]  # asyncio's timers
    return sent, len(armed)


def test_an_answered_request_leaves_its_timer_armed_in_stock_bentoml_and_none_once_tuned() -> None:
    from services.server_tuning import cancel_request_timers

    sent, armed = asyncio.run(_serve(_answer, 10, _middleware(stock=True)))
    assert sent[0]["status"] == 200 and armed == 1  # as shipped: armed for the full 10 s after the answer
    cancel_request_timers()
    sent, armed = asyncio.run(_serve(_answer, 10, _middleware()))
    assert sent[0]["status"] == 200 and sent[1]["body"] == b"[0.5]" and armed == 0


def test_a_request_over_the_timeout_is_still_a_504() -> None:
    from services.server_tuning import cancel_request_timers

    cancel_request_timers()
    sent, armed = asyncio.run(_serve(_too_slow, 0.05, _middleware()))
    assert sent[0]["status"] == 504 and b"0.05 seconds" in sent[1]["body"] and armed == 0


def test_the_service_process_runs_asyncios_event_loop() -> None:
    import uvicorn.config

    import services.flight_delay_service  # noqa: F401 - its import tunes the process

    loop = uvicorn.config.Config(app=_answer, loop="auto").get_loop_factory()()  # what BentoML's worker asks for
    try:
        assert type(loop).__module__.startswith("asyncio") and "uvloop" not in type(loop).__module__
    finally:
        loop.close()
