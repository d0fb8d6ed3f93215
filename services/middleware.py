"""The model service's HTTP edge, as ASGI middleware in front of BentoML: who may ask (a bearer token, when one is
configured), how much one request may send, what body types it takes, and what a 503 tells the caller. Each
answers its refusal itself as JSON ``{"error": ...}`` and never reaches the service.
"""

from __future__ import annotations

import hmac
from typing import Any

RETRY_AFTER_S = 5
"""What a 503 (the online store unreachable) tells the caller to wait before asking again."""
MAX_BODY_BYTES = 1 << 20
"""The largest request body taken (1 MiB): ~4x a full batch of ``MAX_FLIGHTS`` flights as JSON."""
OPEN_PATHS = frozenset({"/healthz", "/livez", "/readyz", "/docs", "/docs.json"})
"""Answered without a token: the probes (HAProxy checks ``/readyz``) and the API's description."""

Scope = dict[str, Any]


async def _refuse(scope: Scope, receive: Any, send: Any, status: int, error: str,
                  headers: dict[str, str] | None = None) -> None:
    from starlette.responses import JSONResponse

    await JSONResponse({"error": error}, status_code=status, headers=headers)(scope, receive, send)


def _header(scope: Scope, name: bytes) -> bytes:
    return dict(scope.get("headers") or []).get(name, b"")


class BearerToken:
    """ASGI middleware: with ``SERVICE_TOKEN`` set (the production profile requires it), every request but the
    probes and the API's description carries ``Authorization: Bearer <token>``, or is a 401. Without it (the
    embedded profile, which listens on 127.0.0.1 only) the service is open, and says so in its log at start."""

    def __init__(self, app: Any) -> None:
        from pipelines.core.settings import get_settings

        self.app = app
        token = get_settings().service_token
        self.expected = f"Bearer {token.get_secret_value()}".encode() if token else None

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if (self.expected is None or scope["type"] != "http" or scope.get("path") in OPEN_PATHS
                or hmac.compare_digest(_header(scope, b"authorization"), self.expected)):
            await self.app(scope, receive, send)
            return
        await _refuse(scope, receive, send, 401, "send the service's token: Authorization: Bearer <SERVICE_TOKEN>",
                      {"WWW-Authenticate": 'Bearer realm="flight_delay"'})


class BoundedBodies:
    """ASGI middleware: a body over ``MAX_BODY_BYTES`` is a 413, whether it says its length (refused before it is
    read) or streams chunks without one (read here up to the limit, then refused or handed on whole). A batch
    within the limit but over ``MAX_FLIGHTS`` flights is the service's own 400."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope.get("method") in ("GET", "HEAD"):
            await self.app(scope, receive, send)
            return
        declared = _header(scope, b"content-length")
        if declared:  # the server holds the body to this length
            if declared.isdigit() and int(declared) <= MAX_BODY_BYTES:
                await self.app(scope, receive, send)
            else:
                await _refuse(scope, receive, send, 413, f"the body is over {MAX_BODY_BYTES} bytes: send fewer "
                                                         "flights per request")
            return
        chunks, size, more = [], 0, True
        while more:
            message = await receive()
            if message["type"] != "http.request":  # the client went away
                return
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            more = message.get("more_body", False)
            if size > MAX_BODY_BYTES:
                await _refuse(scope, receive, send, 413, f"the body is over {MAX_BODY_BYTES} bytes")
                return
        body = b"".join(chunks)
        handed = False

        async def receive_whole() -> dict[str, Any]:
            nonlocal handed
            if handed:
                return dict(await receive())
            handed = True
            return {"type": "http.request", "body": body, "more_body": False}

        await self.app(scope, receive_whole, send)


class JsonBodiesOnly:
    """ASGI middleware: a ``multipart/form-data`` POST is a 415. The API takes JSON (and the form encoding curl
    sends by default); BentoML would parse multipart for file inputs this service has none of, and answers a
    malformed one (no boundary, a body that is not multipart) with a 500."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope.get("method") == "POST":
            content_type = _header(scope, b"content-type")
            if content_type.split(b";")[0].strip().lower() == b"multipart/form-data":
                await _refuse(scope, receive, send, 415, "Content-Type: send the request as application/json")
                return
        await self.app(scope, receive, send)


class RetryAfterOnUnavailable:
    """ASGI middleware: a 503 says when to try again (``Retry-After``), so clients and HAProxy back off instead of
    hammering a store that is down. BentoML's ``ServiceUnavailable`` sets the status but no header."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_retry_after(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start" and message["status"] == 503:
                headers = [(k, v) for k, v in message.get("headers", []) if k.lower() != b"retry-after"]
                message = message | {"headers": [*headers, (b"retry-after", str(RETRY_AFTER_S).encode())]}
            await send(message)

        await self.app(scope, receive, send_with_retry_after)


MIDDLEWARE = (BearerToken, BoundedBodies, JsonBodiesOnly, RetryAfterOnUnavailable)
"""In the order a request meets them: who, how much, what type; the 503 header on the way out."""
