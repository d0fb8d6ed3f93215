"""The service's ASGI middleware, driven with ASGI messages as the server sends them (the HTTP side, with BentoML
in front: tests/integration/test_service_http.py)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from services.flight_delay_service import RETRY_AFTER_S, RetryAfterOnUnavailable


def _respond(status: int, app_headers: list[tuple[bytes, bytes]]) -> list[dict[str, Any]]:
    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": status, "headers": app_headers})
        await send({"type": "http.response.body", "body": b"{}"})

    sent: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b""}

    asyncio.run(RetryAfterOnUnavailable(app)({"type": "http", "method": "POST", "path": "/predict"}, receive, send))
    return sent


def test_a_503_says_when_to_try_again() -> None:
    start, body = _respond(503, [(b"content-type", b"application/json"), (b"Retry-After", b"999")])
    assert (b"retry-after", str(RETRY_AFTER_S).encode()) in start["headers"]
    assert [k for k, _ in start["headers"] if k.lower() == b"retry-after"] == [b"retry-after"]  # one, ours
    assert body["body"] == b"{}"


@pytest.mark.parametrize("status", [200, 400, 500])
def test_other_answers_pass_unchanged(status: int) -> None:
    start, _ = _respond(status, [(b"content-type", b"application/json")])
    assert start["headers"] == [(b"content-type", b"application/json")]
