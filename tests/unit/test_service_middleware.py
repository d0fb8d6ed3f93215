"""The service's ASGI middleware, driven with ASGI messages as the server sends them (the HTTP side, with BentoML
in front: tests/integration/test_service_http.py; the bearer token through the production profile's front door:
tests/e2e/test_production_profile.py)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from services.middleware import MAX_BODY_BYTES, RETRY_AFTER_S, BearerToken, BoundedBodies, RetryAfterOnUnavailable


def _through(middleware: Any, app: Any) -> list[dict[str, Any]]:
    """The messages that leave ``middleware(app)`` for one POST /predict with an empty body."""
    sent: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b""}

    asyncio.run(middleware(app)({"type": "http", "method": "POST", "path": "/predict"}, receive, send))
    return sent


def _respond(status: int, app_headers: list[tuple[bytes, bytes]]) -> list[dict[str, Any]]:
    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": status, "headers": app_headers})
        await send({"type": "http.response.body", "body": b"{}"})

    return _through(RetryAfterOnUnavailable, app)


def test_a_503_says_when_to_try_again() -> None:
    start, body = _respond(503, [(b"content-type", b"application/json"), (b"Retry-After", b"999")])
    assert (b"retry-after", str(RETRY_AFTER_S).encode()) in start["headers"]
    assert [k for k, _ in start["headers"] if k.lower() == b"retry-after"] == [b"retry-after"]  # one, ours
    assert body["body"] == b"{}"


@pytest.mark.parametrize("status", [200, 400, 500])
def test_other_answers_pass_unchanged(status: int) -> None:
    start, _ = _respond(status, [(b"content-type", b"application/json")])
    assert start["headers"] == [(b"content-type", b"application/json")]


class _Called:
    """An app that records what reached it (the body it read) and answers 200."""

    def __init__(self) -> None:
        self.bodies: list[bytes] = []

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        body, more = b"", True
        while more:
            message = await receive()
            body += message.get("body", b"")
            more = message.get("more_body", False)
        self.bodies.append(body)
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"{}"})


def _drive(middleware: Any, path: str = "/predict", headers: dict[bytes, bytes] | None = None,
           chunks: tuple[bytes, ...] = (b"{}",), method: str = "POST") -> tuple[int, dict[bytes, bytes], _Called]:
    """One request through ``middleware(app)``: the answer's status and headers, and what reached the app."""
    app = _Called()
    messages = [{"type": "http.request", "body": chunk, "more_body": i < len(chunks) - 1}
                for i, chunk in enumerate(chunks)]
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return messages.pop(0) if messages else {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {"type": "http", "method": method, "path": path, "headers": list((headers or {}).items())}
    asyncio.run(middleware(app)(scope, receive, send))
    return sent[0]["status"], dict(sent[0]["headers"]), app


def test_with_a_token_set_a_request_without_it_is_a_401_and_never_reaches_the_service(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SERVICE_TOKEN", "s3cret-token")
    for headers in ({}, {b"authorization": b"Bearer wrong"}, {b"authorization": b"s3cret-token"}):
        status, answer_headers, app = _drive(BearerToken, headers=headers)
        assert (status, app.bodies) == (401, [])
        assert answer_headers[b"www-authenticate"].startswith(b"Bearer")
    status, _, app = _drive(BearerToken, headers={b"authorization": b"Bearer s3cret-token"})
    assert (status, app.bodies) == (200, [b"{}"])


def test_the_probes_need_no_token_and_without_one_configured_the_service_is_open(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SERVICE_TOKEN", "s3cret-token")
    assert _drive(BearerToken, path="/readyz", method="GET")[0] == 200
    monkeypatch.delenv("SERVICE_TOKEN")
    assert _drive(BearerToken)[0] == 200


def test_a_body_over_the_limit_is_a_413_whether_it_says_its_length_or_streams() -> None:
    declared = {b"content-length": str(MAX_BODY_BYTES + 1).encode()}
    status, _, app = _drive(BoundedBodies, headers=declared, chunks=(b"x" * (MAX_BODY_BYTES + 1),))
    assert (status, app.bodies) == (413, [])
    chunk = b"x" * (MAX_BODY_BYTES // 4)
    status, _, app = _drive(BoundedBodies, chunks=(chunk,) * 5)  # chunked: no content-length
    assert (status, app.bodies) == (413, [])
    assert _drive(BoundedBodies, headers={b"content-length": b"-1"})[0] == 413


def test_a_body_within_the_limit_reaches_the_service_whole() -> None:
    chunk = b"y" * (MAX_BODY_BYTES // 4)
    status, _, app = _drive(BoundedBodies, chunks=(chunk,) * 4)  # exactly the limit, streamed
    assert (status, app.bodies) == (200, [chunk * 4])
    status, _, app = _drive(BoundedBodies, headers={b"content-length": b"2"}, chunks=(b"{}",))
    assert (status, app.bodies) == (200, [b"{}"])


def _answered(status: int, chunks: list[bytes]) -> list[dict[str, Any]]:
    """What leaves ``DocumentedErrors`` when the app answers ``status`` with a JSON body sent in ``chunks``."""
    from services.middleware import DocumentedErrors

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        length = str(sum(len(c) for c in chunks)).encode()
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", length)]})
        for i, chunk in enumerate(chunks):
            await send({"type": "http.response.body", "body": chunk, "more_body": i < len(chunks) - 1})

    return _through(DocumentedErrors, app)


def _json_body(sent: list[dict[str, Any]]) -> Any:
    import json

    start, *bodies = sent
    data = b"".join(m.get("body", b"") for m in bodies)
    assert dict(start["headers"])[b"content-length"] == str(len(data)).encode()
    return json.loads(data)


def test_a_pydantic_400_leaves_with_detail_as_the_documented_string() -> None:
    """BentoML's own 400 for a body pydantic refuses: ``detail`` a list where its document says a string."""
    body = (b'{"error":"2 validation errors for Input","detail":[{"type":"int_type","loc":["flights",0,"flight"],'
            b'"msg":"Input should be a valid integer"},{"type":"missing","loc":["root","flights"],'
            b'"msg":"Field required"}]}')
    sent = _answered(400, [body[:40], body[40:]])  # in two chunks, as a streamed answer comes
    assert _json_body(sent) == {"error": "2 validation errors for Input",
                                "detail": "flights.0.flight: Input should be a valid integer; flights: Field required"}


def test_the_services_own_400_leaves_as_an_object_not_a_list() -> None:
    """BentoML answers an ``InvalidArgument`` raised by the service as ``[{"error": ...}]``."""
    sent = _answered(400, [b'[{"error":"flights[0].dest: unknown airport code \'AAA\'"}]'])
    assert _json_body(sent) == {"error": "flights[0].dest: unknown airport code 'AAA'"}


@pytest.mark.parametrize("status", [200, 503])
def test_answers_other_than_4xx_leave_as_they_came(status: int) -> None:
    sent = _answered(status, [b"[1, ", b"2]"])
    assert [m.get("body") for m in sent[1:]] == [b"[1, ", b"2]"] and sent[0]["status"] == status


def test_the_document_says_a_body_with_required_fields_is_required() -> None:
    """BentoML's document leaves ``requestBody.required`` out, so a POST /predict without a body looked valid (to
    schemathesis, and to a generated client); the service answers it 400 (``flights`` is required)."""
    from services.middleware import with_required_bodies

    document = {"paths": {"/predict": {"post": {"requestBody": {"content": {"application/json": {"schema": {
        "type": "object", "properties": {"flights": {"type": "array"}}, "required": ["flights"]}}}}}},
        "/model": {"post": {"requestBody": {"content": {"application/json": {"schema": {"type": "object"}}}}}},
        "/healthz": {"get": {"responses": {}}}}}
    fixed = with_required_bodies(document)
    assert fixed["paths"]["/predict"]["post"]["requestBody"]["required"] is True
    assert "required" not in fixed["paths"]["/model"]["post"]["requestBody"]
