"""The chat proxy in process, with the upstream endpoints replaced by an httpx mock transport: each
endpoint is sent only its own key, and every upstream client is closed whatever happens."""

from __future__ import annotations

import json

import httpx
import pytest
from fastapi.testclient import TestClient

from lmstack.web.settings import DashboardSettings, EndpointSpecError, parse_endpoint_keys
from lmstack.web.ui_app import create_ui_app

ENDPOINTS = {"keyed": "http://keyed.test/v1", "open": "http://open.test/v1"}
SSE = b'data: {"choices": [{"delta": {"content": "hi"}}]}\n\ndata: [DONE]\n\n'


@pytest.fixture
def upstream(monkeypatch):
    """Every AsyncClient the proxy makes talks to a mock endpoint; records requests and the clients."""
    seen: list[httpx.Request] = []
    clients: list[httpx.AsyncClient] = []

    def handle(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        if request.url.path.endswith("/models"):
            return httpx.Response(200, json={"data": [{"id": "m"}]})
        async def stream():  # arrives in pieces, as a real stream does
            for piece in SSE.split(b"\n\n")[:-1]:
                yield piece + b"\n\n"
        return httpx.Response(200, content=stream(), headers={"content-type": "text/event-stream"})

    real = httpx.AsyncClient

    class Recording(real):
        def __init__(self, **kwargs):
            super().__init__(transport=httpx.MockTransport(handle), **kwargs)
            clients.append(self)

    monkeypatch.setattr(httpx, "AsyncClient", Recording)
    return seen, clients


@pytest.fixture
def client(tmp_path):
    keys = parse_endpoint_keys(["keyed=KEYED_TOKEN"], ENDPOINTS, {"KEYED_TOKEN": "sk-keyed"})
    settings = DashboardSettings(runs_root=tmp_path / "runs", db_path=tmp_path / "db.sqlite", endpoints=ENDPOINTS,
                                 endpoint_keys=keys)
    with TestClient(create_ui_app(settings, None)) as c:
        yield c


def test_each_endpoint_gets_only_its_own_key(client, upstream):
    seen, _ = upstream
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "stream": True}
    for name in ("keyed", "open"):
        assert client.get(f"/api/endpoints/{name}/v1/models").status_code == 200
        response = client.post(f"/api/endpoints/{name}/v1/chat/completions", content=json.dumps(body))
        assert response.status_code == 200 and response.content == SSE
    auth = [(r.url.host, r.headers.get("authorization")) for r in seen]
    assert auth == [("keyed.test", "Bearer sk-keyed")] * 2 + [("open.test", None)] * 2


def test_endpoint_key_specs_are_checked():
    with pytest.raises(EndpointSpecError, match="no --endpoint named 'nope'"):
        parse_endpoint_keys(["nope=X"], ENDPOINTS, {"X": "k"})
    with pytest.raises(EndpointSpecError, match=r"\$MISSING is not set"):
        parse_endpoint_keys(["keyed=MISSING"], ENDPOINTS, {})
    with pytest.raises(EndpointSpecError, match="expected NAME=ENV_VAR"):
        parse_endpoint_keys(["keyed"], ENDPOINTS, {})


def test_no_upstream_client_is_left_open(client, upstream):
    _, clients = upstream
    assert client.post("/api/endpoints/nope/v1/chat/completions", content="{}").status_code == 404
    assert client.get("/api/endpoints/nope/v1/models").status_code == 404
    assert clients == []  # an unknown name is refused before any client exists
    with client.stream("POST", "/api/endpoints/open/v1/chat/completions", content="{}") as response:
        assert response.status_code == 200
        next(response.iter_raw())  # the browser reads a little, then goes away
    client.get("/api/endpoints")  # let the server side finish the abandoned stream
    assert client.post("/api/endpoints/open/v1/chat/completions", content="{}").status_code == 200
    assert len(clients) == 2 and all(c.is_closed for c in clients)
