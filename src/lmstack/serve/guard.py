"""ASGI middleware in front of every route: API key, request size limit, request counting.

Written as plain ASGI (not BaseHTTPMiddleware) so streaming responses and client disconnects pass
through untouched. The body is read here up to the limit and replayed to the app.
"""

from __future__ import annotations

import hmac
import json

from lmstack.serve.errors import error_body
from lmstack.serve.metrics import ServerMetrics

# Behind the API key: the OpenAI API and the dashboard's JSON API. /health and /metrics stay open for
# orchestrators and scrapers; the dashboard page itself holds no data.
PROTECTED_PREFIXES = ("/v1/", "/api/")


class RequestGuard:
    def __init__(self, app, api_key: str | None, max_body_bytes: int, metrics: ServerMetrics):
        self.app = app
        self.api_key = api_key
        self.max_body_bytes = max_body_bytes
        self.metrics = metrics

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        path = scope["path"]

        async def counted_send(message):
            if message["type"] == "http.response.start":
                self.metrics.count_request(path, message["status"])
            await send(message)

        if self.api_key and path.startswith(PROTECTED_PREFIXES) and not self._authorized(scope):
            return await _reply(counted_send, 401, "invalid or missing API key; send 'Authorization: Bearer <key>'",
                                "invalid_api_key")
        body, too_large = await self._read_body(scope, receive)
        if too_large:
            return await _reply(counted_send, 413, f"request body is larger than {self.max_body_bytes} bytes; "
                                "send less (the server's max_body_bytes)", "request_too_large")
        replayed = False

        async def replay():
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()  # after the body: http.disconnect when the client goes away

        await self.app(scope, replay, counted_send)

    def _authorized(self, scope) -> bool:
        headers = dict(scope["headers"])
        given = headers.get(b"authorization", b"").decode("latin-1")
        token = given[7:] if given.lower().startswith("bearer ") else ""
        return hmac.compare_digest(token.encode(), self.api_key.encode())

    async def _read_body(self, scope, receive) -> tuple[bytes, bool]:
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_body_bytes:
            return b"", True
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                break
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            if size > self.max_body_bytes:
                return b"", True
            if not message.get("more_body", False):
                break
        return b"".join(chunks), False


async def _reply(send, status: int, message: str, code: str) -> None:
    payload = json.dumps(error_body(message, status, code=code)).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode())]})
    await send({"type": "http.response.body", "body": payload})
