"""Chat endpoints the page can talk to: this server's own /v1 (under `lmstack serve`) and the
configured OpenAI-compatible endpoints, relayed byte for byte (streams included) through /api/endpoints/NAME/."""

from __future__ import annotations

import httpx
from fastapi import APIRouter, Request
from fastapi.responses import StreamingResponse

from lmstack.serve.errors import APIError
from lmstack.web.settings import DashboardSettings

LOCAL = "local"


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
        async with httpx.AsyncClient(timeout=30) as client:
            response = await _send(client, name, client.build_request("GET", f"{_base(name)}/models",
                                                                      headers=_headers()))
            return StreamingResponse(iter([response.content]), status_code=response.status_code,
                                     media_type=response.headers.get("content-type", "application/json"))

    @router.post("/endpoints/{name}/v1/chat/completions")
    async def proxied_chat(name: str, request: Request):
        """The configured endpoint's POST /chat/completions, streamed through as it arrives."""
        client = httpx.AsyncClient(timeout=httpx.Timeout(30, read=None))
        upstream = await _send(client, name, client.build_request(
            "POST", f"{_base(name)}/chat/completions", content=await request.body(),
            headers=_headers() | {"content-type": "application/json"}), stream=True)

        async def relay():
            try:
                async for chunk in upstream.aiter_raw():
                    yield chunk
            finally:  # also when the browser goes away: the upstream request is dropped with it
                await upstream.aclose()
                await client.aclose()

        return StreamingResponse(relay(), status_code=upstream.status_code,
                                 media_type=upstream.headers.get("content-type", "application/json"))

    def _base(name: str) -> str:
        if name not in settings.endpoints:
            raise APIError(f"no chat endpoint named '{name}'; configured: {', '.join(settings.endpoints) or 'none'} "
                           f"(add one with --endpoint NAME=URL)", status=404, code="not_found")
        return settings.endpoints[name]

    def _headers() -> dict[str, str]:
        key = settings.endpoint_api_key
        return {"authorization": f"Bearer {key}"} if key else {}

    async def _send(client: httpx.AsyncClient, name: str, request: httpx.Request, stream: bool = False):
        try:
            return await client.send(request, stream=stream)
        except httpx.HTTPError as err:
            await client.aclose()
            raise APIError(f"chat endpoint '{name}' ({settings.endpoints[name]}) is unreachable: {err}; "
                           f"check that it is running", status=502, code="upstream_unreachable") from None

    return router
