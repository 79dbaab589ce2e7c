"""What the routes need once the model is loaded: the engine, tokenizer, grammars and served name."""

from __future__ import annotations

from dataclasses import dataclass

from fastapi import Request

from lmstack.serve.async_engine import AsyncEngine
from lmstack.serve.errors import APIError
from lmstack.serve.structured import Grammars
from lmstack.tokenizer import Tokenizer


@dataclass
class ServerState:
    engine: AsyncEngine
    tokenizer: Tokenizer
    grammars: Grammars | None  # None when the tokenizer has no chat tokens (then chat is refused anyway)
    model_name: str
    context: int  # tokens a request may use, prompt and reply: the model's context, within the KV pool
    vocab_size: int


def server_state(request: Request, model: str | None = None) -> ServerState:
    """The loaded server's state; 503 while the model loads, after it failed to, or after the engine stopped, 404
    for a model this server does not serve."""
    state: ServerState | None = getattr(request.app.state, "server", None)
    status = getattr(request.app.state, "load_status", {})
    if state is None and status.get("phase") == "failed":
        raise APIError(f"the model could not be loaded ({status['error']}); fix it and restart the server",
                       status=503, code="model_load_failed")
    if state is None:
        raise APIError("the model is still loading; retry when GET /health returns 200", status=503,
                       code="model_loading", headers={"Retry-After": "2"})
    state.engine.check_running()
    if model is not None and model != state.model_name:
        raise APIError(f"model '{model}' is not served here; this server serves '{state.model_name}' "
                       "(see GET /v1/models)", status=404, param="model", code="model_not_found")
    return state
