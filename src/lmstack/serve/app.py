"""The OpenAI-compatible app: `create_app(load_engine, config)`.

The model loads in a background thread after the server starts, so GET /health answers at once
(503 while loading, 200 after; 503 for good after a failed load or once the engine thread stopped) and
orchestrators can tell "starting" from "dead". Extra routers (the web dashboard, later) are mounted
next to the API by passing them to `create_app`.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from contextlib import asynccontextmanager
from typing import Callable, Sequence

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import JSONResponse, Response

from lmstack.infer.engine import Engine
from lmstack.serve import chat_route, completions_route
from lmstack.serve.async_engine import AsyncEngine
from lmstack.serve.config import ServeConfig
from lmstack.serve.errors import install_error_handlers
from lmstack.serve.guard import RequestGuard
from lmstack.serve.metrics import ServerMetrics
from lmstack.serve.state import ServerState, server_state
from lmstack.serve.structured import Grammars
from lmstack.tokenizer import TokenizerError

log = logging.getLogger("lmstack.serve")


def create_app(load_engine: Callable[[], Engine], config: ServeConfig, model_name: str,
               extra_routers: Sequence[APIRouter] = ()) -> FastAPI:
    metrics = ServerMetrics()
    status = {"phase": "loading", "error": None}

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        loop = asyncio.get_running_loop()
        loader = threading.Thread(target=_load, args=(app, loop), name="lmstack-load", daemon=True)
        loader.start()
        yield
        status["phase"] = "stopping"  # uvicorn has drained the requests in flight by now
        state: ServerState | None = getattr(app.state, "server", None)
        if state is not None:
            state.engine.stop()

    def _load(app: FastAPI, loop: asyncio.AbstractEventLoop) -> None:
        try:
            engine = load_engine()
            tokenizer = engine.tokenizer
            if tokenizer is None:
                raise TokenizerError("the checkpoint has no tokenizer.json; the server needs one to read text")
            grammars = Grammars(tokenizer, engine.model.cfg.vocab_size) if tokenizer.has_chat_tokens else None
            async_engine = AsyncEngine(engine, metrics, config.max_queue)
            metrics.watch(lambda: async_engine.queue_depth, lambda: engine.num_running,
                          lambda: engine.num_free_blocks, engine.num_total_blocks)
            async_engine.start(loop)
            # What a request may use: the model's context, unless the KV pool holds less (then a reply sized to
            # the model's context could never run, and GET /v1/models must say the smaller figure)
            context = engine.room_for(0)
            if context < engine.model.cfg.block_size:
                log.warning("the KV cache holds %d tokens, less than the model's context of %d: requests are limited "
                            "to %d tokens (raise engine.kv_memory_mb or engine.num_blocks to serve the full context)",
                            context, engine.model.cfg.block_size, context)
            app.state.server = ServerState(async_engine, tokenizer, grammars, model_name, context,
                                           engine.model.cfg.vocab_size)
            status["phase"] = "ready"
            log.info("model '%s' loaded; serving", model_name)
        except Exception as err:  # reported by /health; the process stays up so the reason can be read
            log.exception("loading the model failed")
            status["phase"], status["error"] = "failed", f"{type(err).__name__}: {err}"

    app = FastAPI(title="lmstack", lifespan=lifespan)
    app.state.load_status = status  # server_state tells "loading" from "failed" by it
    app.state.serves_openai_api = True  # 404s point to it (`lmstack ui` shares the error handlers, not the API)
    install_error_handlers(app)
    app.include_router(api_router(status, metrics))
    app.include_router(chat_route.router)
    app.include_router(completions_route.router)
    for router in extra_routers:
        app.include_router(router)
    app.add_middleware(RequestGuard, api_key=config.api_key, max_body_bytes=config.max_body_bytes, metrics=metrics)
    return app


def api_router(status: dict, metrics: ServerMetrics) -> APIRouter:
    router = APIRouter()

    @router.get("/health")
    async def health(request: Request):
        phase, error = status["phase"], status["error"]
        state: ServerState | None = getattr(request.app.state, "server", None)
        if state is not None and state.engine.failure is not None:  # for good: async_engine.py's _run says why
            phase, error = "failed", f"the engine stopped after an unexpected error: {state.engine.failure}"
        return JSONResponse({"status": phase, "error": error}, status_code=200 if phase == "ready" else 503)

    @router.get("/metrics")
    async def prometheus_metrics():
        return Response(metrics.render(), media_type="text/plain; version=0.0.4")

    @router.get("/v1/models")
    async def models(request: Request):
        state = server_state(request)
        return {"object": "list", "data": [{"id": state.model_name, "object": "model", "created": 0,
                                            "owned_by": "lmstack", "max_model_len": state.context}]}

    return router
