"""The model service's HTTP edge, as ASGI middleware in front of BentoML: who may ask (a bearer token, when one is
configured), how much one request may send, what body types it takes, what shape a 4xx has, and what a 503
tells the caller. Each answers its refusal itself as JSON ``{"error": ...}`` and never reaches the service.
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
    """A header of a request's scope or a response's start message (names lower-case, as ASGI servers send)."""
    return dict((k.lower(), v) for k, v in scope.get("headers") or []).get(name, b"")


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


class _ResponseRewriter:
    """ASGI middleware that rewrites what the service sends back to HTTP requests: ``rewrite(scope, send)`` wraps
    one request's ``send``."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        await self.app(scope, receive, self.rewrite(scope, send) if scope["type"] == "http" else send)

    def rewrite(self, scope: Scope, send: Any) -> Any:
        raise NotImplementedError


def _rewriting_json(send: Any, wanted: Any, transform: Any) -> Any:
    """A ``send`` that holds a response whose start message is ``wanted(start)`` until its body is whole, then
    sends ``transform(the parsed JSON)`` in its place with its new length (a body that is not JSON as it was)."""
    import json

    held: dict[str, Any] = {}
    body = bytearray()

    async def send_rewritten(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start" and wanted(message):
            held["start"] = message
            return
        if "start" not in held or message["type"] != "http.response.body":
            await send(message)
            return
        body.extend(message.get("body", b""))
        if message.get("more_body", False):
            return
        try:
            data = json.dumps(transform(json.loads(bytes(body)))).encode()
        except ValueError:
            data = bytes(body)
        start = held.pop("start")
        headers = [(k, v) for k, v in start.get("headers", []) if k.lower() != b"content-length"]
        await send(start | {"headers": [*headers, (b"content-length", str(len(data)).encode())]})
        await send({"type": "http.response.body", "body": data})

    return send_rewritten


class RetryAfterOnUnavailable(_ResponseRewriter):
    """ASGI middleware: a 503 says when to try again (``Retry-After``), so clients and HAProxy back off instead of
    hammering a store that is down. BentoML's ``ServiceUnavailable`` sets the status but no header."""

    def rewrite(self, scope: Scope, send: Any) -> Any:
        async def send_with_retry_after(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start" and message["status"] == 503:
                headers = [(k, v) for k, v in message.get("headers", []) if k.lower() != b"retry-after"]
                message = message | {"headers": [*headers, (b"retry-after", str(RETRY_AFTER_S).encode())]}
            await send(message)

        return send_with_retry_after


def documented_error(body: Any) -> dict[str, Any]:
    """A 4xx body in the shape the OpenAPI document gives every error, ``{"error": str, "detail": str}``. BentoML
    documents that shape but answers a pydantic error with ``detail`` as a list of errors, and an
    ``InvalidArgument`` raised by the service as a one-element list around the object."""
    if isinstance(body, list) and len(body) == 1 and isinstance(body[0], dict):
        body = body[0]
    if not isinstance(body, dict):
        return {"error": str(body)}
    error = {"error": str(body.get("error", ""))}
    detail = body.get("detail")
    if isinstance(detail, list):  # pydantic's errors: "flights.0.flight: Input should be a valid integer; ..."
        error["detail"] = "; ".join(
            f"{'.'.join(str(part) for part in item.get('loc', ()) if part != 'root')}: {item.get('msg', item)}"
            if isinstance(item, dict) else str(item) for item in detail)
    elif detail is not None:
        error["detail"] = str(detail)
    return error


class DocumentedErrors(_ResponseRewriter):
    """ASGI middleware: a 4xx JSON answer leaves in the documented error shape (``documented_error``), so a client
    generated from ``/docs.json`` can read every error it gets."""

    def rewrite(self, scope: Scope, send: Any) -> Any:
        return _rewriting_json(send, lambda start: 400 <= start["status"] < 500 and _header(
            start, b"content-type").startswith(b"application/json"), documented_error)


def with_required_bodies(document: dict[str, Any]) -> dict[str, Any]:
    """The OpenAPI document with ``requestBody.required`` set where the body's schema requires a field: BentoML
    leaves it out, which says a POST without a body is valid (it is a 400: ``flights`` is required)."""
    for operations in (document.get("paths") or {}).values():
        for operation in operations.values():
            body = operation.get("requestBody") if isinstance(operation, dict) else None
            schemas = [media.get("schema") or {} for media in ((body or {}).get("content") or {}).values()]
            if body is not None and any(schema.get("required") for schema in schemas):
                body["required"] = True
    return document


class RequiredBodies(_ResponseRewriter):
    """ASGI middleware: ``/docs.json`` says which request bodies are required (``with_required_bodies``)."""

    def rewrite(self, scope: Scope, send: Any) -> Any:
        if scope.get("path") != "/docs.json":
            return send
        return _rewriting_json(send, lambda start: start["status"] == 200, with_required_bodies)


MIDDLEWARE = (BearerToken, BoundedBodies, JsonBodiesOnly, DocumentedErrors, RequiredBodies, RetryAfterOnUnavailable)
"""In the order a request meets them: who, how much, what type; on the way out, errors in their documented shape,
the document's required bodies and the 503's header."""
