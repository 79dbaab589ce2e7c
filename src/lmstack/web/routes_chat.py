"""Chat endpoints the page can talk to: this server's own /v1 (under `lmstack serve`) and the
configured OpenAI-compatible endpoints, relayed byte for byte (streams included) through /api/endpoints/NAME/.

Each endpoint gets only its own key (`--endpoint-key NAME=ENV_VAR`); one without a key is sent none."""

from __future__ import annotations

import anyio
import httpx
from fastapi import APIRouter, Request
from fastapi.responses import StreamingResponse

from lmstack.serve.errors import APIError
from lmstack.web.settings import DashboardSettings

LOCAL = "local"


class _ClosingStream(StreamingResponse):
    """A streamed upstream response that closes the upstream response and its client however the
    relay ends: fully sent, failed, or the browser gone before (or while) streaming."""

    def __init__(self, upstream: httpx.Response, client: httpx.AsyncClient):
        super().__init__(upstream.aiter_raw(), status_code=upstream.status_code,
                         media_type=upstream.headers.get("content-type", "application/json"))
        self._upstream, self._client = upstream, client

    async def __call__(self, scope, receive, send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            with anyio.CancelScope(shield=True):  # closing must survive the request's cancellation
                await self._upstream.aclose()
                await self._client.aclose()


def chat_router(settings: DashboardSettings) -> APIRouter:
    router = APIRouter(prefix="/api", tags=["dashboard: chat"])

    @router.get("/endpoints")
    def endpoints():
        """The chat endpoints the dashboard offers: `base` is the URL the page sends OpenAI requests to."""
        listed = [{"id": LOCAL, "label": "this server", "base": "/v1"}] if settings.local_model else []
        listed += [{"id": name, "label": f"{name} ({url})", "base": f"/api/endpoints/{name}/v1"}
                   for name, url in settings.endpoints.items()]
        return {"endpoints": listed}

    @router.get("/endpoints/{name}/v1/models")
    async def proxied_models(name: str):
        """The configured endpoint's GET /models."""
        base = _base(name)  # before any client exists: an unknown name is a 404 with nothing to close
        async with httpx.AsyncClient(timeout=30) as client:
            response = await _send(client, name, client.build_request("GET", f"{base}/models", headers=_headers(name)))
            return StreamingResponse(iter([response.content]), status_code=response.status_code,
                                     media_type=response.headers.get("content-type", "application/json"))

    @router.post("/endpoints/{name}/v1/chat/completions")
    async def proxied_chat(name: str, request: Request):
        """The configured endpoint's POST /chat/completions, streamed through as it arrives."""
        base = _base(name)
        body = await request.body()
        client = httpx.AsyncClient(timeout=httpx.Timeout(30, read=None))
        try:
            upstream = await _send(client, name, client.build_request(
                "POST", f"{base}/chat/completions", content=body,
                headers=_headers(name) | {"content-type": "application/json"}), stream=True)
        except BaseException:
            with anyio.CancelScope(shield=True):
                await client.aclose()
            raise
        # From here the response owns the client: it closes both when the relay ends, however it ends.
        return _ClosingStream(upstream, client)

    def _base(name: str) -> str:
        if name not in settings.endpoints:
            raise APIError(f"no chat endpoint named '{name}'; configured: {', '.join(settings.endpoints) or 'none'} "
                           f"(add one with --endpoint NAME=URL)", status=404, code="not_found")
        return settings.endpoints[name]

    def _headers(name: str) -> dict[str, str]:
        key = settings.endpoint_keys.get(name)
        return {"authorization": f"Bearer {key}"} if key else {}

    async def _send(client: httpx.AsyncClient, name: str, request: httpx.Request, stream: bool = False):
        try:
            return await client.send(request, stream=stream)
        except httpx.HTTPError as err:
            raise APIError(f"chat endpoint '{name}' ({settings.endpoints[name]}) is unreachable: {err}; "
                           f"check that it is running", status=502, code="upstream_unreachable") from None

    return router
